//! Caller identity: phone and email normalization and the match decision.
//!
//! Phones are parsed with `rlibphonenumber` (a maintained port of Google's libphonenumber) in the
//! tenant's default region. The raw string is kept; the extension is not part of identity; a
//! number that fails the validity check still matches (metadata lags new area codes); withheld
//! numbers never match anything.

use rlibphonenumber::{PHONE_NUMBER_UTIL, PhoneNumberFormat, enums::Region};

use crate::connectors::crm::{CrmContact, PhoneQuery};

/// A parsed phone number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone {
    /// As received.
    pub raw: String,
    /// `+14155550134`.
    pub e164: String,
    /// National significant number, `4155550134`.
    pub national: String,
    /// Whether libphonenumber's metadata considers it a valid number (informational only).
    pub valid: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedPhone {
    Number(Phone),
    /// The caller withheld their number (or it is unavailable): a normal call, nothing to match.
    Withheld,
    /// Not a phone number at all.
    Unparseable,
}

/// Strings carriers and platforms use for a withheld caller id. `+266696687` is "ANONYMOUS" on a
/// keypad and is what some carriers put in the From header.
const WITHHELD: &[&str] =
    &["anonymous", "restricted", "private", "withheld", "unknown", "unavailable", "blocked", "+266696687", "266696687"];

/// The most parse → E.164 steps followed to find a number's key (see [`Phone::parse`]).
const REPARSE_BOUND: usize = 64;

impl Phone {
    pub fn parse(raw: &str, default_region: Region) -> ParsedPhone {
        let trimmed = raw.trim();
        let lower = trimmed.to_ascii_lowercase();
        let user_part = lower
            .strip_prefix("sip:")
            .or_else(|| lower.strip_prefix("tel:"))
            .map(|rest| rest.split(['@', ';']).next().unwrap_or(""))
            .unwrap_or(&lower);
        if user_part.is_empty() || WITHHELD.contains(&user_part) {
            return ParsedPhone::Withheld;
        }
        let candidate = if lower.starts_with("sip:") || lower.starts_with("tel:") { user_part } else { trimmed };
        match PHONE_NUMBER_UTIL.parse(candidate, Some(default_region)) {
            Ok(mut number) => {
                let mut e164 = number.format_as(PhoneNumberFormat::E164).into_owned();
                // One key per number: the E.164 form must parse back to itself. libphonenumber
                // can keep extra national leading zeros that its own E.164 string does not carry
                // back, and for some invalid numbers re-parsing even cycles (found by the `phone`
                // fuzz target: GB "00000020000002" → "+440020000002" → "+44020000002" → …). So
                // follow parse → E.164 until a string repeats and take the smallest member of the
                // cycle it closed: every spelling on that path gets the same key.
                let mut seen = vec![(e164.clone(), number.clone())];
                let cycle_start = loop {
                    let Ok(again) = PHONE_NUMBER_UTIL.parse(&seen[seen.len() - 1].0, Some(default_region)) else {
                        break seen.len() - 1;
                    };
                    let again_e164 = again.format_as(PhoneNumberFormat::E164).into_owned();
                    if let Some(i) = seen.iter().position(|(e, _)| *e == again_e164) {
                        break i;
                    }
                    // Each step can drop only one leading zero, and a national number has at
                    // most 17 digits, so a path closes long before this bound (the third fuzz
                    // find, `%00000o00000o22001340`, needed more than the 8 steps once allowed).
                    if seen.len() >= REPARSE_BOUND {
                        break seen.len() - 1;
                    }
                    seen.push((again_e164, again));
                };
                let (canon_e164, canon) = seen
                    .drain(cycle_start..)
                    .min_by(|(a, _), (b, _)| (a.len(), a).cmp(&(b.len(), b)))
                    .expect("the cycle has a member");
                (number, e164) = (canon, canon_e164);
                if WITHHELD.contains(&e164.as_str()) {
                    return ParsedPhone::Withheld;
                }
                ParsedPhone::Number(Phone {
                    raw: raw.to_owned(),
                    national: number.get_national_significant_number(),
                    valid: number.is_valid(),
                    e164,
                })
            }
            Err(_) => ParsedPhone::Unparseable,
        }
    }

