# Detour's one image, for both the init container (`detour init`, which needs iptables) and
# the sidecar (`detour proxy`): the static detour binary, Debian's iptables with both backends
# (iptables-legacy and iptables-nft) and the libraries those load, nothing else (no shell, no
# package manager). Default user 2102, the proxy's UID; the init container runs as root with
# NET_ADMIN and NET_RAW.
#
#   make build && docker build -t detour .      # or: make image (buildah, no daemon)
#
# The stage "controller" is the control plane's image: the static detour-controller alone
# (it runs no iptables, so none of the first stage), user 2103:
#
#   docker build --target controller -t detour-controller .
#
# One file for both, so that the two images are built from one definition with the same
# labels and version; the sidecar's image stays the last stage, the one a plain build makes.
# bin/detour and bin/detour-controller come from `make build` (CGO_ENABLED=0, -tags grpcnotrace).
FROM debian:bookworm-slim AS iptables
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
# Gather the iptables package's programs and modules (not its docs), the iptables and
# ip6tables alternatives (nft, as Debian sets them), and every shared library those link,
# under /out in the merged-/usr layout; plus the two users the image knows.
RUN set -eu; \
    mkdir -p /out/usr/lib /out/usr/sbin /out/usr/lib64 /out/etc/alternatives /out/tmp /out/run; \
    for d in lib lib64 sbin bin; do ln -s usr/$d /out/$d; done; \
    mkdir -p /out/usr/bin; chmod 1777 /out/tmp; \
    copy() { real=$(readlink -f "$(dirname "$1")")/$(basename "$1"); \
             mkdir -p "/out$(dirname "$real")"; cp -a "$real" "/out$real"; \
             if [ -L "$real" ]; then copy "$(readlink -f "$real")"; fi; }; \
    dpkg -L iptables | grep -vE '^/usr/share/(doc|man|lintian)' | while read -r f; do \
        if [ -f "$f" ] || [ -L "$f" ]; then copy "$f"; fi; done; \
    for f in /usr/sbin/ip*tables*; do \
        case "$(readlink "$f")" in /etc/alternatives/*) cp -a "$f" /out/usr/sbin/; cp -a "$(readlink "$f")" /out/etc/alternatives/;; esac; done; \
    for f in $(find /usr/sbin/xtables-*-multi /usr/lib/x86_64-linux-gnu/xtables -type f) /lib64/ld-linux-x86-64.so.2; do \
        copy "$f"; ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// {print $3}'; done | sort -u | while read -r lib; do copy "$lib"; done; \
    printf 'root:x:0:0:root:/root:/usr/sbin/nologin\ndetour:x:2102:2102:detour proxy:/nonexistent:/usr/sbin/nologin\n' >/out/etc/passwd; \
    printf 'root:x:0:\ndetour:x:2102:\n' >/out/etc/group

FROM scratch AS controller
COPY bin/detour-controller /usr/local/bin/detour-controller
USER 2103:2103
ENTRYPOINT ["/usr/local/bin/detour-controller"]
ARG VERSION=dev
LABEL org.opencontainers.image.title="detour-controller" \
      org.opencontainers.image.description="Detour service mesh: the controller (discovery, workload certificates, the injection webhook)" \
      org.opencontainers.image.source="https://github.com/detourmesh/detour" \
      org.opencontainers.image.version="${VERSION}"

FROM scratch
COPY --from=iptables /out/ /
COPY bin/detour /usr/local/bin/detour
USER 2102:2102
ENTRYPOINT ["/usr/local/bin/detour"]
ARG VERSION=dev
LABEL org.opencontainers.image.title="detour" \
      org.opencontainers.image.description="Detour service mesh: the init container (detour init) and the sidecar proxy (detour proxy)" \
      org.opencontainers.image.source="https://github.com/detourmesh/detour" \
      org.opencontainers.image.version="${VERSION}"
