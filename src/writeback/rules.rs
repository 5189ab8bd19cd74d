//! Write rules per field: AI-owned fields are overwritten, rep-owned fields are never written,
//! and hybrid fields are written only if no person edited them since the service last read the
//! record — otherwise the AI's value becomes a conflict for review (design invariant 5).
//!
//! "Since the service last read it" is measured in the CRM's own time: the read's watermark is
//! the record's last-modified time as the service read it (so clock skew between callside and
//! the vendor cannot turn an old edit into a new one), and the edits are the property's history.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::settings::WriteRule;
use crate::connectors::crm::PropertyHistory;

/// What to do with one planned field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Write,
    /// A person edited the field after the service's read: not written, kept for review.
    Conflict {
        crm_value: String,
        edited_at: Timestamp,
        edited_by: Option<String>,
    },
    /// Nothing to do (rep-owned, or the CRM already holds this value).
    Skip {
        reason: String,
    },
}

/// Decides one field. `current` is the property's history (newest first), `watermark` the
/// record's last-modified time as of the service's read (`None`: the service never read it, so
/// every human edit is newer than its knowledge), `sending` the formatted value to write.
pub fn decide(
    rule: WriteRule,
    history: Option<&PropertyHistory>,
    watermark: Option<Timestamp>,
    sending: &str,
) -> Decision {
    let newest = history.and_then(|h| h.versions.first());
    if newest.is_some_and(|v| v.value == sending) {
        return Decision::Skip { reason: "the CRM already holds this value".into() };
    }
    match rule {
        WriteRule::RepOwned => Decision::Skip { reason: "rep-owned".into() },
        WriteRule::AiOwned => Decision::Write,
        WriteRule::Hybrid => {
            let human_after_read = history
                .into_iter()
                .flat_map(|h| h.versions.iter())
                .find(|v| v.is_human_edit() && watermark.is_none_or(|read| v.timestamp > read));
            match human_after_read {
                // Only a conflict while the person's value is still the current one (or a
                // later automated change replaced it: the person's intent still stands).
                Some(v) => Decision::Conflict {
                    crm_value: newest.map(|n| n.value.clone()).unwrap_or_default(),
                    edited_at: v.timestamp,
                    edited_by: v.updated_by_user_id.clone(),
                },
                None => Decision::Write,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::crm::PropertyVersion;

    fn v(value: &str, at: &str, source: &str, user: Option<&str>) -> PropertyVersion {
        PropertyVersion {
            value: value.into(),
            timestamp: at.parse().unwrap(),
            source_type: source.into(),
            source_id: None,
            updated_by_user_id: user.map(str::to_owned),
        }
    }

    fn history(versions: Vec<PropertyVersion>) -> PropertyHistory {
        PropertyHistory { name: "p".into(), versions }
    }

    #[test]
    fn hybrid_yields_to_a_person_who_edited_after_the_read() {
        let read: Timestamp = "2026-11-23T13:00:00Z".parse().unwrap();
        let h = history(vec![
            v("medium", "2026-11-23T13:05:00Z", "CRM_UI", Some("42")),
            v("low", "2026-11-20T10:00:00Z", "INTEGRATION", None),
        ]);
        match decide(WriteRule::Hybrid, Some(&h), Some(read), "high") {
            Decision::Conflict { crm_value, edited_by, .. } => {
                assert_eq!(crm_value, "medium");
                assert_eq!(edited_by.as_deref(), Some("42"));
            }
            other => panic!("{other:?}"),
        }
        // The AI-owned field is overwritten regardless, the rep-owned one never.
        assert_eq!(decide(WriteRule::AiOwned, Some(&h), Some(read), "high"), Decision::Write);
        assert!(matches!(decide(WriteRule::RepOwned, Some(&h), Some(read), "high"), Decision::Skip { .. }));
    }

    #[test]
    fn hybrid_writes_over_an_edit_the_service_had_already_read() {
        let read: Timestamp = "2026-11-23T13:00:00Z".parse().unwrap();
        let h = history(vec![v("medium", "2026-11-22T09:00:00Z", "CRM_UI", Some("42"))]);
        assert_eq!(decide(WriteRule::Hybrid, Some(&h), Some(read), "high"), Decision::Write);
        // Integrations' changes after the read are not a person's.
        let h = history(vec![v("low", "2026-11-23T14:00:00Z", "INTEGRATION", None)]);
        assert_eq!(decide(WriteRule::Hybrid, Some(&h), Some(read), "high"), Decision::Write);
        // Never read (a record this plan created): any person's edit wins.
        let h = history(vec![v("medium", "2026-11-22T09:00:00Z", "CRM_UI", Some("42"))]);
        assert!(matches!(decide(WriteRule::Hybrid, Some(&h), None, "high"), Decision::Conflict { .. }));
        // An empty field is written.
        assert_eq!(decide(WriteRule::Hybrid, None, Some(read), "high"), Decision::Write);
    }

    #[test]
    fn a_value_already_held_is_not_rewritten() {
        let h = history(vec![v("high", "2026-11-23T14:00:00Z", "CRM_UI", Some("42"))]);
        assert!(matches!(decide(WriteRule::Hybrid, Some(&h), None, "high"), Decision::Skip { .. }));
    }
}
