//! OAuth connections and in-flight authorization requests (see `migrations/sqlite/0003_connections.sql`).
//! Only ciphertexts pass through here; [`crate::connections`] encrypts and decrypts.

use sqlx::Row;

use super::{Backend, Store, StoreError};

/// Held while one instance refreshes a connection's tokens (PostgreSQL: a transaction holding
/// `pg_advisory_xact_lock` on the connection; SQLite: nothing, one process owns the file and
/// `crate::connections` serializes it). Released by [`ConnectionLock::release`], or by the
/// transaction's rollback when dropped.
pub struct ConnectionLock {
    tx: Option<sqlx::Transaction<'static, sqlx::Any>>,
}

impl ConnectionLock {
    /// Ends the transaction, which releases the lock.
    pub async fn release(mut self) {
        if let Some(tx) = self.tx.take()
            && let Err(e) = tx.commit().await
        {
            // The lock goes with the session's transaction either way.
            tracing::warn!(error = %e, "releasing a connection's refresh lock");
        }
    }
}

/// A stored connection; the token columns are ciphertexts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRow {
    pub id: String,
    pub tenant: String,
    pub vendor: String,
    pub status: String,
    pub key_id: String,
    pub access_token_ct: String,
    pub refresh_token_ct: String,
    pub expires_at: i64,
    pub scopes: String,
    pub updated_at: i64,
    /// The API base URL the vendor assigned (`migrations/sqlite/0013_connection_api_base_url.sql`).
    /// On upsert, `None` keeps the stored value: a token answer that names none changes nothing.
    pub api_base_url: Option<String>,
}

/// An authorization request waiting for its callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthStateRow {
    pub state: String,
    pub tenant: String,
    pub vendor: String,
    pub key_id: String,
    pub verifier_ct: String,
    pub created_at: i64,
}

impl Store {
    pub async fn save_oauth_state(&self, row: &OAuthStateRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oauth_states (state, tenant, vendor, key_id, verifier_ct, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&row.state)
        .bind(&row.tenant)
        .bind(&row.vendor)
        .bind(&row.key_id)
        .bind(&row.verifier_ct)
        .bind(row.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes and returns the request: a `state` is good for one callback only.
    pub async fn take_oauth_state(&self, state: &str) -> Result<Option<OAuthStateRow>, StoreError> {
        let row = sqlx::query(
            "DELETE FROM oauth_states WHERE state = $1 RETURNING state, tenant, vendor, key_id, verifier_ct, created_at",
        )
        .bind(state)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| OAuthStateRow {
            state: r.get("state"),
            tenant: r.get("tenant"),
            vendor: r.get("vendor"),
            key_id: r.get("key_id"),
            verifier_ct: r.get("verifier_ct"),
            created_at: r.get("created_at"),
        }))
    }

