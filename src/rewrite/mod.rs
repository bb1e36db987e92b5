//! SQL planning for migrations: decide, per client statement, whether it passes through untouched, is rewritten
//! (dual write, routed read), or is refused. Pure functions: SQL text, migrations with this session's routes, and
//! the session's view of the catalog in; a [`Plan`] out.

pub mod ast;
pub mod builders;
pub mod cache;
pub mod catalog;
pub mod column;
pub mod dual_write;
pub mod literals;
pub mod mirror;
pub mod new_primary;
pub mod origins;
pub mod pg;
pub mod planner;
pub mod prefilter;
pub mod primary;
pub mod read_route;
pub mod reads;
pub mod refusal;
pub mod shape;
pub mod splice;
pub mod sqltext;

use crate::config::migration::{Migration, TableName, WriteMode};
use crate::routing::Route;
use sqlparser::ast::{visit_statements, ObjectName, Statement, TableFactor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqltext::name_parts;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

pub use refusal::{Refusal, RefusalReason, Unrewritable};
pub use shape::{DmlTag, Shape};

/// What this session knows of the catalog: column lists of migrated tables (old and new), and what an
/// unqualified table name resolves to under the session's search_path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema {
    pub columns: HashMap<TableName, Vec<String>>,
    /// Each column's type (`format_type`, typmod included), in the order of `columns`. Values reach `up` and
    /// `down`, and routed reads return, in the old column's own type.
    pub types: HashMap<TableName, Vec<String>>,
    /// Each column's table OID and attribute number, in the order of `columns` (for result metadata).
    pub origins: HashMap<TableName, Vec<Option<shape::Origin>>>,
    /// Each column's default expression (`pg_get_expr`), `None` without one, in the order of `columns`.
    pub defaults: HashMap<TableName, Vec<Option<String>>>,
    pub unqualified: HashMap<String, TableName>,
    /// What else in the database reads or writes the old tables ([`catalog`]): pgshift cannot mirror writes
    /// made through them.
    pub dependents: Vec<Dependent>,
}

/// A database object that reads or writes a migrated table out of pgshift's sight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dependent {
    pub kind: DependentKind,
    /// The object's schema and name; for a rule or a trigger, those of the table it is on.
    pub schema: String,
    pub name: String,
    /// For people: `view public.active_users`, `function public.f(integer)`, `trigger t on public.x (…)`.
    pub description: String,
    /// The migrated (old) table it reads or writes.
    pub table: TableName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DependentKind {
    /// A view over the table: writing through it writes the table.
    View,
    /// A rule on another table that refers to it: writing that table may write this one.
    Rule,
    /// A trigger on another table whose function writes it.
    Trigger,
    /// A function or procedure whose code names it (`writes`: and contains a writing command).
    Function { writes: bool },
}

impl Dependent {
    /// Whether statements that write this object (relations) or call it (functions) write the migrated table.
    pub fn writes(&self) -> bool {
        !matches!(self.kind, DependentKind::Function { writes: false })
    }

    pub fn is_function(&self) -> bool {
        matches!(self.kind, DependentKind::Function { .. })
    }
}

/// A migration as it applies to this session right now.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub migration: &'a Migration,
    pub route: Route,
}

pub struct Context<'a> {
    pub targets: &'a [Target<'a>],
    pub schema: &'a Schema,
    /// Built for the targets' table names, in the same order.
    pub prefilter: &'a prefilter::Prefilter,
}

/// Something the plan did to one migration's table, for metrics and latency labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// Shared, so handing it to metrics and latency labels per statement is a reference-count bump.
    pub migration: std::sync::Arc<str>,
    pub what: ActionKind,
}

/// How a statement touched a migrated table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    /// A read served from the old table (its route is old).
    ReadOld,
    /// A read rewritten to the new schema.
    ReadNew,
    /// A read routed to new that could not be rewritten, so served from old.
    ReadUnrewritable,
    /// A write mirrored from old to new.
    DualWrite,
    /// A write translated to new and mirrored back to old.
    NewPrimary,
}

impl ActionKind {
    /// The metric label value; stable, whatever the variant is called.
    pub fn label(self) -> &'static str {
        match self {
            ActionKind::ReadOld => "read_old",
            ActionKind::ReadNew => "read_new",
            ActionKind::ReadUnrewritable => "read_unrewritable",
            ActionKind::DualWrite => "dual_write",
            ActionKind::NewPrimary => "new_primary",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Send the client's text unchanged.
    Forward {
        actions: Vec<Action>,
    },
    /// Send `sql` instead; `shapes` has one entry per statement, in order.
    Rewrite {
        sql: String,
        shapes: Vec<Shape>,
        actions: Vec<Action>,
    },
    Refuse(Refusal),
}

impl Action {
    /// A write mirrored to the other side.
    pub fn is_write(&self) -> bool {
        matches!(self.what, ActionKind::DualWrite | ActionKind::NewPrimary)
    }
}

impl Plan {
    pub fn actions(&self) -> &[Action] {
        match self {
            Plan::Forward { actions } | Plan::Rewrite { actions, .. } => actions,
            Plan::Refuse(_) => &[],
        }
    }
}

impl Schema {
    /// The type of `table.column`, if known.
    pub fn type_of(&self, table: &TableName, column: &str) -> Option<&str> {
        let i = self.columns.get(table)?.iter().position(|c| c == column)?;
        self.types.get(table)?.get(i).map(String::as_str)
    }

