//! A session's view of the migrations: the config snapshot in force for the current transaction, the routes
//! decided for it, the catalog, and the prepared statements and portals it has created. Turns each client
//! message that carries SQL into the bytes to send upstream and the FIFO entries that shape the replies.

pub use super::inflight::Entry;
use super::inflight::{Label, Timing};
use super::pending::Request;
use super::respond::{CatalogRows, Respond};
use crate::config::reload::ConfigHandle;
use crate::config::Config;
use crate::error::ClientError;
use crate::metrics::STATEMENTS_REFUSED;
use crate::protocol::frame::FrameError;
use crate::protocol::messages::{self, encode};
use crate::rewrite::planner::{Planner, Touches};
use crate::rewrite::{self, catalog, Action, ActionKind, Plan, Schema, Shape};
use crate::routing::{self, Route, SessionFacts};
use crate::shadow::{self, compare::Side, Identity, Params, Sample, Shadow};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::Arc;

/// Sent instead of a refused statement: it fails at parse time, so nothing runs and the server's transaction
/// state is exactly that of a failed statement; pgshift replaces the syntax error with its own.
const REFUSED_SQL: &str = "pgshift refused this statement";

/// The latency label of a plan: the first migration it touched, and how.
fn label_of(plan: &Plan) -> Option<Label> {
    let action = plan.actions().first()?;
    let route = match action.what {
        ActionKind::ReadNew => "new",
        ActionKind::DualWrite => "dual_write",
        ActionKind::NewPrimary => "new_primary",
        ActionKind::ReadOld | ActionKind::ReadUnrewritable => "old",
    };
    Some(Label {
        migration: action.migration.clone(),
        route,
        actions: plan.actions().into(),
    })
}

struct Prepared {
    /// The client's SQL, replanned when routes change.
    query: String,
    types: Bytes,
    shape: Shape,
    label: Option<Label>,
    /// The session's plan key when this statement was planned.
    plan_key: u64,
    /// What running it may change besides data.
    touches: Touches,
    /// A hash of its text (constants lifted): how rollout guards tell statements apart.
    hash: u64,
    /// The migration whose old table it names, counted among the prepared statements sessions hold.
    counted: Option<Arc<str>>,
}

/// A query pgshift runs on the session's own connection at a transaction boundary, before the client's next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The routing settings as Postgres holds them now (after SET, SET LOCAL, RESET, set_config, rollback).
    Settings,
    /// The migrated tables' columns, types and dependents.
    Catalog,
    /// The client's role and settings, which shadow comparisons take on.
    Identity,
}

/// Reads the routing settings; an empty value is a placeholder that was RESET, i.e. not set.
const SETTINGS_SQL: &str = "SELECT nullif(current_setting('pgshift.key', true), ''), \
                            nullif(current_setting('pgshift.context', true), '')";

/// The session's migration state: its config snapshot, facts and routes (in its [`Planner`]), the catalog
/// generation it has read, and the prepared statements and portals it created.
pub struct Statements {
    live: Arc<ConfigHandle>,
    generation: u64,
    pub facts: SessionFacts,
    /// Indices into the config's migrations of those that apply to this session's database.
    active: Vec<usize>,
    /// Whether routes were decided since the active set last changed.
    routed: bool,
    planner: Planner,
    /// The config reloads counted when the catalog was last read ([`ConfigHandle::reloads`]).
    schema_generation: Option<u64>,
    /// The config reloads counted at the last refresh.
    reloads: u64,
    /// The routing settings changed since routes were last decided.
    facts_changed: bool,
    /// A statement that may have changed the routing settings ran: read them again at the next boundary.
    settings_unknown: bool,
    statements: HashMap<Vec<u8>, Prepared>,
    portals: HashMap<Vec<u8>, Portal>,
    /// Where sampled reads go for shadow comparison.
    shadow: Option<Shadow>,
    /// The client's role and settings as last read; `None` until read (or if it could not be).
    identity: Option<Arc<Identity>>,
    /// A statement ran that may have changed the role or settings: read them again at the next boundary.
    identity_unknown: bool,
    /// The state of the session's sampling draws.
    draws: u64,
    /// Where statements of ramped migrations are measured for the guards.
    rollouts: Option<Arc<crate::rollout::Rollouts>>,
    /// Statements on each migration not yet reported for contract readiness, and when it was last reported.
    usage: HashMap<Arc<str>, (u64, Option<std::time::Instant>)>,
}

