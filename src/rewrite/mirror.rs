//! Table-kind dual writes, planned from Postgres's own parse tree and spliced into the client's text.
//!
//! The statement runs as written inside a data-modifying CTE; its rows (the post-image, with generated ids and
//! defaults as stored) feed an upsert or keyed delete on the new table in the same statement. Every decision
//! (which table, which alias, whether keys change, what RETURNING reads) is taken on Postgres's reading, and
//! the client's bytes are kept, so no expression of the client's is ever re-printed or misread.

use super::builders::{
    columns_of, delete_matching, mirror_columns, new_key, table_text, upsert_from,
};
use super::refusal::{RefusalReason, Unrewritable};
use super::shape::{DmlTag, Shape};
use super::sqltext::quote_ident;
use super::{pg, refuse, splice, Context, Refusal, Schema, Source, Target};
use crate::config::migration::{MigrationKind, WriteMode};
use pg_query::protobuf::{self, OnConflictAction};
use pg_query::NodeEnum;

const OLD_CTE: &str = "__pgshift_old";
const NEW_CTE: &str = "__pgshift_new";
/// The never-evaluated column that makes Postgres check the client's RETURNING list in RETURNING context.
const CHECK_COLUMN: &str = "__pgshift_check";

/// The statement's DML parts, as Postgres parsed them.
pub(super) struct Dml<'n> {
    pub tag: DmlTag,
    pub relation: &'n protobuf::RangeVar,
    pub with: Option<&'n protobuf::WithClause>,
    pub returning: bool,
    /// FROM of an UPDATE, USING of a DELETE.
    pub other_tables: bool,
    /// Columns the statement assigns, with the value assigned (UPDATE SET, ON CONFLICT DO UPDATE SET).
    assigned: Vec<(&'n str, Option<&'n protobuf::Node>)>,
    /// The ON CONFLICT inference columns, when the statement has `DO UPDATE`.
    conflict: Option<Vec<&'n str>>,
}

/// Each target-list entry's column name and value.
fn targets(list: &[protobuf::Node]) -> Vec<(&str, Option<&protobuf::Node>)> {
    list.iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::ResTarget(t)) => Some((t.name.as_str(), t.val.as_deref())),
            _ => None,
        })
        .collect()
}

