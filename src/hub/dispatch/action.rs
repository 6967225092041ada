//! The actions of the WebSocket API and MQTT `dh/request` (§12.3) as one enum: its name, whether an
//! anonymous session may call it, the token action it needs, and the object its top-level id field
//! names. The dispatcher checks these in that order before any handler looks at the request body, so
//! the order of errors is a property of the table, not of each handler.

use crate::auth::Action;
use crate::model::GroupKind;

/// The token permission an action needs before anything else is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Anyone, also anonymous sessions.
    Anonymous,
    One(Action),
    /// Either of two (`subscription/list`).
    Either(Action, Action),
}

/// The object an action's top-level id field names; it is resolved (scope → 403, existence → 404)
/// right after the permission and before the rest of the request is validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    None,
    /// `deviceId`: 403 for a device the principal cannot see, 404 (unrestricted principals) for a
    /// missing one.
    Device,
    /// `deviceId` of `notification/get|list`: existence first (404 for everybody, §12.3 note 2),
    /// then visibility.
    ExistingDevice,
    /// `networkId` / `deviceTypeId`.
    Group(GroupKind),
    /// `userId`.
    User,
}

macro_rules! actions {
    ($($variant:ident = $name:literal, $perm:expr, $target:expr;)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ApiAction { $($variant),* }

        impl ApiAction {
            /// Every action, in table order.
            pub const ALL: &'static [ApiAction] = &[$(ApiAction::$variant),*];

            pub fn parse(name: &str) -> Option<ApiAction> {
                match name { $($name => Some(ApiAction::$variant),)* _ => None }
            }
            pub fn name(self) -> &'static str {
                match self { $(ApiAction::$variant => $name),* }
            }
            pub fn permission(self) -> Permission {
                use Permission::*;
                match self { $(ApiAction::$variant => $perm),* }
            }
            pub fn target(self) -> Target {
                use Target::*;
                match self { $(ApiAction::$variant => $target),* }
            }
        }
    };
}

const NETWORK: GroupKind = GroupKind::Network;
const DEVICE_TYPE: GroupKind = GroupKind::DeviceType;

