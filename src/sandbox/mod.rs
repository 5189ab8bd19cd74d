//! Vendor-faithful HTTP emulators used by tests, the load test and the no-credentials demo.
//! Each emulator binds 127.0.0.1:0 inside the current process and follows the vendor's documented
//! paths, JSON shapes and faults.

pub mod admin;
pub mod control;
pub mod google_calendar;
pub mod graph;
pub mod hubspot;
pub mod hubspot_webhooks;
pub mod pipedrive;
pub mod radicale;

use std::io;

use google_calendar::GoogleCalendarSandbox;
use hubspot::HubSpotSandbox;
use pipedrive::PipedriveSandbox;

/// The bearer tokens the emulators accept. They protect nothing (loopback, fake data) and exist
/// so the connectors' auth paths run exactly as against the vendor.
pub const HUBSPOT_TOKEN: &str = "sandbox-hubspot-token";
pub const GOOGLE_TOKEN: &str = "sandbox-google-token";
pub const GRAPH_TOKEN: &str = "sandbox-graph-token";
pub const PIPEDRIVE_TOKEN: &str = "sandbox-pipedrive-api-token";

/// Loopback ports for [`Sandbox::start_on`]; 0 picks a free one.
#[derive(Debug, Clone, Copy, Default)]
pub struct SandboxPorts {
    pub hubspot: u16,
    pub google: u16,
    pub graph: u16,
}

/// Every emulator the service can run against, started together.
pub struct Sandbox {
    pub hubspot: HubSpotSandbox,
    pub google: GoogleCalendarSandbox,
    pub graph: graph::GraphSandbox,
    pub pipedrive: PipedriveSandbox,
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
            // Any free port: the out-of-process sandbox's control port does not list it yet.
            pipedrive: PipedriveSandbox::start_with_api_token(PIPEDRIVE_TOKEN).await?,
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
        // The same returning customer for tenants on Pipedrive.
        let ana = self.pipedrive.state.insert_person(
            "Ana López",
            Some("ana.lopez@example.com"),
            &["(415) 555-0134"],
            Some("94110"),
            None,
        );
        self.pipedrive.state.insert_deal(&ana, "Color correction package", "open", pipedrive::STAGES[0].0);
    }
}
