//! Field mapping: each datum a call captured becomes one typed CRM property write, per the
//! tenant's mapping. Values are normalized before they are sent (phones to E.164, email syntax
//! checked, names capitalized the way people write them, localized answers to canonical values);
//! a datum the call did not capture produces no write at all — never an empty or placeholder
//! value. A value that cannot be typed is reported, not sent.

use serde::{Deserialize, Serialize};

use super::plan::CallOutcome;
use super::settings::{Datum, FieldMapping, FieldType, WriteRule, WritebackRules};
use crate::connectors::crm::PropertyValue;
use crate::identity::{ParsedPhone, Phone};

/// One property the fields step will consider writing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedField {
    pub property: String,
    pub value: PropertyValue,
    pub rule: WriteRule,
    pub verify: bool,
}

/// A captured datum that could not become a valid value (kept on the plan for the operator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldRejection {
    pub property: String,
    pub reason: String,
}

/// Lowercases, trims and removes accents: the form spoken answers are compared in. Stored
/// values keep their accents; only comparisons fold.
pub fn fold(s: &str) -> String {
    s.trim()
        .to_lowercase()
        .chars()
        .map(|c| match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' => 'a',
            'è' | 'é' | 'ê' | 'ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' => 'i',
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' => 'o',
            'ù' | 'ú' | 'û' | 'ü' => 'u',
            'ñ' => 'n',
            'ç' => 'c',
            'ý' | 'ÿ' => 'y',
            other => other,
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Name particles written in lower case inside a name ("María de la Cruz", "Ludwig van Beethoven").
const PARTICLES: [&str; 12] = ["de", "del", "della", "la", "las", "los", "van", "von", "der", "den", "da", "di"];

/// Capitalizes a name as people write it: a name already in mixed case is kept as given
/// ("McDonald", "DeShawn"); an all-lower or all-upper one gets each part capitalized, with
/// "Mc" prefixes ("mcdonald" → "McDonald"), apostrophes ("o'brien" → "O'Brien"), hyphens and
/// particles ("maria de la cruz" → "Maria de la Cruz"). Accents are kept.
pub fn capitalize_name(raw: &str) -> String {
    let words: Vec<&str> = raw.split_whitespace().collect();
    let joined = words.join(" ");
    let has_lower = joined.chars().any(char::is_lowercase);
    let has_upper = joined.chars().any(char::is_uppercase);
    if has_lower && has_upper {
        return joined;
    }
    let last = words.len().saturating_sub(1);
    words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let lower = w.to_lowercase();
            if i < last && PARTICLES.contains(&lower.as_str()) { lower } else { capitalize_word(&lower) }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn capitalize_word(lower: &str) -> String {
    let mut out = String::with_capacity(lower.len());
    let mut start = true;
    for c in lower.chars() {
        if start && c.is_alphabetic() {
            out.extend(c.to_uppercase());
            start = false;
        } else {
            out.push(c);
        }
        if matches!(c, '-' | '\'' | '’') {
            start = true;
        }
    }
    // "Mcdonald" → "McDonald": the letter after "Mc" is a capital in every Mc- surname.
    if out.starts_with("Mc") && out.chars().count() > 3 {
        let rest: String = out.chars().skip(2).collect();
        let mut chars = rest.chars();
        if let Some(first) = chars.next() {
            out = format!("Mc{}{}", first.to_uppercase(), chars.as_str());
        }
    }
    out
}

/// An email address, lowercased, if its syntax is plausible: one `@`, a local part of allowed
/// characters, a domain of dot-separated labels (letters, digits, hyphens) ending in a TLD of
/// at least two letters.
pub fn normalize_email(raw: &str) -> Result<String, String> {
    let e = crate::identity::normalize_email(raw).ok_or_else(|| "not an email address".to_string())?;
    let (local, domain) = e.split_once('@').expect("normalize_email checked the @");
    let local_ok = local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.iter().all(|l| {
        !l.is_empty() && !l.starts_with('-') && !l.ends_with('-') && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    }) && labels.last().is_some_and(|tld| tld.len() >= 2 && tld.chars().all(char::is_alphabetic));
    if local_ok && domain_ok && e.len() <= 254 { Ok(e) } else { Err("not an email address".into()) }
}

/// The value a mapping table gives a spoken answer: the whole answer, or what follows a
/// "label:" ("urgencia: alta" → "alta").
fn canonical(m: &FieldMapping, raw: &str) -> Option<String> {
    let lookup = |s: &str| {
        let f = fold(s);
        m.values.iter().find(|(spoken, _)| *spoken == f).map(|(_, c)| c.clone())
    };
    lookup(raw).or_else(|| raw.split_once(':').and_then(|(_, answer)| lookup(answer)))
}

/// Types one raw value for a mapping.
pub fn typed_value(
    m: &FieldMapping,
    raw: &str,
    region: rlibphonenumber::enums::Region,
) -> Result<PropertyValue, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("empty".into());
    }
    if raw.chars().count() > 1000 {
        return Err("longer than 1000 characters".into());
    }
    let mapped = canonical(m, raw);
    Ok(match m.kind {
        FieldType::Text => PropertyValue::Text(mapped.unwrap_or_else(|| raw.to_owned())),
        FieldType::Enumeration => PropertyValue::Enumeration(mapped.unwrap_or_else(|| raw.to_owned())),
        FieldType::Number => {
            let cleaned: String =
                raw.chars().filter(|c| !matches!(c, ',' | ' ' | '$' | '€' | '£' | '\u{a0}')).collect();
            let n: f64 = cleaned.parse().map_err(|_| format!("{raw:?} is not a number"))?;
            let number = if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Number::from(n as i64)
            } else {
                serde_json::Number::from_f64(n).ok_or_else(|| format!("{raw:?} is not a finite number"))?
            };
            PropertyValue::Number(number)
        }
        FieldType::Date => PropertyValue::Date(raw.parse().map_err(|_| format!("{raw:?} is not a YYYY-MM-DD date"))?),
        FieldType::DateTime => {
            PropertyValue::DateTime(raw.parse().map_err(|_| format!("{raw:?} is not an RFC 3339 date-time"))?)
        }
        FieldType::Phone => match Phone::parse(raw, region) {
            ParsedPhone::Number(p) => PropertyValue::Text(p.e164),
            _ => return Err("not a phone number".into()),
        },
        FieldType::Email => PropertyValue::Text(normalize_email(raw)?),
        FieldType::Name => PropertyValue::Text(capitalize_name(raw)),
    })
}

