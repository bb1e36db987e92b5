//! Differential correctness: the same statements against two databases made from one schema and seed, one
//! directly and one through pgshift (a table and a column migration both active), comparing after every
//! statement what the client saw (row descriptions with names and types, rows, command tags, SQLSTATEs,
//! transaction status) and the full contents of the tables (old directly vs old through pgshift, and old vs
//! new through the mapping). Runs in both write phases, with reads at 0 % and 100 %, through the simple and
//! the extended protocol. A refusal is correct only when its reason is one the README lists.

use crate::raw::{frame, message, query, sqlstate, sync, Raw};
use crate::support::{cluster, connect, fresh_db, start_proxy, ProxyOptions};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use tokio_postgres::Client;

const SCHEMA: &str = "
CREATE SCHEMA v2;
CREATE TABLE users (id bigserial PRIMARY KEY, fullname text NOT NULL, email text UNIQUE, note text,
                    qty int NOT NULL DEFAULT 0, tags text[] DEFAULT '{}', meta jsonb DEFAULT '{}',
                    created_at timestamptz NOT NULL DEFAULT '2020-01-01 00:00:00+00');
CREATE TABLE v2.users (id bigint PRIMARY KEY DEFAULT nextval('users_id_seq'), display_name text NOT NULL,
                       email text UNIQUE, note text, qty bigint NOT NULL DEFAULT 0, tags text[] DEFAULT '{}',
                       meta jsonb DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT '2020-01-01 00:00:00+00');
CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint, legacy_status text DEFAULT 'open', new_status text,
                     amount numeric(10,2) NOT NULL DEFAULT 0);
CREATE TABLE banned (email text, reason text);
INSERT INTO users (fullname, email, note, qty, tags, meta)
  SELECT 'user ' || g, 'u' || g || '@x', CASE WHEN g % 3 = 0 THEN NULL ELSE 'note ' || g END, g,
         ARRAY['t' || g, 't' || (g + 1)], jsonb_build_object('k', g, 'odd', g % 2 = 1)
  FROM generate_series(1, 20) g;
INSERT INTO v2.users SELECT id, fullname, email, note, qty, tags, meta, created_at FROM users;
INSERT INTO orders (user_id, legacy_status, amount)
  SELECT g % 7 + 1, (ARRAY['open', 'paid', 'shipped', NULL])[g % 4 + 1], g * 1.5 FROM generate_series(1, 20) g;
UPDATE orders SET new_status = 's:' || reverse(legacy_status);
INSERT INTO banned VALUES ('u3@x', 'spam'), ('u5@x', 'fraud');
CREATE VIEW active_users AS SELECT * FROM users WHERE qty > 0;
CREATE FUNCTION touch_user(i bigint) RETURNS void LANGUAGE sql AS $$ UPDATE users SET note = 'touched' WHERE id = i $$;
CREATE FUNCTION user_count() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM users $$;
";

/// The direct database's reference for what a perfect dual write does: triggers keep the new table and column
/// in step, so reads of either side (and `SELECT *` of orders) compare equal too.
const REFERENCE_TRIGGERS: &str = "
CREATE FUNCTION mirror_users() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    DELETE FROM v2.users WHERE id = OLD.id;
    RETURN OLD;
  END IF;
  INSERT INTO v2.users VALUES (NEW.id, NEW.fullname, NEW.email, NEW.note, NEW.qty, NEW.tags, NEW.meta, NEW.created_at)
  ON CONFLICT (id) DO UPDATE SET display_name = EXCLUDED.display_name, email = EXCLUDED.email, note = EXCLUDED.note,
    qty = EXCLUDED.qty, tags = EXCLUDED.tags, meta = EXCLUDED.meta, created_at = EXCLUDED.created_at;
  RETURN NEW;
END $$;
CREATE TRIGGER mirror_users AFTER INSERT OR UPDATE OR DELETE ON users FOR EACH ROW EXECUTE FUNCTION mirror_users();
CREATE FUNCTION mirror_orders() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.new_status := 's:' || reverse(NEW.legacy_status);
  RETURN NEW;
END $$;
CREATE TRIGGER mirror_orders BEFORE INSERT OR UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION mirror_orders();
";

/// Both migrations: `users` → `v2.users` (table kind), `orders.legacy_status` → `new_status` (column kind, with
/// an invertible mapping, so `new_primary` stores what the client wrote).
pub(crate) fn migrations(writes: &str, percent: u32) -> String {
    format!(
        "[[migration]]\nname = \"users_v2\"\nkind = \"table\"\ntable = \"public.users\"\nnew_table = \"v2.users\"\n\
         key = [\"id\"]\ncolumns = [{{ old = \"fullname\", new = \"display_name\" }}]\nwrites = \"{writes}\"\n\
         [migration.reads]\nnew_percent = {percent}\n\n\
         [[migration]]\nname = \"orders_status\"\nkind = \"column\"\ntable = \"public.orders\"\nkey = [\"id\"]\n\
         columns = [{{ old = \"legacy_status\", new = \"new_status\", up = \"'s:' || reverse(legacy_status)\", down = \"reverse(substr(new_status, 3))\" }}]\n\
         writes = \"{writes}\"\n[migration.reads]\nnew_percent = {percent}\n"
    )
}

/// Refusals the README lists (by metric reason code): a refusal with any other reason is a failure.
const DOCUMENTED_REFUSALS: &[&str] = &[
    "parse_error",
    "misread",
    "opaque_code",
    "merge",
    "truncate",
    "copy",
    "key_update",
    "only",
    "modifying_cte",
    "returning",
    "default_value",
    "unrepeatable_value",
    "new_primary",
    "unknown_column",
    "prepare",
    "explain_analyze",
    "invisible_write",
];

