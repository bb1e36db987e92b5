//! Read routing decisions: targeting rules first (first match wins), then the sticky percentage.
//! Pure functions over [`SessionFacts`]; the proxy calls [`decide`] at each transaction start.

pub mod bucket;

use crate::config::migration::{BasisPoints, KeySource, Migration, Rule};
use std::net::IpAddr;

/// What is known about a session that rules and routing keys can use.
#[derive(Debug, Clone, Default)]
pub struct SessionFacts {
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub client_addr: Option<IpAddr>,
    /// `pgshift.context`, from SET or the startup `options`.
    pub context: Option<String>,
    /// `pgshift.key`, from SET or the startup `options`.
    pub key_setting: Option<String>,
    /// Startup parameters as sent by the client.
    pub startup: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    Old,
    New,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub route: Route,
    /// The percentage that applied, in basis points.
    pub new_bp: BasisPoints,
    /// Index of the rule that matched, if any.
    pub rule: Option<usize>,
    pub bucket: u16,
}

fn rule_matches(rule: &Rule, facts: &SessionFacts) -> bool {
    let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
    eq(&rule.user, &facts.user)
        && eq(&rule.database, &facts.database)
        && eq(&rule.application_name, &facts.application_name)
        && rule
            .client_cidr
            .is_none_or(|cidr| facts.client_addr.is_some_and(|ip| cidr.contains(ip)))
        && rule
            .context
            .as_deref()
            .is_none_or(|want| facts.context.as_deref() == Some(want))
}

/// The routing key for a migration's configured source.
pub fn routing_key(source: &KeySource, facts: &SessionFacts) -> String {
    let default = || format!("{}\0{}", facts.user, facts.application_name);
    match source {
        KeySource::UserAndApplication => default(),
        KeySource::User => facts.user.clone(),
        KeySource::ApplicationName => facts.application_name.clone(),
        KeySource::ClientAddr => facts
            .client_addr
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        KeySource::Setting => facts.key_setting.clone().unwrap_or_else(default),
        KeySource::Startup(param) => facts
            .startup
            .iter()
            .find(|(k, _)| k == param)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(default),
    }
}

/// Where this session's reads of `migration`'s table go.
pub fn decide(migration: &Migration, facts: &SessionFacts) -> Decision {
    let bucket = bucket::bucket(&migration.salt, &routing_key(&migration.reads.key, facts));
    let (new_bp, rule) = match migration
        .reads
        .rules
        .iter()
        .position(|r| rule_matches(r, facts))
    {
        Some(i) => (migration.reads.rules[i].new_bp, Some(i)),
        None => (migration.reads.new_bp, None),
    };
    let route = if bucket < new_bp {
        Route::New
    } else {
        Route::Old
    };
    Decision {
        route,
        new_bp,
        rule,
        bucket,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::migration::{validate, RawMigration, RawReads, RawRule};

    fn migration(new_percent: f64, rules: Vec<RawRule>, key: Option<&str>) -> Migration {
        let raw = RawMigration {
            name: "orders_status".into(),
            kind: crate::config::migration::MigrationKind::Column,
            table: "public.orders".into(),
            new_table: None,
            database: None,
            key: vec!["id".into()],
            columns: vec![crate::config::migration::ColumnMap {
                old: "legacy_status".into(),
                new: "new_status".into(),
                up: None,
                down: None,
            }],
            writes: Default::default(),
            reads: RawReads {
                new_percent,
                key: key.map(str::to_owned),
                rules,
                ramp: None,
            },
            salt: None,
            shadow: Default::default(),
            guard: Default::default(),
        };
        let mut problems = Vec::new();
        validate(raw, "test", &mut problems).unwrap_or_else(|| panic!("{problems:?}"))
    }

    fn facts(user: &str, app: &str) -> SessionFacts {
        SessionFacts {
            user: user.into(),
            database: "app".into(),
            application_name: app.into(),
            ..Default::default()
        }
    }

    #[test]
    fn zero_and_hundred_percent() {
        let f = facts("alice", "web");
        assert_eq!(decide(&migration(0.0, vec![], None), &f).route, Route::Old);
        assert_eq!(
            decide(&migration(100.0, vec![], None), &f).route,
            Route::New
        );
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = vec![
            RawRule {
                application_name: Some("batch_processor".into()),
                new_percent: 0.0,
                ..Default::default()
            },
            RawRule {
                context: Some("internal".into()),
                new_percent: 100.0,
                ..Default::default()
            },
            RawRule {
                client_cidr: Some("10.0.0.0/8".into()),
                new_percent: 100.0,
                ..Default::default()
            },
        ];
        let m = migration(50.0, rules, None);
        let mut batch = facts("svc", "batch_processor");
        batch.context = Some("internal".into());
        assert_eq!(
            decide(&m, &batch),
            Decision {
                route: Route::Old,
                new_bp: 0,
                rule: Some(0),
                bucket: decide(&m, &batch).bucket
            }
        );
        let mut internal = facts("svc", "web");
        internal.context = Some("internal".into());
        assert_eq!(decide(&m, &internal).route, Route::New);
        assert_eq!(decide(&m, &internal).rule, Some(1));
        let mut office = facts("svc", "web");
        office.client_addr = Some("10.3.4.5".parse().unwrap());
        assert_eq!(decide(&m, &office).rule, Some(2));
        assert_eq!(decide(&m, &facts("svc", "web")).rule, None);
    }

    #[test]
    fn key_sources_pick_the_key() {
        let mut f = facts("alice", "web");
        f.key_setting = Some("tenant-42".into());
        f.startup = vec![("tenant".into(), "t7".into())];
        f.client_addr = Some("192.0.2.1".parse().unwrap());
        assert_eq!(
            routing_key(&KeySource::UserAndApplication, &f),
            "alice\0web"
        );
        assert_eq!(routing_key(&KeySource::Setting, &f), "tenant-42");
        assert_eq!(routing_key(&KeySource::Startup("tenant".into()), &f), "t7");
        assert_eq!(routing_key(&KeySource::ClientAddr, &f), "192.0.2.1");
        f.key_setting = None;
        assert_eq!(routing_key(&KeySource::Setting, &f), "alice\0web");
    }

    #[test]
    fn same_key_same_route_and_25_percent_of_1000_sessions() {
        let m = migration(25.0, vec![], Some("user"));
        let routes: Vec<Route> = (0..1000)
            .map(|i| decide(&m, &facts(&format!("user{i}"), "web")).route)
            .collect();
        let new = routes.iter().filter(|r| **r == Route::New).count();
        assert!((220..=280).contains(&new), "{new}");
        let again: Vec<Route> = (0..1000)
            .map(|i| decide(&m, &facts(&format!("user{i}"), "other")).route)
            .collect();
        assert_eq!(
            routes, again,
            "the key is the user only: application_name must not matter"
        );
    }
}
