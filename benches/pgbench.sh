#!/usr/bin/env bash
# Compares pgbench through pgshift with direct PostgreSQL and PgBouncer (session mode), in one run.
#
#   benches/pgbench.sh                 # defaults: scale 10, 8 clients, 10 s runs, 3 rounds
#   SECONDS_PER_RUN=5 ROUNDS=5 benches/pgbench.sh
#
# A throwaway cluster is created and removed. Rounds interleave the targets (A B C A B C …) because a shared
# machine is noisy; the report gives median TPS, median latency, the ratio to direct, and each proxy's CPU
# time per transaction (utime+stime from /proc, the figure noise disturbs least).
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
ROUNDS=${ROUNDS:-3}
WORKLOADS=${WORKLOADS:-"select-only tpcb-like"}
MODES=${MODES:-"simple extended prepared"}

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
pg_port=$(free_port); bouncer_port=$(free_port); shift_port=$(free_port)
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
bouncer_pid=$!

cat > "$work/pgshift.toml" <<TOML
[listen]
addr = "127.0.0.1:$shift_port"
[upstream]
addr = "127.0.0.1:$pg_port"
[upstream.tls]
mode = "disable"
[log]
level = "warn"
TOML
"$pgshift_bin" serve --config "$work/pgshift.toml" 2>"$work/pgshift.log" & pids+=($!)
shift_pid=$!
sleep 1

pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$pg_port" -U postgres postgres >/dev/null 2>&1

declare -A port=([direct]=$pg_port [pgbouncer]=$bouncer_port [pgshift]=$shift_port)
declare -A pid=([pgbouncer]=$bouncer_pid [pgshift]=$shift_pid)
targets="direct pgbouncer pgshift"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)
results="$work/results.tsv"
: > "$results"

for workload in $WORKLOADS; do
  for mode in $MODES; do
    for round in $(seq "$ROUNDS"); do
      for target in $targets; do
        flag=(); [ "$workload" = select-only ] && flag=(-S)
        before=0; [ -n "${pid[$target]:-}" ] && before=$(cpu_ticks "${pid[$target]}")
        out=$(pgbench "${flag[@]}" -n -M "$mode" -c "$CLIENTS" -j "$THREADS" -T "$SECONDS_PER_RUN" \
              -h 127.0.0.1 -p "${port[$target]}" -U postgres postgres 2>&1)
        after=0; [ -n "${pid[$target]:-}" ] && after=$(cpu_ticks "${pid[$target]}")
        tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
        lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
        txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
        failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
        cpu_us=$(python3 -c "print(round(($after-$before)/$tick*1e6/max(1,$txns),2))")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$workload" "$mode" "$target" "$tps" "$lat" "$cpu_us" "${failed:-0}" >> "$results"
        echo "round $round: $workload $mode $target tps=$tps latency=${lat}ms cpu/txn=${cpu_us}us failed=${failed:-0}" >&2
      done
    done
  done
done

python3 - "$results" "$CLIENTS" "$SECONDS_PER_RUN" "$ROUNDS" "$SCALE" <<'PY'
import statistics, sys
from collections import defaultdict
path, clients, secs, rounds, scale = sys.argv[1:]
rows = defaultdict(list)
for line in open(path):
    w, m, t, tps, lat, cpu, failed = line.rstrip("\n").split("\t")
    rows[(w, m, t)].append((float(tps), float(lat), float(cpu), int(failed)))
print(f"pgbench scale {scale}, {clients} clients, {secs} s x {rounds} interleaved rounds; medians\n")
print("| workload | mode | target | TPS | latency ms | TPS vs direct | proxy CPU µs/txn | failed |")
print("|---|---|---|---|---|---|---|---|")
for (w, m, t) in sorted(rows, key=lambda k: (k[0], ["simple","extended","prepared"].index(k[1]), ["direct","pgbouncer","pgshift"].index(k[2]))):
    r = rows[(w, m, t)]
    tps = statistics.median(x[0] for x in r); lat = statistics.median(x[1] for x in r)
    direct = statistics.median(x[0] for x in rows[(w, m, "direct")])
    cpu = "" if t == "direct" else f"{statistics.median(x[2] for x in r):.1f}"
    print(f"| {w} | {m} | {t} | {tps:.0f} | {lat:.3f} | {tps/direct:.2f} | {cpu} | {sum(x[3] for x in r)} |")
PY
