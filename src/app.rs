//! Building and running the application: config in, a bound listener and every long-lived task
//! out, with a two-phase graceful shutdown (stop accepting → let calls finish within the grace
//! period → close the rest → flush the outbox → close the store).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::booking::BookingService;
use crate::clock::SharedClock;
use crate::config::{Config, VendorSection};
use crate::connectors::calendar::CalendarConnector;
use crate::connectors::calendar::google::GoogleCalendarConnector;
use crate::connectors::crm::CrmConnector;
use crate::connectors::crm::hubspot::HubSpotConnector;
use crate::connectors::http_client;
use crate::context::ContextService;
use crate::gateway::{self, AppState};
use crate::observe::Metrics;
use crate::sandbox::{self, Sandbox};
use crate::session::{Core, Sessions};
use crate::store::Store;
use crate::tenant::{Tenant, Tenants};
use crate::writeback::{EndReason, Worker, WorkerHandle};

pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
    worker: Worker,
    sandbox: Option<Sandbox>,
    grace: Duration,
}

impl Application {
    /// Builds everything and binds the listener; nothing is served until [`Application::run`].
    pub async fn build(config: Config, clock: SharedClock) -> anyhow::Result<Application> {
        let needs_sandbox =
            config.tenants.iter().any(|t| t.crm.base_url == "sandbox" || t.calendar.base_url == "sandbox");
        let sandbox = if config.sandbox && needs_sandbox {
            let s = Sandbox::start().await.context("starting the sandbox emulators")?;
            s.seed_demo();
            Some(s)
        } else {
            None
        };
        let client = http_client();
        let mut tenants = Vec::new();
        for t in &config.tenants {
            let crm: Arc<dyn CrmConnector> = {
                let (url, token) =
                    endpoint(&t.crm, sandbox.as_ref().map(|s| (s.hubspot.base_url(), sandbox::HUBSPOT_TOKEN)))?;
                Arc::new(HubSpotConnector::new(url, token, client.clone()))
            };
            let calendar: Arc<dyn CalendarConnector> = {
                let (url, token) =
                    endpoint(&t.calendar, sandbox.as_ref().map(|s| (s.google.base_url(), sandbox::GOOGLE_TOKEN)))?;
                Arc::new(GoogleCalendarConnector::new(url, token, client.clone()))
            };
            tenants.push(Tenant { config: t.clone(), crm, calendar });
        }
        let tenants = Arc::new(Tenants::new(tenants));
        let store = Store::open(&config.store_url)
            .await
            .with_context(|| format!("opening the store at {}", config.store_url))?;
        let metrics = Arc::new(Metrics::new());
        let (worker, handle): (Worker, WorkerHandle) =
            Worker::new(store.clone(), tenants.clone(), clock.clone(), config.writeback.clone(), metrics.clone());
        let core = Arc::new(Core {
            tenants,
            store: store.clone(),
            clock: clock.clone(),
            context: ContextService::new(Duration::from_secs(300), 100_000),
            booking: BookingService::new(store.clone(), clock.clone()),
            worker: handle,
            metrics,
            sessions: Sessions::default(),
        });
        recover_open_calls(&core).await?;
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let state = Arc::new(AppState {
            core,
            call_permits: Arc::new(Semaphore::new(config.limits.max_concurrent_calls)),
            limits: config.limits.clone(),
            close_calls: CancellationToken::new(),
            call_tasks: TaskTracker::new(),
            draining: AtomicBool::new(false),
        });
        Ok(Application { listener, state, worker, sandbox, grace: config.shutdown_grace })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn core(&self) -> Arc<Core> {
        self.state.core.clone()
    }

    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.sandbox.as_ref()
    }

    /// Serves until `shutdown` completes, then shuts down in order.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Application { listener, state, worker, sandbox, grace } = self;
        let stop = CancellationToken::new();
        let worker_stop = CancellationToken::new();
        let worker_task = tokio::spawn(worker.run(worker_stop.clone()));
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                shutdown.await;
                stop.cancel();
            });
        }
        let router = gateway::router(state.clone());
        let serve_stop = stop.clone();
        let draining_state = state.clone();
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                serve_stop.cancelled().await;
                draining_state.draining.store(true, Ordering::Relaxed);
            })
            .await
            .context("serving HTTP")?;
        // Phase 1: no new calls; live calls get the grace period to end on their own.
        state.draining.store(true, Ordering::Relaxed);
        state.call_tasks.close();
        tracing::info!(open_calls = state.core.sessions.len(), "draining live calls");
        if tokio::time::timeout(grace, state.call_tasks.wait()).await.is_err() {
            tracing::warn!(
                open_calls = state.core.sessions.len(),
                "grace period over; closing live calls (their write-back is kept)"
            );
            state.close_calls.cancel();
            state.call_tasks.wait().await;
        }
        // Phase 2: flush the outbox (one last pass), then close the store.
        worker_stop.cancel();
        let _ = worker_task.await;
        state.core.store.close().await;
        drop(sandbox);
        tracing::info!("shutdown complete");
        Ok(())
    }
}

fn endpoint(v: &VendorSection, sandbox: Option<(url::Url, &str)>) -> anyhow::Result<(url::Url, SecretString)> {
    if v.base_url == "sandbox" {
        let (url, token) = sandbox.context("a tenant uses the sandbox but the sandbox is not running")?;
        return Ok((url, SecretString::from(token.to_owned())));
    }
    let url = url::Url::parse(&v.base_url).with_context(|| format!("{} base_url", v.vendor))?;
    let var = v.access_token_env.as_deref().context("access_token_env is required")?;
    let token = std::env::var(var).with_context(|| format!("environment variable {var}"))?;
    Ok((url, SecretString::from(token)))
}

/// Calls left open by a crash: closed as disconnected, so their write-back is planned and nothing
/// the caller said is lost.
async fn recover_open_calls(core: &Arc<Core>) -> anyhow::Result<()> {
    for call in core.store.open_calls().await? {
        let outcome = serde_json::json!({"call_id": call.call_id, "end_reason": EndReason::Disconnected.as_str(), "recovered": true});
        let steps = match call.caller {
            Some(phone) => crate::writeback::build_plan(&crate::writeback::CallOutcome {
                call_id: call.call_id.clone(),
                end_reason: EndReason::Disconnected,
                started_at: jiff::Timestamp::from_millisecond(call.started_at).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                duration_secs: 0,
                caller_phone: Some(phone),
                dialed: String::new(),
                matched_contact_id: None,
                summary: "Call interrupted by a service restart.".into(),
                disposition: Some("interrupted".into()),
                recording_url: None,
                transcript_url: None,
                caller_name: None,
                caller_email: None,
                caller_zip: None,
                bookings: vec![],
                service_names: vec![],
            }),
            None => vec![],
        };
        core.store
            .close_call_with_plan(
                &call.call_id,
                &call.tenant,
                EndReason::Disconnected.as_str(),
                &outcome,
                &steps,
                core.clock.now(),
            )
            .await?;
        tracing::warn!(call_id = %call.call_id, tenant = %call.tenant, "recovered a call left open by a previous run");
    }
    Ok(())
}
