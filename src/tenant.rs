//! A tenant at run time: its validated config plus the live connectors built from it. The tenant
//! is resolved once at the edge (from the dialed number) and carried as `Arc<Tenant>`; every
//! store query, cache key and hold is scoped by its id.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::TenantConfig;
use crate::connectors::calendar::CalendarConnector;
use crate::connectors::crm::CrmConnector;
use crate::connectors::pos::PosConnector;

pub struct Tenant {
    pub config: TenantConfig,
    pub crm: Arc<dyn CrmConnector>,
    pub calendar: Arc<dyn CalendarConnector>,
    /// The point of sale, when the tenant has one (`[pos]`).
    pub pos: Option<Arc<dyn PosConnector>>,
}

impl Tenant {
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// Constant-time check of a presented API key against the tenant's stored digests.
    pub fn accepts_key(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        let digest = crate::config::api_key_digest(presented);
        // Check every stored digest (no early exit) so timing does not reveal which matched.
        self.config.api_key_digests.iter().fold(subtle::Choice::from(0), |acc, d| acc | d.ct_eq(&digest)).into()
    }

    /// Constant-time check of the secret Vapi presents (`X-Vapi-Secret`) against the stored digest.
    pub fn accepts_vapi_secret(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        let digest = crate::config::api_key_digest(presented);
        self.config.vapi_secret_digest.is_some_and(|d| bool::from(d.ct_eq(&digest)))
    }
}

/// All tenants, indexed by id and by dialed number (E.164). Swapped as a whole by a config
/// reload (`crate::reload`): lookups return owned `Arc<Tenant>`s, so a call keeps the tenant it
/// was opened with while new calls see the new configuration.
#[derive(Default)]
pub struct Tenants {
    current: std::sync::RwLock<Arc<Index>>,
}

#[derive(Default)]
struct Index {
    by_id: HashMap<String, Arc<Tenant>>,
    by_number: HashMap<String, Arc<Tenant>>,
}

impl Index {
    fn new(tenants: Vec<Tenant>) -> Index {
        let mut t = Index::default();
        for tenant in tenants {
            let tenant = Arc::new(tenant);
            for n in &tenant.config.numbers {
                t.by_number.insert(n.clone(), tenant.clone());
            }
            t.by_id.insert(tenant.config.id.clone(), tenant);
        }
        t
    }
}

impl Tenants {
    pub fn new(tenants: Vec<Tenant>) -> Self {
        Tenants { current: std::sync::RwLock::new(Arc::new(Index::new(tenants))) }
    }

    fn index(&self) -> Arc<Index> {
        self.current.read().expect("tenants lock").clone()
    }

    /// Replaces every tenant at once (a validated config reload).
    pub fn replace(&self, tenants: Vec<Tenant>) {
        let index = Arc::new(Index::new(tenants));
        *self.current.write().expect("tenants lock") = index;
    }

    pub fn by_id(&self, id: &str) -> Option<Arc<Tenant>> {
        self.index().by_id.get(id).cloned()
    }

    pub fn by_dialed_number(&self, e164: &str) -> Option<Arc<Tenant>> {
        self.index().by_number.get(e164).cloned()
    }

    /// The tenant whose API key this is (transports without a dialed number at connect time,
    /// e.g. MCP over HTTP). Every tenant's digests are checked, each in constant time.
    pub fn by_api_key(&self, presented: &str) -> Option<Arc<Tenant>> {
        let mut found = None;
        for t in self.index().by_id.values() {
            if t.accepts_key(presented) && found.is_none() {
                found = Some(t.clone());
            }
        }
        found
    }

    /// The tenant whose Vapi server-URL secret this is.
    pub fn by_vapi_secret(&self, presented: &str) -> Option<Arc<Tenant>> {
        let mut found = None;
        for t in self.index().by_id.values() {
            if t.accepts_vapi_secret(presented) && found.is_none() {
                found = Some(t.clone());
            }
        }
        found
    }

    /// Every tenant now (a snapshot).
    pub fn all(&self) -> Vec<Arc<Tenant>> {
        self.index().by_id.values().cloned().collect()
    }
}
