//! The catalog lookup a session runs on its own upstream connection: the columns of every migrated table
//! (old and new, in attnum order, with their types as `format_type` prints them) and what each migrated table's bare name resolves to under the session's
//! search_path. pgshift has no credentials of its own, so it asks through the client's session, with the
//! client's privileges and search_path.

use super::sqltext::quote_literal;
use super::{Dependent, DependentKind, Schema};
use crate::config::migration::{Migration, TableName};

/// The query, or `None` if there is nothing to look up.
pub fn query(migrations: &[&Migration]) -> Option<String> {
    let mut tables: Vec<&TableName> = Vec::new();
    for m in migrations {
        tables.push(&m.table);
        tables.extend(m.new_table.as_ref());
    }
    if tables.is_empty() {
        return None;
    }
    let pairs: Vec<String> = tables
        .iter()
        .map(|t| format!("({}, {})", quote_literal(&t.schema), quote_literal(&t.name)))
        .collect();
    let olds: Vec<String> = migrations
        .iter()
        .map(|m| {
            format!(
                "({}, {})",
                quote_literal(&m.table.schema),
                quote_literal(&m.table.name)
            )
        })
        .collect();
    let mut names: Vec<String> = migrations
        .iter()
        .map(|m| quote_literal(&m.table.name))
        .collect();
    names.dedup();
    let names: Vec<String> = names.into_iter().map(|n| format!("({n})")).collect();
    Some(format!(
        "SELECT kind, a, b, c, t, d, o FROM (\
         SELECT 'c' AS kind, n.nspname::text AS a, c.relname::text AS b, a.attname::text AS c, a.attnum::int AS pos, \
         pg_catalog.format_type(a.atttypid, a.atttypmod) AS t, \
         CASE WHEN a.attidentity <> '' OR a.attgenerated <> '' THEN 'pg_catalog.nextval(NULL)' \
         ELSE pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) END AS d, c.oid::text || '.' || a.attnum::text AS o \
         FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE a.attnum > 0 AND NOT a.attisdropped AND (n.nspname::text, c.relname::text) IN (VALUES {}) \
         UNION ALL \
         SELECT 'r', v.name, n.nspname::text, NULL, 0, NULL, NULL, NULL FROM (VALUES {}) AS v(name) \
         JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(pg_catalog.quote_ident(v.name)) \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         UNION ALL {DEPENDENTS}\
         ) AS pgshift_catalog ORDER BY kind, a, b, pos",
        pairs.join(", "),
        names.join(", "),
        DEPENDENTS = DEPENDENTS.replace("{OLDS}", &olds.join(", ")),
    ))
}

/// What else in the database reads or writes the old tables, where pgshift cannot see it: views and rules that
/// depend on them (`pg_depend`), triggers on other tables and functions whose code names them (by their text:
/// `prosrc`). Rows: kind (`v` view, `u` rule, `g` trigger, `f` function that writes, `F` one that only
/// reads), the object's schema and name (for a rule or trigger: the table it is on), a description, and the
/// migrated table's schema and name.
const DEPENDENTS: &str = "\
SELECT CASE WHEN rw.rulename = '_RETURN' THEN 'v' ELSE 'u' END, vn.nspname::text, v.relname::text, \
  CASE WHEN rw.rulename = '_RETURN' THEN 'view ' ELSE 'rule ' || pg_catalog.quote_ident(rw.rulename) || ' on ' END \
  || pg_catalog.quote_ident(vn.nspname) || '.' || pg_catalog.quote_ident(v.relname), 0, tn.nspname::text, t.relname::text, NULL \
FROM pg_catalog.pg_depend dep JOIN pg_catalog.pg_rewrite rw ON rw.oid = dep.objid \
JOIN pg_catalog.pg_class v ON v.oid = rw.ev_class JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace \
JOIN pg_catalog.pg_class t ON t.oid = dep.refobjid JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace \
WHERE dep.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND dep.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
  AND v.oid <> t.oid AND (tn.nspname::text, t.relname::text) IN (VALUES {OLDS}) \
GROUP BY 1, 2, 3, 4, 6, 7, 8 \
UNION ALL \
SELECT 'g', cn.nspname::text, c.relname::text, 'trigger ' || pg_catalog.quote_ident(tg.tgname) || ' on ' \
  || pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(c.relname) || ' (function ' \
  || p.oid::pg_catalog.regprocedure::text || ')', 0, tn.nspname::text, t.relname::text, NULL \