#[derive(Clone, Debug)]
struct Case {
    sql: String,
    params: Vec<Option<String>>,
}

fn case(sql: &str) -> Case {
    Case {
        sql: sql.to_owned(),
        params: vec![],
    }
}

fn with_params(sql: &str, params: &[Option<&str>]) -> Case {
    Case {
        sql: sql.to_owned(),
        params: params.iter().map(|p| p.map(str::to_owned)).collect(),
    }
}

/// Hand-written statements over every area of the DML and expression grammar that touches the migrated tables.
fn hand_written() -> Vec<Case> {
    let mut out: Vec<Case> = [
        // INSERT forms.
        "INSERT INTO users (fullname, email) VALUES ('Ada', 'ada@x')",
        "INSERT INTO users (fullname, email) VALUES ('Bo', 'bo@x'), ('Cy', NULL), ('Di', 'di@x')",
        "INSERT INTO users (fullname) VALUES ('Ret') RETURNING id, fullname, qty",
        "INSERT INTO users (fullname) VALUES ('RetStar') RETURNING *",
        "INSERT INTO users AS u (fullname) VALUES ('Alias') RETURNING u.id, upper(u.fullname) AS shout",
        "INSERT INTO users (fullname, note) VALUES ('Nul', NULL) RETURNING note IS NULL AS n, note ISNULL",
        "INSERT INTO users (fullname, qty) VALUES ('neg', - -1) RETURNING qty",
        "INSERT INTO users (fullname, qty) VALUES ('abs', @ -5) RETURNING qty, @ -qty AS a",
        "INSERT INTO users (fullname, qty) VALUES ('bitnot', ~ -1) RETURNING qty",
        "INSERT INTO users (fullname) VALUES ('con'\n'catenated') RETURNING fullname",
        "INSERT INTO users (fullname) VALUES (E'esc\\ttab\\n') RETURNING length(fullname)",
        "INSERT INTO users (fullname) VALUES ($$dollar 'quoted'$$) RETURNING fullname",
        "INSERT INTO users (fullname) VALUES ($tag$a;b$tag$); SELECT count(*) FROM users WHERE fullname = 'a;b'",
        "INSERT INTO users (fullname) VALUES (U&'d\\0061t\\+000061') RETURNING fullname",
        "INSERT INTO users (fullname, meta) VALUES ('js', '{\"a\": [1, 2]}') RETURNING meta->'a'->>1, meta #> '{a,0}'",
        "INSERT INTO users (fullname, tags) VALUES ('arr', ARRAY['x', 'y']) RETURNING tags[1], array_length(tags, 1)",
        "INSERT INTO users (fullname, tags) VALUES ('arr2', '{p,q}') RETURNING tags",
        "INSERT INTO users (fullname, qty) VALUES ('cast', '7'::int + 1) RETURNING qty::text || '!'",
        "INSERT INTO users (fullname, qty) VALUES ('cast2', CAST('3' AS integer) * 2) RETURNING qty",
        "INSERT INTO users (fullname, created_at) VALUES ('ts', '2021-02-03 04:05:06+00') RETURNING created_at",
        "INSERT INTO users (fullname, created_at) VALUES ('tz', timestamptz '2021-01-01' + interval '1 day') RETURNING created_at AT TIME ZONE 'UTC'",
        "/* leading comment */ INSERT INTO users (fullname) VALUES ('cmt') -- trailing\n RETURNING id",
        "INSERT INTO users (fullname) VALUES ('a' /* inline */ || 'b') RETURNING fullname",
        "INSERT INTO \"users\" (\"fullname\") VALUES ('quoted')",
        "INSERT INTO public.users (fullname) VALUES ('qualified') RETURNING public.users.fullname",
        "INSERT INTO PUBLIC.USERS (FULLNAME) VALUES ('upper')",
        "INSERT INTO users (fullname, email) SELECT 'copy ' || fullname, 'c' || email FROM users WHERE id <= 3 ORDER BY id",
        "INSERT INTO users (fullname, note) SELECT 'x' || id, (note ISNULL)::text FROM users WHERE id BETWEEN 4 AND 6 ORDER BY id",
        "INSERT INTO users (fullname, note) SELECT 'y' || id, note NOTNULL FROM users WHERE id BETWEEN 7 AND 8 ORDER BY id RETURNING note",
        "INSERT INTO users (fullname, qty) SELECT 'g' || g, g FROM generate_series(1, 4) g RETURNING id, qty",
        "INSERT INTO users (fullname) SELECT v FROM (VALUES ('v1'), ('v2')) AS t(v) RETURNING fullname",
        "INSERT INTO users (fullname) SELECT unnest(ARRAY['un1', 'un2']) RETURNING fullname",
        "WITH src AS (SELECT 'cte' AS n) INSERT INTO users (fullname) SELECT n FROM src RETURNING fullname",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) INSERT INTO users (fullname, qty) SELECT 'rec', n FROM r",
        "INSERT INTO users DEFAULT VALUES",
        "INSERT INTO users (fullname) VALUES (NULL)",
        "INSERT INTO users (id, fullname) VALUES (1, 'dup')",
        "INSERT INTO users (fullname, qty) VALUES ('bad', 'x')",
        "INSERT INTO users (fullname, nosuch) VALUES ('bad', 1)",
        "INSERT INTO users (fullname) VALUES ('agg') RETURNING count(*)",
        "INSERT INTO users (fullname) VALUES ('srf') RETURNING unnest(tags)",
        "INSERT INTO users (fullname) VALUES ('win') RETURNING row_number() OVER ()",
        "INSERT INTO users (fullname) VALUES ('sub') RETURNING (SELECT count(*) FROM orders) > 0",
        "INSERT INTO users (fullname) VALUES ('sys') RETURNING xmin = xmin",
        "INSERT INTO users (fullname) VALUES ('whole') RETURNING users",
        // ON CONFLICT.
        "INSERT INTO users (id, fullname) VALUES (2, 'up2') ON CONFLICT (id) DO UPDATE SET fullname = EXCLUDED.fullname",
        "INSERT INTO users (id, fullname) VALUES (2, 'up3') ON CONFLICT (id) DO UPDATE SET fullname = EXCLUDED.fullname || users.fullname RETURNING fullname",
        "INSERT INTO users (id, fullname) VALUES (3, 'nothing') ON CONFLICT DO NOTHING",
        "INSERT INTO users (id, fullname) VALUES (4, 'ocw') ON CONFLICT (id) DO UPDATE SET qty = users.qty + 1 WHERE users.qty < 100 RETURNING qty",
        "INSERT INTO users (id, fullname) VALUES (5, 'self') ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id, fullname = EXCLUDED.fullname",
        "INSERT INTO users (id, fullname, email) VALUES (6, 'em', 'u6@x') ON CONFLICT (email) DO UPDATE SET note = 'conflict on email'",
        "INSERT INTO users (id, fullname) VALUES (7, 'cons') ON CONFLICT ON CONSTRAINT users_pkey DO UPDATE SET note = 'by constraint'",
        "INSERT INTO users (id, fullname) VALUES (8, 'part') ON CONFLICT (id) WHERE true DO NOTHING",
        "INSERT INTO users (id, fullname) VALUES (500, 'new row') ON CONFLICT (id) DO UPDATE SET fullname = 'never'",
        // UPDATE forms.
        "UPDATE users SET email = lower(email) WHERE id = 1",
        "UPDATE users SET qty = qty + 1 WHERE id IN (1, 2, 3) RETURNING id, qty",
        "UPDATE users SET qty = qty - -1 WHERE id = 2 RETURNING qty",
        "UPDATE users SET qty = @ -qty WHERE id = 3 RETURNING qty",
        "UPDATE users SET note = 'con'\n'tinued' WHERE id = 4 RETURNING note",
        "UPDATE users SET note = note || '!' WHERE note ISNULL",
        "UPDATE users SET note = 'was null' WHERE note IS NULL AND id < 10 RETURNING id",
        "UPDATE users SET fullname = fullname || ' (' || qty || ')' WHERE qty BETWEEN 5 AND 7",
        "UPDATE users SET qty = CASE WHEN qty % 2 = 0 THEN qty / 2 ELSE qty * 3 + 1 END WHERE id > 15",
        "UPDATE users SET tags = tags || ARRAY['more'] WHERE id = 5 RETURNING tags",
        "UPDATE users SET tags[1] = 'first' WHERE id = 6 RETURNING tags",
        "UPDATE users SET meta = meta || '{\"z\": 1}' WHERE id = 7 RETURNING meta",
        "UPDATE users SET meta['k'] = '99' WHERE id = 8 RETURNING meta",
        "UPDATE users SET (note, qty) = ('tuple', 42) WHERE id = 9",
        "UPDATE users SET (note, qty) = (SELECT 'sub', 43) WHERE id = 10",
        "UPDATE users SET fullname = DEFAULT WHERE id = 11",
        "UPDATE users SET qty = DEFAULT WHERE id = 11 RETURNING qty",
        "UPDATE users SET note = (SELECT count(*) FROM orders WHERE orders.user_id = users.id)::text WHERE id < 5",
        "UPDATE users u SET note = b.reason FROM banned b WHERE u.email = b.email RETURNING u.id, u.note",
        "UPDATE users SET note = 'joined' FROM banned WHERE users.email = banned.email AND banned.reason = 'spam'",
        "UPDATE users SET email = 'u1@x' WHERE id = 2",
        "UPDATE users SET id = id + 1000 WHERE id = 12",
        "UPDATE users SET qty = 1 / 0 WHERE id = 1",
        "UPDATE users SET qty = qty + 1 WHERE id = 1 RETURNING count(*)",
        "UPDATE users SET qty = qty + 1 WHERE id = 1 RETURNING unnest(tags)",
        "UPDATE users SET qty = qty + 1 WHERE id = 1 RETURNING row_number() OVER ()",
        "UPDATE ONLY users SET note = 'only' WHERE id = 13",
        "UPDATE users SET note = 'none' WHERE false",
        "UPDATE users SET created_at = created_at + interval '1 hour' WHERE id = 14 RETURNING created_at",
        "UPDATE users SET note = 'a' WHERE id = 15; UPDATE users SET note = note || 'b' WHERE id = 15 RETURNING note",
        "WITH t AS (SELECT 16 AS id) UPDATE users SET note = 'with' FROM t WHERE users.id = t.id",
        "UPDATE users SET note = 'x' WHERE email ILIKE 'U1%' AND NOT (qty > 100 OR qty IS NULL)",
        "UPDATE users SET note = 'any' WHERE id = ANY(ARRAY[17, 18]) AND tags && ARRAY['t17']",
        "UPDATE users SET note = 'dist' WHERE note IS DISTINCT FROM 'note 19' AND id = 19",
        // DELETE forms.
        "DELETE FROM users WHERE id = 20",
        "DELETE FROM users WHERE id = 19 RETURNING id, fullname",
        "DELETE FROM users WHERE id = 18 RETURNING *",
        "DELETE FROM users u USING banned b WHERE u.email = b.email AND b.reason = 'fraud'",
        "DELETE FROM users WHERE id IN (SELECT user_id FROM orders WHERE amount > 100)",
        "DELETE FROM users WHERE note ISNULL AND id > 16",
        "DELETE FROM users WHERE fullname = 'nobody'",
        "DELETE FROM users WHERE id = 17 RETURNING count(*)",
        "WITH d AS (DELETE FROM users WHERE id = 16 RETURNING id) SELECT count(*) FROM d",
        "DELETE FROM ONLY users WHERE id = 15",
        // Column kind: orders.
        "INSERT INTO orders (user_id, legacy_status, amount) VALUES (1, 'open', 9.99)",
        "INSERT INTO orders (user_id, legacy_status) VALUES (2, 'paid'), (3, NULL), (4, 'x' || 'y') RETURNING id, legacy_status",
        "INSERT INTO orders (user_id, amount) VALUES (3, 7)",
        "INSERT INTO orders (user_id) VALUES (3) RETURNING legacy_status, new_status",
        "INSERT INTO orders DEFAULT VALUES RETURNING *",
        "INSERT INTO orders (user_id, legacy_status) VALUES (4, 42) RETURNING *",
        "INSERT INTO orders (user_id, legacy_status) VALUES (4, 42.50::numeric(6,1)) RETURNING legacy_status",
        "INSERT INTO orders (user_id, legacy_status) VALUES (5, 'con'\n'cat') RETURNING legacy_status",
        "INSERT INTO orders (user_id, legacy_status) VALUES (6, 7)",
        "INSERT INTO orders (user_id, legacy_status) VALUES (6, DEFAULT)",
        "INSERT INTO orders (user_id, legacy_status) SELECT id, 'bulk' FROM users WHERE id < 4 ORDER BY id",
        "INSERT INTO orders (user_id, legacy_status) VALUES (7, random()::text)",
        "INSERT INTO orders (id, user_id, legacy_status) VALUES (1, 1, 'upsert') ON CONFLICT (id) DO UPDATE SET legacy_status = EXCLUDED.legacy_status",
        "INSERT INTO orders (id, user_id, legacy_status) VALUES (2, 1, 'up2') ON CONFLICT (id) DO UPDATE SET amount = orders.amount + 1",
        "UPDATE orders SET legacy_status = 'shipped' WHERE id = 3",
        "UPDATE orders SET legacy_status = upper(legacy_status) WHERE id < 6 RETURNING legacy_status",
        "UPDATE orders SET legacy_status = NULL WHERE id = 6",
        "UPDATE orders SET legacy_status = DEFAULT WHERE id = 7",
        "UPDATE orders SET amount = amount * 2 WHERE legacy_status = 'paid' RETURNING amount",
        "UPDATE orders SET legacy_status = legacy_status || - -1 WHERE id = 8 RETURNING legacy_status",
        "UPDATE orders SET legacy_status = (SELECT 'sub') WHERE id = 9",
        "UPDATE orders o SET legacy_status = 'user ' || u.id FROM users u WHERE o.user_id = u.id AND u.id = 2",
        "UPDATE orders SET legacy_status = 'r' WHERE id = 10 RETURNING count(*)",
        "DELETE FROM orders WHERE id = 11",
        "DELETE FROM orders WHERE legacy_status ISNULL RETURNING id",
        // Reads.
        "SELECT * FROM users ORDER BY id",
        "SELECT id, fullname, email FROM users WHERE id < 5 ORDER BY id",
        "SELECT u.id, u.fullname FROM users u WHERE u.qty > 3 ORDER BY u.id DESC LIMIT 3",
        "SELECT public.users.id, public.users.fullname FROM public.users ORDER BY 1 LIMIT 2",
        "SELECT count(*), sum(qty), max(fullname) FROM users",
        "SELECT fullname, note ISNULL, note NOTNULL FROM users ORDER BY id",
        "SELECT - -1, @ -5, ~ -1, 'con'\n'cat' FROM users WHERE id = 1",
        "SELECT xmin IS NOT NULL, tableoid::regclass FROM users WHERE id = 1",
        "SELECT u FROM users u WHERE id = 1",
        "SELECT u.* FROM users u JOIN orders o ON o.user_id = u.id ORDER BY u.id, o.id LIMIT 5",
        "SELECT o.id, o.legacy_status, u.fullname FROM orders o LEFT JOIN users u ON u.id = o.user_id ORDER BY o.id",
        "SELECT * FROM orders ORDER BY id",
        "SELECT legacy_status, count(*) FROM orders GROUP BY legacy_status ORDER BY 1 NULLS FIRST",
        "SELECT id FROM users WHERE id IN (SELECT user_id FROM orders WHERE legacy_status = 'paid') ORDER BY id",
        "SELECT id FROM users WHERE EXISTS (SELECT 1 FROM orders WHERE orders.user_id = users.id) ORDER BY id",
        "WITH x AS (SELECT id, fullname FROM users WHERE id < 4) SELECT * FROM x ORDER BY id",
        "SELECT * FROM users WHERE id = 1 FOR UPDATE",
        "SELECT * FROM users WHERE id = 1 FOR NO KEY UPDATE",
        "SELECT * FROM users WHERE id = 1 FOR SHARE",
        "SELECT * FROM users WHERE id = 1 FOR KEY SHARE",
        "SELECT u.id FROM users u, orders o WHERE o.user_id = u.id AND o.id = 1 FOR UPDATE OF u",
        "SELECT * FROM ONLY users WHERE id = 2",
        "SELECT id, meta->>'k', tags[2] FROM users WHERE meta @> '{\"odd\": true}' ORDER BY id",
        "SELECT id, row_number() OVER (ORDER BY qty DESC, id) FROM users ORDER BY id LIMIT 4",
        "SELECT fullname FROM users WHERE fullname LIKE 'user 1%' ORDER BY fullname COLLATE \"C\"",
        "SELECT DISTINCT ON (qty % 3) qty % 3, id FROM users ORDER BY qty % 3, id",
        "SELECT id FROM users UNION ALL SELECT id FROM orders ORDER BY 1 LIMIT 5",
        "SELECT (SELECT fullname FROM users WHERE id = o.user_id) FROM orders o ORDER BY o.id LIMIT 3",
        "SELECT * FROM users WHERE id = 1; SELECT * FROM orders WHERE id = 1",
        "EXPLAIN (COSTS OFF) SELECT * FROM users WHERE id = 1",
        "SELECT nosuch FROM users",
        // Statements pgshift cannot mirror.
        "MERGE INTO users u USING banned b ON u.email = b.email WHEN MATCHED THEN UPDATE SET note = 'merged'",
        "TRUNCATE users",
        "DO $$BEGIN UPDATE users SET note = 'do' WHERE id = 1; END$$",
        "CREATE FUNCTION pg_temp.f() RETURNS void LANGUAGE sql AS $f$ UPDATE users SET note = 'fn' $f$",
        "INSERT INTO users (id, fullname) OVERRIDING SYSTEM VALUE VALUES (900, 'osv')",
        "EXPLAIN ANALYZE UPDATE users SET note = 'ea' WHERE id = 1",
        "EXPLAIN (COSTS OFF) UPDATE users SET note = 'e' WHERE id = 1",
        "PREPARE p AS UPDATE users SET note = 'prep' WHERE id = 1",
        // Writes out of pgshift's sight: through a view, a function.
        "UPDATE active_users SET note = 'view' WHERE id = 2",
        "SELECT touch_user(3)",
        "SELECT user_count()",
        "SELECT count(*) FROM active_users",
    ]
    .into_iter()
    .map(case)
    .collect();
    out.extend([
        with_params(
            "INSERT INTO users (fullname, email) VALUES ($1, $2) RETURNING id",
            &[Some("P1"), Some("p1@x")],
        ),
        with_params(
            "INSERT INTO users (fullname, qty) VALUES ($1, $2)",
            &[Some("P2"), Some("12")],
        ),
        with_params(
            "UPDATE users SET note = $1 WHERE id = $2",
            &[Some("param"), Some("3")],
        ),
        with_params(
            "UPDATE users SET note = $1 WHERE id = $2 RETURNING note",
            &[None, Some("4")],
        ),
        with_params("DELETE FROM users WHERE id = $1", &[Some("5")]),
        with_params("SELECT * FROM users WHERE id = $1", &[Some("6")]),
        with_params(
            "INSERT INTO orders (user_id, legacy_status) VALUES ($1, $2)",
            &[Some("1"), Some("param")],
        ),
        with_params(
            "INSERT INTO orders (user_id, legacy_status) VALUES ($1, $2)",
            &[Some("1"), Some("7")],
        ),
        with_params(
            "UPDATE orders SET legacy_status = $1 WHERE id = $2",
            &[Some("p"), Some("4")],
        ),
        with_params(
            "SELECT legacy_status FROM orders WHERE id = $1",
            &[Some("4")],
        ),
    ]);
    out
}

