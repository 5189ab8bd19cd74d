//! Retention and erasure in the store (issue 14, item 5; the policy is `crate::privacy`). Both run
//! in one transaction each, so a sweep or an erasure is all-or-nothing.

use std::collections::BTreeMap;

use jiff::Timestamp;
use sqlx::Row;

use super::{Backend, Store, StoreError, ms};

/// What one retention sweep changed (row counts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Calls whose saved outcome was reduced to the disposition.
    pub outcomes_redacted: u64,
    /// Written steps whose payload was replaced by the redaction marker.
    pub step_payloads_redacted: u64,
    /// Decided or shadow plans whose steps were dropped.
    pub held_plans_redacted: u64,
    /// Finished pending bookings whose attendee details were dropped.
    pub pending_attendees_redacted: u64,
    /// Past bookings whose caller phone and email were dropped.
    pub bookings_redacted: u64,
    pub audit_rows_deleted: u64,
    /// Field writes and resolved conflicts whose values were redacted.
    pub field_values_redacted: u64,
    /// Keys of the inbound replay and redelivery guard past their retention
    /// (`crate::inbound::GuardRetention`).
    pub inbound_keys_deleted: u64,
}

impl RetentionReport {
    pub fn is_empty(&self) -> bool {
        *self == RetentionReport::default()
    }
}

/// What an erasure removed for one tenant, and what remains with the business.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EraseReport {
    pub calls: u64,
    pub steps: u64,
    pub bookings: u64,
    pub pending_bookings: u64,
    pub identity_rows: u64,
    pub audit_rows: u64,
    pub field_writes: u64,
    pub conflicts: u64,
    pub held_plans: u64,
    /// (kind, id) of the CRM records that hold the caller: the identity index's records for the
    /// number, the objects the write-back created (not undone) and the records its steps wrote.
    pub crm_records: Vec<(String, String)>,
    /// (calendar id, event id) of the bookings made for the caller.
    pub calendar_events: Vec<(String, String)>,
}

/// Runs a DELETE whose statement (written in this file, never from input) binds the tenant as
/// `$1` and one value as `$2`; returns the rows removed.
async fn delete(tx: &mut sqlx::AnyConnection, sql: &str, tenant: &str, value: &str) -> Result<u64, StoreError> {
    Ok(sqlx::query(sql).bind(tenant).bind(value).execute(tx).await?.rows_affected())
}

impl Backend {
    /// A JSON text object of (key, SQL value) pairs.
    fn json_object(self, pairs: &[(&str, &str)]) -> String {
        let args = pairs.iter().map(|(k, v)| format!("'{k}', {v}")).collect::<Vec<_>>().join(", ");
        match self {
            Backend::Sqlite => format!("json_object({args})"),
            Backend::Postgres => format!("json_build_object({args})::text"),
        }
    }

    /// A JSON value of a top-level key, kept as JSON (a string stays a string inside an object).
    fn json_value(self, column: &str, key: &str) -> String {
        match self {
            Backend::Sqlite => format!("json_extract({column}, '$.{key}')"),
            Backend::Postgres => format!("({column}::jsonb -> '{key}')"),
        }
    }

    /// Whether text `column` contains the text bound as `param`.
    fn contains(self, column: &str, param: &str) -> String {
        match self {
            Backend::Sqlite => format!("instr({column}, {param}) > 0"),
            Backend::Postgres => format!("strpos({column}, {param}) > 0"),
        }
    }
}

