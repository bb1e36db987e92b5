"""asyncpg scenarios (binary protocol, prepared statements, SSL negotiation first); one JSON line each."""
import asyncio
import hashlib
import io
import json
import sys
import time
from datetime import datetime, timezone
from decimal import Decimal

import asyncpg

url = sys.argv[1]


def emit(name, value):
    print(json.dumps([name, value], default=repr), flush=True)


async def main():
    conn = await asyncpg.connect(url)  # ssl='prefer': SSLRequest, then plaintext after 'N'
    await conn.execute(
        "CREATE TABLE t (id int PRIMARY KEY, name text, price numeric(8,2), data bytea, ok bool,"
        " at timestamptz, doc jsonb, tags text[])"
    )
    status = await conn.execute(
        "INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        1, "héllo ✓", Decimal("12.50"), b"\x00\x01\xff", True,
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), '{"a": [1, 2]}', ["x", "y z"],
    )
    emit("status", status)
    await conn.executemany("INSERT INTO t (id) VALUES ($1)", [(2,), (3,)])
    rows = await conn.fetch("SELECT * FROM t ORDER BY id")
    emit("rows", [[repr(v) for v in r.values()] for r in rows])

    stmt = await conn.prepare("SELECT $1::int * 2")
    emit("prepared", [await stmt.fetchval(i) for i in range(10)])

    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO t (id) VALUES (4)")
            await conn.execute("INSERT INTO t (id) VALUES (1)")
    except asyncpg.UniqueViolationError as e:
        emit("error", e.sqlstate)
    async with conn.transaction():
        await conn.execute("INSERT INTO t (id) VALUES (5)")
        try:
            async with conn.transaction():  # a savepoint
                await conn.execute("INSERT INTO t (id) VALUES (6)")
                raise RuntimeError("roll back the savepoint")
        except RuntimeError:
            pass
    emit("ids", [r["id"] for r in await conn.fetch("SELECT id FROM t ORDER BY id")])

    await conn.copy_records_to_table("t", records=[(i, f"name {i}") for i in range(10, 2010)], columns=["id", "name"])
    out = io.BytesIO()
    await conn.copy_from_query("SELECT id, name FROM t WHERE id >= 10 ORDER BY id", output=out)
    emit("copy_out", [len(out.getvalue()), hashlib.md5(out.getvalue()).hexdigest()])

    rows = await conn.fetch("SELECT g, md5(g::text) FROM generate_series(1, 100000) g")
    emit("large", [len(rows), list(rows[-1].values())])

    queue = asyncio.Queue()
    await conn.add_listener("ch", lambda c, pid, channel, payload: queue.put_nowait([channel, payload]))
    other = await asyncpg.connect(url)
    await other.execute("NOTIFY ch, 'hello'")
    await other.close()
    emit("notify", await asyncio.wait_for(queue.get(), 10))

    # A client-side timeout makes asyncpg send a CancelRequest (after its own SSLRequest) and wait for it.
    try:
        await conn.fetch("SELECT pg_sleep(20)", timeout=0.5)
    except asyncio.TimeoutError:
        emit("cancel", "timeout")
    started = time.monotonic()
    emit("after_cancel", [await conn.fetchval("SELECT 1"), time.monotonic() - started < 5])
    await conn.close()


asyncio.run(main())
