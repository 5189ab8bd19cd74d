//! Finding the candidates a decision needs, index first: the identity index (phone and email →
//! record ids, in the store) is read before any vendor search, and a vendor search runs only for
//! what the index does not know. Used by the ring-time context, the mid-call re-match and the
//! write-back, so all three decide on the same kind of evidence with [`super::decide`].

use std::collections::HashMap;

use futures::future::join_all;
use jiff::{SignedDuration, Timestamp};

use super::{Claims, Decision, Outcome, decide};
use crate::connectors::ConnectorError;
use crate::connectors::crm::{CrmContact, CrmContext, NameZipQuery, TaskRecord};
use crate::identity::{ParsedPhone, Phone, normalize_email};
use crate::store::{IdentityKind, Store};
use crate::tenant::Tenant;

/// The candidates found, with the full context of those read by id (the index route), so a
/// matched caller found through the index costs no further request.
#[derive(Debug, Default)]
pub struct Candidates {
    pub contacts: Vec<CrmContact>,
    pub contexts: HashMap<String, CrmContext>,
    /// Vendor search requests made.
    pub searches: usize,
}

impl Candidates {
    fn add(&mut self, c: CrmContact) {
        if !self.contacts.iter().any(|x| x.id == c.id) {
            self.contacts.push(c);
        }
    }
}

