//! Config reload without a restart (issue 9, item 9): `SIGHUP` or `POST /v1/admin/reload`
//! (Bearer: the admin key whose SHA-256 is `server.admin_key_sha256`).
//!
//! The files are read and validated in full first (every problem reported at once, like at
//! start); the tenants' connectors are built next; only when both succeed are the new tenants
//! swapped in, atomically. A bad file — or a connector that cannot be built — leaves the running
//! configuration in place and says why. What is reloaded: the tenants (added, removed, changed:
//! numbers, keys, hours, services, write-back rules, alerts, vendors). Server-level sections
//! (listen address, store, limits, write-back budgets, OAuth apps, console operators, inbound
//! webhooks, identity pull) are read once at start: a change to them is reported as needing a
//! restart and not applied. A call already connected keeps the tenant it was opened with.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use serde_json::json;

use crate::config::{Config, ConfigError, Overrides};
use crate::session::Core;
use crate::tenant::Tenant;

/// Builds one tenant's run-time form (connectors) from its validated config.
pub type TenantBuilder = Box<dyn Fn(&crate::config::TenantConfig) -> anyhow::Result<Tenant> + Send + Sync>;

/// What a reload changed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReloadReport {
    pub tenants: usize,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Server-level sections that differ from the running ones: they apply at the next restart.
    pub restart_needed: Vec<&'static str>,
}

/// Why a reload was refused (the running configuration stays in place).
#[derive(Debug)]
pub enum ReloadError {
    /// The service was not started from a file (tests, embedders).
    NoFile,
    Invalid(ConfigError),
    Build(String),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::NoFile => write!(f, "the service was not started from a config file"),
            ReloadError::Invalid(e) => write!(f, "{e}"),
            ReloadError::Build(e) => write!(f, "a tenant could not be set up: {e}"),
        }
    }
}

pub struct Reloader {
    core: Arc<Core>,
    build: TenantBuilder,
    source: OnceLock<(PathBuf, Overrides)>,
    /// The configuration in force (for telling what needs a restart).
    running: std::sync::Mutex<Config>,
    admin_key_digest: Option<[u8; 32]>,
    /// One reload at a time.
    lock: tokio::sync::Mutex<()>,
}

/// The server-level sections a reload cannot apply, each as (name, its printed value).
fn restart_only(c: &Config) -> Vec<(&'static str, String)> {
    vec![
        ("server.listen", c.listen.to_string()),
        ("server.data_dir / store", format!("{:?}{}", c.data_dir, crate::store::redact_url(&c.store_url))),
        ("server.sandbox", c.sandbox.to_string()),
        ("server.shutdown_grace_secs", format!("{:?}", c.shutdown_grace)),
        ("server.admin_key_sha256", format!("{:?}", c.admin_key_digest)),
        ("limits", format!("{:?}", c.limits)),
        ("writeback", format!("{:?}", c.writeback)),
        ("connect", format!("{:?}", c.connect)),
        ("identity", format!("{:?}", c.identity)),
        ("console", format!("{:?}", c.console)),
        ("sandbox_options", format!("{:?}", c.sandbox_options)),
        ("inbound", format!("{:?}", c.inbound)),
        ("retention", format!("{:?}", c.retention)),
        ("rate_budgets", format!("{:?}", c.rate_budgets)),
    ]
}

/// Reloads `reloader` on every SIGHUP the process receives, for as long as the runtime runs.
/// The handler is installed before this returns, so a signal raised afterwards is never lost;
/// the receiver counts finished reloads (applied or refused: the report is logged).
pub fn on_sighup(reloader: Arc<Reloader>) -> std::io::Result<tokio::sync::watch::Receiver<u64>> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let (done, rx) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let _ = reloader.reload().await;
            done.send_modify(|n| *n += 1);
        }
    });
    Ok(rx)
}