actions! {
    ServerInfo = "server/info", Anonymous, None;
    ServerCacheInfo = "server/cacheInfo", Anonymous, None;
    ClusterInfo = "cluster/info", Anonymous, None;
    Authenticate = "authenticate", Anonymous, None;
    Token = "token", Anonymous, None;
    TokenRefresh = "token/refresh", Anonymous, None;
    TokenCreate = "token/create", One(Action::ManageToken), None;

    ConfigurationGet = "configuration/get", One(Action::ManageConfiguration), None;
    ConfigurationPut = "configuration/put", One(Action::ManageConfiguration), None;
    ConfigurationDelete = "configuration/delete", One(Action::ManageConfiguration), None;

    NotificationInsert = "notification/insert", One(Action::CreateDeviceNotification), Device;
    NotificationGet = "notification/get", One(Action::GetDeviceNotification), ExistingDevice;
    NotificationList = "notification/list", One(Action::GetDeviceNotification), ExistingDevice;
    NotificationSubscribe = "notification/subscribe", One(Action::GetDeviceNotification), None;
    NotificationUnsubscribe = "notification/unsubscribe", One(Action::GetDeviceNotification), None;

    CommandInsert = "command/insert", One(Action::CreateDeviceCommand), Device;
    CommandUpdate = "command/update", One(Action::UpdateDeviceCommand), Device;
    CommandGet = "command/get", One(Action::GetDeviceCommand), Device;
    CommandList = "command/list", One(Action::GetDeviceCommand), Device;
    CommandSubscribe = "command/subscribe", One(Action::GetDeviceCommand), None;
    CommandUnsubscribe = "command/unsubscribe", One(Action::GetDeviceCommand), None;
    SubscriptionList = "subscription/list",
        Either(Action::GetDeviceNotification, Action::GetDeviceCommand), None;

    DeviceGet = "device/get", One(Action::GetDevice), Device;
    DeviceList = "device/list", One(Action::GetDevice), None;
    DeviceCount = "device/count", One(Action::GetDevice), None;
    DeviceSave = "device/save", One(Action::RegisterDevice), None;
    DeviceDelete = "device/delete", One(Action::RegisterDevice), Device;

    NetworkList = "network/list", One(Action::GetNetwork), None;
    NetworkCount = "network/count", One(Action::GetNetwork), None;
    NetworkGet = "network/get", One(Action::GetNetwork), Group(NETWORK);
    NetworkInsert = "network/insert", One(Action::ManageNetwork), None;
    NetworkUpdate = "network/update", One(Action::ManageNetwork), Group(NETWORK);
    NetworkDelete = "network/delete", One(Action::ManageNetwork), Group(NETWORK);

    DeviceTypeList = "devicetype/list", One(Action::GetDeviceType), None;
    DeviceTypeCount = "devicetype/count", One(Action::GetDeviceType), None;
    DeviceTypeGet = "devicetype/get", One(Action::GetDeviceType), Group(DEVICE_TYPE);
    DeviceTypeInsert = "devicetype/insert", One(Action::ManageDeviceType), None;
    DeviceTypeUpdate = "devicetype/update", One(Action::ManageDeviceType), Group(DEVICE_TYPE);
    DeviceTypeDelete = "devicetype/delete", One(Action::ManageDeviceType), Group(DEVICE_TYPE);

    UserList = "user/list", One(Action::ManageUser), None;
    UserCount = "user/count", One(Action::ManageUser), None;
    UserGet = "user/get", One(Action::ManageUser), User;
    UserInsert = "user/insert", One(Action::ManageUser), None;
    UserUpdate = "user/update", One(Action::ManageUser), User;
    UserGetCurrent = "user/getCurrent", One(Action::GetCurrentUser), None;
    UserUpdateCurrent = "user/updateCurrent", One(Action::UpdateCurrentUser), None;
    UserDelete = "user/delete", One(Action::ManageUser), User;
    UserGetNetwork = "user/getNetwork", One(Action::GetNetwork), User;
    UserAssignNetwork = "user/assignNetwork", One(Action::ManageNetwork), User;
    UserUnassignNetwork = "user/unassignNetwork", One(Action::ManageNetwork), User;
    UserGetDeviceType = "user/getDeviceType", One(Action::GetDeviceType), User;
    UserGetDeviceTypes = "user/getDeviceTypes", One(Action::ManageDeviceType), User;
    UserAssignDeviceType = "user/assignDeviceType", One(Action::ManageDeviceType), User;
    UserUnassignDeviceType = "user/unassignDeviceType", One(Action::ManageDeviceType), User;
    UserAllowAllDeviceTypes = "user/allowAllDeviceTypes", One(Action::ManageDeviceType), User;
    UserDisallowAllDeviceTypes = "user/disallowAllDeviceTypes", One(Action::ManageDeviceType), User;
}

impl ApiAction {
    /// Whether an anonymous session may call it (else 401 before anything else).
    pub fn is_anonymous(self) -> bool {
        self.permission() == Permission::Anonymous
    }

    /// The action whose right a target lookup is checked against.
    pub fn target_action(self) -> Option<Action> {
        match self.permission() {
            Permission::One(a) => Some(a),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut names = std::collections::HashSet::new();
        for a in ApiAction::ALL {
            assert_eq!(ApiAction::parse(a.name()), Some(*a));
            assert!(names.insert(a.name()), "duplicate {}", a.name());
            // Every action with a target checks a single token action against it.
            if a.target() != Target::None {
                assert!(a.target_action().is_some(), "{}", a.name());
            }
        }
        assert_eq!(ApiAction::parse("network/frobnicate"), None);
        assert_eq!(ApiAction::parse("Server/Info"), None);
    }
}
