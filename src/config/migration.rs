//! Migrations in the config file: the serde model of `[[migration]]` and its validation.

use serde::Deserialize;
use std::net::IpAddr;

/// `[[migration]]` as written in the file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawMigration {
    pub name: String,
    pub kind: MigrationKind,
    /// The old table, `schema.name` or `name` (then `public`).
    pub table: String,
    /// The new table (kind = "table").
    pub new_table: Option<String>,
    /// Only sessions on this database are affected; absent: every database.
    pub database: Option<String>,
    /// Primary-key columns, used to mirror rows between old and new.
    #[serde(default)]
    pub key: Vec<String>,
    #[serde(default)]
    pub columns: Vec<ColumnMap>,
    #[serde(default)]
    pub writes: WriteMode,
    #[serde(default)]
    pub reads: RawReads,
    /// Bucketing salt; defaults to the name. Changing it reshuffles which keys are routed to new.
    pub salt: Option<String>,
    #[serde(default)]
    pub shadow: RawShadow,
    /// `[migration.guard]`: the checks a ramp must pass.
    #[serde(default)]
    pub guard: RawGuard,
}

/// `[migration.reads.ramp]`: a rollout plan, as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRamp {
    /// Percentages of reads routed to new, in order (e.g. [1, 5, 25, 50, 100]).
    pub steps: Vec<f64>,
    /// How long each step holds before the next.
    #[serde(with = "humantime_serde")]
    pub interval: std::time::Duration,
}

/// `[migration.guard]`, as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    #[serde(default = "default_guard_interval", with = "humantime_serde")]
    pub interval: std::time::Duration,
    #[serde(default = "default_guard_min_samples")]
    pub min_samples: u64,
    #[serde(default = "default_failure_limit")]
    pub failure_limit: u32,
    /// "rollback" or "pause".
    #[serde(default = "default_guard_action")]
    pub action: String,
    /// Percentage points new's error rate may exceed old's.
    #[serde(default = "default_max_error_rate_increase")]
    pub max_error_rate_increase_percent: f64,
    #[serde(default = "default_ignore_error_classes")]
    pub ignore_error_classes: Vec<String>,
    #[serde(default = "default_max_latency_ratio")]
    pub max_latency_ratio: f64,
    #[serde(default = "default_latency_floor", with = "humantime_serde")]
    pub latency_floor: std::time::Duration,
    #[serde(default = "default_require_verified_within", with = "humantime_serde")]
    pub require_verified_within: std::time::Duration,
    #[serde(default = "default_max_replication_lag", with = "humantime_serde")]
    pub max_replication_lag: std::time::Duration,
}

impl Default for RawGuard {
    fn default() -> Self {
        RawGuard {
            interval: default_guard_interval(),
            min_samples: default_guard_min_samples(),
            failure_limit: default_failure_limit(),
            action: default_guard_action(),
            max_error_rate_increase_percent: default_max_error_rate_increase(),
            ignore_error_classes: default_ignore_error_classes(),
            max_latency_ratio: default_max_latency_ratio(),
            latency_floor: default_latency_floor(),
            require_verified_within: default_require_verified_within(),
            max_replication_lag: default_max_replication_lag(),
        }
    }
}

fn default_guard_interval() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}
fn default_guard_min_samples() -> u64 {
    100
}
fn default_failure_limit() -> u32 {
    2
}
fn default_guard_action() -> String {
    "rollback".to_owned()
}
fn default_max_error_rate_increase() -> f64 {
    1.0
}
fn default_ignore_error_classes() -> Vec<String> {
    vec!["23".to_owned(), "40".to_owned()]
}
fn default_max_latency_ratio() -> f64 {
    1.15
}
fn default_latency_floor() -> std::time::Duration {
    std::time::Duration::from_millis(2)
}
fn default_max_replication_lag() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}
fn default_require_verified_within() -> std::time::Duration {
    std::time::Duration::from_secs(24 * 3600)
}

