#!/usr/bin/env bash
# Ingest throughput, one server at a time on this machine (so none steals another's
# CPU), each figure also as a ratio to the HTTP ceiling measured in the same run:
#
#   ceiling      examples/ceiling: bare hyper, reads the body, answers 202
#   gitdispatch  the release binary, `listen` only (the worker off), on the embedded
#                queue (durable: WAL, synchronous=FULL, answered after the commit), the
#                per-address rate limit off
#   webhook      adnanh/webhook (Debian's package): an HMAC-SHA256 rule, /bin/true
#
# The load: wrk, signed 8 KB one-commit pushes, a delivery id of their own per request,
# at 16 and 64 connections. Requests/s, p50 and p99; peak and idle RSS of gitdispatch.
# A run with any non-2xx answer or socket error is reported as FAILED, not as a rate.
#
#   benches/ingest.sh [seconds per run]        default 5
#
# With PROFILE=<file.svg>, perf samples gitdispatch through its 16-connection run (DWARF
# call stacks) and inferno draws the flame graph there (`cargo install inferno`).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}

missing=()
for tool in wrk webhook; do
    command -v "$tool" > /dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing ${missing[*]} (Debian packages)"
    apt-get install -y -qq "${missing[@]}" > /dev/null
fi
cargo build --release --quiet --bin gitdispatch --example ceiling

directory=$(mktemp -d)
pids=()
trap 'for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$directory"' EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done; echo "nothing answers $1" >&2; exit 1; }

# 8 KB pushes of one commit each (its message pads it), each of a commit of its own
# (a repeated commit would be the same job, which the queue keeps once), signed: one
# per line, "<signature> <body>", cycled through by benches/webhook.lua.
export PAYLOADS="$directory/pushes.txt"
python3 - "$PAYLOADS" <<'PY'
import hashlib, hmac, json, sys
with open(sys.argv[1], "w") as out:
    for n in range(50000):
        commit = {"id": f"{n:040x}", "tree_id": "f" * 40, "distinct": True,
                  "message": "Fix the rounding of invoice totals\n\n" + "x" * 3150,
                  "timestamp": "2026-12-01T10:00:00+00:00",
                  "author": {"name": "Mary Doe", "email": "mary@example.com", "username": "mary"},
                  "committer": {"name": "Mary Doe", "email": "mary@example.com", "username": "mary"},
                  "added": [], "removed": [], "modified": ["src/invoice.rs"]}
        push = {"ref": "refs/heads/hotfix/important_patch", "before": "9" * 40, "after": commit["id"],
                "created": False, "deleted": False, "forced": False, "commits": [commit], "head_commit": commit,
                "repository": {"id": 1, "name": "project-api-v2", "full_name": "acme/project-api-v2",
                               "owner": {"login": "acme"}, "pushed_at": 1796000000},
                "pusher": {"name": "mary"}, "sender": {"login": "mary"}}
        body = json.dumps(push)
        signature = hmac.new(b"bench-secret", body.encode(), hashlib.sha256).hexdigest()
        out.write(f"sha256={signature} {body}\n")
PY
echo "payload: $(head -1 "$PAYLOADS" | cut -d" " -f2- | wc -c) bytes, 50000 distinct"

