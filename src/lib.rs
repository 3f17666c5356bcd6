//! psm — a process supervisor for developer machines.
//!
//! # Layout
//! ```text
//! launchd / systemd timer ── every 60 s ──▶ watchdog (one-shot, synchronous)
//!                                             │ judges the coordinator's heartbeat,
//!                                             │ replaces a dead or hung one
//!                                             ▼
//! coordinator (one per root: flock on .psm/coordinator.lock)
//!  └─ CoordinatorActor      config, heartbeat, session sweep, per-project instances, control
//!     ├─ RegistryActor      own thread; the daemon's only registry writer; batches writes
//!     ├─ ServiceActor × N   spawn, await exit, probes, backoff (or an extension kind's actor)
//!     └─ control socket     .psm/coordinator.sock, one JSON line each way, same uid only
//! psm <cli command> ── short-lived processes ──▶ registry file, under the same flock
//! ```
//! - [`registry`]: the Process State Manager. The JSON registry of every
//!   service by scope (global, per-project, per-session) and of sessions, with
//!   locked read-modify-write and atomic saves (`store`), and the seed's API
//!   on top (`manager`). Every writer — CLI processes, the coordinator — goes
//!   through it, under one `flock`; inside the daemon, through one writer
//!   actor (`writer`), which services reach by a narrow `RegistryHandle`.
//! - [`coordinator`]: the daemon — `CoordinatorActor`, the control socket
//!   and its protocol; `coordinator::run` is its `main`. Its decisions are
//!   pure: the desired set, reload plan and adoption split (`plan`), and
//!   start order with readiness — who waits for whom, stop waves (`deps`).
//! - [`supervisor`]: one service instance — `ServiceActor`, the pure restart
//!   policy and lifecycle (`phase`: phases, and when a run is ready), health
//!   probes, and the extension seam for new probes and kinds.
//! - [`watchdog`]: the one-shot check that replaces a dead or hung
//!   coordinator; [`schedule`]: its launchd/systemd units; [`verify`]: the
//!   pre-start-up checks.
//! - [`process`]: process identity (pid + kernel start time), signals that
//!   never hit a process whose identity does not match, detached spawning.
//! - [`config`]: `psm.toml` parsed (with positions for one-line errors) and
//!   validated into service specs, every number and duration against one
//!   bounds table (`config::bounds`), and their per-project instances.
//! - [`logs`]: service logs — copy-truncate rotation (services hold their
//!   log open with `O_APPEND`) by a size watch thread as soon as a log
//!   passes `max-size`, a bounded `tail`, and `tail -F`-style following.
//! - [`fsx`]: every file under the root is opened through it — directory
//!   fds, `O_NOFOLLOW`, `fstat` before use, `O_EXCL` temp files — so psm
//!   never follows a planted link or blocks on a FIFO.
//! - [`cli`]: the `psm` command line; `main.rs` only calls `cli::main`.
//! - [`input`], [`paths`], [`time`]: validation of user input, every path
//!   under a root, and the registry's millisecond clock.
//!
//! # Files on disk (under the root)
//! - `.live-process-registry.json`: the registry (mode 0600).
//! - `.live-process-registry.json.lock`: the file psm `flock`s; never stale.
//! - `psm.toml`: the services the coordinator runs.
//! - `.psm/` (0700): `coordinator.lock` (holder's pid), `coordinator.sock` (0600).
//! - `.logs/`: `<label>.log` per coordinator service (rotated to
//!   `.log.1` … `.log.<keep>`), `<session>.<name>.log` per session service,
//!   `coordinator.log`, `system-watchdog.log`.

pub mod cli;
pub mod config;
pub mod coordinator;
pub mod fsx;
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
