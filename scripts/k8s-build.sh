#!/usr/bin/env bash
# Builds the pinned Kubernetes components of the test cluster (and its CoreDNS) once, into a cache directory outside
# the repository keyed by version, so CI and later runs reuse them (cold: about 14 minutes on 2
# cores; warm: nothing to do). Prints the cache directory on its last line.
#
# k8s.io/kubernetes and etcd's server cannot be `go install`ed (their go.mod files replace their
# staging modules with local paths), so each is built from a scratch module that takes the
# upstream go.mod as it is, with every local replace pointed at the same version on the module
# proxy.
set -euo pipefail
export PATH=$PATH:/usr/local/go/bin
K8S_VERSION=${K8S_VERSION:-v1.37.2}
STAGING_VERSION=v0.${K8S_VERSION#v1.}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.2.9}
COREDNS_VERSION=${COREDNS_VERSION:-v1.15.0}
CACHE=${DETOUR_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/detour/k8s-$K8S_VERSION}
BIN=$CACHE/bin
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
mkdir -p "$BIN"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

missing() { for b in "$@"; do [ -x "$BIN/$b" ] || return 0; done; return 1; }
log() { printf 'k8s-build: %s\n' "$*" >&2; }

# scratch DIR MODULE@VERSION: a module in DIR requiring MODULE with MODULE's own go.mod
# requirements and its local replaces pointed at VERSION on the module proxy.
scratch() {
	local dir=$1 mod=${2%@*} ver=${2#*@} staging=$3
	rm -rf "$dir" && mkdir -p "$dir"
	local gomod
	gomod=$(go mod download -json "$mod@$ver" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
	sed -e "s#^module .*#module detour.local/build#" \
		-e "s#^\([[:space:]]*\)\([^[:space:]]*\) => \.\{1,2\}/[^[:space:]]*#\1\2 => \2 $staging#" \
		"$gomod" >"$dir/go.mod"
	printf '\nrequire %s %s\n' "$mod" "$ver" >>"$dir/go.mod"
	printf 'package build\n' >"$dir/build.go"
}

# The version the binaries report (kubectl version, the Node's kubeletVersion, /version):
# stamped as Kubernetes' own build does, since clients choose features by it.
v=${K8S_VERSION#v}
K8S_LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	K8S_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=${v%%.*} -X $pkg.gitMinor=$(echo "$v" | cut -d. -f2)"
	K8S_LDFLAGS+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
# Binaries built with another recipe are rebuilt (with a warm Go cache, only linked again),
# each replaced by a rename so that a cluster running the old one keeps running.
stamp="$K8S_VERSION $K8S_LDFLAGS"
rebuild=
[ "$(cat "$BIN/.k8s-recipe" 2>/dev/null)" != "$stamp" ] && rebuild=1

if [ -n "$rebuild" ] || missing "${K8S_CMDS[@]}"; then
	log "building Kubernetes $K8S_VERSION (${K8S_CMDS[*]}); cold, this takes about 14 minutes"
	scratch "$CACHE/src/kubernetes" "k8s.io/kubernetes@$K8S_VERSION" "$STAGING_VERSION"
	for c in "${K8S_CMDS[@]}"; do
		[ -z "$rebuild" ] && [ -x "$BIN/$c" ] && continue
		log "  $c"
		(cd "$CACHE/src/kubernetes" && CGO_ENABLED=0 go build -trimpath -ldflags "$K8S_LDFLAGS" -o "$BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c")
		mv "$BIN/$c.tmp" "$BIN/$c"
	done
	echo "$stamp" >"$BIN/.k8s-recipe"
fi

if missing etcd; then
	log "building etcd $ETCD_VERSION"
	scratch "$CACHE/src/etcd" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "$ETCD_VERSION"
	(cd "$CACHE/src/etcd" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
	mv "$BIN/etcd.tmp" "$BIN/etcd"
fi

if missing containerd containerd-shim-runc-v2 ctr; then
	log "building containerd $CONTAINERD_VERSION"
	for c in containerd containerd-shim-runc-v2 ctr; do
		[ -x "$BIN/$c" ] && continue
		GOBIN=$BIN CGO_ENABLED=0 GOFLAGS= go install -trimpath -ldflags "-s -w" "github.com/containerd/containerd/v2/cmd/$c@$CONTAINERD_VERSION"
	done
fi

# CoreDNS, the test cluster's DNS: its go.mod has no local replaces, so go install works.
if [ "$(cat "$BIN/.coredns-version" 2>/dev/null)" != "$COREDNS_VERSION" ] || missing coredns; then
	log "building CoreDNS $COREDNS_VERSION"
	GOBIN=$BIN CGO_ENABLED=0 GOFLAGS= go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
	echo "$COREDNS_VERSION" >"$BIN/.coredns-version"
fi

echo "$CACHE"
