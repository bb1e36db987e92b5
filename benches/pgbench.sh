#!/usr/bin/env bash
# Compares pgbench through pgshift with direct PostgreSQL and PgBouncer (session mode), in one run.
#
#   benches/pgbench.sh                 # scale 10, 8 clients, 5 s runs, 3 interleaved rounds (~10 minutes)
#   SECONDS_PER_RUN=10 ROUNDS=5 benches/pgbench.sh
#   TARGETS="direct pgbouncer pgshift" MODES=prepared WORKLOADS=select-only benches/pgbench.sh
#
# Targets:
#   direct         PostgreSQL itself
#   pgbouncer      PgBouncer, session pooling
#   pgshift        pgshift with no migration (passthrough), default settings (listen.workers = 0: one session
#                  thread per four CPUs, at least one) — the headline: what a user gets
#   pgshift_1thread the same with listen.workers = 1 (PgBouncer runs one thread)
#   pgshift_percpu the same with one session thread per CPU (listen.workers = nproc)
#   dual           pgshift with a table migration on pgbench_accounts (abalance → v2.pgbench_accounts.balance),
#                  writes = dual_write, reads on old
#   dual_read50    the same with reads.new_percent = 50: half the clients (by routing key) read the new table
#   by_hand        direct, running the statements pgshift sends for `dual` (the dual write done by hand)
#   by_hand_pgbouncer  the same script through PgBouncer: the dual write by hand behind the other proxy
#   shadow0 / shadow1 / shadow100  `dual` with shadow reads on: [migration.shadow] sample_percent = 0, 1, 100
#                  (comparisons on pgshift's own connections, default [control.shadow] settings)
#
# A throwaway cluster is created and removed. Rounds interleave the targets because a shared machine is noisy;
# the report gives median TPS, median latency, median p99 latency (from pgbench's per-transaction log), the
# ratio to direct, and each proxy's CPU time per transaction (utime+stime from /proc, the figure noise disturbs
# least). Output: a Markdown table on stdout, then what the shadow targets compared.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
ROUNDS=${ROUNDS:-3}
WORKLOADS=${WORKLOADS:-"select-only tpcb-like"}
MODES=${MODES:-"simple extended prepared"}
TARGETS=${TARGETS:-"direct pgbouncer pgshift pgshift_1thread pgshift_percpu dual dual_read50 by_hand by_hand_pgbouncer"}
WORKERS=${WORKERS:-0}

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bindir/initdb" ] || { echo "PostgreSQL server binaries not found: apt-get install postgresql" >&2; exit 1; }
command -v pgbouncer >/dev/null || { echo "pgbouncer not found: apt-get install pgbouncer" >&2; exit 1; }
PATH="$bindir:$PATH"

cargo build --release --quiet --bin pgshift
pgshift_bin=$PWD/target/release/pgshift

work=$(mktemp -d /tmp/pgshift-bench.XXXXXX)
chmod 755 "$work"
run_as=()
if [ "$(id -u)" = 0 ]; then chown postgres "$work"; run_as=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg_port=$(free_port)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "${run_as[@]}" pg_ctl -D "$work/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"${run_as[@]}" initdb -A trust -U postgres -D "$work/data" >/dev/null
"${run_as[@]}" pg_ctl -D "$work/data" -l "$work/pg.log" -w -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 \
  -c max_connections=200 -c shared_buffers=256MB -c fsync=off -c synchronous_commit=off" start >/dev/null
psql_direct() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres postgres "$@"; }

pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$pg_port" -U postgres postgres >/dev/null 2>&1
# The expand and backfill steps of the migration: the new table holds the same rows, plus a marker row (aid -1)
# that exists only there, so a read tells which side answered it.
psql_direct -c "CREATE SCHEMA v2;
  CREATE TABLE v2.pgbench_accounts (aid int PRIMARY KEY, bid int, balance int, filler character(84));
  INSERT INTO v2.pgbench_accounts SELECT aid, bid, abalance, filler FROM pgbench_accounts;
  INSERT INTO v2.pgbench_accounts VALUES (-1, 1, 0, '');"
psql_direct -c "VACUUM ANALYZE"

declare -A port=([direct]=$pg_port [by_hand]=$pg_port)
declare -A pid=()
declare -A metrics_port=()