    pub fn query(&self) -> PhoneQuery {
        PhoneQuery { e164: self.e164.clone(), national: self.national.clone() }
    }
}

/// Lower-cased, trimmed email, or `None` if it is not plausibly an address.
pub fn normalize_email(raw: &str) -> Option<String> {
    let e = raw.trim().to_lowercase();
    let (local, domain) = e.split_once('@')?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !e.chars().any(char::is_whitespace)
        && e.matches('@').count() == 1;
    ok.then_some(e)
}

/// The outcome of matching a caller against CRM candidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchDecision {
    /// Exactly one record holds this number.
    Matched(CrmContact),
    /// Several records hold this number (a shared household or office line): never guess.
    Ambiguous(Vec<CrmContact>),
    /// No record holds this number.
    New,
    /// The caller's number is withheld: nothing to match on.
    Withheld,
}

/// Keeps only candidates whose stored phones are the caller's number once normalized — the
/// vendor's own matching is never trusted alone — and decides.
pub fn decide_by_phone(caller: &Phone, candidates: Vec<CrmContact>, region: Region) -> MatchDecision {
    let mut same: Vec<CrmContact> =
        candidates.into_iter().filter(|c| c.phones.iter().any(|p| same_number(caller, p, region))).collect();
    same.dedup_by(|a, b| a.id == b.id);
    match same.len() {
        0 => MatchDecision::New,
        1 => MatchDecision::Matched(same.remove(0)),
        _ => MatchDecision::Ambiguous(same),
    }
}

/// Whether a stored phone string is the caller's number.
pub fn same_number(caller: &Phone, stored: &str, region: Region) -> bool {
    match Phone::parse(stored, region) {
        ParsedPhone::Number(p) => p.e164 == caller.e164,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(raw: &str) -> Phone {
        match Phone::parse(raw, Region::US) {
            ParsedPhone::Number(p) => p,
            other => panic!("{raw:?} did not parse: {other:?}"),
        }
    }

    #[test]
    fn same_number_in_many_formats_has_one_e164() {
        for raw in [
            "+14155550134",
            "(415) 555-0134",
            "415-555-0134",
            "4155550134",
            "+1 415 555 0134",
            "1-415-555-0134",
            "+1 (415) 555-0134;ext=12",
            "415.555.0134 x99",
            "tel:+1-415-555-0134",
        ] {
            assert_eq!(us(raw).e164, "+14155550134", "{raw}");
        }
    }

    #[test]
    fn foreign_numbers_keep_their_country() {
        assert_eq!(us("+33 1 23 45 67 89").e164, "+33123456789");
        assert_eq!(us("+44 (0)20 7946 0958").e164, "+442079460958");
    }

    #[test]
    fn withheld_numbers_never_parse_to_a_number() {
        for raw in ["", "anonymous", "Restricted", "+266696687", "sip:anonymous@pbx.example", "  "] {
            assert_eq!(Phone::parse(raw, Region::US), ParsedPhone::Withheld, "{raw:?}");
        }
        assert_eq!(Phone::parse("not a number", Region::US), ParsedPhone::Unparseable);
    }

    #[test]
    fn decision_rechecks_digits_and_refuses_to_guess() {
        let caller = us("415-555-0134");
        let c = |id: &str, phone: &str| CrmContact { id: id.into(), phones: vec![phone.into()], ..Default::default() };
        assert_eq!(
            decide_by_phone(&caller, vec![c("1", "(415) 555-0134"), c("2", "+14155550199")], Region::US),
            MatchDecision::Matched(c("1", "(415) 555-0134"))
        );
        assert!(matches!(
            decide_by_phone(&caller, vec![c("1", "4155550134"), c("2", "+1 415 555 0134")], Region::US),
            MatchDecision::Ambiguous(v) if v.len() == 2
        ));
        assert_eq!(decide_by_phone(&caller, vec![c("2", "+14155550199")], Region::US), MatchDecision::New);
    }

    #[test]
    fn emails_are_normalized_or_refused() {
        assert_eq!(normalize_email("  Ana.Lopez@Example.COM "), Some("ana.lopez@example.com".into()));
        assert_eq!(normalize_email("ana@"), None);
        assert_eq!(normalize_email("ana lopez@example.com"), None);
        assert_eq!(normalize_email("a@b@example.com"), None);
    }
}
