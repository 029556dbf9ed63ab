# The StockKube example's stockdata: its static binary (make build) alone, as a non-root user.
FROM scratch
COPY bin/stockdata /stockdata
USER 65532:65532
ENTRYPOINT ["/stockdata"]
LABEL org.opencontainers.image.title="stockdata" \
      org.opencontainers.image.description="StockKube example for Detour: stockdata" \
      org.opencontainers.image.source="https://github.com/detourmesh/detour"