bouncer_port=$(free_port)
cat > "$work/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$pg_port
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
auth_type = trust
auth_file = $work/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 50
unix_socket_dir =
logfile = $work/pgbouncer.log
INI
echo '"postgres" ""' > "$work/userlist.txt"
chown -R postgres "$work" 2>/dev/null || true
# pgbouncer drops root itself with -u, so $! is pgbouncer's own pid (its CPU time is what we sample).
bouncer_user=(); [ "$(id -u)" = 0 ] && bouncer_user=(-u postgres)
pgbouncer -q "${bouncer_user[@]}" "$work/pgbouncer.ini" & pids+=($!)
port[pgbouncer]=$bouncer_port; pid[pgbouncer]=$!
port[by_hand_pgbouncer]=$bouncer_port; pid[by_hand_pgbouncer]=$!

migration() {
  cat <<TOML
[[migration]]
name = "accounts_v2"
kind = "table"
table = "public.pgbench_accounts"
new_table = "v2.pgbench_accounts"
key = ["aid"]
columns = [{ old = "abalance", new = "balance" }]
writes = "dual_write"
[migration.reads]
new_percent = $1
key = "setting"
TOML
}
start_pgshift() { # name, workers, extra config
  local name=$1 p; p=$(free_port)
  printf '[listen]\naddr = "127.0.0.1:%s"\nworkers = %s\n[upstream]\naddr = "127.0.0.1:%s"\n[upstream.tls]\nmode = "disable"\n[log]\nlevel = "warn"\n%s\n' \
    "$p" "$2" "$pg_port" "$3" > "$work/$name.toml"
  "$pgshift_bin" serve --config "$work/$name.toml" 2>"$work/$name.log" & pids+=($!)
  port[$name]=$p; pid[$name]=$!
}
start_pgshift pgshift "$WORKERS" ""
start_pgshift pgshift_1thread 1 ""
start_pgshift pgshift_percpu "$(nproc)" ""
start_pgshift dual "$WORKERS" "$(migration 0)"
start_pgshift dual_read50 "$WORKERS" "$(migration 50)"
for pct in 0 1 100; do
  mport=$(free_port)
  start_pgshift "shadow$pct" "$WORKERS" "[metrics]
addr = \"127.0.0.1:$mport\"
[control]
dsn = \"postgres://postgres@127.0.0.1:$pg_port/postgres\"
$(migration 0)
[migration.shadow]
sample_percent = $pct"
  metrics_port[shadow$pct]=$mport
done
sleep 1

# dual_read50: the routing key is the session setting pgshift.key; pick one key routed to new and one to old
# and run half the clients with each (pgbench sessions are otherwise indistinguishable).
route_of() { PGOPTIONS="-c pgshift.key=$1" psql -X -A -t -h 127.0.0.1 -p "${port[dual_read50]}" -U postgres postgres \
  -c "SELECT count(*) FROM pgbench_accounts WHERE aid = -1"; }
new_key=""; old_key=""
for k in $(seq 1 50); do
  r=$(route_of "key-$k")
  if [ "$r" = 1 ] && [ -z "$new_key" ]; then new_key="key-$k"; fi
  if [ "$r" = 0 ] && [ -z "$old_key" ]; then old_key="key-$k"; fi
  [ -n "$new_key" ] && [ -n "$old_key" ] && break
done

# by_hand: exactly the statement pgshift sends for the accounts UPDATE, in pgbench's own tpcb-like script.
rewritten=$("$pgshift_bin" rewrite --config "$work/dual.toml" --dsn "postgres://postgres@127.0.0.1:$pg_port/postgres" \
  --route old 'UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2' | sed -n 2p | sed 's/\$1/:delta/; s/\$2/:aid/')
cat > "$work/by_hand_tpcb.sql" <<SQL
\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
$rewritten;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
SQL

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)
results="$work/results.tsv"
: > "$results"

# Runs pgbench; prints "tps latency_ms transactions failed" (summed over parallel runs).
bench() { # target workload mode
  local target=$1 workload=$2 mode=$3 script=()
  case "$workload" in
    select-only) script=(-b select-only) ;;
    tpcb-like) if [ "${target#by_hand}" != "$target" ]; then script=(-f "$work/by_hand_tpcb.sql"); else script=(-b tpcb-like); fi ;;
  esac
  rm -f "$work"/txlog*
  local common=(-n -M "$mode" -j 1 -T "$SECONDS_PER_RUN" -l --log-prefix="$work/txlog" -h 127.0.0.1 -p "${port[$target]}" -U postgres postgres)
  if [ "$target" = dual_read50 ]; then
    local half=$((CLIENTS / 2))
    PGOPTIONS="-c pgshift.key=$new_key" pgbench "${script[@]}" -c "$half" "${common[@]}" > "$work/a.out" 2>&1 &
    local a=$!
    PGOPTIONS="-c pgshift.key=$old_key" pgbench "${script[@]}" -c "$half" "${common[@]}" > "$work/b.out" 2>&1
    wait $a
    cat "$work/a.out" "$work/b.out"
  else
    pgbench "${script[@]}" -c "$CLIENTS" -j "$THREADS" "${common[@]}" 2>&1
  fi | python3 -c '