    /// Inserts or replaces the connection of (tenant, vendor) — a re-authorization replaces the
    /// tokens of a revoked connection and makes it active again.
    pub async fn upsert_connection(&self, row: &ConnectionRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO connections (id, tenant, vendor, status, key_id, access_token_ct, refresh_token_ct, expires_at,
                                      scopes, updated_at, api_base_url)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, key_id = excluded.key_id,
                 access_token_ct = excluded.access_token_ct, refresh_token_ct = excluded.refresh_token_ct,
                 expires_at = excluded.expires_at, scopes = excluded.scopes, updated_at = excluded.updated_at,
                 api_base_url = COALESCE(excluded.api_base_url, connections.api_base_url)",
        )
        .bind(&row.id)
        .bind(&row.tenant)
        .bind(&row.vendor)
        .bind(&row.status)
        .bind(&row.key_id)
        .bind(&row.access_token_ct)
        .bind(&row.refresh_token_ct)
        .bind(row.expires_at)
        .bind(&row.scopes)
        .bind(row.updated_at)
        .bind(&row.api_base_url)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn connection(&self, id: &str) -> Result<Option<ConnectionRow>, StoreError> {
        let row = sqlx::query(
            "SELECT id, tenant, vendor, status, key_id, access_token_ct, refresh_token_ct, expires_at, scopes, updated_at,
                    api_base_url
             FROM connections WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| ConnectionRow {
            id: r.get("id"),
            tenant: r.get("tenant"),
            vendor: r.get("vendor"),
            status: r.get("status"),
            key_id: r.get("key_id"),
            access_token_ct: r.get("access_token_ct"),
            refresh_token_ct: r.get("refresh_token_ct"),
            expires_at: r.get("expires_at"),
            scopes: r.get("scopes"),
            updated_at: r.get("updated_at"),
            api_base_url: r.get("api_base_url"),
        }))
    }

    /// Connections whose ciphertexts are not under `key_id` (for `callside reencrypt`).
    pub async fn connections_not_under(&self, key_id: &str) -> Result<Vec<ConnectionRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant, vendor, status, key_id, access_token_ct, refresh_token_ct, expires_at, scopes, updated_at,
                    api_base_url
             FROM connections WHERE key_id <> $1 ORDER BY id",
        )
        .bind(key_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ConnectionRow {
                id: r.get("id"),
                tenant: r.get("tenant"),
                vendor: r.get("vendor"),
                status: r.get("status"),
                key_id: r.get("key_id"),
                access_token_ct: r.get("access_token_ct"),
                refresh_token_ct: r.get("refresh_token_ct"),
                expires_at: r.get("expires_at"),
                scopes: r.get("scopes"),
                updated_at: r.get("updated_at"),
                api_base_url: r.get("api_base_url"),
            })
            .collect())
    }

    /// Replaces a connection's ciphertexts if the row still holds what `was` read; false if it
    /// changed meanwhile (a refresh wrote it under the current key).
    pub async fn reseal_connection(
        &self,
        was: &ConnectionRow,
        key_id: &str,
        access_token_ct: &str,
        refresh_token_ct: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE connections SET key_id = $1, access_token_ct = $2, refresh_token_ct = $3
             WHERE id = $4 AND key_id = $5 AND access_token_ct = $6 AND refresh_token_ct = $7",
        )
        .bind(key_id)
        .bind(access_token_ct)
        .bind(refresh_token_ct)
        .bind(&was.id)
        .bind(&was.key_id)
        .bind(&was.access_token_ct)
        .bind(&was.refresh_token_ct)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn oauth_states_not_under(&self, key_id: &str) -> Result<Vec<OAuthStateRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT state, tenant, vendor, key_id, verifier_ct, created_at FROM oauth_states WHERE key_id <> $1",
        )
        .bind(key_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| OAuthStateRow {
                state: r.get("state"),
                tenant: r.get("tenant"),
                vendor: r.get("vendor"),
                key_id: r.get("key_id"),
                verifier_ct: r.get("verifier_ct"),
                created_at: r.get("created_at"),
            })
            .collect())
    }

    pub async fn reseal_oauth_state(
        &self,
        was: &OAuthStateRow,
        key_id: &str,
        verifier_ct: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE oauth_states SET key_id = $1, verifier_ct = $2 WHERE state = $3 AND key_id = $4 AND verifier_ct = $5",
        )
        .bind(key_id)
        .bind(verifier_ct)
        .bind(&was.state)
        .bind(&was.key_id)
        .bind(&was.verifier_ct)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every column of every connection row as stored, as text: what someone holding the
    /// database file but not the key sees (tests assert no token is among them).
    pub async fn raw_connection_columns(&self) -> Result<Vec<Vec<String>>, StoreError> {
        let rows = sqlx::query("SELECT * FROM connections").fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| {
                        r.try_get::<String, _>(i)
                            .or_else(|_| r.try_get::<i64, _>(i).map(|n| n.to_string()))
                            .or_else(|_| r.try_get::<Vec<u8>, _>(i).map(|b| String::from_utf8_lossy(&b).into_owned()))
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .collect())
    }

    /// Waits for the cross-instance lock on connection `id` (PostgreSQL; immediate on SQLite).
    /// Whoever holds it may refresh the connection's tokens: re-read the row, call the vendor,
    /// store the answer, then release — so instances on one database refresh a rotating refresh
    /// token once, never with a retired one.
    pub async fn lock_connection(&self, id: &str) -> Result<ConnectionLock, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(ConnectionLock { tx: None });
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("connection:{id}"))
            .execute(&mut *tx)
            .await?;
        Ok(ConnectionLock { tx: Some(tx) })
    }

    pub async fn set_connection_status(&self, id: &str, status: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE connections SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(status)
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API base URL rides with the tokens: a token answer that names one replaces it, one
    /// that names none (HubSpot's, or a vendor that only names it at the code exchange) keeps it.
    async fn an_upsert_without_an_api_base_url_keeps_the_stored_one(s: &Store) {
        let row = ConnectionRow {
            id: "demo:salesforce".into(),
            tenant: "demo".into(),
            vendor: "salesforce".into(),
            status: "active".into(),
            key_id: "k".into(),
            access_token_ct: "a1".into(),
            refresh_token_ct: "r".into(),
            expires_at: 0,
            scopes: "api".into(),
            updated_at: 1,
            api_base_url: Some("https://acme.my.salesforce.com/".into()),
        };
        s.upsert_connection(&row).await.unwrap();
        let refreshed =
            ConnectionRow { access_token_ct: "a2".into(), updated_at: 2, api_base_url: None, ..row.clone() };
        s.upsert_connection(&refreshed).await.unwrap();
        let stored = s.connection(&row.id).await.unwrap().unwrap();
        assert_eq!(stored.access_token_ct, "a2");
        assert_eq!(stored.api_base_url.as_deref(), Some("https://acme.my.salesforce.com/"));
        let moved = ConnectionRow { api_base_url: Some("https://acme2.my.salesforce.com/".into()), ..refreshed };
        s.upsert_connection(&moved).await.unwrap();
        let stored = s.connection(&row.id).await.unwrap().unwrap();
        assert_eq!(stored.api_base_url.as_deref(), Some("https://acme2.my.salesforce.com/"));
        s.close().await;
    }

    /// The refresh lock is the database's: while one store holds a connection's lock another
    /// session cannot take it, and release frees it. Other connections' locks are separate.
    #[tokio::test]
    async fn a_connection_lock_is_held_across_sessions_until_released() {
        use sqlx::Connection;
        let schema = crate::store::testing::TestSchema::create().await.unwrap();
        let store = Store::open(&schema.url).await.unwrap();
        let mut probe = sqlx::PgConnection::connect(&schema.url).await.unwrap();
        let free = |id: &'static str| {
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(format!("connection:{id}"))
        };
        let lock = store.lock_connection("demo:hubspot").await.unwrap();
        assert!(!free("demo:hubspot").fetch_one(&mut probe).await.unwrap(), "held");
        assert!(free("demo:salesforce").fetch_one(&mut probe).await.unwrap(), "another connection is not held");
        lock.release().await;
        assert!(free("demo:hubspot").fetch_one(&mut probe).await.unwrap(), "released");
        probe.close().await.unwrap();
        store.close().await;
        schema.drop_now().await.unwrap();
    }

    /// On SQLite one process owns the file: the lock is immediate (two at once do not wait).
    #[tokio::test]
    async fn on_sqlite_the_refresh_lock_is_immediate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
        let a = store.lock_connection("demo:hubspot").await.unwrap();
        let b = tokio::time::timeout(std::time::Duration::from_secs(20), store.lock_connection("demo:hubspot"))
            .await
            .expect("not held across the process")
            .unwrap();
        a.release().await;
        b.release().await;
        store.close().await;
    }

    both_backends!(an_upsert_without_an_api_base_url_keeps_the_stored_one);
}
