//! Processes as psm sees them: identity (pid + kernel start time), signals that
//! refuse to hit a stranger, and detached spawning into a new session.

pub mod group;
pub mod identity;
#[cfg(target_os = "macos")]
pub mod macos;
pub mod procargs;
pub mod reaper;
pub mod signal;
pub mod sockets;
pub mod spawn;
pub mod tree;
pub mod usage;

pub use group::Marker;
pub use identity::{Identity, ProcInfo};
pub use signal::{signal_marked, signal_tree, terminate, StopOutcome, StopRequest};
pub use spawn::{detached_command, open_log, spawn_detached, DetachedSpec};
