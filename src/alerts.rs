//! Alerts (issue 9, item 6): when a tenant's write-back error rate or backlog age passes its
//! threshold, or its CRM connection is parked, callside POSTs one JSON alert (Slack-compatible:
//! a `text` field, plus a `callside` object for machines) to the tenant's alert webhook and shows
//! it on the console — **one alert per incident, not one per failure**.
//!
//! An incident of a kind opens when its condition becomes true while none of that kind is open
//! for the tenant, and resolves when the condition is false again (recorded, not posted). Every
//! opening and resolution is in the audit trail (`alert.opened`, `alert.resolved`). Conditions
//! are evaluated from the store (`Store::tenant_health`) after write-back progress and on a
//! clock tick, so the same numbers hold across restarts; the set of open incidents is in memory
//! (a restart during an incident posts it once more).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::observe::Metrics;
use crate::store::{Store, StoreError, TenantHealth};
use crate::tenant::Tenants;

/// `[alerts]` in a tenant file. The webhook URL is a credential (a Slack incoming webhook is), so
/// the file names the environment variable that holds it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsFile {
    /// Environment variable holding the webhook URL (https, or http for a local receiver).
    pub webhook_url_env: Option<String>,
    /// Alert when this share of write-back attempts in the window failed (1-100).
    pub error_rate_percent: u32,
    /// …and at least this many attempts were made in the window (one failure is not a trend).
    pub min_attempts: u32,
    /// The error-rate window.
    pub window_secs: u64,
    /// Alert when the oldest step waiting in the outbox was planned longer ago than this.
    pub backlog_age_secs: u64,
}

impl Default for AlertsFile {
    fn default() -> Self {
        AlertsFile {
            webhook_url_env: None,
            error_rate_percent: 50,
            min_attempts: 5,
            window_secs: 900,
            backlog_age_secs: 1800,
        }
    }
}

/// A tenant's validated alert thresholds and webhook.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    pub webhook: Option<url::Url>,
    pub error_rate_percent: u32,
    pub min_attempts: u32,
    pub window: SignedDuration,
    pub backlog_age: SignedDuration,
}

/// Validates `[alerts]`; each problem is reported through `issue(key, reason)`.
pub fn validate(file: &AlertsFile, issue: &mut impl FnMut(&str, String)) -> Option<AlertSettings> {
    let mut ok = true;
    let mut bad = |key: &str, reason: String, issue: &mut dyn FnMut(&str, String)| {
        ok = false;
        issue(key, reason);
    };
    if !(1..=100).contains(&file.error_rate_percent) {
        bad("alerts.error_rate_percent", "must be between 1 and 100".into(), issue);
    }
    if file.min_attempts == 0 {
        bad("alerts.min_attempts", "must be at least 1".into(), issue);
    }
    if !(60..=86_400).contains(&file.window_secs) {
        bad("alerts.window_secs", "must be between 60 and 86400".into(), issue);
    }
    if !(60..=7 * 86_400).contains(&file.backlog_age_secs) {
        bad("alerts.backlog_age_secs", "must be between 60 and 604800".into(), issue);
    }
    let mut webhook = None;
    if let Some(var) = &file.webhook_url_env {
        match std::env::var(var).map(|v| url::Url::parse(v.trim())) {
            Ok(Ok(u)) if matches!(u.scheme(), "https" | "http") => webhook = Some(u),
            // The value is a credential: never echo it.
            Ok(_) => bad("alerts.webhook_url_env", format!("{var} does not hold an http(s) URL"), issue),
            Err(_) => bad("alerts.webhook_url_env", format!("environment variable {var} is not set"), issue),
        }
    }
    ok.then(|| AlertSettings {
        webhook,
        error_rate_percent: file.error_rate_percent,
        min_attempts: file.min_attempts,
        window: SignedDuration::from_secs(file.window_secs as i64),
        backlog_age: SignedDuration::from_secs(file.backlog_age_secs as i64),
    })
}

/// What an incident is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// The write-back error rate passed the threshold.
    SyncErrors,
    /// The oldest waiting step is older than the threshold.
    BacklogAge,
    /// Steps are parked on a revoked CRM connection.
    ConnectionParked,
}

