//! The SQL of backfill, verify and repair for one migration, from the rewriter's own mapping: the same
//! `up`/`down` expressions and column lists the dual write uses ([`builders::mirror_columns`],
//! [`read_route::old_shape_columns`]), so there is one definition of what the other side must hold.
//!
//! Pure text: every statement takes its batch size and keys as parameters (keys as text, cast to the key's
//! type), so the loop around it only binds values.

use crate::config::migration::{Migration, MigrationKind, WriteMode};
use crate::rewrite::builders::{mirror_columns, new_key, table_text};
use crate::rewrite::read_route::old_shape_columns;
use crate::rewrite::sqltext::quote_ident;
use crate::rewrite::{RefusalReason, Schema, Unrewritable};

/// Which side is the source of truth: old while the dual write runs, new under `new_primary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    OldToNew,
    NewToOld,
}

impl Direction {
    pub fn of(m: &Migration) -> Direction {
        match m.writes {
            WriteMode::NewPrimary => Direction::NewToOld,
            _ => Direction::OldToNew,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Direction::OldToNew => "old_to_new",
            Direction::NewToOld => "new_to_old",
        }
    }
}

/// One column the target must hold: its name, the expression over a source row that gives it, its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub expr: String,
    pub ty: String,
}

/// What copying one migration means, in SQL terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub kind: MigrationKind,
    pub direction: Direction,
    pub source: String,
    /// The same table as `source` for the column kind.
    pub target: String,
    /// Key columns of the source, with their types, in key order.
    pub source_key: Vec<(String, String)>,
    /// The same key on the target.
    pub target_key: Vec<String>,
    pub columns: Vec<Column>,
}

const BATCH: &str = "__pgshift_batch";

fn k(i: usize) -> String {
    format!("__pgshift_k{i}")
}

fn c(i: usize) -> String {
    format!("__pgshift_c{i}")
}

impl Mapping {
    pub fn of(m: &Migration, schema: &Schema) -> Result<Mapping, Unrewritable> {
        let direction = Direction::of(m);
        let type_of = |table: &crate::config::migration::TableName, col: &str| {
            schema
                .type_of(table, col)
                .map(str::to_owned)
                .ok_or_else(|| {
                    RefusalReason::ColumnsUnknown
                        .because(format!("the type of {table}.{col} is not known"))
                })
        };
        let old = &m.table;
        let (source, target, source_key, target_key, columns) = match (m.kind, direction) {
            (MigrationKind::Table, dir) => {
                let new = m.new_table.as_ref().expect("table kind has new_table");
                let new_keys = new_key(m);
                let (src, tgt, src_key, tgt_key, pairs) = match dir {
                    Direction::OldToNew => (
                        old,
                        new,
                        m.key.clone(),
                        new_keys,
                        mirror_columns(m, schema)?,
                    ),
                    Direction::NewToOld => (
                        new,
                        old,
                        new_keys,
                        m.key.clone(),
                        old_shape_columns(m, schema)?,
                    ),
                };
                let columns = pairs
                    .into_iter()
                    .map(|(name, expr)| {
                        Ok(Column {
                            ty: type_of(tgt, &name)?,
                            name,
                            expr,
                        })
                    })
                    .collect::<Result<Vec<_>, Unrewritable>>()?;
                (src, tgt, src_key, tgt_key, columns)
            }
            (MigrationKind::Column, dir) => {
                let columns = m
                    .columns
                    .iter()
                    .map(|map| {
                        let (name, from, expr) = match dir {
                            Direction::OldToNew => (&map.new, &map.old, &map.up),
                            Direction::NewToOld => (&map.old, &map.new, &map.down),
                        };
                        let name = name.to_lowercase();
                        let expr = expr.as_ref().map_or_else(
                            || quote_ident(&from.to_lowercase()),
                            |e| format!("({e})"),
                        );
                        Ok(Column {
                            ty: type_of(old, &name)?,
                            name,
                            expr,
                        })
                    })
                    .collect::<Result<Vec<_>, Unrewritable>>()?;
                (old, old, m.key.clone(), m.key.clone(), columns)
            }
        };
        let source_key = source_key
            .into_iter()
            .map(|key| type_of(source, &key).map(|ty| (key, ty)))
            .collect::<Result<Vec<_>, Unrewritable>>()?;
        Ok(Mapping {
            kind: m.kind,
            direction,
            source: table_text(source),
            target: table_text(target),
            source_key,
            target_key,
            columns,
        })
    }

