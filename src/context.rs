//! Read parity: what the CRM knows about the caller, fetched at ring time into a per-instance
//! cache (moka) keyed by tenant + normalized phone. Fetches are single-flight: concurrent
//! requests for the same caller share one fetch.
//!
//! The caller is found through the identity index first (phone → record ids in the store, read
//! by id: no vendor search), and by vendor search only on a miss; the decision is
//! [`crate::matching::decide`]. A mid-call identity update (the caller gives an email or a name)
//! re-matches with [`ContextService::rematch`].
//!
//! The point of sale is read at the same ring, concurrently ([`ContextService::fetch_pos`]), into
//! its own entry of the same cache (same key, same TTL, single-flight): a POS that is slow or
//! down must not hold the CRM context back, and a CRM outage must not throw a good POS read away.
//! It has a time budget (`[pos] ring_budget_ms`); past it the caller's context is served with
//! `pos: unavailable`. What the AI may see of it is decided with the CRM's answer
//! ([`pos_for_caller`]): nothing when the caller is not identified for sure.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::clock::SharedClock;
use crate::connectors::crm::{CrmActivity, CrmContact, CrmContext, CrmDeal, CrmTicket};
use crate::connectors::pos::{PosMatch, PosSummary};
use crate::identity::ParsedPhone;
use crate::matching::{Claims, Decision, Outcome, resolve};
use crate::store::Store;
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
        open_tickets: Vec<CrmTicket>,
        /// The most recent call or note on the record.
        last_touchpoint: Option<CrmActivity>,
        /// The caller dialed from a number the record does not hold (matched by email or name):
        /// it is added as an additional phone at write-back.
        new_number: Option<String>,
        /// VIP, overdue balance, do-not-call and past no-shows, from the tenant's mapping.
        flags: AccountFlags,
    },
    /// Several records could be this caller: greet neutrally, ask for a name.
    Ambiguous {
        candidates: usize,
        /// Why (for the AI: "several people share this number").
        reason: String,
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
                "We can't be sure who this is: greet neutrally without a name and ask who is calling.".into()
            }
            CallerContext::New => "New caller: welcome them and ask for their name.".into(),
            CallerContext::Withheld => "The number is withheld: ask for their name and a way to reach them.".into(),
            CallerContext::Unavailable { .. } => {
                "Customer records are unavailable right now: ask for their name.".into()
            }
        }
    }
}

/// The account flags of a matched caller, read from the CRM properties the tenant names in
/// `[account_flags]`. `None`: not mapped, or the record has no value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AccountFlags {
    pub vip: Option<bool>,
    pub overdue_balance: Option<bool>,
    pub do_not_call: Option<bool>,
    pub past_no_shows: Option<u32>,
}

impl AccountFlags {
    /// Reads the flags from the record's property values.
    pub fn from_properties(
        map: &crate::config::AccountFlagsSection,
        props: &std::collections::BTreeMap<String, String>,
    ) -> Self {
        let value = |name: &Option<String>| name.as_ref().and_then(|n| props.get(n)).map(|v| v.trim().to_owned());
        let yes_no = |v: &str| match v.to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "1" | "on" => Some(true),
            "false" | "no" | "n" | "0" | "off" | "" => Some(false),
            _ => None,
        };
        // An amount: overdue when above zero ("0.00" is not overdue).
        let amount =
            |v: &str| v.trim_start_matches(['$', '€', '£']).replace(',', "").parse::<f64>().ok().map(|a| a > 0.0);
        AccountFlags {
            vip: value(&map.vip)
                .and_then(|v| yes_no(&v).or_else(|| Some(map.vip_values.iter().any(|x| x.eq_ignore_ascii_case(&v))))),
            overdue_balance: value(&map.overdue_balance).and_then(|v| yes_no(&v).or_else(|| amount(&v))),
            do_not_call: value(&map.do_not_call).and_then(|v| yes_no(&v)),
            past_no_shows: value(&map.past_no_shows)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|n| *n >= 0.0)
                .map(|n| n as u32),
        }
    }

    /// Notes for the AI (not to be read out): how to treat this caller.
    pub fn notes(&self) -> Vec<&'static str> {
        let mut notes = Vec::new();
        if self.vip == Some(true) {
            notes.push("VIP customer: offer the best available options.");
        }
        if self.overdue_balance == Some(true) {
            notes.push("The account has an overdue balance: do not discuss it; a person will follow up.");
        }
        if self.do_not_call == Some(true) {
            notes.push("Do not promise a call back: offer email or text instead.");
        }
        if self.past_no_shows.is_some_and(|n| n >= 2) {
            notes.push("Several missed appointments: confirm the booking clearly.");
        }
        notes
    }
}

