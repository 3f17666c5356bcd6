//! The Process State Manager: the registry file (`model`), its locked,
//! atomic storage (`store`), the seed's API on top of it (`manager`), and
//! the daemon's single writer actor with the narrow handle services persist
//! through (`writer`).

pub mod manager;
pub mod model;
pub mod store;
pub mod writer;

pub use manager::{
    CleanupReport, HealthStatus, ManagerError, Registration, ServiceHealth, SessionCleanup,
    SessionHealth, StateManager, Terminated,
};
pub use model::{
    status, ExitRecord, Registry, Scope, ServiceKey, ServiceRecord, ServiceType, SessionRecord,
};
pub use store::{Store, StoreError};
pub use writer::{RegistryActor, RegistryHandle, RegistryOp};