    /// A short hash of everything that decides what the target holds: a checkpoint taken under another
    /// mapping is not resumed.
    pub fn fingerprint(&self) -> String {
        let text = format!("{self:?}");
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in text.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{hash:016x}")
    }

    fn keys(&self) -> Vec<String> {
        self.source_key
            .iter()
            .map(|(k, _)| quote_ident(k))
            .collect()
    }

    /// `ROW(k1, k2) > ROW(CAST($n::text AS t1), …)` over `columns` (the source's key, or the target's), or
    /// `true` for the first batch. Parameters from `$first`.
    fn after(&self, columns: &[String], first: usize, resume: bool) -> String {
        if !resume {
            return "true".to_owned();
        }
        format!("ROW({}) > ROW({})", columns.join(", "), self.bound(first))
    }

    /// `CAST($first::text AS t1), CAST($first+1::text AS t2), …`: a key given as text parameters.
    fn bound(&self, first: usize) -> String {
        self.source_key
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| format!("CAST(${}::text AS {ty})", first + i))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `ARRAY[k0::text, …]` of the last row of `from` in key order.
    fn last_key(&self, from: &str) -> String {
        let n = self.source_key.len();
        let texts: Vec<String> = (0..n).map(|i| format!("{}::text", k(i))).collect();
        let order: Vec<String> = (0..n).map(|i| format!("{} DESC", k(i))).collect();
        format!(
            "(SELECT ARRAY[{}] FROM {from} ORDER BY {} LIMIT 1)",
            texts.join(", "),
            order.join(", ")
        )
    }

