#!/usr/bin/env bash
# End-to-end on a real cluster: kind, the two images, `helm install`; the admin API creates a bubble, the
# operator deploys it, members enroll on the bubble's origin and meet through it; deleting it removes it.
# Needs docker and kind (and curl, jq). Run from anywhere:  tests/e2e/kind/run.sh
# KEEP_CLUSTER=1 leaves the cluster up for inspection.
set -euo pipefail

root="$(cd "$(dirname "$0")/../../.." && pwd)"
cluster="${CLUSTER:-peerbubble-e2e}"
tag="e2e"
helm="${PEERBUBBLE_HELM:-$HOME/.cache/peerbubble/tools/kubectl-v33/helm/helm}"
work="$(mktemp -d)"
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [[ -z "${KEEP_CLUSTER:-}" ]]; then kind delete cluster --name "$cluster" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

for tool in docker kind kubectl curl jq; do
  command -v "$tool" >/dev/null || { echo "e2e: $tool is missing" >&2; exit 2; }
done
[[ -x "$helm" ]] || { echo "e2e: helm missing at $helm (cargo xtask test installs it)" >&2; exit 2; }

echo "== cluster"
kind create cluster --name "$cluster" --wait 120s
echo "== images"
docker build -f "$root/docker/peerbubble.Dockerfile" -t "peerbubble/peerbubble:$tag" "$root"
docker build -f "$root/docker/operator.Dockerfile" -t "peerbubble/operator:$tag" "$root"
kind load docker-image --name "$cluster" "peerbubble/peerbubble:$tag" "peerbubble/operator:$tag"

echo "== helm install"
# The admin API applies the Bubbles and Categories made through it (here in the release namespace), its
# bubble-servers present ServiceAccount tokens (the chart's default); TURN stays inside the cluster in kind.
"$helm" install pb "$root/charts/peerbubble" --namespace peerbubble --create-namespace --wait --timeout 5m \
  --set image.registry=peerbubble --set image.tag="$tag" --set image.pullPolicy=Never \
  --set adminApi.publicUrl=http://127.0.0.1:18481 \
  --set-json 'adminApi.controlPlane.bubbleTemplate={"turn":{"serviceType":"ClusterIP"}}'
"$helm" test pb --namespace peerbubble --timeout 2m

echo "== admin API"
kubectl -n peerbubble port-forward svc/pb-peerbubble-admin-api 18481:8481 >"$work/pf-admin.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do curl -fsS http://127.0.0.1:18481/readyz >/dev/null 2>&1 && break; sleep 1; done
token="$(kubectl -n peerbubble logs deploy/pb-peerbubble-admin-api | grep -o 'admin token [^ ]*' | head -1 | cut -d' ' -f3)"
[[ -n "$token" ]] || { echo "e2e: no bootstrap token in the admin API log" >&2; exit 1; }
api() { curl -fsS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' "$@"; }

echo "== the admin API creates the bubble; the operator deploys it"
api -X POST http://127.0.0.1:18481/api/v1/bubbles -d '{"id":"e2e","display_name":"E2E"}' >/dev/null
api -X POST http://127.0.0.1:18481/api/v1/bubbles/e2e/categories -d '{"id":"team","display_name":"Team","sees":["team"]}' >/dev/null
for _ in $(seq 30); do kubectl -n peerbubble get bubble/e2e >/dev/null 2>&1 && break; sleep 1; done
kubectl -n peerbubble get bubble/e2e -o jsonpath='{.metadata.labels.app\.kubernetes\.io/managed-by}' | grep -qx peerbubble-admin-api \
  || { echo "e2e: the Bubble was not applied by the admin API" >&2; exit 1; }
if kubectl -n peerbubble get secret e2e-credential >/dev/null 2>&1; then
  echo "e2e: a credential Secret was written although bubble-servers present ServiceAccount tokens" >&2; exit 1
fi
kubectl -n peerbubble wait --for=condition=Ready bubble/e2e --timeout=180s
kubectl -n peerbubble wait --for=condition=Ready category/team --timeout=60s
# The console sees what the operator reports.
for _ in $(seq 30); do
  ready="$(api http://127.0.0.1:18481/api/v1/bubbles | jq -r '.[] | select(.id=="e2e") | .platform.ready')"
  [[ "$ready" == "true" ]] && break
  sleep 1
done
[[ "$ready" == "true" ]] || { echo "e2e: the admin API does not report the Bubble Ready" >&2; exit 1; }

echo "== members enroll on the bubble's own origin and meet through it"
peerbubble() { docker run --rm --network host -v "$work:/work" -u "$(id -u)" "peerbubble/peerbubble:$tag" "$@"; }
kubectl -n peerbubble port-forward svc/e2e-signal 18480:8480 >"$work/pf-signal.log" 2>&1 &
pids+=($!)
for _ in $(seq 30); do curl -fsS http://127.0.0.1:18480/readyz >/dev/null 2>&1 && break; sleep 1; done
for member in alice bob; do
  link="$(peerbubble invite --api http://127.0.0.1:18481 --token "$token" --bubble e2e --name "$member" --category team | tail -1)"
  # Through the bubble-server, which passes the enrollment to the admin API (with its ServiceAccount token).
  peerbubble enroll --api http://127.0.0.1:18480 --invite "$link" --key-out "/work/$member.key"
done
sleep 3  # the bubble-server follows the directory every second
out="$(peerbubble connect --key /work/alice.key --url ws://127.0.0.1:18480/v1/signal)"
echo "$out"
grep -q bob <<<"$out" || { echo "e2e: alice does not see bob through the bubble" >&2; exit 1; }

echo "== deleting the bubble in the admin API removes it from the cluster"
api -X DELETE http://127.0.0.1:18481/api/v1/bubbles/e2e >/dev/null
kubectl -n peerbubble wait --for=delete bubble/e2e --timeout=120s
kubectl -n peerbubble wait --for=delete deployment/e2e --timeout=120s
echo "e2e: PASSED"