/// The raw captured value of a datum, if the call captured it.
pub fn datum_value(outcome: &CallOutcome, datum: &Datum) -> Option<String> {
    let (first, last) = outcome.caller_name.as_deref().map(super::plan::split_name).unwrap_or((None, None));
    let v = match datum {
        Datum::FirstName => first,
        Datum::LastName => last,
        Datum::Email => outcome.caller_email.clone(),
        Datum::Phone => outcome.caller_phone.clone(),
        Datum::Zip => outcome.caller_zip.clone(),
        Datum::Intent => outcome.intent.clone(),
        Datum::Sentiment => outcome.sentiment.clone(),
        Datum::Urgency => outcome.urgency.clone(),
        Datum::Language => outcome.language.clone(),
        Datum::Disposition => outcome.disposition.clone(),
        Datum::Answer(key) => outcome.answers.get(key).cloned(),
    };
    v.filter(|s| !s.trim().is_empty())
}

/// Every mapped datum the call captured, typed; and those that could not be typed.
pub fn planned_fields(
    outcome: &CallOutcome,
    rules: &WritebackRules,
    region: rlibphonenumber::enums::Region,
) -> (Vec<PlannedField>, Vec<FieldRejection>) {
    let mut planned = Vec::new();
    let mut rejected = Vec::new();
    for m in &rules.fields {
        if m.rule == WriteRule::RepOwned {
            continue;
        }
        let Some(raw) = datum_value(outcome, &m.datum) else {
            continue;
        };
        match typed_value(m, &raw, region) {
            Ok(value) => {
                planned.push(PlannedField { property: m.property.clone(), value, rule: m.rule, verify: m.verify })
            }
            Err(reason) => rejected.push(FieldRejection { property: m.property.clone(), reason }),
        }
    }
    (planned, rejected)
}