/// A bound portal: how its replies are shaped, its latency label, and its shadow sample if it was drawn.
struct Portal {
    shape: Shape,
    label: Option<Label>,
    sample: Option<Sample>,
    /// The statement's text hash.
    hash: u64,
}

impl Statements {
    pub fn new(
        live: Arc<ConfigHandle>,
        facts: SessionFacts,
        shadow: Option<Shadow>,
        rollouts: Option<Arc<crate::rollout::Rollouts>>,
    ) -> Statements {
        let config = live.current();
        let generation = live.generation();
        let reloads = live.reloads();
        let mut s = Statements {
            live,
            generation,
            facts,
            active: Vec::new(),
            routed: false,
            planner: Planner::new(config),
            schema_generation: None,
            reloads,
            facts_changed: false,
            settings_unknown: false,
            statements: HashMap::new(),
            portals: HashMap::new(),
            shadow,
            rollouts,
            usage: HashMap::new(),
            identity: None,
            identity_unknown: true,
            draws: {
                use std::hash::BuildHasher;
                std::collections::hash_map::RandomState::new().hash_one(0u8)
            },
        };
        s.select_active(None);
        s
    }

    /// The migrations that apply to this session's database, under `config` (or the current one).
    fn select_active(&mut self, config: Option<Arc<Config>>) {
        let config = config.unwrap_or_else(|| self.planner.config().clone());
        self.active = (0..config.migrations.len())
            .filter(|&i| {
                config.migrations[i]
                    .database
                    .as_deref()
                    .is_none_or(|db| db == self.facts.database)
            })
            .collect();
        self.routed = false;
        self.planner
            .update(Some(config), self.active.clone(), Vec::new());
    }

    /// Whether this session has anything to rewrite (or a reload it has not looked at yet).
    pub fn engaged(&self) -> bool {
        !self.active.is_empty() || self.live.generation() != self.generation
    }

    /// At a transaction boundary: take the current config, decide routes, and say whether something must be
    /// looked up on the upstream first — returns the lookup then; call again once it is [`absorb`]ed.
    ///
    /// [`absorb`]: Statements::absorb
    pub fn refresh(&mut self, application_name: Option<String>) -> Option<(Lookup, String)> {
        if self.settings_unknown && !self.active.is_empty() {
            return Some((Lookup::Settings, SETTINGS_SQL.to_owned()));
        }
        let generation = self.live.generation();
        let mut changed = !self.routed || self.facts_changed;
        if generation != self.generation {
            self.generation = generation;
            self.reloads = self.live.reloads();
            let watched = !self.active.is_empty();
            self.select_active(Some(self.live.current()));
            changed = true;
            // Until now nothing watched this session's statements: what it SET meanwhile is read back first.
            if !watched && !self.active.is_empty() {
                self.settings_unknown = true;
                return Some((Lookup::Settings, SETTINGS_SQL.to_owned()));
            }
        }
        if let Some(app) = application_name.filter(|app| *app != self.facts.application_name) {
            self.facts.application_name = app;
            changed = true;
        }
        // Routes depend only on the config and the session's facts: most transactions change neither.
        if changed {
            self.facts_changed = false;
            self.routed = true;
            let config = self.planner.config().clone();
            let routes = self
                .active
                .iter()
                .map(|&i| routing::decide(&config.migrations[i], &self.facts).route)
                .collect();
            self.planner.update(None, self.active.clone(), routes);
        }
        if self.identity_unknown && self.shadowing() {
            return Some((Lookup::Identity, shadow::IDENTITY_SQL.to_owned()));
        }
        if self.active.is_empty() || self.schema_generation == Some(self.reloads) {
            return None;
        }
        let config = self.planner.config();
        let migrations: Vec<_> = self.active.iter().map(|&i| &config.migrations[i]).collect();
        catalog::query(&migrations).map(|sql| (Lookup::Catalog, sql))
    }