/// The caller's point-of-sale history, as read at ring time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PosContext {
    /// The tenant has no point of sale.
    NotConfigured,
    /// One customer profile; `matched_by` is `phone` or `email` (the CRM record's email, when
    /// the number is not on a till profile).
    Found {
        matched_by: &'static str,
        summary: Box<PosSummary>,
    },
    NotFound,
    /// Several till profiles share the number: none is shown.
    Ambiguous {
        profiles: usize,
    },
    /// Not shown because the caller is not identified for sure (see [`pos_for_caller`]).
    NotShown {
        reason: String,
    },
    /// The POS did not answer in time or failed; the call goes on without it.
    Unavailable {
        reason: String,
    },
}

impl PosContext {
    pub fn status(&self) -> &'static str {
        match self {
            PosContext::NotConfigured => "not_configured",
            PosContext::Found { .. } => "found",
            PosContext::NotFound => "not_found",
            PosContext::Ambiguous { .. } => "ambiguous",
            PosContext::NotShown { .. } => "not_shown",
            PosContext::Unavailable { .. } => "unavailable",
        }
    }

    /// The speakable hint ("Usual: Haircut."), only for a summary the AI may use.
    pub fn hint(&self) -> Option<String> {
        match self {
            PosContext::Found { summary, .. } => summary.hint(),
            _ => None,
        }
    }
}

/// What of the POS read the AI may see, given who the CRM says the caller is. A till profile
/// found by this number is shown for a matched caller whose first name agrees with it (a
/// household's shared number can be on the till under another member), and for a caller the CRM
/// does not know or could not read (the number alone found one profile); never for an ambiguous
/// caller — that would read one person's purchases to another.
pub fn pos_for_caller(crm: &CallerContext, pos: &PosContext) -> PosContext {
    let PosContext::Found { summary, .. } = pos else { return pos.clone() };
    match crm {
        CallerContext::Ambiguous { .. } => {
            PosContext::NotShown { reason: "the caller is not identified yet: ask who is calling".into() }
        }
        CallerContext::Matched { contact, .. } => {
            let disagree = match (&contact.first_name, &summary.first_name) {
                (Some(crm), Some(till)) => !crate::matching::names::same_first_name(crm, till),
                _ => false,
            };
            if disagree {
                PosContext::NotShown { reason: "the till's customer on this number has another first name".into() }
            } else {
                pos.clone()
            }
        }
        _ => pos.clone(),
    }
}

type Key = (String, String);

pub struct ContextService {
    cache: moka::future::Cache<Key, Arc<CallerContext>>,
    /// The point-of-sale reads, keyed and timed like `cache`.
    pos_cache: moka::future::Cache<Key, Arc<PosContext>>,
    /// The identity index; without it every lookup is a vendor search.
    index: Option<(Store, SharedClock)>,
    /// TEST ONLY (`[sandbox_options] integration_fault = "drop_open_deals"`): the context leaves
    /// out open deals, as a read connector that pulls the contact alone would.
    drop_open_deals: bool,
    /// Lookups by outcome (`hit`, `miss`), when exported (`/metrics`).
    lookups: Option<
        prometheus_client::metrics::family::Family<
            crate::observe::OutcomeLabel,
            prometheus_client::metrics::counter::Counter,
        >,
    >,
}

