//! Supervision of one service instance: the pure restart policy, health
//! probes, the `ServiceActor` that carries them out, and the extension seam
//! through which new probes and service kinds plug in as actors.

pub mod extension;
pub mod health;
pub mod policy;
pub mod service;

pub use extension::{Extensions, KindContext, ProbeHealth, ServiceHandle, ServiceKind};
pub use service::{RestartService, ServiceActor, StopService};
