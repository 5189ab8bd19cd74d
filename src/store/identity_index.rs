//! The identity index (see `migrations/sqlite/0005_identity_index.sql`): phone and email → CRM
//! record ids per tenant, and each tenant's pull watermark.

use sqlx::Row;

use super::{Store, StoreError};

/// Which identifier an index row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// E.164.
    Phone,
    /// Normalized (trimmed, lower case).
    Email,
}

impl IdentityKind {
    fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Phone => "phone",
            IdentityKind::Email => "email",
        }
    }
}

/// Who told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexSource {
    /// The CRM itself (incremental pull): the full current state of the record.
    Crm,
    /// Our own write-back: what we just wrote or matched.
    Writeback,
}

impl IndexSource {
    fn as_str(self) -> &'static str {
        match self {
            IndexSource::Crm => "crm",
            IndexSource::Writeback => "writeback",
        }
    }
}

/// One identity entry, inserted or refreshed (its source and time) if it is already there.
const INDEX_UPSERT: &str = "INSERT INTO identity_index (tenant, kind, value, record_id, source, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (tenant, kind, value, record_id) DO UPDATE SET source = excluded.source, updated_at = excluded.updated_at";

impl Store {
    /// Replaces everything the index holds for one record with its current identifiers, as the
    /// CRM reports them (a number removed in the CRM leaves the index too).
    pub async fn index_record(
        &self,
        tenant: &str,
        record_id: &str,
        phones: &[String],
        email: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM identity_index WHERE tenant = $1 AND record_id = $2")
            .bind(tenant)
            .bind(record_id)
            .execute(&mut *tx)
            .await?;
        let entries =
            phones.iter().map(|p| (IdentityKind::Phone, p.as_str())).chain(email.map(|e| (IdentityKind::Email, e)));
        for (kind, value) in entries {
            sqlx::query(INDEX_UPSERT)
                .bind(tenant)
                .bind(kind.as_str())
                .bind(value)
                .bind(record_id)
                .bind(IndexSource::Crm.as_str())
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Adds one identifier of a record (our own write or match); keeps the others.
    pub async fn index_identity(
        &self,
        tenant: &str,
        kind: IdentityKind,
        value: &str,
        record_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(INDEX_UPSERT)
            .bind(tenant)
            .bind(kind.as_str())
            .bind(value)
            .bind(record_id)
            .bind(IndexSource::Writeback.as_str())
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Drops one identifier → record pair the CRM no longer confirms.
    pub async fn unindex_identity(
        &self,
        tenant: &str,
        kind: IdentityKind,
        value: &str,
        record_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM identity_index WHERE tenant = $1 AND kind = $2 AND value = $3 AND record_id = $4")
            .bind(tenant)
            .bind(kind.as_str())
            .bind(value)
            .bind(record_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets a record the CRM deleted: every identifier it held, whoever indexed it. Returns
    /// the phones (E.164) it held, sorted: live calls from them may have matched it.
    pub async fn unindex_record(&self, tenant: &str, record_id: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("DELETE FROM identity_index WHERE tenant = $1 AND record_id = $2 RETURNING kind, value")
            .bind(tenant)
            .bind(record_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(phones_of(&rows))
    }

    /// A record merged into another (or a Lead converted into a Contact): its identifiers now
    /// point at the survivor (kept as they were when the survivor already holds them). Returns
    /// the phones moved, sorted.
    pub async fn repoint_record(
        &self,
        tenant: &str,
        from: &str,
        to: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO identity_index (tenant, kind, value, record_id, source, updated_at) \
             SELECT tenant, kind, value, $3, source, $4 FROM identity_index WHERE tenant = $1 AND record_id = $2 \
             ON CONFLICT (tenant, kind, value, record_id) DO NOTHING",
        )
        .bind(tenant)
        .bind(from)
        .bind(to)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query("DELETE FROM identity_index WHERE tenant = $1 AND record_id = $2 RETURNING kind, value")
            .bind(tenant)
            .bind(from)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(phones_of(&rows))
    }

    /// After a full pull that listed every record the CRM has: drops the CRM-sourced entries it
    /// did not refresh (`updated_at` before the pull's `since_ms`) — records deleted while the
    /// vendor's delete log could not say. Returns (record id, phones), by record id.
    pub async fn prune_unrefreshed(
        &self,
        tenant: &str,
        since_ms: i64,
    ) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let rows = sqlx::query(
            "DELETE FROM identity_index WHERE tenant = $1 AND source = $2 AND updated_at < $3 \
             RETURNING record_id, kind, value",
        )
        .bind(tenant)
        .bind(IndexSource::Crm.as_str())
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut by_record: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
        for row in &rows {
            let entry = by_record.entry(row.get::<String, _>(0)).or_default();
            if row.get::<String, _>(1) == IdentityKind::Phone.as_str() {
                entry.push(row.get::<String, _>(2));
            }
        }
        Ok(by_record
            .into_iter()
            .map(|(id, mut phones)| {
                phones.sort();
                (id, phones)
            })
            .collect())
    }

    /// The record ids holding this identifier, sorted.
    pub async fn lookup_identity(
        &self,
        tenant: &str,
        kind: IdentityKind,
        value: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT record_id FROM identity_index WHERE tenant = $1 AND kind = $2 AND value = $3 ORDER BY record_id",
        )
        .bind(tenant)
        .bind(kind.as_str())
        .bind(value)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    /// How many identifiers the index holds for a tenant.
    pub async fn identity_index_size(&self, tenant: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM identity_index WHERE tenant = $1")
            .bind(tenant)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get(0))
    }

    /// The pull watermark (ms since the epoch of the newest modification seen), if any pull ran.
    pub async fn identity_watermark(&self, tenant: &str, vendor: &str) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT watermark FROM identity_sync WHERE tenant = $1 AND vendor = $2")
            .bind(tenant)
            .bind(vendor)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|r| r.get::<Option<i64>, _>(0)))
    }