/// Qualification answers no mapping covers (these, and only these, go into a note).
pub fn unmapped_answers(outcome: &CallOutcome, rules: &WritebackRules) -> Vec<(String, String)> {
    outcome
        .answers
        .iter()
        .filter(|(k, v)| !v.trim().is_empty() && !rules.fields.iter().any(|m| m.datum == Datum::Answer((*k).clone())))
        .map(|(k, v)| (k.clone(), v.trim().to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlibphonenumber::enums::Region;

    fn mapping(kind: FieldType, values: &[(&str, &str)]) -> FieldMapping {
        FieldMapping {
            datum: Datum::Urgency,
            property: "p".into(),
            kind,
            rule: WriteRule::AiOwned,
            verify: false,
            values: values.iter().map(|(a, b)| (fold(a), b.to_string())).collect(),
        }
    }

    #[test]
    fn names_are_capitalized_the_way_people_write_them() {
        for (raw, want) in [
            ("mcdonald", "McDonald"),
            ("MCDONALD", "McDonald"),
            ("o'brien", "O'Brien"),
            ("mary ann o’brien", "Mary Ann O’Brien"),
            ("maría de la cruz", "María de la Cruz"),
            ("de la cruz", "de la Cruz"),
            ("JOSÉ ÁLVAREZ-PÉREZ", "José Álvarez-Pérez"),
            ("ludwig van beethoven", "Ludwig van Beethoven"),
            // Mixed case is the caller's own spelling: kept.
            ("DeShawn McDonald", "DeShawn McDonald"),
            ("Macdonald", "Macdonald"),
            ("  ana   lópez ", "Ana López"),
        ] {
            assert_eq!(capitalize_name(raw), want, "{raw}");
        }
    }

    #[test]
    fn emails_are_checked_and_lowercased() {
        assert_eq!(normalize_email(" Ana.Lopez+x@Example.COM ").unwrap(), "ana.lopez+x@example.com");
        for bad in
            ["ana", "ana@", "@x.com", "ana@x", "ana@@x.com", "ana lopez@x.com", "ana@x.c", "a..b@x.com", "ana@-x.com"]
        {
            assert!(normalize_email(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn localized_answers_map_to_canonical_values() {
        let m = mapping(FieldType::Enumeration, &[("alta", "high"), ("urgente", "high"), ("media", "medium")]);
        assert_eq!(typed_value(&m, "Alta", Region::US).unwrap(), PropertyValue::Enumeration("high".into()));
        assert_eq!(typed_value(&m, "urgencia: alta", Region::US).unwrap(), PropertyValue::Enumeration("high".into()));
        assert_eq!(typed_value(&m, "ÚRGENTE", Region::US).unwrap(), PropertyValue::Enumeration("high".into()));
        // Not in the table: sent as said; the connector checks it against the property's options.
        assert_eq!(typed_value(&m, "whenever", Region::US).unwrap(), PropertyValue::Enumeration("whenever".into()));
    }

    #[test]
    fn values_are_typed_or_refused() {
        let n = mapping(FieldType::Number, &[]);
        assert_eq!(typed_value(&n, "$1,500", Region::US).unwrap(), PropertyValue::Number(1500.into()));
        assert_eq!(
            typed_value(&n, "2.5", Region::US).unwrap(),
            PropertyValue::Number(serde_json::Number::from_f64(2.5).unwrap())
        );
        assert!(typed_value(&n, "lots", Region::US).is_err());
        let d = mapping(FieldType::Date, &[]);
        assert_eq!(
            typed_value(&d, "2026-12-01", Region::US).unwrap(),
            PropertyValue::Date("2026-12-01".parse().unwrap())
        );
        assert!(typed_value(&d, "next tuesday", Region::US).is_err());
        let p = mapping(FieldType::Phone, &[]);
        assert_eq!(typed_value(&p, "(415) 555-0134", Region::US).unwrap(), PropertyValue::Text("+14155550134".into()));
        assert!(typed_value(&p, "call me maybe", Region::US).is_err());
        let e = mapping(FieldType::Email, &[]);
        assert!(typed_value(&e, "not-an-email", Region::US).is_err());
        let name = mapping(FieldType::Name, &[]);
        assert_eq!(typed_value(&name, "o'brien", Region::US).unwrap(), PropertyValue::Text("O'Brien".into()));
        assert!(typed_value(&name, "   ", Region::US).is_err());
    }
}
