//! Test databases on the machine's PostgreSQL: each test gets its own schema (a unique name,
//! selected for every connection by the URL's `search_path` startup option) and drops it at the
//! end. Used by the store-contract tests and by the multi-instance tests in `tests/api`.
//!
//! The server comes from `CALLSIDE_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`,
//! which `.ci/run` starts and prepares). A missing server is an error, never a skip.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{Connection, Executor};

use super::StoreError;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// One schema on the test server, dropped by [`TestSchema::drop_now`] or, failing that, on drop.
#[derive(Debug)]
pub struct TestSchema {
    /// The URL a store opens: the server's, with `search_path` set to this schema.
    pub url: String,
    admin_url: String,
    schema: String,
    dropped: bool,
}

impl TestSchema {
    /// Creates a fresh schema. Fails with the server's address when PostgreSQL does not answer.
    pub async fn create() -> Result<TestSchema, StoreError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let admin_url = std::env::var("CALLSIDE_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let schema =
            format!("t_{}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), nanos % 1_000_000_000);
        let mut conn = sqlx::PgConnection::connect(&admin_url).await.map_err(|e| {
            StoreError::Other(format!(
                "PostgreSQL for the tests is not answering at {} ({e}); `.ci/run` starts it",
                super::redact_url(&admin_url)
            ))
        })?;
        // The holds' exclusion constraint needs btree_gist (`.ci/run` creates it). Made here in
        // `public` when missing: created by a migration under this schema's search_path, it would
        // live in this schema and `DROP SCHEMA … CASCADE` would take it from every other test.
        // Two tests racing to create it: one fails with a unique violation, and the other made it.
        let _ = conn.execute("CREATE EXTENSION IF NOT EXISTS btree_gist WITH SCHEMA public").await;
        conn.execute(format!("CREATE SCHEMA {schema}").as_str()).await?;
        conn.close().await?;
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{sep}options=-c%20search_path%3D{schema}");
        Ok(TestSchema { url, admin_url, schema, dropped: false })
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Drops the schema and everything in it.
    pub async fn drop_now(mut self) -> Result<(), StoreError> {
        self.dropped = true;
        drop_schema(&self.admin_url, &self.schema).await
    }
}

async fn drop_schema(admin_url: &str, schema: &str) -> Result<(), StoreError> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    conn.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str()).await?;
    conn.close().await?;
    Ok(())
}

impl Drop for TestSchema {
    /// A test that panicked before `drop_now` still leaves no schema behind: dropped from a
    /// thread of its own (a runtime cannot block inside another).
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (admin_url, schema) = (self.admin_url.clone(), self.schema.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = runtime {
                let _ = rt.block_on(drop_schema(&admin_url, &schema));
            }
        })
        .join();
    }
}
