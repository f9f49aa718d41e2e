//! Tenant scope of operator calls (by-id, list and count APIs of every primitive).

use crate::name::OrgId;

/// Which tenants' data a call may see or change.
///
/// Every by-id, list, count and action API of the primitives (jobs, outbox, bus dead letters,
/// cache) takes one, so a handle scoped to one tenant can never read or touch another tenant's
/// rows, whatever ids it is given: an id of another tenant's row behaves as an unknown id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TenantScope {
    /// Every tenant, and rows that carry no tenant (an operator's view).
    All,
    /// One tenant's rows only (rows without a tenant are not theirs).
    Org(OrgId),
}

impl TenantScope {
    /// A scope limited to `org`.
    pub fn org(org: OrgId) -> Self {
        Self::Org(org)
    }

    /// The tenant this scope is limited to, if any.
    pub fn org_id(&self) -> Option<&OrgId> {
        match self {
            Self::All => None,
            Self::Org(org) => Some(org),
        }
    }

    /// True when a row of tenant `row_org` (`None`: no tenant) is visible in this scope.
    pub fn allows(&self, row_org: Option<&str>) -> bool {
        match self {
            Self::All => true,
            Self::Org(org) => row_org == Some(org.as_str()),
        }
    }
}

impl From<OrgId> for TenantScope {
    fn from(org: OrgId) -> Self {
        Self::Org(org)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_scope_sees_only_its_own_rows() {
        let acme = TenantScope::org(OrgId::new("acme").unwrap());
        assert!(acme.allows(Some("acme")));
        assert!(!acme.allows(Some("globex")));
        assert!(!acme.allows(None));
        assert!(TenantScope::All.allows(None));
        assert!(TenantScope::All.allows(Some("globex")));
    }
}
