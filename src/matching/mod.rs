//! Who is calling: the match decision over CRM candidates, in priority order phone → email →
//! name + postal code, with three outcomes (matched, new, ambiguous).
//!
//! The decision is a pure function of the caller's claims and the candidate records, so the
//! service (ring-time context, mid-call re-match, write-back) and `callside match-eval` run the
//! very same code. Rules (issue 6, seed 002/003):
//!
//! - the same number in any format is the same phone (E.164 after parsing in the tenant's region);
//! - withheld numbers match nothing;
//! - a number held by one record whose first name differs from the name the caller gives is a
//!   shared (household) line: ambiguous, not matched;
//! - a phone pointing to one record and an email pointing to another: ambiguous;
//! - a known email from a new number: the existing contact, and the new number is added;
//! - never a merge on a name alone: name + postal code at least, and only when nothing the caller
//!   gave (email) contradicts the record.

pub mod eval;
pub mod names;
pub mod nicknames;
pub mod resolve;
pub mod sync;

use rlibphonenumber::enums::Region;
use serde::{Deserialize, Serialize};

use crate::connectors::crm::CrmContact;
use crate::identity::{ParsedPhone, Phone, normalize_email};
use names::{same_first_name, same_last_name, zip_key};

/// What the caller has told us (or their line has), raw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// The number they call from, parsed; `None` when withheld or unparseable.
    pub phone: Option<Phone>,
    /// The name they gave, as spoken ("María de la Cruz").
    pub name: Option<String>,
    pub email: Option<String>,
    pub zip: Option<String>,
}

impl Claims {
    pub fn with_phone(phone: &ParsedPhone) -> Self {
        Claims {
            phone: match phone {
                ParsedPhone::Number(p) => Some(p.clone()),
                _ => None,
            },
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Matched,
    New,
    Ambiguous,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Matched => "matched",
            Outcome::New => "new",
            Outcome::Ambiguous => "ambiguous",
        }
    }
}

/// What a match rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    Phone,
    /// Phone and email agree.
    PhoneEmail,
    /// A number shared by several records, told apart by the stated first name.
    PhoneName,
    Email,
    NameZip,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub outcome: Outcome,
    /// The matched record.
    pub record_id: Option<String>,
    pub basis: Option<Basis>,
    /// For an ambiguous outcome: every record it could be, kept for the reviewer.
    pub candidates: Vec<String>,
    /// Matched from a number the record does not hold: add it as an additional phone (E.164).
    pub add_phone: Option<String>,
    /// Why, in words (for the review flag and the eval report).
    pub reason: &'static str,
}

impl Decision {
    fn matched(r: &CrmContact, basis: Basis, claims: &Claims, region: Region, reason: &'static str) -> Self {
        let add_phone = claims
            .phone
            .as_ref()
            .filter(|p| !r.phones.iter().any(|s| crate::identity::same_number(p, s, region)))
            .map(|p| p.e164.clone());
        Decision {
            outcome: Outcome::Matched,
            record_id: Some(r.id.clone()),
            basis: Some(basis),
            candidates: vec![],
            add_phone,
            reason,
        }
    }

    fn ambiguous(mut ids: Vec<String>, reason: &'static str) -> Self {
        ids.dedup();
        Decision { outcome: Outcome::Ambiguous, record_id: None, basis: None, candidates: ids, add_phone: None, reason }
    }

    fn new(reason: &'static str) -> Self {
        Decision { outcome: Outcome::New, record_id: None, basis: None, candidates: vec![], add_phone: None, reason }
    }
}

/// Titles people put before their name ("Dr. Raj Patel", "Sra. López").
const HONORIFICS: &[&str] =
    &["mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sr", "sra", "srta", "don", "dona", "mme", "mlle", "herr", "frau"];

/// The caller's stated name, split into first and family name, without a leading title.
fn stated_name(claims: &Claims) -> (Option<String>, Option<String>) {
    let Some(name) = claims.name.as_deref() else { return (None, None) };
    let words: Vec<&str> = name.split_whitespace().collect();
    let skip = words.iter().take_while(|w| words.len() > 1 && HONORIFICS.contains(&names::fold(w).as_str())).count();
    crate::writeback::plan::split_name(&words[skip.min(words.len().saturating_sub(1))..].join(" "))
}

/// The stated first name clearly belongs to someone else than the record.
fn first_name_conflict(first: Option<&str>, r: &CrmContact) -> bool {
    match (first, r.first_name.as_deref().filter(|f| !f.trim().is_empty())) {
        (Some(stated), Some(stored)) => !same_first_name(stated, stored),
        _ => false,
    }
}

/// The records the stated name picks out (first name must agree; the family name too when both
/// are known).
fn named<'a>(pool: &[&'a CrmContact], first: Option<&str>, last: Option<&str>) -> Vec<&'a CrmContact> {
    let Some(first) = first else { return vec![] };
    pool.iter()
        .copied()
        .filter(|r| r.first_name.as_deref().is_some_and(|f| same_first_name(first, f)))
        .filter(|r| match (last, r.last_name.as_deref()) {
            (Some(l), Some(rl)) if !rl.trim().is_empty() => same_last_name(l, rl),
            _ => true,
        })
        .collect()
}

