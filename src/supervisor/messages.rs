//! The messages a service's supervising actor answers, whoever implements it
//! (the built-in `ServiceActor` or an extension kind), and the one a probe
//! actor answers. They live apart from both so that the extension seam and
//! the built-in actor depend on them, not on each other.

use actix::prelude::*;
use serde_json::Value;

use crate::registry::ServiceKey;

/// Service actor → coordinator: the instance's readiness changed. The
/// coordinator starts the services waiting for it and restarts those that
/// `restart-with` it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ReadinessChanged {
    pub key: ServiceKey,
    pub readiness: Readiness,
}

/// Whether an instance's current run can be depended on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Its probe passed once (or, without one, it stayed up for its start
    /// period).
    Ready,
    /// Spawned and not ready yet, or between runs (backoff).
    NotReady,
    /// Given up after too many failures; the text says why.
    Failed(String),
}

/// Coordinator → service actor: stop the process; reply once it is gone and
/// the registry says so. With `keep_record`, the record stays as `stopped`
/// (a user's `psm stop`); otherwise it is removed (`down`, reload).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StopService {
    pub keep_record: bool,
}

/// Coordinator → service actor: start again now with the count reset. With
/// `force`, a running process is stopped first (`psm restart`); without, a
/// running service is left alone (`psm start` of a failed or waiting one).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct RestartService {
    pub force: bool,
}

/// Coordinator → `ServiceActor` without a health probe: this round's stamp
/// (`RegistryOp::Stamp`) missed your record (gone, or changed by someone
/// else): write it whole if your run is up and ready, as a probed round
/// would. Such a service has no round timer of its own (see
/// docs/architecture.md, "Health-check sequence").
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct RefreshRecord;

/// `ServiceActor` → probe actor: is this instance healthy now?
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), String>")]
pub struct ProbeHealth {
    /// The instance label (`web`, or `web@project` for per-project services).
    pub instance: String,
    /// The service's pid (its identity was checked just before).
    pub pid: i32,
    /// The `options` table of the service's `health` entry.
    pub options: Value,
}
