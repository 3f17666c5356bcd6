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
    // /proc/<pid>/task/<tid>/children lists the children each thread forked;
    // a multi-threaded parent spreads them over its tasks.
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
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
}
