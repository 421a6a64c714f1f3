#!/usr/bin/env bash
# Builds the local Kubernetes control plane from pinned Go modules (pins: tools/k8s/pins.env).
#
#   tools/k8s/build.sh                  build unless cached; the last line of stdout is the bin dir
#   tools/k8s/build.sh --print-bin-dir  print the bin dir (exit 1 when it is not built yet)
#   tools/k8s/build.sh --force          rebuild even if cached
#   tools/k8s/build.sh --sync           after editing pins.env: update the wrapper modules'
#                                       go.mod/go.sum to the pins (needs the Go module proxy)
#
# Binaries are cached outside the checkout, keyed by a hash of pins.env and the wrapper modules'
# go.mod/go.sum: ${DATAMIX_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/datamix}/k8s-<hash>/bin.
# With a complete cache this script returns in milliseconds.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=pins.env
source "$HERE/pins.env"

MODE=build
case "${1:-}" in
  --print-bin-dir) MODE=print ;;
  --force) MODE=force ;;
  --sync) MODE=sync ;;
  "") ;;
  *) echo "usage: $0 [--print-bin-dir|--force|--sync]" >&2; exit 2 ;;
esac

STAGING=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
  cri-client cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice externaljwt
  kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
  mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller streaming)
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

if [[ $MODE == sync ]]; then
  export GOFLAGS="-mod=mod" GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
  cd "$HERE"
  for m in "${STAGING[@]}"; do go mod edit -replace "k8s.io/$m=k8s.io/$m@$KUBERNETES_STAGING_VERSION"; done
  tools=()
  for c in "${K8S_CMDS[@]}"; do tools+=("k8s.io/kubernetes/cmd/$c@$KUBERNETES_VERSION"); done
  go get -tool "${tools[@]}" "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go mod tidy
  cd "$HERE/training-operator"
  go get -tool "github.com/kubeflow/training-operator/cmd/training-operator.v1@$TRAINING_OPERATOR_VERSION"
  go mod tidy
  echo "synced go.mod/go.sum to pins.env; review and commit them" >&2
  exit 0
fi

# The wrapper modules must agree with pins.env (they are what is actually built).
check_pin() {  # file module version
  grep -qE "^[[:space:]]*(require[[:space:]]+)?$2 $3( |$)" "$1" || {
    echo "$1 does not pin $2 $3 (pins.env); run tools/k8s/build.sh --sync" >&2; exit 1; }
}
check_pin "$HERE/go.mod" k8s.io/kubernetes "$KUBERNETES_VERSION"
check_pin "$HERE/go.mod" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
grep -q "k8s.io/client-go => k8s.io/client-go $KUBERNETES_STAGING_VERSION" "$HERE/go.mod" || {
  echo "$HERE/go.mod: staging replace block is not at $KUBERNETES_STAGING_VERSION; run --sync" >&2; exit 1; }
check_pin "$HERE/training-operator/go.mod" github.com/kubeflow/training-operator "$TRAINING_OPERATOR_VERSION"
check_pin "$HERE/training-operator/go.mod" sigs.k8s.io/scheduler-plugins "$SCHEDULER_PLUGINS_VERSION"

KEY_FILES=("$HERE/pins.env" "$HERE/go.mod" "$HERE/go.sum" "$HERE/training-operator/go.mod"
  "$HERE/training-operator/go.sum")
# Bump when the build itself changes what a binary is (flags, patches), so that a cache built the
# old way is not reused. 2: helm with the Kubernetes version ldflags of its Makefile.
BUILD_FLAGS_VERSION=2
KEY="$( { cat "${KEY_FILES[@]}"; echo "build flags $BUILD_FLAGS_VERSION"; } | sha256sum | cut -c1-16)"
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

# One build per pin set at a time (concurrent `cluster-up`s, CI): wait for the other one.
mkdir -p "$OUT"
exec 9>"$OUT/.build.lock"
if command -v flock >/dev/null; then
  flock 9
  if [[ $MODE == build ]] && complete; then
    echo "k8s binaries built by a concurrent run (pins hash $KEY)" >&2
    echo "$BIN"
    exit 0
  fi
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
pkgs=()
for c in "${K8S_CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
(cd "$HERE" && "${NICE[@]}" go build -ldflags "$KLD" -o "$TMP/" "${pkgs[@]}")
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
# The ldflags of helm's own Makefile: its version, and the Kubernetes version it assumes when it
# asks no cluster (`helm template`, `helm lint`): the client-go it is built with, major + 1 and
# minor (v0.37.x -> v1.37). Without them helm assumes v1.20.0 and refuses charts needing more.
HELM_GOMOD="$(cd / && GOFLAGS= go mod download -json "helm.sh/helm/v3@$HELM_VERSION" |
  sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