/// A small deterministic generator (xorshift): random writes and reads over both migrated tables.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn num(&mut self, max: u64) -> u64 {
        self.next() % max
    }

    fn text_expr(&mut self) -> String {
        match self.num(9) {
            0 => format!("'s{}'", self.num(50)),
            1 => "fullname || '+'".into(),
            2 => format!("upper('m{}')", self.num(9)),
            3 => "NULL".into(),
            4 => format!("'q''uote{}'", self.num(9)),
            5 => format!("E'e\\\\{}'", self.num(9)),
            6 => format!("$${}$$", self.num(99)),
            7 => format!("'a' /* c */ || '{}'", self.num(9)),
            _ => format!("coalesce(note, 'n{}')", self.num(9)),
        }
    }

    fn int_expr(&mut self) -> String {
        match self.num(8) {
            0 => format!("{}", self.num(100)),
            1 => format!("- -{}", self.num(9)),
            2 => format!("@ -{}", self.num(9)),
            3 => "qty + 1".into(),
            4 => format!("qty * {} % 97", self.num(9) + 1),
            5 => format!("({} + {})::int", self.num(9), self.num(9)),
            6 => "length(fullname)".into(),
            _ => format!("CASE WHEN qty > {} THEN 1 ELSE 2 END", self.num(20)),
        }
    }

    fn cond(&mut self) -> String {
        match self.num(7) {
            0 => format!("id = {}", self.num(30) + 1),
            1 => format!("id BETWEEN {} AND {}", self.num(10) + 1, self.num(10) + 12),
            2 => "note ISNULL".into(),
            3 => format!("qty > {}", self.num(20)),
            4 => format!("id IN ({}, {})", self.num(30) + 1, self.num(30) + 1),
            5 => format!("fullname LIKE 'user {}%'", self.num(3)),
            _ => format!("id % {} = 0", self.num(5) + 2),
        }
    }

    fn returning(&mut self) -> String {
        match self.num(5) {
            0 => " RETURNING id".into(),
            1 => " RETURNING *".into(),
            2 => " RETURNING id, qty * 2 AS q, note ISNULL".into(),
            _ => String::new(),
        }
    }

    fn statement(&mut self) -> String {
        match self.num(10) {
            0 | 1 => format!(
                "INSERT INTO users (fullname, note, qty) VALUES ({}, {}, {}){}",
                self.pick(&["'g1'", "'g2' || 'x'", "$$g3$$", "'g4'\n'cont'"]),
                self.text_expr().replace("fullname", "'f'").replace("note", "'n'"),
                self.int_expr().replace("qty", "1").replace("length(fullname)", "3"),
                self.returning()
            ),
            2 | 3 => {
                let set = match self.num(3) {
                    0 => format!("note = {}", self.text_expr()),
                    1 => format!("qty = {}", self.int_expr()),
                    _ => format!("note = {}, qty = {}", self.text_expr(), self.int_expr()),
                };
                format!("UPDATE users SET {set} WHERE {}{}", self.cond(), self.returning())
            }
            4 => format!("DELETE FROM users WHERE {}{}", self.cond(), self.returning()),
            5 => format!(
                "INSERT INTO users (id, fullname, qty) VALUES ({}, 'ups', {}) ON CONFLICT (id) DO UPDATE SET qty = EXCLUDED.qty + users.qty{}",
                self.num(30) + 1,
                self.num(9),
                self.returning()
            ),
            6 => format!(
                "INSERT INTO orders (user_id, legacy_status, amount) VALUES ({}, {}, {}.{})",
                self.num(20),
                self.pick(&["'open'", "'paid'", "NULL", "'x' || 'y'", "'a'\n'b'", "upper('z')"]),
                self.num(99),
                self.num(99)
            ),
            7 => format!(
                "UPDATE orders SET legacy_status = {} WHERE id {} RETURNING id, legacy_status",
                self.pick(&["'shipped'", "legacy_status || '!'", "NULL", "lower('P')", "'c' 'd'"]),
                self.pick(&["< 5", "= 7", "IN (1, 9)", "> 18"])
            ),
            8 => format!(
                "SELECT id, fullname, note ISNULL, qty FROM users WHERE {} ORDER BY id",
                self.cond()
            ),
            _ => format!(
                "SELECT o.id, o.legacy_status, u.fullname FROM orders o JOIN users u ON u.id = o.user_id WHERE o.id < {} ORDER BY o.id",
                self.num(20)
            ),
        }
    }
}