/// `[migration.shadow]`: shadow reads, as written in the file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    /// Share of eligible reads also evaluated on the other route and compared (fractions allowed).
    #[serde(default)]
    pub sample_percent: f64,
    /// Show the differing rows' values in findings and logs, not only their keys.
    #[serde(default)]
    pub log_values: bool,
    /// A statement mismatches only when its mismatch rate exceeds its noise by this much, relatively…
    #[serde(default = "default_relative_margin")]
    pub relative_margin_percent: f64,
    /// …and by this much absolutely (Diffy's defaults: 20 % and 0.03 %).
    #[serde(default = "default_absolute_margin")]
    pub absolute_margin_percent: f64,
    /// No verdict on a statement compared fewer times than this.
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
}

impl Default for RawShadow {
    fn default() -> Self {
        RawShadow {
            sample_percent: 0.0,
            log_values: false,
            relative_margin_percent: default_relative_margin(),
            absolute_margin_percent: default_absolute_margin(),
            min_samples: default_min_samples(),
        }
    }
}

fn default_relative_margin() -> f64 {
    20.0
}
fn default_absolute_margin() -> f64 {
    0.03
}
fn default_min_samples() -> u64 {
    10
}

/// Shadow reads of one migration, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shadow {
    /// Parts per million of eligible reads that are compared.
    pub sample_ppm: u32,
    pub log_values: bool,
    pub thresholds: crate::shadow::verdict::Thresholds,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationKind {
    /// Same table: old column(s) → new column(s).
    Column,
    /// Old table → new table, columns renamed by the map, the rest keep their names.
    Table,
}

#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnMap {
    pub old: String,
    pub new: String,
    /// SQL expression over old columns giving the new value; default: the old column itself.
    pub up: Option<String>,
    /// SQL expression over new columns giving the old value; default: the new column itself.
    pub down: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Statements pass through untouched.
    #[default]
    Off,
    /// Old is primary; the same statement also writes new.
    DualWrite,
    /// New is primary; the same statement mirrors back to old.
    NewPrimary,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawReads {
    #[serde(default)]
    pub new_percent: f64,
    /// Routing key source; see [`KeySource`].
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// A rollout plan: its step replaces `new_percent` while it runs (`pgshift rollout`).
    pub ramp: Option<RawRamp>,
}

/// A targeting rule: every matcher given must match; the first matching rule wins.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub user: Option<String>,
    pub database: Option<String>,
    pub application_name: Option<String>,
    /// Client address range, e.g. "10.1.0.0/16".
    pub client_cidr: Option<String>,
    /// Matches the session setting `pgshift.context` (SET or `options=-c pgshift.context=…`).
    pub context: Option<String>,
    pub new_percent: f64,
}

/// Where the sticky routing key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// user and application_name together (the default).
    #[default]
    UserAndApplication,
    User,
    ApplicationName,
    ClientAddr,
    /// The session setting `pgshift.key`; sessions without it fall back to user and application_name.
    Setting,
    /// A startup parameter, e.g. `startup:tenant`.
    Startup(String),
}

impl KeySource {
    fn parse(s: &str) -> Option<KeySource> {
        Some(match s {
            "user+application_name" => KeySource::UserAndApplication,
            "user" => KeySource::User,
            "application_name" => KeySource::ApplicationName,
            "client_addr" => KeySource::ClientAddr,
            "setting" => KeySource::Setting,
            _ => match s.strip_prefix("startup:") {
                Some(param) if !param.is_empty() => KeySource::Startup(param.to_owned()),
                _ => return None,
            },
        })
    }
}

/// A table name as PostgreSQL resolves it: unquoted parts folded to lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// A client address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let addr: IpAddr = s.parse().ok()?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Percentages are kept in basis points (1/100 of a percent), the unit buckets are compared in.
pub type BasisPoints = u16;

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub user: Option<String>,
    pub database: Option<String>,
    pub application_name: Option<String>,
    pub client_cidr: Option<Cidr>,
    pub context: Option<String>,
    pub new_bp: BasisPoints,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reads {
    pub new_bp: BasisPoints,
    pub key: KeySource,
    pub rules: Vec<Rule>,
}

/// A validated migration.
#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    pub name: String,
    pub kind: MigrationKind,
    pub table: TableName,
    pub new_table: Option<TableName>,
    pub database: Option<String>,
    pub key: Vec<String>,
    pub columns: Vec<ColumnMap>,
    pub writes: WriteMode,
    pub reads: Reads,
    pub salt: String,
    pub shadow: Shadow,
    /// The rollout plan, if reads are ramped by `pgshift rollout` rather than by `new_percent`.
    pub ramp: Option<crate::rollout::plan::Ramp>,
    pub guard: crate::rollout::guard::Guard,
}

