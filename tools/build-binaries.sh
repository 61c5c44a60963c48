#!/usr/bin/env bash
# Builds the control-plane binaries used by tests, `make dev` and `make e2e`: kube-apiserver,
# kube-controller-manager, kube-scheduler and etcd, from the Go modules in tools/k8s and tools/etcd.
#
# The binaries land in $LOCALMODEL_KUBE_ASSETS (default
# ~/.cache/localmodel-controller/k8s-v<version>), outside the work tree. A binary that is present
# and reports the expected version is not rebuilt, so only the first run on a machine pays the
# cold build (about 20-30 minutes on two cores).
set -euo pipefail

KUBE_VERSION=1.36.3
ETCD_VERSION=3.6.16
here=$(cd "$(dirname "$0")" && pwd)
dest=${LOCALMODEL_KUBE_ASSETS:-${XDG_CACHE_HOME:-$HOME/.cache}/localmodel-controller/k8s-v$KUBE_VERSION}
mkdir -p "$dest"

has_version() {  # binary, expected version string
  # Capture first: `grep -q` exits at its first match, and with pipefail the binary's SIGPIPE
  # would then fail the check at random.
  local reported
  [ -x "$dest/$1" ] && reported=$("$dest/$1" --version 2>/dev/null) && grep -qF "$2" <<<"$reported"
}

stamp() {  # -X flags that make the binaries report their release version
  local v
  for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    printf -- '-X %s.gitVersion=v%s -X %s.gitMajor=1 -X %s.gitMinor=%s ' \
      "$v" "$KUBE_VERSION" "$v" "$v" "$(cut -d. -f2 <<<"$KUBE_VERSION")"
    printf -- '-X %s.gitTreeState=clean -X %s.buildDate=1970-01-01T00:00:00Z ' "$v" "$v"
  done
}

build() {  # module dir, output (a directory ending in / or a file), package paths...
  local module=$1 output=$2; shift 2
  local started=$SECONDS
  echo "building $* into $output" >&2
  (cd "$here/$module" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath \
    -ldflags "-s -w $(stamp)" -o "$output" "$@")
  echo "built in $((SECONDS - started))s" >&2
}

kube_missing=()
for bin in kube-apiserver kube-controller-manager kube-scheduler; do
  has_version "$bin" "v$KUBE_VERSION" || kube_missing+=("k8s.io/kubernetes/cmd/$bin")
done
if [ ${#kube_missing[@]} -gt 0 ]; then
  build k8s "$dest/" "${kube_missing[@]}"
fi

if ! has_version etcd "etcd Version: $ETCD_VERSION"; then
  build etcd "$dest/etcd" go.etcd.io/etcd/server/v3
fi

for bin in kube-apiserver kube-controller-manager kube-scheduler; do
  has_version "$bin" "v$KUBE_VERSION" || { echo "$bin does not report v$KUBE_VERSION" >&2; exit 1; }
done
has_version etcd "etcd Version: $ETCD_VERSION" || { echo "etcd does not report $ETCD_VERSION" >&2; exit 1; }
echo "$dest"
