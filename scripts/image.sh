#!/usr/bin/env bash
# Builds Detour's image from the top-level Dockerfile, the StockKube images and the test
# cluster's pause and CoreDNS images, without a Docker daemon or a registry: buildah builds the same
# Dockerfiles a Docker user builds, on a Debian base made here with debootstrap (minbase) and
# stored under the name the Dockerfile's FROM uses, and writes each image as a docker-archive
# under bin/images/ that `ctr -n k8s.io images import` (and `docker load`) accepts.
# Needs the binaries of `make build` and bin/pause. Prints the archives and their sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${DETOUR_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/detour/images}
OUT=bin/images
SUITE=bookworm
BASE=docker.io/library/debian:bookworm-slim
TAG=${DETOUR_IMAGE_TAG:-dev}
mkdir -p "$CACHE/cni" "$OUT"
# vfs: no overlay mounts to leave behind; storage in the cache, so warm builds reuse layers.
# chroot isolation with the host's network: buildah's default would create a CNI bridge and
# firewall rules in the root network namespace for each RUN.
# (Its network configuration directory is moved into the cache too, or it makes /etc/cni.)
printf '[network]\nnetwork_config_dir = "%s"\n' "$CACHE/cni" >"$CACHE/containers.conf"
export CONTAINERS_CONF=$CACHE/containers.conf
BA=(buildah --storage-driver vfs --root "$CACHE/storage" --runroot "$CACHE/run")
BUD=(bud --isolation chroot --network host --pull=never --layers -q)
log() { printf 'image: %s\n' "$*" >&2; }

if ! "${BA[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
	tarball=$CACHE/debian-$SUITE-minbase.tar
	if [ ! -s "$tarball" ]; then
		log "making the Debian $SUITE base with debootstrap --variant=minbase (about a minute)"
		root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
		trap 'rm -rf "$root"' EXIT
		debootstrap --variant=minbase "$SUITE" "$root" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 ||
			{ tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
		rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
		tar -C "$root" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
		rm -rf "$root"; trap - EXIT
	fi
	log "importing the base as $BASE"
	ctr=$("${BA[@]}" from scratch)
	"${BA[@]}" add "$ctr" "$tarball" / >/dev/null
	"${BA[@]}" config --cmd /bin/bash "$ctr"
	"${BA[@]}" commit -q --rm "$ctr" "$BASE" >/dev/null
fi

# build NAME DOCKERFILE [BUILDAH-ARGS...]: builds detour.local/NAME:TAG and writes
# bin/images/NAME.tar.
build() {
	local name=$1 file=$2 ref=detour.local/$1:$TAG
	shift 2
	log "building $ref from $file $*"
	"${BA[@]}" "${BUD[@]}" --build-arg VERSION="$TAG" "$@" -f "$file" -t "$ref" . >/dev/null
	rm -f "$OUT/$name.tar"
	"${BA[@]}" push -q "$ref" "docker-archive:$OUT/$name.tar:$ref"
	printf '%s\t%s\t%s\n' "$ref" "$OUT/$name.tar" "$(du -h "$OUT/$name.tar" | cut -f1)"
}
targets=${*:-detour detour-controller stockdata stockweb pause coredns}
K8S_BIN=${DETOUR_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/detour/k8s-v1.37.2}/bin
for t in $targets; do
	case $t in
	detour) build detour Dockerfile ;;
	detour-controller) build detour-controller Dockerfile --target controller ;;
	stockdata | stockweb) build "$t" "examples/stockkube/$t.Dockerfile" ;;
	pause) TAG=3.10 build pause internal/kubecluster/pause/Dockerfile ;;
	coredns)
		# The test cluster's DNS, from the binary scripts/k8s-build.sh (make k8s) builds.
		if [ ! -x "$K8S_BIN/coredns" ]; then
			log "no $K8S_BIN/coredns yet (make k8s builds it): skipping the coredns image"
			continue
		fi
		cp "$K8S_BIN/coredns" bin/coredns
		TAG=$(cat "$K8S_BIN/.coredns-version") build coredns internal/kubecluster/coredns.Dockerfile
		;;
	*) echo "image: unknown image $t" >&2; exit 2 ;;
	esac
done
