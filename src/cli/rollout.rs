//! `pgshift rollout status|start|pause|resume|rollback|promote`: the operator's levers on a migration's rollout
//! state. Each change is conditional on the state read, recorded as an event (with the OS user and host), and
//! announced to every replica (NOTIFY), which apply it within a second.

use super::CliError;
use crate::admin;
use crate::config::migration::{Migration, WriteMode};
use crate::config::{Config, Overrides};
use crate::rollout::plan::{self, State, Status};
use crate::rollout::{store, Backend};
use std::path::PathBuf;
use tokio_postgres::Client;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lever {
    /// Where the rollout stands, what it routes, its last events.
    Status,
    /// Start the ramp at its first step (needs a fresh clean verification).
    Start,
    /// Hold at the current step.
    Pause,
    /// Go on from the current step.
    Resume,
    /// Every replica reads from old again, and `new_primary` writes fall back to `dual_write`.
    Rollback,
    /// Move writes to `new_primary` (needs a fresh clean verification).
    Promote,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    pub lever: Lever,
    /// The config file that declares the migration and its ramp.
    #[arg(short, long)]
    pub config: PathBuf,
    #[arg(long)]
    pub migration: String,
    /// Why (recorded in the event).
    #[arg(long)]
    pub reason: Option<String>,
    /// Where `start` and `promote` check the last verification when the config has no [control] dsn (whose
    /// database holds it otherwise).
    #[arg(long)]
    pub dsn: Option<String>,
}

/// Who runs the command, for the event: OS user and host.
fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("{user}@{} (pgshift rollout)", crate::rollout::hostname())
}

pub async fn run(args: &Args) -> Result<(), CliError> {
    let config = Config::load(&args.config, &Overrides::default())?;
    let m = config
        .migrations
        .iter()
        .find(|m| m.name == args.migration)
        .ok_or_else(|| CliError::NoMigration {
            name: args.migration.clone(),
            known: config.migrations.iter().map(|m| m.name.clone()).collect(),
        })?;
    let Some(ramp) = &m.ramp else {
        return Err(CliError::Rollout(format!(
            "migration \"{}\" has no [migration.reads.ramp]: its reads follow new_percent",
            m.name
        )));
    };
    let mut backend = Backend::open(&config).await.map_err(CliError::Rollout)?;
    let state = backend
        .load()
        .await
        .map_err(CliError::Rollout)?
        .into_iter()
        .find(|(name, _)| *name == m.name)
        .map(|(_, s)| s)
        .unwrap_or_else(State::pending);
    let (status, step, promoted) = match args.lever {
        Lever::Status => return print_status(&backend, m, ramp, &state).await,
        Lever::Start => {
            if matches!(state.status, Status::Ramping | Status::Complete) {
                return Err(CliError::Rollout(format!(
                    "already {}",
                    state.status.label()
                )));
            }
            require_verified(&backend, &config, args.dsn.as_deref(), m).await?;
            (Status::Ramping, 0, state.promoted)
        }
        Lever::Pause => {
            if state.status != Status::Ramping {
                return Err(CliError::Rollout(format!(
                    "cannot pause: {}",
                    state.status.label()
                )));
            }
            (Status::Paused, state.step, state.promoted)
        }
        Lever::Resume => {
            if state.status != Status::Paused {
                return Err(CliError::Rollout(format!(
                    "cannot resume: {}",
                    state.status.label()
                )));
            }
            (Status::Ramping, state.step, state.promoted)
        }
        Lever::Rollback => (Status::RolledBack, state.step, false),
        Lever::Promote => {
            if m.writes != WriteMode::DualWrite || state.promoted {
                return Err(CliError::Rollout(
                    "promote moves writes = \"dual_write\" to new_primary; nothing to promote"
                        .to_owned(),
                ));
            }
            if state.status == Status::RolledBack || state.status == Status::Pending {
                return Err(CliError::Rollout(format!(
                    "cannot promote a rollout that is {}",
                    state.status.label()
                )));
            }
            require_verified(&backend, &config, args.dsn.as_deref(), m).await?;
            (state.status, state.step, true)
        }
    };
    let lever = format!("{:?}", args.lever).to_lowercase();
    let reason = args
        .reason
        .clone()
        .unwrap_or_else(|| format!("{lever} by an operator"));
    let change = store::Change {
        migration: &m.name,
        from_version: state.version,
        status,
        step,
        reason: &reason,
        promoted,
        kind: "command",
        actor: &actor(),
        detail: serde_json::json!({ "command": lever }),
    };
    if !backend.apply(&change).await.map_err(CliError::Rollout)? {
        return Err(CliError::Rollout(
            "the rollout changed while this command ran (another replica or operator); look again with status"
                .to_owned(),
        ));
    }
    if status == Status::RolledBack {
        ::metrics::counter!(crate::metrics::ROLLOUT_ROLLBACKS, "migration" => m.name.clone(), "reason" => "command")
            .increment(1);
    }
    let after = State {
        status,
        step,
        promoted,
        ..state
    };
    let effect = plan::effect(ramp, &after, m.writes);
    println!(
        "{}: {} at step {} — reads {}% to new, writes {}",
        m.name,
        status.label(),
        step,
        f64::from(effect.new_bp) / 100.0,
        writes_label(effect.writes)
    );
    Ok(())
}