    /// Takes in the rows of a lookup that [`Statements::refresh`] asked for.
    pub fn absorb(&mut self, lookup: Lookup, rows: CatalogRows) {
        match lookup {
            Lookup::Catalog => self.set_schema(rows),
            Lookup::Settings => self.set_settings(rows),
            Lookup::Identity => {
                self.identity_unknown = false;
                self.identity = match rows {
                    Ok(rows) => rows
                        .first()
                        .and_then(|row| Identity::from_row(row))
                        .map(Arc::new),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the session's role and settings; its reads are not compared");
                        None
                    }
                };
            }
        }
    }

    /// Whether a migration applying to this session samples reads for shadow comparison.
    fn shadowing(&self) -> bool {
        self.shadow.is_some() && {
            let config = self.planner.config();
            self.active
                .iter()
                .any(|&i| config.migrations[i].shadow.sample_ppm > 0)
        }
    }

    /// A statement on `migration` (it names its old table): reported for contract readiness at most once a
    /// second.
    fn note_usage(&mut self, migration: &Arc<str>) {
        let Some(rollouts) = &self.rollouts else {
            return;
        };
        let pending = match self.usage.get_mut(migration) {
            Some(p) => p,
            None => self.usage.entry(migration.clone()).or_default(),
        };
        pending.0 += 1;
        if pending
            .1
            .is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1))
        {
            rollouts
                .usage
                .statements(migration, &client_of(&self.facts), pending.0);
            *pending = (0, Some(std::time::Instant::now()));
        }
    }

    /// Whether a statement with `label` is judged by a rollout's guards: a read of a ramped migration.
    fn ramped(&self, label: &Label) -> bool {
        self.rollouts.is_some()
            && matches!(label.route, "old" | "new")
            && self
                .planner
                .config()
                .migrations
                .iter()
                .any(|m| *m.name == *label.migration && m.ramp.is_some())
    }

    /// Where the guards take a statement with `label` (and its text's hash), if they judge it.
    fn measure(
        &self,
        label: &Label,
        hash: impl FnOnce() -> u64,
    ) -> Option<(Arc<crate::rollout::Rollouts>, u64)> {
        if !self.ramped(label) {
            return None;
        }
        Some((self.rollouts.clone()?, hash()))
    }

    /// For the Parse or Bind of a judged statement: a record of it only if the server refuses it there.
    fn failure_timing(&self, label: &Label, hash: u64) -> Option<Timing> {
        let measure = self.measure(label, || hash)?;
        let mut t = Timing::start(Some(label.clone()))?;
        t.measure = Some(measure);
        t.failure_only = true;
        Some(t)
    }

    /// Draws whether this read (its plan's `actions`) is compared: the migration (its index in the config) and
    /// the route it is served from, if so.
    fn draw(&mut self, actions: &[Action]) -> Option<(usize, Side)> {
        let shadow = self.shadow.as_ref()?;
        let (migration, served) = actions.iter().find_map(|a| match a.what {
            ActionKind::ReadOld => Some((&a.migration, Side::Old)),
            ActionKind::ReadNew => Some((&a.migration, Side::New)),
            _ => None,
        })?;
        let config = self.planner.config();
        let index = self
            .active
            .iter()
            .copied()
            .find(|&i| *config.migrations[i].name == **migration)?;
        let m = &config.migrations[index];
        if m.shadow.sample_ppm == 0 || !shadow::draw(&mut self.draws, m.shadow.sample_ppm) {
            return None;
        }
        if self.identity.is_none() {
            shadow.skipped(&m.name, shadow::mapping_hash(m), "identity_unknown");
            return None;
        }
        Some((index, served))
    }

    /// A drawn read's comparison: the plan on the new route, the parameters, the session's identity.
    fn sample(
        &self,
        (index, served): (usize, Side),
        sql: &str,
        params: Option<Params>,
    ) -> Option<Sample> {
        let shadow = self.shadow.clone()?;
        let m = &self.planner.config().migrations[index];
        let job = shadow::Job {
            migration: m.name.as_str().into(),
            mapping: shadow::mapping_hash(m),
            database: self.facts.database.clone(),
            served,
            sql: sql.to_owned(),
            new_plan: self.planner.plan_routed(sql, index, Route::New),
            params,
            identity: self.identity.clone()?,
        };
        Some(Sample { job, shadow })
    }

    fn set_settings(&mut self, rows: CatalogRows) {
        self.settings_unknown = false;
        let row = match rows {
            Ok(rows) => rows.into_iter().next().unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read pgshift.key and pgshift.context; routing keeps the last known values");
                return;
            }
        };
        let mut values = row.into_iter();
        let key = values.next().flatten();
        let context = values.next().flatten();
        if key != self.facts.key_setting || context != self.facts.context {
            self.facts.key_setting = key;
            self.facts.context = context;
            self.facts_changed = true;
        }
    }

    fn set_schema(&mut self, rows: CatalogRows) {
        let schema = match rows {
            Ok(rows) => catalog::parse(&rows),
            Err(e) => {
                tracing::warn!(error = %e, "catalog lookup failed; statements on migrated tables will be refused");
                Schema::default()
            }
        };
        self.schema_generation = Some(self.reloads);
        self.planner.set_schema(schema);
    }

    /// The plan for `sql`, counted in the metrics.
    fn plan(&self, sql: &str) -> Arc<Plan> {
        let plan = self.planner.plan(sql);
        record(&plan);
        plan
    }

    /// A statement ran that may have changed the session's settings. Postgres is asked at the next transaction
    /// boundary rather than the statement read here: SET LOCAL ends with its transaction, a rollback undoes a
    /// SET, RESET returns to the startup value, and set_config() takes any expression.
    fn ran(&mut self, touches: Touches) {
        if touches.settings {
            self.settings_unknown = true;
        }
        if touches.search_path {
            self.schema_generation = None;
        }
        if touches.session {
            self.identity_unknown = true;
        }
    }

    /// Query ('Q'): writes the message to send into `out` and returns its FIFO entry.
    pub fn on_query(&mut self, frame: &[u8], out: &mut BytesMut) -> Result<Entry, FrameError> {
        let sql = String::from_utf8_lossy(messages::query_text(frame)?).into_owned();
        self.ran(Touches::of(&sql));
        let plan = self.plan(&sql);
        let mut timing = Timing::start(label_of(&plan));
        if let Some(t) = timing.as_mut() {
            t.sample = self
                .draw(plan.actions())
                .and_then(|drawn| self.sample(drawn, &sql, None));
            t.measure = self.measure(&t.label, || text_hash(&sql));
            self.note_usage(&t.label.migration);
        }
        let respond = match &*plan {
            Plan::Forward { .. } => {
                out.extend_from_slice(frame);
                Respond::Forward
            }
            Plan::Rewrite { sql, shapes, .. } => {
                encode::query(out, sql);
                Respond::Statements {
                    shapes: Arc::from(shapes.as_slice()),
                    next: 0,
                }
            }
            Plan::Refuse(refusal) => {
                encode::query(out, REFUSED_SQL);
                Respond::ReplaceError(refused(refusal))
            }
        };
        Ok(Entry {
            request: Request::Query,
            respond,
            timing,
        })
    }

    /// Parse ('P'): plans the statement once; Bind re-plans it if routes change later.
    pub fn on_parse(&mut self, frame: &[u8], out: &mut BytesMut) -> Result<Entry, FrameError> {
        let messages::ParseParts { name, query, types } = messages::parse_message(frame)?;
        let sql = String::from_utf8_lossy(query).into_owned();
        let touches = Touches::of(&sql);
        let (respond, shape, label) = self.write_parse(name, &sql, types, out, false);
        // Only statements a rollout's guards judge need their text's hash.
        let hash = match &label {
            Some(label) if self.ramped(label) => text_hash(&sql),
            _ => 0,
        };
        // A statement the server refuses at Parse never executes: its failure still counts for its route.
        let timing = label
            .as_ref()
            .and_then(|label| self.failure_timing(label, hash));
        let counted = match (&label, &self.rollouts) {
            (Some(label), Some(rollouts)) if !name.is_empty() => {
                rollouts.usage.prepared(&label.migration, 1);
                Some(label.migration.clone())
            }
            _ => None,
        };
        let replaced = self.statements.insert(
            name.to_vec(),
            Prepared {
                query: sql,
                types: Bytes::copy_from_slice(types),
                shape,
                label,
                plan_key: self.planner.key(),
                touches,
                hash,
                counted,
            },
        );
        self.uncount(replaced);
        Ok(Entry {
            request: Request::Parse,
            respond,
            timing,
        })
    }

    fn write_parse(
        &self,
        name: &[u8],
        sql: &str,
        types: &[u8],
        out: &mut BytesMut,
        injected: bool,
    ) -> (Respond, Shape, Option<Label>) {
        let plan = self.plan(sql);
        let label = label_of(&plan);
        let ok = if injected {
            Respond::Swallow
        } else {
            Respond::Forward
        };
        match &*plan {
            Plan::Forward { .. } => {
                encode::parse(out, name, sql, types);
                (ok, Shape::Same, label)
            }
            Plan::Rewrite { sql, shapes, .. } => {
                encode::parse(out, name, sql, types);
                (ok, shapes.first().cloned().unwrap_or(Shape::Same), label)
            }
            Plan::Refuse(refusal) => {
                encode::parse(out, name, REFUSED_SQL, types);
                (Respond::ReplaceError(refused(refusal)), Shape::Same, None)
            }
        }
    }

    /// Bind ('B'): if the statement was planned under other routes, it is closed and parsed again first,
    /// invisibly, so prepared statements follow the current routing (JDBC, pgx and asyncpg keep them forever).
    pub fn on_bind(
        &mut self,
        frame: &[u8],
        out: &mut BytesMut,
        entries: &mut Vec<Entry>,
    ) -> Result<(), FrameError> {
        let (portal, statement) = messages::bind_names(frame)?;
        let plan_key = self.planner.key();
        let stale = self
            .statements
            .get(statement)
            .filter(|p| p.plan_key != plan_key)
            .map(|p| (p.query.clone(), p.types.clone()));
        if let Some((query, types)) = stale {
            encode::close_statement(out, statement);
            entries.push(Entry {
                request: Request::Close,
                respond: Respond::Swallow,
                timing: None,
            });
            let (respond, shape, label) = self.write_parse(statement, &query, &types, out, true);
            entries.push(Entry {
                request: Request::Parse,
                respond,
                timing: None,
            });
            if let Some(p) = self.statements.get_mut(statement) {
                p.shape = shape;
                p.label = label;
                p.plan_key = plan_key;
            }
        }
        let touches = self.statements.get(statement).map(|p| p.touches);
        self.ran(touches.unwrap_or_default());
        let (shape, label, hash) = self
            .statements
            .get(statement)
            .map_or((Shape::Same, None, 0), |p| {
                (p.shape.clone(), p.label.clone(), p.hash)
            });
        let drawn = label.as_ref().and_then(|l| self.draw(&l.actions));
        let sample = drawn.and_then(|drawn| {
            let p = self.statements.get(statement)?;
            self.sample(drawn, &p.query, bound_params(frame, &p.types))
        });
        self.portals.insert(
            portal.to_vec(),
            Portal {
                shape,
                label,
                sample,
                hash,
            },
        );
        out.extend_from_slice(frame);
        // Postgres checks privileges when it binds (ExecutorStart): a read of a table the client may not read
        // fails here and its Execute is skipped. The failure counts for the route the statement was planned for.
        let timing = self
            .portals
            .get(portal)
            .and_then(|p| p.label.as_ref())
            .and_then(|label| self.failure_timing(label, hash));
        entries.push(Entry {
            request: Request::Bind,
            respond: Respond::Forward,
            timing,
        });
        Ok(())
    }

    pub fn on_describe(&mut self, frame: &[u8], out: &mut BytesMut) -> Result<Entry, FrameError> {
        let (kind, name) = messages::target(frame)?;
        let shape = match kind {
            b'S' => self.statements.get(name).map(|p| p.shape.clone()),
            _ => self.portals.get(name).map(|p| p.shape.clone()),
        };
        out.extend_from_slice(frame);
        Ok(single(Request::Describe, shape, None))
    }

    pub fn on_execute(&mut self, frame: &[u8], out: &mut BytesMut) -> Result<Entry, FrameError> {
        let portal = messages::execute_portal(frame)?;
        let (shape, label, sample, hash) = match self.portals.get_mut(portal) {
            Some(p) => (
                Some(p.shape.clone()),
                p.label.clone(),
                p.sample.take(),
                p.hash,
            ),
            None => (None, None, None, 0),
        };
        let start = out.len();
        out.extend_from_slice(frame);
        // A rewritten write without RETURNING answers with zero-column rows that pgshift drops; a row limit
        // (pgjdbc sends max_rows = 1 for every update) would suspend the portal where the client's own statement
        // completes with its tag. The client gets no rows either way, so no limit is needed.
        if let Some(Shape::Dml {
            returning: false, ..
        }) = &shape
        {
            if out.len() >= start + 4 {
                let end = out.len();
                out[end - 4..].copy_from_slice(&0i32.to_be_bytes());
            }
        }
        let mut entry = single(Request::Execute, shape, label);
        if let Some(t) = entry.timing.as_mut() {
            t.sample = sample;
            t.measure = self.measure(&t.label, || hash);
            self.note_usage(&t.label.migration);
        }
        Ok(entry)
    }

    pub fn on_close(&mut self, frame: &[u8], out: &mut BytesMut) -> Result<Entry, FrameError> {
        let (kind, name) = messages::target(frame)?;
        match kind {
            b'S' => {
                let closed = self.statements.remove(name);
                self.uncount(closed);
            }
            _ => {
                self.portals.remove(name);
            }
        };
        out.extend_from_slice(frame);
        Ok(Entry::forward(Request::Close))
    }
}

