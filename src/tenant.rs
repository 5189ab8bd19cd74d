//! A tenant at run time: its validated config plus the live connectors built from it. The tenant
//! is resolved once at the edge (from the dialed number) and carried as `Arc<Tenant>`; every
//! store query, cache key and hold is scoped by its id.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::TenantConfig;
use crate::connectors::calendar::CalendarConnector;
use crate::connectors::crm::CrmConnector;

pub struct Tenant {
    pub config: TenantConfig,
    pub crm: Arc<dyn CrmConnector>,
    pub calendar: Arc<dyn CalendarConnector>,
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
}

/// All tenants, indexed by id and by dialed number (E.164).
#[derive(Default)]
pub struct Tenants {
    by_id: HashMap<String, Arc<Tenant>>,
    by_number: HashMap<String, Arc<Tenant>>,
}

impl Tenants {
    pub fn new(tenants: Vec<Tenant>) -> Self {
        let mut t = Tenants::default();
        for tenant in tenants {
            let tenant = Arc::new(tenant);
            for n in &tenant.config.numbers {
                t.by_number.insert(n.clone(), tenant.clone());
            }
            t.by_id.insert(tenant.config.id.clone(), tenant);
        }
        t
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.by_id.get(id)
    }

    pub fn by_dialed_number(&self, e164: &str) -> Option<&Arc<Tenant>> {
        self.by_number.get(e164)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.by_id.values()
    }
}
