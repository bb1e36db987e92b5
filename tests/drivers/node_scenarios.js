// node-postgres and Postgres.js scenarios; one JSON line per observation. Usage: node node_scenarios.js pg|postgres URL
const crypto = require('crypto');
const [driver, url] = process.argv.slice(2);
const emit = (name, value) => console.log(JSON.stringify([name, value]));

async function withPg() {
  const { Client } = require('pg');
  const c = new Client({ connectionString: url });
  await c.connect();
  await c.query('CREATE TABLE t (id int PRIMARY KEY, name text, price numeric(8,2), data bytea, ok bool, at timestamptz, doc jsonb, tags text[])');
  const ins = await c.query('INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $8)',
    [1, 'héllo ✓', '12.50', Buffer.from([0, 1, 255]), true, new Date(Date.UTC(2026, 0, 2, 3, 4, 5)), { a: [1, 2] }, ['x', 'y z']]);
  emit('insert', [ins.command, ins.rowCount]);
  await c.query('INSERT INTO t (id) VALUES (2), (3)');
  const rows = await c.query('SELECT * FROM t ORDER BY id');
  emit('rows', rows.rows);
  emit('fields', rows.fields.map((f) => [f.name, f.dataTypeID]));
  const doubled = [];
  for (let i = 0; i < 10; i++) {
    doubled.push((await c.query({ name: 'double', text: 'SELECT $1::int * 2 AS v', values: [i] })).rows[0].v);
  }
  emit('prepared', doubled);
  await c.query('BEGIN');
  try { await c.query('INSERT INTO t (id) VALUES (1)'); } catch (e) { emit('error', e.code); }
  try { await c.query('SELECT 1'); } catch (e) { emit('error', e.code); }
  await c.query('ROLLBACK');
  const big = await c.query('SELECT g, md5(g::text) FROM generate_series(1, 100000) g');
  emit('large', [big.rows.length, big.rows[big.rows.length - 1]]);
  await c.query('LISTEN ch');
  const note = new Promise((resolve) => c.on('notification', (n) => resolve([n.channel, n.payload])));
  const other = new Client({ connectionString: url });
  await other.connect();
  await other.query("NOTIFY ch, 'hello'");
  await other.end();
  emit('notify', await note);
  c.on('notice', (n) => emit('notice', n.message));
  await c.query("DO $$ BEGIN RAISE NOTICE 'hi from plpgsql'; END $$");
  await c.end();
}

async function withPostgresJs() {
  const postgres = require('postgres');
  const sql = postgres(url, { onnotice: (n) => emit('notice', n.message) });
  await sql`CREATE TABLE t (id int PRIMARY KEY, name text, price numeric(8,2), ok bool, tags text[])`;
  const ins = await sql`INSERT INTO t VALUES (${1}, ${'héllo ✓'}, ${'12.50'}, ${true}, ${['x', 'y z']})`;
  emit('insert', [ins.command, ins.count]);
  await sql`INSERT INTO t ${sql([{ id: 2, name: 'b' }, { id: 3, name: null }], 'id', 'name')}`;
  emit('rows', await sql`SELECT * FROM t ORDER BY id`);
  const doubled = [];
  for (let i = 0; i < 10; i++) doubled.push((await sql`SELECT ${i}::int * 2 AS v`)[0].v);
  emit('prepared', doubled);
  try {
    await sql.begin(async (tx) => {
      await tx`INSERT INTO t (id) VALUES (4)`;
      await tx`INSERT INTO t (id) VALUES (1)`;
    });
  } catch (e) { emit('error', e.code); }
  emit('ids', (await sql`SELECT id FROM t ORDER BY id`).map((r) => r.id));
  const big = await sql`SELECT g, md5(g::text) FROM generate_series(1, 100000) g`;
  emit('large', [big.length, big[big.length - 1]]);
  const note = new Promise((resolve) => sql.listen('ch', (payload) => resolve(['ch', payload])));
  await new Promise((r) => setTimeout(r, 200));
  await sql.notify('ch', 'hello');
  emit('notify', await note);
  const slow = sql`SELECT pg_sleep(20)`;
  setTimeout(() => slow.cancel(), 500);
  const started = Date.now();
  try { await slow; } catch (e) { emit('cancel', [e.code, Date.now() - started < 10000]); }
  emit('after_cancel', (await sql`SELECT 1 AS one`)[0].one);
  await sql`DO $$ BEGIN RAISE NOTICE 'hi from plpgsql'; END $$`;
  const hash = crypto.createHash('md5');
  for (const r of await sql`SELECT name FROM t ORDER BY id`) hash.update(String(r.name));
  emit('hash', hash.digest('hex'));
  await sql.end();
}

(driver === 'pg' ? withPg() : withPostgresJs()).catch((e) => {
  console.error(e);
  process.exit(1);
});