impl Migration {
    /// Whether any session can be routed to new.
    pub fn reads_can_route_to_new(&self) -> bool {
        self.reads.new_bp > 0 || self.reads.rules.iter().any(|r| r.new_bp > 0)
    }
}

/// Folds an identifier as PostgreSQL does: `"Quoted"` keeps its case, anything else is lower-cased.
fn fold_ident(part: &str) -> Option<String> {
    let part = part.trim();
    if part.len() >= 2 && part.starts_with('"') && part.ends_with('"') {
        let inner = &part[1..part.len() - 1];
        return (!inner.is_empty()).then(|| inner.replace("\"\"", "\""));
    }
    let ok = !part.is_empty()
        && part
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '$')
        && !part.starts_with(|c: char| c.is_ascii_digit() || c == '$');
    ok.then(|| part.to_lowercase())
}

pub fn parse_table_name(s: &str) -> Option<TableName> {
    let parts: Vec<&str> = s.split('.').collect();
    match parts.as_slice() {
        [name] => Some(TableName {
            schema: "public".to_owned(),
            name: fold_ident(name)?,
        }),
        [schema, name] => Some(TableName {
            schema: fold_ident(schema)?,
            name: fold_ident(name)?,
        }),
        _ => None,
    }
}

/// Checks that `sql` is exactly one SQL expression.
pub fn check_expression(sql: &str) -> Result<(), String> {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;
    use sqlparser::tokenizer::Token;
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(sql)
        .map_err(|e| e.to_string())?;
    parser.parse_expr().map_err(|e| e.to_string())?;
    match parser.peek_token().token {
        Token::EOF => Ok(()),
        other => Err(format!("unexpected {other} after the expression")),
    }
}

fn percent_to_bp(key: &str, percent: f64, problems: &mut Vec<String>) -> BasisPoints {
    if !(0.0..=100.0).contains(&percent) || !percent.is_finite() {
        problems.push(format!("{key} = {percent} must be between 0 and 100"));
        return 0;
    }
    (percent * 100.0).round() as BasisPoints
}