    /// The default expression of `table.column`: `Ok(None)` when it has none (NULL), `Err` if unknown.
    pub fn default_of(
        &self,
        table: &TableName,
        column: &str,
    ) -> Result<Option<&str>, Unrewritable> {
        let i = self
            .columns
            .get(table)
            .and_then(|cols| cols.iter().position(|c| c == column))
            .ok_or_else(|| {
                RefusalReason::ColumnsUnknown.because(format!(
                    "column {column} of {table} is not known in this session"
                ))
            })?;
        self.defaults
            .get(table)
            .and_then(|d| d.get(i))
            .map(|d| d.as_deref())
            .ok_or_else(|| {
                RefusalReason::ColumnsUnknown.because(format!(
                    "the default of {table}.{column} is not known in this session"
                ))
            })
    }
}

impl<'a> Context<'a> {
    /// The target a table name refers to, if it is a migrated (old) table.
    fn resolve(&self, name: &ObjectName, ctes: &[String]) -> Option<&Target<'a>> {
        self.resolve_parts(&name_parts(name)?, ctes)
    }

    /// The same, for a name already split into folded parts.
    fn resolve_parts(&self, parts: &[String], ctes: &[String]) -> Option<&Target<'a>> {
        let table = match parts {
            [name] if ctes.contains(name) => return None,
            [name] => self.schema.unqualified.get(name)?.clone(),
            [.., schema, name] => TableName {
                schema: schema.clone(),
                name: name.clone(),
            },
            [] => return None,
        };
        self.targets.iter().find(|t| t.migration.table == table)
    }
}

fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack.len() >= needle.len()
        && haystack
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

fn refuse(target: &Target<'_>, why: Unrewritable) -> Refusal {
    Refusal::new(target.migration.name.clone(), why)
}

fn writes_active(target: &Target<'_>) -> bool {
    target.migration.writes != WriteMode::Off
}

/// Plans one client message (one or more statements separated by `;`).
///
/// Postgres's grammar ([`pg`]) cuts the text into statements and has the last word on what each means;
/// sqlparser's AST drives the rewrite only where its reading is proven to be Postgres's. Statements that need
/// no change go upstream byte for byte, whatever else the message holds.
pub fn plan(sql: &str, ctx: &Context<'_>) -> Plan {
    let mentioned: Vec<&Target<'_>> = ctx
        .prefilter
        .mentioned(sql)
        .into_iter()
        .filter_map(|i| ctx.targets.get(i))
        .collect();
    let names_dependent = ctx
        .prefilter
        .mentioned(sql)
        .into_iter()
        .any(|i| i >= ctx.targets.len());
    if mentioned.is_empty() && !names_dependent {
        return Plan::Forward { actions: vec![] };
    }
    // Postgres's own parser rejects it: so will the server, before anything runs, with its own error. (Its
    // grammar is version 18's; should an older server accept what it rejects, a write sqlparser can see
    // going to a mirrored table is refused rather than sent unmirrored.)
    let Ok(pg_statements) = pg::parse(sql) else {
        if let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) {
            for statement in &statements {
                let mut refusal = None;
                let _ = visit_statements(statement, |s| {
                    if let Some((t, _)) = dml_target(s, ctx, &[]).filter(|(t, _)| writes_active(t))
                    {
                        refusal.get_or_insert_with(|| {
                            refuse(t, RefusalReason::ParseError.because(format!("Postgres's parser (version 18) rejects the statement, so pgshift cannot tell how it writes {}", t.migration.table)))
                        });
                    }
                    ControlFlow::<()>::Continue(())
                });
                if let Some(refusal) = refusal {
                    return Plan::Refuse(refusal);
                }
            }
        }
        return Plan::Forward { actions: vec![] };
    };
    if let Some(refusal) = opaque_code(&pg_statements, ctx) {
        return Plan::Refuse(refusal);
    }
    if let Some(refusal) = invisible_write(&pg_statements, ctx) {
        return Plan::Refuse(refusal);
    }
    if mentioned.is_empty() {
        return Plan::Forward { actions: vec![] };
    }
    // sqlparser's reading, where it has one that lines up with Postgres's statements.
    let (mut statements, why) = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(s) if s.len() == pg_statements.len() => (Some(s.into_iter()), String::new()),
        Ok(_) => (
            None,
            "it splits the text into statements differently".to_owned(),
        ),
        Err(e) => (None, e.to_string()),
    };
    let mut pieces: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    let mut shapes = Vec::with_capacity(pg_statements.len());
    let mut actions = Vec::new();
    for pg_statement in &pg_statements {
        let statement = statements.as_mut().and_then(|s| s.next());
        let source = Source {
            text: &sql[pg_statement.range.clone()],
            offset: pg_statement.range.start,
            node: &pg_statement.node,
        };
        match wrapped_write(&source, ctx) {
            Some(Ok(())) => {
                shapes.push(Shape::Same);
                continue;
            }
            Some(Err(refusal)) => return Plan::Refuse(refusal),
            None => {}
        }
        // Column-kind deletes, and updates of other columns, need no change.
        match mirror::column_passthrough(&source, ctx) {
            Some(Ok(target)) => {
                actions.push(action(target, phase_of(target)));
                shapes.push(Shape::Same);
                continue;
            }
            Some(Err(refusal)) => return Plan::Refuse(refusal),
            None => {}
        }
        // Writes to migrated tables, planned from Postgres's tree alone where a planner covers the form.
        if let Some((target, planned)) = plan_write_from_tree(&source, ctx) {
            match planned {
                Ok((text, shape)) => {
                    actions.push(action(target, phase_of(target)));
                    pieces.push((pg_statement.range.clone(), text));
                    shapes.push(shape);
                }
                Err(refusal) => return Plan::Refuse(refusal),
            }
            continue;
        }
        // Plain queries are routed from Postgres's tree alone.
        if let Some(routed) = reads::plan(&source, ctx) {
            actions.extend(routed.actions);
            match routed.text {
                Some(text) => {
                    pieces.push((pg_statement.range.clone(), text));
                    shapes.push(read_shape(&source, ctx));
                }
                None => shapes.push(Shape::Same),
            }
            continue;
        }
        let Some(statement) = statement else {
            match unreadable(&source, ctx, &why) {
                Ok(mine) => actions.extend(mine),
                Err(refusal) => return Plan::Refuse(refusal),
            }
            shapes.push(Shape::Same);
            continue;
        };
        let printed = statement.to_string();
        let before = actions.len();
        match plan_statement(statement, &source, ctx, &mut actions) {
            Ok(Planned::Unchanged) => shapes.push(Shape::Same),
            Ok(Planned::Changed(text, shape)) => {
                if !pg::same_reading(source.text, &printed) {
                    // sqlparser's reading is not Postgres's: acting on it could change the statement's meaning.
                    let writes = actions[before..].iter().any(Action::is_write);
                    actions.truncate(before);
                    if writes {
                        let t = mentioned
                            .iter()
                            .find(|t| writes_active(t))
                            .expect("a write has a target");
                        return Plan::Refuse(refuse(t, RefusalReason::Misread.because(MISREAD)));
                    }
                    actions.extend(
                        mentioned
                            .iter()
                            .map(|t| action(t, ActionKind::ReadUnrewritable)),
                    );
                    shapes.push(Shape::Same);
                    continue;
                }
                // A routed read describes its fields as the old columns they stand for.
                let routed = actions[before..]
                    .iter()
                    .any(|a| a.what == ActionKind::ReadNew);
                let shape = if routed && shape == Shape::Same {
                    read_shape(&source, ctx)
                } else {
                    shape
                };
                pieces.push((pg_statement.range.clone(), text));
                shapes.push(shape);
            }
            Err(refusal) => return Plan::Refuse(refusal),
        }
    }
    if pieces.is_empty() {
        return Plan::Forward { actions };
    }
    // Statements' ranges come from Postgres's parse, in order and apart; should they not be, refuse.
    let out = match (splice::apply(sql, 0..sql.len(), pieces), mentioned.first()) {
        (Ok(out), _) => out,
        (Err(e), Some(t)) => {
            return Plan::Refuse(refuse(
                t,
                RefusalReason::ParseError
                    .because(format!("pgshift cannot parse the statement ({e})")),
            ))
        }
        (Err(_), None) => return Plan::Forward { actions },
    };
    Plan::Rewrite {
        sql: out,
        shapes,
        actions,
    }
}

