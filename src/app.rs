//! Building and running the application: config in, a bound listener and every long-lived task
//! out, with a two-phase graceful shutdown (stop accepting → let calls finish within the grace
//! period → close the rest → flush the outbox → close the store).

use crate::sandbox::admin::IntegrationFault;
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
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use std::collections::HashMap;

use crate::booking::BookingService;
use crate::clock::SharedClock;
use crate::config::{Config, VendorSection};
use crate::connections::{Connections, OAuthApp, TokenCipher, connection_id};
use crate::connectors::calendar::CalendarConnector;
use crate::connectors::calendar::caldav::{CalDavAuth, CalDavConnector};
use crate::connectors::calendar::google::GoogleCalendarConnector;
use crate::connectors::calendar::graph::GraphCalendarConnector;
use crate::connectors::crm::CrmConnector;
use crate::connectors::crm::hubspot::HubSpotConnector;
use crate::connectors::crm::pipedrive::PipedriveConnector;
use crate::connectors::crm::salesforce::SalesforceConnector;
use crate::connectors::http_client;
use crate::context::ContextService;
use crate::gateway::connect::ConnectService;
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
    connect: Arc<ConnectService>,
    console: Arc<crate::console::ConsoleState>,
    alerter: Arc<crate::alerts::Alerter>,
    reloader: Arc<crate::reload::Reloader>,
    worker: Worker,
    /// Shared with the other instances of a test that share one sandbox (`build_with_sandbox`).
    sandbox: Option<Arc<Sandbox>>,
    sandbox_admin: bool,
    grace: Duration,
    /// Seconds between identity index pulls; 0 = off.
    identity_pull: u64,
    /// Bumped after every round of identity pulls (`crate::matching::sync::spawn_with`).
    identity_rounds: tokio::sync::watch::Sender<u64>,
    retention: crate::privacy::RetentionSection,
    /// How long the inbound replay and redelivery guard keeps its keys (swept with retention).
    inbound_guard: crate::inbound::GuardRetention,
    /// Bumped after every retention sweep (`crate::privacy::spawn_sweeper`).
    retention_rounds: tokio::sync::watch::Sender<u64>,
    /// The invalidation listener (PostgreSQL) and the store URL to reopen it.
    bus: Option<(crate::store::bus::BusListener, String)>,
    /// When start-up recovery claimed dead instances: the heartbeat's takeover passes follow it.
    recovered_at: jiff::Timestamp,
}

impl Application {
    /// Builds everything and binds the listener; nothing is served until [`Application::run`].
    pub async fn build(config: Config, clock: SharedClock) -> anyhow::Result<Application> {
        Self::build_with_sandbox(config, clock, None).await
    }

