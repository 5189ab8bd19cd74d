//! The three CRMs of the sandbox, for tests that run the same scenario on each: how a tenant names
//! the CRM, the pilot's switches over its emulator, and what the emulator holds, in neutral terms
//! (so the assertions read the vendor's own records, never callside's store).

use std::sync::Arc;

use callside::config::TenantFile;
use callside::pilot::{Degrade, SandboxHubSpot, SandboxPipedrive, SandboxSalesforce};
use callside::sandbox::hubspot::{ObjectType, SandboxObject};
use callside::sandbox::pipedrive as pd;
use callside::sandbox::salesforce::{self as sf, Record};
use jiff::Timestamp;
use serde_json::{Map, Value};

use crate::helpers::TestApp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crm {
    HubSpot,
    Salesforce,
    Pipedrive,
}

/// A datum the write-back writes to a contact, named neutrally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    FirstName,
    LastName,
    Email,
    Zip,
    Intent,
    Urgency,
    Sentiment,
    Language,
    ServiceInterest,
    Budget,
    LastWritten,
}

/// A follow-up task as the CRM holds it.
#[derive(Debug, Clone)]
pub struct Task {
    pub subject: String,
    pub owner: Option<String>,
    /// `LOW`, `MEDIUM` or `HIGH` (Pipedrive keeps it in the activity's note).
    pub priority: Option<String>,
    pub due: Option<Timestamp>,
}

impl Crm {
    pub const ALL: [Crm; 3] = [Crm::HubSpot, Crm::Salesforce, Crm::Pipedrive];

