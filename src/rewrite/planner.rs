//! The planning facade: what the proxy, the CLI, the bench and the tests ask to plan a SQL text.
//!
//! Built from a config snapshot, the migrations that apply, their read routes and the catalog as the session
//! sees it; behind it are the prefilter (most statements name no migrated table and cost one scan), the
//! read-only fast path, the plan-cache key and the cache. Callers never assemble a [`Context`] themselves.

use super::prefilter::Prefilter;
use super::{cache, ActionKind, Context, Plan, Schema, Target};
use crate::config::Config;
use crate::routing::Route;
use aho_corasick::AhoCorasick;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

pub struct Planner {
    config: Arc<Config>,
    /// Indices into `config.migrations` of those that apply.
    active: Vec<usize>,
    /// The read route of each active migration, in the same order.
    routes: Vec<Route>,
    schema: Schema,
    schema_hash: u64,
    prefilter: Prefilter,
    key: u64,
}

impl Planner {
    /// No migration applies until [`Planner::update`] says which do.
    pub fn new(config: Arc<Config>) -> Planner {
        let mut planner = Planner {
            config,
            active: Vec::new(),
            routes: Vec::new(),
            schema: Schema::default(),
            schema_hash: 0,
            prefilter: Prefilter::new([]),
            key: 0,
        };
        planner.rebuild();
        planner
    }

    /// Every migration of `config`, all read on `route`: what `pgshift rewrite` shows.
    pub fn for_every_migration(config: Arc<Config>, route: Route, schema: Schema) -> Planner {
        let active: Vec<usize> = (0..config.migrations.len()).collect();
        let routes = vec![route; active.len()];
        let mut planner = Planner::new(config);
        planner.schema_hash = hash_schema(&schema);
        planner.schema = schema;
        planner.update(None, active, routes);
        planner
    }

    /// A new config snapshot (if any), the migrations that apply and their routes.
    pub fn update(&mut self, config: Option<Arc<Config>>, active: Vec<usize>, routes: Vec<Route>) {
        if let Some(config) = config {
            self.config = config;
        }
        self.active = active;
        self.routes = routes;
        self.rebuild();
    }

