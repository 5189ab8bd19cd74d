//! A tenant's write-back rules, from the `[writeback]` table of its tenant file: the mode
//! (shadow / review / auto), the field mapping (each captured datum → one CRM property with its
//! type, its write rule and its localized-answer table), the "last written by callside"
//! property, escalation routing and the structured webhook.
//!
//! Parsed and validated with the rest of the configuration: every problem is reported at once.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// The `[writeback]` table as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WritebackRulesFile {
    /// `auto` (default), `review` (an operator approves each plan) or `shadow` (plans are built
    /// and shown, nothing is written).
    pub mode: Option<String>,
    /// A datetime contact property set to the time of every write callside makes to the contact.
    pub last_written_property: Option<String>,
    pub fields: Vec<FieldMappingFile>,
    pub escalation: EscalationFile,
    /// Call disposition → deal stage (id or label) for the caller's one open deal.
    pub deal_stage_on: BTreeMap<String, String>,
    pub webhook: Option<WebhookFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMappingFile {
    /// What the call captured: `first_name`, `last_name`, `email`, `phone`, `zip`, `intent`,
    /// `sentiment`, `urgency`, `language`, `disposition`, or `answer.<key>` for a qualification
    /// answer.
    pub datum: String,
    /// The CRM property's internal name.
    pub property: String,
    /// `text`, `number`, `date`, `datetime`, `enumeration`, `phone`, `email` or `name`.
    #[serde(rename = "type", default = "default_type")]
    pub kind: String,
    /// `ai` (always overwritten), `hybrid` (written unless a person edited it since the service
    /// read it; otherwise a conflict for review) or `rep` (never written).
    #[serde(default = "default_rule")]
    pub rule: String,
    /// Read the value back after writing: a write the CRM accepted but did not keep is a failure.
    #[serde(default)]
    pub verify: bool,
    /// Spoken or localized answers → the canonical value (an enumeration's internal value).
    #[serde(default)]
    pub values: BTreeMap<String, String>,
}

fn default_type() -> String {
    "text".into()
}

fn default_rule() -> String {
    "hybrid".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EscalationFile {
    /// The owner of escalation tasks when the caller has no contact owner and no route matches.
    pub owner_id: Option<String>,
    /// Urgency (`low`, `medium`, `high`) → minutes until the task is due.
    pub due_minutes: BTreeMap<String, u32>,
    pub routes: Vec<EscalationRouteFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationRouteFile {
    /// Case-insensitive words; a reason containing any of them goes to `owner_id`.
    pub reason_contains: Vec<String>,
    pub owner_id: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    pub url: String,
    /// Environment variable holding the HMAC-SHA256 signing secret.
    pub secret_env: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Shadow,
    Review,
    Auto,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Shadow => "shadow",
            Mode::Review => "review",
            Mode::Auto => "auto",
        }
    }
}

/// What a field holds, as the call captured it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Datum {
    FirstName,
    LastName,
    Email,
    Phone,
    Zip,
    Intent,
    Sentiment,
    Urgency,
    Language,
    Disposition,
    /// A qualification answer by its question key.
    Answer(String),
}

