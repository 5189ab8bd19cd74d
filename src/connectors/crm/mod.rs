//! The CRM connector interface. One implementation per vendor; the rest of the service sees only
//! [`CrmConnector`] and the neutral types below.

#[cfg(test)]
pub mod conformance;
pub mod hubspot;
pub mod pipedrive;
#[cfg(test)]
mod pipedrive_conformance;
pub mod salesforce;
#[cfg(test)]
mod salesforce_conformance;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::ConnectorError;

/// The forms of one phone number the connector should search the vendor with. Vendors store
/// phones as typed, so a connector queries several forms and the caller of the connector compares
/// normalized digits itself — a vendor's matching is never trusted alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneQuery {
    /// `+14155550134`
    pub e164: String,
    /// The national significant number, e.g. `4155550134`.
    pub national: String,
}

/// A contact as the service needs it, whatever the vendor calls it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrmContact {
    pub id: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    /// Every phone the record holds, raw as stored by the vendor.
    pub phones: Vec<String>,
    pub zip: Option<String>,
    pub owner_id: Option<String>,
    pub lifecycle_stage: Option<String>,
    /// When the record last changed, in the CRM's own time, as of this read: the write rules'
    /// watermark for "edited since the service read it".
    #[serde(default)]
    pub updated_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrmDeal {
    pub id: String,
    pub name: String,
    pub stage: String,
    pub amount: Option<String>,
    pub close_date: Option<String>,
}

/// What the CRM knows about a caller, read in as few requests as the vendor allows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrmContext {
    pub contact: CrmContact,
    /// Open deals only (not closed-won / closed-lost per the vendor's pipeline definitions).
    pub open_deals: Vec<CrmDeal>,
    /// Open tickets only (the ticket pipelines say which stages are closed).
    #[serde(default)]
    pub open_tickets: Vec<CrmTicket>,
    /// Tasks not yet completed.
    #[serde(default)]
    pub open_tasks: Vec<CrmTask>,
    /// The most recent calls and notes, newest first.
    #[serde(default)]
    pub recent_activity: Vec<CrmActivity>,
    /// The record owner, when the contact has one the CRM could resolve.
    #[serde(default)]
    pub owner: Option<CrmOwner>,
    /// The contact's organization (company), when the CRM links one.
    #[serde(default)]
    pub organization: Option<CrmOrganization>,
    /// The tenant's extra contact properties (`[account_flags]`) as the CRM stores them, by
    /// internal name; absent when empty.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrmOrganization {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrmTicket {
    pub id: String,
    pub subject: String,
    pub stage: String,
    pub priority: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrmTask {
    pub id: String,
    pub subject: String,
    pub status: String,
    pub due: Option<Timestamp>,
    pub owner_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivityKind {
    Call,
    Note,
}

/// A past engagement, summarized for the AI (plain text, bounded length).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrmActivity {
    pub id: String,
    pub kind: ActivityKind,
    pub at: Option<Timestamp>,
    pub summary: String,
}

/// Keeps the `keep` newest activities, newest first. Engagements logged at the same time (a
/// vendor that stores minutes, or the same millisecond) are ordered by id, the later-created
/// (longer, then greater numeric id) first: otherwise the newest call could be the one cut off.
pub(crate) fn newest_activities(activities: &mut Vec<CrmActivity>, keep: usize) {
    activities.sort_by(|a, b| (b.at, b.id.len(), &b.id).cmp(&(a.at, a.id.len(), &a.id)));
    activities.truncate(keep);
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrmOwner {
    pub id: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
}

/// A lookup by name and postal code (the fallback when the phone matches nobody).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameZipQuery {
    pub first_name: Option<String>,
    pub last_name: String,
    pub zip: String,
}

/// A typed value for one vendor property. The connector formats it the way the vendor wants
/// (HubSpot: dates as `YYYY-MM-DD`, datetimes as ISO 8601 UTC) and checks enumeration values
/// against the property's options before sending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum PropertyValue {
    Text(String),
    Number(serde_json::Number),
    Bool(bool),
    Date(jiff::civil::Date),
    DateTime(Timestamp),
    /// The option's internal value (not its label).
    Enumeration(String),
    /// Clears the property.
    Clear,
}

/// One property to write, by the vendor's internal property name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropertyWrite {
    pub name: String,
    pub value: PropertyValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PropertyWriteStatus {
    /// Written and read back with the value sent.
    Written,
    /// Refused, before sending (type or option check) or by the vendor; the others were written.
    Rejected { reason: String },
    /// The vendor accepted the request but the value did not stick (read back differs).
    Ignored,
}

/// The per-property result of [`CrmConnector::update_properties`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropertyWriteResult {
    pub name: String,
    #[serde(flatten)]
    pub status: PropertyWriteStatus,
}

