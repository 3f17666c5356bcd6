//! The coordinator daemon: one per root, the root of the supervision tree.
//!
//! ```text
//! CoordinatorActor      config, heartbeat, session sweep, per-project instances, control
//!  ├─ RegistryActor     own thread; the only registry writer in the daemon; batches
//!  │                    writes (`registry::writer`: services hold only a `RegistryHandle`)
//!  ├─ ServiceActor × N  one per service instance (or an extension kind's actor)
//!  └─ control socket    <root>/.psm/coordinator.sock (or /tmp/psm-<uid>/<hash>.sock
//!                       for a deep root: `Paths::control_socket`), JSON lines, same uid only
//! ```
//!
//! [`run`] is the daemon's `main` as a library function. It holds an exclusive
//! `flock` on `<root>/.psm/coordinator.lock` for its whole life, so two
//! coordinators can never run on one root; the kernel releases it when the
//! process dies, whatever the way. `psm down` leaves a [`DownMark`]; a run
//! with `respect_down` (the watchdog's, a KeepAlive agent's) then starts
//! nothing, any other run clears it.

mod actor;
pub mod client;
mod control;
mod deps;
mod plan;
pub mod protocol;

use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use actix::prelude::*;
use anyhow::Context as _;
use fs2::FileExt;
use tracing::info;

pub use actor::{CoordinatorActor, COORDINATOR_NAME};

use crate::config::Config;
use crate::paths::Paths;
use crate::registry::{RegistryActor, Store};
use crate::supervisor::Extensions;

/// The heartbeat metadata key of the coordinator's health interval (ms),
/// from which the watchdog derives how old a heartbeat may be.
pub const INTERVAL_KEY: &str = "healthIntervalMs";

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
    /// Started by the watchdog or a KeepAlive agent: if `psm down` left its
    /// mark, start nothing. A coordinator started by the user (`psm up`,
    /// `psm coordinator`) clears the mark instead.
    pub respect_down: bool,
}

/// How a coordinator run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and was told to stop (`psm down`, SIGTERM, SIGINT).
    Stopped,
    /// Another coordinator holds this root; it stays in charge.
    AlreadyRunning(Option<i32>),
    /// `psm down` stopped this root on purpose and the run respects it.
    StayedDown(DownMark),
}

/// The durable "stopped on purpose" mark of `psm down` (see
/// [`Paths::down_mark`]). It is written before the coordinator is told to
/// stop, so a watchdog racing `down` sees it, and it lives until the user
/// starts psm again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownMark {
    /// What the mark says: who stopped psm and when.
    pub note: String,
}

impl DownMark {
    /// The mark, if `psm down` left one. Anything at the path counts, even
    /// what cannot be read: when in doubt, do not start.
    pub fn read(paths: &Paths) -> Option<DownMark> {
        let path = paths.down_mark();
        let meta = fs::symlink_metadata(&path).ok()?;
        // Only a regular file is read: a FIFO (or a symlink to one, or to
        // /dev/zero) at the mark would hang or flood the watchdog and `up`.
        let note = meta
            .is_file()
            .then(|| read_note(&path))
            .flatten()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty() && t.len() < 512 && !t.chars().any(char::is_control))
            .unwrap_or_else(|| format!("{} exists", path.display()));
        Some(DownMark { note })
    }

    /// Leaves the mark (0600, never through a symlink) and flushes it to disk.
    pub fn write(paths: &Paths) -> anyhow::Result<()> {
        let path = paths.down_mark();
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let note = format!(
            "stopped by `psm down` (pid {}) at {stamp}\n",
            std::process::id()
        );
        // Through `.psm`'s fd (refused if it is a link): a new file renamed
        // over the name, so a planted link is replaced, never written through.
        let dir = crate::fsx::Dir::own(&paths.runtime_dir(), true, true)?;
        dir.replace(path.file_name().unwrap_or_default(), note.as_bytes())
            .with_context(|| format!("writing the down mark {}", path.display()))
    }

    /// Removes the mark: the user started psm again.
    pub fn clear(paths: &Paths) -> anyhow::Result<()> {
        let path = paths.down_mark();
        // No mark (or no `.psm` at all, which the lock reports better).
        if fs::symlink_metadata(&path).is_err() {
            return Ok(());
        }
        let removed = crate::fsx::Dir::own(&paths.runtime_dir(), false, false)
            .and_then(|dir| dir.remove(path.file_name().unwrap_or_default()).map(drop));
        match removed {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing the down mark {}", path.display())),
        }
    }
}