HELM_CLIENT_GO="$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$HELM_GOMOD")"
IFS=. read -r HELM_CG_MAJOR HELM_KUBE_MINOR _ <<<"${HELM_CLIENT_GO#v}"
[[ "$HELM_CG_MAJOR" =~ ^[0-9]+$ && "$HELM_KUBE_MINOR" =~ ^[0-9]+$ ]] || {
  echo "could not read k8s.io/client-go from $HELM_GOMOD (got '$HELM_CLIENT_GO')" >&2; exit 1; }
HELM_KUBE_VERSION="v$((HELM_CG_MAJOR + 1)).$HELM_KUBE_MINOR.0"
HLD="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  HLD+=" -X $pkg.k8sVersionMajor=$((HELM_CG_MAJOR + 1)) -X $pkg.k8sVersionMinor=$HELM_KUBE_MINOR"
done
ginstall -ldflags "$HLD" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
# The ldflags took (they name package variables: a renamed one is silently ignored by the linker).
HELM_CHECK="$TMP/helm-check"
mkdir -p "$HELM_CHECK/chart/templates"
printf 'apiVersion: v2\nname: check\nversion: 0.0.0\n' > "$HELM_CHECK/chart/Chart.yaml"
printf 'kube: {{ .Capabilities.KubeVersion.Version }}\n' > "$HELM_CHECK/chart/templates/check.yaml"
HELM_ASSUMES="$(HELM_CACHE_HOME="$HELM_CHECK" HELM_CONFIG_HOME="$HELM_CHECK" HELM_DATA_HOME="$HELM_CHECK" \
  "$TMP/helm" template "$HELM_CHECK/chart" | sed -n 's/^kube: //p')"
[[ "$HELM_ASSUMES" == "$HELM_KUBE_VERSION" ]] || {
  echo "helm assumes Kubernetes '$HELM_ASSUMES', not $HELM_KUBE_VERSION: its version ldflags did not apply" >&2; exit 1; }
rm -rf "$HELM_CHECK"
log "helm assumes Kubernetes $HELM_KUBE_VERSION without a cluster (client-go $HELM_CLIENT_GO)"

# --- training-operator: wrapper module tools/k8s/training-operator (go.mod pins v1.9.4 and, through
# it, exactly the dependency versions of upstream's go.mod). Upstream's main.go is taken from the
# module cache with one line added (webhook server Host from $TRAINING_OPERATOR_WEBHOOK_HOST, so it
# can bind 127.0.0.1; upstream has no flag for it) and supplied with `go build -overlay`.
log "building training-operator $TRAINING_OPERATOR_VERSION"
TO_DIR="$HERE/training-operator"
(cd "$TO_DIR" && go mod download github.com/kubeflow/training-operator)
TO_SRC="$(cd "$TO_DIR" && go list -m -f '{{.Dir}}' github.com/kubeflow/training-operator)/cmd/training-operator.v1/main.go"
mkdir -p "$TMP/overlay"
sed 's|^\t\t\tPort: webhookServerPort,$|\t\t\tHost: os.Getenv("TRAINING_OPERATOR_WEBHOOK_HOST"),\n\t\t\tPort: webhookServerPort,|' \
  "$TO_SRC" > "$TMP/overlay/main.go"
[[ "$(grep -c 'TRAINING_OPERATOR_WEBHOOK_HOST' "$TMP/overlay/main.go")" == 1 ]] || {
  echo "could not patch $TO_SRC (webhook host line)" >&2; exit 1; }
printf '{"Replace":{"%s":"%s"}}\n' "$TO_DIR/main.go" "$TMP/overlay/main.go" > "$TMP/overlay/overlay.json"
(cd "$TO_DIR" && "${NICE[@]}" go build -overlay "$TMP/overlay/overlay.json" -ldflags "-s -w" \
  -o "$TMP/training-operator" .)
rm -rf "$TMP/overlay"

for b in "${BINARIES[@]}"; do [[ -x "$TMP/$b" ]] || { echo "missing $b after build" >&2; exit 1; }; done
rm -rf "$BIN"
mv "$TMP" "$BIN"
trap - EXIT
cp "${KEY_FILES[0]}" "$OUT/pins.env"
date -u +%FT%TZ > "$OUT/.complete"
log "done in $(( $(date +%s) - START ))s"
echo "$BIN"