    /// [`Application::build`] on another instance's emulators (several instances in one test,
    /// one CRM and calendar behind them, as in production). The emulators' webhooks keep going to
    /// the instance that started them.
    pub async fn build_with_sandbox(
        config: Config,
        clock: SharedClock,
        shared: Option<Arc<Sandbox>>,
    ) -> anyhow::Result<Application> {
        let needs_sandbox = config.tenants.iter().any(|t| {
            t.crm.base_url == "sandbox"
                || t.calendar.base_url == "sandbox"
                || t.pos.as_ref().is_some_and(|p| p.base_url.as_deref() == Some("sandbox"))
        });
        let owns_sandbox = shared.is_none();
        let sandbox = match shared {
            Some(s) => Some(s),
            None if config.sandbox && needs_sandbox => {
                let s = Sandbox::start().await.context("starting the sandbox emulators")?;
                s.seed_demo();
                // Graph subscriptions and Google channels expire, and their events are dated,
                // on the service's clock (the tests' manual one).
                s.graph.state.set_clock(clock.clone());
                s.google.state.set_clock(clock.clone());
                Some(Arc::new(s))
            }
            None => None,
        };
        let client = http_client();
        let store = Store::open(&config.store_url)
            .await
            .with_context(|| format!("opening the store at {}", crate::store::redact_url(&config.store_url)))?;
        // This instance is alive from now on (recovery below spares the calls of live instances).
        store.heartbeat(clock.now()).await.context("recording this instance's heartbeat")?;
        let released = store.release_leftover_leases().await.context("releasing a previous run's step leases")?;
        if released > 0 {
            tracing::info!(steps = released, "write-back steps claimed by a previous run resume");
        }
        // Several instances on one PostgreSQL store: listen for the others' invalidations before
        // anything is cached or served, so nothing published from now on is missed.
        let bus_listener = match store.backend() {
            crate::store::Backend::Postgres => Some(
                crate::store::bus::BusListener::connect(&config.store_url)
                    .await
                    .context("listening for the other instances' cache invalidations")?,
            ),
            crate::store::Backend::Sqlite => None,
        };
        // Bound before the connectors are built: an OAuth redirect URI needs the real address
        // when the listen port is 0.
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let public_url = if config.connect.public_url.is_empty() {
            format!("http://{}", listener.local_addr()?)
        } else {
            config.connect.public_url.trim_end_matches('/').to_owned()
        };
        let metrics = Arc::new(Metrics::new());
        let mut connect = connect_service(&config, sandbox.as_deref(), &store, &client, &clock, &public_url)?;
        connect.connections.export_refreshes(metrics.token_refreshes.clone());
        // Every vendor account's rate budget, shared by live reads and the write-back lane; it
        // outlives a config reload (the vendor keeps counting too).
        let budgets = crate::connectors::rate::RateBudgets::new(
            clock.clone(),
            config.writeback.live_reserve_percent,
            config.writeback.app_requests_per_10s,
        );
        budgets.export_throttled(metrics.vendor_rate_limited.clone());
        budgets.export_fallbacks(metrics.rate_budget_fallbacks.clone());
        // Several instances draw one budget per account between them: on Redis when
        // `[rate_budgets] url` is set (the faster backend, BENCHMARKS.md), else on PostgreSQL
        // when that is the store. Redis is connected lazily: one that is down at start falls
        // back like one that goes down later (`RateBudgets::take`).
        if !config.rate_budgets.url.is_empty() {
            let redis = crate::connectors::rate_redis::RedisBuckets::open(
                &config.rate_budgets.url,
                &config.rate_budgets.key_prefix,
                Duration::from_millis(config.rate_budgets.timeout_ms),
            )
            .map_err(|e| anyhow::anyhow!("[rate_budgets] url: {e}"))?;
            budgets.share_through_redis(redis);
        } else if store.backend() == crate::store::Backend::Postgres {
            budgets.share_through(store.clone());
        }
        tracing::info!(shared = budgets.shared_backend().unwrap_or("none (this instance only)"), "rate budgets");
        // The tenants' connectors; the same builder serves a config reload (`crate::reload`).
        let build_tenant = tenant_builder(
            sandbox.as_deref().map(SandboxUrls::of),
            &connect,
            client.clone(),
            clock.clone(),
            budgets.clone(),
        );
        let mut tenants = Vec::new();
        for t in &config.tenants {
            tenants.push(build_tenant(t)?);
        }
        let tenants = Arc::new(Tenants::new(tenants));
        let (worker, handle): (Worker, WorkerHandle) =
            Worker::new(store.clone(), tenants.clone(), clock.clone(), config.writeback.clone(), metrics.clone());
        let fault = config.sandbox_options.integration_fault;
        if let Some(f) = fault {
            // Config validation refuses this outside the sandbox.
            tracing::warn!(fault = ?f, "TEST ONLY: callside behaves like a naive integration");
        }
        let worker = worker.with_integration_fault(fault);
        connect.worker = Some(handle.clone());
        let core = Arc::new(Core {
            tenants,
            store: store.clone(),
            clock: clock.clone(),
            context: {
                let context = ContextService::new(Duration::from_secs(300), 100_000)
                    .with_lookup_counter(metrics.context_cache.clone())
                    .with_dropped_open_deals(fault == Some(IntegrationFault::DropOpenDeals));
                // TEST ONLY: a naive integration has no identity index.
                if fault == Some(IntegrationFault::NaiveCreate) {
                    context
                } else {
                    context.with_index(store.clone(), clock.clone())
                }
            },
            booking: BookingService::new(store.clone(), clock.clone()),
            worker: handle,
            metrics: metrics.clone(),
            sessions: Sessions::with_caps(
                config.limits.max_concurrent_calls,
                config.limits.max_concurrent_calls_per_tenant,
            ),
            budgets: budgets.clone(),
            calendar_sync: crate::inbound::calendar::CalendarSync::new(config.inbound.calendar.clone(), &public_url),
            bus: crate::invalidation::Bus::default(),
            outcomes: crate::outcomes::OutcomeReader::default(),
            jobs: crate::leader::Jobs::new(store.clone(), clock.clone(), metrics.clone()),
            takeovers: tokio::sync::watch::Sender::new(Default::default()),
        });
        if config.sandbox_options.unsafe_bypass_hold_ledger {
            // Config validation refuses this outside the sandbox.
            tracing::warn!("TEST ONLY: the hold ledger is bypassed; concurrent callers can be double-booked");
            core.booking.ledger.set_unsafe_bypass(true);
        }
        // The first claim of dead instances; the heartbeat's takeover passes follow from here.
        let recovered_at = clock.now();
        recover_open_calls(&core, recovered_at).await?;
        // Pending bookings keep their slots across a restart: re-held before any call is served.
        let reheld = core.booking.recover_pending().await.context("recovering pending bookings")?;
        if reheld > 0 {
            tracing::info!(reheld, "pending bookings recovered");
        }
        // The demo and the tests: the HubSpot emulator's app sends its webhooks here, for the
        // (first) sandbox tenant that names its portal.
        if let (Some(s), Some(h), true) = (&sandbox, &config.inbound.hubspot, owns_sandbox) {
            let portal = config.tenants.iter().find(|t| t.crm.base_url == "sandbox").and_then(|t| t.crm.portal_id);
            if let (Some(portal), Ok(secret)) = (portal, std::env::var(&h.client_secret_env)) {
                let target = url::Url::parse(&format!("{public_url}{}", crate::inbound::hubspot::PATH))
                    .context("the HubSpot webhook target URL")?;
                s.hubspot.state.deliver_webhooks_to(target, &secret, portal, clock.clone());
            }
        }
        // The demo and the tests: the Pipedrive emulator's company gets a webhook v2 for every
        // person and deal change, created through its API as an operator would
        // (`POST /v1/webhooks` with the Basic credentials of `[inbound.pipedrive]`), when a
        // sandbox tenant names its company.
        if let (Some(s), Some(p), true) = (&sandbox, &config.inbound.pipedrive, owns_sandbox) {
            let company = config
                .tenants
                .iter()
                .any(|t| t.crm.vendor == "pipedrive" && t.crm.base_url == "sandbox" && t.crm.company_id.is_some());
            if let (true, Ok(password)) = (company, std::env::var(&p.http_auth_password_env)) {
                let target = format!("{public_url}{}", crate::inbound::pipedrive::PATH);
                crate::sandbox::register_pipedrive_webhooks(&client, s, &target, &p.http_auth_user, &password)
                    .await
                    .context("creating the Pipedrive emulator's webhooks")?;
            }
        }
        let state = Arc::new(AppState {
            core,
            call_permits: Arc::new(Semaphore::new(config.limits.max_concurrent_calls)),
            limits: config.limits.clone(),
            tool_rate: crate::gateway::rate::ToolRate::new(
                config.limits.tool_calls_per_call_per_sec,
                config.limits.tool_calls_per_tenant_per_sec,
            ),
            close_calls: CancellationToken::new(),
            call_tasks: TaskTracker::new(),
            draining: AtomicBool::new(false),
            inbound_hubspot: config
                .inbound
                .hubspot
                .as_ref()
                .map(|h| crate::inbound::hubspot::HubSpotReceiver::new(h, &public_url)),
            inbound_pipedrive: config.inbound.pipedrive.as_ref().map(crate::inbound::pipedrive::PipedriveReceiver::new),
        });
        let core = &state.core;
        let alerter = crate::alerts::Alerter::new(
            core.store.clone(),
            core.tenants.clone(),
            core.clock.clone(),
            core.metrics.clone(),
            client.clone(),
        );
        let reloader = Arc::new(crate::reload::Reloader::new(state.core.clone(), &config, build_tenant));
        let mut console =
            crate::console::ConsoleState::new(state.core.clone(), &config.console, &public_url, alerter.clone());
        console.omit_call_log_step = fault == Some(IntegrationFault::OmitSyncStep);
        let console = Arc::new(console);
        Ok(Application {
            listener,
            state,
            connect: Arc::new(connect),
            console,
            alerter,
            reloader,
            worker,
            sandbox_admin: config.sandbox_options.admin_endpoint,
            sandbox,
            grace: config.shutdown_grace,
            identity_pull: config.identity.pull_interval_secs,
            identity_rounds: tokio::sync::watch::Sender::new(0),
            retention: config.retention.clone(),
            inbound_guard: crate::inbound::GuardRetention::new(config.inbound.calendar.as_ref()),
            retention_rounds: tokio::sync::watch::Sender::new(0),
            bus: bus_listener.map(|l| (l, config.store_url.clone())),
            recovered_at,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The config reloader (`SIGHUP` and `POST /v1/admin/reload` call it).
    pub fn reloader(&self) -> Arc<crate::reload::Reloader> {
        self.reloader.clone()
    }

    /// The alert evaluator (its incidents and progress signal).
    pub fn alerter(&self) -> Arc<crate::alerts::Alerter> {
        self.alerter.clone()
    }

    /// Counts finished rounds of identity pulls, each with its changes applied to live calls
    /// (the first runs when [`Application::run`] starts; none when the pull is off).
    pub fn identity_rounds(&self) -> tokio::sync::watch::Receiver<u64> {
        self.identity_rounds.subscribe()
    }

    /// Counts finished retention sweeps (the first runs when [`Application::run`] starts).
    pub fn retention_rounds(&self) -> tokio::sync::watch::Receiver<u64> {
        self.retention_rounds.subscribe()
    }

    pub fn core(&self) -> Arc<Core> {
        self.state.core.clone()
    }

    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.sandbox.as_deref()
    }

    /// The emulators, to start another instance on them ([`Application::build_with_sandbox`]).
    pub fn shared_sandbox(&self) -> Option<Arc<Sandbox>> {
        self.sandbox.clone()
    }

    /// Serves until `shutdown` completes, then shuts down in order. Dropping the future instead
    /// (aborting its task) stops every background task it started at once — the worker mid-step,
    /// the heartbeat — as a killed process would: the multi-instance tests kill an instance so.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            connect,
            console,
            alerter,
            reloader,
            worker,
            sandbox,
            sandbox_admin,
            grace,
            identity_pull,
            identity_rounds,
            retention,
            inbound_guard,
            retention_rounds,
            bus,
            recovered_at,
        } = self;
        // The other instances' invalidations (PostgreSQL only).
        let bus_stop = CancellationToken::new();
        let bus_task = bus.map(|(listener, url)| {
            AbortOnDropHandle::new(tokio::spawn(crate::invalidation::run(
                state.core.clone(),
                listener,
                url,
                bus_stop.clone(),
            )))
        });
        // Cluster-wide jobs run on one instance at a time (`crate::leader`; on SQLite, here).
        let jobs = state.core.jobs.clone();
        // Personal data past its retention, swept on the injected clock.
        let retention_stop = CancellationToken::new();
        let retention_gate = jobs
            .gate(crate::leader::Job::Retention, jiff::SignedDuration::from_secs(retention.sweep_interval_secs as i64));
        let retention_task = AbortOnDropHandle::new(crate::privacy::spawn_sweeper(
            state.core.store.clone(),
            retention,
            inbound_guard,
            state.core.clock.clone(),
            retention_rounds,
            retention_stop.clone(),
            Some(retention_gate),
        ));
        // The identity index's incremental pull from each tenant's CRM (off when 0); what it
        // sees changed reaches live calls too (the inbound sync's polling safety net).
        let identity_stop = CancellationToken::new();
        let identity_task = (identity_pull > 0)
            .then(|| {
                let core = &state.core;
                let interval = jiff::SignedDuration::from_secs(identity_pull as i64);
                crate::matching::sync::spawn_with(
                    core.store.clone(),
                    core.tenants.clone(),
                    core.clock.clone(),
                    interval,
                    identity_stop.clone(),
                    Some(crate::inbound::refresh_on_pull(Arc::downgrade(core))),
                    identity_rounds,
                    Some(jobs.gate(crate::leader::Job::IdentityPull, interval)),
                )
            })
            .map(AbortOnDropHandle::new);
        let stop = CancellationToken::new();
        let worker_stop = CancellationToken::new();
        let worker_task = AbortOnDropHandle::new(tokio::spawn(worker.run(worker_stop.clone())));
        // The heartbeat renews this instance's step leases while it lives (`crate::instance`).
        let heartbeat_stop = CancellationToken::new();
        let heartbeat_task = AbortOnDropHandle::new(crate::instance::spawn_heartbeat(
            state.core.clone(),
            recovered_at,
            heartbeat_stop.clone(),
        ));
        // Alerts follow the worker's progress (and a clock tick for the backlog's age).
        let alerts_stop = CancellationToken::new();
        let alerts_gate = jobs.gate(crate::leader::Job::Alerts, crate::alerts::ALERT_TICK);
        let alerts_task = AbortOnDropHandle::new(tokio::spawn(alerter.run(
            state.core.worker.progress(),
            alerts_stop.clone(),
            Some(alerts_gate),
        )));
        // Calls reached over HTTP have no socket to drop: the sweeper finishes idle ones.
        let sweeper_stop = CancellationToken::new();
        let idle = jiff::SignedDuration::from_secs(state.limits.http_session_idle_secs as i64);
        let sweeper_task =
            AbortOnDropHandle::new(tokio::spawn(state.core.clone().run_idle_sweeper(idle, sweeper_stop.clone())));
        let pending_stop = CancellationToken::new();
        let pending_task =
            AbortOnDropHandle::new(tokio::spawn(state.core.clone().run_pending_bookings(pending_stop.clone())));
        // Calendar changes: subscriptions, their renewal and the polling safety net (when
        // `[inbound.calendar]` is configured; otherwise the task returns at once).
        let calendar_stop = CancellationToken::new();
        let calendar_task = AbortOnDropHandle::new(tokio::spawn(crate::inbound::calendar::run(
            state.core.clone(),
            calendar_stop.clone(),
        )));
        // Appointment outcomes read back after each booking ends, on the injected clock.
        let outcomes_stop = CancellationToken::new();
        let outcomes_task =
            AbortOnDropHandle::new(tokio::spawn(crate::outcomes::run(state.core.clone(), outcomes_stop.clone())));
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                shutdown.await;
                stop.cancel();
            });
        }
        let router = gateway::router(state.clone())
            .merge(crate::console::router(console))
            .merge(crate::reload::router(reloader))
            .layer(axum::Extension(connect));
        let router = match &sandbox {
            Some(s) if sandbox_admin => router.merge(sandbox::admin::router(s, state.core.clone())),
            _ => router,
        };
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
        // HTTP calls still open are finished (planned as disconnected) before the last flush.
        sweeper_stop.cancel();
        let _ = sweeper_task.await;
        pending_stop.cancel();
        let _ = pending_task.await;
        calendar_stop.cancel();
        let _ = calendar_task.await;
        outcomes_stop.cancel();
        let _ = outcomes_task.await;
        identity_stop.cancel();
        if let Some(t) = identity_task {
            let _ = t.await;
        }
        // Phase 2: flush the outbox (one last pass), then close the store.
        worker_stop.cancel();
        let _ = worker_task.await;
        alerts_stop.cancel();
        let _ = alerts_task.await;
        retention_stop.cancel();
        let _ = retention_task.await;
        // The jobs stopped: the other instances take them at their next pass, not after the TTL.
        jobs.release_all().await;
        heartbeat_stop.cancel();
        let _ = heartbeat_task.await;
        bus_stop.cancel();
        if let Some(t) = bus_task {
            let _ = t.await;
        }
        state.core.store.close().await;
        drop(sandbox);
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// The builder of a tenant's connectors (CRM, calendar, POS) from its config: used at start, by a
/// config reload and by the offline operator commands ([`offline_tenant`]).
fn tenant_builder(
    sandbox_urls: Option<SandboxUrls>,
    connect: &ConnectService,
    client: reqwest::Client,
    clock: SharedClock,
    budgets: Arc<crate::connectors::rate::RateBudgets>,
) -> crate::reload::TenantBuilder {
    let apps = connect.apps.clone();
    let connections = connect.connections.clone();
    Box::new(move |t: &crate::config::TenantConfig| {
        let sandbox = sandbox_urls.as_ref();
        let crm_meter = budgets.meter(&t.crm.vendor, &t.id, t.crm.requests_per_10s());
        let calendar_meter = budgets.meter(&t.calendar.vendor, &t.id, t.calendar.requests_per_10s());
        let crm: Arc<dyn CrmConnector> = match t.crm.vendor.as_str() {
            "salesforce" => {
                salesforce_crm(t, apps.get("salesforce").cloned(), &connections, sandbox, &client, &clock, crm_meter)?
            }
            "pipedrive" => {
                pipedrive_crm(t, apps.get("pipedrive").cloned(), &connections, sandbox, &client, &clock, crm_meter)?
            }
            _ if t.crm.auth == "oauth" => {
                let (url, tokens) = oauth_connection(
                    t,
                    apps.get("hubspot").cloned().context("oauth tenant without a HubSpot OAuth app")?,
                    "hubspot",
                    sandbox.map(|s| s.hubspot.clone()),
                    &connections,
                )?;
                Arc::new(
                    HubSpotConnector::with_token_source(url, tokens, client.clone())
                        .with_contact_properties(t.account_flags.properties())
                        .with_clock(clock.clone())
                        .with_meter(crm_meter),
                )
            }
            _ => {
                let (url, token) = endpoint(&t.crm, sandbox.map(|s| (s.hubspot.clone(), sandbox::HUBSPOT_TOKEN)))?;
                Arc::new(
                    HubSpotConnector::new(url, token, client.clone())
                        .with_contact_properties(t.account_flags.properties())
                        .with_clock(clock.clone())
                        .with_meter(crm_meter),
                )
            }
        };
        let calendar: Arc<dyn CalendarConnector> = match t.calendar.vendor.as_str() {
            "caldav" => Arc::new(caldav_connector(&t.calendar, &t.name, client.clone())?),
            "microsoft" => {
                let (url, token) = endpoint(&t.calendar, sandbox.map(|s| (s.graph.clone(), sandbox::GRAPH_TOKEN)))?;
                Arc::new(GraphCalendarConnector::new(url, token, client.clone()).with_meter(calendar_meter))
            }
            _ => {
                let (url, token) = endpoint(&t.calendar, sandbox.map(|s| (s.google.clone(), sandbox::GOOGLE_TOKEN)))?;
                Arc::new(GoogleCalendarConnector::new(url, token, client.clone()).with_meter(calendar_meter))
            }
        };
        let pos = match &t.pos {
            None => None,
            Some(p) => Some(pos_connector(p, &t.id, sandbox, &client, &clock, &budgets)?),
        };
        Ok(Tenant { config: t.clone(), crm, calendar, pos })
    })
}

