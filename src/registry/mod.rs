//! The Process State Manager: the registry file (`model`), its locked,
//! atomic storage (`store`), and the seed's API on top of it (`manager`).

pub mod manager;
pub mod model;
pub mod store;

pub use manager::{
    CleanupReport, HealthStatus, ManagerError, Registration, ServiceHealth, SessionCleanup,
    SessionHealth, StateManager, Terminated,
};
pub use model::{status, Registry, Scope, ServiceKey, ServiceRecord, ServiceType, SessionRecord};
pub use store::{Store, StoreError};
