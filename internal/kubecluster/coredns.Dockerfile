# The test cluster's DNS: CoreDNS (built from the Go module proxy by scripts/k8s-build.sh)
# alone. It runs as root with only NET_BIND_SERVICE, for port 53 (see dns.go).
FROM scratch
COPY bin/coredns /coredns
ENTRYPOINT ["/coredns"]
LABEL org.opencontainers.image.title="coredns for detour's test cluster" \
      org.opencontainers.image.description="CoreDNS serving cluster.local in Detour's test cluster (internal/kubecluster)" \
      org.opencontainers.image.source="https://github.com/coredns/coredns"
