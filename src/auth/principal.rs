//! `Principal`: who a request acts as — the (re-read) user plus the rights of the token it presented.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::action::{Action, ActionSet};
use super::jwt::{id_claim, TokenPayload};
use crate::error::{ApiError, Result};
use crate::model::User;

/// A set of network or device-type ids, or all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSet {
    All,
    Only(BTreeSet<i64>),
}

impl IdSet {
    pub fn none() -> Self {
        IdSet::Only(BTreeSet::new())
    }
    pub fn is_all(&self) -> bool {
        matches!(self, IdSet::All)
    }
    /// Not "all" and empty.
    pub fn is_empty(&self) -> bool {
        matches!(self, IdSet::Only(s) if s.is_empty())
    }
    pub fn contains(&self, id: Option<i64>) -> bool {
        match self {
            IdSet::All => true,
            IdSet::Only(s) => id.is_some_and(|i| s.contains(&i)),
        }
    }
    /// Builds the set from a token claim: `"*"` = all, otherwise the numeric entries; missing = none.
    pub fn from_claim(claim: Option<&Vec<serde_json::Value>>) -> Self {
        match claim {
            None => IdSet::none(),
            Some(values) => {
                let strings = id_claim(values);
                if strings.iter().any(|s| s == "*") {
                    IdSet::All
                } else {
                    IdSet::Only(strings.iter().filter_map(|s| s.trim().parse().ok()).collect())
                }
            }
        }
    }
    pub fn intersect(&self, other: &IdSet) -> IdSet {
        match (self, other) {
            (IdSet::All, x) | (x, IdSet::All) => x.clone(),
            (IdSet::Only(a), IdSet::Only(b)) => IdSet::Only(a.intersection(b).copied().collect()),
        }
    }
    /// Ids for a claim: `["*"]` or the ids as strings.
    pub fn to_claim(&self) -> Vec<serde_json::Value> {
        match self {
            IdSet::All => vec!["*".into()],
            IdSet::Only(s) => s.iter().map(|i| i.to_string().into()).collect(),
        }
    }
    pub fn is_subset_of(&self, other: &IdSet) -> bool {
        match (self, other) {
            (_, IdSet::All) => true,
            (IdSet::All, IdSet::Only(_)) => false,
            (IdSet::Only(a), IdSet::Only(b)) => a.is_subset(b),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Principal {
    pub user: Option<Arc<User>>,
    pub actions: ActionSet,
    pub networks: IdSet,
    pub device_types: IdSet,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal { user: None, actions: ActionSet::empty(), networks: IdSet::none(), device_types: IdSet::none() }
    }

    /// The rights of a token (§5.2) for its (freshly loaded, active) user.
    pub fn from_token(payload: &TokenPayload, user: User) -> Result<Principal> {
        let ids = payload.action_ids().ok_or_else(ApiError::unauthorized)?;
        let mut actions = ActionSet::from_claim(&ids).ok_or_else(ApiError::unauthorized)?;
        // `*` means everything the user's role allows: an administrator demoted to client keeps no
        // administrator rights through the tokens it already holds.
        if ids.contains(&0) && !user.is_admin() {
            actions = ActionSet::client();
        }
        let networks = IdSet::from_claim(payload.n.as_ref());
        let mut device_types = if user.all_device_types_available { IdSet::All } else { IdSet::none() };
        if let Some(dt) = payload.dt.as_ref() {
            let claim = IdSet::from_claim(Some(dt));
            device_types = if claim.is_all() || user.all_device_types_available { IdSet::All } else { claim };
        }
        Ok(Principal { user: Some(Arc::new(user)), actions, networks, device_types })
    }

    /// The same token rights for a freshly read `user`: a user who is no longer an administrator loses
    /// what only the administrator role gave (`*` actions mean the client set for a client).
    pub fn with_user(&self, user: User) -> Principal {
        let mut p = self.clone();
        if !user.is_admin() && p.actions.is_admin_set() {
            p.actions = ActionSet::client();
        }
        p.user = Some(Arc::new(user));
        p
    }

    pub fn is_authenticated(&self) -> bool {
        self.user.is_some()
    }

    pub fn is_admin(&self) -> bool {
        self.user.as_ref().is_some_and(|u| u.is_admin())
    }

    pub fn user_id(&self) -> Option<i64> {
        self.user.as_ref().map(|u| u.id)
    }

    /// The action part of the permission check (§5.3): anonymous → 401, action missing → 403.
    pub fn require(&self, action: Action) -> Result<&User> {
        let user = self.user.as_deref().ok_or_else(ApiError::unauthorized)?;
        if !self.actions.contains(action) {
            return Err(ApiError::access_denied());
        }
        Ok(user)
    }

    /// Action check plus a network target (§5.3 rule 2).
    pub fn require_network(&self, action: Action, network_id: i64) -> Result<&User> {
        let user = self.require(action)?;
        if !self.networks.contains(Some(network_id)) {
            return Err(ApiError::access_denied());
        }
        Ok(user)
    }

    /// Action check plus a device-type target (§5.3 rule 3).
    pub fn require_device_type(&self, action: Action, device_type_id: i64) -> Result<&User> {
        let user = self.require(action)?;
        if !self.device_types.contains(Some(device_type_id)) {
            return Err(ApiError::access_denied());
        }
        Ok(user)
    }

    /// Whether the principal sees every device: an administrator with both token scopes unrestricted
    /// (then unknown devices are 404, not 403). A client-role user is always limited by its live
    /// network assignments, so it learns nothing about devices outside them.
    pub fn is_unrestricted(&self) -> bool {
        self.is_admin() && self.networks.is_all() && self.device_types.is_all()
    }
}
