//! The DeviceHive action table (CONTRACT.md §5.1) as a bit set.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Action {
    Any = 0,
    None = 1,
    GetNetwork = 2,
    GetDevice = 3,
    GetDeviceNotification = 4,
    GetDeviceCommand = 5,
    RegisterDevice = 6,
    CreateDeviceCommand = 7,
    UpdateDeviceCommand = 8,
    CreateDeviceNotification = 9,
    GetCurrentUser = 10,
    UpdateCurrentUser = 11,
    ManageUser = 12,
    ManageConfiguration = 13,
    ManageNetwork = 14,
    ManageToken = 15,
    ManagePlugin = 16,
    GetDeviceType = 17,
    ManageDeviceType = 18,
}

const NAMES: [(&str, u8); 19] = [
    ("*", 0),
    ("none", 1),
    ("GetNetwork", 2),
    ("GetDevice", 3),
    ("GetDeviceNotification", 4),
    ("GetDeviceCommand", 5),
    ("RegisterDevice", 6),
    ("CreateDeviceCommand", 7),
    ("UpdateDeviceCommand", 8),
    ("CreateDeviceNotification", 9),
    ("GetCurrentUser", 10),
    ("UpdateCurrentUser", 11),
    ("ManageUser", 12),
    ("ManageConfiguration", 13),
    ("ManageNetwork", 14),
    ("ManageToken", 15),
    ("ManagePlugin", 16),
    ("GetDeviceType", 17),
    ("ManageDeviceType", 18),
];

/// Action ids a client login token carries.
pub const CLIENT_ACTIONS: [u8; 13] = [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 15, 16, 17];
/// Highest valid action id.
pub const MAX_ACTION_ID: i64 = 18;

/// Looks an action name up case-insensitively (`"*"` is Any).
pub fn id_by_name(name: &str) -> Option<u8> {
    NAMES.iter().find(|(n, id)| *id != 1 && n.eq_ignore_ascii_case(name)).map(|(_, id)| *id)
}

/// Set of actions a principal may perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ActionSet(u32);

impl ActionSet {
    pub fn empty() -> Self {
        ActionSet(0)
    }
    pub fn client() -> Self {
        Self::from_ids(CLIENT_ACTIONS.iter().map(|&i| i as i64)).unwrap_or_default()
    }
    pub fn admin() -> Self {
        // Every real action: 2..=18.
        ActionSet(((1u32 << 19) - 1) & !0b11)
    }
    /// Builds the set a token's `a` claim grants (§5.2): contains 0 → all; empty → client set;
    /// otherwise exactly the ids listed. `None` when an id is out of range.
    pub fn from_claim(ids: &[i64]) -> Option<Self> {
        if ids.is_empty() {
            return Some(Self::client());
        }
        if ids.contains(&0) {
            if ids.iter().any(|&i| !(0..=MAX_ACTION_ID).contains(&i)) {
                return None;
            }
            return Some(Self::admin());
        }
        Self::from_ids(ids.iter().copied())
    }
    fn from_ids(ids: impl Iterator<Item = i64>) -> Option<Self> {
        let mut bits = 0u32;
        for id in ids {
            if !(0..=MAX_ACTION_ID).contains(&id) {
                return None;
            }
            if id >= 2 {
                bits |= 1 << id;
            }
        }
        Some(ActionSet(bits))
    }
    pub fn contains(&self, action: Action) -> bool {
        self.0 & (1 << action as u8) != 0
    }
    pub fn is_admin_set(&self) -> bool {
        *self == Self::admin()
    }
    /// Action ids in this set, for writing into a token claim.
    pub fn ids(&self) -> Vec<i64> {
        (2..=MAX_ACTION_ID).filter(|i| self.0 & (1 << i) != 0).collect()
    }
    pub fn is_subset_of(&self, other: &ActionSet) -> bool {
        self.0 & !other.0 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_edge_cases() {
        assert_eq!(ActionSet::from_claim(&[]), Some(ActionSet::client()));
        assert_eq!(ActionSet::from_claim(&[0]), Some(ActionSet::admin()));
        assert_eq!(ActionSet::from_claim(&[1]), Some(ActionSet::empty()));
        assert_eq!(ActionSet::from_claim(&[19]), None);
        assert!(ActionSet::admin().contains(Action::ManageDeviceType));
        assert!(!ActionSet::client().contains(Action::ManageUser));
        assert!(ActionSet::client().contains(Action::GetDeviceType));
        assert_eq!(id_by_name("getdevice"), Some(3));
        assert_eq!(id_by_name("*"), Some(0));
        assert_eq!(id_by_name("none"), None);
    }
}
