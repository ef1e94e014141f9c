#!/usr/bin/env bash
# The measurements behind docs/SCALE.md and the control-plane rows of docs/BENCHMARKS.md.
# Each size runs on a fresh single-member etcd (its own data dir, loopback ports), so one
# size's history does not slow the next; the etcd is killed and its data removed after.
#
#   examples/control-plane/scripts/scale.sh [OUT_DIR] [SIZES...]     (default: 1000 10000 50000)
#
# Writes OUT_DIR/bench-<hosts>-<shards>.json, OUT_DIR/failover.json and
# OUT_DIR/etcd-db-<hosts>-<shards>.bytes;
# `twine-control bench` itself fails unless every task was placed and every placement is
# found in the store's history.
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=${1:-target/control-plane-scale}
shift || true
sizes=("${@:-1000 10000 50000}")
read -r -a sizes <<<"${sizes[*]}"
mkdir -p "$out"
cargo build --release -q -p twine-control
bin=target/release/twine-control
command -v etcd >/dev/null || { echo "scale.sh: no etcd (apt-get install etcd-server)" >&2; exit 1; }

etcd_pid=
dir=
stop_etcd() {
    if [ -n "$etcd_pid" ]; then kill -9 "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; fi
    [ -n "$dir" ] && rm -rf "$dir"
    etcd_pid= dir=
}
trap stop_etcd EXIT
start_etcd() {
    dir=$(mktemp -d)
    local c p
    c=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    etcd --name m --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
        --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
        --initial-cluster "m=http://127.0.0.1:$p" >"$dir/etcd.log" 2>&1 &
    etcd_pid=$!
    endpoint="http://127.0.0.1:$c"
    for _ in $(seq 100); do
        ETCDCTL_API=3 etcdctl --endpoints "$endpoint" endpoint health >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "scale.sh: etcd did not start:" >&2; cat "$dir/etcd.log" >&2; exit 1
}

for h in "${sizes[@]}"; do
    # Each shard count on an etcd of its own: a second run on the same etcd would pay for
    # the first one's history.
    for k in 1 3; do
        start_etcd
        "$bin" bench --endpoints "$endpoint" --agents --hosts "$h" --jobs $((h / 10)) --shards "$k" >"$out/bench-$h-$k.json"
        stat -c %s "$dir/data/member/snap/db" >"$out/etcd-db-$h-$k.bytes"
        stop_etcd
    done
    echo "scale.sh: $h hosts done" >&2
done
start_etcd
"$bin" bench-failover --endpoints "$endpoint" --kills 20 --lease-ttl 2 >"$out/failover.json"
stop_etcd

python3 - "$out" "${sizes[@]}" <<'PY'
import json, sys
out, sizes = sys.argv[1], sys.argv[2:]
print("| hosts | store | shards | placements/s | txns/placement | keys/placement | all reported running (s) | fleet init (s) | leaders (s) | keys | etcd db (MB) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for h in sizes:
  for k in (1, 3):
    db = int(open(f"{out}/etcd-db-{h}-{k}.bytes").read()) / 1e6
    for r in json.load(open(f"{out}/bench-{h}-{k}.json"))["runs"]:
        print(f"| {h} | {r['store']} | {r['shards']} | {r['placements_per_s']:.0f} | {r['writes_per_placement']:.4f} | "
              f"{r['keys_per_placement']:.3f} | {r['converged_seconds']:.3f} | {r['fleet_init_seconds']:.3f} | "
              f"{r['leaders_seconds']:.3f} | {r['store_keys']} | {db if r['store']=='etcd' else 0:.0f} |")
f = json.load(open(f"{out}/failover.json"))
print(f"\nfailover (lease TTL {f['lease_ttl']} s, {len(f['failover_ms'])} kills): p50 {f['p50_ms']} ms, max {f['max_ms']} ms")
PY
