#!/usr/bin/env bash
# Which tokio runtime layout should `qkv serve` use on this machine? Runs the server in several layouts
# against the same load, interleaved and repeated, and prints the median throughput and latency of each.
#
#   scripts/runtime-layout.sh [REPETITIONS] [SECONDS]
#
# The load generator always runs single-threaded on core 1. Results are recorded in docs/DESIGN.md.
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
secs=${2:-5}
cargo build --release --quiet
qkv=target/release/qkv
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 10000))

# name | how the server runs
layouts=(
  "current-thread, core 0|taskset -c 0 $qkv serve --runtime current-thread"
  "multi-thread x1, core 0|taskset -c 0 $qkv serve --runtime multi-thread --threads 1"
  "multi-thread x2, core 0|taskset -c 0 $qkv serve --runtime multi-thread --threads 2"
  "multi-thread x2, both cores|$qkv serve --runtime multi-thread --threads 2"
)
loads=(
  "ping 1x64|--workload ping --connections 1 --inflight 64"
  "hget 1x64|--workload hget --connections 1 --inflight 64"
  "hget 1x1|--workload hget --connections 1 --inflight 1"
  "hget 16x4|--workload hget --connections 16 --inflight 4"
)

results="$work/results"
for rep in $(seq "$reps"); do
  for layout in "${layouts[@]}"; do
    name=${layout%%|*}
    cmd=${layout#*|}
    QKV_LISTEN=127.0.0.1:$port QKV_CERTS=$work/certs $cmd >"$work/server.log" 2>&1 &
    server=$!
    for _ in $(seq 50); do grep -q serving "$work/server.log" && break; sleep 0.1; done
    for load in "${loads[@]}"; do
      lname=${load%%|*}
      largs=${load#*|}
      out=$(taskset -c 1 $qkv bench $largs --duration "${secs}s" --warmup 1s \
        --addr 127.0.0.1:$port --ca "$work/certs/ca.pem" 2>&1)
      rps=$(echo "$out" | sed -nE 's/.* ([0-9]+) req\/s/\1/p')
      p50=$(echo "$out" | sed -nE 's/.*p50 ([0-9]+) .*/\1/p')
      p99=$(echo "$out" | sed -nE 's/.*p99 ([0-9]+) .*/\1/p')
      echo "$name|$lname|$rps|$p50|$p99" >>"$results"
    done
    kill -TERM $server; wait $server 2>/dev/null || true
  done
done

python3 - "$results" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
order = []
for line in open(sys.argv[1]):
    layout, load, rps, p50, p99 = line.strip().split("|")
    key = (layout, load)
    if key not in rows: order.append(key)
    rows[key].append((int(rps), int(p50), int(p99)))
print("| layout | load | req/s (median) | p50 µs | p99 µs | runs |")
print("|---|---|---:|---:|---:|---:|")
for key in order:
    r = rows[key]
    print(f"| {key[0]} | {key[1]} | {statistics.median(x[0] for x in r):.0f} | "
          f"{statistics.median(x[1] for x in r):.0f} | {statistics.median(x[2] for x in r):.0f} | {len(r)} |")
PY
