//! One reaper for every child of the coordinator: a `waitpid(-1)` loop run
//! on each SIGCHLD that hands each exit to whoever spawned that pid, and
//! reaps the orphans the coordinator inherits as a subreaper.
//!
//! It replaces a wait per child (tokio's pidfd per child: a descriptor that
//! each fork copied, and a limit on how many services one coordinator can
//! hold) and the orphan sweep that listed every child on each heartbeat.
//!
//! Pid reuse: a pid is free for the kernel to hand out again the moment it
//! is reaped. Spawning and reaping therefore both happen under one lock:
//! a spawn inserts its pid before the lock is released (so its exit, however
//! early, finds its owner), and the reaper removes a pid's owner in the same
//! critical section that reaped it (so a new child given the same pid later
//! can never receive the old one's exit). The spawner also reads the child's
//! identity under that lock, while the child cannot have been reaped yet.

use std::collections::HashMap;
use std::io;
use std::process::ExitStatus;
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::Identity;

/// Who waits for each child of this process: the exit goes to the sender;
/// `None` for a child whose exit nobody needs (a log stamper).
static OWNERS: Mutex<Option<HashMap<i32, Option<oneshot::Sender<ExitStatus>>>>> = Mutex::new(None);

fn owners(
) -> std::sync::MutexGuard<'static, Option<HashMap<i32, Option<oneshot::Sender<ExitStatus>>>>> {
    // A panic while holding the lock leaves the map consistent (every
    // change is one insert or remove), so a poisoned lock is still used.
    OWNERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `spawn` (which starts a child and returns its pid) under the
/// reaper's lock and registers the child; returns its identity, read before
/// anyone could reap it, and where its exit status will arrive.
pub fn spawn_owned(
    spawn: impl FnOnce() -> io::Result<i32>,
) -> io::Result<(Identity, oneshot::Receiver<ExitStatus>)> {
    let mut guard = owners();
    let pid = spawn()?;
    let (tx, rx) = oneshot::channel();
    guard.get_or_insert_with(HashMap::new).insert(pid, Some(tx));
    // Unreaped (we hold the lock), so readable even if it already exited.
    let identity = Identity::of(pid).unwrap_or(Identity { pid, start_time: 0 });
    Ok((identity, rx))
}

/// As [`spawn_owned`] for a child whose exit nobody waits for: it is reaped
/// and not counted as an orphan meanwhile.
pub fn spawn_unwatched(spawn: impl FnOnce() -> io::Result<i32>) -> io::Result<i32> {
    let mut guard = owners();
    let pid = spawn()?;
    guard.get_or_insert_with(HashMap::new).insert(pid, None);
    Ok(pid)
}

/// Whether `pid` is a child this process spawned and has not reaped yet.
pub fn owns(pid: i32) -> bool {
    owners().as_ref().is_some_and(|m| m.contains_key(&pid))
}

/// `pids` without the children this process spawned itself.
pub fn unowned(pids: Vec<i32>) -> Vec<i32> {
    let guard = owners();
    let Some(map) = guard.as_ref() else {
        return pids;
    };
    pids.into_iter().filter(|p| !map.contains_key(p)).collect()
}

/// Reaps every child that has exited, handing each exit to its spawner;
/// returns the pids of the exited orphans it reaped.
pub fn reap() -> Vec<i32> {
    let mut orphans = Vec::new();
    let mut guard = owners();
    loop {
        let mut status = 0;
        // SAFETY: waitpid only writes the status it is given.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if pid <= 0 {
            break; // 0: none has exited yet; -1: no children left (ECHILD)
        }
        use std::os::unix::process::ExitStatusExt;
        match guard.as_mut().and_then(|m| m.remove(&pid)) {
            Some(Some(tx)) => {
                let _ = tx.send(ExitStatus::from_raw(status));
            }
            Some(None) => {}
            None => orphans.push(pid),
        }
    }
    orphans
}

/// Starts the reaper on the current runtime: every SIGCHLD reaps. Call once,
/// before the first child is spawned, on the thread that spawns every
/// child (see [`spawning_thread`]). Children that exited before are reaped
/// at once.
pub fn start() -> io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigchld = signal(SignalKind::child())?;
    let _ = SPAWNING_THREAD.set(gettid());
    actix_rt::spawn(async move {
        loop {
            let orphans = reap();
            if !orphans.is_empty() {
                tracing::debug!(?orphans, "reaped inherited orphans");
            }
            // Signals that arrive while reaping are not lost: the stream
            // remembers one, and the loop reaps until none is left.
            if sigchld.recv().await.is_none() {
                break;
            }
        }
    });
    Ok(())
}

/// The thread the reaper was started on, which spawns every service.
static SPAWNING_THREAD: std::sync::OnceLock<i32> = std::sync::OnceLock::new();

/// The id of the thread that spawns the services (Linux), once the reaper
/// runs: never the main thread.
///
/// Why it matters: on Linux a child is listed under the thread that forked
/// it (`/proc/<pid>/task/<tid>/children`), while an orphan the coordinator
/// inherits as a subreaper goes to the first live thread of its thread
/// group, the main thread (the kernel's `find_new_reaper` →
/// `find_alive_thread`). So the services' leaders sit in this thread's list
/// and the inherited orphans in the main thread's: looking for a service's
/// orphans reads the short lists, not a list of every service (which made
/// `down` quadratic). Tests that find a service's orphans fail should an
/// orphan ever land in this thread's list (`tests/escapes.rs`).
pub fn spawning_thread() -> Option<i32> {
    SPAWNING_THREAD.get().copied()
}

#[cfg(target_os = "linux")]
fn gettid() -> i32 {
    nix::unistd::gettid().as_raw()
}

#[cfg(not(target_os = "linux"))]
fn gettid() -> i32 {
    0
}