impl ContextService {
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        Self {
            cache: moka::future::Cache::builder().max_capacity(capacity).time_to_live(ttl).build(),
            pos_cache: moka::future::Cache::builder().max_capacity(capacity).time_to_live(ttl).build(),
            index: None,
            drop_open_deals: false,
            lookups: None,
        }
    }

    /// Counts every [`ContextService::fetch`] as a cache `hit` or `miss` in this family.
    pub fn with_lookup_counter(
        mut self,
        family: prometheus_client::metrics::family::Family<
            crate::observe::OutcomeLabel,
            prometheus_client::metrics::counter::Counter,
        >,
    ) -> Self {
        self.lookups = Some(family);
        self
    }

    /// TEST ONLY: see the field.
    pub fn with_dropped_open_deals(mut self, drop: bool) -> Self {
        self.drop_open_deals = drop;
        self
    }

    /// Looks callers up in the identity index before any vendor search.
    pub fn with_index(mut self, store: Store, clock: SharedClock) -> Self {
        self.index = Some((store, clock));
        self
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
        let index = self.index.clone();
        let drop_deals = self.drop_open_deals;
        let result = self
            .cache
            .entry(key)
            .or_try_insert_with(async move {
                let claims = Claims { phone: Some(phone), ..Default::default() };
                read(&t, index.as_ref(), &claims, drop_deals).await.map(|(ctx, _)| Arc::new(ctx))
            })
            .await;
        // Fresh: this lookup (or the single flight it joined) read the CRM.
        if let (Some(family), Ok(entry)) = (&self.lookups, &result) {
            let outcome = if entry.is_fresh() { "miss" } else { "hit" };
            family.get_or_create(&crate::observe::OutcomeLabel { outcome: outcome.into() }).inc();
        }
        match result.map(|entry| entry.into_value()) {
            Ok(ctx) => ctx,
            Err(reason) => Arc::new(CallerContext::Unavailable { reason: (*reason).clone() }),
        }
    }

    /// The caller's point-of-sale history: by phone, then — when the number is on no till
    /// profile, or on several — by the email of the CRM record `crm` resolves to. Cached per
    /// (tenant, E.164) like [`ContextService::fetch`]; a failure or a read past the tenant's
    /// budget is `Unavailable` and not cached (the next call tries again).
    pub async fn fetch_pos<F>(&self, tenant: &Arc<Tenant>, caller: &ParsedPhone, crm: F) -> Arc<PosContext>
    where
        F: Future<Output = Arc<CallerContext>> + Send + 'static,
    {
        let (Some(pos), Some(config)) = (tenant.pos.clone(), tenant.config.pos.as_ref()) else {
            return Arc::new(PosContext::NotConfigured);
        };
        let ParsedPhone::Number(phone) = caller else { return Arc::new(PosContext::NotFound) };
        let budget = Duration::from_millis(config.ring_budget_ms);
        let key = (tenant.id().to_owned(), phone.e164.clone());
        let e164 = phone.e164.clone();
        let init = async move {
            let lookup = async {
                let by_phone = pos.by_phone(&e164).await?;
                if let PosMatch::Found(summary) = by_phone {
                    return Ok::<_, crate::connectors::ConnectorError>(PosContext::Found {
                        matched_by: "phone",
                        summary,
                    });
                }
                let email = crm
                    .await
                    .matched_contact()
                    .and_then(|c| c.email.as_deref())
                    .and_then(crate::identity::normalize_email);
                let by_email = match email {
                    Some(e) => pos.by_email(&e).await?,
                    None => PosMatch::NotFound,
                };
                Ok(match (by_phone, by_email) {
                    (_, PosMatch::Found(summary)) => PosContext::Found { matched_by: "email", summary },
                    (PosMatch::Ambiguous(n), _) | (_, PosMatch::Ambiguous(n)) => PosContext::Ambiguous { profiles: n },
                    _ => PosContext::NotFound,
                })
            };
            // Real time on purpose: this bounds a wait on a vendor's socket (design.md, Time).
            match tokio::time::timeout(budget, lookup).await {
                Ok(Ok(ctx)) => Ok(Arc::new(ctx)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("the point of sale did not answer within {} ms", budget.as_millis())),
            }
        };
        match self.pos_cache.try_get_with(key, init).await {
            Ok(ctx) => ctx,
            Err(reason) => Arc::new(PosContext::Unavailable { reason: (*reason).clone() }),
        }
    }

    /// Whether a POS read is cached for (tenant, E.164).
    pub fn is_pos_cached(&self, tenant: &str, e164: &str) -> bool {
        self.pos_cache.contains_key(&(tenant.to_owned(), e164.to_owned()))
    }

    /// Re-matches with what the caller has said on the call (email, name, postal code): not
    /// cached, since it depends on the call. Returns the decision too.
    pub async fn rematch(&self, tenant: &Tenant, claims: &Claims) -> (Arc<CallerContext>, Option<Decision>) {
        match read(tenant, self.index.as_ref(), claims, self.drop_open_deals).await {
            Ok((ctx, d)) => (Arc::new(ctx), Some(d)),
            Err(reason) => (Arc::new(CallerContext::Unavailable { reason }), None),
        }
    }

    /// Drops a cached context (after a write-back changed the record).
    pub async fn invalidate(&self, tenant: &str, e164: &str) {
        self.cache.invalidate(&(tenant.to_owned(), e164.to_owned())).await;
    }

    /// Drops every cached context, of every tenant (the invalidation listener was away and may
    /// have missed changes).
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    /// Drops every cached context of the tenant that `concerns` picks (the CRM said a record
    /// changed; the cache is keyed by phone, so the entries are found by scanning). Returns how
    /// many were dropped.
    pub async fn invalidate_where(&self, tenant: &str, concerns: impl Fn(&CallerContext) -> bool) -> usize {
        let stale: Vec<Key> =
            self.cache.iter().filter(|(k, v)| k.0 == tenant && concerns(v)).map(|(k, _)| (*k).clone()).collect();
        for k in &stale {
            self.cache.invalidate(k).await;
        }
        stale.len()
    }

    /// Whether a context is cached for (tenant, E.164) (tests and the inbound sync's checks).
    pub fn is_cached(&self, tenant: &str, e164: &str) -> bool {
        self.cache.contains_key(&(tenant.to_owned(), e164.to_owned()))
    }
}

