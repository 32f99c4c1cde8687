#!/usr/bin/env bash
# Create a kind cluster, register the simulated node pool in it through kwok, and run the
# e2e tests against it with MODELDEPLOY_E2E_CLUSTER=existing. Needs Docker, kind, Go and
# Python 3.11 (the GitHub Actions workflow .github/workflows/e2e-kind.yml sets them up).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

name="${KIND_CLUSTER_NAME:-modeldeploy-e2e}"
workdir=".cluster/kind"
kubeconfig="$workdir/kubeconfig"
mkdir -p "$workdir/logs"

make venv binaries
bin="$(e2e/cluster/build-binaries.sh)"
kubectl="$(.venv/bin/python -m e2e.cluster tools)/kubectl"

kind create cluster --name "$name" --config e2e/kind/cluster.yaml --kubeconfig "$kubeconfig" --wait 180s
cleanup() {
  [[ -n "${kwok_pid:-}" ]] && kill "$kwok_pid" 2>/dev/null || true
  [[ "${KEEP_CLUSTER:-}" == 1 ]] || kind delete cluster --name "$name"
}
trap cleanup EXIT

# The same kwok build and flags as the local control plane (e2e/cluster/local.py).
"$bin/kwok" --kubeconfig "$kubeconfig" --manage-all-nodes=false \
  --config="$bin/kwok-stages.yaml" --manage-nodes-with-label-selector=type=kwok --cidr=127.1.0.0/16 --node-ip=127.0.0.1 \
  --server-address=127.0.0.1:0 >"$workdir/logs/kwok.log" 2>&1 &
kwok_pid=$!

# `create` (not apply) sends status too, so capacity and allocatable GPUs arrive at once.
"$kubectl" --kubeconfig "$kubeconfig" create -f e2e/cluster/nodes.yaml
"$kubectl" --kubeconfig "$kubeconfig" wait --for=condition=Ready node -l type=kwok --timeout=180s
"$kubectl" --kubeconfig "$kubeconfig" get nodes -L nvidia.com/gpu.product,kubernetes.io/arch

MODELDEPLOY_E2E_CLUSTER=existing KUBECONFIG="$kubeconfig" .venv/bin/python -m pytest tests/e2e -ra