/// One tenant with its connectors, built from the config without serving anything: for the
/// operator commands that read the tenant's vendors (`callside audit`). Requests are charged to
/// the returned budgets (on `clock`), which count them. There is no sandbox here: a tenant on
/// `base_url = "sandbox"` is refused, since those emulators and their records live inside the
/// `callside serve` process.
pub fn offline_tenant(
    config: &Config,
    tenant_id: &str,
    store: &Store,
    clock: SharedClock,
) -> anyhow::Result<(Tenant, Arc<crate::connectors::rate::RateBudgets>)> {
    let t = config.tenants.iter().find(|t| t.id == tenant_id).with_context(|| format!("no tenant {tenant_id:?}"))?;
    let on_sandbox = t.crm.base_url == "sandbox"
        || t.calendar.base_url == "sandbox"
        || t.pos.as_ref().is_some_and(|p| p.base_url.as_deref() == Some("sandbox"));
    anyhow::ensure!(
        !on_sandbox,
        "tenant {tenant_id:?} uses the in-process sandbox (base_url = \"sandbox\"), whose records live only inside \
         the running service; point its base_url at the vendor (or at `callside sandbox`'s URLs) to audit it"
    );
    let client = http_client();
    let public_url = match config.connect.public_url.as_str() {
        "" => format!("http://{}", config.listen),
        url => url.trim_end_matches('/').to_owned(),
    };
    let connect = connect_service(config, None, store, &client, &clock, &public_url)?;
    let budgets = crate::connectors::rate::RateBudgets::new(
        clock.clone(),
        config.writeback.live_reserve_percent,
        config.writeback.app_requests_per_10s,
    );
    let build = tenant_builder(None, &connect, client, clock, budgets.clone());
    Ok((build(t)?, budgets))
}

