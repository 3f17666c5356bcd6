//! psm — a process supervisor for developer machines.
//!
//! # Layout
//! - [`registry`]: the Process State Manager. The JSON registry of every
//!   service by scope (global, per-project, per-session) and of sessions, with
//!   locked read-modify-write and atomic saves (`store`), and the seed's API
//!   on top (`manager`). Every writer — CLI processes, the coordinator — goes
//!   through it, under one `flock`.
//! - [`process`]: process identity (pid + kernel start time), signals that
//!   never hit a process whose identity does not match, detached spawning.
//! - [`config`]: `psm.toml` parsed and validated into service specs, and
//!   their per-project instances.
//! - [`logs`]: service logs — copy-truncate rotation (services hold their
//!   log open with `O_APPEND`), `tail`, and `tail -F`-style following.
//! - [`cli`]: the `psm` command line; `main.rs` only parses and calls it.
//! - [`input`], [`paths`], [`time`]: validation of user input, every path
//!   under a root, and the registry's millisecond clock.
//!
//! # Files on disk (under the root)
//! - `.live-process-registry.json`: the registry (mode 0600).
//! - `.live-process-registry.json.lock`: the file psm `flock`s; never stale.
//! - `.logs/`: service logs (`<session>.<name>.log` for session services),
//!   rotated copies beside them as `<name>.log.1` (newest) … `.log.<keep>`.

pub mod cli;
pub mod config;
pub mod coordinator;
pub mod input;
pub mod logs;
pub mod paths;
pub mod process;
pub mod registry;
pub mod schedule;
pub mod supervisor;
pub mod time;
pub mod verify;
pub mod watchdog;
