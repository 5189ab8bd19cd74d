//! The CRM connector interface. One implementation per vendor; the rest of the service sees only
//! [`CrmConnector`] and the neutral types below.

pub mod hubspot;

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrmContext {
    pub contact: CrmContact,
    /// Open deals only (not closed-won / closed-lost).
    pub open_deals: Vec<CrmDeal>,
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

/// One CRM vendor. Every create takes an idempotency key: the connector must make a retried
/// create with the same key return the existing object's id (vendor search indexes lag, so
/// "search then create" alone duplicates after a lost response — see design invariant 2).
#[async_trait]
pub trait CrmConnector: Send + Sync + 'static {
    fn vendor(&self) -> &'static str;

    /// Candidates whose stored phone may be this number (the caller re-checks digits).
    async fn find_contacts_by_phone(&self, phone: &PhoneQuery) -> Result<Vec<CrmContact>, ConnectorError>;

    /// The contact with its open deals.
    async fn read_context(&self, contact_id: &str) -> Result<CrmContext, ConnectorError>;

    async fn create_contact(&self, fields: &ContactFields, idempotency_key: &str) -> Result<String, ConnectorError>;

    async fn update_contact(&self, contact_id: &str, fields: &ContactFields) -> Result<(), ConnectorError>;

    /// Logs the call on the contact; returns the call object's id.
    async fn log_call(&self, contact_id: &str, call: &CallLog, idempotency_key: &str)
    -> Result<String, ConnectorError>;

    /// Records a booked appointment on the contact; returns the CRM object's id.
    async fn record_appointment(
        &self,
        contact_id: &str,
        appointment: &AppointmentRecord,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError>;
}