FROM pg_catalog.pg_trigger tg JOIN pg_catalog.pg_class c ON c.oid = tg.tgrelid \
JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace JOIN pg_catalog.pg_proc p ON p.oid = tg.tgfoid \
CROSS JOIN pg_catalog.pg_class t JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace \
WHERE NOT tg.tgisinternal AND c.oid <> t.oid AND (tn.nspname::text, t.relname::text) IN (VALUES {OLDS}) \
  AND pg_catalog.strpos(pg_catalog.lower(p.prosrc), pg_catalog.lower(t.relname::text)) > 0 \
  AND p.prosrc OPERATOR(pg_catalog.~*) '\\m(insert|update|delete|merge|truncate|copy)\\M' \
UNION ALL \
SELECT CASE WHEN p.prosrc OPERATOR(pg_catalog.~*) '\\m(insert|update|delete|merge|truncate|copy)\\M' THEN 'f' ELSE 'F' END, \
  pn.nspname::text, p.proname::text, CASE p.prokind WHEN 'p' THEN 'procedure ' ELSE 'function ' END \
  || p.oid::pg_catalog.regprocedure::text, 0, tn.nspname::text, t.relname::text, NULL \
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace \
CROSS JOIN pg_catalog.pg_class t JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace \
WHERE pn.nspname NOT IN ('pg_catalog', 'information_schema') AND p.prolang <> 13 AND p.prolang <> 12 \
  AND p.prorettype <> 'pg_catalog.trigger'::pg_catalog.regtype \
  AND (tn.nspname::text, t.relname::text) IN (VALUES {OLDS}) \
  AND pg_catalog.strpos(pg_catalog.lower(p.prosrc), pg_catalog.lower(t.relname::text)) > 0 \
";

/// Builds the schema from the query's rows (text format).
pub fn parse(rows: &[Vec<Option<String>>]) -> Schema {
    let mut schema = Schema::default();
    for row in rows {
        let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        match field(0).as_str() {
            "c" => {
                let table = TableName {
                    schema: field(1),
                    name: field(2),
                };
                schema
                    .types
                    .entry(table.clone())
                    .or_default()
                    .push(field(4));
                // Identity and generated columns come back as an expression that is never repeatable.
                let default = row.get(5).cloned().flatten();
                schema
                    .defaults
                    .entry(table.clone())
                    .or_default()
                    .push(default);
                let origin = row.get(6).cloned().flatten().and_then(|o| {
                    let (oid, attnum) = o.split_once('.')?;
                    Some(super::shape::Origin {
                        table_oid: oid.parse().ok()?,
                        attnum: attnum.parse().ok()?,
                    })
                });
                schema
                    .origins
                    .entry(table.clone())
                    .or_default()
                    .push(origin);
                schema.columns.entry(table).or_default().push(field(3));
            }
            kind @ ("v" | "u" | "g" | "f" | "F") => schema.dependents.push(Dependent {
                kind: match kind {
                    "v" => DependentKind::View,
                    "u" => DependentKind::Rule,
                    "g" => DependentKind::Trigger,
                    "f" => DependentKind::Function { writes: true },
                    _ => DependentKind::Function { writes: false },
                },
                schema: field(1),
                name: field(2),
                description: field(3),
                table: TableName {
                    schema: field(4),
                    name: field(5),
                },
            }),
            "r" => {
                schema.unqualified.insert(
                    field(1),
                    TableName {
                        schema: field(2),
                        name: field(1),
                    },
                );
            }
            _ => {}
        }
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::migration::WriteMode;
    use crate::rewrite::tests::users_migration;

    #[test]
    fn builds_the_schema() {
        let m = users_migration(WriteMode::DualWrite);
        let sql = query(&[&m]).unwrap();
        assert!(
            sql.contains("IN (VALUES ('public', 'users'), ('v2', 'users'))"),
            "{sql}"
        );
        assert!(sql.contains("FROM (VALUES ('users')) AS v(name)"), "{sql}");
        let row = |k: &str, a: &str, b: &str, c: Option<&str>, t: Option<&str>, d: Option<&str>| {
            vec![
                Some(k.to_owned()),
                Some(a.to_owned()),
                Some(b.to_owned()),
                c.map(str::to_owned),
                t.map(str::to_owned),
                d.map(str::to_owned),
            ]
        };
        let schema = parse(&[
            row(
                "c",
                "public",
                "users",
                Some("id"),
                Some("bigint"),
                Some("nextval('users_id_seq'::regclass)"),
            ),
            row("c", "public", "users", Some("fullname"), Some("text"), None),
            row("r", "users", "public", None, None, None),
        ]);
        let t = TableName {
            schema: "public".into(),
            name: "users".into(),
        };
        assert_eq!(schema.columns[&t], vec!["id", "fullname"]);
        assert_eq!(schema.types[&t], vec!["bigint", "text"]);
        assert_eq!(
            schema.defaults[&t],
            vec![Some("nextval('users_id_seq'::regclass)".to_owned()), None]
        );
        assert_eq!(schema.unqualified["users"], t);
        assert_eq!(query(&[]), None);
    }
}