/// The planners that work from Postgres's tree alone: table dual writes, `new_primary` table writes, column-kind
/// writes. Each takes only its own migrations' statements, and the forms it covers.
fn plan_write_from_tree<'c, 'a>(
    source: &Source<'_>,
    ctx: &'c Context<'a>,
) -> Option<(&'c Target<'a>, mirror::Planned)> {
    mirror::plan(source, ctx)
        .or_else(|| primary::plan(source, ctx))
        .or_else(|| column::plan(source, ctx))
}

/// The action label of a mirrored write: the migration's phase.
fn phase_of(target: &Target<'_>) -> ActionKind {
    match target.migration.writes {
        WriteMode::NewPrimary => ActionKind::NewPrimary,
        _ => ActionKind::DualWrite,
    }
}

/// A routed read describes its fields as the old columns they stand for.
fn read_shape(source: &Source<'_>, ctx: &Context<'_>) -> Shape {
    let fields = origins::of_read(source.node, ctx).unwrap_or_else(|| Arc::from([]));
    let remap: Arc<[(shape::Origin, shape::Origin)]> = origins::remap(ctx).into();
    if fields.is_empty() && remap.is_empty() {
        Shape::Same
    } else {
        Shape::Read { fields, remap }
    }
}

const MISREAD: &str = "pgshift's SQL parser reads this statement differently from Postgres, so it cannot rewrite it with its exact meaning";

/// The client's text of one statement with Postgres's parse of it, for rewrites that splice into the text.
pub struct Source<'a> {
    pub text: &'a str,
    /// Where `text` starts in the message Postgres parsed: node locations count from there.
    pub offset: usize,
    pub node: &'a pg_query::NodeEnum,
}

/// A statement sqlparser cannot read (or splits differently): one Postgres reads as a plain query is
/// forwarded and served from old; anything else touching a table whose writes are mirrored is refused.
fn unreadable(source: &Source<'_>, ctx: &Context<'_>, why: &str) -> Result<Vec<Action>, Refusal> {
    let mut actions = Vec::new();
    for i in ctx.prefilter.mentioned(source.text) {
        let Some(t) = ctx.targets.get(i) else {
            continue;
        };
        if pg::kind(source.node) == pg::Kind::Read || !writes_active(t) {
            actions.push(action(t, ActionKind::ReadUnrewritable));
        } else {
            return Err(refuse(
                t,
                RefusalReason::ParseError.because(format!("pgshift cannot parse the statement ({why}), so it cannot tell how it writes {}", t.migration.table)),
            ));
        }
    }
    Ok(actions)
}