/// The OAuth apps and the connection store. A configured `[connect.hubspot]` app is used as is;
/// with the sandbox running and no app configured, the sandbox's own OAuth app is used so the
/// connect flow works in the no-credentials demo.
fn connect_service(
    config: &Config,
    sandbox: Option<&Sandbox>,
    store: &Store,
    client: &reqwest::Client,
    clock: &SharedClock,
    public_url: &str,
) -> anyhow::Result<ConnectService> {
    let cipher = match TokenCipher::from_env() {
        Ok(c) => c,
        Err(_)
            if config.connect.hubspot.is_none()
                && config.connect.salesforce.is_none()
                && config.connect.pipedrive.is_none() =>
        {
            // Only sandbox connections can exist: their tokens are worthless outside this
            // process, so a per-process key is acceptable (they cannot be read after a restart).
            tracing::warn!("CALLSIDE_SECRET_KEY is not set; sandbox connections are encrypted with a per-process key");
            TokenCipher::generate()
        }
        Err(e) => anyhow::bail!("CALLSIDE_SECRET_KEY is required to store OAuth tokens: {e}"),
    };
    let connections = Arc::new(Connections::new(store.clone(), Arc::new(cipher), client.clone(), clock.clone()));
    let mut apps = HashMap::new();
    let redirect = format!("{public_url}/v1/connect/hubspot/callback");
    if let Some(app) = &config.connect.hubspot {
        let parse = |v: &Option<String>, default: &str| url::Url::parse(v.as_deref().unwrap_or(default));
        let authorize =
            parse(&app.authorize_base_url, "https://app.hubspot.com/").context("connect.hubspot.authorize_base_url")?;
        let api = parse(&app.api_base_url, "https://api.hubapi.com/").context("connect.hubspot.api_base_url")?;
        let oauth = OAuthApp::hubspot_from_env(&app.client_id_env, &app.client_secret_env, &redirect, &authorize, &api)
            .map_err(|e| anyhow::anyhow!(e))?;
        apps.insert("hubspot".to_owned(), Arc::new(oauth));
    } else if let Some(s) = sandbox {
        let base = s.hubspot.base_url();
        let oauth = OAuthApp::hubspot(
            sandbox::hubspot::OAUTH_CLIENT_ID,
            SecretString::from(sandbox::hubspot::OAUTH_CLIENT_SECRET.to_owned()),
            &redirect,
            &base,
            &base,
        )?;
        apps.insert("hubspot".to_owned(), Arc::new(oauth));
    }
    let redirect = format!("{public_url}/v1/connect/salesforce/callback");
    if let Some(app) = &config.connect.salesforce {
        let login = url::Url::parse(app.authorize_base_url.as_deref().unwrap_or("https://login.salesforce.com/"))
            .context("connect.salesforce.authorize_base_url")?;
        let oauth = OAuthApp::salesforce_from_env(&app.client_id_env, &app.client_secret_env, &redirect, &login)
            .map_err(|e| anyhow::anyhow!(e))?;
        apps.insert("salesforce".to_owned(), Arc::new(oauth));
    } else if let Some(s) = sandbox {
        let oauth = OAuthApp::salesforce(
            sandbox::salesforce::OAUTH_CLIENT_ID,
            SecretString::from(sandbox::salesforce::OAUTH_CLIENT_SECRET.to_owned()),
            &redirect,
            &s.salesforce.base_url(),
        )?;
        apps.insert("salesforce".to_owned(), Arc::new(oauth));
    }
    // Pipedrive: one OAuth server for the authorize page and the token endpoint.
    let pipedrive_redirect = format!("{public_url}/v1/connect/pipedrive/callback");
    if let Some(app) = &config.connect.pipedrive {
        let oauth_base = url::Url::parse(app.authorize_base_url.as_deref().unwrap_or("https://oauth.pipedrive.com/"))
            .context("connect.pipedrive.authorize_base_url")?;
        let oauth =
            OAuthApp::pipedrive_from_env(&app.client_id_env, &app.client_secret_env, &pipedrive_redirect, &oauth_base)
                .map_err(|e| anyhow::anyhow!(e))?;
        apps.insert("pipedrive".to_owned(), Arc::new(oauth));
    } else if let Some(s) = sandbox {
        let oauth = OAuthApp::pipedrive(
            sandbox::pipedrive::OAUTH_CLIENT_ID,
            SecretString::from(sandbox::pipedrive::OAUTH_CLIENT_SECRET.to_owned()),
            &pipedrive_redirect,
            &s.pipedrive.base_url(),
        )?;
        apps.insert("pipedrive".to_owned(), Arc::new(oauth));
    }
    Ok(ConnectService { connections, apps, worker: None })
}