/// Validates one migration; problems are prefixed with where the entry is.
pub fn validate(raw: RawMigration, at: &str, problems: &mut Vec<String>) -> Option<Migration> {
    let before = problems.len();
    let mut problem = |msg: String| problems.push(format!("{at}: {msg}"));
    let name_ok = !raw.name.is_empty()
        && raw.name.len() <= 63
        && raw
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !name_ok {
        problem(format!(
            "name = {:?} must be 1-63 characters of a-z, 0-9 and _ (it is a metric label)",
            raw.name
        ));
    }
    let table = parse_table_name(&raw.table);
    if table.is_none() {
        problem(format!(
            "table = {:?} is not a table name like \"public.orders\"",
            raw.table
        ));
    }
    let new_table = match (&raw.kind, &raw.new_table) {
        (MigrationKind::Table, None) => {
            problem("kind = \"table\" needs new_table".to_owned());
            None
        }
        (MigrationKind::Table, Some(t)) => {
            let parsed = parse_table_name(t);
            if parsed.is_none() {
                problem(format!(
                    "new_table = {t:?} is not a table name like \"v2.users\""
                ));
            } else if parsed == table {
                problem("new_table is the same table as table".to_owned());
            }
            parsed
        }
        (MigrationKind::Column, Some(_)) => {
            problem("new_table is only for kind = \"table\"".to_owned());
            None
        }
        (MigrationKind::Column, None) => None,
    };
    if raw.key.is_empty() {
        problem("key must name the primary-key column(s), e.g. key = [\"id\"]".to_owned());
    }
    if raw.kind == MigrationKind::Column && raw.columns.is_empty() {
        problem("kind = \"column\" needs at least one entry in columns".to_owned());
    }
    let mut seen_new = std::collections::HashSet::new();
    let mut seen_old = std::collections::HashSet::new();
    for (i, col) in raw.columns.iter().enumerate() {
        for (which, ident) in [("old", &col.old), ("new", &col.new)] {
            if fold_ident(ident).is_none() {
                problem(format!(
                    "columns[{i}].{which} = {ident:?} is not a column name"
                ));
            }
        }
        if raw.kind == MigrationKind::Column && fold_ident(&col.old) == fold_ident(&col.new) {
            problem(format!("columns[{i}]: old and new are the same column"));
        }
        if !seen_new.insert(col.new.to_lowercase()) {
            problem(format!("columns[{i}].new = {:?} appears twice", col.new));
        }
        if !seen_old.insert(col.old.to_lowercase()) {
            problem(format!("columns[{i}].old = {:?} appears twice", col.old));
        }
        if raw.key.iter().any(|k| k.eq_ignore_ascii_case(&col.old))
            && raw.kind == MigrationKind::Column
        {
            problem(format!(
                "columns[{i}].old = {:?} is a key column; key columns cannot migrate",
                col.old
            ));
        }
        for (which, expr) in [("up", &col.up), ("down", &col.down)] {
            if let Some(expr) = expr {
                if let Err(e) = check_expression(expr) {
                    problem(format!(
                        "columns[{i}].{which} = {expr:?} is not a valid SQL expression: {e}"
                    ));
                }
            }
        }
    }
    let key = match raw.reads.key.as_deref() {
        None => KeySource::default(),
        Some(s) => KeySource::parse(s).unwrap_or_else(|| {
            problem(format!(
                "reads.key = {s:?} must be user+application_name, user, application_name, client_addr, setting or startup:<param>"
            ));
            KeySource::default()
        }),
    };
    let mut pct_problems = Vec::new();
    let new_bp = percent_to_bp(
        "reads.new_percent",
        raw.reads.new_percent,
        &mut pct_problems,
    );
    let mut rules = Vec::new();
    for (i, r) in raw.reads.rules.iter().enumerate() {
        let new_bp = percent_to_bp(
            &format!("reads.rules[{i}].new_percent"),
            r.new_percent,
            &mut pct_problems,
        );
        let client_cidr = r.client_cidr.as_deref().and_then(|c| {
            let parsed = Cidr::parse(c);
            if parsed.is_none() {
                pct_problems.push(format!("reads.rules[{i}].client_cidr = {c:?} is not an address range like \"10.0.0.0/8\""));
            }
            parsed
        });
        if r.user.is_none()
            && r.database.is_none()
            && r.application_name.is_none()
            && r.client_cidr.is_none()
            && r.context.is_none()
        {
            pct_problems.push(format!(
                "reads.rules[{i}] matches nothing: give user, database, application_name, client_cidr or context"
            ));
        }
        rules.push(Rule {
            user: r.user.clone(),
            database: r.database.clone(),
            application_name: r.application_name.clone(),
            client_cidr,
            context: r.context.clone(),
            new_bp,
        });
    }
    let shadow = validate_shadow(&raw.shadow, &mut pct_problems);
    let ramp = raw.reads.ramp.as_ref().map(|r| {
        let steps: Vec<BasisPoints> = r
            .steps
            .iter()
            .enumerate()
            .map(|(i, p)| percent_to_bp(&format!("reads.ramp.steps[{i}]"), *p, &mut pct_problems))
            .collect();
        if steps.is_empty() || steps.windows(2).any(|w| w[0] >= w[1]) || steps[0] == 0 {
            pct_problems.push(format!(
                "reads.ramp.steps = {:?} must rise strictly from above 0 (raising the share only adds keys)",
                r.steps
            ));
        }
        if r.interval.is_zero() {
            pct_problems.push("reads.ramp.interval must be greater than zero".to_owned());
        }
        crate::rollout::plan::Ramp {
            steps,
            interval: r.interval,
        }
    });
    let guard = validate_guard(&raw.guard, &mut pct_problems);
    for p in pct_problems {
        problem(p);
    }
    if problems.len() > before {
        return None;
    }
    Some(Migration {
        salt: raw.salt.unwrap_or_else(|| raw.name.clone()),
        name: raw.name,
        kind: raw.kind,
        table: table?,
        new_table,
        database: raw.database,
        key: raw.key.iter().map(|k| k.to_lowercase()).collect(),
        columns: raw.columns,
        writes: raw.writes,
        reads: Reads { new_bp, key, rules },
        shadow,
        ramp,
        guard,
    })
}

