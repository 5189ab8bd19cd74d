//! The API host of a connection, for vendors that name it in their token answers (Salesforce's
//! `instance_url`; see `migrations/sqlite/0011_connection_instances.sql`).

use sqlx::Row;

use super::{Store, StoreError};

impl Store {
    pub async fn save_instance_url(&self, connection_id: &str, instance_url: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO connection_instances (connection_id, instance_url, updated_at) VALUES (?, ?, ?)
             ON CONFLICT (connection_id) DO UPDATE SET instance_url = excluded.instance_url,
                 updated_at = excluded.updated_at",
        )
        .bind(connection_id)
        .bind(instance_url)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn instance_url(&self, connection_id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT instance_url FROM connection_instances WHERE connection_id = ?")
            .bind(connection_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get("instance_url")))
    }
}
