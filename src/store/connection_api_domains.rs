//! The API domain a vendor assigned to a connection (see
//! `migrations/sqlite/0010_connection_api_domains.sql`). Not a secret: a host name.

use sqlx::Row;

use super::{Store, StoreError};

impl Store {
    pub async fn set_api_domain(&self, connection_id: &str, api_domain: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO connection_api_domains (connection_id, api_domain, updated_at) VALUES (?, ?, ?)
             ON CONFLICT (connection_id) DO UPDATE SET api_domain = excluded.api_domain, updated_at = excluded.updated_at",
        )
        .bind(connection_id)
        .bind(api_domain)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn api_domain(&self, connection_id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT api_domain FROM connection_api_domains WHERE connection_id = ?")
            .bind(connection_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get("api_domain")))
    }
}