/// `EXPLAIN` and SQL `PREPARE` of a write to a table whose writes are mirrored: plain EXPLAIN only plans it
/// (forwarded as is); EXPLAIN ANALYZE runs it and PREPARE stores it where pgshift cannot splice the mirror in.
fn wrapped_write(source: &Source<'_>, ctx: &Context<'_>) -> Option<Result<(), Refusal>> {
    use pg_query::NodeEnum;
    let (inner, what) = match source.node {
        NodeEnum::ExplainStmt(e) => {
            let analyze = e.options.iter().any(|o| {
                matches!(&o.node, Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case("analyze"))
            });
            (
                e.query.as_deref()?.node.as_ref()?,
                analyze.then_some("EXPLAIN ANALYZE"),
            )
        }
        NodeEnum::PrepareStmt(p) => (p.query.as_deref()?.node.as_ref()?, Some("PREPARE")),
        _ => return None,
    };
    let relation = match inner {
        NodeEnum::InsertStmt(s) => s.relation.as_ref(),
        NodeEnum::UpdateStmt(s) => s.relation.as_ref(),
        NodeEnum::DeleteStmt(s) => s.relation.as_ref(),
        NodeEnum::MergeStmt(s) => s.relation.as_ref(),
        _ => None,
    }?;
    let mut parts = Vec::new();
    if !relation.schemaname.is_empty() {
        parts.push(relation.schemaname.clone());
    }
    parts.push(relation.relname.clone());
    let target = ctx
        .resolve_parts(&parts, &[])
        .filter(|t| writes_active(t))?;
    Some(match what {
        None => Ok(()),
        Some("PREPARE") => Err(refuse(
            target,
            RefusalReason::Prepare.because("SQL PREPARE of a write to a migrated table is not supported: prepare it with the extended protocol (Parse), as drivers do"),
        )),
        Some(what) => Err(refuse(
            target,
            RefusalReason::ExplainAnalyze.because(format!("{what} of a write to a migrated table is not supported: it would run the write without its mirror (use EXPLAIN without ANALYZE)")),
        )),
    })
}

/// Writes through something that writes a table whose writes are mirrored out of pgshift's sight: a view over
/// it, a table with a rule or trigger that writes it, a function or procedure whose code writes it.
fn invisible_write(statements: &[pg::Statement], ctx: &Context<'_>) -> Option<Refusal> {
    let dependents = &ctx.schema.dependents;
    if dependents.is_empty() {
        return None;
    }
    let matches = |d: &Dependent, schema: &str, name: &str| {
        d.name == name && (schema.is_empty() || d.schema == schema)
    };
    for statement in statements {
        let tree = pg::Tree::of(&statement.node);
        let mut writes: Vec<(pg::Relation, &str)> =
            tree.written().into_iter().map(|r| (r, "writing")).collect();
        for copy in tree.all("CopyStmt") {
            if copy.get("is_from").and_then(|f| f.as_bool()) == Some(true) {
                if let Some(r) = copy.get("relation").and_then(pg::Relation::of) {
                    writes.push((r, "copying into"));
                }
            }
        }
        for (r, how) in writes {
            let hit = dependents
                .iter()
                .find(|d| !d.is_function() && matches(d, &r.schema, &r.name));
            if let Some(refusal) = hit.and_then(|d| invisible(d, ctx, how)) {
                return Some(refusal);
            }
        }
        // CALL's function is a typed field, not a tagged node.
        let called = tree
            .all("CallStmt")
            .into_iter()
            .filter_map(|c| c.get("funccall"));
        for call in tree.all("FuncCall").into_iter().chain(called) {
            let parts: Vec<String> = pg::name_fields(call.get("funcname"))
                .into_iter()
                .flatten()
                .collect();
            let (schema, name) = match parts.as_slice() {
                [name] => ("", name.as_str()),
                [.., schema, name] => (schema.as_str(), name.as_str()),
                [] => continue,
            };
            let hit = dependents
                .iter()
                .find(|d| d.is_function() && d.writes() && matches(d, schema, name));
            if let Some(refusal) = hit.and_then(|d| invisible(d, ctx, "calling")) {
                return Some(refusal);
            }
        }
    }
    None
}

fn invisible(d: &Dependent, ctx: &Context<'_>, how: &str) -> Option<Refusal> {
    let t = ctx
        .targets
        .iter()
        .find(|t| t.migration.table == d.table && writes_active(t))?;
    Some(refuse(
        t,
        RefusalReason::InvisibleWrite.because(format!(
            "{how} {} writes {} out of pgshift's sight, so the write would not be mirrored (write the table with plain statements; `pgshift check --dsn` lists such objects)",
            d.description, d.table
        )),
    ))
}