import re, sys
text = sys.stdin.read()
tps = sum(float(x) for x in re.findall(r"^tps = ([0-9.]+)", text, re.M))
lats = [float(x) for x in re.findall(r"^latency average = ([0-9.]+) ms", text, re.M)]
txns = sum(int(x) for x in re.findall(r"^number of transactions actually processed: (\d+)", text, re.M))
failed = sum(int(x) for x in re.findall(r"^number of failed transactions: (\d+)", text, re.M))
print(tps, sum(lats) / max(1, len(lats)), txns, failed)'
}

for workload in $WORKLOADS; do
  for mode in $MODES; do
    for round in $(seq "$ROUNDS"); do
      for target in $TARGETS; do
        before=0; [ -n "${pid[$target]:-}" ] && before=$(cpu_ticks "${pid[$target]}")
        read -r tps lat txns failed < <(bench "$target" "$workload" "$mode")
        after=0; [ -n "${pid[$target]:-}" ] && after=$(cpu_ticks "${pid[$target]}")
        cpu_us=$(python3 -c "print(round(($after-$before)/$tick*1e6/max(1,$txns),2))")
        # p99 of the per-transaction latencies (third field, µs) of every client's log.
        p99=$(cat "$work"/txlog* | python3 -c '
import sys
l = sorted(int(x.split()[2]) for x in sys.stdin if x.strip())
print(round(l[int(len(l) * 0.99)] / 1000, 3) if l else 0)')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$workload" "$mode" "$target" "$tps" "$lat" "$cpu_us" "$failed" "$p99" >> "$results"
        echo "round $round: $workload $mode $target tps=$tps latency=${lat}ms p99=${p99}ms cpu/txn=${cpu_us}us failed=$failed" >&2
      done
    done
  done
done

python3 - "$results" "$CLIENTS" "$SECONDS_PER_RUN" "$ROUNDS" "$SCALE" "$TARGETS" <<'PY'
import statistics, sys
from collections import defaultdict
path, clients, secs, rounds, scale, targets = sys.argv[1:]
order = targets.split()
rows = defaultdict(list)
for line in open(path):
    w, m, t, tps, lat, cpu, failed, p99 = line.rstrip("\n").split("\t")
    rows[(w, m, t)].append((float(tps), float(lat), float(cpu), int(failed), float(p99)))
med = lambda key, i: statistics.median(x[i] for x in rows[key])
print(f"pgbench scale {scale}, {clients} clients, {secs} s x {rounds} interleaved rounds; medians\n")
print("| workload | mode | target | TPS | latency ms | p99 ms | TPS vs direct | proxy CPU µs/txn | failed |")
print("|---|---|---|---|---|---|---|---|---|")
modes = ["simple", "extended", "prepared"]
for (w, m, t) in sorted(rows, key=lambda k: (k[0], modes.index(k[1]), order.index(k[2]))):
    direct = med((w, m, "direct"), 0) if (w, m, "direct") in rows else float("nan")
    cpu = "" if t in ("direct", "by_hand") else f"{med((w, m, t), 2):.1f}"
    print(f"| {w} | {m} | {t} | {med((w, m, t), 0):.0f} | {med((w, m, t), 1):.3f} | {med((w, m, t), 4):.3f} | "
          f"{med((w, m, t), 0) / direct:.2f} | {cpu} | {sum(x[3] for x in rows[(w, m, t)])} |")
PY

# What the shadow targets compared, and how long one comparison took on pgshift's own connection (what a
# client would wait for it if comparisons ran on the client's connection at an idle point).
for name in "${!metrics_port[@]}"; do
  case " $TARGETS " in *" $name "*) ;; *) continue ;; esac
  curl -s "http://127.0.0.1:${metrics_port[$name]}/metrics" | python3 -c '
import re, sys
text = sys.stdin.read()
results = dict(re.findall(r"pgshift_shadow_comparisons_total\{migration=\"accounts_v2\",result=\"(\w+)\"\} (\d+)", text))
s = re.search(r"^pgshift_shadow_comparison_seconds_sum (\S+)", text, re.M)
c = re.search(r"^pgshift_shadow_comparison_seconds_count (\S+)", text, re.M)
mean = float(s.group(1)) / float(c.group(1)) * 1000 if s and c and float(c.group(1)) else 0
print(f"\n{sys.argv[1]}: comparisons {results}; one comparison took {mean:.2f} ms on average")' "$name"
done
