"""psycopg 3 scenarios; prints one JSON line per observation. Run against a direct and a proxied URL and compare."""
import hashlib
import json
import sys
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal

import psycopg
from psycopg.types.json import Jsonb

url = sys.argv[1]


def emit(name, value):
    print(json.dumps([name, value], default=repr), flush=True)


with psycopg.connect(url, autocommit=True) as conn:
    conn.execute(
        "CREATE TABLE t (id int PRIMARY KEY, name text, price numeric(8,2), data bytea, ok bool,"
        " at timestamptz, doc jsonb, tags text[])"
    )
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO t VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (1, "héllo ✓", Decimal("12.50"), b"\x00\x01\xff", True,
             datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), Jsonb({"a": [1, 2]}), ["x", "y z"]),
        )
        cur.execute("INSERT INTO t (id) VALUES (%s), (%s)", (2, 3))
        emit("rowcount", cur.rowcount)
        cur.execute("SELECT * FROM t ORDER BY id")
        emit("rows", [[repr(v) for v in row] for row in cur.fetchall()])
        emit("columns", [d.name for d in cur.description])

    emit("prepared", [conn.execute("SELECT %s::int * 2", (i,), prepare=True).fetchone()[0] for i in range(10)])

    conn.autocommit = False
    try:
        conn.execute("INSERT INTO t (id) VALUES (1)")
    except psycopg.errors.UniqueViolation as e:
        emit("error", e.sqlstate)
    try:
        conn.execute("SELECT 1")
    except psycopg.errors.InFailedSqlTransaction as e:
        emit("error", e.sqlstate)
    conn.rollback()
    with conn.transaction():
        conn.execute("INSERT INTO t (id) VALUES (4)")
        with conn.transaction():  # a savepoint
            conn.execute("INSERT INTO t (id) VALUES (5)")
    conn.commit()
    conn.autocommit = True
    emit("ids", [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id").fetchall()])

    with conn.cursor() as cur:
        with cur.copy("COPY t (id, name) FROM STDIN") as copy:
            for i in range(10, 2010):
                copy.write_row((i, f"name {i}"))
        buf = bytearray()
        with cur.copy("COPY (SELECT id, name FROM t WHERE id >= 10 ORDER BY id) TO STDOUT") as copy:
            for data in copy:
                buf += data
        emit("copy_out", [len(buf), hashlib.md5(buf).hexdigest()])
        try:
            with cur.copy("COPY t (id, name) FROM STDIN") as copy:
                copy.write(b"20000\tok\nnot-a-number\tbad\n")
        except psycopg.errors.InvalidTextRepresentation as e:
            emit("copy_error", e.sqlstate)
        cur.execute("SELECT g, md5(g::text) FROM generate_series(1, 100000) g")
        rows = cur.fetchall()
        emit("large", [len(rows), list(rows[-1])])

    conn.execute("LISTEN ch")
    with psycopg.connect(url, autocommit=True) as other:
        other.execute("NOTIFY ch, 'hello'")
    for n in conn.notifies(timeout=10, stop_after=1):
        emit("notify", [n.channel, n.payload])

    def cancel_later():
        time.sleep(0.5)
        # libpq 17's cancel API negotiates SSL first: SSLRequest, 'N', then the CancelRequest.
        (conn.cancel_safe if hasattr(conn, "cancel_safe") else conn.cancel)()

    threading.Thread(target=cancel_later).start()
    started = time.monotonic()
    try:
        conn.execute("SELECT pg_sleep(20)")
    except psycopg.errors.QueryCanceled as e:
        emit("cancel", [e.sqlstate, time.monotonic() - started < 10])
    emit("after_cancel", conn.execute("SELECT 1").fetchone()[0])
