#!/usr/bin/env bash
# pgshift backfill and verify on a large table, with default settings, against what the machine can do:
#   - backfill rate vs one `INSERT INTO new SELECT … FROM old` (the same rows, one statement, no batching);
#   - verify rate vs a full-table hash scan of both sides (`sum(hashtext(t::text))` over each table);
#   - peak RSS of each command;
#   - p50/p99 latency of a concurrent pgbench workload (select-only, 4 clients) while backfill runs, vs alone.
# A throwaway cluster (fsync off); rows like the README's users table (id, name, email, timestamp).
#
#   benches/backfill.sh               # 5M rows; ROWS=1000000 for a quicker run
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-5000000}
PGBENCH_SECONDS=${PGBENCH_SECONDS:-20}

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bindir/initdb" ] || { echo "PostgreSQL server binaries not found: apt-get install postgresql" >&2; exit 1; }
PATH="$bindir:$PATH"
cargo build --release --quiet --bin pgshift

work=$(mktemp -d /tmp/pgshift-backfill.XXXXXX); chmod 755 "$work"
run_as=(); if [ "$(id -u)" = 0 ]; then chown postgres "$work"; run_as=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg_port=$(free_port)
cleanup() { "${run_as[@]}" pg_ctl -D "$work/data" -m fast stop >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
"${run_as[@]}" initdb -A trust -U postgres -D "$work/data" >/dev/null
"${run_as[@]}" pg_ctl -D "$work/data" -l "$work/pg.log" -w -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 \
  -c shared_buffers=256MB -c fsync=off -c synchronous_commit=off -c max_wal_size=8GB" start >/dev/null
psql() { command psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres "$@"; }
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }

psql -c "CREATE SCHEMA v2;
  CREATE TABLE users (id bigint PRIMARY KEY, fullname text NOT NULL, email text, created_at timestamptz NOT NULL);
  CREATE TABLE v2.users (id bigint PRIMARY KEY, display_name text NOT NULL, email text, created_at timestamptz NOT NULL);
  INSERT INTO users SELECT g, 'user number ' || g, 'user' || g || '@example.com', now() - g * interval '1 s'
    FROM generate_series(1, $ROWS) g;"
psql -c "VACUUM ANALYZE users"
bytes=$(psql -At -c "SELECT pg_table_size('users')")
cat > "$work/pgshift.toml" <<EOF
[upstream]
addr = "127.0.0.1:$pg_port"
[control]
dsn = "postgres://postgres@127.0.0.1:$pg_port/postgres"
[[migration]]
name = "users_v2"
kind = "table"
table = "public.users"
new_table = "v2.users"
key = ["id"]
columns = [{ old = "fullname", new = "display_name" }]
writes = "dual_write"
EOF
pgshift() { /usr/bin/time -f "%M" -o "$work/rss" target/release/pgshift "$@" --config "$work/pgshift.toml" \
  --migration users_v2 --format json > "$work/out.json"; }

t0=$(now); psql -c "INSERT INTO v2.users SELECT id, fullname, email, created_at FROM users"; t1=$(now)
insert_s=$(secs "$t0" "$t1")
psql -c "TRUNCATE v2.users"; psql -c "CHECKPOINT"
t0=$(now); pgshift backfill; t1=$(now); backfill_s=$(secs "$t0" "$t1"); backfill_rss=$(cat "$work/rss")
batches=$(grep -c '"event":"batch"' "$work/out.json")
psql -c "VACUUM ANALYZE v2.users"; psql -c "CHECKPOINT"
t0=$(now); psql -At -c "SELECT sum(hashtext(u::text)) FROM users u" >/dev/null
psql -At -c "SELECT sum(hashtext(n::text)) FROM v2.users n" >/dev/null; t1=$(now); hash_s=$(secs "$t0" "$t1")
t0=$(now); pgshift verify; t1=$(now); verify_s=$(secs "$t0" "$t1"); verify_rss=$(cat "$work/rss")
grep -q '"clean":true' "$work/out.json" || { echo "verify was not clean" >&2; tail -3 "$work/out.json" >&2; exit 1; }

# Latency of other traffic: pgbench select-only alone, then while a backfill runs (from scratch).
pgbench -i -q -s 10 -h 127.0.0.1 -p "$pg_port" -U postgres postgres >/dev/null 2>&1
bench() { (cd "$work" && pgbench -n -S -c 4 -j 2 -T "$PGBENCH_SECONDS" -l --log-prefix="$1" -h 127.0.0.1 \
  -p "$pg_port" -U postgres postgres >/dev/null); }
percentiles() { cat "$work"/"$1".* | python3 -c '
import sys
lat = sorted(int(l.split()[2]) for l in sys.stdin)
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000
print(f"{p(0.5):.3f} {p(0.99):.3f} {len(lat)}")'; }
bench alone
psql -c "TRUNCATE v2.users; DELETE FROM pgshift.backfills"
target/release/pgshift backfill --config "$work/pgshift.toml" --migration users_v2 --format json > /dev/null & bpid=$!
bench during
kill -INT "$bpid" 2>/dev/null || true; wait "$bpid" || true
read -r alone_p50 alone_p99 alone_n <<<"$(percentiles alone)"
read -r during_p50 during_p99 during_n <<<"$(percentiles during)"

python3 - "$ROWS" "$bytes" "$insert_s" "$backfill_s" "$batches" "$backfill_rss" "$hash_s" "$verify_s" "$verify_rss" \
  "$alone_p50" "$alone_p99" "$alone_n" "$during_p50" "$during_p99" "$during_n" <<'PY'
import sys
rows, size = int(sys.argv[1]), int(sys.argv[2])
ins, bf, batches, bf_rss, hs, vf, vf_rss = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]), float(sys.argv[8]), int(sys.argv[9])
a50, a99, an, d50, d99, dn = (float(x) for x in sys.argv[10:16])
gib_h = lambda s: size / 2**30 / (s / 3600)
print(f"table: {rows} rows, {size / 2**20:.0f} MiB")
print(f"backfill: {bf:.1f} s, {rows / bf:,.0f} rows/s ({gib_h(bf):.1f} GiB/h), {batches} batches; "
      f"INSERT … SELECT {ins:.1f} s -> {ins / bf:.2f}x its rate; peak RSS {bf_rss / 1024:.1f} MiB")
print(f"verify: {vf:.1f} s, {rows / vf:,.0f} rows/s ({gib_h(vf):.1f} GiB/h); hash scan of both sides {hs:.1f} s "
      f"-> {hs / vf:.2f}x its rate; peak RSS {vf_rss / 1024:.1f} MiB")
print(f"pgbench -S, 4 clients: alone p50 {a50:.3f} ms p99 {a99:.3f} ms ({an:.0f} tx); during backfill "
      f"p50 {d50:.3f} ms p99 {d99:.3f} ms ({dn:.0f} tx) -> p99 {d99 / a99:.2f}x")
PY