impl Datum {
    pub fn parse(s: &str) -> Option<Datum> {
        Some(match s {
            "first_name" => Datum::FirstName,
            "last_name" => Datum::LastName,
            "email" => Datum::Email,
            "phone" => Datum::Phone,
            "zip" => Datum::Zip,
            "intent" => Datum::Intent,
            "sentiment" => Datum::Sentiment,
            "urgency" => Datum::Urgency,
            "language" => Datum::Language,
            "disposition" => Datum::Disposition,
            other => {
                let key = other.strip_prefix("answer.")?;
                if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                    return None;
                }
                Datum::Answer(key.to_owned())
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    Text,
    Number,
    Date,
    DateTime,
    Enumeration,
    Phone,
    Email,
    Name,
}

impl FieldType {
    fn parse(s: &str) -> Option<FieldType> {
        Some(match s {
            "text" => FieldType::Text,
            "number" => FieldType::Number,
            "date" => FieldType::Date,
            "datetime" => FieldType::DateTime,
            "enumeration" => FieldType::Enumeration,
            "phone" => FieldType::Phone,
            "email" => FieldType::Email,
            "name" => FieldType::Name,
            _ => return None,
        })
    }
}

/// Who owns a field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteRule {
    /// The AI's value always wins.
    AiOwned,
    /// Written unless a person edited it since the service last read the record.
    Hybrid,
    /// Never written by the service.
    RepOwned,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMapping {
    pub datum: Datum,
    pub property: String,
    pub kind: FieldType,
    pub rule: WriteRule,
    pub verify: bool,
    /// Folded spoken answer (lowercase, accents removed) → canonical value.
    pub values: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct Escalation {
    pub owner_id: Option<String>,
    pub due_minutes: BTreeMap<String, u32>,
    /// Folded words → owner.
    pub routes: Vec<(Vec<String>, String)>,
}

impl Escalation {
    /// Minutes until an escalation of this urgency is due (defaults: high 60, medium 240, low 1440).
    pub fn due_in_minutes(&self, urgency: &str) -> u32 {
        if let Some(m) = self.due_minutes.get(urgency) {
            return *m;
        }
        match urgency {
            "high" => 60,
            "medium" => 240,
            _ => 1440,
        }
    }

    /// The owner of an escalation: a routing rule matching the reason, else the contact's owner,
    /// else the tenant's default owner.
    pub fn owner_for(&self, reason: &str, contact_owner: Option<&str>) -> Option<String> {
        let folded = crate::writeback::mapping::fold(reason);
        self.routes
            .iter()
            .find(|(words, _)| words.iter().any(|w| folded.contains(w.as_str())))
            .map(|(_, owner)| owner.clone())
            .or_else(|| contact_owner.map(str::to_owned))
            .or_else(|| self.owner_id.clone())
    }
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: url::Url,
    pub secret: SecretString,
}

/// A tenant's validated write-back rules.
#[derive(Debug, Clone)]
pub struct WritebackRules {
    pub mode: Mode,
    pub last_written_property: Option<String>,
    pub fields: Vec<FieldMapping>,
    pub escalation: Escalation,
    pub deal_stage_on: BTreeMap<String, String>,
    pub webhook: Option<Webhook>,
}

impl Default for WritebackRules {
    fn default() -> Self {
        Self {
            mode: Mode::Auto,
            last_written_property: None,
            fields: Vec::new(),
            escalation: Escalation::default(),
            deal_stage_on: BTreeMap::new(),
            webhook: None,
        }
    }
}

const URGENCIES: [&str; 3] = ["low", "medium", "high"];

impl WritebackRulesFile {
    /// Validates the table; every problem is returned as `(key, reason)`.
    pub fn validate(&self) -> Result<WritebackRules, Vec<(String, String)>> {
        let mut issues = Vec::new();
        let mut issue = |k: String, r: String| issues.push((k, r));
        let mode = match self.mode.as_deref().unwrap_or("auto") {
            "auto" => Mode::Auto,
            "review" => Mode::Review,
            "shadow" => Mode::Shadow,
            other => {
                issue("writeback.mode".into(), format!("{other:?} must be \"shadow\", \"review\" or \"auto\""));
                Mode::Auto
            }
        };
        let valid_property = |p: &str| {
            !p.is_empty() && p.len() <= 100 && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if let Some(p) = &self.last_written_property
            && !valid_property(p)
        {
            issue("writeback.last_written_property".into(), format!("{p:?} is not a property name"));
        }
        let mut fields = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, f) in self.fields.iter().enumerate() {
            let key = |k: &str| format!("writeback.fields[{i}].{k}");
            let datum = Datum::parse(&f.datum);
            if datum.is_none() {
                issue(
                    key("datum"),
                    format!(
                        "{:?} is not a datum (first_name, last_name, email, phone, zip, intent, sentiment, urgency, language, disposition, answer.<key>)",
                        f.datum
                    ),
                );
            }
            if !valid_property(&f.property) {
                issue(key("property"), format!("{:?} is not a property name", f.property));
            } else if !seen.insert(f.property.clone()) {
                issue(key("property"), format!("{:?} is mapped twice", f.property));
            }
            if self.last_written_property.as_deref() == Some(f.property.as_str()) {
                issue(key("property"), "is also the last_written_property".into());
            }
            let kind = FieldType::parse(&f.kind);
            if kind.is_none() {
                issue(
                    key("type"),
                    format!("{:?} must be text, number, date, datetime, enumeration, phone, email or name", f.kind),
                );
            }
            let rule = match f.rule.as_str() {
                "ai" => Some(WriteRule::AiOwned),
                "hybrid" => Some(WriteRule::Hybrid),
                "rep" => Some(WriteRule::RepOwned),
                other => {
                    issue(key("rule"), format!("{other:?} must be \"ai\", \"hybrid\" or \"rep\""));
                    None
                }
            };
            if !f.values.is_empty() && kind != Some(FieldType::Enumeration) && kind != Some(FieldType::Text) {
                issue(key("values"), "answer tables apply to enumeration and text fields only".into());
            }
            let mut values = Vec::new();
            for (spoken, canonical) in &f.values {
                if crate::writeback::mapping::fold(spoken).is_empty() || canonical.trim().is_empty() {
                    issue(key("values"), format!("{spoken:?} = {canonical:?}: both sides must be non-empty"));
                }
                values.push((crate::writeback::mapping::fold(spoken), canonical.trim().to_owned()));
            }
            if let (Some(datum), Some(kind), Some(rule)) = (datum, kind, rule) {
                fields.push(FieldMapping { datum, property: f.property.clone(), kind, rule, verify: f.verify, values });
            }
        }
        let e = &self.escalation;
        for (u, m) in &e.due_minutes {
            if !URGENCIES.contains(&u.as_str()) {
                issue(format!("writeback.escalation.due_minutes.{u}"), "urgency must be low, medium or high".into());
            }
            if *m == 0 || *m > 60 * 24 * 30 {
                issue(format!("writeback.escalation.due_minutes.{u}"), "must be between 1 and 43200 minutes".into());
            }
        }
        let mut routes = Vec::new();
        for (i, r) in e.routes.iter().enumerate() {
            let words: Vec<String> = r
                .reason_contains
                .iter()
                .map(|w| crate::writeback::mapping::fold(w))
                .filter(|w| !w.is_empty())
                .collect();
            if words.is_empty() {
                issue(format!("writeback.escalation.routes[{i}].reason_contains"), "needs at least one word".into());
            }
            if r.owner_id.trim().is_empty() {
                issue(format!("writeback.escalation.routes[{i}].owner_id"), "must not be empty".into());
            }
            routes.push((words, r.owner_id.trim().to_owned()));
        }
        for (d, s) in &self.deal_stage_on {
            if d.trim().is_empty() || s.trim().is_empty() {
                issue("writeback.deal_stage_on".into(), format!("{d:?} = {s:?}: both sides must be non-empty"));
            }
        }
        let mut webhook = None;
        if let Some(w) = &self.webhook {
            let url = match url::Url::parse(&w.url) {
                Ok(u) if u.scheme() == "https" || u.scheme() == "http" => Some(u),
                _ => {
                    issue("writeback.webhook.url".into(), format!("{:?} is not an http(s) URL", w.url));
                    None
                }
            };
            let secret = match std::env::var(&w.secret_env) {
                Ok(s) if s.len() >= 16 => Some(SecretString::from(s)),
                Ok(_) => {
                    issue(
                        "writeback.webhook.secret_env".into(),
                        format!("the secret in {} must be at least 16 characters", w.secret_env),
                    );
                    None
                }
                Err(_) => {
                    issue(
                        "writeback.webhook.secret_env".into(),
                        format!("environment variable {} is not set", w.secret_env),
                    );
                    None
                }
            };
            if let (Some(url), Some(secret)) = (url, secret) {
                webhook = Some(Webhook { url, secret });
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(WritebackRules {
            mode,
            last_written_property: self.last_written_property.clone(),
            fields,
            escalation: Escalation {
                owner_id: e.owner_id.clone().filter(|o| !o.trim().is_empty()),
                due_minutes: e.due_minutes.clone(),
                routes,
            },
            deal_stage_on: self.deal_stage_on.iter().map(|(d, s)| (d.trim().to_owned(), s.trim().to_owned())).collect(),
            webhook,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WritebackRules, Vec<(String, String)>> {
        #[derive(Deserialize)]
        struct Wrap {
            writeback: WritebackRulesFile,
        }
        toml::from_str::<Wrap>(text).expect("toml parses").writeback.validate()
    }

    #[test]
    fn a_full_table_validates() {
        let rules = parse(
            r#"
            [writeback]
            mode = "review"
            last_written_property = "callside_last_written_at"
            deal_stage_on = { booked = "appointmentscheduled" }
            [[writeback.fields]]
            datum = "urgency"
            property = "callside_urgency"
            type = "enumeration"
            rule = "ai"
            verify = true
            values = { alta = "high", "Urgente" = "high", baja = "low" }
            [[writeback.fields]]
            datum = "answer.budget"
            property = "callside_budget"
            type = "number"
            [writeback.escalation]
            owner_id = "7"
            due_minutes = { high = 30 }
            routes = [{ reason_contains = ["Refund"], owner_id = "9" }]
            "#,
        )
        .unwrap();
        assert_eq!(rules.mode, Mode::Review);
        assert_eq!(rules.fields.len(), 2);
        assert_eq!(rules.fields[0].rule, WriteRule::AiOwned);
        assert!(rules.fields[0].values.contains(&("urgente".into(), "high".into())));
        assert_eq!(rules.fields[1].datum, Datum::Answer("budget".into()));
        assert_eq!(rules.fields[1].rule, WriteRule::Hybrid, "hybrid is the default rule");
        assert_eq!(rules.escalation.due_in_minutes("high"), 30);
        assert_eq!(rules.escalation.due_in_minutes("low"), 1440);
        assert_eq!(rules.escalation.owner_for("wants a REFUND now", Some("5")).as_deref(), Some("9"));
        assert_eq!(rules.escalation.owner_for("angry", Some("5")).as_deref(), Some("5"));
        assert_eq!(rules.escalation.owner_for("angry", None).as_deref(), Some("7"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let issues = parse(
            r#"
            [writeback]
            mode = "yolo"
            [[writeback.fields]]
            datum = "shoe_size"
            property = "bad name!"
            type = "colour"
            rule = "mine"
            [[writeback.fields]]
            datum = "zip"
            property = "zip"
            type = "number"
            values = { a = "b" }
            [writeback.escalation]
            due_minutes = { urgent = 0 }
            [writeback.webhook]
            url = "ftp://x"
            secret_env = "CALLSIDE_TEST_UNSET_WEBHOOK_SECRET"
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = issues.iter().map(|(k, _)| k.as_str()).collect();
        for want in [
            "writeback.mode",
            "writeback.fields[0].datum",
            "writeback.fields[0].property",
            "writeback.fields[0].type",
            "writeback.fields[0].rule",
            "writeback.fields[1].values",
            "writeback.escalation.due_minutes.urgent",
            "writeback.webhook.url",
            "writeback.webhook.secret_env",
        ] {
            assert!(keys.contains(&want), "{want} missing from {issues:?}");
        }
    }

    #[test]
    fn no_table_means_auto_and_nothing_mapped() {
        let rules = WritebackRulesFile::default().validate().unwrap();
        assert_eq!(rules.mode, Mode::Auto);
        assert!(rules.fields.is_empty() && rules.webhook.is_none());
    }
}