impl Statements {
    /// A prepared statement the session no longer holds.
    fn uncount(&self, gone: Option<Prepared>) {
        if let (Some(m), Some(rollouts)) = (gone.and_then(|p| p.counted), &self.rollouts) {
            rollouts.usage.prepared(&m, -1);
        }
    }
}

impl Drop for Statements {
    /// The session ended: its prepared statements are gone, its last statements reported.
    fn drop(&mut self) {
        let Some(rollouts) = self.rollouts.clone() else {
            return;
        };
        for p in self.statements.values() {
            if let Some(m) = &p.counted {
                rollouts.usage.prepared(m, -1);
            }
        }
        let client = client_of(&self.facts);
        for (m, (n, _)) in &self.usage {
            if *n > 0 {
                rollouts.usage.statements(m, &client, *n);
            }
        }
    }
}

fn client_of(facts: &SessionFacts) -> crate::rollout::usage::Client {
    crate::rollout::usage::Client {
        application_name: facts.application_name.clone(),
        user: facts.user.clone(),
        client_addr: facts.client_addr.map(|a| a.to_string()),
    }
}

fn single(request: Request, shape: Option<Shape>, label: Option<Label>) -> Entry {
    let respond = match shape {
        Some(shape @ (Shape::Dml { .. } | Shape::Read { .. })) => Respond::Single(shape),
        _ => Respond::Forward,
    };
    Entry {
        request,
        respond,
        timing: Timing::start(label),
    }
}