/// The emulators' base URLs, for tenants whose `base_url` is `"sandbox"` (owned, so the tenant
/// builder can outlive a borrow of the sandbox for config reloads).
struct SandboxUrls {
    hubspot: url::Url,
    google: url::Url,
    graph: url::Url,
    salesforce: url::Url,
    pipedrive: url::Url,
    square: url::Url,
    shopify: url::Url,
}

impl SandboxUrls {
    fn of(s: &Sandbox) -> Self {
        Self {
            hubspot: s.hubspot.base_url(),
            google: s.google.base_url(),
            graph: s.graph.base_url(),
            salesforce: s.salesforce.base_url(),
            pipedrive: s.pipedrive.base_url(),
            square: s.square.base_url(),
            shopify: s.shopify.base_url(),
        }
    }
}

/// A tenant's Salesforce connector: through its OAuth connection (the org's API host comes with
/// the tokens as the connection's API base URL; `base_url` is only the fallback) or a static
/// token against `base_url`.
fn salesforce_crm(
    t: &crate::config::TenantConfig,
    app: Option<Arc<OAuthApp>>,
    connections: &Arc<Connections>,
    sandbox: Option<&SandboxUrls>,
    client: &reqwest::Client,
    clock: &SharedClock,
    meter: crate::connectors::rate::Meter,
) -> anyhow::Result<Arc<dyn CrmConnector>> {
    let new_callers = t.crm.new_callers.unwrap_or_default();
    let connector = if t.crm.auth == "oauth" {
        let app = app.context("oauth tenant without a Salesforce connected app")?;
        let (url, tokens) = oauth_connection(t, app, "salesforce", sandbox.map(|s| s.salesforce.clone()), connections)?;
        SalesforceConnector::with_token_source(url, tokens, client.clone())
    } else {
        let (url, token) = endpoint(&t.crm, sandbox.map(|s| (s.salesforce.clone(), sandbox::SALESFORCE_TOKEN)))?;
        SalesforceConnector::new(url, token, client.clone())
    };
    Ok(Arc::new(connector.with_new_callers(new_callers).with_clock(clock.clone()).with_meter(meter)))
}

