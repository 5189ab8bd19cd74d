//! Read parity: what the CRM knows about the caller, fetched at ring time into a per-instance
//! cache (moka) keyed by tenant + normalized phone. Fetches are single-flight: concurrent
//! requests for the same caller share one fetch.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::connectors::crm::{CrmContact, CrmDeal};
use crate::identity::{self, MatchDecision, ParsedPhone, Phone};
use crate::tenant::Tenant;

/// The caller as the AI should treat them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
// Held behind an `Arc` for the whole call (the prefetch's shared result), never moved around by
// value in bulk: the matched variant's size costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum CallerContext {
    Matched {
        contact: CrmContact,
        open_deals: Vec<CrmDeal>,
    },
    /// Several records share this number: greet neutrally, ask for a name.
    Ambiguous {
        candidates: usize,
    },
    New,
    Withheld,
    /// The CRM could not be read in time; the call goes on without context.
    Unavailable {
        reason: String,
    },
}

impl CallerContext {
    pub fn status(&self) -> &'static str {
        match self {
            CallerContext::Matched { .. } => "matched",
            CallerContext::Ambiguous { .. } => "ambiguous",
            CallerContext::New => "new",
            CallerContext::Withheld => "withheld",
            CallerContext::Unavailable { .. } => "unavailable",
        }
    }

    /// The matched contact, as read.
    pub fn matched_contact(&self) -> Option<&CrmContact> {
        match self {
            CallerContext::Matched { contact, .. } => Some(contact),
            _ => None,
        }
    }

    /// Ids of the matched contact's open deals.
    pub fn open_deal_ids(&self) -> Vec<String> {
        match self {
            CallerContext::Matched { open_deals, .. } => open_deals.iter().map(|d| d.id.clone()).collect(),
            _ => Vec::new(),
        }
    }

    pub fn contact_id(&self) -> Option<&str> {
        match self {
            CallerContext::Matched { contact, .. } => Some(&contact.id),
            _ => None,
        }
    }

    /// A greeting the AI can safely use: a name only when the match is certain.
    pub fn greeting_hint(&self) -> String {
        match self {
            CallerContext::Matched { contact, .. } => match &contact.first_name {
                Some(first) => format!("Returning customer: greet them as {first}."),
                None => "Returning customer: greet them warmly and ask their name.".into(),
            },
            CallerContext::Ambiguous { .. } => {
                "Several customers share this number: greet neutrally and ask who is calling.".into()
            }
            CallerContext::New => "New caller: welcome them and ask for their name.".into(),
            CallerContext::Withheld => "The number is withheld: ask for their name and a way to reach them.".into(),
            CallerContext::Unavailable { .. } => {
                "Customer records are unavailable right now: ask for their name.".into()
            }
        }
    }
}

type Key = (String, String);

pub struct ContextService {
    cache: moka::future::Cache<Key, Arc<CallerContext>>,
}

impl ContextService {
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        Self { cache: moka::future::Cache::builder().max_capacity(capacity).time_to_live(ttl).build() }
    }

    /// The caller's context. Cached per (tenant, E.164); an `Unavailable` answer is not cached,
    /// so the next request tries the CRM again.
    pub async fn fetch(&self, tenant: &Arc<Tenant>, caller: &ParsedPhone) -> Arc<CallerContext> {
        let phone = match caller {
            ParsedPhone::Number(p) => p.clone(),
            ParsedPhone::Withheld | ParsedPhone::Unparseable => return Arc::new(CallerContext::Withheld),
        };
        let key = (tenant.id().to_owned(), phone.e164.clone());
        let t = tenant.clone();
        let result = self.cache.try_get_with(key, async move { read_from_crm(&t, &phone).await.map(Arc::new) }).await;
        match result {
            Ok(ctx) => ctx,
            Err(reason) => Arc::new(CallerContext::Unavailable { reason: (*reason).clone() }),
        }
    }

    /// Drops a cached context (after a write-back changed the record).
    pub async fn invalidate(&self, tenant: &str, e164: &str) {
        self.cache.invalidate(&(tenant.to_owned(), e164.to_owned())).await;
    }
}

async fn read_from_crm(tenant: &Tenant, phone: &Phone) -> Result<CallerContext, String> {
    let candidates = tenant.crm.find_contacts_by_phone(&phone.query()).await.map_err(|e| e.to_string())?;
    match identity::decide_by_phone(phone, candidates, tenant.config.default_region) {
        MatchDecision::Matched(contact) => {
            let ctx = tenant.crm.read_context(&contact.id).await.map_err(|e| e.to_string())?;
            Ok(CallerContext::Matched { contact: ctx.contact, open_deals: ctx.open_deals })
        }
        MatchDecision::Ambiguous(v) => Ok(CallerContext::Ambiguous { candidates: v.len() }),
        MatchDecision::New => Ok(CallerContext::New),
        MatchDecision::Withheld => Ok(CallerContext::Withheld),
    }
}