/// How rollout guards tell statements apart: a hash of the client's text with its constants lifted out, as the
/// plan cache does, so `WHERE id = 1` and `WHERE id = 2` are one statement (prepared statements and parameterized
/// queries have one text already).
fn text_hash(sql: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    match crate::rewrite::literals::lift(sql) {
        Some(lifted) => lifted.text.hash(&mut h),
        None => sql.hash(&mut h),
    }
    h.finish()
}

/// The parameters of a Bind, for a shadow comparison; `types` is the Parse's type section.
fn bound_params(frame: &[u8], types: &[u8]) -> Option<Params> {
    let messages::BindParams { formats, values } = messages::bind_params(frame).ok()?;
    let types = types
        .get(2..)
        .unwrap_or_default()
        .chunks_exact(4)
        .map(|oid| u32::from_be_bytes([oid[0], oid[1], oid[2], oid[3]]))
        .collect();
    Some(Params {
        types,
        formats,
        values: values
            .into_iter()
            .map(|v| v.map(Bytes::copy_from_slice))
            .collect(),
    })
}

/// The ErrorResponse a client gets for a refused statement.
fn refused(refusal: &rewrite::Refusal) -> Bytes {
    ClientError::refused(refusal).to_bytes()
}

/// Refusals are counted when planned: the client's message fails there. What a plan did is counted each time
/// the statement runs ([`Timing::finish`]).
fn record(plan: &Plan) {
    if let Plan::Refuse(r) = plan {
        crate::metrics::migration_counter(STATEMENTS_REFUSED, &r.migration, "reason", r.code())
            .increment(1);
        tracing::info!(migration = %r.migration, reason = r.code(), detail = %r.detail, "statement refused");
    }
}