pub(super) fn dml(node: &NodeEnum) -> Option<Dml<'_>> {
    match node {
        NodeEnum::InsertStmt(s) => {
            let (assigned, conflict) = match s.on_conflict_clause.as_deref() {
                Some(oc) if oc.action() == OnConflictAction::OnconflictUpdate => {
                    let infer: Vec<&str> = oc
                        .infer
                        .as_ref()
                        .map(|i| {
                            i.index_elems
                                .iter()
                                .filter_map(|e| match &e.node {
                                    Some(NodeEnum::IndexElem(ie)) => Some(ie.name.as_str()),
                                    _ => None,
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    (targets(&oc.target_list), Some(infer))
                }
                _ => (Vec::new(), None),
            };
            Some(Dml {
                tag: DmlTag::Insert,
                relation: s.relation.as_ref()?,
                with: s.with_clause.as_ref(),
                returning: s.returning_clause.is_some(),
                other_tables: false,
                assigned,
                conflict,
            })
        }
        NodeEnum::UpdateStmt(s) => Some(Dml {
            tag: DmlTag::Update,
            relation: s.relation.as_ref()?,
            with: s.with_clause.as_ref(),
            returning: s.returning_clause.is_some(),
            other_tables: !s.from_clause.is_empty(),
            assigned: targets(&s.target_list),
            conflict: None,
        }),
        NodeEnum::DeleteStmt(s) => Some(Dml {
            tag: DmlTag::Delete,
            relation: s.relation.as_ref()?,
            with: s.with_clause.as_ref(),
            returning: s.returning_clause.is_some(),
            other_tables: !s.using_clause.is_empty(),
            assigned: Vec::new(),
            conflict: None,
        }),
        _ => None,
    }
}

/// The migrated table a RangeVar names, if any.
pub(super) fn resolve<'c, 'a>(
    ctx: &'c Context<'a>,
    r: &protobuf::RangeVar,
) -> Option<&'c Target<'a>> {
    let mut parts = Vec::new();
    if !r.schemaname.is_empty() {
        parts.push(r.schemaname.clone());
    }
    parts.push(r.relname.clone());
    ctx.resolve_parts(&parts, &[])
}

/// A planned dual write: the statement to send and how to shape its replies, or why it is refused.
pub(super) type Planned = Result<(String, Shape), Refusal>;

/// `Some` for an INSERT, UPDATE or DELETE of a table-kind migration in `dual_write`: its rewrite or refusal.
pub(super) fn plan<'c, 'a>(
    source: &Source<'_>,
    ctx: &'c Context<'a>,
) -> Option<(&'c Target<'a>, Planned)> {
    let d = dml(source.node)?;
    let target = resolve(ctx, d.relation)?;
    let m = target.migration;
    if m.kind != MigrationKind::Table || m.writes != WriteMode::DualWrite {
        return None;
    }
    let planned = check(&d, source, ctx, target)
        .and_then(|()| build(&d, source, target, ctx.schema))
        .map_err(|reason| refuse(target, reason));
    Some((target, planned))
}

/// `Some` for a DELETE of a column-kind migration's table, or an UPDATE that writes neither its old nor its
/// new columns: the row's columns stay consistent without any change, so the statement goes as sent.
pub(super) fn column_passthrough<'c, 'a>(
    source: &Source<'_>,
    ctx: &'c Context<'a>,
) -> Option<Result<&'c Target<'a>, Refusal>> {
    let d = dml(source.node)?;
    let target = resolve(ctx, d.relation)?;
    let m = target.migration;
    if m.kind != MigrationKind::Column || m.writes == WriteMode::Off {
        return None;
    }
    let touches = |col: &str| {
        m.columns
            .iter()
            .any(|c| c.old.eq_ignore_ascii_case(col) || c.new.eq_ignore_ascii_case(col))
    };
    match d.tag {
        DmlTag::Delete => {}
        DmlTag::Update if !d.assigned.iter().any(|(col, _)| touches(col)) => {}
        _ => return None,
    }
    if let Err(reason) = cte_writes(&d, ctx) {
        return Some(Err(refuse(target, reason)));
    }
    Some(Ok(target))
}

/// Writes elsewhere in the statement (data-modifying WITH queries) to a table whose writes are mirrored would
/// not be mirrored.
pub(super) fn cte_writes(d: &Dml<'_>, ctx: &Context<'_>) -> Result<(), Unrewritable> {
    let Some(with) = d.with else { return Ok(()) };
    for r in pg::Tree::of(with).written() {
        let written = ctx.resolve_parts(&r.parts(), &[]);
        if written.is_some_and(|t| t.migration.writes != WriteMode::Off) {
            return Err(RefusalReason::ModifyingCte.because(
                "a data-modifying WITH query that writes a migrated table is not supported",
            ));
        }
    }
    Ok(())
}

fn column_ref_fields(c: &protobuf::ColumnRef) -> Vec<Option<&str>> {
    c.fields
        .iter()
        .map(|f| match &f.node {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect()
}

/// What the dual write cannot mirror faithfully.
pub(super) fn check(
    d: &Dml<'_>,
    source: &Source<'_>,
    ctx: &Context<'_>,
    target: &Target<'_>,
) -> Result<(), Unrewritable> {
    let m = target.migration;
    if !d.relation.inh {
        return Err(RefusalReason::Only
            .because("statements with ONLY on a migrated table are not supported"));
    }
    cte_writes(d, ctx)?;
    // Mirroring is keyed on the key columns: changing them would orphan the mirrored row. `SET k = EXCLUDED.k`
    // where the conflict is on k changes nothing (ORMs' upserts send it).
    for (col, value) in &d.assigned {
        if !m.key.iter().any(|k| k == col) {
            continue;
        }
        let no_op = d.conflict.as_ref().is_some_and(|infer| infer.contains(col))
            && matches!(value.and_then(|v| v.node.as_ref()), Some(NodeEnum::ColumnRef(c))
                if column_ref_fields(c) == [Some("excluded"), Some(*col)]);
        if !no_op {
            return Err(RefusalReason::KeyUpdate.because(format!(
                "an UPDATE of key column {col} is not supported: the mirrored row is found by its key"
            )));
        }
    }
    // With FROM or USING, the rows handed on carry only the target's columns.
    if d.other_tables && d.returning {
        let old_cols = columns_of(ctx.schema, &m.table)?;
        let alias = splice::target_alias(source.node)?;
        let returning = match source.node {
            NodeEnum::UpdateStmt(s) => s.returning_clause.as_ref(),
            NodeEnum::DeleteStmt(s) => s.returning_clause.as_ref(),
            _ => None,
        };
        let bad = || {
            Err(RefusalReason::Returning.because("RETURNING may only name the updated table's own columns when the statement has FROM or USING"))
        };
        for item in returning.iter().flat_map(|r| &r.exprs) {
            let tree = pg::Tree::of(item);
            if !tree.all("SubLink").is_empty() {
                return bad();
            }
            for c in tree.all("ColumnRef") {
                match pg::name_fields(c.get("fields")).as_slice() {
                    [Some(col)] if old_cols.iter().any(|o| o == col) => {}
                    [Some(a), _] if *a == alias => {}
                    _ => return bad(),
                }
            }
        }
    }
    Ok(())
}

fn build(
    d: &Dml<'_>,
    source: &Source<'_>,
    target: &Target<'_>,
    schema: &Schema,
) -> Result<(String, Shape), Unrewritable> {
    let m = target.migration;
    let new_table = table_text(m.new_table.as_ref().expect("table kind has new_table"));
    let old_cols = columns_of(schema, &m.table)?;
    let parts = splice::dml_parts(source.text, source.offset, source.node)?;
    let text = source.text;
    let pg_alias = splice::target_alias(source.node)?;
    let outer = splice::returning_for(source, m, old_cols, true)?;
    let alias = quote_ident(&pg_alias);
    let mut inner_returning = vec![format!("{alias}.*")];
    inner_returning.extend(outer.extras.iter().cloned());
    // The client's RETURNING expressions stay in the statement's own RETURNING, where Postgres rejects what it
    // rejects there (aggregates, window and set-returning functions), but in a branch that is never evaluated:
    // the values come from the outer SELECT, once per row.
    if !parts.returning_exprs.is_empty() {
        let exprs: Vec<&str> = parts
            .returning_exprs
            .iter()
            .map(|r| &text[r.clone()])
            .collect();
        inner_returning.push(format!(
            "CASE WHEN false THEN ROW({}) END AS {CHECK_COLUMN}",
            exprs.join(", ")
        ));
    }
    let inner = format!(
        "{} RETURNING {}",
        &text[parts.body.clone()],
        inner_returning.join(", ")
    );
    let key = new_key(m);
    let mirror = match d.tag {
        DmlTag::Insert | DmlTag::Update => {
            let cols = mirror_columns(m, schema)?;
            upsert_from(&new_table, &cols, OLD_CTE, &key)
        }
        DmlTag::Delete => {
            let pairs: Vec<(String, String)> =
                key.iter().cloned().zip(m.key.iter().cloned()).collect();
            delete_matching(&new_table, OLD_CTE, &pairs)
        }
    };
    let client_ctes = parts
        .ctes
        .map(|r| format!("{}, ", &text[r]))
        .unwrap_or_default();
    let list = outer.list;
    // `*` in the client's list is expanded to the old columns, so the rows' extra columns stay hidden.
    let sql = format!(
        "WITH {}{client_ctes}{OLD_CTE} AS ({inner}), {NEW_CTE} AS ({mirror}) SELECT {list}{}FROM {OLD_CTE} AS {alias}",
        if parts.recursive { "RECURSIVE " } else { "" },
        if list.is_empty() { "" } else { " " },
    );
    Ok((
        sql,
        Shape::Dml {
            tag: d.tag,
            returning: d.returning,
            origins: None,
        },
    ))
}