fn validate_guard(raw: &RawGuard, problems: &mut Vec<String>) -> crate::rollout::guard::Guard {
    use crate::rollout::guard::{Action, Guard};
    let action = match raw.action.as_str() {
        "rollback" => Action::Rollback,
        "pause" => Action::Pause,
        other => {
            problems.push(format!(
                "guard.action = {other:?} must be \"rollback\" or \"pause\""
            ));
            Action::Rollback
        }
    };
    if raw.interval.is_zero() {
        problems.push("guard.interval must be greater than zero".to_owned());
    }
    if !(0.0..=100.0).contains(&raw.max_error_rate_increase_percent) {
        problems.push(format!(
            "guard.max_error_rate_increase_percent = {} must be between 0 and 100",
            raw.max_error_rate_increase_percent
        ));
    }
    if !raw.max_latency_ratio.is_finite() || raw.max_latency_ratio < 1.0 {
        problems.push(format!(
            "guard.max_latency_ratio = {} must be at least 1",
            raw.max_latency_ratio
        ));
    }
    for class in &raw.ignore_error_classes {
        if class.len() != 2 || !class.chars().all(|c| c.is_ascii_alphanumeric()) {
            problems.push(format!(
                "guard.ignore_error_classes: {class:?} is not a SQLSTATE class (two characters, e.g. \"23\")"
            ));
        }
    }
    Guard {
        interval: raw.interval,
        min_samples: raw.min_samples.max(1),
        failure_limit: raw.failure_limit.max(1),
        action,
        max_error_rate_increase: raw.max_error_rate_increase_percent / 100.0,
        ignore_error_classes: raw
            .ignore_error_classes
            .iter()
            .map(|c| c.to_uppercase())
            .collect(),
        max_latency_ratio: raw.max_latency_ratio,
        latency_floor: raw.latency_floor,
        require_verified_within: raw.require_verified_within,
        max_replication_lag: raw.max_replication_lag,
    }
}

fn validate_shadow(raw: &RawShadow, problems: &mut Vec<String>) -> Shadow {
    let mut percent = |key: &str, value: f64| {
        if !(0.0..=100.0).contains(&value) || !value.is_finite() {
            problems.push(format!("shadow.{key} = {value} must be between 0 and 100"));
            return 0.0;
        }
        value / 100.0
    };
    let sample = percent("sample_percent", raw.sample_percent);
    let relative = percent("relative_margin_percent", raw.relative_margin_percent);
    let absolute = percent("absolute_margin_percent", raw.absolute_margin_percent);
    Shadow {
        sample_ppm: (sample * 1_000_000.0).round() as u32,
        log_values: raw.log_values,
        thresholds: crate::shadow::verdict::Thresholds {
            relative,
            absolute,
            min_samples: raw.min_samples.max(1),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_fold_like_postgres() {
        assert_eq!(
            parse_table_name("Orders").unwrap().to_string(),
            "public.orders"
        );
        assert_eq!(
            parse_table_name("v2.\"Users\"").unwrap().to_string(),
            "v2.Users"
        );
        assert_eq!(parse_table_name("a.b.c"), None);
        assert_eq!(parse_table_name("1abc"), None);
        assert_eq!(parse_table_name(""), None);
    }

    #[test]
    fn cidr_matching() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
        assert_eq!(Cidr::parse("127.0.0.1").unwrap().prefix, 32);
    }

    #[test]
    fn expressions_must_parse() {
        assert!(check_expression("upper(legacy_status)").is_ok());
        assert!(check_expression("CASE WHEN a THEN 'x' ELSE NULL END").is_ok());
        assert!(check_expression("upper(").is_err());
        assert!(check_expression("1; DROP TABLE t").is_err());
    }

    #[test]
    fn key_sources() {
        assert_eq!(
            KeySource::parse("startup:tenant"),
            Some(KeySource::Startup("tenant".into()))
        );
        assert_eq!(KeySource::parse("setting"), Some(KeySource::Setting));
        assert_eq!(KeySource::parse("startup:"), None);
        assert_eq!(KeySource::parse("cookie"), None);
    }
}
