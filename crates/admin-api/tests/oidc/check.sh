#!/usr/bin/env bash
# Self-check of the loopback OIDC provider fixture: full authorization-code + PKCE login with curl only.
# Needs: node (>= 20), npm ci done in this directory, curl, openssl, python3.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if [[ ! -d node_modules/oidc-provider ]]; then
  echo "node_modules missing: run 'npm ci' in $here first" >&2
  exit 2
fi

work="$(mktemp -d)"
provider_pid=""
cleanup() {
  local rc=$?
  if [[ -n "$provider_pid" ]] && kill -0 "$provider_pid" 2>/dev/null; then
    kill -TERM "$provider_pid" 2>/dev/null || true
    wait "$provider_pid" 2>/dev/null || true
  fi
  if [[ $rc -ne 0 ]]; then
    echo "--- provider stderr (last 40 lines) ---" >&2
    tail -n 40 "$work/provider.err" >&2 || true
    echo "FAILED (exit $rc)" >&2
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "FAIL: $*" >&2; exit 1; }

export CLIENT_ID="peerbubble-admin"
export CLIENT_SECRET="test-secret-$RANDOM$RANDOM"
export REDIRECT_URI="http://127.0.0.1:9/cb"   # closed port: never fetched, only read from Location
export ACCOUNTS='{"alice":["admin"],"ann":["auditor"],"bob":["admin:field"],"nobody":[]}'
export PORT=0

node provider.mjs >"$work/provider.out" 2>"$work/provider.err" &
provider_pid=$!

issuer=""
for _ in $(seq 1 100); do
  if line="$(head -n1 "$work/provider.out" 2>/dev/null)" && [[ "$line" == listening\ * ]]; then
    issuer="${line#listening }"
    break
  fi
  kill -0 "$provider_pid" 2>/dev/null || fail "provider exited early"
  sleep 0.1
