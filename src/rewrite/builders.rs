//! The SQL that keeps the two sides equal, as text: column lists through the mapping, the mirror upsert, the
//! keyed delete, and the data-modifying WITH that runs a client's write together with its mirror. The dual
//! write uses them per statement; backfill and verify use the same ones over ranges of keys, so the mapping
//! has one definition.

use super::shape::{DmlTag, Shape};
use super::sqltext::quote_ident;
use super::{RefusalReason, Schema, Unrewritable};
use crate::config::migration::{Migration, TableName};

pub fn table_text(t: &TableName) -> String {
    format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name))
}

pub fn columns_of<'s>(
    schema: &'s Schema,
    table: &TableName,
) -> Result<&'s Vec<String>, Unrewritable> {
    schema.columns.get(table).ok_or_else(|| {
        RefusalReason::ColumnsUnknown.because(format!(
            "the columns of {table} are not known in this session (does the table exist?)"
        ))
    })
}

/// The old table's columns, each with the new column it is written to and the expression (over old columns)
/// that computes it. Old columns that the new table does not have are left out.
pub fn mirror_columns(
    m: &Migration,
    schema: &Schema,
) -> Result<Vec<(String, String)>, Unrewritable> {
    let new_table = m.new_table.as_ref().expect("table kind has new_table");
    let old_cols = columns_of(schema, &m.table)?;
    let new_cols = columns_of(schema, new_table)?;
    let mut out = Vec::new();
    for col in old_cols {
        let mapped = m.columns.iter().find(|c| c.old.eq_ignore_ascii_case(col));
        let (new_name, expr) = match mapped {
            Some(c) => (
                c.new.to_lowercase(),
                c.up.clone().unwrap_or_else(|| quote_ident(col)),
            ),
            None => (col.clone(), quote_ident(col)),
        };
        if new_cols.contains(&new_name) {
            out.push((new_name, expr));
        } else if mapped.is_some() {
            return Err(RefusalReason::Other.because(format!(
                "column {new_name} of the column map does not exist in {new_table}"
            )));
        }
    }
    Ok(out)
}

pub fn new_key(m: &Migration) -> Vec<String> {
    m.key
        .iter()
        .map(|k| {
            m.columns
                .iter()
                .find(|c| c.old.eq_ignore_ascii_case(k))
                .map(|c| c.new.to_lowercase())
                .unwrap_or_else(|| k.clone())
        })
        .collect()
}

/// `INSERT INTO table (cols) SELECT exprs FROM source ON CONFLICT (key) DO UPDATE SET c = EXCLUDED.c, …`:
/// the mirror that makes the other side hold exactly the rows in `source`.
pub fn upsert_from(table: &str, cols: &[(String, String)], source: &str, key: &[String]) -> String {
    let names: Vec<String> = cols.iter().map(|(n, _)| quote_ident(n)).collect();
    let exprs: Vec<&str> = cols.iter().map(|(_, e)| e.as_str()).collect();
    let updates: Vec<String> = cols
        .iter()
        .filter(|(n, _)| !key.contains(n))
        .map(|(n, _)| format!("{0} = EXCLUDED.{0}", quote_ident(n)))
        .collect();
    let conflict = if updates.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    let key_list: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
    format!(
        "INSERT INTO {table} ({}) SELECT {} FROM {source} ON CONFLICT ({}) {conflict}",
        names.join(", "),
        exprs.join(", "),
        key_list.join(", ")
    )
}

/// `DELETE FROM table AS __pgshift_t USING source WHERE __pgshift_t.k = source.k …`, over (table key, source key).
pub fn delete_matching(table: &str, source: &str, key_pairs: &[(String, String)]) -> String {
    let matches: Vec<String> = key_pairs
        .iter()
        .map(|(t, s)| {
            format!(
                "__pgshift_t.{} = {source}.{}",
                quote_ident(t),
                quote_ident(s)
            )
        })
        .collect();
    format!(
        "DELETE FROM {table} AS __pgshift_t USING {source} WHERE {}",
        matches.join(" AND ")
    )
}

/// `WITH [client CTEs,] <primary>, <mirror> SELECT <client RETURNING list> FROM <from>`, and its reply shape.
/// `returning` is the client's list as the outer SELECT reads it ([`splice::outer_returning`]).
pub fn assemble(
    client_ctes: Option<(bool, Vec<String>)>,
    ours: [String; 2],
    returning: Option<String>,
    from: &str,
    tag: DmlTag,
) -> (String, Shape) {
    let mut ctes = Vec::new();
    let mut recursive = false;
    if let Some((r, client)) = client_ctes {
        recursive = r;
        ctes.extend(client);
    }
    ctes.extend(ours);
    let list = returning.as_deref().unwrap_or_default();
    let text = format!(
        "WITH {}{} SELECT {list}{}FROM {from}",
        if recursive { "RECURSIVE " } else { "" },
        ctes.join(", "),
        if list.is_empty() { "" } else { " " },
    );
    let shape = Shape::Dml {
        tag,
        returning: returning.is_some(),
        origins: None,
    };
    (text, shape)
}