/// A Pipedrive tenant's connector: over its OAuth connection (the API base URL is the
/// connection's `api_domain`; `base_url` is only the fallback) or with a personal API token.
fn pipedrive_crm(
    t: &crate::config::TenantConfig,
    app: Option<Arc<OAuthApp>>,
    connections: &Arc<Connections>,
    sandbox: Option<&SandboxUrls>,
    client: &reqwest::Client,
    clock: &SharedClock,
    meter: crate::connectors::rate::Meter,
) -> anyhow::Result<Arc<dyn CrmConnector>> {
    let connector = if t.crm.auth == "oauth" {
        let app = app.context("oauth tenant without a Pipedrive OAuth app")?;
        let (url, tokens) = oauth_connection(t, app, "pipedrive", sandbox.map(|s| s.pipedrive.clone()), connections)?;
        PipedriveConnector::with_token_source(url, tokens, client.clone())
    } else {
        let (url, token) = endpoint(&t.crm, sandbox.map(|s| (s.pipedrive.clone(), sandbox::PIPEDRIVE_TOKEN)))?;
        PipedriveConnector::new(url, token, client.clone())
    };
    Ok(Arc::new(connector.with_clock(clock.clone()).with_meter(meter)))
}

/// A tenant's point of sale: the emulator for `base_url = "sandbox"`, else the vendor with the
/// token from `access_token_env`; every request charged to the tenant's POS budget.
fn pos_connector(
    p: &crate::config::PosSection,
    tenant: &str,
    sandbox: Option<&SandboxUrls>,
    client: &reqwest::Client,
    clock: &SharedClock,
    budgets: &Arc<crate::connectors::rate::RateBudgets>,
) -> anyhow::Result<Arc<dyn crate::connectors::pos::PosConnector>> {
    use crate::connectors::pos::{PosHttp, shopify::ShopifyPos, square::SquarePos};
    let (url, token) = match p.base_url() {
        None => {
            let s = sandbox.context("a tenant's POS uses the sandbox but the sandbox is not running")?;
            match p.vendor.as_str() {
                "shopify" => (s.shopify.clone(), sandbox::SHOPIFY_TOKEN.to_owned()),
                _ => (s.square.clone(), sandbox::SQUARE_TOKEN.to_owned()),
            }
        }
        Some(base) => {
            let url = url::Url::parse(&base).context("pos base_url")?;
            let var = p.access_token_env.as_deref().context("pos.access_token_env is required")?;
            (url, std::env::var(var).with_context(|| format!("environment variable {var}"))?)
        }
    };
    let http = PosHttp::new(client.clone(), SecretString::from(token))
        .with_meter(budgets.meter(&p.vendor, tenant, p.requests_per_10s.unwrap_or(0)))
        .with_clock(clock.clone());
    Ok(match p.vendor.as_str() {
        "shopify" => Arc::new(ShopifyPos::new(url, http).with_version(p.version()).with_staff(p.read_staff)),
        _ => Arc::new(SquarePos::new(url, p.location_ids.clone(), http).with_version(p.version())),
    })
}

