//! Supervision of one service instance: the pure restart policy, health
//! probes, the `ServiceActor` that carries them out, and the extension seam
//! through which new probes and service kinds plug in as actors.

pub mod extension;
pub mod fingerprint;
pub mod health;
pub mod messages;
pub mod phase;
pub mod policy;
pub mod service;

pub use extension::{Extensions, KindContext, ServiceHandle, ServiceKind};
pub use messages::{
    ProbeHealth, Readiness, ReadinessChanged, RefreshRecord, RestartService, StopService,
};
pub use service::ServiceActor;