impl IncidentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::SyncErrors => "sync_errors",
            IncidentKind::BacklogAge => "backlog_age",
            IncidentKind::ConnectionParked => "connection_parked",
        }
    }
}

/// One incident, open or resolved, as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    pub id: String,
    pub tenant: String,
    pub kind: IncidentKind,
    /// What was seen when it opened, in words.
    pub message: String,
    pub opened_at: String,
    pub resolved_at: Option<String>,
    /// Whether the webhook accepted the alert (`None`: no webhook configured, or not answered yet).
    pub delivered: Option<bool>,
}

/// The conditions that hold for a tenant's health, each with its message.
pub fn conditions(settings: &AlertSettings, health: &TenantHealth, now: Timestamp) -> Vec<(IncidentKind, String)> {
    let mut out = Vec::new();
    if health.attempts >= i64::from(settings.min_attempts)
        && health.failures * 100 >= health.attempts * i64::from(settings.error_rate_percent)
    {
        out.push((
            IncidentKind::SyncErrors,
            format!(
                "write-back error rate {}% over the last {} min ({} of {} attempts failed; threshold {}%)",
                health.failures * 100 / health.attempts,
                settings.window.as_secs() / 60,
                health.failures,
                health.attempts,
                settings.error_rate_percent
            ),
        ));
    }
    if let Some(oldest) = health.oldest_pending_at {
        let age = now.as_millisecond() - oldest;
        if age > settings.backlog_age.as_millis() as i64 {
            out.push((
                IncidentKind::BacklogAge,
                format!(
                    "write-back backlog: {} step(s) waiting, the oldest for {} min (threshold {} min)",
                    health.pending,
                    age / 60_000,
                    settings.backlog_age.as_secs() / 60
                ),
            ));
        }
    }
    if health.parked > 0 {
        out.push((
            IncidentKind::ConnectionParked,
            format!("CRM connection revoked: {} write-back step(s) parked until it is re-authorized", health.parked),
        ));
    }
    out
}

/// The alerter's clock tick (the backlog's age grows without any write-back progress).
pub const ALERT_TICK: SignedDuration = SignedDuration::from_secs(60);

/// How many resolved incidents per tenant the console keeps showing.
const KEEP_RESOLVED: usize = 20;

/// Evaluates every tenant's conditions and keeps the incidents.
pub struct Alerter {
    store: Store,
    tenants: Arc<Tenants>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
    incidents: Mutex<Vec<Incident>>,
    /// One evaluation pass at a time: two concurrent passes could both open the same incident.
    pass: tokio::sync::Mutex<()>,
    /// Bumped after each evaluation pass and each delivery: tests and the console wait on it.
    evaluated: watch::Sender<u64>,
}

impl Alerter {
    pub fn new(
        store: Store,
        tenants: Arc<Tenants>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        client: reqwest::Client,
    ) -> Arc<Alerter> {
        Arc::new(Alerter {
            store,
            tenants,
            clock,
            metrics,
            client,
            incidents: Mutex::new(Vec::new()),
            pass: tokio::sync::Mutex::new(()),
            evaluated: watch::channel(0).0,
        })
    }

