//! Vendor-faithful HTTP emulators used by tests, the load test and the no-credentials demo.
//! Each emulator binds 127.0.0.1:0 inside the current process and follows the vendor's documented
//! paths, JSON shapes and faults.

pub mod admin;
pub mod control;
pub mod faults;
pub mod google_calendar;
pub mod google_push;
pub mod graph;
pub mod graph_notify;
pub mod hubspot;
pub mod hubspot_webhooks;
pub mod pipedrive;
pub mod pipedrive_webhooks;
pub mod radicale;
pub mod salesforce;
pub mod shopify;
pub mod square;

use std::io;
use std::sync::Arc;

use google_calendar::GoogleCalendarSandbox;
use hubspot::HubSpotSandbox;
use pipedrive::PipedriveSandbox;

/// The bearer tokens the emulators accept. They protect nothing (loopback, fake data) and exist
/// so the connectors' auth paths run exactly as against the vendor.
pub const HUBSPOT_TOKEN: &str = "sandbox-hubspot-token";
pub const GOOGLE_TOKEN: &str = "sandbox-google-token";
pub const GRAPH_TOKEN: &str = "sandbox-graph-token";
pub const SALESFORCE_TOKEN: &str = "sandbox-salesforce-token";
pub const PIPEDRIVE_TOKEN: &str = "sandbox-pipedrive-api-token";
pub const SQUARE_TOKEN: &str = "sandbox-square-token";
pub const SHOPIFY_TOKEN: &str = "sandbox-shopify-token";

/// An emulator's notion of now: the injected clock when one is set (`set_clock` on the
/// emulator's state, so what it dates and expires follows the service's clock — the tests'
/// manual one), else the system's.
#[derive(Default)]
pub(crate) struct EmulatorClock(Option<crate::clock::SharedClock>);

impl EmulatorClock {
    pub(crate) fn injected(clock: crate::clock::SharedClock) -> Self {
        Self(Some(clock))
    }

    pub(crate) fn now(&self) -> jiff::Timestamp {
        self.0.as_ref().map_or_else(jiff::Timestamp::now, |c| c.now())
    }
}

impl std::fmt::Debug for EmulatorClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "EmulatorClock(injected)" } else { "EmulatorClock(system)" })
    }
}

/// An emulator's HTTP server on a loopback port; it stops when dropped.
pub struct Served {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    /// Serves `router` on `127.0.0.1:port` (0: any free port) on the current runtime.
    pub async fn start(router: axum::Router, port: u16, name: &'static str) -> io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                tracing::warn!(error = %err, emulator = name, "sandbox emulator stopped");
            }
        });
        Ok(Self { addr, task })
    }

    /// `http://127.0.0.1:<port>/`.
    pub fn base_url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.addr)).expect("socket address forms a valid URL")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An emulator: its state (seeding, faults, what it received) and its server.
pub struct Emulator<S> {
    pub state: Arc<S>,
    server: Served,
}

impl<S> Emulator<S> {
    /// Serves `router` (built over `state`) on `127.0.0.1:port` (0: any free port).
    pub async fn serve(state: Arc<S>, router: axum::Router, port: u16, name: &'static str) -> io::Result<Self> {
        Ok(Self { state, server: Served::start(router, port, name).await? })
    }

    /// The emulator's base URL: it stands in for the vendor's API host.
    pub fn base_url(&self) -> url::Url {
        self.server.base_url()
    }
}