fn ids(pool: &[&CrmContact]) -> Vec<String> {
    let mut v: Vec<String> = pool.iter().map(|r| r.id.clone()).collect();
    v.sort();
    v.dedup();
    v
}

fn dedup(mut v: Vec<&CrmContact>) -> Vec<&CrmContact> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|r| seen.insert(r.id.clone()));
    v
}

/// The decision. `records` is every candidate found by any route (the index, vendor searches by
/// phone, email and name + zip, or a whole CRM in `match-eval`); each is re-checked here.
pub fn decide(claims: &Claims, records: &[CrmContact], region: Region) -> Decision {
    let email = claims.email.as_deref().and_then(normalize_email);
    let (first, last) = stated_name(claims);
    let (first, last) = (first.as_deref(), last.as_deref());
    let by_phone: Vec<&CrmContact> = match &claims.phone {
        Some(p) => dedup(
            records.iter().filter(|r| r.phones.iter().any(|s| crate::identity::same_number(p, s, region))).collect(),
        ),
        None => vec![],
    };
    let by_email: Vec<&CrmContact> = match &email {
        Some(e) => dedup(
            records
                .iter()
                .filter(|r| r.email.as_deref().and_then(normalize_email).as_deref() == Some(e.as_str()))
                .collect(),
        ),
        None => vec![],
    };

    // 1. Phone.
    if !by_phone.is_empty() {
        let mut pool = by_phone.clone();
        if !by_email.is_empty() {
            let both: Vec<&CrmContact> =
                by_phone.iter().copied().filter(|r| by_email.iter().any(|e| e.id == r.id)).collect();
            match both.len() {
                0 => {
                    let all: Vec<&CrmContact> = by_phone.iter().chain(by_email.iter()).copied().collect();
                    return Decision::ambiguous(ids(&all), "the number and the email belong to different records");
                }
                1 if !first_name_conflict(first, both[0]) => {
                    return Decision::matched(both[0], Basis::PhoneEmail, claims, region, "number and email agree");
                }
                _ => pool = both,
            }
        }
        if pool.len() == 1 {
            return if first_name_conflict(first, pool[0]) {
                Decision::ambiguous(ids(&pool), "a shared number whose record has another first name")
            } else {
                Decision::matched(pool[0], Basis::Phone, claims, region, "one record holds this number")
            };
        }
        let picked = named(&pool, first, last);
        if picked.len() == 1 {
            return Decision::matched(picked[0], Basis::PhoneName, claims, region, "shared number, told apart by name");
        }
        return Decision::ambiguous(ids(&pool), "several records hold this number");
    }

    // 2. Email (the caller dials from a number no record holds).
    if !by_email.is_empty() {
        if by_email.len() == 1 {
            return if first_name_conflict(first, by_email[0]) {
                Decision::ambiguous(ids(&by_email), "a shared email whose record has another first name")
            } else {
                Decision::matched(by_email[0], Basis::Email, claims, region, "one record holds this email")
            };
        }
        let picked = named(&by_email, first, last);
        if picked.len() == 1 {
            return Decision::matched(picked[0], Basis::Email, claims, region, "shared email, told apart by name");
        }
        return Decision::ambiguous(ids(&by_email), "several records hold this email");
    }

    // 3. Name + postal code, both names required; never the name alone.
    let zip = claims.zip.as_deref().map(zip_key).filter(|z| !z.is_empty());
    if let (Some(first), Some(last), Some(zip)) = (first, last, zip) {
        let same: Vec<&CrmContact> = records
            .iter()
            .filter(|r| r.zip.as_deref().map(zip_key).as_deref() == Some(zip.as_str()))
            .filter(|r| r.first_name.as_deref().is_some_and(|f| same_first_name(first, f)))
            .filter(|r| r.last_name.as_deref().is_some_and(|l| same_last_name(last, l)))
            .collect();
        let same = dedup(same);
        // A record whose email differs from the one the caller gave is someone else's, or a
        // person with two addresses: a reviewer decides.
        let contradicted = |r: &&CrmContact| email.is_some() && r.email.as_deref().and_then(normalize_email).is_some();
        match same.len() {
            0 => {}
            1 if !contradicted(&same[0]) => {
                return Decision::matched(same[0], Basis::NameZip, claims, region, "name and postal code agree");
            }
            _ => return Decision::ambiguous(ids(&same), "name and postal code agree with records that differ"),
        }
    }
    Decision::new("no record holds this number or email")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, first: &str, last: &str, email: Option<&str>, phones: &[&str], zip: Option<&str>) -> CrmContact {
        CrmContact {
            id: id.into(),
            first_name: Some(first.into()),
            last_name: Some(last.into()),
            email: email.map(Into::into),
            phones: phones.iter().map(|p| p.to_string()).collect(),
            zip: zip.map(Into::into),
            ..Default::default()
        }
    }

    fn claims(phone: &str, name: Option<&str>, email: Option<&str>, zip: Option<&str>) -> Claims {
        Claims {
            phone: match Phone::parse(phone, Region::US) {
                ParsedPhone::Number(p) => Some(p),
                _ => None,
            },
            name: name.map(Into::into),
            email: email.map(Into::into),
            zip: zip.map(Into::into),
        }
    }

    fn crm() -> Vec<CrmContact> {
        vec![
            rec("1", "María", "López", Some("maria@example.com"), &["(415) 555-1234"], Some("94110")),
            rec("2", "Mario", "López", None, &["415.555.1234"], Some("94110")),
            rec("3", "Ana", "Pérez", Some("ana@example.com"), &["+1 650 555 0100"], Some("94301")),
            rec("4", "John", "Smith", None, &["+1 212 555 0199"], Some("10001")),
            rec("5", "Withheld", "Legacy", None, &["anonymous", "+266696687"], None),
        ]
    }

    #[test]
    fn one_record_on_the_number_in_any_format_is_matched() {
        let d = decide(&claims("+16505550100", None, None, None), &crm(), Region::US);
        assert_eq!((d.outcome, d.record_id.as_deref(), d.basis), (Outcome::Matched, Some("3"), Some(Basis::Phone)));
        assert_eq!(d.add_phone, None);
    }

    #[test]
    fn a_household_number_is_told_apart_by_first_name_or_stays_ambiguous() {
        let d = decide(&claims("4155551234", Some("Maria Lopez"), None, None), &crm(), Region::US);
        assert_eq!((d.outcome, d.record_id.as_deref()), (Outcome::Matched, Some("1")));
        let d = decide(&claims("4155551234", None, None, None), &crm(), Region::US);
        assert_eq!((d.outcome, d.candidates.clone()), (Outcome::Ambiguous, vec!["1".to_string(), "2".to_string()]));
        let d = decide(&claims("4155551234", Some("Lucía López"), None, None), &crm(), Region::US);
        assert_eq!(d.outcome, Outcome::Ambiguous);
        // One record on the line, another first name: the spouse calling, not Ana.
        let d = decide(&claims("+16505550100", Some("Pedro Pérez"), None, None), &crm(), Region::US);
        assert_eq!((d.outcome, d.candidates.clone()), (Outcome::Ambiguous, vec!["3".to_string()]));
        // A nickname is not another person.
        let d = decide(&claims("+12125550199", Some("Johnny Smith"), None, None), &crm(), Region::US);
        assert_eq!(d.outcome, Outcome::Matched);
    }

    #[test]
    fn phone_to_one_record_and_email_to_another_is_ambiguous() {
        let d = decide(&claims("+16505550100", None, Some("maria@example.com"), None), &crm(), Region::US);
        assert_eq!(d.outcome, Outcome::Ambiguous);
        assert_eq!(d.candidates, vec!["1".to_string(), "3".to_string()]);
    }

    #[test]
    fn a_known_email_from_a_new_number_is_the_contact_plus_the_number() {
        let d = decide(&claims("415-555-5678", None, Some(" Maria@Example.COM "), None), &crm(), Region::US);
        assert_eq!((d.outcome, d.record_id.as_deref(), d.basis), (Outcome::Matched, Some("1"), Some(Basis::Email)));
        assert_eq!(d.add_phone.as_deref(), Some("+14155555678"));
    }

    #[test]
    fn never_a_merge_on_the_name_alone() {
        let d = decide(&claims("+13105550111", Some("John Smith"), None, None), &crm(), Region::US);
        assert_eq!(d.outcome, Outcome::New);
        let d = decide(&claims("+13105550111", Some("John Smith"), None, Some("90210")), &crm(), Region::US);
        assert_eq!(d.outcome, Outcome::New);
        let d = decide(&claims("+13105550111", Some("Jon Smith"), None, Some("10001-4455")), &crm(), Region::US);
        assert_eq!(
            (d.outcome, d.basis, d.add_phone.as_deref()),
            (Outcome::Matched, Some(Basis::NameZip), Some("+13105550111"))
        );
        // Name and zip agree, but the caller's email is not the record's: a reviewer decides.
        let d = decide(
            &claims("+13105550111", Some("Ana Perez"), Some("ana.p@other.example"), Some("94301")),
            &crm(),
            Region::US,
        );
        assert_eq!(d.outcome, Outcome::Ambiguous);
    }

    #[test]
    fn withheld_numbers_match_nothing() {
        for raw in ["anonymous", "+266696687", "", "Restricted"] {
            let d = decide(&claims(raw, None, None, None), &crm(), Region::US);
            assert_eq!(d.outcome, Outcome::New, "{raw:?}");
        }
        // Withheld, but the email is known.
        let d = decide(&claims("anonymous", None, Some("ana@example.com"), None), &crm(), Region::US);
        assert_eq!((d.outcome, d.record_id.as_deref(), d.add_phone), (Outcome::Matched, Some("3"), None));
    }
}