    fn key_aliases(&self, qualifier: &str) -> String {
        self.keys()
            .iter()
            .enumerate()
            .map(|(i, key)| format!("{qualifier}{key} AS {}", k(i)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `INSERT INTO target … SELECT exprs FROM from ON CONFLICT (key) DO UPDATE … WHERE changed`: writes
    /// only rows that differ, so a second run changes nothing.
    fn upsert(&self, from: &str) -> String {
        let names: Vec<String> = self.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let exprs: Vec<&str> = self.columns.iter().map(|c| c.expr.as_str()).collect();
        let key: Vec<String> = self.target_key.iter().map(|k| quote_ident(k)).collect();
        let rest: Vec<&String> = names.iter().filter(|n| !key.contains(n)).collect();
        let action = if rest.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            let sets: Vec<String> = rest.iter().map(|n| format!("{n} = EXCLUDED.{n}")).collect();
            let mine: Vec<String> = rest.iter().map(|n| format!("__pgshift_t.{n}")).collect();
            let theirs: Vec<String> = rest.iter().map(|n| format!("EXCLUDED.{n}")).collect();
            format!(
                "DO UPDATE SET {} WHERE ROW({}) IS DISTINCT FROM ROW({})",
                sets.join(", "),
                mine.join(", "),
                theirs.join(", ")
            )
        };
        format!(
            "INSERT INTO {} AS __pgshift_t ({}) SELECT {} FROM {from} ON CONFLICT ({}) {action}",
            self.target,
            names.join(", "),
            exprs.join(", "),
            key.join(", ")
        )
    }

    /// `UPDATE table SET c = expr … FROM keys WHERE key matches AND changed` (column kind).
    fn update_from(&self, from: &str) -> String {
        let sets: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{} = {}", quote_ident(&c.name), c.expr))
            .collect();
        let matches: Vec<String> = self
            .keys()
            .iter()
            .enumerate()
            .map(|(i, key)| format!("__pgshift_t.{key} = {from}.{}", k(i)))
            .collect();
        format!(
            "UPDATE {} AS __pgshift_t SET {} FROM {from} WHERE {} AND {}",
            self.target,
            sets.join(", "),
            matches.join(" AND "),
            self.differs("__pgshift_t.")
        )
    }

    /// `ROW(c, …) IS DISTINCT FROM ROW(CAST((expr) AS type), …)` for the column kind, over one row.
    fn differs(&self, qualifier: &str) -> String {
        let mine: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{qualifier}{}", quote_ident(&c.name)))
            .collect();
        let wanted: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("CAST(({}) AS {})", c.expr, c.ty))
            .collect();
        format!(
            "ROW({}) IS DISTINCT FROM ROW({})",
            mine.join(", "),
            wanted.join(", ")
        )
    }

    /// One backfill batch: the next `$1` source rows after the key in `$2…` (none when `resume` is false),
    /// written to the target as the dual write would, in one statement. Returns (rows read, rows written,
    /// last key as text[]).
    ///
    /// Source rows are locked `FOR SHARE` (table kind) and the column kind's UPDATE locks what it writes, so
    /// a concurrent update or delete through pgshift either commits before (and the batch reads its result:
    /// a deleted row is skipped, never resurrected) or waits for the batch and then mirrors over it.
    pub fn batch_sql(&self, resume: bool) -> String {
        let keys = self.keys();
        let after = self.after(&keys, 2, resume);
        let order = keys.join(", ");
        let (batch, write) = match self.kind {
            MigrationKind::Table => (
                format!(
                    "SELECT *, {} FROM {} WHERE {after} ORDER BY {order} LIMIT $1 FOR SHARE",
                    self.key_aliases(""),
                    self.source
                ),
                self.upsert(BATCH),
            ),
            MigrationKind::Column => (
                format!(
                    "SELECT {} FROM {} WHERE {after} ORDER BY {order} LIMIT $1",
                    self.key_aliases(""),
                    self.source
                ),
                self.update_from(BATCH),
            ),
        };
        format!(
            "WITH {BATCH} AS MATERIALIZED ({batch}), __pgshift_written AS ({write} RETURNING 1) \
             SELECT (SELECT count(*) FROM {BATCH}), (SELECT count(*) FROM __pgshift_written), {}",
            self.last_key(BATCH)
        )
    }

    /// Target rows in a key range whose source row does not exist, locked (table kind). The range is after
    /// the key in the first parameters (when `lower`) and up to the key in the next ones (when `upper`).
    ///
    /// A batch can copy a row that a client statement begun before the batch committed then deletes: the
    /// client's mirrored delete reads the target with its older snapshot and misses the copy. Once those
    /// statements are over, this finds such rows; [`Mapping::repair_sql`] then removes them.
    pub fn orphans_sql(&self, lower: bool, upper: bool) -> String {
        let target_keys: Vec<String> = self
            .target_key
            .iter()
            .map(|t| format!("__pgshift_t.{}", quote_ident(t)))
            .collect();
        let mut conditions = vec![self.range(&target_keys, lower, upper)];
        let mut same: Vec<String> = self
            .keys()
            .iter()
            .zip(&target_keys)
            .map(|(s, t)| format!("__pgshift_s.{s} = {t}"))
            .collect();
        // The same range on the source too, so Postgres walks both keys once (a merge anti join) instead of
        // the source from its first key.
        let source_keys: Vec<String> = self
            .keys()
            .iter()
            .map(|k| format!("__pgshift_s.{k}"))
            .collect();
        same.push(self.range(&source_keys, lower, upper));
        conditions.push(format!(
            "NOT EXISTS (SELECT 1 FROM {} AS __pgshift_s WHERE {})",
            self.source,
            same.join(" AND ")
        ));
        let texts: Vec<String> = target_keys.iter().map(|t| format!("{t}::text")).collect();
        format!(
            "SELECT ARRAY[{}] FROM {} AS __pgshift_t WHERE {} FOR UPDATE OF __pgshift_t",
            texts.join(", "),
            self.target,
            conditions.join(" AND ")
        )
    }

    /// Whether any source row lies after the key in `$1…` (an empty locked batch may only mean its rows were
    /// deleted meanwhile).
    pub fn more_sql(&self) -> String {
        let after = self.after(&self.keys(), 1, true);
        format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE {after})",
            self.source
        )
    }

    /// Source rows for progress and ETA: the planner's estimate; for a table never analyzed, a count when it
    /// is under 1 GiB (0, unknown, beyond).
    pub fn estimate_sql(&self) -> String {
        let table = self.source.replace('\'', "''");
        format!(
            "SELECT CASE WHEN reltuples >= 0 THEN reltuples::bigint \
             WHEN pg_relation_size(oid) < 1073741824 THEN (SELECT count(*) FROM {}) ELSE 0 END \
             FROM pg_class WHERE oid = '{table}'::regclass",
            self.source
        )
    }

    /// The key `$last` rows after the key in the first parameters (when `lower`), `$last` being the chunk size:
    /// where a verify chunk ends. No row: the rest of the table is the last chunk. An index-only walk.
    pub fn bound_sql(&self, lower: bool) -> String {
        let n = self.source_key.len();
        let keys = self.keys();
        let texts: Vec<String> = keys.iter().map(|key| format!("{key}::text")).collect();
        let size = if lower { n + 1 } else { 1 };
        format!(
            "SELECT ARRAY[{}] FROM {} WHERE {} ORDER BY {} OFFSET ${size}::bigint - 1 LIMIT 1",
            texts.join(", "),
            self.source,
            self.after(&keys, 1, lower),
            keys.join(", ")
        )
    }

    /// `lower < key <= upper` over `columns`; parameters: lower key from `$1` (when `lower`), then upper.
    fn range(&self, columns: &[String], lower: bool, upper: bool) -> String {
        let mut parts = vec!["true".to_owned()];
        if lower {
            parts.push(format!(
                "ROW({}) > ROW({})",
                columns.join(", "),
                self.bound(1)
            ));
        }
        if upper {
            let first = if lower { self.source_key.len() + 1 } else { 1 };
            parts.push(format!(
                "ROW({}) <= ROW({})",
                columns.join(", "),
                self.bound(first)
            ));
        }
        parts.join(" AND ")
    }

    /// The fast check of a verify chunk (table kind), in one statement: row count and an order-independent
    /// hash (the sum of 64-bit hashes of each row's text) of the source rows mapped to the target's shape, and
    /// of the target rows, over the key range. Returns (source rows, target rows, hashes equal). Only when they
    /// differ is the chunk narrowed to keys by [`Mapping::verify_sql`].
    pub fn checksum_sql(&self, lower: bool, upper: bool) -> String {
        let keys = self.keys();
        let target_keys: Vec<String> = self.target_key.iter().map(|t| quote_ident(t)).collect();
        let mapped: Vec<String> = self
            .columns
            .iter()
            .map(|col| format!("CAST(({}) AS {})", col.expr, col.ty))
            .collect();
        let stored: Vec<String> = self
            .columns
            .iter()
            .map(|col| quote_ident(&col.name))
            .collect();
        format!(
            "WITH __pgshift_s AS (SELECT count(*) AS n, coalesce(sum(hashtextextended(ROW({})::text, 0)), 0) AS h \
             FROM {} WHERE {}), \
             __pgshift_t AS (SELECT count(*) AS n, coalesce(sum(hashtextextended(ROW({})::text, 0)), 0) AS h \
             FROM {} WHERE {}) \
             SELECT __pgshift_s.n, __pgshift_t.n, __pgshift_s.h = __pgshift_t.h FROM __pgshift_s, __pgshift_t",
            mapped.join(", "),
            self.source,
            self.range(&keys, lower, upper),
            stored.join(", "),
            self.target,
            self.range(&target_keys, lower, upper),
        )
    }

    /// One verify chunk, the key range `lower < key <= upper` ([`Mapping::bound_sql`]), in one statement
    /// (one snapshot): the source rows mapped to the target's shape compared inside Postgres with the target
    /// rows of the same range. Returns rows of (kind, key as text[], n): one per difference (`missing`,
    /// `extra`, `different`) and one `chunk` row with the source's row count. Only differing keys travel.
    pub fn verify_sql(&self, lower: bool, upper: bool) -> String {
        let keys = self.keys();
        let n = keys.len();
        let source_range = self.range(&keys, lower, upper);
        let count = "(SELECT count(*) FROM __pgshift_s)";
        match self.kind {
            MigrationKind::Column => format!(
                "WITH __pgshift_s AS MATERIALIZED (SELECT {}, {} AS __pgshift_differs FROM {} WHERE {source_range}) \
                 SELECT 'different'::text, ARRAY[{}], 0::bigint FROM __pgshift_s WHERE __pgshift_differs \
                 UNION ALL SELECT 'chunk', NULL, {count}",
                self.key_aliases(""),
                self.differs(""),
                self.source,
                (0..n).map(|i| format!("{}::text", k(i))).collect::<Vec<_>>().join(", "),
            ),
            MigrationKind::Table => {
                let target_keys: Vec<String> =
                    self.target_key.iter().map(|t| quote_ident(t)).collect();
                let target_range = self.range(&target_keys, lower, upper);
                let source_cols: Vec<String> = self
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, col)| format!("CAST(({}) AS {}) AS {}", col.expr, col.ty, c(i)))
                    .collect();
                let target_cols: Vec<String> = self
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, col)| format!("{} AS {}", quote_ident(&col.name), c(i)))
                    .collect();
                let target_aliases: Vec<String> = target_keys
                    .iter()
                    .enumerate()
                    .map(|(i, key)| format!("{key} AS {}", k(i)))
                    .collect();
                let on: Vec<String> = (0..n).map(|i| format!("s.{0} = t.{0}", k(i))).collect();
                let key_text: Vec<String> = (0..n)
                    .map(|i| format!("coalesce(s.{0}, t.{0})::text", k(i)))
                    .collect();
                let s_cols: Vec<String> =
                    (0..self.columns.len()).map(|i| format!("s.{}", c(i))).collect();
                let t_cols: Vec<String> =
                    (0..self.columns.len()).map(|i| format!("t.{}", c(i))).collect();
                format!(
                    "WITH __pgshift_s AS MATERIALIZED (SELECT {}, {} FROM {} WHERE {source_range}), \
                     __pgshift_t AS MATERIALIZED (SELECT {}, {} FROM {} WHERE {target_range}) \
                     SELECT CASE WHEN t.{k0} IS NULL THEN 'missing' WHEN s.{k0} IS NULL THEN 'extra' ELSE 'different' END, \
                     ARRAY[{}], 0::bigint FROM __pgshift_s s FULL JOIN __pgshift_t t ON {} \
                     WHERE s.{k0} IS NULL OR t.{k0} IS NULL OR ROW({}) IS DISTINCT FROM ROW({}) \
                     UNION ALL SELECT 'chunk', NULL, {count}",
                    self.key_aliases(""),
                    source_cols.join(", "),
                    self.source,
                    target_aliases.join(", "),
                    target_cols.join(", "),
                    self.target,
                    key_text.join(", "),
                    on.join(" AND "),
                    s_cols.join(", "),
                    t_cols.join(", "),
                    k0 = k(0),
                )
            }
        }
    }

    /// Both sides' values for the given keys (one text[] parameter per key column): rows of (key as text[],
    /// source mapped to the target's columns as JSON, target as JSON), NULL where a side has no row.
    pub fn values_sql(&self) -> String {
        let n = self.source_key.len();
        let wanted = self.keys_cte();
        let bound: Vec<String> = (0..n).map(k).collect();
        let mapped: Vec<String> = self
            .columns
            .iter()
            .map(|col| {
                format!(
                    "'{}', CAST(({}) AS {})",
                    col.name.replace('\'', "''"),
                    col.expr,
                    col.ty
                )
            })
            .collect();
        let stored: Vec<String> = self
            .columns
            .iter()
            .map(|col| {
                format!(
                    "'{}', {}",
                    col.name.replace('\'', "''"),
                    quote_ident(&col.name)
                )
            })
            .collect();
        let key_text: Vec<String> = (0..n).map(|i| format!("{}::text", k(i))).collect();
        match self.kind {
            MigrationKind::Column => format!(
                "WITH {wanted} SELECT ARRAY[{}], json_build_object({})::text, json_build_object({})::text \
                 FROM (SELECT {}, * FROM {} WHERE ROW({}) IN (SELECT {} FROM __pgshift_keys)) AS __pgshift_r",
                key_text.join(", "),
                mapped.join(", "),
                stored.join(", "),
                self.key_aliases(""),
                self.source,
                self.keys().join(", "),
                bound.join(", "),
            ),
            MigrationKind::Table => {
                let target_keys: Vec<String> = self.target_key.iter().map(|t| quote_ident(t)).collect();
                let target_aliases: Vec<String> = target_keys
                    .iter()
                    .enumerate()
                    .map(|(i, key)| format!("{key} AS {}", k(i)))
                    .collect();
                let on: Vec<String> = (0..n).map(|i| format!("s.{0} = t.{0}", k(i))).collect();
                let either: Vec<String> = (0..n)
                    .map(|i| format!("coalesce(s.{0}, t.{0})::text", k(i)))
                    .collect();
                format!(
                    "WITH {wanted}, \
                     s AS (SELECT {}, json_build_object({}) AS v FROM {} WHERE ROW({}) IN (SELECT {} FROM __pgshift_keys)), \
                     t AS (SELECT {}, json_build_object({}) AS v FROM {} WHERE ROW({}) IN (SELECT {} FROM __pgshift_keys)) \
                     SELECT ARRAY[{}], s.v::text, t.v::text FROM s FULL JOIN t ON {}",
                    self.key_aliases(""),
                    mapped.join(", "),
                    self.source,
                    self.keys().join(", "),
                    bound.join(", "),
                    target_aliases.join(", "),
                    stored.join(", "),
                    self.target,
                    target_keys.join(", "),
                    bound.join(", "),
                    either.join(", "),
                    on.join(" AND "),
                )
            }
        }
    }

    /// `__pgshift_keys AS (…)`: the keys given as one text[] parameter per key column, cast to their types.
    fn keys_cte(&self) -> String {
        let n = self.source_key.len();
        let arrays: Vec<String> = (1..=n).map(|i| format!("${i}::text[]")).collect();
        let casts: Vec<String> = self
            .source_key
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| format!("CAST(u{i} AS {ty}) AS {}", k(i)))
            .collect();
        let names: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
        format!(
            "__pgshift_keys AS (SELECT {} FROM unnest({}) AS u({}))",
            casts.join(", "),
            arrays.join(", "),
            names.join(", ")
        )
    }

    /// Repairs the given keys (one text[] parameter per key column, `$1…`): each target row is made what
    /// the source says — written where the source has the row, deleted where it has not. Returns (rows
    /// written, rows deleted).
    pub fn repair_sql(&self) -> String {
        let n = self.source_key.len();
        let wanted = self.keys_cte();
        let bound: Vec<String> = (0..n).map(k).collect();
        let keys = self.keys();
        match self.kind {
            MigrationKind::Column => format!(
                "WITH {wanted}, __pgshift_written AS ({} RETURNING 1) \
                 SELECT (SELECT count(*) FROM __pgshift_written), 0::bigint",
                self.update_from("__pgshift_keys")
            ),
            MigrationKind::Table => {
                let target_keys: Vec<String> = self
                    .target_key
                    .iter()
                    .map(|t| format!("__pgshift_t.{}", quote_ident(t)))
                    .collect();
                let same: Vec<String> = keys
                    .iter()
                    .zip(&target_keys)
                    .map(|(s, t)| format!("__pgshift_s.{s} = {t}"))
                    .collect();
                format!(
                    "WITH {wanted}, {BATCH} AS MATERIALIZED (SELECT * FROM {} WHERE ROW({}) IN (SELECT {} FROM __pgshift_keys) FOR SHARE), \
                     __pgshift_written AS ({} RETURNING 1), \
                     __pgshift_removed AS (DELETE FROM {} AS __pgshift_t WHERE ROW({}) IN (SELECT {} FROM __pgshift_keys) \
                     AND NOT EXISTS (SELECT 1 FROM {} AS __pgshift_s WHERE {}) RETURNING 1) \
                     SELECT (SELECT count(*) FROM __pgshift_written), (SELECT count(*) FROM __pgshift_removed)",
                    self.source,
                    keys.join(", "),
                    bound.join(", "),
                    self.upsert(BATCH),
                    self.target,
                    target_keys.join(", "),
                    bound.join(", "),
                    self.source,
                    same.join(" AND "),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::migration::TableName;

    fn schema() -> Schema {
        let mut s = Schema::default();
        let users = TableName {
            schema: "public".into(),
            name: "users".into(),
        };
        let v2 = TableName {
            schema: "v2".into(),
            name: "users".into(),
        };
        s.columns
            .insert(users.clone(), vec!["id".into(), "fullname".into()]);
        s.types.insert(users, vec!["bigint".into(), "text".into()]);
        s.columns
            .insert(v2.clone(), vec!["id".into(), "display_name".into()]);
        s.types.insert(v2, vec!["bigint".into(), "text".into()]);
        s
    }

    #[test]
    fn table_mapping_follows_the_dual_write_and_its_reverse() {
        let mut m = crate::rewrite::tests::users_migration(WriteMode::DualWrite);
        m.columns = vec![crate::config::migration::ColumnMap {
            old: "fullname".into(),
            new: "display_name".into(),
            up: Some("upper(fullname)".into()),
            down: Some("lower(display_name)".into()),
        }];
        let forward = Mapping::of(&m, &schema()).unwrap();
        assert_eq!(forward.source, "public.users");
        assert_eq!(forward.target, "v2.users");
        assert_eq!(
            forward.source_key,
            vec![("id".to_owned(), "bigint".to_owned())]
        );
        assert_eq!(forward.columns[1].expr, "upper(fullname)");
        let batch = forward.batch_sql(true);
        assert!(
            batch.contains(
                "WHERE ROW(id) > ROW(CAST($2::text AS bigint)) ORDER BY id LIMIT $1 FOR SHARE"
            ),
            "{batch}"
        );
        assert!(batch.contains("ON CONFLICT (id) DO UPDATE SET display_name = EXCLUDED.display_name WHERE ROW(__pgshift_t.display_name) IS DISTINCT FROM ROW(EXCLUDED.display_name)"), "{batch}");
        assert!(forward.batch_sql(false).contains("WHERE true ORDER BY id"));

        m.writes = WriteMode::NewPrimary;
        let back = Mapping::of(&m, &schema()).unwrap();
        assert_eq!(
            (back.source.as_str(), back.target.as_str()),
            ("v2.users", "public.users")
        );
        assert!(back
            .columns
            .iter()
            .any(|c| c.name == "fullname" && c.expr.contains("lower(display_name)")));
        assert_ne!(forward.fingerprint(), back.fingerprint());
        assert_eq!(
            forward.fingerprint(),
            Mapping::of(&m.clone(), &schema())
                .map(|_| forward.fingerprint())
                .unwrap()
        );
    }

    fn orders_schema() -> Schema {
        let mut s = Schema::default();
        let orders = TableName {
            schema: "public".into(),
            name: "orders".into(),
        };
        s.columns.insert(
            orders.clone(),
            vec!["id".into(), "legacy_status".into(), "new_status".into()],
        );
        s.types.insert(
            orders,
            vec!["bigint".into(), "text".into(), "varchar(20)".into()],
        );
        s
    }

    #[test]
    fn column_mapping_updates_in_place_and_compares_in_the_target_type() {
        let m = crate::rewrite::tests::orders_migration(WriteMode::DualWrite);
        let forward = Mapping::of(&m, &orders_schema()).unwrap();
        assert_eq!(forward.source, forward.target);
        let batch = forward.batch_sql(true);
        assert!(
            batch.contains(
                "UPDATE public.orders AS __pgshift_t SET new_status = (upper(legacy_status)) FROM __pgshift_batch \
                 WHERE __pgshift_t.id = __pgshift_batch.__pgshift_k0 AND ROW(__pgshift_t.new_status) IS DISTINCT FROM \
                 ROW(CAST(((upper(legacy_status))) AS varchar(20)))"
            ),
            "{batch}"
        );
        assert!(
            !batch.contains("FOR SHARE"),
            "the UPDATE locks what it writes: {batch}"
        );
        let back = Mapping::of(
            &crate::rewrite::tests::orders_migration(WriteMode::NewPrimary),
            &orders_schema(),
        )
        .unwrap();
        assert_eq!(back.columns[0].name, "legacy_status");
        assert_eq!(back.columns[0].expr, "(lower(new_status))");
        assert_eq!(back.columns[0].ty, "text");
    }

    #[test]
    fn ranges_bind_lower_then_upper_keys() {
        let m = crate::rewrite::tests::users_migration(WriteMode::DualWrite);
        let map = Mapping::of(&m, &schema()).unwrap();
        let orphans = map.orphans_sql(true, true);
        assert!(
            orphans.contains("ROW(__pgshift_t.id) > ROW(CAST($1::text AS bigint))"),
            "{orphans}"
        );
        assert!(
            orphans.contains("ROW(__pgshift_t.id) <= ROW(CAST($2::text AS bigint))"),
            "{orphans}"
        );
        assert!(
            orphans.contains("NOT EXISTS (SELECT 1 FROM public.users AS __pgshift_s WHERE __pgshift_s.id = __pgshift_t.id AND true AND ROW(__pgshift_s.id) > ROW(CAST($1::text AS bigint))"),
            "the anti join is bounded on the source too: {orphans}"
        );
        assert!(map
            .orphans_sql(false, true)
            .contains("ROW(__pgshift_t.id) <= ROW(CAST($1::text AS bigint))"));
        let check = map.checksum_sql(false, false);
        assert!(check.contains("FROM public.users WHERE true)"), "{check}");
        assert!(
            check.contains("sum(hashtextextended(ROW(id, display_name)::text, 0))"),
            "{check}"
        );
        assert_eq!(
            map.bound_sql(true),
            "SELECT ARRAY[id::text] FROM public.users WHERE ROW(id) > ROW(CAST($1::text AS bigint)) ORDER BY id OFFSET $2::bigint - 1 LIMIT 1"
        );
    }

    #[test]
    fn unknown_columns_are_an_error_not_a_guess() {
        let m = crate::rewrite::tests::users_migration(WriteMode::DualWrite);
        let err = Mapping::of(&m, &Schema::default()).unwrap_err();
        assert_eq!(err.reason, RefusalReason::ColumnsUnknown);
    }
}
