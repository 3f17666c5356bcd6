//! A service's process tree, beyond its process group: descendants that left
//! the group (`setsid`, a double fork) are still found through parenthood,
//! and a supervisor that is a child subreaper inherits its services'
//! orphans instead of losing them to init.
//!
//! Parenthood is proof of descent only at the moment it is read: a child is
//! always younger than its parent, so each step of the walk checks that the
//! child started no earlier than the parent it was found under, and the walk
//! starts only from a root whose identity still matches.

use super::identity::{Identity, ProcInfo};

/// The direct children of `pid` right now (zombies included).
#[cfg(target_os = "linux")]
pub fn children(pid: i32) -> Vec<i32> {
    children_except(pid, None)
}

/// The direct children of `pid`, but for those its thread `skip` forked.
#[cfg(target_os = "linux")]
fn children_except(pid: i32, skip: Option<i32>) -> Vec<i32> {
    // /proc/<pid>/task/<tid>/children lists the children each thread forked;
    // a multi-threaded parent spreads them over its tasks.
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let skip = skip.map(|tid| std::ffi::OsString::from(tid.to_string()));
    tasks
        .flatten()
        .filter(|task| skip.as_ref() != Some(&task.file_name()))
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_ascii_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

#[cfg(target_os = "macos")]
pub fn children(pid: i32) -> Vec<i32> {
    super::macos::children(pid)
        .into_iter()
        .map(|id| id.pid)
        .collect()
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn children(_pid: i32) -> Vec<i32> {
    Vec::new()
}

/// Every live descendant of `root` (not `root` itself), as identities taken
/// now; empty when `root` no longer runs as the recorded process.
pub fn descendants(root: Identity) -> Vec<Identity> {
    if !root.is_alive() {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut frontier = vec![root];
    // Bounded: a fork bomb must not keep psm walking forever.
    while let Some(parent) = frontier.pop() {
        for pid in children(parent.pid) {
            let Some(info) = ProcInfo::read(pid) else {
                continue;
            };
            if !is_child_of(parent, info) || found.len() >= MAX_DESCENDANTS {
                continue;
            }
            let child = Identity {
                pid,
                start_time: info.start_time,
            };
            if !info.zombie {
                found.push(child);
            }
            frontier.push(child);
        }
    }
    found
}

/// The most descendants one walk collects.
const MAX_DESCENDANTS: usize = 4096;

/// Whether a process found under `parent` can be its child: no older than it.
fn is_child_of(parent: Identity, child: ProcInfo) -> bool {
    child.start_time >= parent.start_time
}

/// Makes this process the reaper of its descendants' orphans (Linux
/// `PR_SET_CHILD_SUBREAPER`), so a service's double-forked or `setsid`
/// descendants stay within reach. Returns whether it took effect; other
/// systems have no such mechanism.
pub fn become_subreaper() -> bool {
    #[cfg(target_os = "linux")]
    {
        nix::sys::prctl::set_child_subreaper(true).is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Reaps this process's children that have exited and that nobody else
/// waits for (`known` holds the pids whose owners reap them): the orphans a
/// subreaper inherits. Returns the pids reaped.
#[cfg(unix)]
pub fn reap_orphans(known: &std::collections::HashSet<i32>) -> Vec<i32> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::Pid;
    let me = std::process::id() as i32;
    children(me)
        .into_iter()
        .filter(|pid| !known.contains(pid))
        .filter(|&pid| ProcInfo::read(pid).is_some_and(|i| i.zombie))
        .filter(|&pid| {
            matches!(
                waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..))
            )
        })
        .collect()
}

/// The pids of this process's children that their spawner waits for
/// itself: those the reaper holds an owner for (see [`super::reaper`]). An
/// orphan reaper must leave them alone, so it never steals an exit status.
fn own_children() -> std::collections::HashSet<i32> {
    let me = std::process::id() as i32;
    children(me)
        .into_iter()
        .filter(|pid| super::reaper::owns(*pid))
        .collect()
}

/// The environment variable psm sets on its own daemons (the coordinator):
/// a session's subreaper never ends a process that carries it.
pub const DAEMON_MARK: &str = "PSM_DAEMON";

/// Whether an environment block (`/proc/<pid>/environ`: NUL-separated
/// `KEY=value`) names service `label` of root `root`, as psm set it.
pub fn environ_names(environ: &[u8], label: &str, root: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let has = |key: &[u8], value: &[u8]| {
        environ.split(|&b| b == 0).any(|kv| {
            kv.len() == key.len() + 1 + value.len()
                && kv.starts_with(key)
                && kv[key.len()] == b'='
                && kv.ends_with(value)
        })
    };
    has(b"PSM_SERVICE", label.as_bytes()) && has(b"PSM_ROOT", root.as_os_str().as_bytes())
}

/// Whether an environment block carries [`DAEMON_MARK`].
pub fn environ_has(environ: &[u8], key: &str) -> bool {
    environ
        .split(|&b| b == 0)
        .any(|kv| kv.starts_with(key.as_bytes()) && kv.get(key.len()) == Some(&b'='))
}

/// `pid`'s environment block (NUL-separated), where the system lets us
/// read it: Linux's `/proc/<pid>/environ`, macOS's `KERN_PROCARGS2`; both
/// only for processes of the same user.
pub fn environ(pid: i32) -> Option<Vec<u8>> {
    #[cfg(target_os = "linux")]
    {
        // An empty block may be a process caught in `execve`: the file
        // keeps the memory it was opened on, and the exec drops that, so
        // it reads nothing (1 read in 4 of a just-forked `sleep` under
        // load). Read again on a fresh open, a few times: by then the new
        // image's block is there. Only a process whose environment really
        // is empty pays the retries (about 4 ms).
        let path = format!("/proc/{pid}/environ");
        let mut block = std::fs::read(&path).ok()?;
        for pause in [0, 1, 1, 2] {
            if !block.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(pause));
            block = std::fs::read(&path).ok()?;
        }
        Some(block)
    }
    #[cfg(target_os = "macos")]
    {
        super::macos::environ(pid)
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        let _ = pid;
        None
    }
}

/// The live orphans this process inherited as a subreaper (children nobody
/// claimed) whose environment says they came from service `label` of
/// `root`, oldest first. An orphan whose environment was cleared cannot be
/// attributed this way and is not returned. macOS has no subreaper: every
/// orphan goes to launchd, so there the orphans are launchd's children.
pub fn inherited_by(label: &str, root: &std::path::Path) -> Vec<Identity> {
    inherited_among(orphan_candidates(), label, root)
}

fn inherited_among(kids: Vec<i32>, label: &str, root: &std::path::Path) -> Vec<Identity> {
    let unclaimed = super::reaper::unowned(kids);
    let mut found: Vec<Identity> = unclaimed
        .into_iter()
        .filter_map(|pid| {
            let info = ProcInfo::read(pid).filter(|i| !i.zombie)?;
            let env = environ(pid)?;
            environ_names(&env, label, root).then_some(Identity {
                pid,
                start_time: info.start_time,
            })
        })
        .collect();
    found.sort_by_key(|id| id.start_time);
    found
}

/// The children among which a service's orphans are: this process's (on
/// Linux) but for the spawning thread's list, which holds the services'
/// leaders and never an orphan (see `reaper::spawning_thread`); launchd's
/// on macOS.
#[cfg(target_os = "linux")]
fn orphan_candidates() -> Vec<i32> {
    // The main thread's list is where the orphans are: never skip it.
    let me = orphans_parent();
    let spawning = super::reaper::spawning_thread().filter(|&tid| tid != me);
    children_except(me, spawning)
}

#[cfg(not(target_os = "linux"))]
fn orphan_candidates() -> Vec<i32> {
    children(orphans_parent())
}

/// Whose children an orphan of a service becomes: this process where it is
/// a subreaper (Linux), launchd (pid 1) on macOS.
fn orphans_parent() -> i32 {
    if cfg!(target_os = "macos") {
        1
    } else {
        std::process::id() as i32
    }
}

/// Ends, identity-checked, every live process this subreaper inherited
/// (its children other than those it claimed) and their descendants, except
/// psm's own daemons (marked with [`DAEMON_MARK`]) and what runs under them:
/// SIGTERM, SIGKILL for those still there after `grace`; then reaps them.
/// Returns how many it signalled. For `psm session run`, once its command
/// has been waited for: whatever the command left behind.
#[cfg(unix)]
pub fn end_inherited(grace: std::time::Duration) -> usize {
    use nix::sys::signal::Signal;
    let own = own_children();
    let me = std::process::id() as i32;
    let mut doomed: Vec<Identity> = Vec::new();
    for pid in children(me).into_iter().filter(|p| !own.contains(p)) {
        let Some(info) = ProcInfo::read(pid).filter(|i| !i.zombie) else {
            continue;
        };
        // A daemon whose environment cannot be read is left alone too.
        if environ(pid).is_none_or(|env| environ_has(&env, DAEMON_MARK)) {
            continue;
        }
        let orphan = Identity {
            pid,
            start_time: info.start_time,
        };
        doomed.push(orphan);
        doomed.extend(descendants(orphan));
    }
    for id in &doomed {
        super::signal_tree(*id, None, Signal::SIGTERM);
    }
    let deadline = std::time::Instant::now() + grace;
    while doomed.iter().any(Identity::is_alive) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20)); // poll: they are not our children to wait for
    }
    for id in doomed.iter().filter(|id| id.is_alive()) {
        super::signal_tree(*id, None, Signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while doomed.iter().any(Identity::is_alive) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20)); // poll, as above
    }
    reap_orphans(&own);
    doomed.len()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_child_is_never_older_than_its_parent() {
        let parent = Identity {
            pid: 10,
            start_time: 500,
        };
        let info = |start_time| ProcInfo {
            start_time,
            pgid: 10,
            zombie: false,
        };
        assert!(is_child_of(parent, info(500)));
        assert!(is_child_of(parent, info(501)));
        assert!(!is_child_of(parent, info(499)), "a reused pid's stranger");
    }

    #[test]
    fn descendants_include_a_setsid_grandchild() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "setsid sh -c 'echo $$ > {}; exec sleep 30' & exec sleep 30",
                pidfile.display()
            ))
            .spawn()
            .unwrap();
        let me = Identity::of(child.id() as i32).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let grandchild = loop {
            if let Ok(Ok(p)) = std::fs::read_to_string(&pidfile).map(|s| s.trim().parse::<i32>()) {
                break p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "grandchild never wrote its pid"
            );
            std::thread::sleep(std::time::Duration::from_millis(20)); // poll
        };
        let found: Vec<i32> = descendants(me).iter().map(|i| i.pid).collect();
        unsafe { libc::kill(grandchild, libc::SIGKILL) };
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&grandchild), "{found:?} lacks {grandchild}");
    }

    #[test]
    fn a_dead_root_has_no_descendants() {
        let gone = Identity {
            pid: i32::MAX - 1,
            start_time: 1,
        };
        assert!(descendants(gone).is_empty());
    }

    #[test]
    fn an_environment_names_its_service() {
        let root = std::path::Path::new("/r");
        let cases: [(&[u8], bool); 6] = [
            (b"PSM_SERVICE=web\0PSM_ROOT=/r\0", true),
            (b"A=1\0PSM_ROOT=/r\0PSM_SERVICE=web", true),
            (b"PSM_SERVICE=web2\0PSM_ROOT=/r\0", false),
            (b"PSM_SERVICE=web\0PSM_ROOT=/r/x\0", false),
            (b"XPSM_SERVICE=web\0PSM_ROOT=/r\0", false),
            (b"", false),
        ];
        for (env, want) in cases {
            assert_eq!(environ_names(env, "web", root), want, "{env:?}");
        }
        assert!(environ_has(b"A=1\0PSM_DAEMON=coordinator\0", DAEMON_MARK));
        assert!(!environ_has(b"PSM_DAEMONS=1\0", DAEMON_MARK));
    }
}