/// The first 512 bytes of the mark; never blocks, never follows a symlink
/// (the file may have been swapped since it was looked at).
fn read_note(path: &Path) -> Option<String> {
    let file = crate::fsx::open_file(path, crate::fsx::How::Read).ok()?;
    let mut text = String::new();
    file.take(512).read_to_string(&mut text).ok()?;
    Some(text)
}

/// How long a command waits for a dead coordinator to finish leaving
/// ([`CoordinatorLock::wait_leaving`]).
pub const LEAVING_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

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
        // The start time makes the pid an identity (see `proven_holder`).
        let me = std::process::id() as i32;
        match crate::process::Identity::of(me) {
            Some(id) => write!(file, "{me} {}", id.start_time)?,
            None => write!(file, "{me}")?,
        }
        file.flush()?;
        Ok(Ok(CoordinatorLock { _file: file }))
    }

    /// The coordinator holding the lock, only when its identity is proved,
    /// for a caller about to signal it: the lock is held; the file names a
    /// pid and the start time the holder wrote (an older psm wrote the pid
    /// alone); that pid runs with that start time; and where the kernel
    /// lists the lock's holders (Linux `/proc/locks`), it is among them.
    /// The file keeps a dead coordinator's pid until its successor, which
    /// already holds the lock, overwrites it: in that instant the pid may
    /// name a stranger, and a pid that merely runs proves nothing.
    pub fn proven_holder(paths: &Paths) -> Option<crate::process::Identity> {
        let file = Self::open_held(paths)?;
        let mut text = String::new();
        (&file).take(64).read_to_string(&mut text).ok()?;
        let (pid, recorded) = parse_holder(&text)?;
        let now = crate::process::Identity::of(pid).filter(|id| id.is_alive())?;
        let holders = crate::registry::store::holders(&file);
        let listed = holders.contains(&pid);
        let proved = match recorded {
            Some(start) => start == now.start_time && (holders.is_empty() || listed),
            // An older psm's file: only the kernel's word makes the pid ours.
            None => listed,
        };
        proved.then_some(now)
    }

    /// The lock is held but names no live coordinator: the one that held it
    /// died and is still leaving (its lock goes only when its last thread
    /// has exited; a thread in `fsync` on a loaded disk, or the teardown of
    /// the log watch's inotify instance, finishes first), or a new one has
    /// not yet written its pid. Waits up to [`LEAVING_PATIENCE`] for either
    /// to settle, so `up`, `down` and the watchdog's recovery right after a
    /// crash or a kill start a coordinator instead of one that finds the
    /// lock held and leaves ("already running"). Returns [`Self::holder`].
    pub fn wait_leaving(paths: &Paths) -> Option<Option<i32>> {
        let deadline = std::time::Instant::now() + LEAVING_PATIENCE;
        loop {
            let holder = Self::holder(paths);
            if holder != Some(None) || std::time::Instant::now() >= deadline {
                return holder;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The pid of the coordinator holding the lock, if one does.
    pub fn holder(paths: &Paths) -> Option<Option<i32>> {
        let mut file = Self::open_held(paths)?;
        Some(read_holder(&mut file))
    }

    /// The lock file, when somebody holds the lock (`None`: no file, or
    /// nobody holds it). Without following links: a planted `.psm` link
    /// reads as "no coordinator", and starting one then refuses the link.
    fn open_held(paths: &Paths) -> Option<File> {
        let file = crate::fsx::open_in_own_dir(
            &paths.coordinator_lock(),
            false,
            false,
            crate::fsx::How::Read,
        )
        .ok()?;
        FileExt::try_lock_shared(&file).is_err().then_some(file)
    }
}

/// Serialises `psm up` and `psm down` on one root: each holds it for its
/// whole run, so an `up` issued while a `down` is under way starts a new
/// coordinator after the old one has exited, instead of finding the leaving
/// one "already running"; and a `down` after an `up` stops what that `up`
/// started. The kernel drops it when its holder dies.
pub struct UpDownLock {
    _file: File,
}

impl UpDownLock {
    /// Waits up to `patience` for the lock.
    pub fn acquire(paths: &Paths, patience: std::time::Duration) -> anyhow::Result<Self> {
        let path = paths.updown_lock();
        let file = crate::fsx::open_in_own_dir(&path, true, true, crate::fsx::How::ReadWrite)?;
        let deadline = std::time::Instant::now() + patience;
        while FileExt::try_lock_exclusive(&file).is_err() {
            if std::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "another `psm up` or `psm down` on this root has run for over {}s (it holds {}); wait for it or end it",
                    patience.as_secs(),
                    path.display()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(UpDownLock { _file: file })
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
            .and_then(|_| parse_holder(&text))
            .map(|(pid, _)| pid)
            .filter(|&pid| crate::process::Identity::of(pid).is_some_and(|id| id.is_alive()));
        if pid.is_some() || std::time::Instant::now() >= deadline {
            return pid;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The lock file's text: `<pid> <start time>`, or `<pid>` (older psm).
fn parse_holder(text: &str) -> Option<(i32, Option<u64>)> {
    let mut words = text.split_whitespace();
    let pid = words.next()?.parse::<i32>().ok().filter(|&p| p > 1)?;
    let start = match words.next() {
        None => None,
        Some(w) => Some(w.parse::<u64>().ok()?),
    };
    words.next().is_none().then_some((pid, start))
}

/// Starts `<this executable> --root R coordinator --config F` in its own
/// session, output appended to `.logs/coordinator.log`, and returns its pid
/// without waiting. Running the current executable means an extended binary
/// (see examples/) starts an extended coordinator, and the watchdog starts
/// the same psm it is.
///
/// With `respect_down` (the watchdog) the new coordinator starts nothing
/// if `psm down` left its mark; the caller gets the child to notice an early
/// exit.
pub fn spawn_background(
    paths: &Paths,
    config_path: &Path,
    respect_down: bool,
) -> std::io::Result<std::process::Child> {
    let exe = std::env::current_exe()?;
    let mut args: Vec<std::ffi::OsString> =
        vec!["--root".into(), paths.root().into(), "coordinator".into()];
    if respect_down {
        args.push("--respect-down".into());
    }
    // The default config goes unnamed: named, a missing file would be an
    // error, while a root without psm.toml is a valid root with no services.
    if config_path != paths.default_config() {
        args.extend(["--config".into(), config_path.into()]);
    }
    let spec = crate::process::DetachedSpec {
        program: exe.into(),
        args,
        cwd: Some(paths.root().to_path_buf()),
        // Marks it as psm's daemon: a `psm session run` that inherits it
        // (a `psm up` run inside a session) leaves it alone at its end.
        env: vec![(
            crate::process::tree::DAEMON_MARK.into(),
            "coordinator".into(),
        )],
        log: paths.coordinator_log(),
    };
    // The child is reparented once we exit; the caller may wait on it.
    crate::process::spawn_detached(&spec)
}

/// A socket outside the root (its path would be too long there) goes into
/// the user's private runtime directory: created 0700, and refused unless it
/// is a real directory of ours that nobody else can enter.
fn prepare_socket_dir(paths: &Paths) -> anyhow::Result<()> {
    let socket = paths.control_socket();
    let Some(dir) = socket.parent().filter(|d| *d != paths.runtime_dir()) else {
        return Ok(());
    };
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e).with_context(|| format!("creating socket directory {}", dir.display()))
        }
    }
    if let Some(problem) = crate::paths::private_dir_problem(dir, nix::unistd::geteuid().as_raw()) {
        anyhow::bail!("cannot use socket directory: {problem}");
    }
    Ok(())
}

/// Runs the coordinator in the foreground until it is told to stop.
pub fn run(settings: Settings) -> anyhow::Result<Outcome> {
    let lock = match CoordinatorLock::acquire(&settings.paths)? {
        Ok(lock) => lock,
        Err(pid) => return Ok(Outcome::AlreadyRunning(pid)),
    };
    // A registry that is a link, a FIFO or the seed's lock directory would
    // fail every write: say so now instead of running blind.
    let store = Store::new(settings.paths.clone());
    store.check_usable()?;
    if let Ok(n @ 1..) = store.remove_leftover_temps() {
        info!(
            removed = n,
            "removed temp files of interrupted registry saves"
        );
    }
    // Under the lock, so `up` and the watchdog cannot both decide.
    if settings.respect_down {
        if let Some(mark) = DownMark::read(&settings.paths) {
            info!(mark = %mark.note, "stopped on purpose by psm down; not starting");
            return Ok(Outcome::StayedDown(mark));
        }
    } else {
        DownMark::clear(&settings.paths)?;
    }
    crate::process::open_log(&settings.paths.coordinator_log())
        .context("creating the log directory")?;
    // Orphans of the services' descendants (a daemonizing service, a
    // `setsid` helper whose parent exited) become our children instead of
    // init's: the services find them there, and the reaper reaps them.
    let subreaper = crate::process::tree::become_subreaper();
    prepare_socket_dir(&settings.paths)?;
    let listener = control::bind(&settings.paths, &lock)?;
    // Logs are kept within max-size as they are written, by a thread of
    // their own (see `logs::SizeWatch`); the actor publishes reloads.
    let logs = settings.config.logs;
    crate::logs::set_policy(logs.max_size, logs.keep);
    crate::logs::set_timestamps(logs.timestamps);
    let _log_watch = crate::logs::SizeWatch::start(settings.paths.logs_dir())
        .context("starting the log size watch")?;

    let control_limits = settings.config.control;
    let system = System::new();
    let registry_thread = Arbiter::new();
    // The coordinator and every service actor run on a thread of their own,
    // not the main one: the services' leaders are then listed under it and
    // the orphans the coordinator inherits under the main thread, so
    // finding a service's orphans reads a short list (see
    // `process::reaper::spawning_thread`).
    let supervision_thread = Arbiter::new();
    let (reaper_tx, reaper_rx) = std::sync::mpsc::sync_channel(1);
    // Before the first spawn, on the thread that spawns: every child's exit
    // goes through the reaper.
    supervision_thread.spawn_fn(move || {
        let _ = reaper_tx.send(crate::process::reaper::start());
    });
    reaper_rx
        .recv()
        .context("starting the child reaper")?
        .context("starting the child reaper")?;
    system.block_on(async {
        let store = Store::patient(settings.paths.clone());
        let registry = RegistryActor::start_in_arbiter(&registry_thread.handle(), move |_| {
            RegistryActor::new(store)
        });
        let (paths, config_path) = (settings.paths.clone(), settings.config_path.clone());
        let (config, extensions) = (settings.config, settings.extensions);
        let coordinator =
            CoordinatorActor::start_in_arbiter(&supervision_thread.handle(), move |_| {
                CoordinatorActor::new(paths, config_path, config, extensions, registry)
            });
        control::serve(listener, coordinator.clone(), control_limits);
        actor::forward_signals(coordinator);
    });
    info!(root = %settings.paths.root().display(), pid = std::process::id(), subreaper, "coordinator running");
    system.run().context("running the coordinator")?;
    supervision_thread.stop();
    supervision_thread.join().ok();
    registry_thread.stop();
    registry_thread.join().ok();
    let _ = fs::remove_file(settings.paths.control_socket());
    drop(lock);
    info!("coordinator stopped");
    Ok(Outcome::Stopped)
}

#[cfg(test)]
mod tests {
    use super::parse_holder;

    #[test]
    fn lock_file_holder_table() {
        type Holder = Option<(i32, Option<u64>)>;
        let cases: &[(&str, Holder)] = &[
            ("1234 98765", Some((1234, Some(98765)))),
            ("1234 98765\n", Some((1234, Some(98765)))),
            ("1234", Some((1234, None))), // an older psm's file
            ("", None),
            ("1", None), // never pid 1
            ("0 5", None),
            ("-5 5", None),
            ("1234 x", None),
            ("1234 5 6", None),
            ("abc", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_holder(text), *want, "{text:?}");
        }
    }
}
