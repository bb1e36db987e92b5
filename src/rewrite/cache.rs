//! Plans shared by all sessions, keyed by everything they depend on — the config's content, the routes, the
//! catalog (folded into one `context` hash by the caller) — and the SQL text. A lookup hashes the text once
//! (FxHash) and allocates nothing; a hit hands out the shared plan. Bounded: when full it starts over.
//!
//! Texts with inlined constants are looked up by their lifted form ([`literals`]), so `WHERE id = 7` and
//! `WHERE id = 8` share one plan; the rewritten SQL gets each statement's own constants back.

use super::literals::{self, Template};
use super::Plan;
use crate::rewrite::ActionKind;
use rustc_hash::{FxHashMap, FxHasher};
use std::hash::Hasher;
use std::sync::{Arc, LazyLock, Mutex};

const CAPACITY: usize = 10_000;

struct Cached<V> {
    context: u64,
    sql: Box<str>,
    value: V,
}

type Map<V> = LazyLock<Mutex<FxHashMap<u64, Cached<V>>>>;

static PLANS: Map<Arc<Plan>> = LazyLock::new(Default::default);
static LIFTED: Map<Option<Arc<LiftedPlan>>> = LazyLock::new(Default::default);

/// A plan made for a lifted text. Forward plans apply as they are; rewrites need the constants put back.
#[derive(Debug)]
enum LiftedPlan {
    Forward(Arc<Plan>),
    Rewrite {
        template: Template,
        shapes: Vec<super::Shape>,
        actions: Vec<super::Action>,
    },
}

impl LiftedPlan {
    /// `None` when the plan cannot stand for the original text: refusals (their messages quote the text)
    /// and reads the rewriter could not read (the lifted text may be what it could not parse).
    fn new(plan: Plan, count: usize) -> Option<LiftedPlan> {
        match plan {
            Plan::Refuse(_) => None,
            Plan::Forward { ref actions }
                if actions
                    .iter()
                    .any(|a| a.what == ActionKind::ReadUnrewritable) =>
            {
                None
            }
            Plan::Forward { .. } => Some(LiftedPlan::Forward(Arc::new(plan))),
            Plan::Rewrite {
                sql,
                shapes,
                actions,
            } => Some(LiftedPlan::Rewrite {
                template: Template::new(sql, count)?,
                shapes,
                actions,
            }),
        }
    }

    fn apply(&self, values: &[&str]) -> Arc<Plan> {
        match self {
            LiftedPlan::Forward(plan) => plan.clone(),
            LiftedPlan::Rewrite {
                template,
                shapes,
                actions,
            } => Arc::new(Plan::Rewrite {
                sql: template.render(values),
                shapes: shapes.clone(),
                actions: actions.clone(),
            }),
        }
    }
}

fn key(context: u64, sql: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write_u64(context);
    h.write(sql.as_bytes());
    h.finish()
}

fn get_or_insert<V: Clone>(map: &Map<V>, context: u64, sql: &str, make: impl FnOnce() -> V) -> V {
    let k = key(context, sql);
    if let Some(hit) = map.lock().expect("plan cache lock").get(&k) {
        if hit.context == context && &*hit.sql == sql {
            return hit.value.clone();
        }
    }
    let value = make();
    let mut entries = map.lock().expect("plan cache lock");
    if entries.len() >= CAPACITY {
        entries.clear();
    }
    entries.insert(
        k,
        Cached {
            context,
            sql: sql.into(),
            value: value.clone(),
        },
    );
    value
}

/// The cached plan for (`context`, `sql`), or `plan()` (run outside the lock) cached for next time.
pub fn get_or_plan(context: u64, sql: &str, plan: impl FnOnce() -> Plan) -> Arc<Plan> {
    get_or_insert(&PLANS, context, sql, || Arc::new(plan()))
}

