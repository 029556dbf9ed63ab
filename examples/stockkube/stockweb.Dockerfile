# The StockKube example's stockweb: its static binary (make build) alone, as a non-root user.
FROM scratch
COPY bin/stockweb /stockweb
USER 65532:65532
ENTRYPOINT ["/stockweb"]
LABEL org.opencontainers.image.title="stockweb" \
      org.opencontainers.image.description="StockKube example for Detour: stockweb" \
      org.opencontainers.image.source="https://github.com/detourmesh/detour"