/// Where a second phone number ended up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum SecondaryPhoneOutcome {
    /// The number (same digits, any layout) was already on the record.
    AlreadyPresent { property: String },
    /// Written into an empty phone property; the existing number was not touched.
    Added { property: String },
    /// Every phone property holds another number; nothing was overwritten.
    NoFreeSlot,
}

/// A note on the contact's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoteRecord {
    pub body: String,
    pub at: Timestamp,
}

/// A follow-up task for a person on the team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub subject: String,
    pub body: Option<String>,
    pub due: Timestamp,
    pub owner_id: Option<String>,
    /// `LOW`, `MEDIUM` or `HIGH`.
    pub priority: Option<String>,
}

/// One past value of a property, with who or what set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropertyVersion {
    pub value: String,
    pub timestamp: Timestamp,
    /// The vendor's source type (HubSpot: `CRM_UI`, `INTEGRATION`, `API`, `IMPORT`, ...).
    pub source_type: String,
    pub source_id: Option<String>,
    pub updated_by_user_id: Option<String>,
}

impl PropertyVersion {
    /// Whether a person made this change (in the CRM's UI, a mobile app or an import), as
    /// opposed to an integration or automation. The write-back never overwrites such a value
    /// set after its own last read.
    pub fn is_human_edit(&self) -> bool {
        matches!(self.source_type.as_str(), "CRM_UI" | "MOBILE_IOS" | "MOBILE_ANDROID" | "IMPORT" | "EMAIL")
            || (self.updated_by_user_id.is_some() && !matches!(self.source_type.as_str(), "INTEGRATION" | "API"))
    }
}

/// A property's history, newest version first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropertyHistory {
    pub name: String,
    pub versions: Vec<PropertyVersion>,
}

/// Contact fields to write. `None` means "do not touch", never "clear".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactFields {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    /// E.164.
    pub phone: Option<String>,
    pub zip: Option<String>,
    /// Lead source, e.g. "AI receptionist".
    pub source: Option<String>,
}

/// A call log entry, written as the vendor's native call object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallLog {
    pub call_id: String,
    pub started_at: Timestamp,
    pub duration_secs: u64,
    pub from: Option<String>,
    pub to: String,
    pub summary: String,
    pub disposition: Option<String>,
    pub recording_url: Option<String>,
    pub transcript_url: Option<String>,
    pub source: String,
}

/// An appointment the service booked, mirrored into the CRM (HubSpot: a meeting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentRecord {
    pub title: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub calendar_event_id: String,
    pub notes: Option<String>,
}

/// An open deal (opportunity) to create on a contact: `callside pilot` seeds its known caller
/// with one, as seed 003's pilot plan asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealRecord {
    pub name: String,
    /// The vendor's stage id; `None` for the default pipeline's first open stage.
    pub stage: Option<String>,
    pub amount: Option<String>,
}

/// The kinds of CRM object the write-back creates or changes (for undo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrmObjectType {
    Contact,
    Deal,
    Call,
    Meeting,
    Note,
    Task,
}

impl CrmObjectType {
    pub fn as_str(self) -> &'static str {
        match self {
            CrmObjectType::Contact => "contact",
            CrmObjectType::Deal => "deal",
            CrmObjectType::Call => "call",
            CrmObjectType::Meeting => "meeting",
            CrmObjectType::Note => "note",
            CrmObjectType::Task => "task",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Contact, Self::Deal, Self::Call, Self::Meeting, Self::Note, Self::Task]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// What the CRM's own appointment object says became of the appointment
/// ([`CrmConnector::appointment_status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrmAppointmentStatus {
    /// Nothing recorded yet (HubSpot `SCHEDULED`, a Pipedrive activity not done, an empty mapped
    /// field, a value the service does not know).
    NotYetKnown,
    Attended,
    NoShow,
    /// Cancelled in the CRM, with when the CRM says it was (HubSpot: the outcome's history).
    Cancelled {
        at: Option<Timestamp>,
    },
    /// Moved to another time (HubSpot `RESCHEDULED`): this booking's outcome is not the CRM's
    /// to tell.
    Rescheduled,
    /// The vendor keeps no outcome on this object (Salesforce without a mapped field).
    NotTracked,
}

impl CrmAppointmentStatus {
    /// A mapped custom field's value (`[outcomes] crm_outcome_field`), in the vocabulary the
    /// setting documents; anything else is not an outcome yet.
    pub fn of_custom_value(value: &str) -> CrmAppointmentStatus {
        let v = value.trim().to_ascii_lowercase().replace(['-', ' '], "_");
        match v.as_str() {
            "attended" | "completed" | "showed" | "showed_up" => CrmAppointmentStatus::Attended,
            "no_show" | "noshow" | "missed" => CrmAppointmentStatus::NoShow,
            "cancelled" | "canceled" => CrmAppointmentStatus::Cancelled { at: None },
            _ => CrmAppointmentStatus::NotYetKnown,
        }
    }
}