impl Store {
    /// Redacts call content of calls ended before `content_before` and removes audit data
    /// older than `audit_before` (either `None`: kept forever).
    pub async fn apply_retention(
        &self,
        content_before: Option<Timestamp>,
        audit_before: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<RetentionReport, StoreError> {
        let mut r = RetentionReport::default();
        let mut tx = self.pool.begin().await?;
        let now = ms(now);
        if let Some(cutoff) = content_before.map(ms) {
            let b = self.backend;
            let redacted_outcome =
                b.json_object(&[("disposition", &b.json_value("outcome", "disposition")), ("redacted_at", "$1")]);
            let outcome_redacted_at = b.json_text("outcome", "redacted_at");
            r.outcomes_redacted = sqlx::query(&format!(
                "UPDATE calls SET outcome = {redacted_outcome}
                 WHERE ended_at < $2 AND outcome IS NOT NULL AND {outcome_redacted_at} IS NULL"
            ))
            .bind(now)
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // Only written steps: a step still to deliver needs its payload (erase removes it).
            let redacted_step = b.json_object(&[("redacted_at", "$1")]);
            let payload_redacted_at = b.json_text("payload", "redacted_at");
            r.step_payloads_redacted = sqlx::query(&format!(
                "UPDATE steps SET payload = {redacted_step}
                 WHERE status = 'done' AND {payload_redacted_at} IS NULL
                   AND call_id IN (SELECT call_id FROM calls WHERE ended_at < $2)"
            ))
            .bind(now)
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            r.held_plans_redacted = sqlx::query(
                "UPDATE held_plans SET steps = '[]'
                 WHERE status IN ('shadow', 'approved', 'rejected') AND created_at < $1 AND steps != '[]'",
            )
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            r.pending_attendees_redacted = sqlx::query(
                "UPDATE pending_bookings SET attendee = '{}'
                 WHERE status IN ('confirmed', 'escalated') AND updated_at < $1 AND attendee != '{}'",
            )
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // Past appointments only: an upcoming one is found by the caller's number.
            r.bookings_redacted = sqlx::query(
                "UPDATE bookings SET caller_phone = NULL, caller_email = NULL
                 WHERE end_at < $1 AND (caller_phone IS NOT NULL OR caller_email IS NOT NULL)",
            )
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if let Some(cutoff) = audit_before.map(ms) {
            r.audit_rows_deleted =
                sqlx::query("DELETE FROM audit WHERE at < $1").bind(cutoff).execute(&mut *tx).await?.rows_affected();
            // 'redacted' is not 'written': undo leaves these fields alone rather than "restore" a
            // value it no longer knows.
            r.field_values_redacted = sqlx::query(
                "UPDATE field_writes SET before_value = NULL, after_value = '', status = 'redacted'
                 WHERE at < $1 AND status != 'redacted'",
            )
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            r.field_values_redacted += sqlx::query(
                "UPDATE field_conflicts SET ai_value = '', crm_value = ''
                 WHERE status != 'open' AND at < $1 AND (ai_value != '' OR crm_value != '')",
            )
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        if r.bookings_redacted > 0 {
            // Every tenant's past bookings: the bump is global anyway (`bus::What::Bookings`).
            self.bookings_changed(super::bus::ALL_TENANTS).await;
        }
        Ok(r)
    }

    /// Removes everything the tenant's store holds about the caller whose number is `e164`: their
    /// calls with steps, plans, field writes, conflicts, created-object records and audit rows,
    /// their bookings and pending bookings, and their identity index rows (the number, and every
    /// row of the CRM records it pointed to). Returns the counts and what remains in the CRM and
    /// calendar.
    pub async fn erase_caller(&self, tenant: &str, e164: &str) -> Result<EraseReport, StoreError> {
        let mut r = EraseReport::default();
        let mut tx = self.pool.begin().await?;
        let attendee_phone = self.backend.json_text("attendee", "phone");
        let call_ids: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT call_id FROM calls WHERE tenant = $1 AND caller = $2
             UNION SELECT call_id FROM bookings WHERE tenant = $1 AND caller_phone = $2
             UNION SELECT call_id FROM pending_bookings WHERE tenant = $1 AND {attendee_phone} = $2"
        ))
        .bind(tenant)
        .bind(e164)
        .fetch_all(&mut *tx)
        .await?;
        let records: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT record_id FROM identity_index WHERE tenant = $1 AND kind = 'phone' AND value = $2",
        )
        .bind(tenant)
        .bind(e164)
        .fetch_all(&mut *tx)
        .await?;
        let emails: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT caller_email FROM bookings WHERE tenant = $1 AND caller_phone = $2 AND caller_email IS NOT NULL",
        )
        .bind(tenant)
        .bind(e164)
        .fetch_all(&mut *tx)
        .await?;

        // What stays with the business, gathered before the rows that name it go.
        let mut crm: BTreeMap<String, String> = records.iter().map(|id| (id.clone(), "record".to_owned())).collect();
        let mut events = Vec::new();
        for call in &call_ids {
            for row in sqlx::query(
                "SELECT object_type, object_id FROM created_objects WHERE tenant = $1 AND call_id = $2 AND undone_at IS NULL",
            )
            .bind(tenant)
            .bind(call)
            .fetch_all(&mut *tx)
            .await?
            {
                crm.insert(row.try_get("object_id")?, row.try_get("object_type")?);
            }
            for row in sqlx::query(
                "SELECT kind, external_id FROM steps
                 WHERE tenant = $1 AND call_id = $2 AND external_id IS NOT NULL AND kind NOT IN ('webhook', 'appointment')",
            )
            .bind(tenant)
            .bind(call)
            .fetch_all(&mut *tx)
            .await?
            {
                let id: String = row.try_get("external_id")?;
                crm.entry(id).or_insert(row.try_get("kind")?);
            }
        }
        for row in sqlx::query(&format!(
            "SELECT calendar_id, event_id, call_id FROM bookings WHERE tenant = $1 AND caller_phone = $2 AND status = 'confirmed'
             UNION SELECT calendar_id, event_id, call_id FROM pending_bookings
                   WHERE tenant = $1 AND {attendee_phone} = $2 AND status IN ('booked', 'confirmed')"
        ))
        .bind(tenant)
        .bind(e164)
        .fetch_all(&mut *tx)
        .await?
        {
            events.push((row.try_get("calendar_id")?, row.try_get("event_id")?));
        }
        for call in &call_ids {
            for row in sqlx::query(
                "SELECT calendar_id, event_id FROM bookings WHERE tenant = $1 AND call_id = $2 AND status = 'confirmed'",
            )
            .bind(tenant)
            .bind(call)
            .fetch_all(&mut *tx)
            .await?
            {
                events.push((row.try_get("calendar_id")?, row.try_get("event_id")?));
            }
        }
        events.sort();
        events.dedup();
        r.calendar_events = events;
        r.crm_records = crm.into_iter().map(|(id, kind)| (kind, id)).collect();
        r.crm_records.sort();