    pub fn name(self) -> &'static str {
        match self {
            Crm::HubSpot => "hubspot",
            Crm::Salesforce => "salesforce",
            Crm::Pipedrive => "pipedrive",
        }
    }

    /// The tenant on this CRM's sandbox. Salesforce's new callers become Contacts: the pilot
    /// seeds its known caller with an open opportunity, and a Lead cannot have one.
    pub fn tenant(self, mut tenant: TenantFile) -> TenantFile {
        let crm = match self {
            Crm::HubSpot => "vendor = \"hubspot\"\nbase_url = \"sandbox\"\n",
            Crm::Salesforce => "vendor = \"salesforce\"\nbase_url = \"sandbox\"\nnew_callers = \"contact\"\n",
            Crm::Pipedrive => "vendor = \"pipedrive\"\nbase_url = \"sandbox\"\n",
        };
        tenant.crm = toml::from_str(crm).expect("crm table parses");
        tenant
    }

    pub fn degrade(self, app: &TestApp) -> Arc<dyn Degrade> {
        match self {
            Crm::HubSpot => {
                Arc::new(SandboxHubSpot { state: app.hubspot.clone(), token: callside::sandbox::HUBSPOT_TOKEN.into() })
            }
            Crm::Salesforce => Arc::new(SandboxSalesforce {
                state: app.salesforce.clone(),
                token: callside::sandbox::SALESFORCE_TOKEN.into(),
            }),
            Crm::Pipedrive => Arc::new(SandboxPipedrive {
                state: app.pipedrive.clone(),
                token: callside::sandbox::PIPEDRIVE_TOKEN.into(),
            }),
        }
    }

    pub fn set_down(self, app: &TestApp, down: bool) {
        match self {
            Crm::HubSpot => app.hubspot.set_down(down),
            Crm::Salesforce => app.salesforce.set_down(down),
            Crm::Pipedrive => app.pipedrive.set_down(down),
        }
    }

    /// A CRM that accepts the postal code and does not keep it (a workflow, a field read-only in
    /// practice), in each vendor's own terms.
    pub fn ignore_zip(self, app: &TestApp) {
        match self {
            Crm::HubSpot => app.hubspot.ignore_property("zip"),
            Crm::Salesforce => app.salesforce.ignore_field("MailingPostalCode"),
            Crm::Pipedrive => app.pipedrive.ignore_field(pd::ZIP_FIELD_KEY),
        }
    }

    /// The property a tenant maps the datum to on this CRM (`zip` is the neutral name, which
    /// every connector maps to its own postal-code field).
    pub fn property(self, field: Field) -> &'static str {
        use Field::*;
        match (self, field) {
            (_, FirstName) => "firstname",
            (_, LastName) => "lastname",
            (_, Email) => "email",
            (Crm::Pipedrive, Zip) => pd::ZIP_FIELD_KEY,
            (_, Zip) => "zip",
            (Crm::HubSpot, Intent) => callside::sandbox::hubspot::INTENT_PROPERTY,
            (Crm::HubSpot, Urgency) => callside::sandbox::hubspot::URGENCY_PROPERTY,
            (Crm::HubSpot, Sentiment) => callside::sandbox::hubspot::SENTIMENT_PROPERTY,
            (Crm::HubSpot, Language) => "hs_language",
            (Crm::HubSpot, ServiceInterest) => callside::sandbox::hubspot::SERVICE_INTEREST_PROPERTY,
            (Crm::HubSpot, Budget) => callside::sandbox::hubspot::BUDGET_PROPERTY,
            (Crm::HubSpot, LastWritten) => callside::sandbox::hubspot::LAST_WRITTEN_PROPERTY,
            (Crm::Salesforce, Intent) => sf::INTENT_FIELD,
            (Crm::Salesforce, Urgency) => sf::URGENCY_FIELD,
            (Crm::Salesforce, Sentiment) => sf::SENTIMENT_FIELD,
            (Crm::Salesforce, Language) => sf::LANGUAGE_FIELD,
            (Crm::Salesforce, ServiceInterest) => sf::SERVICE_INTEREST_FIELD,
            (Crm::Salesforce, Budget) => sf::BUDGET_FIELD,
            (Crm::Salesforce, LastWritten) => sf::LAST_WRITTEN_FIELD,
            (Crm::Pipedrive, Intent) => pd::INTENT_FIELD_KEY,
            (Crm::Pipedrive, Urgency) => pd::URGENCY_FIELD_KEY,
            (Crm::Pipedrive, Sentiment) => pd::SENTIMENT_FIELD_KEY,
            (Crm::Pipedrive, Language) => pd::LANGUAGE_FIELD_KEY,
            (Crm::Pipedrive, ServiceInterest) => pd::SERVICE_INTEREST_FIELD_KEY,
            (Crm::Pipedrive, Budget) => pd::BUDGET_FIELD_KEY,
            (Crm::Pipedrive, LastWritten) => pd::LAST_WRITTEN_FIELD_KEY,
        }
    }

    /// A contact's datum as the CRM stores it; `None` when empty. Salesforce's "[not provided]"
    /// (its own filler for a required name) is empty; Pipedrive's options read as their labels.
    pub fn field(self, app: &TestApp, id: &str, field: Field) -> Option<String> {
        match self {
            Crm::HubSpot => hubspot_contact(app, id).prop(self.property(field)).map(str::to_owned),
            Crm::Salesforce => {
                let record = app.salesforce.record(id).expect("the Salesforce person exists");
                let name = match field {
                    Field::FirstName => "FirstName",
                    Field::LastName => "LastName",
                    Field::Email => "Email",
                    Field::Zip if record.sobject == "Lead" => "PostalCode",
                    Field::Zip => "MailingPostalCode",
                    other => self.property(other),
                };
                record.text(name).filter(|v| v != callside::connectors::crm::salesforce::NOT_PROVIDED)
            }
            Crm::Pipedrive => {
                let options: &[(u64, &str)] = match field {
                    Field::Urgency => &pd::URGENCY_OPTIONS,
                    Field::Sentiment => &pd::SENTIMENT_OPTIONS,
                    Field::Language => &pd::LANGUAGE_OPTIONS,
                    _ => &[],
                };
                let value = app.pipedrive.person_field(id, self.property(field))?;
                match options.iter().find(|(option, _)| option.to_string() == value) {
                    Some((_, label)) => Some(label.to_string()),
                    None => Some(value),
                }
            }
        }
    }

    /// The people (contacts, leads, persons) the emulator holds.
    pub fn people(self, app: &TestApp) -> usize {
        match self {
            Crm::HubSpot => app.hubspot.contacts().len(),
            Crm::Salesforce => app.salesforce.records("Contact").len() + app.salesforce.records("Lead").len(),
            Crm::Pipedrive => app.pipedrive.persons_total(),
        }
    }

    /// The people holding exactly this E.164 string as a phone (main or additional).
    pub fn with_phone(self, app: &TestApp, e164: &str) -> Vec<String> {
        match self {
            Crm::HubSpot => app
                .hubspot
                .contacts()
                .into_iter()
                .filter(|c| ["phone", "mobilephone"].iter().any(|f| c.prop(f) == Some(e164)))
                .map(|c| c.id)
                .collect(),
            Crm::Salesforce => salesforce_people(app)
                .into_iter()
                .filter(|r| ["Phone", "MobilePhone"].iter().any(|f| r.text(f).as_deref() == Some(e164)))
                .map(|r| r.id())
                .collect(),
            Crm::Pipedrive => app.pipedrive.persons_with_phone(e164),
        }
    }

    /// The demo's returning customer, Ana López (seeded in every emulator).
    pub fn ana(self, app: &TestApp) -> String {
        let found: Vec<String> = match self {
            Crm::HubSpot => app
                .hubspot
                .contacts()
                .into_iter()
                .filter(|c| c.prop("firstname") == Some("Ana"))
                .map(|c| c.id)
                .collect(),
            Crm::Salesforce => salesforce_people(app)
                .into_iter()
                .filter(|r| r.text("FirstName").as_deref() == Some("Ana"))
                .map(|r| r.id())
                .collect(),
            Crm::Pipedrive => app.pipedrive.persons_with_phone("(415) 555-0134"),
        };
        assert_eq!(found.len(), 1, "exactly one Ana on {}", self.name());
        found.into_iter().next().unwrap()
    }

    /// The text of each call logged on the contact.
    pub fn call_logs(self, app: &TestApp, id: &str) -> Vec<String> {
        match self {
            Crm::HubSpot => app
                .hubspot
                .calls_for_contact(id)
                .iter()
                .map(|c| c.prop("hs_call_body").unwrap_or_default().to_owned())
                .collect(),
            Crm::Salesforce => salesforce_tasks(app, Some(id))
                .into_iter()
                .filter(is_salesforce_call)
                .map(|t| t.text("Description").unwrap_or_default())
                .collect(),
            Crm::Pipedrive => app.pipedrive.activities_of(id, "call").iter().map(pipedrive_text).collect(),
        }
    }

    /// The text of every call log in the emulator, on anyone.
    pub fn all_call_logs(self, app: &TestApp) -> Vec<String> {
        match self {
            Crm::HubSpot => app
                .hubspot
                .calls()
                .iter()
                .map(|c| c.properties.values().cloned().collect::<Vec<_>>().join(" "))
                .collect(),
            Crm::Salesforce => salesforce_tasks(app, None)
                .into_iter()
                .filter(is_salesforce_call)
                .map(|t| t.fields.values().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
                .collect(),
            Crm::Pipedrive => app
                .pipedrive
                .activities()
                .iter()
                .filter(|a| a.get("type").and_then(Value::as_str) == Some("call"))
                .map(pipedrive_text)
                .collect(),
        }
    }

    /// The text of each note on the contact.
    pub fn notes(self, app: &TestApp, id: &str) -> Vec<String> {
        match self {
            Crm::HubSpot => app
                .hubspot
                .associated_with_contact(id, ObjectType::Notes)
                .iter()
                .map(|n| n.prop("hs_note_body").unwrap_or_default().to_owned())
                .collect(),
            Crm::Salesforce => salesforce_tasks(app, Some(id))
                .into_iter()
                .filter(|t| !is_salesforce_call(t) && t.text("Status").as_deref() == Some("Completed"))
                .map(|t| t.text("Description").unwrap_or_default())
                .collect(),
            Crm::Pipedrive => app.pipedrive.notes_of(id),
        }
    }

    /// The open follow-up tasks on the contact.
    pub fn tasks(self, app: &TestApp, id: &str) -> Vec<Task> {
        match self {
            Crm::HubSpot => app
                .hubspot
                .associated_with_contact(id, ObjectType::Tasks)
                .iter()
                .map(|t| Task {
                    subject: t.prop("hs_task_subject").unwrap_or_default().to_owned(),
                    owner: t.prop("hubspot_owner_id").map(str::to_owned),
                    priority: t.prop("hs_task_priority").map(str::to_owned),
                    due: t.prop("hs_timestamp").and_then(|d| d.parse().ok()),
                })
                .collect(),
            Crm::Salesforce => salesforce_tasks(app, Some(id))
                .into_iter()
                .filter(|t| t.text("Status").as_deref() != Some("Completed"))
                .map(|t| Task {
                    subject: t.text("Subject").unwrap_or_default(),
                    owner: t.text("OwnerId"),
                    // Salesforce's standard priorities are High, Normal and Low.
                    priority: t
                        .text("Priority")
                        .map(|p| if p == "Normal" { "MEDIUM".into() } else { p.to_uppercase() }),
                    due: t.text("ReminderDateTime").and_then(|d| salesforce_time(&d)),
                })
                .collect(),
            Crm::Pipedrive => app
                .pipedrive
                .activities_of(id, "task")
                .iter()
                .map(|a| {
                    let text = |k: &str| a.get(k).and_then(Value::as_str).map(str::to_owned);
                    let note = text("note").unwrap_or_default();
                    let due = format!(
                        "{}T{}:00Z",
                        text("due_date").unwrap_or_default(),
                        text("due_time").unwrap_or_default()
                    );
                    Task {
                        subject: text("subject").unwrap_or_default(),
                        owner: a.get("owner_id").and_then(Value::as_u64).map(|o| o.to_string()),
                        priority: note
                            .split_once("Priority: ")
                            .map(|(_, rest)| rest.split('<').next().unwrap_or_default().to_uppercase()),
                        due: due.parse().ok(),
                    }
                })
                .collect(),
        }
    }

    /// A person on the team who can own records.
    pub fn add_owner(self, app: &TestApp) -> String {
        match self {
            Crm::HubSpot => app.hubspot.insert_owner("Rita", "Rep", "rita@demo-salon.example"),
            Crm::Salesforce => app.salesforce.insert_user("Rita", "Rep", "rita@demo-salon.example"),
            Crm::Pipedrive => app.pipedrive.insert_user("Rita Rep", "rita@demo-salon.example"),
        }
    }

    /// A person makes `owner` the contact's owner in the CRM's UI.
    pub fn give_owner(self, app: &TestApp, contact: &str, owner: &str) {
        match self {
            Crm::HubSpot => app.hubspot.rep_edit(ObjectType::Contacts, contact, "hubspot_owner_id", owner, "42"),
            Crm::Salesforce => app.salesforce.rep_edit(contact, "OwnerId", owner, owner),
            Crm::Pipedrive => app.pipedrive.rep_edit(contact, "owner_id", owner, owner),
        }
    }

    /// A user who exists in the emulator before any test runs (for a tenant's routing rule, which
    /// is configured before the app starts): HubSpot takes any owner id; Salesforce's integration
    /// user is the first record a fresh emulator makes; Pipedrive's authorizing user.
    pub fn standing_user(self) -> String {
        match self {
            Crm::HubSpot => "777".into(),
            Crm::Salesforce => sf::SalesforceState::new("any").integration_user_id(),
            Crm::Pipedrive => pd::AUTHORIZING_USER_ID.to_string(),
        }
    }
}

fn hubspot_contact(app: &TestApp, id: &str) -> SandboxObject {
    app.hubspot.contacts().into_iter().find(|c| c.id == id).expect("the HubSpot contact exists")
}

fn salesforce_people(app: &TestApp) -> Vec<Record> {
    let mut people = app.salesforce.records("Contact");
    people.extend(app.salesforce.records("Lead"));
    people
}

fn salesforce_tasks(app: &TestApp, who: Option<&str>) -> Vec<Record> {
    app.salesforce
        .records("Task")
        .into_iter()
        .filter(|t| who.is_none_or(|w| t.text("WhoId").as_deref() == Some(w)))
        .collect()
}

fn is_salesforce_call(task: &Record) -> bool {
    task.text("TaskSubtype").as_deref() == Some("Call")
}

/// Salesforce answers `2026-11-23T14:00:00.000+0000`; a value stored as sent may end in `Z`.
fn salesforce_time(value: &str) -> Option<Timestamp> {
    value.parse().ok().or_else(|| Timestamp::strptime("%Y-%m-%dT%H:%M:%S%.f%z", value).ok())
}

fn pipedrive_text(activity: &Map<String, Value>) -> String {
    ["subject", "note"].iter().filter_map(|k| activity.get(*k).and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
}