/// One page of an incremental pull of contacts ([`CrmConnector::contacts_changed_since`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactPage {
    /// Contacts created or changed at or after the asked time, oldest change first.
    pub contacts: Vec<CrmContact>,
    /// The newest modification time on this page: the next watermark.
    pub newest: Option<Timestamp>,
    /// Pass back to get the next page of the same query; `None` when this was the last.
    pub next_cursor: Option<String>,
}

/// A person record that left the CRM since a time: deleted (HubSpot: archived), or merged into
/// another record (a Salesforce Lead converted to a Contact counts as merged into it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedContact {
    pub id: String,
    /// The surviving record, when the vendor names one.
    pub merged_into: Option<String>,
}

/// What [`CrmConnector::contacts_removed_since`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemovedPage {
    pub removed: Vec<RemovedContact>,
    /// Where the next window starts (Salesforce's `latestDateCovered`); `None`: the window was
    /// not asked (too short) and the next one starts where this one did.
    pub covered_until: Option<Timestamp>,
    /// False when the vendor can no longer list every removal since the asked time (its delete
    /// log is shorter, or was purged): the pull must re-read every record and drop the rest.
    pub complete: bool,
}

/// One CRM vendor. Every create takes an idempotency key: the connector must make a retried
/// create with the same key return the existing object's id (vendor search indexes lag, so
/// "search then create" alone duplicates after a lost response — see design invariant 2).
#[async_trait]
pub trait CrmConnector: Send + Sync + 'static {
    fn vendor(&self) -> &'static str;

    /// Candidates whose stored phone may be this number (the caller re-checks digits).
    async fn find_contacts_by_phone(&self, phone: &PhoneQuery) -> Result<Vec<CrmContact>, ConnectorError>;

    /// The contact with its open deals, open tickets, open tasks, recent calls/notes and owner.
    async fn read_context(&self, contact_id: &str) -> Result<CrmContext, ConnectorError>;

    async fn create_contact(&self, fields: &ContactFields, idempotency_key: &str) -> Result<String, ConnectorError>;

    async fn update_contact(&self, contact_id: &str, fields: &ContactFields) -> Result<(), ConnectorError>;

    /// Logs the call on the contact; returns the call object's id.
    async fn log_call(&self, contact_id: &str, call: &CallLog, idempotency_key: &str)
    -> Result<String, ConnectorError>;

    /// Rewrites a call log already written by [`CrmConnector::log_call`] (e.g. with the voice
    /// platform's end-of-call report that arrived after it): one call keeps one call object.
    async fn update_call_log(&self, call_object_id: &str, call: &CallLog) -> Result<(), ConnectorError>;

    /// Records a booked appointment on the contact; returns the CRM object's id.
    async fn record_appointment(
        &self,
        contact_id: &str,
        appointment: &AppointmentRecord,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError>;

    /// Candidates whose email is this address (case-insensitive).
    async fn find_contacts_by_email(&self, email: &str) -> Result<Vec<CrmContact>, ConnectorError>;

    /// Candidates with this last name (and first name, when given) and postal code.
    async fn find_contacts_by_name_zip(&self, query: &NameZipQuery) -> Result<Vec<CrmContact>, ConnectorError>;

    /// Writes typed values; each property gets its own result. A property the vendor rejects does
    /// not stop the others. `Err` only when nothing could be decided (auth, outage, ...).
    async fn update_properties(
        &self,
        contact_id: &str,
        writes: &[PropertyWrite],
    ) -> Result<Vec<PropertyWriteResult>, ConnectorError>;

    /// Adds `e164` as another phone of the contact without overwriting the existing one.
    async fn add_secondary_phone(&self, contact_id: &str, e164: &str) -> Result<SecondaryPhoneOutcome, ConnectorError>;

    /// A note on the contact; returns its id.
    async fn log_note(
        &self,
        contact_id: &str,
        note: &NoteRecord,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError>;

    /// A note on a ticket's timeline (a call about an existing work order); returns its id.
    async fn log_ticket_note(
        &self,
        ticket_id: &str,
        note: &NoteRecord,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError>;

    /// A task on the contact for an owner, with a due date; returns its id.
    async fn create_task(
        &self,
        contact_id: &str,
        task: &TaskRecord,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError>;

    /// Moves a deal to a stage, named by its id or its label; the stage must exist in the deal's
    /// pipeline.
    async fn set_deal_stage(&self, deal_id: &str, stage: &str) -> Result<(), ConnectorError>;

    /// The history of the named contact properties, for telling a rep's edit from our own.
    async fn property_history(
        &self,
        contact_id: &str,
        properties: &[String],
    ) -> Result<Vec<PropertyHistory>, ConnectorError>;

    /// The history of the named properties of any object type (undo checks a person's edits on
    /// objects the write-back created).
    async fn object_history(
        &self,
        object: CrmObjectType,
        id: &str,
        properties: &[String],
    ) -> Result<Vec<PropertyHistory>, ConnectorError>;

    /// An open deal on the contact; returns its id. Only `callside pilot` creates deals (its
    /// seeded test record); a vendor without it keeps the default and the pilot says so.
    async fn create_deal(
        &self,
        contact_id: &str,
        deal: &DealRecord,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        let _ = (contact_id, deal, idempotency_key);
        Err(ConnectorError::Permanent(format!("{}: creating a deal is not supported", self.vendor())))
    }

    /// Deletes (HubSpot: archives) an object. Deleting one already gone is not an error.
    async fn delete_object(&self, object: CrmObjectType, id: &str) -> Result<(), ConnectorError>;

    /// Contacts modified at or after `since` (all contacts when `None`), oldest change first, one
    /// page at a time: the identity index's incremental pull. A vendor without a way to list
    /// changes keeps the default, and its callers are matched by vendor search alone.
    async fn contacts_changed_since(
        &self,
        since: Option<Timestamp>,
        cursor: Option<&str>,
    ) -> Result<ContactPage, ConnectorError> {
        let _ = (since, cursor);
        Err(ConnectorError::Permanent(format!("{}: incremental contact pull is not supported", self.vendor())))
    }

    /// Person records deleted or merged away at or after `since` (up to `now`): what the
    /// identity index must forget, or repoint to the survivor. `Ok(None)`: this vendor has no
    /// way to list them (index hits the CRM no longer has are still dropped when read, see
    /// `matching::resolve`).
    async fn contacts_removed_since(
        &self,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<RemovedPage>, ConnectorError> {
        let _ = (since, now);
        Ok(None)
    }

    /// How many contacts one query of [`CrmConnector::contacts_changed_since`] may page through
    /// before the pull restarts from the newest time seen (a vendor capping one query: HubSpot's
    /// search stops at 10,000 results); `None`: the vendor's paging has no such cap.
    fn pull_query_cap(&self) -> Option<usize> {
        Some(9_900)
    }

    /// What the CRM's appointment object (the one [`CrmConnector::record_appointment`] returned)
    /// says became of the appointment; `outcome_field` is the tenant's custom field for vendors
    /// without a standard one (`[outcomes] crm_outcome_field`). A vendor that keeps no outcome
    /// keeps the default. An answer the connector cannot read is an error, never a guess.
    async fn appointment_status(
        &self,
        object_id: &str,
        outcome_field: Option<&str>,
    ) -> Result<CrmAppointmentStatus, ConnectorError> {
        let _ = (object_id, outcome_field);
        Ok(CrmAppointmentStatus::NotTracked)
    }

    /// The vendor user this connection acts as, when the vendor's change notifications name the
    /// user behind a change (Pipedrive's webhooks: `meta.user_id`) and the connector can tell:
    /// an inbound receiver takes an API change by this user for the service's own write.
    async fn acting_user_id(&self) -> Result<Option<String>, ConnectorError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, at: &str) -> CrmActivity {
        CrmActivity { id: id.into(), kind: ActivityKind::Call, at: at.parse().ok(), summary: String::new() }
    }

    /// Pipedrive stores a call's time to the minute: six calls logged in one minute keep the five
    /// created last, newest first — the oldest is the one cut off, never the newest.
    #[test]
    fn a_mapped_outcome_fields_values_are_read_in_the_documented_vocabulary() {
        for (value, status) in [
            ("Attended", CrmAppointmentStatus::Attended),
            (" completed ", CrmAppointmentStatus::Attended),
            ("No Show", CrmAppointmentStatus::NoShow),
            ("no-show", CrmAppointmentStatus::NoShow),
            ("NO_SHOW", CrmAppointmentStatus::NoShow),
            ("Canceled", CrmAppointmentStatus::Cancelled { at: None }),
            ("cancelled", CrmAppointmentStatus::Cancelled { at: None }),
            ("", CrmAppointmentStatus::NotYetKnown),
            ("maybe", CrmAppointmentStatus::NotYetKnown),
        ] {
            assert_eq!(CrmAppointmentStatus::of_custom_value(value), status, "{value:?}");
        }
    }

    #[test]
    fn activities_at_the_same_time_keep_the_later_created() {
        let same = "2026-11-23T14:00:00Z";
        let mut list: Vec<CrmActivity> = ["8", "9", "10", "11", "12", "13"].iter().map(|id| call(id, same)).collect();
        list.push(call("7", "2026-11-23T14:01:00Z"));
        newest_activities(&mut list, 5);
        let ids: Vec<&str> = list.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["7", "13", "12", "11", "10"]);
    }
}