done
[[ -n "$issuer" ]] || fail "provider did not print its listening line"
[[ "$issuer" =~ ^http://127\.0\.0\.1:[0-9]+$ ]] || fail "unexpected issuer '$issuer'"
echo "provider up: $issuer"

disc_issuer="$(curl -fsS "$issuer/.well-known/openid-configuration" | python3 -c 'import json,sys; print(json.load(sys.stdin)["issuer"])')"
[[ "$disc_issuer" == "$issuer" ]] || fail "discovery issuer $disc_issuer != $issuer"

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
rand() { openssl rand "$1" | b64url; }
urlenc() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }

# Prints "<status> <Location header as sent>" for one request, redirects NOT followed.
# Usage: req JAR METHOD URL [curl args...]
req() {
  local jar="$1" method="$2" url="$3"; shift 3
  local hdr="$work/hdr"
  curl -sS -o "$work/body" -D "$hdr" -b "$jar" -c "$jar" -X "$method" "$@" "$url" >/dev/null
  local status loc
  status="$(awk 'NR==1{print $2}' "$hdr")"
  loc="$(awk 'tolower($1)=="location:"{sub(/^[^:]*:[ \t]*/,""); sub(/\r$/,""); print}' "$hdr")"
  echo "$status $loc"
}

# Resolve a Location (absolute or path-absolute) against the issuer.
absolute() { if [[ "$1" == /* ]]; then echo "$issuer$1"; else echo "$1"; fi; }

# login LOGIN -> sets globals: code, state, nonce, verifier
login() {
  local who="$1" jar="$work/jar-$1-$RANDOM"
  verifier="$(rand 32)"
  local challenge; challenge="$(printf '%s' "$verifier" | openssl dgst -sha256 -binary | b64url)"
  state="$(rand 16)"
  nonce="$(rand 16)"

  # 1. authorization request
  local url="$issuer/auth?client_id=$(urlenc "$CLIENT_ID")&redirect_uri=$(urlenc "$REDIRECT_URI")&response_type=code&scope=openid&state=$state&nonce=$nonce&code_challenge=$challenge&code_challenge_method=S256"
  read -r st loc < <(req "$jar" GET "$url")
  echo "  1. GET  /auth?...                  -> $st Location: $loc"
  [[ "$st" == 303 && "$loc" =~ ^/interaction/[A-Za-z0-9_-]+$ ]] || fail "step 1: expected 303 to /interaction/<uid>"
  local interaction="$loc"

  # 2. login page (optional for scripting; shows the form)
  read -r st loc < <(req "$jar" GET "$(absolute "$interaction")")
  echo "  2. GET  $interaction -> $st"
  [[ "$st" == 200 ]] || fail "step 2: expected 200 login page"
  grep -q 'name="prompt" value="login"' "$work/body" || fail "step 2: no devInteractions login form"

  # 3. submit the devInteractions login form (any password)
  read -r st loc < <(req "$jar" POST "$(absolute "$interaction")" \
    --data-urlencode prompt=login --data-urlencode "login=$who" --data-urlencode password=x)
  echo "  3. POST $interaction (prompt=login&login=$who&password=x) -> $st Location: $loc"
  [[ "$st" == 303 && "$loc" =~ ^$issuer/auth/[A-Za-z0-9_-]+$ ]] || fail "step 3: expected 303 to $issuer/auth/<uid>"

  # 4. resume the authorization: consent is skipped, straight back to the client
  local resume="$loc"
  read -r st loc < <(req "$jar" GET "$resume")
  echo "  4. GET  ${resume#"$issuer"} -> $st Location: ${loc%%\?*}?${loc#*\?}"
  [[ "$st" == 303 && "$loc" == "$REDIRECT_URI?"* ]] || fail "step 4: expected 303 to REDIRECT_URI (consent not skipped?)"

  local q="${loc#*\?}"
  code="$(python3 -c 'import sys, urllib.parse as u; print(u.parse_qs(sys.argv[1])["code"][0])' "$q")"
  local got_state; got_state="$(python3 -c 'import sys, urllib.parse as u; print(u.parse_qs(sys.argv[1])["state"][0])' "$q")"
  local got_iss; got_iss="$(python3 -c 'import sys, urllib.parse as u; print(u.parse_qs(sys.argv[1]).get("iss", [""])[0])' "$q")"
  [[ -n "$code" ]] || fail "no code in redirect"
  [[ "$got_state" == "$state" ]] || fail "state mismatch: $got_state != $state"
  [[ "$got_iss" == "$issuer" ]] || fail "iss in redirect $got_iss != $issuer"
}

# token -> writes the /token response JSON to $work/token.json, prints HTTP status
token() {
  curl -sS -o "$work/token.json" -w '%{http_code}' -u "$CLIENT_ID:$CLIENT_SECRET" \
    --data-urlencode grant_type=authorization_code --data-urlencode "code=$code" \
    --data-urlencode "redirect_uri=$REDIRECT_URI" --data-urlencode "code_verifier=$verifier" \
    "$issuer/token"
}

# Decodes (does not verify) the id_token payload from $work/token.json.
id_payload() {
  python3 - "$work/token.json" <<'PY'
import base64, json, sys
t = json.load(open(sys.argv[1]))["id_token"]
p = t.split(".")[1]
print(json.dumps(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))), sort_keys=True))
PY
}

# Verifies the id_token signature against the provider's JWKS with jose; prints "valid" or "invalid: ...".
verify_sig() {
  ISSUER="$issuer" node --input-type=module -e '
    import { readFileSync } from "node:fs";
    import { createRemoteJWKSet, compactVerify } from "jose";
    const t = JSON.parse(readFileSync(process.argv[1], "utf8")).id_token;
    try { await compactVerify(t, createRemoteJWKSet(new URL(process.env.ISSUER + "/jwks"))); console.log("valid"); }
    catch (e) { console.log("invalid: " + e.code); }
  ' "$work/token.json"
}

set_mode() {
  local st
  st="$(curl -sS -o /dev/null -w '%{http_code}' -H 'content-type: application/json' -d "{\"mode\":\"$1\"}" "$issuer/__test/mode")"
  [[ "$st" == 204 ]] || fail "set mode $1: HTTP $st"
}

py_assert() { # py_assert EXPR PAYLOAD_JSON  (p = payload dict)
  python3 -c 'import json, sys, time; p = json.loads(sys.argv[2]); ok = eval(sys.argv[1]); sys.exit(0 if ok else 1)' "$1" "$2" \
    || fail "assertion failed: $1 on $2"
}

echo "== normal login as alice"
login alice
first_code="$code"; first_verifier="$verifier"
st="$(token)"
[[ "$st" == 200 ]] || fail "/token HTTP $st: $(cat "$work/token.json")"
echo "  5. POST /token (client_secret_basic, code_verifier) -> $st, keys: $(python3 -c 'import json,sys; print(sorted(json.load(open(sys.argv[1]))))' "$work/token.json")"
payload="$(id_payload)"
echo "  id_token payload: $payload"
py_assert 'p["peerbubble_roles"] == ["admin"]' "$payload"
py_assert 'p["name"] == "alice" and p["sub"] == "alice"' "$payload"
py_assert "p['nonce'] == '$nonce'" "$payload"
py_assert "p['iss'] == '$issuer' and p['aud'] == '$CLIENT_ID'" "$payload"
py_assert 'p["exp"] > time.time() > p["iat"] - 5' "$payload"
[[ "$(verify_sig)" == valid ]] || fail "signature did not verify in normal mode"
echo "  signature: valid; roles/name/nonce/iss/aud/exp OK"

echo "== replayed code"
code="$first_code"; verifier="$first_verifier"
st="$(token)"
err="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("error",""))' "$work/token.json")"
echo "  POST /token with the same code again -> $st $err"
[[ "$st" == 400 && "$err" == invalid_grant ]] || fail "replay not refused: $st $(cat "$work/token.json")"

echo "== wrong code_verifier (PKCE)"
login alice
verifier="$(rand 32)"
st="$(token)"
err="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("error",""))' "$work/token.json")"
echo "  POST /token with a wrong code_verifier -> $st $err"
[[ "$st" == 400 && "$err" == invalid_grant ]] || fail "bad PKCE verifier not refused"

echo "== client_secret_post is accepted too"
login alice >/dev/null
st="$(curl -sS -o "$work/token.json" -w '%{http_code}' \
  --data-urlencode "client_id=$CLIENT_ID" --data-urlencode "client_secret=$CLIENT_SECRET" \
  --data-urlencode grant_type=authorization_code --data-urlencode "code=$code" \
  --data-urlencode "redirect_uri=$REDIRECT_URI" --data-urlencode "code_verifier=$verifier" "$issuer/token")"
echo "  POST /token with client_id/client_secret in the form -> $st"
[[ "$st" == 200 ]] || fail "client_secret_post: HTTP $st $(cat "$work/token.json")"
py_assert "p['nonce'] == '$nonce' and p['peerbubble_roles'] == ['admin']" "$(id_payload)"

echo "== wrong client secret"
login alice >/dev/null
st="$(curl -sS -o "$work/token.json" -w '%{http_code}' -u "$CLIENT_ID:wrong" \
  --data-urlencode grant_type=authorization_code --data-urlencode "code=$code" \
  --data-urlencode "redirect_uri=$REDIRECT_URI" --data-urlencode "code_verifier=$verifier" "$issuer/token")"
err="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("error",""))' "$work/token.json")"
echo "  POST /token with a wrong secret -> $st $err"
[[ "$st" == 401 && "$err" == invalid_client ]] || fail "wrong secret not refused"

echo "== PKCE is required"
st="$(curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' "$issuer/auth?client_id=$CLIENT_ID&redirect_uri=$(urlenc "$REDIRECT_URI")&response_type=code&scope=openid&state=s&nonce=n")"
echo "  GET /auth without code_challenge -> $st"
[[ "$st" == 303\ "$REDIRECT_URI"*error=invalid_request* ]] || fail "auth without PKCE was not refused"

echo "== other accounts"
for who in ann bob nobody stranger; do
  login "$who" >/dev/null
  [[ "$(token)" == 200 ]] || fail "/token for $who"
  payload="$(id_payload)"
  roles="$(python3 -c 'import json,sys; print(json.dumps(json.loads(sys.argv[1])["peerbubble_roles"]))' "$payload")"
  echo "  $who -> peerbubble_roles $roles"
  expected="$(python3 -c 'import json,sys; print(json.dumps(json.loads(sys.argv[1]).get(sys.argv[2], [])))' "$ACCOUNTS" "$who")"
  [[ "$roles" == "$expected" ]] || fail "$who roles $roles != $expected"
done

echo "== test modes (fresh login each)"
for m in expired wrong-issuer wrong-audience wrong-nonce no-nonce tampered; do
  set_mode "$m"
  login alice >/dev/null
  st="$(token)"
  [[ "$st" == 200 ]] || fail "/token in mode $m: HTTP $st"
  payload="$(id_payload)"
  sig="$(verify_sig)"
  case "$m" in
    expired)        py_assert 'p["exp"] < time.time() - 3000 and p["iat"] < p["exp"]' "$payload"
                    [[ "$sig" == valid ]] || fail "$m: $sig" ;;
    wrong-issuer)   py_assert "p['iss'] != '$issuer'" "$payload"; [[ "$sig" == valid ]] || fail "$m: $sig" ;;
    wrong-audience) py_assert "p['aud'] == 'someone-else'" "$payload"; [[ "$sig" == valid ]] || fail "$m: $sig" ;;
    wrong-nonce)    py_assert "p['nonce'] != '$nonce'" "$payload"; [[ "$sig" == valid ]] || fail "$m: $sig" ;;
    no-nonce)       py_assert "'nonce' not in p" "$payload"; [[ "$sig" == valid ]] || fail "$m: $sig" ;;
    tampered)       [[ "$sig" == invalid:* ]] || fail "$m: signature still verifies" ;;
  esac
  # every other property stays right
  [[ "$m" == wrong-issuer ]]   || py_assert "p['iss'] == '$issuer'" "$payload"
  [[ "$m" == wrong-audience ]] || py_assert "p['aud'] == '$CLIENT_ID'" "$payload"
  [[ "$m" == wrong-nonce || "$m" == no-nonce ]] || py_assert "p['nonce'] == '$nonce'" "$payload"
  [[ "$m" == expired ]]        || py_assert 'p["exp"] > time.time()' "$payload"
  if [[ "$m" == expired ]]; then
    echo "  mode $m: exp=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["exp"])' "$payload") now=$(date +%s), signature $sig"
  else
    echo "  mode $m: signature $sig; payload $payload"
  fi
done
set_mode normal

st="$(curl -sS -o /dev/null -w '%{http_code}' -H 'content-type: application/json' -d '{"mode":"bogus"}' "$issuer/__test/mode")"
[[ "$st" == 400 ]] || fail "bogus mode accepted: $st"

echo "== stop"
kill -TERM "$provider_pid"
wait "$provider_pid" && echo "  provider exited 0 on SIGTERM" || fail "provider exit status $? on SIGTERM"
provider_pid=""
[[ "$(wc -l < "$work/provider.out")" == 1 ]] || fail "stdout had more than the listening line"

echo "OK: oidc fixture check passed"