/// `DO` blocks and function or procedure definitions whose code names a table whose writes are mirrored:
/// writes inside them would reach only one side, so they are refused while the migration mirrors writes.
fn opaque_code(statements: &[pg::Statement], ctx: &Context<'_>) -> Option<Refusal> {
    for statement in statements {
        for body in pg::code_bodies(&statement.node) {
            for i in ctx.prefilter.mentioned(&body) {
                let Some(t) = ctx.targets.get(i) else {
                    continue;
                };
                if writes_active(t) {
                    let what = match statement.node {
                        pg_query::NodeEnum::DoStmt(_) => "a DO block",
                        _ => "a function or procedure body",
                    };
                    return Some(refuse(
                        t,
                        RefusalReason::OpaqueCode.because(format!("{what} that names {} is not supported while its writes are mirrored: pgshift cannot see or mirror writes inside it (run it directly once the migration is done, or write the table with plain statements)", t.migration.table)),
                    ));
                }
            }
        }
    }
    None
}

fn action(target: &Target<'_>, what: ActionKind) -> Action {
    Action {
        migration: target.migration.name.as_str().into(),
        what,
    }
}

enum Planned {
    Unchanged,
    Changed(String, Shape),
}

/// Names of CTEs anywhere in the statement: a CTE named like a migrated table shadows it.
fn cte_names(statement: &Statement) -> Vec<String> {
    let mut names = Vec::new();
    struct Ctes<'a>(&'a mut Vec<String>);
    impl sqlparser::ast::Visitor for Ctes<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, query: &sqlparser::ast::Query) -> ControlFlow<()> {
            if let Some(with) = &query.with {
                for cte in &with.cte_tables {
                    self.0.push(sqltext::fold(&cte.alias.name));
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = sqlparser::ast::Visit::visit(statement, &mut Ctes(&mut names));
    names
}

/// The migrated table a DML statement writes, with the statement kind.
fn dml_target<'c, 'a>(
    statement: &Statement,
    ctx: &'c Context<'a>,
    ctes: &[String],
) -> Option<(&'c Target<'a>, DmlTag)> {
    match statement {
        Statement::Insert(insert) => match &insert.table {
            sqlparser::ast::TableObject::TableName(name) => {
                ctx.resolve(name, ctes).map(|t| (t, DmlTag::Insert))
            }
            _ => None,
        },
        Statement::Update(update) => match &update.table.relation {
            TableFactor::Table { name, .. } => ctx.resolve(name, ctes).map(|t| (t, DmlTag::Update)),
            _ => None,
        },
        Statement::Delete(delete) => {
            let tables = match &delete.from {
                sqlparser::ast::FromTable::WithFromKeyword(t)
                | sqlparser::ast::FromTable::WithoutKeyword(t) => t,
            };
            match tables.first().map(|t| &t.relation) {
                Some(TableFactor::Table { name, .. }) => {
                    ctx.resolve(name, ctes).map(|t| (t, DmlTag::Delete))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// sqlparser reads `UPDATE ONLY users` as a table named ONLY with alias users.
fn only_misparse<'c, 'a>(statement: &Statement, ctx: &'c Context<'a>) -> Option<&'c Target<'a>> {
    let mut found = None;
    let _ = sqlparser::ast::visit_relations(statement, |name| {
        if let Some(parts) = name_parts(name) {
            if parts == ["only"] {
                found = Some(());
            }
        }
        ControlFlow::<()>::Continue(())
    });
    found?;
    let text = statement.to_string().to_lowercase();
    ctx.targets
        .iter()
        .find(|t| text.contains(&t.migration.table.name))
}

fn plan_statement(
    statement: Statement,
    source: &Source<'_>,
    ctx: &Context<'_>,
    actions: &mut Vec<Action>,
) -> Result<Planned, Refusal> {
    let ctes = cte_names(&statement);
    if let Some(t) = only_misparse(&statement, ctx) {
        if writes_active(t) {
            return Err(refuse(
                t,
                RefusalReason::Only
                    .because("statements with ONLY on a migrated table are not supported"),
            ));
        }
        actions.push(action(t, ActionKind::ReadUnrewritable));
        return Ok(Planned::Unchanged);
    }
    // Every DML anywhere in the statement (data-modifying CTEs included) that writes a migrated table.
    let mut nested_writes = Vec::new();
    let mut other_refusal = None;
    let _ = visit_statements(&statement, |s| {
        if let Some((t, tag)) = dml_target(s, ctx, &ctes) {
            nested_writes.push((t.migration.name.clone(), tag));
        }
        match s {
            Statement::Merge(_) | Statement::Truncate(_) | Statement::Copy { .. } => {
                let text = s.to_string().to_lowercase();
                if let Some(t) = ctx.targets.iter().find(|t| {
                    writes_active(t)
                        && contains_ignore_ascii_case(
                            text.as_bytes(),
                            t.migration.table.name.as_bytes(),
                        )
                }) {
                    let what = match s {
                        Statement::Merge(_) => RefusalReason::Merge.because("MERGE into a migrated table is not supported"),
                        Statement::Truncate(_) => RefusalReason::Truncate.because("TRUNCATE of a migrated table is not supported while writes are mirrored"),
                        _ => RefusalReason::Copy.because("COPY of a migrated table is not supported while writes are mirrored"),
                    };
                    let is_copy_to = matches!(s, Statement::Copy { to: true, .. });
                    if !is_copy_to {
                        other_refusal = Some(refuse(t, what));
                    }
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    if let Some(refusal) = other_refusal {
        return Err(refusal);
    }

    // The statement itself, or `WITH … <DML>`.
    let (with, top) = match &statement {
        Statement::Query(query) => match query.body.as_ref() {
            sqlparser::ast::SetExpr::Insert(s)
            | sqlparser::ast::SetExpr::Update(s)
            | sqlparser::ast::SetExpr::Delete(s) => (query.with.clone(), Some(s.clone())),
            _ => (None, None),
        },
        s @ (Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_)) => {
            (None, Some(s.clone()))
        }
        _ => (None, None),
    };
    let top_target = top.as_ref().and_then(|s| dml_target(s, ctx, &ctes));
    let writes_in_ctes = nested_writes.len() > usize::from(top_target.is_some());
    if writes_in_ctes {
        let name = &nested_writes[0].0;
        if let Some(t) = ctx
            .targets
            .iter()
            .find(|t| &t.migration.name == name && writes_active(t))
        {
            return Err(refuse(
                t,
                RefusalReason::ModifyingCte.because(
                    "a data-modifying WITH query that writes a migrated table is not supported",
                ),
            ));
        }
    }

    if let (Some(stmt), Some((target, tag))) = (top, top_target) {
        if !writes_active(target) {
            return Ok(Planned::Unchanged);
        }
        actions.push(action(target, phase_of(target)));
        dual_write::check_key_not_updated(&stmt, target.migration)
            .map_err(|r| refuse(target, r))?;
        // The phase decides the transform.
        let (text, shape) = match (target.migration.kind, phase_of(target)) {
            (crate::config::migration::MigrationKind::Table, ActionKind::NewPrimary) => {
                new_primary::rewrite(stmt, with, tag, target, ctx.schema, source)?
            }
            _ => dual_write::rewrite(stmt, with, target, ctx.schema)?,
        };
        return Ok(Planned::Changed(text, shape));
    }

    read_route::route(statement, ctx, &ctes, actions)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::migration::{validate, ColumnMap, MigrationKind, RawMigration};

    pub fn users_migration(writes: WriteMode) -> Migration {
        let raw = RawMigration {
            name: "users_v2".into(),
            kind: MigrationKind::Table,
            table: "public.users".into(),
            new_table: Some("v2.users".into()),
            database: None,
            key: vec!["id".into()],
            columns: vec![ColumnMap {
                old: "fullname".into(),
                new: "display_name".into(),
                up: None,
                down: None,
            }],
            writes,
            reads: Default::default(),
            salt: None,
            shadow: Default::default(),
            guard: Default::default(),
        };
        validate(raw, "test", &mut Vec::new()).unwrap()
    }

    pub fn orders_migration(writes: WriteMode) -> Migration {
        let raw = RawMigration {
            name: "orders_status".into(),
            kind: MigrationKind::Column,
            table: "public.orders".into(),
            new_table: None,
            database: None,
            key: vec!["id".into()],
            columns: vec![ColumnMap {
                old: "legacy_status".into(),
                new: "new_status".into(),
                up: Some("upper(legacy_status)".into()),
                down: Some("lower(new_status)".into()),
            }],
            writes,
            reads: Default::default(),
            salt: None,
            shadow: Default::default(),
            guard: Default::default(),
        };
        validate(raw, "test", &mut Vec::new()).unwrap()
    }

    pub fn schema() -> Schema {
        let t = |s: &str, n: &str| TableName {
            schema: s.into(),
            name: n.into(),
        };
        let cols = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Schema {
            columns: HashMap::from([
                (
                    t("public", "users"),
                    cols(&["id", "fullname", "email", "created_at"]),
                ),
                (
                    t("v2", "users"),
                    cols(&["id", "display_name", "email", "created_at"]),
                ),
                (
                    t("public", "orders"),
                    cols(&["id", "customer", "legacy_status", "new_status"]),
                ),
            ]),
            types: HashMap::from([
                (
                    t("public", "users"),
                    cols(&["bigint", "text", "text", "timestamp with time zone"]),
                ),
                (
                    t("v2", "users"),
                    cols(&["bigint", "text", "text", "timestamp with time zone"]),
                ),
                (
                    t("public", "orders"),
                    cols(&["bigint", "text", "text", "text"]),
                ),
            ]),
            defaults: HashMap::from([(
                t("public", "orders"),
                vec![
                    Some("nextval('orders_id_seq'::regclass)".to_owned()),
                    None,
                    Some("'open'::text".to_owned()),
                    None,
                ],
            )]),
            unqualified: HashMap::from([
                ("users".to_owned(), t("public", "users")),
                ("orders".to_owned(), t("public", "orders")),
            ]),
            origins: HashMap::new(),
            dependents: vec![
                Dependent {
                    kind: DependentKind::View,
                    schema: "public".into(),
                    name: "active_users".into(),
                    description: "view public.active_users".into(),
                    table: t("public", "users"),
                },
                Dependent {
                    kind: DependentKind::Function { writes: true },
                    schema: "public".into(),
                    name: "touch_user".into(),
                    description: "function public.touch_user(integer)".into(),
                    table: t("public", "users"),
                },
                Dependent {
                    kind: DependentKind::Function { writes: false },
                    schema: "public".into(),
                    name: "user_count".into(),
                    description: "function public.user_count()".into(),
                    table: t("public", "users"),
                },
            ],
        }
    }

    pub fn plan_with(sql: &str, migrations: &[Migration], route: Route) -> Plan {
        let targets: Vec<Target<'_>> = migrations
            .iter()
            .map(|m| Target {
                migration: m,
                route,
            })
            .collect();
        let schema = schema();
        let prefilter = prefilter::Prefilter::for_targets(
            migrations.iter().map(|m| m.table.name.as_str()),
            &schema,
        );
        plan(
            sql,
            &Context {
                targets: &targets,
                schema: &schema,
                prefilter: &prefilter,
            },
        )
    }

    pub fn rewritten(plan: Plan) -> (String, Vec<Shape>) {
        match plan {
            Plan::Rewrite { sql, shapes, .. } => (sql, shapes),
            other => panic!("expected a rewrite, got {other:?}"),
        }
    }

    #[test]
    fn statements_without_migrated_names_are_not_parsed() {
        let m = [users_migration(WriteMode::DualWrite)];
        assert_eq!(
            plan_with("SELEC garbage FROM accounts", &m, Route::New),
            Plan::Forward { actions: vec![] }
        );
    }

    #[test]
    fn postgres_decides_what_is_unparsable_and_what_is_a_read() {
        let m = [users_migration(WriteMode::DualWrite)];
        // Postgres rejects it too: the server answers with its own syntax error, nothing runs.
        assert_eq!(
            plan_with("UPDATE users SET x = 1 WHERE id IN (SELEC", &m, Route::Old),
            Plan::Forward { actions: vec![] }
        );
        // Valid for Postgres, unreadable for sqlparser: a write only sqlparser's transform covers is refused…
        let o = [orders_migration(WriteMode::DualWrite)];
        let Plan::Refuse(r) = plan_with(
            "INSERT INTO public.orders (customer, legacy_status) SELECT name, status FROM imports WHERE name ISNULL",
            &o,
            Route::Old,
        ) else {
            panic!()
        };
        assert_eq!(r.migration, "orders_status");
        assert!(
            r.detail.starts_with("pgshift cannot parse the statement"),
            "{}",
            r.detail
        );
        // … a read is Postgres's to classify, and is routed like any other.
        for locking in ["FOR NO KEY UPDATE", "FOR KEY SHARE"] {
            let sql = format!("SELECT * FROM users WHERE id = 1 {locking}");
            let plan = plan_with(&sql, &m, Route::Old);
            assert!(matches!(plan, Plan::Forward { .. }), "{plan:?}");
            assert_eq!(plan.actions()[0].what, ActionKind::ReadOld);
            let (routed, _) = rewritten(plan_with(&sql, &m, Route::New));
            assert!(
                routed.ends_with(&format!("AS users WHERE id = 1 {locking}")),
                "{routed}"
            );
        }
        // What only the old table has stays there.
        for sql in [
            "SELECT xmin FROM users WHERE id = 1",
            "SELECT u FROM users u",
            "SELECT * FROM ONLY users",
            "SELECT * FROM users TABLESAMPLE SYSTEM (10)",
        ] {
            let plan = plan_with(sql, &m, Route::New);
            assert!(matches!(plan, Plan::Forward { .. }), "{sql}: {plan:?}");
            assert_eq!(
                plan.actions()[0].what,
                ActionKind::ReadUnrewritable,
                "{sql}"
            );
        }
        let (sql, _) = rewritten(plan_with(
            "SELECT public.users.id FROM public.users -- c\n WHERE public.users.email = 'x'",
            &m,
            Route::New,
        ));
        assert_eq!(
            sql,
            "SELECT users.id FROM (SELECT id, display_name AS fullname, email, created_at FROM v2.users) AS users -- c\n WHERE users.email = 'x'"
        );
    }

    #[test]
    fn misread_statements_are_not_rewritten() {
        let m = [users_migration(WriteMode::DualWrite)];
        // Table dual writes are planned from Postgres's tree and keep the client's text.
        let (sql, _) = rewritten(plan_with(
            "INSERT INTO users (fullname, email) SELECT 'x' || id, email ISNULL FROM users",
            &m,
            Route::Old,
        ));
        assert!(
            sql.contains("SELECT 'x' || id, email ISNULL FROM users RETURNING"),
            "{sql}"
        );
        // sqlparser reads `status ISNULL` as a column alias: acting on that would store the wrong value.
        let o = [orders_migration(WriteMode::DualWrite)];
        let Plan::Refuse(r) = plan_with(
            "INSERT INTO orders (customer, legacy_status) SELECT name, status ISNULL FROM imports",
            &o,
            Route::Old,
        ) else {
            panic!()
        };
        assert_eq!(r.code(), "misread", "{}", r.detail);
        // Reads are routed from Postgres's tree: what sqlparser would misread stays as sent.
        let (sql, _) = rewritten(plan_with("SELECT email ISNULL FROM users", &m, Route::New));
        assert_eq!(
            sql,
            "SELECT email ISNULL FROM (SELECT id, display_name AS fullname, email, created_at FROM v2.users) AS users"
        );
    }

    #[test]
    fn statements_that_need_no_change_keep_their_bytes() {
        let m = [users_migration(WriteMode::DualWrite)];
        let sql = "/* a */ SELECT - -1, 'con'\n'cat', @ -5 FROM users; \
                   UPDATE users SET email = 'a' /* keep */ WHERE id = 1 ;SELECT 1 -- end";
        let (out, shapes) = rewritten(plan_with(sql, &m, Route::Old));
        assert!(
            out.starts_with("/* a */ SELECT - -1, 'con'\n'cat', @ -5 FROM users; WITH __pgshift_old AS (UPDATE users SET email = 'a' /* keep */ WHERE id = 1 RETURNING users.*)"),
            "{out}"
        );
        assert!(out.ends_with(" ;SELECT 1 -- end"), "{out}");
        assert_eq!(shapes.len(), 3);
    }

    #[test]
    fn code_that_writes_invisibly_is_refused() {
        let m = [users_migration(WriteMode::DualWrite)];
        for sql in [
            "DO $$BEGIN UPDATE users SET email = 'x'; END$$",
            "CREATE OR REPLACE FUNCTION pg_temp.testfunc() RETURNS SETOF users AS $func$ BEGIN \
             INSERT INTO \"users\" (fullname) VALUES ('a'); END $func$ LANGUAGE plpgsql; \
             SELECT * FROM pg_temp.testfunc(); DROP FUNCTION IF EXISTS pg_temp.testfunc()",
        ] {
            let Plan::Refuse(r) = plan_with(sql, &m, Route::Old) else {
                panic!("{sql}")
            };
            assert_eq!(r.code(), "opaque_code", "{}", r.detail);
        }
        let off = [users_migration(WriteMode::Off)];
        assert!(matches!(
            plan_with(
                "DO $$BEGIN UPDATE users SET email = 'x'; END$$",
                &off,
                Route::Old
            ),
            Plan::Forward { .. }
        ));
    }

    #[test]
    fn unsafe_statements_are_refused() {
        let m = [users_migration(WriteMode::DualWrite)];
        for (sql, want) in [
            (
                "MERGE INTO users u USING src s ON u.id = s.id WHEN MATCHED THEN DELETE",
                "MERGE",
            ),
            ("TRUNCATE users", "TRUNCATE"),
            ("COPY users FROM STDIN", "COPY"),
            ("UPDATE ONLY users SET email = 'x'", "ONLY"),
            (
                "WITH d AS (DELETE FROM users RETURNING id) SELECT count(*) FROM d",
                "data-modifying WITH",
            ),
            ("UPDATE users SET id = id + 1", "key column id"),
        ] {
            match plan_with(sql, &m, Route::Old) {
                Plan::Refuse(r) => assert!(r.detail.contains(want), "{sql}: {}", r.detail),
                other => panic!("{sql}: expected a refusal, got {other:?}"),
            }
        }
        assert!(matches!(
            plan_with("COPY users TO STDOUT", &m, Route::Old),
            Plan::Forward { .. }
        ));
    }

    #[test]
    fn refusal_reasons_have_codes() {
        let m = [users_migration(WriteMode::DualWrite)];
        for (sql, code) in [
            (
                "MERGE INTO users u USING s ON true WHEN MATCHED THEN DELETE",
                "merge",
            ),
            ("UPDATE users SET id = 2", "key_update"),
            ("UPDATE ONLY public.users AS u SET email = 'x'", "only"),
            ("DO $$BEGIN DELETE FROM users; END$$", "opaque_code"),
        ] {
            let Plan::Refuse(r) = plan_with(sql, &m, Route::Old) else {
                panic!("{sql}")
            };
            assert_eq!(r.code(), code, "{}", r.detail);
        }
    }

    #[test]
    fn writes_out_of_sight_are_refused() {
        let m = [users_migration(WriteMode::DualWrite)];
        for sql in [
            "UPDATE active_users SET email = 'x' WHERE id = 1",
            "INSERT INTO public.active_users (fullname) VALUES ('v')",
            "SELECT touch_user(47)",
            "CALL public.touch_user(1)",
            "SELECT 1; SELECT * FROM orders WHERE touch_user(id) IS NULL",
        ] {
            let Plan::Refuse(r) = plan_with(sql, &m, Route::Old) else {
                panic!("{sql}")
            };
            assert_eq!(r.code(), "invisible_write", "{}", r.detail);
            assert!(r.detail.contains("public.users"), "{}", r.detail);
        }
        for sql in [
            "SELECT * FROM active_users",
            "SELECT user_count()",
            "SELECT touch_user FROM other_table",
        ] {
            assert!(
                matches!(plan_with(sql, &m, Route::Old), Plan::Forward { .. }),
                "{sql}"
            );
        }
        let off = [users_migration(WriteMode::Off)];
        assert!(matches!(
            plan_with("SELECT touch_user(47)", &off, Route::Old),
            Plan::Forward { .. }
        ));
    }

    #[test]
    fn explain_and_prepare_of_writes() {
        let m = [users_migration(WriteMode::DualWrite)];
        assert!(matches!(
            plan_with("EXPLAIN UPDATE users SET email = 'x'", &m, Route::Old),
            Plan::Forward { .. }
        ));
        for (sql, code) in [
            (
                "EXPLAIN (ANALYZE, COSTS OFF) UPDATE users SET email = 'x'",
                "explain_analyze",
            ),
            (
                "PREPARE p (text) AS DELETE FROM users WHERE email = $1",
                "prepare",
            ),
        ] {
            let Plan::Refuse(r) = plan_with(sql, &m, Route::Old) else {
                panic!("{sql}")
            };
            assert_eq!(r.code(), code, "{}", r.detail);
        }
    }

    #[test]
    fn cte_named_like_the_table_shadows_it() {
        let m = [users_migration(WriteMode::DualWrite)];
        let plan = plan_with(
            "WITH users AS (SELECT 1 AS id) SELECT * FROM users",
            &m,
            Route::New,
        );
        assert_eq!(plan, Plan::Forward { actions: vec![] });
    }
}