    /// The catalog as the session sees it (columns, types, defaults, dependents).
    pub fn set_schema(&mut self, schema: Schema) {
        self.schema_hash = hash_schema(&schema);
        self.schema = schema;
        self.rebuild();
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn active(&self) -> &[usize] {
        &self.active
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Everything a plan depends on besides the SQL. Also how prepared statements know they are stale: a plan
    /// made under another key may differ from the one the current config, routes and catalog give.
    pub fn key(&self) -> u64 {
        self.key
    }

    fn rebuild(&mut self) {
        let names = self
            .active
            .iter()
            .map(|&i| self.config.migrations[i].table.name.as_str());
        self.prefilter = Prefilter::for_targets(names, &self.schema);
        self.key = self.key_for(&self.routes);
    }

    fn key_for(&self, routes: &[Route]) -> u64 {
        let mut key = rustc_hash::FxHasher::default();
        self.config.epoch.hash(&mut key);
        self.active.hash(&mut key);
        for r in routes {
            (*r == Route::New).hash(&mut key);
        }
        self.schema_hash.hash(&mut key);
        key.finish()
    }

    /// The plan `sql` would have if the migration at `migration` (an index into the config's) were read on
    /// `route`, the others as they are: the other side of a shadow comparison. Cached like [`Planner::plan`].
    pub fn plan_routed(&self, sql: &str, migration: usize, route: Route) -> Arc<Plan> {
        let Some(at) = self.active.iter().position(|&i| i == migration) else {
            return Arc::new(Plan::Forward { actions: vec![] });
        };
        if self.routes.get(at) == Some(&route) {
            return self.plan(sql);
        }
        let mut routes = self.routes.clone();
        routes.resize(self.active.len(), Route::Old);
        routes[at] = route;
        cache::plan(self.key_for(&routes), sql, |text| {
            self.plan_with(text, &routes)
        })
    }

    /// The plan for `sql`: shared between sessions whose config, routes and catalog agree.
    pub fn plan(&self, sql: &str) -> Arc<Plan> {
        static FORWARD: LazyLock<Arc<Plan>> =
            LazyLock::new(|| Arc::new(Plan::Forward { actions: vec![] }));
        if !self.prefilter.matches(sql) {
            return FORWARD.clone();
        }
        // Before any read is shifted, a statement that can only read is forwarded as is: no parse needed
        // (unless it names something that writes a migrated table out of sight, e.g. `SELECT f(47)`).
        let mentioned = self.prefilter.mentioned(sql);
        if self.routes.iter().all(|r| *r == Route::Old)
            && mentioned.iter().all(|&i| i < self.active.len())
            && read_only_select(sql)
        {
            let actions = mentioned
                .into_iter()
                .filter_map(|i| self.active.get(i))
                .map(|&i| super::Action {
                    migration: self.config.migrations[i].name.as_str().into(),
                    what: ActionKind::ReadOld,
                })
                .collect();
            return Arc::new(Plan::Forward { actions });
        }
        cache::plan(self.key, sql, |text| self.plan_uncached(text))
    }

    /// Plans `sql` without the prefilter's shortcuts or the cache.
    pub fn plan_uncached(&self, sql: &str) -> Plan {
        self.plan_with(sql, &self.routes)
    }

    fn plan_with(&self, sql: &str, routes: &[Route]) -> Plan {
        let targets: Vec<Target<'_>> = self
            .active
            .iter()
            .zip(routes)
            .map(|(&i, &route)| Target {
                migration: &self.config.migrations[i],
                route,
            })
            .collect();
        super::plan(
            sql,
            &Context {
                targets: &targets,
                schema: &self.schema,
                prefilter: &self.prefilter,
            },
        )
    }
}

/// A content hash of the catalog, computed once per lookup (plans are shared between sessions whose catalogs
/// agree).
fn hash_schema(schema: &Schema) -> u64 {
    let mut key = rustc_hash::FxHasher::default();
    let mut tables: Vec<_> = schema.columns.iter().collect();
    tables.sort_by_key(|(name, _)| name.to_string());
    tables.hash(&mut key);
    let mut types: Vec<_> = schema.types.iter().collect();
    types.sort_by_key(|(name, _)| name.to_string());
    types.hash(&mut key);
    let mut defaults: Vec<_> = schema.defaults.iter().collect();
    defaults.sort_by_key(|(name, _)| name.to_string());
    defaults.hash(&mut key);
    schema.dependents.hash(&mut key);
    let mut origins: Vec<_> = schema.origins.iter().collect();
    origins.sort_by_key(|(name, _)| name.to_string());
    origins.hash(&mut key);
    let mut names: Vec<_> = schema.unqualified.iter().collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    names.hash(&mut key);
    key.finish()
}

/// A single SELECT with nothing in it that could write: no `;`, no data-modifying or locking keyword.
/// Conservative: a column named `updated_at` just means the statement takes the parser's path.
fn read_only_select(sql: &str) -> bool {
    static WRITES: LazyLock<AhoCorasick> = LazyLock::new(|| {
        AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build([
                "insert", "update", "delete", "merge", "copy", "truncate", "into", "call", ";",
                "do", "lock",
            ])
            .expect("fixed patterns")
    });
    let trimmed = sql.trim_start();
    trimmed.len() > 6
        && trimmed[..6].eq_ignore_ascii_case("select")
        && !WRITES.is_match(sql.trim_end().trim_end_matches(';'))
}

/// What running a statement may change in the session besides data: the settings pgshift routes by, and the
/// search_path that decides what unqualified names mean. Judged from its words, so it errs towards yes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Touches {
    pub settings: bool,
    pub search_path: bool,
    /// Any session setting or the role: a statement beginning with SET, RESET or DISCARD, or calling
    /// set_config (what shadow comparisons copy from the session).
    pub session: bool,
}

impl Touches {
    pub fn of(sql: &str) -> Touches {
        static WORDS: LazyLock<AhoCorasick> = LazyLock::new(|| {
            AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(["pgshift.", "set_config", "reset", "discard", "search_path"])
                .expect("fixed patterns")
        });
        let mut touches = Touches::default();
        for m in WORDS.find_iter(sql) {
            match m.pattern().as_usize() {
                0 => touches.settings = true,
                4 => touches.search_path = true,
                _ => {
                    touches.settings = true;
                    touches.search_path = true;
                }
            }
        }
        touches.session = touches.settings
            || touches.search_path
            || sql.split(';').any(|piece| {
                let mut words = skip_comments(piece).split_whitespace();
                let first = words.next().unwrap_or_default();
                // SET LOCAL and SET TRANSACTION end with their transaction: nothing is left at the boundary.
                let transaction_only = words.next().is_some_and(|w| {
                    w.eq_ignore_ascii_case("local") || w.eq_ignore_ascii_case("transaction")
                });
                ["set", "reset", "discard"]
                    .iter()
                    .any(|w| first.eq_ignore_ascii_case(w))
                    && !(first.eq_ignore_ascii_case("set") && transaction_only)
            });
        touches
    }
}

/// `sql` from its first word: leading blanks and comments skipped.
fn skip_comments(mut sql: &str) -> &str {
    loop {
        sql = sql.trim_start();
        if let Some(rest) = sql.strip_prefix("--") {
            sql = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = sql.strip_prefix("/*") {
            sql = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            return sql;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_selects() {
        assert!(read_only_select(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42;"
        ));
        assert!(read_only_select("  select * from users"));
        for sql in [
            "SELECT 1; UPDATE users SET x = 1",
            "SELECT * INTO copy FROM users",
            "SELECT * FROM users FOR UPDATE",
            "WITH d AS (DELETE FROM users RETURNING *) SELECT * FROM d",
            "UPDATE users SET x = 1",
            "SELECT updated_at FROM users",
        ] {
            assert!(!read_only_select(sql), "{sql}");
        }
    }

    #[test]
    fn statements_that_may_change_settings_or_the_search_path() {
        let t = |settings, search_path| Touches {
            settings,
            search_path,
            session: settings || search_path,
        };
        for (sql, want) in [
            ("SET pgshift.key = 'tenant-7'", t(true, false)),
            ("set local PGSHIFT.context to internal", t(true, false)),
            ("SELECT set_config($1, $2, false)", t(true, true)),
            ("RESET ALL", t(true, true)),
            ("DISCARD ALL", t(true, true)),
            ("SET search_path = app, public", t(false, true)),
            ("SELECT * FROM users WHERE id = $1", t(false, false)),
        ] {
            assert_eq!(Touches::of(sql), want, "{sql}");
        }
        for (sql, session) in [
            ("SET ROLE reporting", true),
            ("/* app */ set TimeZone = 'UTC'", true),
            ("BEGIN; -- x\n SET datestyle = 'ISO'", true),
            ("BEGIN; SET LOCAL statement_timeout = 500", false),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", false),
            ("set\nrole app", true),
            ("RESET ROLE", true),
            ("UPDATE users SET role = 'x'", false),
            ("SELECT role, settings FROM users", false),
            ("SELECT setting FROM pg_settings", false),
        ] {
            assert_eq!(Touches::of(sql).session, session, "{sql}");
        }
    }
}