fn writes_label(w: WriteMode) -> &'static str {
    match w {
        WriteMode::Off => "off",
        WriteMode::DualWrite => "dual_write",
        WriteMode::NewPrimary => "new_primary",
    }
}

/// `start` and `promote` need a clean verification younger than `guard.require_verified_within`, read where
/// `pgshift verify` records it: the control database, or the one `--dsn` names.
async fn require_verified(
    backend: &Backend,
    config: &Config,
    dsn: Option<&str>,
    m: &Migration,
) -> Result<(), CliError> {
    let connected;
    let client: &Client = match (backend, dsn) {
        (Backend::Database(c), None) => c,
        (_, Some(dsn)) => {
            connected = admin::connect_control(dsn, config.control.password_file.as_deref()).await?;
            &connected
        }
        (Backend::File(_), None) => {
            return Err(CliError::Rollout(
                "give --dsn: the last verification is in the migrated database, and the config has no [control] dsn"
                    .to_owned(),
            ))
        }
    };
    crate::backfill::store::ensure(client)
        .await
        .map_err(|e| CliError::Rollout(admin::cause(&e)))?;
    let age = store::verified_age(client, &m.name)
        .await
        .map_err(|e| CliError::Rollout(admin::cause(&e)))?;
    let limit = m.guard.require_verified_within;
    match age {
        Some(age) if age <= limit.as_secs_f64() => Ok(()),
        Some(age) => Err(CliError::Rollout(format!(
            "the last clean verification of \"{}\" is {} old (at most {} allowed): run pgshift verify first",
            m.name,
            humantime::format_duration(std::time::Duration::from_secs(age as u64)),
            humantime::format_duration(limit)
        ))),
        None => Err(CliError::Rollout(format!(
            "\"{}\" has no clean verification: run pgshift verify first",
            m.name
        ))),
    }
}

async fn print_status(
    backend: &Backend,
    m: &Migration,
    ramp: &plan::Ramp,
    state: &State,
) -> Result<(), CliError> {
    let effect = plan::effect(ramp, state, m.writes);
    let steps: Vec<String> = ramp
        .steps
        .iter()
        .map(|&b| format!("{}%", f64::from(b) / 100.0))
        .collect();
    println!(
        "{}: {} at step {} of [{}] (every {}) — reads {}% to new, writes {}",
        m.name,
        state.status.label(),
        state.step,
        steps.join(", "),
        humantime::format_duration(ramp.interval),
        f64::from(effect.new_bp) / 100.0,
        writes_label(effect.writes)
    );
    if !state.reason.is_empty() {
        println!("reason: {}", state.reason);
    }
    let events = backend
        .recent_events(&m.name, 10)
        .await
        .map_err(CliError::Rollout)?;
    if !events.is_empty() {
        println!("recent events:");
    }
    for (at, kind, actor, detail) in events {
        println!("  {at}  {kind:<8} {actor}  {detail}");
    }
    Ok(())
}