/// The plan for `sql` under `context`, shared with every text that differs from it only in constants where
/// that is safe. `planner` plans a text (the lifted one, or `sql` itself).
pub fn plan(context: u64, sql: &str, planner: impl Fn(&str) -> Plan) -> Arc<Plan> {
    if let Some(lifted) = literals::lift(sql) {
        let count = lifted.values.len();
        let shared = get_or_insert(&LIFTED, context, &lifted.text, || {
            LiftedPlan::new(planner(&lifted.text), count).map(Arc::new)
        });
        if let Some(shared) = shared {
            return shared.apply(&lifted.values);
        }
    }
    get_or_plan(context, sql, || planner(sql))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_only_for_the_same_context_and_text() {
        let forward = || Plan::Forward { actions: vec![] };
        let a = get_or_plan(1, "SELECT 1 -- cache test", forward);
        let b = get_or_plan(1, "SELECT 1 -- cache test", || panic!("must be cached"));
        assert!(Arc::ptr_eq(&a, &b));
        let c = get_or_plan(2, "SELECT 1 -- cache test", forward);
        assert!(!Arc::ptr_eq(&a, &c));
    }

    /// Planning the lifted text and putting the constants back gives exactly what planning the text does.
    #[test]
    fn lifted_plans_equal_direct_plans() {
        use crate::config::migration::WriteMode;
        use crate::rewrite::tests::{orders_migration, plan_with, users_migration};
        use crate::routing::Route;
        let corpus = [
            "INSERT INTO users (id, fullname, email) VALUES (1, 'Ann', 'a@x'), (2, 'O''Hara', 'b@x')",
            "INSERT INTO users (id, fullname) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET fullname = 'b'",
            "INSERT INTO users (id, fullname) VALUES (3, 'c') ON CONFLICT (id) DO NOTHING RETURNING id, fullname",
            "INSERT INTO users (fullname) SELECT fullname FROM users WHERE id = 1 LIMIT 1",
            "UPDATE users SET fullname = 'x', email = lower('Y') WHERE id = 42 RETURNING *",
            "UPDATE users SET fullname = fullname || '-' || 7 WHERE id BETWEEN 1 AND 9",
            "DELETE FROM users WHERE id = 5 AND fullname LIKE 'x%' RETURNING fullname",
            "SELECT fullname, 1, 'k' FROM users WHERE id = 1 ORDER BY 1, 2 LIMIT 10 OFFSET 5",
            "SELECT count(*) FROM users u JOIN orders o ON o.id = u.id WHERE u.id > -3 AND o.customer = 'c'",
            "SELECT * FROM users WHERE created_at > now() - interval '1 day' AND id IN (1, 2, 3)",
            "SELECT fullname::varchar(20), CAST(id AS numeric(10, 2)) FROM users WHERE id = 2.5e1",
            "WITH recent AS (SELECT * FROM users ORDER BY created_at DESC LIMIT 5) SELECT fullname FROM recent WHERE id <> 4",
            "INSERT INTO orders (id, customer, legacy_status) VALUES (1, 'c', 'new')",
            "INSERT INTO orders (legacy_status) VALUES ('Paid') RETURNING id, legacy_status",
            "UPDATE orders SET legacy_status = 'shipped' WHERE id = 10",
            "UPDATE orders SET legacy_status = 'a', customer = 'b' WHERE id = 1 AND legacy_status <> 'z'",
            "UPDATE orders SET id = 5 WHERE id = 4",
            "DELETE FROM orders WHERE id = 3",
            "SELECT legacy_status, count(*) FROM orders WHERE id < 100 GROUP BY 1",
            "SELECT * FROM orders WHERE legacy_status = 'paid'; UPDATE orders SET customer = 'q' WHERE id = 1",
            "INSERT INTO orders (legacy_status) VALUES ((SELECT 'x' FROM users LIMIT 1))",
        ];
        let mut context = 0xc0ffee;
        for writes in [WriteMode::Off, WriteMode::DualWrite, WriteMode::NewPrimary] {
            let migrations = [users_migration(writes), orders_migration(writes)];
            for route in [Route::Old, Route::New] {
                context += 1;
                for sql in corpus {
                    let direct = plan_with(sql, &migrations, route);
                    // Twice: the second call is a cache hit with the constants of this text.
                    for _ in 0..2 {
                        let shared = plan(context, sql, |text| plan_with(text, &migrations, route));
                        assert_eq!(*shared, direct, "{writes:?} {route:?}: {sql}");
                    }
                }
                // Other constants hit the same lifted plan and still get their own values.
                let a = plan(
                    context,
                    "UPDATE users SET fullname = 'p' WHERE id = 1",
                    |text| plan_with(text, &migrations, route),
                );
                let b = plan(
                    context,
                    "UPDATE users SET fullname = 'q' WHERE id = 2",
                    |_| panic!("must be a cache hit"),
                );
                assert_eq!(
                    *b,
                    plan_with(
                        "UPDATE users SET fullname = 'q' WHERE id = 2",
                        &migrations,
                        route
                    )
                );
                if matches!(*a, Plan::Rewrite { .. }) {
                    assert_ne!(*a, *b);
                }
            }
        }
    }
}