    /// Changes after every evaluation pass and every delivery attempt.
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.evaluated.subscribe()
    }

    /// The tenant's open incidents and its latest resolved ones, newest first.
    pub fn incidents(&self, tenant: &str) -> Vec<Incident> {
        let all = self.incidents.lock().expect("incidents lock");
        all.iter().rev().filter(|i| i.tenant == tenant).cloned().collect()
    }

    /// The tenant's open incidents.
    pub fn open_incidents(&self, tenant: &str) -> Vec<Incident> {
        self.incidents(tenant).into_iter().filter(|i| i.resolved_at.is_none()).collect()
    }

    /// Evaluates after every write-back progress signal and every [`ALERT_TICK`] of domain time,
    /// until `stop`. Progress signals that arrive during a pass are coalesced into the next pass.
    /// With `leader`, a pass runs only while this instance holds the alerts job's lease
    /// (`crate::leader`): several instances on one store post each incident once, not once each.
    pub async fn run(
        self: Arc<Self>,
        mut progress: watch::Receiver<u64>,
        stop: CancellationToken,
        leader: Option<crate::leader::JobGate>,
    ) {
        loop {
            // The tick is due a minute after this pass started (read before the lease is decided).
            let tick = self.clock.sleep_until(self.clock.now() + ALERT_TICK);
            if crate::leader::leads(leader.as_ref()).await
                && let Err(e) = self.evaluate().await
            {
                tracing::warn!(error = %e, "alert evaluation failed; retrying on the next signal");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = progress.changed() => if changed.is_err() { return },
                _ = tick => {},
                // A store error must not stall alerts for good.
                _ = tokio::time::sleep(Duration::from_secs(30)) => {},
            }
        }
    }

    /// One pass over every tenant with alerts configured: opens and resolves incidents.
    pub async fn evaluate(self: &Arc<Self>) -> Result<(), StoreError> {
        let _pass = self.pass.lock().await;
        let now = self.clock.now();
        for tenant in self.tenants.all() {
            let Some(settings) = tenant.config.alerts.clone() else { continue };
            let health = self.store.tenant_health(tenant.id(), now - settings.window).await?;
            let holding = conditions(&settings, &health, now);
            for kind in [IncidentKind::SyncErrors, IncidentKind::BacklogAge, IncidentKind::ConnectionParked] {
                let condition = holding.iter().find(|(k, _)| *k == kind);
                let open = self.open_incident(tenant.id(), kind);
                match (condition, open) {
                    (Some((_, message)), None) => {
                        self.open(tenant.id(), &tenant.config.name, kind, message, &settings, now).await?
                    }
                    (None, Some(id)) => self.resolve(tenant.id(), &id, kind, now).await?,
                    _ => {}
                }
            }
        }
        self.evaluated.send_modify(|n| *n += 1);
        Ok(())
    }

    fn open_incident(&self, tenant: &str, kind: IncidentKind) -> Option<String> {
        let all = self.incidents.lock().expect("incidents lock");
        all.iter().find(|i| i.tenant == tenant && i.kind == kind && i.resolved_at.is_none()).map(|i| i.id.clone())
    }

    async fn open(
        self: &Arc<Self>,
        tenant: &str,
        business: &str,
        kind: IncidentKind,
        message: &str,
        settings: &AlertSettings,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let incident = Incident {
            id: uuid::Uuid::new_v4().to_string(),
            tenant: tenant.to_owned(),
            kind,
            message: message.to_owned(),
            opened_at: now.to_string(),
            resolved_at: None,
            delivered: None,
        };
        self.store
            .audit(
                tenant,
                None,
                None,
                "alert.opened",
                &json!({"incident": incident.id, "kind": kind.as_str(), "message": message}),
                now,
            )
            .await?;
        self.metrics.count_alert(kind.as_str());
        tracing::error!(alert = kind.as_str(), tenant, incident = %incident.id, "{message}");
        {
            let mut all = self.incidents.lock().expect("incidents lock");
            all.push(incident.clone());
            prune(&mut all, tenant);
        }
        if let Some(url) = settings.webhook.clone() {
            let body = json!({
                "text": format!("callside alert · {business}: {message}"),
                "callside": {
                    "incident_id": incident.id,
                    "tenant": tenant,
                    "kind": kind.as_str(),
                    "message": message,
                    "opened_at": incident.opened_at,
                },
            });
            // Delivered off the evaluation pass: a slow receiver must not delay other tenants.
            let this = self.clone();
            tokio::spawn(async move {
                let delivered = this.deliver(url, &body).await;
                {
                    let mut all = this.incidents.lock().expect("incidents lock");
                    if let Some(i) = all.iter_mut().find(|i| i.id == incident.id) {
                        i.delivered = Some(delivered);
                    }
                }
                this.evaluated.send_modify(|n| *n += 1);
            });
        }
        Ok(())
    }

    /// One POST, retried once on a transport error or a 5xx/429. The URL is never logged.
    async fn deliver(&self, url: url::Url, body: &serde_json::Value) -> bool {
        for attempt in 1..=2 {
            let sent = self.client.post(url.clone()).timeout(Duration::from_secs(10)).json(body).send().await;
            match sent {
                Ok(r) if r.status().is_success() => return true,
                Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                    tracing::warn!(status = r.status().as_u16(), attempt, "alert webhook refused the alert");
                }
                Ok(r) => {
                    tracing::warn!(status = r.status().as_u16(), "alert webhook rejected the alert; not retried");
                    return false;
                }
                Err(e) => tracing::warn!(error = %e.without_url(), attempt, "alert webhook unreachable"),
            }
        }
        false
    }

    async fn resolve(&self, tenant: &str, id: &str, kind: IncidentKind, now: Timestamp) -> Result<(), StoreError> {
        self.store
            .audit(tenant, None, None, "alert.resolved", &json!({"incident": id, "kind": kind.as_str()}), now)
            .await?;
        tracing::info!(alert = kind.as_str(), tenant, incident = id, "alert resolved");
        let mut all = self.incidents.lock().expect("incidents lock");
        if let Some(i) = all.iter_mut().find(|i| i.id == id) {
            i.resolved_at = Some(now.to_string());
        }
        Ok(())
    }
}