fn matched(ctx: CrmContext, decision: &Decision, flags: &crate::config::AccountFlagsSection) -> CallerContext {
    CallerContext::Matched {
        flags: AccountFlags::from_properties(flags, &ctx.properties),
        last_touchpoint: ctx.recent_activity.first().cloned(),
        contact: ctx.contact,
        open_deals: ctx.open_deals,
        open_tickets: ctx.open_tickets,
        new_number: decision.add_phone.clone(),
    }
}

async fn read(
    tenant: &Tenant,
    index: Option<&(Store, SharedClock)>,
    claims: &Claims,
    drop_open_deals: bool,
) -> Result<(CallerContext, Decision), String> {
    let (decision, mut found) =
        resolve::resolve(tenant, index.map(|(s, _)| s), claims).await.map_err(|e| e.to_string())?;
    let ctx = match decision.outcome {
        Outcome::Matched => {
            let id = decision.record_id.clone().unwrap_or_default();
            // Found through the index: already read by id. Found by search: one read.
            let mut full = match found.contexts.remove(&id) {
                Some(c) => c,
                None => tenant.crm.read_context(&id).await.map_err(|e| e.to_string())?,
            };
            if drop_open_deals {
                full.open_deals.clear();
            }
            if let Some((store, clock)) = index {
                resolve::remember(store, tenant.id(), &id, &decision, claims, clock.now()).await;
            }
            matched(full, &decision, &tenant.config.account_flags)
        }
        Outcome::Ambiguous => {
            CallerContext::Ambiguous { candidates: decision.candidates.len(), reason: decision.reason.to_owned() }
        }
        Outcome::New => CallerContext::New,
    };
    Ok((ctx, decision))
}
