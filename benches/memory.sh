#!/usr/bin/env bash
# pgshift's memory: RSS per idle client connection (500 connections), RSS while a client reads a 1M-row
# (~110 MB) result slowly, and RSS with no clients left after each of 9 floods of 2,000 sessions (it must come
# back to within 10 % of its value after the first flood). A throwaway cluster; the client is plain Python
# sockets (no driver needed).
#
#   benches/memory.sh            # prints three lines of figures (about a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${CONNECTIONS:-500}
FLOOD=${FLOOD:-2000}
ROUNDS=${ROUNDS:-9}

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bindir/initdb" ] || { echo "PostgreSQL server binaries not found: apt-get install postgresql" >&2; exit 1; }
PATH="$bindir:$PATH"
cargo build --release --quiet --bin pgshift

work=$(mktemp -d /tmp/pgshift-mem.XXXXXX); chmod 755 "$work"
run_as=(); if [ "$(id -u)" = 0 ]; then chown postgres "$work"; run_as=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg_port=$(free_port); port=$(free_port)
cleanup() { kill "${spid:-}" 2>/dev/null || true; "${run_as[@]}" pg_ctl -D "$work/data" -m fast stop >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
"${run_as[@]}" initdb -A trust -U postgres -D "$work/data" >/dev/null
"${run_as[@]}" pg_ctl -D "$work/data" -l "$work/pg.log" -w -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 \
  -c max_connections=$(( (CONNECTIONS > FLOOD ? CONNECTIONS : FLOOD) + 20 )) -c shared_buffers=128MB -c fsync=off" start >/dev/null
printf '[listen]\naddr = "127.0.0.1:%s"\n[upstream]\naddr = "127.0.0.1:%s"\n[upstream.tls]\nmode = "disable"\n[log]\nlevel = "warn"\n' \
  "$port" "$pg_port" > "$work/pgshift.toml"
target/release/pgshift serve --config "$work/pgshift.toml" 2>"$work/pgshift.log" & spid=$!
sleep 1

python3 - "$port" "$spid" "$CONNECTIONS" "$FLOOD" "$ROUNDS" <<'PY'
import socket, struct, sys, time
port, pid, n, flood, rounds = (int(a) for a in sys.argv[1:6])

def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def read_msg(s, buf):
    while len(buf) < 5:
        buf += s.recv(65536)
    tag, length = buf[0:1], struct.unpack("!I", buf[1:5])[0]
    while len(buf) < 1 + length:
        buf += s.recv(65536)
    return tag, buf[5:1 + length], buf[1 + length:]

def login():
    s = socket.create_connection(("127.0.0.1", port))
    body = b"user\0postgres\0database\0postgres\0\0"
    s.sendall(struct.pack("!II", 8 + len(body), 196608) + body)
    buf = b""
    while True:
        tag, _, buf = read_msg(s, buf)
        if tag == b"Z":
            return s

# Idle connections: each has logged in through pgshift and sits between transactions.
login().close()
time.sleep(0.5)
base = rss_kib()
conns = [login() for _ in range(n)]
time.sleep(1)
idle = rss_kib()
print(f"idle connections: RSS {base} KiB with 1 closed, {idle} KiB with {n} idle; "
      f"{(idle - base) / n:.1f} KiB per idle connection")
for c in conns:
    c.close()
time.sleep(5)  # their memory goes back to the OS before the next measurement starts

# A slow reader of a 1M-row result: the client reads nothing for 3 s, then 64 KiB every 2 ms.
s = login()
sql = b"SELECT g, repeat('x', 100) FROM generate_series(1, 1000000) g\0"
s.sendall(b"Q" + struct.pack("!I", 4 + len(sql)) + sql)
before = rss_kib()
time.sleep(3)
stalled = rss_kib()
peak, total, rows, buf = stalled, 0, 0, b""
s.settimeout(30)
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    total += len(chunk)
    buf += chunk
    # count DataRows and stop at ReadyForQuery
    done = False
    while len(buf) >= 5:
        length = struct.unpack("!I", buf[1:5])[0]
        if len(buf) < 1 + length:
            break
        if buf[0:1] == b"D":
            rows += 1
        if buf[0:1] == b"Z":
            done = True
        buf = buf[1 + length:]
    if done:
        break
    if total % (64 * 1024 * 16) < 65536:
        peak = max(peak, rss_kib())
    time.sleep(0.002)
s.close()
slow = (f"slow reader of {rows} rows ({total / 1e6:.0f} MB): RSS {before} KiB before, {stalled} KiB while the "
        f"client read nothing for 3 s, peak {max(peak, rss_kib())} KiB while it read slowly")

# Floods: FLOOD sessions logged in at once, then all closed; RSS once no client is left.
after, peaks = [], []
for _ in range(rounds):
    conns = [login() for _ in range(flood)]
    peaks.append(rss_kib())
    for c in conns:
        c.close()
    time.sleep(5)  # the sessions end, and pgshift's once-a-second check gives their memory back
    after.append(rss_kib())
worst = max(abs(a - after[0]) / after[0] for a in after[1:]) if rounds > 1 else 0.0
print(f"{rounds} floods of {flood} sessions: RSS with no clients after each "
      f"{' -> '.join(f'{a / 1024:.1f}' for a in after)} MiB; at most {worst * 100:.1f} % from the first "
      f"({'within' if worst <= 0.10 else 'NOT within'} 10 %); with {flood} open "
      f"{' -> '.join(f'{p / 1024:.1f}' for p in peaks)} MiB")
print(slow)
PY