/// Keeps the open incidents and the newest `KEEP_RESOLVED` resolved ones of the tenant.
fn prune(all: &mut Vec<Incident>, tenant: &str) {
    let resolved = all.iter().filter(|i| i.tenant == tenant && i.resolved_at.is_some()).count();
    let mut drop = resolved.saturating_sub(KEEP_RESOLVED);
    all.retain(|i| {
        if drop > 0 && i.tenant == tenant && i.resolved_at.is_some() {
            drop -= 1;
            return false;
        }
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AlertSettings {
        validate(&AlertsFile::default(), &mut |k, r| panic!("{k}: {r}")).unwrap()
    }

    #[test]
    fn the_error_rate_needs_enough_attempts_and_the_threshold() {
        let now: Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
        let h = |attempts, failures| TenantHealth { attempts, failures, ..Default::default() };
        assert!(conditions(&settings(), &h(4, 4), now).is_empty(), "4 attempts are below min_attempts");
        assert!(conditions(&settings(), &h(10, 4), now).is_empty(), "40% is below 50%");
        let c = conditions(&settings(), &h(10, 5), now);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, IncidentKind::SyncErrors);
        assert!(c[0].1.contains("5 of 10"), "{}", c[0].1);
    }

    #[test]
    fn backlog_age_and_parked_steps() {
        let now: Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
        let at = |mins: i64| Some(now.as_millisecond() - mins * 60_000);
        let young = TenantHealth { pending: 3, oldest_pending_at: at(30), ..Default::default() };
        assert!(conditions(&settings(), &young, now).is_empty(), "exactly the threshold is not past it");
        let old = TenantHealth { pending: 3, oldest_pending_at: at(31), parked: 2, ..Default::default() };
        let kinds: Vec<_> = conditions(&settings(), &old, now).into_iter().map(|c| c.0).collect();
        assert_eq!(kinds, vec![IncidentKind::BacklogAge, IncidentKind::ConnectionParked]);
    }

    #[test]
    fn bad_thresholds_and_a_missing_webhook_variable_are_reported() {
        let file = AlertsFile {
            webhook_url_env: Some("CALLSIDE_TEST_ONLY_NO_SUCH_ALERT_VAR".into()),
            error_rate_percent: 0,
            min_attempts: 0,
            window_secs: 5,
            backlog_age_secs: 10,
        };
        let mut issues = vec![];
        assert!(validate(&file, &mut |k, r| issues.push(format!("{k}: {r}"))).is_none());
        assert_eq!(issues.len(), 5, "{issues:?}");
        assert!(issues[4].contains("CALLSIDE_TEST_ONLY_NO_SUCH_ALERT_VAR is not set"), "{issues:?}");
    }
}