    pub async fn set_identity_watermark(
        &self,
        tenant: &str,
        vendor: &str,
        watermark: Option<i64>,
        records: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO identity_sync (tenant, vendor, watermark, last_run_at, records) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant, vendor) DO UPDATE SET watermark = COALESCE(excluded.watermark, identity_sync.watermark), \
             last_run_at = excluded.last_run_at, records = identity_sync.records + excluded.records",
        )
        .bind(tenant)
        .bind(vendor)
        .bind(watermark)
        .bind(now_ms)
        .bind(records)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// The phone values among `(kind, value)` rows, sorted.
fn phones_of(rows: &[sqlx::any::AnyRow]) -> Vec<String> {
    let mut phones: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<String, _>(0) == IdentityKind::Phone.as_str())
        .map(|r| r.get::<String, _>(1))
        .collect();
    phones.sort();
    phones
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn records_are_indexed_replaced_and_looked_up_per_tenant(store: &Store) {
        let phones = vec!["+14155551234".to_string(), "+14155555678".to_string()];
        store.index_record("t1", "101", &phones, Some("ana@example.com"), 1).await.unwrap();
        store.index_record("t1", "102", &["+14155551234".into()], None, 1).await.unwrap();
        store.index_record("t2", "900", &["+14155551234".into()], None, 1).await.unwrap();
        assert_eq!(store.lookup_identity("t1", IdentityKind::Phone, "+14155551234").await.unwrap(), vec!["101", "102"]);
        assert_eq!(store.lookup_identity("t1", IdentityKind::Email, "ana@example.com").await.unwrap(), vec!["101"]);
        assert!(store.lookup_identity("t2", IdentityKind::Email, "ana@example.com").await.unwrap().is_empty());
        // The CRM now says 101 holds only the second number.
        store.index_record("t1", "101", &["+14155555678".into()], None, 2).await.unwrap();
        assert_eq!(store.lookup_identity("t1", IdentityKind::Phone, "+14155551234").await.unwrap(), vec!["102"]);
        assert!(store.lookup_identity("t1", IdentityKind::Email, "ana@example.com").await.unwrap().is_empty());
        // Our own write adds without dropping the rest.
        store.index_identity("t1", IdentityKind::Email, "ana@example.com", "101", 3).await.unwrap();
        assert_eq!(store.identity_index_size("t1").await.unwrap(), 3);
        store.unindex_identity("t1", IdentityKind::Phone, "+14155551234", "102").await.unwrap();
        assert_eq!(store.identity_index_size("t1").await.unwrap(), 2);
    }

    async fn the_watermark_only_moves_when_a_pull_saw_something(store: &Store) {
        assert_eq!(store.identity_watermark("t1", "hubspot").await.unwrap(), None);
        store.set_identity_watermark("t1", "hubspot", Some(1_000), 5, 10).await.unwrap();
        store.set_identity_watermark("t1", "hubspot", None, 0, 20).await.unwrap();
        assert_eq!(store.identity_watermark("t1", "hubspot").await.unwrap(), Some(1_000));
        store.set_identity_watermark("t1", "hubspot", Some(2_000), 1, 30).await.unwrap();
        assert_eq!(store.identity_watermark("t1", "hubspot").await.unwrap(), Some(2_000));
    }

    async fn deleted_records_leave_and_merged_ones_point_at_the_survivor(store: &Store) {
        let ana = "+14155550134".to_string();
        store.index_record("t1", "101", std::slice::from_ref(&ana), Some("ana@example.com"), 1).await.unwrap();
        store.index_record("t1", "102", &["+14155550199".into()], Some("ana@example.com"), 1).await.unwrap();
        store.index_record("t2", "101", std::slice::from_ref(&ana), None, 1).await.unwrap();
        // 101 deleted in t1: gone there, with the phones it held reported; t2 untouched.
        assert_eq!(store.unindex_record("t1", "101").await.unwrap(), vec![ana.clone()]);
        assert!(store.lookup_identity("t1", IdentityKind::Phone, &ana).await.unwrap().is_empty());
        assert_eq!(store.lookup_identity("t1", IdentityKind::Email, "ana@example.com").await.unwrap(), vec!["102"]);
        assert_eq!(store.lookup_identity("t2", IdentityKind::Phone, &ana).await.unwrap(), vec!["101"]);
        assert!(store.unindex_record("t1", "101").await.unwrap().is_empty(), "already gone");
        // 103 merged into 102: its phone moves, the email both held stays once.
        store.index_record("t1", "103", std::slice::from_ref(&ana), Some("ana@example.com"), 2).await.unwrap();
        assert_eq!(store.repoint_record("t1", "103", "102", 3).await.unwrap(), vec![ana.clone()]);
        assert_eq!(store.lookup_identity("t1", IdentityKind::Phone, &ana).await.unwrap(), vec!["102"]);
        assert_eq!(store.lookup_identity("t1", IdentityKind::Email, "ana@example.com").await.unwrap(), vec!["102"]);
        assert_eq!(store.identity_index_size("t1").await.unwrap(), 3);
    }

    async fn a_full_pull_prunes_only_crm_entries_it_did_not_refresh(store: &Store) {
        store.index_record("t1", "101", &["+14155550134".into()], None, 10).await.unwrap();
        store.index_record("t1", "102", &["+14155550199".into()], Some("b@example.com"), 10).await.unwrap();
        store.index_identity("t1", IdentityKind::Phone, "+14155550177", "104", 10).await.unwrap();
        store.index_record("t2", "900", &["+14155550134".into()], None, 10).await.unwrap();
        // The full pull at 20 lists 101 only.
        store.index_record("t1", "101", &["+14155550134".into()], None, 20).await.unwrap();
        let pruned = store.prune_unrefreshed("t1", 20).await.unwrap();
        assert_eq!(pruned, vec![("102".to_string(), vec!["+14155550199".to_string()])]);
        assert_eq!(store.lookup_identity("t1", IdentityKind::Phone, "+14155550134").await.unwrap(), vec!["101"]);
        // Our own write-back's entry and the other tenant stay.
        assert_eq!(store.lookup_identity("t1", IdentityKind::Phone, "+14155550177").await.unwrap(), vec!["104"]);
        assert_eq!(store.identity_index_size("t2").await.unwrap(), 1);
    }

    both_backends!(
        records_are_indexed_replaced_and_looked_up_per_tenant,
        the_watermark_only_moves_when_a_pull_saw_something,
        deleted_records_leave_and_merged_ones_point_at_the_survivor,
        a_full_pull_prunes_only_crm_entries_it_did_not_refresh
    );
}
