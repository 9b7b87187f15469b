#!/usr/bin/env bash
# Ingest throughput of the listener on the embedded queue, reported as ratios against
# baselines measured in the same run (the machine is shared and noisy):
#
#   healthz      GET /healthz: HTTP alone, no verification, no disk
#   webhook c=1  signed pushes of 3 commits (6 durable jobs each), one connection:
#                every delivery waits for its own commit
#   webhook c=64 the same over 64 connections: deliveries share commits
#
# Needs wrk (apt install wrk). Usage: benches/ingest.sh [seconds per run]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}

cargo build --release --quiet --bin gitdispatch
directory=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed -e "s|listen = \"127.0.0.1:8080\"|listen = \"127.0.0.1:$port\"|" \
    -e "s|path = \"var/gitdispatch.db\"|path = \"$directory/queue.db\"|" \
    -e "s|per_second = 50|per_second = 10000000|" \
    -e "s|burst = 200|burst = 10000000|" \
    config/gitdispatch.toml > "$directory/gitdispatch.toml"
export GITHUB_WEBHOOK_SECRET=bench-secret
GITDISPATCH_LOG=warn target/release/gitdispatch --config "$directory/gitdispatch.toml" listen &
daemon=$!
trap 'kill $daemon 2>/dev/null; rm -rf "$directory"' EXIT
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/healthz" > /dev/null && break
    sleep 0.1
done

export PAYLOAD=fixtures/github/push_branch_commits.json
SIGNATURE=sha256=$(python3 -c 'import hashlib, hmac, sys; print(hmac.new(b"bench-secret", open(sys.argv[1], "rb").read(), hashlib.sha256).hexdigest())' "$PAYLOAD")
export SIGNATURE

rate() { grep 'Requests/sec' | awk '{print $2}'; }
healthz=$(wrk -t2 -c64 -d"${seconds}s" "http://127.0.0.1:$port/healthz" | rate)
single=$(RUN=1 wrk -t1 -c1 -d"${seconds}s" -s benches/webhook.lua "http://127.0.0.1:$port" | tee "$directory/single.txt" | rate)
many=$(RUN=64 wrk -t2 -c64 -d"${seconds}s" -s benches/webhook.lua "http://127.0.0.1:$port" | tee "$directory/many.txt" | rate)
grep -h 'non-202' "$directory/single.txt" "$directory/many.txt"

jobs=$(python3 - "$directory/queue.db" <<'PY'
import sqlite3, sys
print(sqlite3.connect(sys.argv[1]).execute("select count(*) from jobs").fetchone()[0])
PY
)
python3 - "$healthz" "$single" "$many" "$jobs" <<'PY'
import sys
healthz, single, many, jobs = (float(x) for x in sys.argv[1:])
print(f"healthz                 {healthz:10.0f} req/s   (baseline)")
print(f"webhook, 1 connection   {single:10.0f} req/s   {single / healthz:6.3f} x healthz")
print(f"webhook, 64 connections {many:10.0f} req/s   {many / healthz:6.3f} x healthz   {many / single:6.1f} x one connection")
print(f"jobs on disk afterwards {jobs:10.0f}         (6 per delivery)")
PY
