//! Vendor-faithful HTTP emulators used by tests, the load test and the no-credentials demo.
//! Each emulator binds 127.0.0.1:0 inside the current process and follows the vendor's documented
//! paths, JSON shapes and faults.

pub mod admin;
pub mod control;
pub mod google_calendar;
pub mod google_push;
pub mod graph;
pub mod hubspot;
pub mod hubspot_webhooks;
pub mod pipedrive;
pub mod radicale;
pub mod salesforce;

use std::io;

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

/// Loopback ports for [`Sandbox::start_on`]; 0 picks a free one.
#[derive(Debug, Clone, Copy, Default)]
pub struct SandboxPorts {
    pub hubspot: u16,
    pub google: u16,
    pub graph: u16,
    pub salesforce: u16,
    pub pipedrive: u16,
}

/// Every emulator the service can run against, started together.
pub struct Sandbox {
    pub hubspot: HubSpotSandbox,
    pub google: GoogleCalendarSandbox,
    pub graph: graph::GraphSandbox,
    pub salesforce: salesforce::SalesforceSandbox,
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
            salesforce: salesforce::SalesforceSandbox::start_on(SALESFORCE_TOKEN, ports.salesforce)?,
            pipedrive: PipedriveSandbox::start_with_api_token_on(PIPEDRIVE_TOKEN, ports.pipedrive).await?,
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
    }
}
