#!/usr/bin/env bash
# Idle RSS of `BIN proxy --discovery file:...` for each BIN given, three rounds alternating, each
# proxy alone in a network namespace of its own (listeners only, no traffic), read from VmRSS two
# seconds after /ready. Compares sidecar binaries in one run: scripts/proxy-rss.sh old/detour bin/detour
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 DETOUR_BINARY..." >&2; exit 2; }
ns=dt-proxy-rss
disc=$(mktemp)
ip netns del $ns 2>/dev/null || true
ip netns add $ns
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; ip netns del $ns; rm -f "$disc"; }
trap cleanup EXIT
ip -n $ns link set lo up
cat >"$disc" <<'Y'
trustDomain: cluster.local
services:
  - name: stockdata.stocks
    addresses: ["198.19.0.10:80"]
    endpoints:
      - address: 198.18.0.11:8080
Y
for round in 1 2 3; do
  for bin in "$@"; do
    ip netns exec $ns "$bin" proxy --discovery "file:$disc" --log-level error & pid=$!
    for _ in $(seq 100); do ip netns exec $ns curl -sf -o /dev/null http://127.0.0.1:7190/ready && break; sleep 0.1; done
    sleep 2
    printf '%s\tround %d\t%s\n' "$bin" "$round" "$(grep VmRSS /proc/$pid/status | tr -s ' \t' ' ')"
    kill "$pid"; wait "$pid" || true; pid=
  done
done