# One wrk run: "<requests/s> <p50 ms> <p99 ms> <requests> <ok|FAILED>".
load() {
    local url=$1 connections=$2
    local output
    output=$(RUN="$connections-$RANDOM" wrk -t2 -c"$connections" -d"${seconds}s" --latency -s benches/webhook.lua "$url")
    local rate p50 p99 bad errors requests
    requests=$(echo "$output" | awk '/requests in/ {print $1}')
    rate=$(echo "$output" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$output" | awk '/^p50 ms/ {print $3}')
    p99=$(echo "$output" | awk '/^p99 ms/ {print $3}')
    bad=$(echo "$output" | awk '/^non-2xx answers/ {print $3}')
    errors=$(echo "$output" | awk '/^socket errors/ {print $3}')
    if [ "$bad" != "0" ] || [ "$errors" != "0" ]; then
        echo "$rate $p50 $p99 $requests FAILED($bad-non-2xx,$errors-socket-errors)"
    else
        echo "$rate $p50 $p99 $requests ok"
    fi
}
rss() { awk -v field="$2:" '$1 == field {print $2}' "/proc/$1/status"; }

results="$directory/results"
: > "$results"

# The ceiling.
port=$(free_port)
target/release/examples/ceiling "$port" &
pids+=($!)
wait_for "http://127.0.0.1:$port/"
for connections in 16 64; do
    echo "ceiling $connections $(TARGET_PATH=/webhooks/github load "http://127.0.0.1:$port" "$connections")" >> "$results"
done
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

# gitdispatch, listen only.
port=$(free_port)
sed -e "s|listen = \"127.0.0.1:8080\"|listen = \"127.0.0.1:$port\"|" \
    -e "s|path = \"var/gitdispatch.db\"|path = \"$directory/queue.db\"|" \
    -e "s|path = \"var/executions.db\"|path = \"$directory/executions.db\"|" \
    -e "s|log_dir = \"var/log\"|log_dir = \"$directory/log\"|" \
    -e "s|# max_connections_per_address = 32 |max_connections_per_address = 1000|" \
    -e "s|per_second = 50|per_second = 10000000|" \
    -e "s|burst = 200|burst = 10000000|" \
    config/gitdispatch.toml > "$directory/gitdispatch.toml"
# The journal as shipped (the ledger's SQLite file), in the run's directory.
printf '\n[ledger]\ntype = "sqlite"\npath = "%s/ledger.db"\n' "$directory" >> "$directory/gitdispatch.toml"
GITHUB_WEBHOOK_SECRET=bench-secret GITDISPATCH_LOG=warn \
    target/release/gitdispatch --config "$directory/gitdispatch.toml" listen &
daemon=$!
pids+=($daemon)
wait_for "http://127.0.0.1:$port/healthz"
sleep 0.5
idle=$(rss "$daemon" VmRSS)
# CPU time (user + system, in clock ticks) of a process and its threads.
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
cpu_before=$(cpu "$daemon")
for connections in 16 64; do
    if [ -n "${PROFILE:-}" ] && [ "$connections" = 16 ]; then
        perf record -F 499 --call-graph dwarf,16384 -p "$daemon" -o "$directory/perf.data" -q &
        perf=$!
        sleep 0.5
    fi
    echo "gitdispatch $connections $(load "http://127.0.0.1:$port" "$connections")" >> "$results"
    if [ -n "${perf:-}" ]; then
        kill -INT "$perf"; wait "$perf" || true
        perf script -i "$directory/perf.data" 2> /dev/null | inferno-collapse-perf > "$directory/folded.txt"
        inferno-flamegraph --title "gitdispatch ingest, 16 connections" < "$directory/folded.txt" > "$PROFILE"
        cp "$directory/folded.txt" "${PROFILE%.svg}.folded"
        unset perf
    fi
done
peak=$(rss "$daemon" VmHWM)
cpu_after=$(cpu "$daemon")
cpu_used=$(( cpu_after - cpu_before ))
ticks=$(getconf CLK_TCK)
kill "$daemon"; wait "$daemon" 2>/dev/null || true
count() { python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])' "$@"; }
jobs=$(count "$directory/queue.db" "select count(*) from jobs")
recorded=$(count "$directory/ledger.db" "select count(*) from deliveries")

# The largest deliveries, on a fresh gitdispatch: a push listing 2,048 commits (time to
# plan and queue all of them, answered after the commit), then a 25 MB push (2,048
# commits of about 12 KB each): its peak RSS above idle, as a multiple of the payload.
python3 - "$directory" <<'PY'
import hashlib, hmac, json, sys
def push(message_bytes, start):
    commits = [{"id": f"{start + n:040x}", "tree_id": "f" * 40, "distinct": True,
                "message": f"Commit {n} " + "y" * message_bytes, "timestamp": "2026-12-01T10:00:00+00:00",
                "author": {"name": "Mary Doe", "email": "mary@example.com", "username": "mary"},
                "committer": {"name": "Mary Doe", "email": "mary@example.com", "username": "mary"},
                "added": [], "removed": [], "modified": [f"src/{n}.rs"]} for n in range(2048)]
    return {"ref": "refs/heads/hotfix/important_patch", "before": "9" * 40, "after": commits[-1]["id"],
            "created": False, "deleted": False, "forced": False, "commits": commits, "head_commit": commits[-1],
            "repository": {"id": 1, "name": "project-api-v2", "full_name": "acme/project-api-v2",
                           "owner": {"login": "acme"}, "pushed_at": 1796000000},
            "pusher": {"name": "mary"}, "sender": {"login": "mary"}}
for name, body in (("wide", push(40, 1 << 100)), ("huge", push(12150, 1 << 101))):
    data = json.dumps(body).encode()
    open(f"{sys.argv[1]}/{name}.json", "wb").write(data)
    open(f"{sys.argv[1]}/{name}.sig", "w").write("sha256=" + hmac.new(b"bench-secret", data, hashlib.sha256).hexdigest())
PY
port=$(free_port)
sed -i -e "s|listen = \"127.0.0.1:[0-9]*\"|listen = \"127.0.0.1:$port\"|" \
    -e "s|$directory/queue.db|$directory/large-queue.db|" \
    -e "s|$directory/ledger.db|$directory/large-ledger.db|" "$directory/gitdispatch.toml"