        // Children first: steps and held plans reference calls.
        for call in &call_ids {
            let by_call = |table: &str| format!("DELETE FROM {table} WHERE tenant = $1 AND call_id = $2");
            r.field_writes += delete(&mut tx, &by_call("field_writes"), tenant, call).await?;
            r.conflicts += delete(&mut tx, &by_call("field_conflicts"), tenant, call).await?;
            delete(&mut tx, &by_call("created_objects"), tenant, call).await?;
            r.held_plans += delete(&mut tx, &by_call("held_plans"), tenant, call).await?;
            r.audit_rows += delete(&mut tx, &by_call("audit"), tenant, call).await?;
            r.steps += delete(&mut tx, &by_call("steps"), tenant, call).await?;
            r.bookings += delete(&mut tx, &by_call("bookings"), tenant, call).await?;
            r.pending_bookings += delete(&mut tx, &by_call("pending_bookings"), tenant, call).await?;
            r.calls += delete(&mut tx, &by_call("calls"), tenant, call).await?;
        }
        r.bookings +=
            delete(&mut tx, "DELETE FROM bookings WHERE tenant = $1 AND caller_phone = $2", tenant, e164).await?;
        r.pending_bookings += delete(
            &mut tx,
            &format!("DELETE FROM pending_bookings WHERE tenant = $1 AND {attendee_phone} = $2"),
            tenant,
            e164,
        )
        .await?;
        // Audit details exclude personal data by rule; this catches any row that names the number.
        r.audit_rows += delete(
            &mut tx,
            &format!("DELETE FROM audit WHERE tenant = $1 AND {}", self.backend.contains("detail", "$2")),
            tenant,
            e164,
        )
        .await?;
        r.identity_rows += delete(
            &mut tx,
            "DELETE FROM identity_index WHERE tenant = $1 AND kind = 'phone' AND value = $2",
            tenant,
            e164,
        )
        .await?;
        for record in &records {
            r.identity_rows +=
                delete(&mut tx, "DELETE FROM identity_index WHERE tenant = $1 AND record_id = $2", tenant, record)
                    .await?;
        }
        for email in &emails {
            r.identity_rows += delete(
                &mut tx,
                "DELETE FROM identity_index WHERE tenant = $1 AND kind = 'email' AND value = $2",
                tenant,
                &email.to_lowercase(),
            )
            .await?;
        }
        tx.commit().await?;
        if r.bookings > 0 {
            self.bookings_changed(tenant).await;
        }
        Ok(r)
    }

    /// Every (table, column) whose text contains `needle`, over every table of the store: how
    /// tests prove an erasure or a sweep left nothing behind (and what a privacy review can run).
    pub async fn tables_mentioning(&self, needle: &str) -> Result<Vec<(String, String)>, StoreError> {
        let (tables_sql, columns_sql) = match self.backend {
            Backend::Sqlite => (
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%'",
                "SELECT name FROM pragma_table_info($1)",
            ),
            Backend::Postgres => (
                "SELECT table_name::text FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' AND table_name NOT LIKE '_sqlx%'",
                "SELECT column_name::text FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = $1",
            ),
        };
        let tables: Vec<String> = sqlx::query_scalar(tables_sql).fetch_all(&self.pool).await?;
        let mut out = Vec::new();
        for table in tables {
            let columns: Vec<String> = sqlx::query_scalar(columns_sql).bind(&table).fetch_all(&self.pool).await?;
            for column in columns {
                let hits: i64 = sqlx::query_scalar(&format!(
                    "SELECT COUNT(*) FROM \"{table}\" WHERE {}",
                    self.backend.contains(&format!("CAST(\"{column}\" AS TEXT)"), "$1")
                ))
                .bind(needle)
                .fetch_one(&self.pool)
                .await?;
                if hits > 0 {
                    out.push((table.clone(), column));
                }
            }
        }
        Ok(out)
    }
}