/// `pgshift.key` / `pgshift.context` given in the startup `options` (`-c pgshift.key=x` or `--pgshift.key=x`).
pub fn settings_from_options(options: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut words = options.split_whitespace();
    while let Some(word) = words.next() {
        let setting = match word {
            "-c" => words.next(),
            w => w.strip_prefix("-c").or_else(|| w.strip_prefix("--")),
        };
        if let Some((name, value)) = setting.and_then(|s| s.split_once('=')) {
            out.push((name.to_lowercase().replace('-', "_"), value.to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_differing_only_in_constants_are_one_for_the_guards() {
        assert_eq!(
            text_hash("SELECT fullname FROM users WHERE id = 1"),
            text_hash("SELECT fullname FROM users WHERE id = 2")
        );
        assert_ne!(
            text_hash("SELECT fullname FROM users WHERE id = 1"),
            text_hash("SELECT email FROM users WHERE id = 1")
        );
    }

    #[test]
    fn settings_are_read_from_options() {
        assert_eq!(
            settings_from_options(
                "-c pgshift.key=abc --pgshift.context=internal -csearch_path=public"
            ),
            vec![
                ("pgshift.key".to_owned(), "abc".to_owned()),
                ("pgshift.context".to_owned(), "internal".to_owned()),
                ("search_path".to_owned(), "public".to_owned()),
            ]
        );
    }
}
