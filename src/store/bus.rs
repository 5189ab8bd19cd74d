//! The invalidation bus's wire (issue 13): what one instance tells the others when something it
//! processed makes their in-memory state stale (a CRM change from a webhook, a caller's record
//! about to be written back, a staff member's calendar, the bookings table).
//!
//! On PostgreSQL a message is `pg_notify('callside_invalidate', '<json>')` with the JSON bound as a
//! parameter, sent through the store's pool; every instance holds a `LISTEN` on a dedicated
//! connection ([`BusListener`], sqlx's `PgListener`: the `Any` pool cannot listen) and applies
//! what others sent (`crate::invalidation`). On SQLite there is one process: publishing is a
//! no-op. Notifications are not durable — PostgreSQL delivers them only to sessions listening at
//! commit time — so a listener that lost its connection cannot know what it missed and drops all
//! its caches once it is back.
//! <https://www.postgresql.org/docs/current/sql-notify.html>

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;

use super::{Backend, Store, StoreError};

/// The channel every instance listens on.
pub const CHANNEL: &str = "callside_invalidate";

/// PostgreSQL refuses a payload of 8000 bytes or more (in the default configuration); ours are a
/// few ids long, and a longer one is refused here rather than by the server.
pub const MAX_PAYLOAD: usize = 7_999;

/// The tenant named by a message that concerns every tenant (a retention sweep).
pub const ALL_TENANTS: &str = "*";

/// One invalidation: who sent it, for which tenant, and what went stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidation {
    /// The schema the sender's store works in. A channel is database-wide; deployments (and
    /// test runs) in other schemas of the same database share it, so a listener applies only
    /// its own schema's messages.
    pub scope: String,
    /// The sending store's instance id ([`Store::instance_id`]): a listener skips its own.
    pub from: String,
    pub tenant: String,
    #[serde(flatten)]
    pub what: What,
}

/// What went stale. Ids only, never a record's content: the receiver re-reads what it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum What {
    /// A CRM contact changed: contexts showing it, and live calls showing it re-read.
    Contact { id: String },
    /// A CRM deal changed: contexts listing it among the caller's open deals.
    Deal { id: String },
    /// A change that can alter who a number matches (creation, phone edit, merge, deletion).
    Matching { id: String },
    /// A record the identity pull saw changed (its numbers in E.164): contexts showing it and
    /// live calls from one of its numbers re-read. The pull's watermark is shared, so only the
    /// instance that pulled sees the change.
    Pulled { id: String, numbers: Vec<String> },
    /// A caller's cached context (E.164): their record is about to be written back.
    Caller { e164: String },
    /// A staff member's cached busy time.
    StaffBusy { staff_id: String },
    /// The bookings table changed: cached upcoming bookings are stale.
    Bookings,
    /// A Google push notification that reached an instance not holding its channel (the channel
    /// registry is the calendar-sync leader's, in memory): whichever instance holds the channel
    /// checks and applies it as if it had been sent there (`inbound::google::receive`). Carries
    /// the channel token, which never leaves this deployment's database connection.
    GooglePush {
        channel_id: String,
        token: Option<String>,
        resource_id: Option<String>,
        state: Option<String>,
        message_number: Option<String>,
    },
}

impl What {
    /// The kind as a stable label (metrics, logs: no ids, which can be personal data).
    pub fn kind(&self) -> &'static str {
        match self {
            What::Contact { .. } => "contact",
            What::Deal { .. } => "deal",
            What::Matching { .. } => "matching",
            What::Pulled { .. } => "pulled",
            What::Caller { .. } => "caller",
            What::StaffBusy { .. } => "staff_busy",
            What::Bookings => "bookings",
            What::GooglePush { .. } => "google_push",
        }
    }
}

impl Invalidation {
    /// The notification payload, or an error when it would pass PostgreSQL's limit.
    pub fn payload(&self) -> Result<String, StoreError> {
        let json = serde_json::to_string(self).map_err(|e| StoreError::Other(format!("invalidation: {e}")))?;
        if json.len() > MAX_PAYLOAD {
            return Err(StoreError::Other(format!(
                "invalidation payload of {} bytes is over the {MAX_PAYLOAD}-byte notification limit",
                json.len()
            )));
        }
        Ok(json)
    }