impl Reloader {
    pub fn new(core: Arc<Core>, config: &Config, build: TenantBuilder) -> Reloader {
        Reloader {
            core,
            build,
            source: OnceLock::new(),
            admin_key_digest: config.admin_key_digest,
            running: std::sync::Mutex::new(config.clone()),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The file (and command-line overrides) to reload from; set once, by `callside serve`.
    pub fn set_source(&self, path: PathBuf, overrides: Overrides) {
        let _ = self.source.set((path, overrides));
    }

    /// Reads, validates and builds the new configuration, then swaps the tenants in. On any
    /// error nothing changes.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one = self.lock.lock().await;
        let result = self.try_reload().await;
        let outcome = if result.is_ok() { "applied" } else { "refused" };
        self.core.metrics.config_reloads.get_or_create(&crate::observe::OutcomeLabel { outcome: outcome.into() }).inc();
        match &result {
            Ok(r) => tracing::info!(
                tenants = r.tenants,
                added = ?r.added,
                removed = ?r.removed,
                restart_needed = ?r.restart_needed,
                "configuration reloaded"
            ),
            Err(e) => tracing::error!(error = %e, "configuration reload refused; the running configuration is kept"),
        }
        result
    }

    async fn try_reload(&self) -> Result<ReloadReport, ReloadError> {
        let (path, overrides) = self.source.get().cloned().ok_or(ReloadError::NoFile)?;
        let config = tokio::task::spawn_blocking(move || Config::load(&path, &overrides))
            .await
            .map_err(|e| ReloadError::Build(e.to_string()))?
            .map_err(ReloadError::Invalid)?;
        let mut tenants = Vec::with_capacity(config.tenants.len());
        for t in &config.tenants {
            tenants.push((self.build)(t).map_err(|e| ReloadError::Build(format!("tenant {}: {e:#}", t.id)))?);
        }
        let mut running = self.running.lock().expect("running config lock");
        let old_ids: Vec<String> = running.tenants.iter().map(|t| t.id.clone()).collect();
        let new_ids: Vec<String> = config.tenants.iter().map(|t| t.id.clone()).collect();
        let restart_needed = restart_only(&running)
            .into_iter()
            .zip(restart_only(&config))
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect();
        let report = ReloadReport {
            tenants: tenants.len(),
            added: new_ids.iter().filter(|id| !old_ids.contains(id)).cloned().collect(),
            removed: old_ids.iter().filter(|id| !new_ids.contains(id)).cloned().collect(),
            restart_needed,
        };
        self.core.tenants.replace(tenants);
        // Server-level sections keep their running values: only the tenants are taken over.
        running.tenants = config.tenants;
        Ok(report)
    }

    fn is_admin(&self, headers: &HeaderMap) -> bool {
        use subtle::ConstantTimeEq;
        let Some(expected) = &self.admin_key_digest else { return false };
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        presented.is_some_and(|k| bool::from(crate::config::api_key_digest(k).ct_eq(expected)))
    }
}

/// `POST /v1/admin/reload`.
async fn reload(State(r): State<Arc<Reloader>>, headers: HeaderMap) -> Response {
    if !r.is_admin(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "an admin key is required (server.admin_key_sha256)"})),
        )
            .into_response();
    }
    match r.reload().await {
        Ok(report) => (StatusCode::OK, Json(json!({"applied": true, "report": report}))).into_response(),
        Err(ReloadError::Invalid(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "applied": false,
                "error": "the new configuration is invalid; the running configuration is kept",
                "issues": e.issues.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })),
        )
            .into_response(),
        Err(e @ ReloadError::Build(_)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"applied": false, "error": format!("{e}; the running configuration is kept"), "issues": []})),
        )
            .into_response(),
        Err(e @ ReloadError::NoFile) => {
            (StatusCode::CONFLICT, Json(json!({"applied": false, "error": e.to_string()}))).into_response()
        }
    }
}

pub fn router(reloader: Arc<Reloader>) -> axum::Router {
    axum::Router::new()
        .route("/v1/admin/reload", post(reload))
        .layer(axum::extract::DefaultBodyLimit::max(1024))
        .with_state(reloader)
}
