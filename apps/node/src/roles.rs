//! The roles this binary knows. Adding a role is one line here.

use troupe_core::RoleSet;

/// Every role `troupe` can run, in the order `check-config` shows them.
pub fn known_roles() -> RoleSet {
    RoleSet::new()
        .with::<troupe_ipc::IpcRole>()
        .with::<troupe_supervisor::SupervisorRole>()
        .with::<troupe_beacon::BeaconRole>()
        .with::<troupe_broker::BrokerRole>()
        .with::<crate::heartbeat::Heartbeat>()
}
