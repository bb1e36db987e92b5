//! The SQL path's cost: the prefilter on statements that name no migrated table (short and 2 KB), a cold plan
//! (parse + rewrite), a cached plan, and a cached plan for the same statement with its constants inlined (the
//! lifted lookup `-M simple` clients get), for a SELECT, an INSERT … RETURNING, an upsert and an UPDATE, against
//! a config with 1 and with 50 migrations. `cargo bench --bench rewrite`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pgshift::config::migration::TableName;
use pgshift::config::{Config, Overrides};
use pgshift::rewrite::planner::Planner;
use pgshift::rewrite::prefilter::Prefilter;
use pgshift::rewrite::Schema;
use pgshift::routing::Route;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

/// `pgbench_accounts` → `v2.pgbench_accounts` (abalance renamed), plus `n - 1` column migrations on other tables.
fn setup(n: usize) -> (Config, Schema) {
    let mut text = String::from(
        "[upstream]\naddr = \"127.0.0.1:5432\"\n\
         [[migration]]\nname = \"accounts_v2\"\nkind = \"table\"\ntable = \"pgbench_accounts\"\n\
         new_table = \"v2.pgbench_accounts\"\nkey = [\"aid\"]\ncolumns = [{ old = \"abalance\", new = \"balance\" }]\n\
         writes = \"dual_write\"\n",
    );
    let t = |schema: &str, name: &str| TableName {
        schema: schema.into(),
        name: name.into(),
    };
    let cols = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut schema = Schema::default();
    schema.columns.insert(
        t("public", "pgbench_accounts"),
        cols(&["aid", "bid", "abalance", "filler"]),
    );
    schema.columns.insert(
        t("v2", "pgbench_accounts"),
        cols(&["aid", "bid", "balance", "filler"]),
    );
    schema
        .unqualified
        .insert("pgbench_accounts".into(), t("public", "pgbench_accounts"));
    for i in 1..n {
        text.push_str(&format!(
            "[[migration]]\nname = \"m{i}\"\nkind = \"column\"\ntable = \"table_{i}\"\nkey = [\"id\"]\n\
             columns = [{{ old = \"status\", new = \"status_v2\", up = \"upper(status)\" }}]\nwrites = \"dual_write\"\n"
        ));
        let name = format!("table_{i}");
        schema.columns.insert(
            t("public", &name),
            cols(&["id", "a", "status", "status_v2"]),
        );
        schema.unqualified.insert(name.clone(), t("public", &name));
    }
    let config = Config::parse(&text, Path::new("bench.toml"), &Overrides::default())
        .expect("bench config is valid");
    (config, schema)
}

const STATEMENTS: [(&str, &str); 4] = [
    ("select", "SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
    (
        "insert_returning",
        "INSERT INTO pgbench_accounts (aid, bid, abalance, filler) VALUES ($1, $2, $3, $4) RETURNING aid, abalance",
    ),
    (
        "upsert",
        "INSERT INTO pgbench_accounts (aid, bid, abalance) VALUES ($1, $2, $3) \
         ON CONFLICT (aid) DO UPDATE SET abalance = EXCLUDED.abalance",
    ),
    ("update", "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"),
];

/// The same statements as `pgbench -M simple` sends them: constants inlined, a new text every time.
const INLINED: [(&str, &str); 4] = [
    ("select", "SELECT abalance FROM pgbench_accounts WHERE aid = 48213"),
    (
        "insert_returning",
        "INSERT INTO pgbench_accounts (aid, bid, abalance, filler) VALUES (1000001, 1, 0, 'x') RETURNING aid, abalance",
    ),
    (
        "upsert",
        "INSERT INTO pgbench_accounts (aid, bid, abalance) VALUES (17, 1, -250) \
         ON CONFLICT (aid) DO UPDATE SET abalance = EXCLUDED.abalance",
    ),
    ("update", "UPDATE pgbench_accounts SET abalance = abalance + -4211 WHERE aid = 48213"),
];

fn long_statement() -> String {
    let mut sql = String::from("SELECT b.bid, b.bbalance, t.tid, t.tbalance");
    let mut i = 0;
    while sql.len() < 1900 {
        sql.push_str(&format!(
            ", coalesce(h.delta, {i}) + t.tbalance * {i} AS computed_column_{i}"
        ));
        i += 1;
    }
    sql.push_str(" FROM pgbench_branches b JOIN pgbench_tellers t USING (bid) LEFT JOIN pgbench_history h USING (tid) WHERE b.bid = $1");
    sql
}

fn benches(c: &mut Criterion) {
    let long = long_statement();
    for n in [1usize, 50] {
        let (config, schema) = setup(n);
        let prefilter = Prefilter::new(config.migrations.iter().map(|m| m.table.name.as_str()));

        let mut group = c.benchmark_group(format!("prefilter_{n}_migrations"));
        let short = "SELECT abalance FROM pgbench_branches WHERE bid = $1";
        group.bench_function("short_no_match", |b| {
            b.iter(|| prefilter.matches(black_box(short)))
        });
        group.bench_function("2kb_no_match", |b| {
            b.iter(|| prefilter.matches(black_box(&long)))
        });
        group.finish();

        for (route, route_name) in [(Route::Old, "old"), (Route::New, "new")] {
            // The proxy's own entry point: prefilter, fast path, cache key and cache behind one call.
            let planner =
                Planner::for_every_migration(Arc::new(config.clone()), route, schema.clone());
            let mut cold =
                c.benchmark_group(format!("cold_plan_{n}_migrations_reads_{route_name}"));
            for (name, sql) in STATEMENTS {
                cold.bench_with_input(BenchmarkId::from_parameter(name), sql, |b, sql| {
                    b.iter(|| planner.plan_uncached(black_box(sql)))
                });
            }
            cold.finish();
            let mut cached =
                c.benchmark_group(format!("cached_plan_{n}_migrations_reads_{route_name}"));
            for (name, sql) in STATEMENTS {
                planner.plan(sql);
                cached.bench_with_input(BenchmarkId::from_parameter(name), sql, |b, sql| {
                    b.iter(|| planner.plan(black_box(sql)))
                });
            }
            cached.finish();
            // Inlined constants: looked up by the lifted text, constants put back into the rewritten SQL.
            let mut inlined = c.benchmark_group(format!(
                "inlined_constants_{n}_migrations_reads_{route_name}"
            ));
            for (name, sql) in INLINED {
                planner.plan(sql);
                inlined.bench_with_input(BenchmarkId::from_parameter(name), sql, |b, sql| {
                    b.iter(|| planner.plan(black_box(sql)))
                });
            }
            inlined.finish();
        }
    }
}

criterion_group!(rewrite_benches, benches);
criterion_main!(rewrite_benches);