/// Table OIDs by name, so row descriptions of two databases compare.
type Tables = std::collections::HashMap<u32, String>;

async fn tables(client: &Client) -> Tables {
    client
        .query(
            "SELECT c.oid, n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname IN ('public', 'v2')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, u32>(0), r.get::<_, String>(1)))
        .collect()
}

/// One reply message as a comparable line.
fn describe(tag: u8, body: &[u8]) -> String {
    describe_with(tag, body, &Tables::new())
}

fn describe_with(tag: u8, body: &[u8], tables: &Tables) -> String {
    match tag {
        b'T' => {
            let mut out = String::from("T");
            let count = u16::from_be_bytes([body[0], body[1]]);
            let mut at = 2;
            for _ in 0..count {
                let end = at + body[at..].iter().position(|&b| b == 0).unwrap();
                let name = String::from_utf8_lossy(&body[at..end]).into_owned();
                at = end + 1;
                let f = &body[at..at + 18];
                let table = u32::from_be_bytes(f[0..4].try_into().unwrap());
                let attnum = i16::from_be_bytes(f[4..6].try_into().unwrap());
                let origin = match tables.get(&table) {
                    Some(name) => format!("{name}.{attnum}"),
                    None if table == 0 => "-".to_owned(),
                    None => "?".to_owned(),
                };
                let type_oid = u32::from_be_bytes(f[6..10].try_into().unwrap());
                let typmod = i32::from_be_bytes(f[12..16].try_into().unwrap());
                // Types created with the schema have different OIDs in the two databases.
                let type_oid = if type_oid >= 16384 {
                    "user".to_owned()
                } else {
                    type_oid.to_string()
                };
                write!(out, " {name}:{type_oid}:{typmod}:{origin}").unwrap();
                at += 18;
            }
            out
        }
        b'D' => {
            let mut out = String::from("D");
            let count = u16::from_be_bytes([body[0], body[1]]);
            let mut at = 2;
            for _ in 0..count {
                let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
                at += 4;
                if len < 0 {
                    out.push_str(" NULL");
                } else {
                    let v = &body[at..at + len as usize];
                    write!(out, " {:?}", String::from_utf8_lossy(v)).unwrap();
                    at += len as usize;
                }
            }
            out
        }
        b'C' => format!("C {}", String::from_utf8_lossy(&body[..body.len() - 1])),
        b'E' => format!("E {}", sqlstate(body)),
        b'Z' => format!("Z {}", body[0] as char),
        b't' => format!("t {:?}", &body[2..]),
        other => (other as char).to_string(),
    }
}

enum Protocol {
    Simple,
    Extended,
}

/// The statement's replies, and whether pgshift refused it.
async fn run(raw: &mut Raw, c: &Case, protocol: &Protocol, tables: &Tables) -> (Vec<String>, bool) {
    match protocol {
        Protocol::Simple => raw.send(&query(&c.sql)).await,
        Protocol::Extended => {
            let mut bytes = frame(b'P', format!("\0{}\0\0\0", c.sql).as_bytes());
            let mut bind = Vec::new();
            bind.extend_from_slice(b"\0\0\0\0");
            bind.extend_from_slice(&(c.params.len() as u16).to_be_bytes());
            for p in &c.params {
                match p {
                    Some(v) => {
                        bind.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        bind.extend_from_slice(v.as_bytes());
                    }
                    None => bind.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
            bind.extend_from_slice(&0u16.to_be_bytes());
            bytes.extend(frame(b'B', &bind));
            bytes.extend(frame(b'D', b"P\0"));
            bytes.extend(frame(b'E', b"\0\0\0\0\0"));
            bytes.extend(sync());
            raw.send(&bytes).await;
        }
    }
    let mut lines: Vec<String> = Vec::new();
    let mut refused = false;
    for (tag, body) in raw.read_until_ready().await {
        if tag == b'N' || tag == b'S' {
            continue;
        }
        if tag == b'E' {
            refused |=
                message(&body).starts_with("pgshift cannot rewrite this statement for migration ");
        }
        lines.push(describe_with(tag, &body, tables));
    }
    // Without ORDER BY, rows come in physical order, which the two databases need not share.
    if !c.sql.to_uppercase().contains("ORDER BY") {
        let mut i = 0;
        while i < lines.len() {
            let run = lines[i..].iter().take_while(|l| l.starts_with('D')).count();
            lines[i..i + run].sort();
            i += run.max(1);
        }
    }
    (lines, refused)
}

/// `pgshift_statements_refused_total` by reason, summed over migrations.
async fn refusals_counted(metrics: std::net::SocketAddr) -> HashMap<String, u64> {
    let (_, body) = crate::support::http_get(metrics, "/metrics").await;
    let mut out = HashMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("pgshift_statements_refused_total{") else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").expect("a sample has a value");
        let reason = labels
            .split(',')
            .find_map(|l| l.strip_prefix("reason=\""))
            .expect("a reason label")
            .trim_end_matches('"');
        *out.entry(reason.to_owned()).or_default() += value.parse::<u64>().expect("a count");
    }
    out
}

/// The first column of every row, as text.
pub(crate) async fn rows(client: &Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .collect()
}

/// The rows only one side has.
fn diff(a: &[String], b: &[String]) -> String {
    let only = |x: &[String], y: &[String]| -> Vec<String> {
        x.iter().filter(|r| !y.contains(r)).cloned().collect()
    };
    format!(
        "only in the first {:?}, only in the second {:?}",
        only(a, b),
        only(b, a)
    )
}

/// Both databases' tables, compared: old through pgshift vs old directly, and old vs new (through the map).
async fn contents_diverge(direct: &Client, proxied: &Client) -> Option<String> {
    const OLD_USERS: &str = "SELECT t::text FROM users t ORDER BY id";
    const NEW_USERS: &str =
        "SELECT ROW(id, display_name, email, note, qty, tags, meta, created_at)::text FROM v2.users ORDER BY id";
    const ORDERS: &str =
        "SELECT ROW(id, user_id, legacy_status, amount)::text FROM orders ORDER BY id";
    const ORDERS_MAP: &str = "SELECT ROW(id, legacy_status, new_status)::text FROM orders \
                              WHERE new_status IS DISTINCT FROM 's:' || reverse(legacy_status) ORDER BY id";
    let old_direct = rows(direct, OLD_USERS).await;
    let old_proxied = rows(proxied, OLD_USERS).await;
    if old_direct != old_proxied {
        return Some(format!(
            "users differ (direct, proxied): {}",
            diff(&old_direct, &old_proxied)
        ));
    }
    let new = rows(proxied, NEW_USERS).await;
    if new != old_proxied {
        return Some(format!(
            "v2.users differs from users (old, new): {}",
            diff(&old_proxied, &new)
        ));
    }
    let (od, op) = (rows(direct, ORDERS).await, rows(proxied, ORDERS).await);
    if od != op {
        return Some(format!(
            "orders differ (direct, proxied): {}",
            diff(&od, &op)
        ));
    }
    let unmapped = rows(proxied, ORDERS_MAP).await;
    if !unmapped.is_empty() {
        return Some(format!(
            "orders.new_status is not up(legacy_status): {unmapped:?}"
        ));
    }
    None
}

#[derive(Default)]
struct Tally {
    statements: usize,
    same: usize,
    refused: BTreeMap<String, usize>,
    wrong: Vec<String>,
}

async fn one_configuration(
    writes: &str,
    percent: u32,
    protocol: Protocol,
    cases: &[Case],
    tally: &mut Tally,
) {
    let name = format!(
        "t_diff_{writes}_{percent}_{}",
        match protocol {
            Protocol::Simple => "s",
            Protocol::Extended => "x",
        }
    );
    let direct_db = fresh_db(&format!("{name}_d")).await;
    let proxied_db = fresh_db(&format!("{name}_p")).await;
    let direct = connect(&cluster().url(&direct_db)).await;
    let proxied = connect(&cluster().url(&proxied_db)).await;
    direct.batch_execute(SCHEMA).await.unwrap();
    direct.batch_execute(REFERENCE_TRIGGERS).await.unwrap();
    proxied.batch_execute(SCHEMA).await.unwrap();
    let (direct_tables, proxied_tables) = (tables(&direct).await, tables(&proxied).await);
    let proxy = start_proxy(ProxyOptions {
        migrations: migrations(writes, percent),
        ..Default::default()
    })
    .await;
    let mut d = Raw::login(cluster().addr().parse().unwrap(), &direct_db).await;
    let mut p = Raw::login(proxy.addr, &proxied_db).await;
    let mut counted = refusals_counted(proxy.metrics_addr).await;
    for c in cases {
        if matches!(protocol, Protocol::Simple) && !c.params.is_empty() {
            continue;
        }
        tally.statements += 1;
        for raw in [&mut d, &mut p] {
            raw.send(&query("BEGIN")).await;
            raw.read_until_ready().await;
        }
        let (want, _) = run(&mut d, c, &protocol, &direct_tables).await;
        let (got, refused) = run(&mut p, c, &protocol, &proxied_tables).await;
        // The reason is the metric label pgshift counted the refusal under, as an operator sees it.
        let refusal = if refused {
            let now = refusals_counted(proxy.metrics_addr).await;
            let grown = now
                .iter()
                .find(|(reason, n)| counted.get(*reason).copied().unwrap_or(0) < **n)
                .map_or_else(|| "not counted".to_owned(), |(reason, _)| reason.clone());
            counted = now;
            Some(grown)
        } else {
            None
        };
        let failed = want.iter().chain(&got).any(|l| l.starts_with("E "));
        let context = format!("[{writes} {percent}% {name}] {:?} {:?}", c.sql, c.params);
        match &refusal {
            Some(code) if DOCUMENTED_REFUSALS.contains(&code.as_str()) => {
                *tally.refused.entry(code.clone()).or_default() += 1;
                if std::env::var_os("PGSHIFT_DIFF_VERBOSE").is_some() {
                    println!("refused {code}: [{writes} {percent}%] {:?}", c.sql);
                }
            }
            Some(code) => tally.wrong.push(format!(
                "{context}: refused for an undocumented reason {code}"
            )),
            None if got == want => tally.same += 1,
            None => tally
                .wrong
                .push(format!("{context}:\n  direct  {want:?}\n  pgshift {got:?}")),
        }
        let end = if failed || refusal.is_some() {
            "ROLLBACK"
        } else {
            "COMMIT"
        };
        for raw in [&mut d, &mut p] {
            raw.send(&query(end)).await;
            raw.read_until_ready().await;
        }
        if let Some(diff) = contents_diverge(&direct, &proxied).await {
            tally
                .wrong
                .push(format!("{context}: silent divergence: {diff}"));
            return;
        }
        // Sequences advance even in rolled-back transactions; keep the proxied side's in step.
        for seq in ["users_id_seq", "orders_id_seq"] {
            let v = rows(&direct, &format!("SELECT last_value::text FROM {seq}")).await;
            proxied
                .batch_execute(&format!("SELECT setval('{seq}', {})", v[0]))
                .await
                .unwrap();
        }
    }
    drop((d, p));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_mean_the_same_through_pgshift() {
    let hand = hand_written();
    let mut tally = Tally::default();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for writes in ["dual_write", "new_primary"] {
        for percent in [0, 100] {
            for protocol in [Protocol::Simple, Protocol::Extended] {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let mut generator = Gen(seed | 1);
                let mut cases = hand.clone();
                cases.extend((0..120).map(|_| case(&generator.statement())));
                one_configuration(writes, percent, protocol, &cases, &mut tally).await;
            }
        }
    }
    let refused: usize = tally.refused.values().sum();
    println!(
        "differential: {} statements, {} same, {} refused {:?}, {} wrong",
        tally.statements,
        tally.same,
        refused,
        tally.refused,
        tally.wrong.len()
    );
    assert!(
        tally.wrong.is_empty(),
        "{} wrong results:\n{}",
        tally.wrong.len(),
        tally.wrong.join("\n")
    );
}

/// Protocol details drivers depend on: pgjdbc's row limit on every update, errors naming the statement kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_limits_and_error_wording_match_direct() {
    let direct_db = fresh_db("t_diff_protocol_d").await;
    let proxied_db = fresh_db("t_diff_protocol_p").await;
    for db in [&direct_db, &proxied_db] {
        let c = connect(&cluster().url(db)).await;
        c.batch_execute(SCHEMA).await.unwrap();
    }
    let proxy = start_proxy(ProxyOptions {
        migrations: migrations("dual_write", 0),
        ..Default::default()
    })
    .await;
    let mut d = Raw::login(cluster().addr().parse().unwrap(), &direct_db).await;
    let mut p = Raw::login(proxy.addr, &proxied_db).await;
    let execute = |max_rows: i32| {
        let mut body = b"\0".to_vec();
        body.extend_from_slice(&max_rows.to_be_bytes());
        frame(b'E', &body)
    };
    let extended = |sql: &str, limits: &[i32]| {
        let mut bytes = frame(b'P', format!("\0{sql}\0\0\0").as_bytes());
        bytes.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
        for &limit in limits {
            bytes.extend(execute(limit));
        }
        bytes.extend(sync());
        bytes
    };
    let steps: Vec<Vec<u8>> = vec![
        // pgjdbc: executeUpdate sends max_rows = 1.
        extended("UPDATE users SET note = 'jdbc' WHERE id = 1", &[1]),
        extended("INSERT INTO users (fullname) VALUES ('jdbc')", &[1]),
        extended("DELETE FROM users WHERE fullname = 'jdbc'", &[1]),
        // With RETURNING, rows come in pieces and the tag counts them all.
        extended(
            "UPDATE users SET qty = qty + 1 WHERE id IN (1, 2, 3) RETURNING id",
            &[1, 0],
        ),
        extended("UPDATE orders SET legacy_status = 'x' WHERE id < 3", &[1]),
        query("BEGIN READ ONLY"),
        query("UPDATE users SET note = 'ro' WHERE id = 1"),
        query("ROLLBACK"),
        query("BEGIN TRANSACTION READ ONLY"),
        extended("DELETE FROM users WHERE id = 1", &[0]),
        query("ROLLBACK"),
    ];
    for step in &steps {
        let mut transcripts = Vec::new();
        for raw in [&mut d, &mut p] {
            raw.send(step).await;
            let lines: Vec<String> = raw
                .read_until_ready()
                .await
                .into_iter()
                .filter(|(tag, _)| *tag != b'N')
                .map(|(tag, body)| match tag {
                    b'E' => format!("E {} {}", sqlstate(&body), message(&body)),
                    _ => describe(tag, &body),
                })
                .collect();
            transcripts.push(lines);
        }
        assert_eq!(
            transcripts[0],
            transcripts[1],
            "direct vs pgshift for {:?}",
            String::from_utf8_lossy(step)
        );
    }
    drop((d, p));
    proxy.stop().await;
}