/// The base URL and token source of a tenant's OAuth connection to a CRM vendor: the sandbox
/// emulator's URL when `base_url = "sandbox"` and the sandbox runs, else `base_url` (for
/// Salesforce and Pipedrive only the fallback: the connection's own API base URL wins).
fn oauth_connection(
    t: &crate::config::TenantConfig,
    app: Arc<OAuthApp>,
    vendor: &str,
    sandbox_url: Option<url::Url>,
    connections: &Arc<Connections>,
) -> anyhow::Result<(url::Url, Arc<dyn crate::connections::TokenSource>)> {
    let url = match (sandbox_url, t.crm.base_url.as_str()) {
        (Some(url), "sandbox") => url,
        (_, base) => url::Url::parse(base).context("crm.base_url")?,
    };
    Ok((url, connections.token_source(app, &connection_id(&t.id, vendor))))
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

/// A CalDAV server from a tenant's `[calendar]`: Basic credentials when configured (the password
/// read from the named environment variable), the business as the events' organizer.
fn caldav_connector(v: &VendorSection, business: &str, client: reqwest::Client) -> anyhow::Result<CalDavConnector> {
    let url = url::Url::parse(&v.base_url).context("caldav base_url")?;
    let auth = match (&v.username, &v.password_env) {
        (Some(username), Some(var)) => {
            let password = std::env::var(var).with_context(|| format!("environment variable {var}"))?;
            CalDavAuth::Basic { username: username.clone(), password: SecretString::from(password) }
        }
        _ => CalDavAuth::None,
    };
    let connector = CalDavConnector::new(url, auth, client);
    Ok(match &v.organizer_email {
        Some(email) => connector.with_organizer(business, email),
        None => connector,
    })
}

/// Calls left open by a crash, recovered at start-up: first the dead instances this one claims
/// (PostgreSQL: their rows pruned, their open calls made this instance's, exactly once across
/// every claimant — `Store::claim_dead_instances`), then the open calls of no live instance still
/// left (a previous run's on SQLite; on PostgreSQL a call of no recorded instance, or one whose
/// instance another claimant is taking over this very moment).
async fn recover_open_calls(core: &Arc<Core>, now: jiff::Timestamp) -> anyhow::Result<()> {
    let taken = core.store.claim_dead_instances(now).await.context("claiming dead instances")?;
    if !taken.instances.is_empty() {
        tracing::warn!(instances = ?taken.instances, calls = taken.calls.len(), "took over instances that stopped beating");
    }
    let mut calls = taken.calls;
    // Other live instances' calls are theirs (PostgreSQL: by heartbeat; SQLite: one instance).
    calls.extend(core.store.open_calls(now, crate::store::INSTANCE_DEAD_AFTER).await?);
    recover_calls(core, calls).await?;
    Ok(())
}

/// Closes each call as disconnected with the write-back plan its outcome so far gives, so
/// nothing the caller said is lost: the one recovery of start-up and of a live instance's
/// takeover pass (`crate::instance`). Another instance recovering the same call at once is
/// harmless: a call gets exactly one plan (`Store::close_call_with_plan` answers `false` to the
/// second). Returns how many calls this instance closed.
pub(crate) async fn recover_calls(core: &Core, calls: Vec<crate::store::CallRow>) -> anyhow::Result<usize> {
    let mut closed = 0;
    for call in calls {
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
                appointment_changes: vec![],
                ..Default::default()
            }),
            None => vec![],
        };
        // A shadow or review tenant's recovered call is held like any other of its calls.
        let mode = core.tenants.by_id(&call.tenant).map(|t| t.config.writeback_rules.mode);
        let (id, tenant, reason, now) =
            (&call.call_id, &call.tenant, EndReason::Disconnected.as_str(), core.clock.now());
        let mine = match mode {
            Some(m @ (crate::writeback::settings::Mode::Shadow | crate::writeback::settings::Mode::Review)) => {
                let review = m == crate::writeback::settings::Mode::Review;
                core.store.close_call_with_held_plan(id, tenant, reason, &outcome, &steps, review, now).await?
            }
            _ => core.store.close_call_with_plan(id, tenant, reason, &outcome, &steps, now).await?,
        };
        if mine {
            closed += 1;
            tracing::warn!(call_id = %call.call_id, tenant = %call.tenant, "recovered a call left open by an instance that is gone");
        }
    }
    Ok(closed)
}
