//! Plans shared by all sessions, keyed by everything they depend on — the config's content, the routes, the
//! catalog (folded into one `context` hash by the caller) — and the SQL text. A lookup hashes the text once
//! (FxHash) and allocates nothing; a hit hands out the shared plan. Bounded: when full it starts over.

use super::Plan;
use rustc_hash::{FxHashMap, FxHasher};
use std::hash::Hasher;
use std::sync::{Arc, LazyLock, Mutex};

const CAPACITY: usize = 10_000;

struct Cached {
    context: u64,
    sql: Box<str>,
    plan: Arc<Plan>,
}

static PLANS: LazyLock<Mutex<FxHashMap<u64, Cached>>> = LazyLock::new(Default::default);

fn key(context: u64, sql: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write_u64(context);
    h.write(sql.as_bytes());
    h.finish()
}

/// The cached plan for (`context`, `sql`), or `plan()` (run outside the lock) cached for next time.
pub fn get_or_plan(context: u64, sql: &str, plan: impl FnOnce() -> Plan) -> Arc<Plan> {
    let k = key(context, sql);
    if let Some(hit) = PLANS.lock().expect("plan cache lock").get(&k) {
        if hit.context == context && &*hit.sql == sql {
            return hit.plan.clone();
        }
    }
    let planned = Arc::new(plan());
    let mut plans = PLANS.lock().expect("plan cache lock");
    if plans.len() >= CAPACITY {
        plans.clear();
    }
    plans.insert(
        k,
        Cached {
            context,
            sql: sql.into(),
            plan: planned.clone(),
        },
    );
    planned
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
}