/// Sends one request to an emulator's router in process and reads the JSON answer (`Null` for a
/// body that is not JSON).
#[cfg(test)]
pub(crate) async fn call_router(
    app: &axum::Router,
    request: axum::http::Request<axum::body::Body>,
) -> (axum::http::StatusCode, serde_json::Value) {
    use tower::ServiceExt;
    let resp = app.clone().oneshot(request).await.expect("the router answers");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("a readable body");
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// A seeded visit at the till: when, the items (name, price in cents), who served.
type Visit = (&'static str, &'static [(&'static str, i64)], &'static str);

/// Loopback ports for [`Sandbox::start_on`]; 0 picks a free one.
#[derive(Debug, Clone, Copy, Default)]
pub struct SandboxPorts {
    pub hubspot: u16,
    pub google: u16,
    pub graph: u16,
    pub salesforce: u16,
    pub pipedrive: u16,
    pub square: u16,
    pub shopify: u16,
}

/// Every emulator the service can run against, started together.
pub struct Sandbox {
    pub hubspot: HubSpotSandbox,
    pub google: GoogleCalendarSandbox,
    pub graph: graph::GraphSandbox,
    pub salesforce: salesforce::SalesforceSandbox,
    pub pipedrive: PipedriveSandbox,
    pub square: Emulator<square::SquareState>,
    pub shopify: Emulator<shopify::ShopifyState>,
}

/// Creates the Pipedrive emulator's webhooks v2 — every person and every deal change — through
/// its API, as an operator (or a setup script) would for a real company: `POST /v1/webhooks`
/// with the subscription URL and the HTTP Basic credentials the receiver checks.
pub async fn register_pipedrive_webhooks(
    client: &reqwest::Client,
    sandbox: &Sandbox,
    subscription_url: &str,
    user: &str,
    password: &str,
) -> anyhow::Result<()> {
    let url = sandbox.pipedrive.base_url().join("v1/webhooks")?;
    for object in ["person", "deal"] {
        let body = serde_json::json!({
            "subscription_url": subscription_url, "event_action": "*", "event_object": object,
            "http_auth_user": user, "http_auth_password": password, "version": "2.0",
        });
        let answer = client.post(url.clone()).header("x-api-token", PIPEDRIVE_TOKEN).json(&body).send().await?;
        anyhow::ensure!(answer.status().is_success(), "POST /v1/webhooks answered {}", answer.status());
    }
    Ok(())
}

impl Sandbox {
    /// Starts every emulator on the current tokio runtime.
    pub async fn start() -> io::Result<Sandbox> {
        Self::start_on(SandboxPorts::default()).await
    }

    /// Starts every emulator on the given loopback ports (0: any free one).
    pub async fn start_on(ports: SandboxPorts) -> io::Result<Sandbox> {
        Ok(Sandbox {
            hubspot: HubSpotSandbox::start_on(HUBSPOT_TOKEN, ports.hubspot)?,
            google: GoogleCalendarSandbox::serve_on(
                google_calendar::GoogleCalendarState::new(GOOGLE_TOKEN),
                ports.google,
            )
            .await?,
            graph: graph::GraphSandbox::serve_on(graph::GraphState::new(GRAPH_TOKEN), ports.graph).await?,
            salesforce: salesforce::SalesforceSandbox::start_on(SALESFORCE_TOKEN, ports.salesforce)?,
            pipedrive: PipedriveSandbox::start_with_api_token_on(PIPEDRIVE_TOKEN, ports.pipedrive).await?,
            square: square::start_on(SQUARE_TOKEN, ports.square).await?,
            shopify: shopify::start_on(SHOPIFY_TOKEN, ports.shopify).await?,
        })
    }

    /// Demo data for the no-credentials demo: a returning customer with an open deal, so a
    /// newcomer calling from `+1 415 555 0134` is greeted by name.
    pub fn seed_demo(&self) {
        let ana = self.hubspot.state.insert_contact([
            ("firstname", "Ana"),
            ("lastname", "López"),
            ("email", "ana.lopez@example.com"),
            ("phone", "(415) 555-0134"),
            ("zip", "94110"),
        ]);
        self.hubspot.state.insert_deal(
            [
                ("dealname", "Color correction package"),
                ("dealstage", "appointmentscheduled"),
                ("pipeline", "default"),
                ("amount", "240"),
            ],
            &ana,
        );
        // The same returning customer in the Salesforce emulator, as a Lead with an open task.
        let lead = self.salesforce.state.insert(
            "Lead",
            &[
                ("FirstName", serde_json::json!("Ana")),
                ("LastName", serde_json::json!("López")),
                ("Company", serde_json::json!("[not provided]")),
                ("Email", serde_json::json!("ana.lopez@example.com")),
                ("Phone", serde_json::json!("(415) 555-0134")),
                ("PostalCode", serde_json::json!("94110")),
            ],
        );
        self.salesforce.state.insert(
            "Task",
            &[
                ("Subject", serde_json::json!("Send the color correction quote")),
                ("ActivityDate", serde_json::json!("2026-12-01")),
                ("WhoId", serde_json::json!(lead)),
            ],
        );
        // The same returning customer for tenants on Pipedrive.
        let ana = self.pipedrive.state.insert_person(
            "Ana López",
            Some("ana.lopez@example.com"),
            &["(415) 555-0134"],
            Some("94110"),
            None,
        );
        self.pipedrive.state.insert_deal(&ana, "Color correction package", "open", pipedrive::STAGES[0].0);
        // Her purchase history at the till, in both POS emulators: a haircut regular.
        let visits: [Visit; 4] = [
            ("2026-08-14T16:00:00Z", &[("Haircut", 6500), ("Deep conditioning", 2500)], "Sam"),
            ("2026-09-18T15:30:00Z", &[("Haircut", 6500)], "Alex"),
            ("2026-10-21T17:00:00Z", &[("Color", 12000), ("Haircut", 6500)], "Alex"),
            ("2026-11-12T15:00:00Z", &[("Haircut", 6500), ("Deep conditioning", 2500)], "Alex"),
        ];
        let ana =
            self.square.state.insert_customer("Ana", "López", Some("ana.lopez@example.com"), Some("(415) 555-0134"));
        let shop_ana = self.shopify.state.insert_customer("Ana", Some("ana.lopez@example.com"), Some("+14155550134"));
        for (at, items, staff) in visits {
            let at = at.parse().expect("valid seed timestamp");
            self.square.state.insert_order(&ana, square::DEMO_LOCATION, at, items);
            self.shopify.state.insert_order(&shop_ana, at, items, Some(staff));
        }
    }
}
