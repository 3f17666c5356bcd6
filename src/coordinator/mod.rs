//! The coordinator daemon: one per root, the root of the supervision tree.
//!
//! ```text
//! CoordinatorActor      config, heartbeat, session sweep, per-project instances, control
//!  ├─ RegistryActor     own thread; the only registry writer in the daemon; batches writes
//!  ├─ ServiceActor × N  one per service instance (or an extension kind's actor)
//!  └─ control socket    <root>/.psm/coordinator.sock, newline-delimited JSON, same uid only
//! ```
//!
//! [`run`] is the daemon's `main` as a library function. It holds an exclusive
//! `flock` on `<root>/.psm/coordinator.lock` for its whole life, so two
//! coordinators can never run on one root; the kernel releases it when the
//! process dies, whatever the way.

mod actor;
pub mod client;
mod control;
pub mod protocol;
pub mod registry_actor;

use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use actix::prelude::*;
use anyhow::Context as _;
use fs2::FileExt;
use tracing::info;

pub use actor::{CoordinatorActor, COORDINATOR_NAME};

use crate::config::Config;
use crate::paths::Paths;
use crate::registry::Store;
use crate::supervisor::Extensions;
use registry_actor::RegistryActor;

/// What the coordinator needs to run.
pub struct Settings {
    pub paths: Paths,
    /// The config file, re-read on reload; a missing one means "no
    /// services" (heartbeat and session sweeps still run).
    pub config_path: PathBuf,
    /// The config as loaded from it (the caller loads it, so that a bad one
    /// is reported before anything starts).
    pub config: Config,
    pub extensions: Extensions,
}

/// How a coordinator run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and was told to stop (`psm down`, SIGTERM, SIGINT).
    Stopped,
    /// Another coordinator holds this root; it stays in charge.
    AlreadyRunning(Option<i32>),
}

/// The exclusive lock that makes a coordinator the only one on its root.
pub struct CoordinatorLock {
    _file: File,
}

impl CoordinatorLock {
    /// Takes the lock without waiting, or reports who holds it.
    pub fn acquire(paths: &Paths) -> anyhow::Result<Result<Self, Option<i32>>> {
        // A real directory of ours, made 0700 through its fd: a `.psm` that
        // is a link (or not ours) is refused, never chmodded or written into.
        let mut file = crate::fsx::open_in_own_dir(
            &paths.coordinator_lock(),
            true,
            true,
            crate::fsx::How::ReadWrite,
        )?;
        if FileExt::try_lock_exclusive(&file).is_err() {
            return Ok(Err(read_holder(&mut file)));
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(Ok(CoordinatorLock { _file: file }))
    }

    /// The pid of the coordinator holding the lock, if one does.
    pub fn holder(paths: &Paths) -> Option<Option<i32>> {
        // Without following links: a planted `.psm` link reads as "no
        // coordinator", and starting one then refuses the link.
        let mut file = crate::fsx::open_in_own_dir(
            &paths.coordinator_lock(),
            false,
            false,
            crate::fsx::How::Read,
        )
        .ok()?;
        if FileExt::try_lock_shared(&file).is_ok() {
            return None;
        }
        Some(read_holder(&mut file))
    }
}

/// The pid the lock holder wrote. A holder that has just taken the lock may
/// not have written it yet (or the file may still name its dead
/// predecessor), so read until it names a live process, for up to a second.
fn read_holder(file: &mut File) -> Option<i32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let mut text = String::new();
        let pid = file
            .rewind()
            .and_then(|()| file.read_to_string(&mut text))
            .ok()
            .and_then(|_| text.trim().parse::<i32>().ok())
            .filter(|&pid| crate::process::Identity::of(pid).is_some_and(|id| id.is_alive()));
        if pid.is_some() || std::time::Instant::now() >= deadline {
            return pid;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Starts `<this executable> --root R coordinator --config F` in its own
/// session, output appended to `.logs/coordinator.log`, and returns its pid
/// without waiting. Running the current executable means an extended binary
/// (see examples/) starts an extended coordinator, and the watchdog starts
/// the same psm it is.
pub fn spawn_background(paths: &Paths, config_path: &Path) -> std::io::Result<u32> {
    let exe = std::env::current_exe()?;
    let mut args: Vec<std::ffi::OsString> =
        vec!["--root".into(), paths.root().into(), "coordinator".into()];
    // The default config goes unnamed: named, a missing file would be an
    // error, while a root without psm.toml is a valid root with no services.
    if config_path != paths.default_config() {
        args.extend(["--config".into(), config_path.into()]);
    }
    let spec = crate::process::DetachedSpec {
        program: exe.into(),
        args,
        cwd: Some(paths.root().to_path_buf()),
        env: Vec::new(),
        log: paths.coordinator_log(),
    };
    // The child is reparented once we exit; nobody here waits for it.
    Ok(crate::process::spawn_detached(&spec)?.id())
}

/// Runs the coordinator in the foreground until it is told to stop.
pub fn run(settings: Settings) -> anyhow::Result<Outcome> {
    let lock = match CoordinatorLock::acquire(&settings.paths)? {
        Ok(lock) => lock,
        Err(pid) => return Ok(Outcome::AlreadyRunning(pid)),
    };
    crate::process::open_log(&settings.paths.coordinator_log())
        .context("creating the log directory")?;
    let listener = control::bind(&settings.paths)?;

    let system = System::new();
    let registry_thread = Arbiter::new();
    system.block_on(async {
        let store = Store::patient(settings.paths.clone());
        let registry = RegistryActor::start_in_arbiter(&registry_thread.handle(), move |_| {
            RegistryActor::new(store)
        });
        let coordinator = CoordinatorActor::new(
            settings.paths.clone(),
            settings.config_path.clone(),
            settings.config,
            settings.extensions,
            registry,
        )
        .start();
        control::serve(listener, coordinator.clone());
        actor::forward_signals(coordinator);
    });
    info!(root = %settings.paths.root().display(), pid = std::process::id(), "coordinator running");
    system.run().context("running the coordinator")?;
    registry_thread.stop();
    registry_thread.join().ok();
    let _ = fs::remove_file(settings.paths.control_socket());
    drop(lock);
    info!("coordinator stopped");
    Ok(Outcome::Stopped)
}
