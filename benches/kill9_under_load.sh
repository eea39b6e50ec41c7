#!/usr/bin/env bash
# kill -9 under load (issue 12, item 4): starts the release gateway (SQLite, the loadgen settings,
# each simulated connector call taking LATENCY), drives creates at 64 in flight with loadgen,
# kills the gateway with SIGKILL in the middle of the load, starts it again at once on the same
# data directory, and prints how long after the kill the steps the dead process had leased were
# released and had all run, and when every case open at the kill had completed.
# Needs: cargo build --release --bin loadgen --bin etjanstekort-gateway; python3 (sqlite3 module).
#   LATENCY=200ms benches/kill9_under_load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LATENCY="${LATENCY:-200ms}" LOAD_S="${LOAD_S:-8}" PORT="${PORT:-50777}"
D="$(mktemp -d)"; export D
GW=target/release/etjanstekort-gateway
# loadgen's gateway settings (rate limits lifted, first poll after 10 ms), with the latency.
sed -n '/^const GATEWAY_CONFIG: &str = r#"/,/^"#;/p' src/bin/loadgen.rs | sed '1d;$d' \
  | sed "s/^latency = \"0s\"/latency = \"$LATENCY\"/" > "$D/gw.toml"
serve() { "$GW" serve --dev --listen "127.0.0.1:$PORT" --data-dir "$D" --config "$D/gw.toml" 2>>"$D/gateway.log" & }
serve; first=$!
sleep 4
# loadgen runs the echo for LOAD_S seconds first, then the creates for LOAD_S seconds.
target/release/loadgen --addr "127.0.0.1:$PORT" --certs-dir "$D/certs" --concurrency 64 --ops create \
  --duration "${LOAD_S}s" --warmup 0s --completions 0 --settle-timeout 0s >"$D/loadgen.log" 2>&1 &
sleep $((LOAD_S + LOAD_S / 2))
python3 - <<'P'
import json, os, sqlite3
d = os.environ["D"]
c = sqlite3.connect(f"file:{d}/etjanstekort.sqlite?mode=ro", uri=True)
ids = [r[0] for r in c.execute("select id from cases where state <> 'completed'")]
keys = [r[0] for r in c.execute("select key from effects where status = 'pending' and lease_owner is not null")]
json.dump({"ids": ids, "keys": keys}, open(f"{d}/at-kill.json", "w"))
P
kill -9 "$first"
date +%s.%N >"$D/killed"
serve; second=$!
python3 - <<'P'
import json, os, sqlite3, time
d = os.environ["D"]
killed = float(open(f"{d}/killed").read())
at = json.load(open(f"{d}/at-kill.json"))
ids, keys = at["ids"], at["keys"]
print(f"at the kill: {len(ids)} cases open, {len(keys)} steps leased by the killed process")
c = sqlite3.connect(f"file:{d}/etjanstekort.sqlite?mode=ro", uri=True)
def count(sql, xs):
    return c.execute(sql % ",".join("?" * len(xs)), xs).fetchone()[0] if xs else 0
leased = "select count(*) from effects where status = 'pending' and lease_owner is not null and key in (%s)"
pending = "select count(*) from effects where status = 'pending' and key in (%s)"
still_open = "select count(*) from cases where state <> 'completed' and id in (%s)"
released = ran = None
while True:
    try:
        l, p, o = count(leased, keys), count(pending, keys), count(still_open, ids)
    except sqlite3.OperationalError:
        time.sleep(0.02)
        continue
    t = time.time() - killed
    if released is None and l == 0:
        released = t
        print(f"{t:.2f} s after the kill: none of them leased any more (released or run)")
    if ran is None and p == 0:
        ran = t
        print(f"{t:.2f} s after the kill: every one of them has run")
    if o == 0:
        print(f"{t:.2f} s after the kill: every case open at the kill has completed")
        break
    if t > 300:
        print(f"gave up after 300 s: {p} steps and {o} cases left")
        break
    time.sleep(0.05)
P
grep -o '"message":"released the leases a previous incarnation[^}]*' "$D/gateway.log" || true
kill "$second"; wait "$second" 2>/dev/null || true
echo "data directory: $D"
