#!/usr/bin/env bash
# Builds (or reuses) the local control-plane binaries from the pinned Go tool modules in
# e2e/cluster/tools/: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok.
# They land in a cache directory outside the repository, keyed by the pinned versions and
# the hash of the go.mod/go.sum files, and the script prints that directory on stdout.
# One progress line per binary goes to stderr: the cold build takes many minutes.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/tools"

k8s_version="$(awk '/^require k8s.io\/kubernetes /{print $3}' "$tools/k8s/go.mod")"
etcd_version="$(awk '$1=="go.etcd.io/etcd/server/v3"{print $2}' "$tools/etcd/go.mod")"
kwok_version="$(awk '$1=="sigs.k8s.io/kwok"{print $2}' "$tools/kwok/go.mod")"

label=cluster-build
# shellcheck source=go-build-lib.sh
source "$here/go-build-lib.sh"
cache_bin "k8s-$k8s_version-etcd-$etcd_version-kwok-$kwok_version" \
  "$tools"/{etcd,k8s,kwok}/go.mod "$tools"/{etcd,k8s,kwok}/go.sum

# Kubernetes stamps its version through ldflags (hack/lib/version.sh); without them the
# servers report v0.0.0-master and Helm's kubeVersion checks fail.
major="${k8s_version#v}"; major="${major%%.*}"
minor="${k8s_version#v*.}"; minor="${minor%%.*}"
k8s_ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=$major -X $p.gitMinor=$minor"
  k8s_ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done

build etcd "$tools/etcd" go.etcd.io/etcd/server/v3 ""
build kwok "$tools/kwok" sigs.k8s.io/kwok/cmd/kwok \
  "-X sigs.k8s.io/kwok/pkg/consts.Version=$kwok_version"
for component in kube-apiserver kube-controller-manager kube-scheduler; do
  build "$component" "$tools/k8s" "k8s.io/kubernetes/cmd/$component" "$k8s_ldflags"
done

# kwok ships its built-in behaviour as Stage manifests ("fast" node and pod lifecycles, as
# kwokctl configures them) rather than compiled in: collect them from the pinned module.
stages="$bin/kwok-stages.yaml"
if [[ ! -s "$stages" ]]; then
  src="$(cd "$tools/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    echo "---"; cat "$src/$f"
  done >"$stages.tmp"
  mv "$stages.tmp" "$stages"
  echo "[cluster-build] kwok stages: collected into $stages" >&2
fi

echo "$bin"