GITHUB_WEBHOOK_SECRET=bench-secret GITDISPATCH_LOG=warn \
    target/release/gitdispatch --config "$directory/gitdispatch.toml" listen &
daemon=$!
pids+=($daemon)
wait_for "http://127.0.0.1:$port/healthz"
sleep 0.5
large_idle=$(rss "$daemon" VmRSS)
post() {
    curl -s -o /dev/null -w "%{http_code} %{time_total}" "http://127.0.0.1:$port/webhooks/github" \
        -H "Content-Type: application/json" -H "X-GitHub-Event: push" -H "X-GitHub-Delivery: large-$1" \
        -H "X-Hub-Signature-256: $(cat "$directory/$1.sig")" --data-binary "@$directory/$1.json"
}
read -r wide_status wide_seconds <<< "$(post wide)"
read -r huge_status huge_seconds <<< "$(post huge)"
large_peak=$(rss "$daemon" VmHWM)
huge_bytes=$(wc -c < "$directory/huge.json")
kill "$daemon"; wait "$daemon" 2>/dev/null || true

# webhook, with GitHub's signature rule.
port=$(free_port)
cat > "$directory/hooks.json" <<JSON
[{"id": "github", "execute-command": "/bin/true", "success-http-response-code": 202,
  "trigger-rule": {"match": {"type": "payload-hmac-sha256", "secret": "bench-secret",
                             "parameter": {"source": "header", "name": "X-Hub-Signature-256"}}}}]
JSON
webhook -hooks "$directory/hooks.json" -ip 127.0.0.1 -port "$port" > /dev/null 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$port/"
for connections in 16 64; do
    echo "webhook $connections $(TARGET_PATH=/hooks/github load "http://127.0.0.1:$port" "$connections")" >> "$results"
done

python3 - "$results" "$idle" "$peak" "$jobs" "$seconds" "$wide_status" "$wide_seconds" \
    "$huge_status" "$huge_seconds" "$large_idle" "$large_peak" "$huge_bytes" "$recorded" \
    "$cpu_used" "$ticks" <<'PY'
import sys
rows = [line.split() for line in open(sys.argv[1])]
idle, peak, jobs, seconds = sys.argv[2:6]
wide_status, wide_seconds, huge_status, huge_seconds, large_idle, large_peak, huge_bytes, recorded = sys.argv[6:14]
cpu_used, ticks = int(sys.argv[14]), int(sys.argv[15])
ceiling = {row[1]: float(row[2]) for row in rows if row[0] == "ceiling"}
print(f"{seconds} s per run; ratios are to the ceiling at the same connections")
print(f"{'server':12} {'conns':>5} {'req/s':>10} {'x ceiling':>10} {'p50 ms':>8} {'p99 ms':>8}  run")
for server, connections, rate, p50, p99, requests, status in rows:
    ratio = float(rate) / ceiling[connections]
    print(f"{server:12} {connections:>5} {float(rate):10.0f} {ratio:10.3f} {float(p50):8.2f} {float(p99):8.2f}  {status}")
gd = {row[1]: float(row[2]) for row in rows if row[0] == "gitdispatch"}
wh = {row[1]: float(row[2]) for row in rows if row[0] == "webhook"}
for connections in gd:
    print(f"gitdispatch / webhook at {connections} connections: {gd[connections] / wh[connections]:.1f}x")
sent = sum(int(row[5]) for row in rows if row[0] == "gitdispatch")
print(f"gitdispatch CPU: {cpu_used / ticks / max(sent, 1) * 1e6:.0f} us per delivery answered "
      f"({cpu_used / ticks / (2 * float(seconds)):.2f} cores through both runs)")
print(f"gitdispatch RSS: idle {int(idle) / 1024:.1f} MiB, peak under load {int(peak) / 1024:.1f} MiB")
print(f"gitdispatch: {sent} deliveries answered, {jobs} jobs on disk (a commit sent again is the same job), "
      f"{recorded} deliveries in the journal")
print(f"push of 2,048 commits: answered {wide_status} in {float(wide_seconds) * 1000:.0f} ms (verified, planned, queued)")
above = (int(large_peak) - int(large_idle)) * 1024
print(f"push of {int(huge_bytes) / 2**20:.1f} MiB: answered {huge_status} in {float(huge_seconds) * 1000:.0f} ms; "
      f"peak RSS {above / 2**20:.0f} MiB above idle = {above / int(huge_bytes):.2f}x the payload")
PY
# A run with any non-2xx answer or socket error is a failed run.
! grep -q FAILED "$results"
