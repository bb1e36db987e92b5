//! pgshift's HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (503 while draining) and `/status` (the
//! config epoch, the last reload, and every migration with its phase and percentages).

use crate::config::reload::ConfigHandle;
use crate::proxy::Phase;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the HTTP endpoint reports besides metrics.
pub struct HttpState {
    pub prometheus: PrometheusHandle,
    pub phase: watch::Receiver<Phase>,
    pub config: Arc<ConfigHandle>,
    /// Backfill and verify progress read over the control connection ([`crate::backfill::status`]).
    pub copies: watch::Receiver<serde_json::Value>,
    /// Shadow-read findings per migration.
    pub shadow: crate::shadow::Shadow,
    pub rollouts: Arc<crate::rollout::Rollouts>,
}

/// Serves `/metrics` and `/healthz` until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<HttpState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &req)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// `/status`: the config epoch, the last reload, and every migration with its phase and percentages.
fn status_json(state: &HttpState) -> String {
    use crate::config::migration::Migration;
    let config = state.config.current();
    let percent = |bp: u16| f64::from(bp) / 100.0;
    let migration = |m: &Migration| {
        serde_json::json!({
            "name": m.name,
            "kind": m.kind,
            "table": m.table.to_string(),
            "new_table": m.new_table.as_ref().map(|t| t.to_string()),
            "database": m.database,
            "key": m.key,
            "columns": m.columns,
            "writes": m.writes,
            "reads": {
                "new_percent": percent(m.reads.new_bp),
                "key": m.reads.key,
                "rules": m.reads.rules.iter().map(|r| serde_json::json!({
                    "user": r.user,
                    "database": r.database,
                    "application_name": r.application_name,
                    "client_cidr": r.client_cidr.map(|c| c.to_string()),
                    "context": r.context,
                    "new_percent": percent(r.new_bp),
                })).collect::<Vec<_>>(),
            },
            "rollout": state.rollouts.status(m),
            "old_schema_usage": state.rollouts.usage.status(&m.name),
            "shadow": {
                "sample_percent": f64::from(m.shadow.sample_ppm) / 10_000.0,
                "log_values": m.shadow.log_values,
                "findings": state.shadow.findings().status(&m.name, &m.shadow.thresholds),
            },
        })
    };
    let status = serde_json::json!({
        "epoch": config.epoch,
        "config_file": state.config.path().map(|p| p.display().to_string()),
        "loaded_at_unix": state.config.loaded_at_unix(),
        "last_reload": state.config.last_reload(),
        "phase": format!("{:?}", *state.phase.borrow()).to_lowercase(),
        "migrations": config.migrations.iter().map(migration).collect::<Vec<_>>(),
        "control": *state.copies.borrow(),
    });
    let mut body = serde_json::to_string_pretty(&status).expect("status is serializable");
    body.push('\n');
    body
}

fn respond(state: &HttpState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.prometheus.render(),
        ),
        (&Method::GET, "/healthz") if *state.phase.borrow() != Phase::Running => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".to_owned(),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/status") => (StatusCode::OK, "application/json", status_json(state)),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