/// Reads index hits by id; a record the CRM no longer has leaves the index.
async fn read_indexed(
    tenant: &Tenant,
    store: &Store,
    kind: IdentityKind,
    value: &str,
    out: &mut Candidates,
) -> Result<bool, ConnectorError> {
    let ids = store.lookup_identity(tenant.id(), kind, value).await.unwrap_or_default();
    let wanted: Vec<String> = ids.into_iter().filter(|id| !out.contexts.contains_key(id)).collect();
    let reads = join_all(wanted.iter().map(|id| tenant.crm.read_context(id))).await;
    let mut any = false;
    for (id, read) in wanted.iter().zip(reads) {
        match read {
            Ok(ctx) => {
                any = true;
                out.add(ctx.contact.clone());
                out.contexts.insert(id.clone(), ctx);
            }
            Err(ConnectorError::NotFound(_)) => {
                let _ = store.unindex_identity(tenant.id(), kind, value, id).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(any)
}

/// Whether any candidate really holds the number / the email (the index may be stale).
fn holds_phone(c: &Candidates, phone: &Phone, tenant: &Tenant) -> bool {
    c.contacts
        .iter()
        .any(|r| r.phones.iter().any(|s| crate::identity::same_number(phone, s, tenant.config.default_region)))
}

fn holds_email(c: &Candidates, email: &str) -> bool {
    c.contacts.iter().any(|r| r.email.as_deref().and_then(normalize_email).as_deref() == Some(email))
}

/// Everything the decision needs about these claims: index hits read by id, then vendor searches
/// for what the index did not confirm (phone, email; name + postal code only when neither found
/// anyone).
pub async fn gather(tenant: &Tenant, store: Option<&Store>, claims: &Claims) -> Result<Candidates, ConnectorError> {
    let mut out = Candidates::default();
    let email = claims.email.as_deref().and_then(normalize_email);
    if let Some(store) = store {
        if let Some(p) = &claims.phone {
            read_indexed(tenant, store, IdentityKind::Phone, &p.e164, &mut out).await?;
        }
        if let Some(e) = &email {
            read_indexed(tenant, store, IdentityKind::Email, e, &mut out).await?;
        }
    }
    if let Some(p) = &claims.phone
        && !holds_phone(&out, p, tenant)
    {
        out.searches += 1;
        for c in tenant.crm.find_contacts_by_phone(&p.query()).await? {
            out.add(c);
        }
    }
    if let Some(e) = &email
        && !holds_email(&out, e)
    {
        out.searches += 1;
        for c in tenant.crm.find_contacts_by_email(e).await? {
            out.add(c);
        }
    }
    let by_phone_or_email = claims.phone.as_ref().is_some_and(|p| holds_phone(&out, p, tenant))
        || email.as_deref().is_some_and(|e| holds_email(&out, e));
    if !by_phone_or_email
        && let (Some(name), Some(zip)) = (claims.name.as_deref(), claims.zip.as_deref())
        && let (first, Some(last)) = crate::writeback::plan::split_name(name)
    {
        out.searches += 1;
        // The vendor compares names exactly; accents and nicknames are ours to fold, so search by
        // family name and postal code only and let the decision compare first names.
        let _ = first;
        for c in tenant
            .crm
            .find_contacts_by_name_zip(&NameZipQuery { first_name: None, last_name: last, zip: zip.to_owned() })
            .await?
        {
            out.add(c);
        }
    }
    Ok(out)
}

/// Decides for these claims, index first.
pub async fn resolve(
    tenant: &Tenant,
    store: Option<&Store>,
    claims: &Claims,
) -> Result<(Decision, Candidates), ConnectorError> {
    let candidates = gather(tenant, store, claims).await?;
    let decision = decide(claims, &candidates.contacts, tenant.config.default_region);
    Ok((decision, candidates))
}

/// Keeps the index current with what a decision established about record `record_id` (matched,
/// or just created for a new caller). An index entry must list every holder of the identifier,
/// so only identifiers the decision showed to be this record's alone are added: a shared line
/// told apart by name, or an ambiguous caller's new record, adds nothing.
pub async fn remember(
    store: &Store,
    tenant: &str,
    record_id: &str,
    decision: &Decision,
    claims: &Claims,
    now: Timestamp,
) {
    use super::Basis;
    let (phone, email) = match (decision.outcome, decision.basis) {
        (Outcome::New, _) => (true, true),
        (Outcome::Matched, Some(Basis::Phone | Basis::PhoneEmail | Basis::Email | Basis::NameZip)) => (true, true),
        (Outcome::Matched, Some(Basis::PhoneName)) => (false, true),
        _ => (false, false),
    };
    let now = now.as_millisecond();
    if phone && let Some(p) = &claims.phone {
        let _ = store.index_identity(tenant, IdentityKind::Phone, &p.e164, record_id, now).await;
    }
    // Only an email no other record holds: an email match was by this record alone; for the
    // rest, the email is the record's own only if the decision saw no holder of it.
    let email_free = decision.basis.is_some_and(|b| matches!(b, Basis::Email | Basis::PhoneEmail))
        || decision.outcome == Outcome::New
        || !decision.candidates.iter().any(|c| c != record_id);
    if email
        && email_free
        && let Some(e) = claims.email.as_deref().and_then(normalize_email)
    {
        let _ = store.index_identity(tenant, IdentityKind::Email, &e, record_id, now).await;
    }
}

/// The claims of a caller from a raw number and what they said.
pub fn claims(
    raw_phone: Option<&str>,
    tenant: &Tenant,
    name: Option<String>,
    email: Option<String>,
    zip: Option<String>,
) -> Claims {
    let phone = match raw_phone.map(|p| Phone::parse(p, tenant.config.default_region)) {
        Some(ParsedPhone::Number(p)) => Some(p),
        _ => None,
    };
    Claims { phone, name, email, zip }
}

/// The review flag for an ambiguous caller, visible where reps work: a high-priority task on the
/// new record for the owner of the first candidate that has one, naming every candidate.
pub fn review_task(decision: &Decision, candidates: &[CrmContact], now: Timestamp) -> Option<TaskRecord> {
    if decision.outcome != Outcome::Ambiguous {
        return None;
    }
    let owner_id = decision
        .candidates
        .iter()
        .filter_map(|id| candidates.iter().find(|c| &c.id == id))
        .find_map(|c| c.owner_id.clone());
    let listed: Vec<String> = decision
        .candidates
        .iter()
        .map(|id| match candidates.iter().find(|c| &c.id == id) {
            Some(c) => format!(
                "{} {} (record {id})",
                c.first_name.as_deref().unwrap_or(""),
                c.last_name.as_deref().unwrap_or("")
            )
            .trim()
            .to_owned(),
            None => format!("record {id}"),
        })
        .collect();
    Some(TaskRecord {
        subject: "Review possible duplicate contact (AI receptionist)".into(),
        body: Some(format!(
            "The AI receptionist could not tell who called: {}. It created this contact instead of guessing. \
             Candidates: {}. Merge it into the right record or keep it.",
            decision.reason,
            listed.join("; ")
        )),
        due: now + SignedDuration::from_hours(24),
        owner_id,
        priority: Some("HIGH".into()),
    })
}
