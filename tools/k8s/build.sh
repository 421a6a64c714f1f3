#!/usr/bin/env bash
# Builds the local Kubernetes control plane from pinned Go modules (pins: tools/k8s/pins.env).
#
#   tools/k8s/build.sh              build if not cached; last line of stdout = the bin dir
#   tools/k8s/build.sh --print-bin-dir   print the bin dir (exit 1 when not built yet)
#   tools/k8s/build.sh --force      rebuild even if cached
#
# Binaries are cached outside the checkout, keyed by a hash of pins.env and the wrapper
# modules' go.mod/go.sum: ${DATAMIX_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/datamix}/k8s-<hash>/bin
# A cached, complete bin dir makes this script return in well under a second.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=pins.env
source "$HERE/pins.env"

MODE=build
case "${1:-}" in
  --print-bin-dir) MODE=print ;;
  --force) MODE=force ;;
  "") ;;
  *) echo "usage: $0 [--print-bin-dir|--force]" >&2; exit 2 ;;
esac

KEY_FILES=("$HERE/pins.env" "$HERE/go.mod" "$HERE/go.sum")
for f in "$HERE/training-operator/go.mod" "$HERE/training-operator/go.sum"; do
  [[ -f "$f" ]] && KEY_FILES+=("$f")
done
KEY="$(cat "${KEY_FILES[@]}" | sha256sum | cut -c1-16)"
CACHE_ROOT="${DATAMIX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/datamix}"
OUT="$CACHE_ROOT/k8s-$KEY"
BIN="$OUT/bin"
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok training-operator helm)

complete() {
  [[ -f "$OUT/.complete" ]] || return 1
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}

if [[ $MODE == print ]]; then
  complete && { echo "$BIN"; exit 0; }
  echo "not built: $BIN (run tools/k8s/build.sh)" >&2
  exit 1
fi
if [[ $MODE == build ]] && complete; then
  echo "k8s binaries cached (pins hash $KEY)" >&2
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { echo "go not found (need Go >= $GO_VERSION_MIN)" >&2; exit 1; }
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -buildvcs=false -trimpath -mod=readonly"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
NICE=(nice -n 10)

TMP="$OUT/bin.tmp.$$"
rm -rf "$TMP"
mkdir -p "$TMP"
trap 'rm -rf "$TMP"' EXIT
START=$(date +%s)
log() { echo "[build.sh +$(( $(date +%s) - START ))s] $*" >&2; }

# --- Kubernetes + etcd: the wrapper module tools/k8s (go.mod: replace of every staging module).
K8S_MINOR="${KUBERNETES_VERSION#v1.}"; K8S_MINOR="${K8S_MINOR%%.*}"
KLD="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  KLD+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR"
  KLD+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
log "building kube-apiserver kube-controller-manager kube-scheduler kubectl $KUBERNETES_VERSION"
(cd "$HERE" && "${NICE[@]}" go build -ldflags "$KLD" -o "$TMP/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
log "building etcd $ETCD_VERSION"
(cd "$HERE" && "${NICE[@]}" go build -ldflags "-s -w" -o "$TMP/etcd" go.etcd.io/etcd/server/v3)

# --- kwok, helm: plain `go install module@version` (their go.mod has no replace).
# GOFLAGS=-mod=readonly is not allowed outside a module; run from a neutral dir.
ginstall() {
  (cd / && GOFLAGS="-buildvcs=false -trimpath" GOBIN="$TMP" "${NICE[@]}" go install "$@")
}
log "building kwok $KWOK_VERSION"
ginstall -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBERNETES_VERSION#v}" \
  "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
log "building helm $HELM_VERSION"
ginstall -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"

# --- training-operator: plain go install if the proxy serves scheduler-plugins, else the
# wrapper module tools/k8s/training-operator (replace of scheduler-plugins by a local stub).
log "building training-operator $TRAINING_OPERATOR_VERSION"
if [[ -f "$HERE/training-operator/go.mod" ]]; then
  (cd "$HERE/training-operator" && "${NICE[@]}" go build -ldflags "-s -w" -o "$TMP/training-operator" \
    github.com/kubeflow/training-operator/cmd/training-operator.v1)
else
  ginstall -ldflags "-s -w" "github.com/kubeflow/training-operator/cmd/training-operator.v1@$TRAINING_OPERATOR_VERSION"
  mv "$TMP/training-operator.v1" "$TMP/training-operator"
fi

for b in "${BINARIES[@]}"; do [[ -x "$TMP/$b" ]] || { echo "missing $b after build" >&2; exit 1; }; done
rm -rf "$BIN"
mv "$TMP" "$BIN"
trap - EXIT
cp "${KEY_FILES[0]}" "$OUT/pins.env"
date -u +%FT%TZ > "$OUT/.complete"
log "done in $(( $(date +%s) - START ))s"
echo "$BIN"