    /// Parses a received payload. The error never quotes the payload (it can hold a number).
    pub fn parse(payload: &str) -> Result<Invalidation, String> {
        serde_json::from_str(payload)
            .map_err(|e| format!("malformed invalidation ({:?} at column {})", e.classify(), e.column()))
    }
}

impl Store {
    /// The schema this store's tables live in (PostgreSQL); empty on SQLite.
    pub fn bus_scope(&self) -> &str {
        &self.scope
    }

    /// Tells the other instances on this database that `what` of `tenant` went stale. A no-op on
    /// SQLite. A failure is logged and otherwise ignored: the caches it concerns also expire on
    /// their own (contexts and upcoming bookings after five minutes, busy time after 30 s).
    pub async fn publish(&self, tenant: &str, what: What) {
        if self.backend != Backend::Postgres {
            return;
        }
        let kind = what.kind();
        if let Err(e) = self.try_publish(tenant, what).await {
            tracing::warn!(tenant, kind, error = %e, "could not publish a cache invalidation to the other instances");
        }
    }

    async fn try_publish(&self, tenant: &str, what: What) -> Result<(), StoreError> {
        let message = Invalidation {
            scope: self.scope.to_string(),
            from: self.instance.to_string(),
            tenant: tenant.to_owned(),
            what,
        };
        sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(message.payload()?).execute(&self.pool).await?;
        Ok(())
    }

    /// Another instance changed the bookings table: answers cached under the old generation are
    /// read again.
    pub fn bookings_changed_elsewhere(&self) {
        self.bump_bookings_generation();
    }

    /// Drops every cached upcoming-bookings answer (a listener back from a gap).
    pub fn forget_cached_bookings(&self) {
        self.bump_bookings_generation();
        self.upcoming.invalidate_all();
    }
}

/// A `LISTEN callside_invalidate` on a connection of its own.
pub struct BusListener {
    listener: PgListener,
    pid: i32,
}

impl BusListener {
    /// Connects to `url` (a `postgres://` store URL) and listens. When this returns, every
    /// notification committed from now on will be received.
    pub async fn connect(url: &str) -> Result<BusListener, StoreError> {
        let mut listener = PgListener::connect(url).await?;
        listener.listen(CHANNEL).await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut listener).await?;
        Ok(BusListener { listener, pid })
    }

    /// The server process of the listening connection (tests end it to cut the connection).
    pub fn backend_pid(&self) -> i32 {
        self.pid
    }

    /// The next payload on the channel; `Ok(None)` when the connection was lost (what was sent
    /// meanwhile is gone: connect a new listener and treat every cache as stale).
    pub async fn next(&mut self) -> Result<Option<String>, StoreError> {
        Ok(self.listener.try_recv().await?.map(|n| n.payload().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::TestSchema;

    /// A published message reaches a listener on the same database as the JSON of the
    /// message, naming the sender's instance and schema.
    #[tokio::test]
    async fn a_published_invalidation_reaches_a_listener_with_its_sender_and_scope() {
        let schema = TestSchema::create().await.unwrap();
        let store = Store::open(&schema.url).await.unwrap();
        let mut listener = BusListener::connect(&schema.url).await.unwrap();
        assert!(listener.backend_pid() > 0);
        store.publish("demo", What::StaffBusy { staff_id: "alex".into() }).await;
        let payload = listener.next().await.unwrap().expect("a notification");
        let got = Invalidation::parse(&payload).unwrap();
        assert_eq!(got.from, store.instance_id());
        assert_eq!(got.scope, schema.schema(), "scoped to the store's schema");
        assert_eq!((got.tenant.as_str(), got.what), ("demo", What::StaffBusy { staff_id: "alex".into() }));
        // A bookings write is published too.
        let other = Store::open(&schema.url).await.unwrap();
        assert_ne!(other.instance_id(), store.instance_id(), "each open is an instance");
        other.set_booking_status("demo", "no-such-key", "cancelled", jiff::Timestamp::UNIX_EPOCH).await.unwrap();
        let got = Invalidation::parse(&listener.next().await.unwrap().expect("a notification")).unwrap();
        assert_eq!((got.from.as_str(), got.what), (other.instance_id(), What::Bookings));
        store.close().await;
        other.close().await;
        schema.drop_now().await.unwrap();
    }
}
