//! Process identity: a pid alone is not an identity, because pids are reused.
//!
//! psm records the kernel's start time of a process next to its pid
//! (`pidStartTime`). A process is "the one we recorded" only while both match;
//! anything else — no such pid, another start time, a zombie — is dead to psm.
//! The start time is an opaque number: clock ticks since boot on Linux
//! (`/proc/<pid>/stat` field 22), microseconds since the epoch on macOS.

use serde::{Deserialize, Serialize};

/// What the kernel says about one pid right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    pub start_time: u64,
    pub pgid: i32,
    /// Exited but not yet reaped: it can no longer do anything, so it is dead.
    pub zombie: bool,
}

/// A pid together with the start time that makes it unambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub pid: i32,
    pub start_time: u64,
}

impl Identity {
    /// The identity of a live process, or `None` if there is none at `pid`.
    /// Zombies are included: a child we just spawned may already have exited,
    /// and its identity is still the one to record.
    pub fn of(pid: i32) -> Option<Identity> {
        if pid <= 0 {
            return None;
        }
        ProcInfo::read(pid).map(|info| Identity {
            pid,
            start_time: info.start_time,
        })
    }

    /// True while this exact process runs (same pid, same start time, not a zombie).
    pub fn is_alive(&self) -> bool {
        self.pid > 0
            && matches!(ProcInfo::read(self.pid), Some(info) if info.start_time == self.start_time && !info.zombie)
    }
}

/// True when `pid` may ever be signalled by psm: never 0 (our own group),
/// 1 (init), or a negative number (a whole group, or every process).
pub fn signallable(pid: i32) -> bool {
    pid > 1
}

#[cfg(target_os = "linux")]
impl ProcInfo {
    pub fn read(pid: i32) -> Option<ProcInfo> {
        read_stat_bytes(pid, parse_stat)
    }
}

/// The stat fields of `pid`, if it exists.
#[cfg(target_os = "linux")]
pub(crate) fn read_stat(pid: i32) -> Option<Stat> {
    read_stat_bytes(pid, parse_stat_fields)
}

#[cfg(target_os = "linux")]
fn read_stat_bytes<T>(pid: i32, parse: fn(&[u8]) -> Option<T>) -> Option<T> {
    use std::io::Read;
    // One read into a stack buffer: `fs::read` would stat the file (size 0
    // in /proc) and grow its buffer over several reads. A stat line is a
    // few hundred bytes; `status` does this once per record, so it counts.
    let mut buf = [0u8; 1024];
    let mut file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let n = file.read(&mut buf).ok()?;
    parse(&buf[..n])
}

/// What psm reads of a process to judge descent: Linux's `/proc/<pid>/stat`
/// fields, macOS's `proc_bsdinfo` plus `getsid`.
#[cfg_attr(not(any(target_os = "linux", target_os = "macos")), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub start_time: u64,
    pub zombie: bool,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted from the last `)`.
#[cfg(target_os = "linux")]
pub(crate) fn parse_stat_fields(stat: &[u8]) -> Option<Stat> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3).copied();
    let state = field(3)?;
    Some(Stat {
        ppid: field(4)?.parse().ok()?,
        pgid: field(5)?.parse().ok()?,
        sid: field(6)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
        zombie: state == "Z" || state == "X",
    })
}

#[cfg(target_os = "linux")]
fn parse_stat(stat: &[u8]) -> Option<ProcInfo> {
    parse_stat_fields(stat).map(|s| ProcInfo {
        start_time: s.start_time,
        pgid: s.pgid,
        zombie: s.zombie,
    })
}

#[cfg(target_os = "macos")]
impl ProcInfo {
    pub fn read(pid: i32) -> Option<ProcInfo> {
        let info = super::macos::bsd_info(pid)?;
        Some(ProcInfo {
            start_time: super::macos::start_time(&info),
            pgid: info.pbi_pgid as i32,
            zombie: info.pbi_status == libc::SZOMB,
        })
    }
}

/// The descent fields of `pid`, if it exists (see `macos::stat`).
#[cfg(target_os = "macos")]
pub(crate) fn read_stat(pid: i32) -> Option<Stat> {
    super::macos::stat(pid)
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
impl ProcInfo {
    pub fn read(_pid: i32) -> Option<ProcInfo> {
        None
    }
}

/// True while process group `pgid` has any member (zombies included): a
/// signal-0 probe, one syscall, no scan.
pub fn group_exists(pgid: i32) -> bool {
    use nix::errno::Errno;
    signallable(pgid)
        && nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None) != Err(Errno::ESRCH)
}

/// Services the coordinator of `root` spawned that are still running, as
/// (label, identity): process-group leaders whose environment carries
/// `PSM_ROOT=<root>` and `PSM_SERVICE=<label>` (the coordinator sets both).
/// This finds a service whose coordinator died before its record reached the
/// registry, so the next coordinator adopts it instead of starting a twin.
#[cfg(target_os = "linux")]
pub fn spawned_services(root: &std::path::Path) -> Vec<(String, Identity)> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let want_root = [b"PSM_ROOT=".as_slice(), root.as_os_str().as_bytes()].concat();
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let info = ProcInfo::read(pid).filter(|i| i.pgid == pid && !i.zombie)?;
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let mut vars = environ.split(|&b| b == 0);
            let mut label = None;
            let mut ours = false;
            for var in &mut vars {
                if var == want_root.as_slice() {
                    ours = true;
                } else if let Some(l) = var.strip_prefix(b"PSM_SERVICE=") {
                    label = Some(String::from_utf8_lossy(l).into_owned());
                }
            }
            let identity = Identity {
                pid,
                start_time: info.start_time,
            };
            ours.then_some(label?).map(|l| (l, identity))
        })
        .collect()
}

/// macOS: the same search through libproc's process list and each
/// candidate's `KERN_PROCARGS2` environment.
#[cfg(target_os = "macos")]
pub fn spawned_services(root: &std::path::Path) -> Vec<(String, Identity)> {
    use std::os::unix::ffi::OsStrExt;
    super::macos::all_pids()
        .into_iter()
        .filter_map(|pid| {
            let info = ProcInfo::read(pid).filter(|i| i.pgid == pid && !i.zombie)?;
            let args = super::macos::procargs(pid)?;
            let ours = super::procargs::env_var(&args, "PSM_ROOT")? == root.as_os_str().as_bytes();
            let label = super::procargs::env_var(&args, "PSM_SERVICE")?;
            let identity = Identity {
                pid,
                start_time: info.start_time,
            };
            ours.then(|| (String::from_utf8_lossy(label).into_owned(), identity))
        })
        .collect()
}

/// Without a process table there is no environment to read; only records
/// are adopted.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn spawned_services(_root: &std::path::Path) -> Vec<(String, Identity)> {
    Vec::new()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let line =
            b"4242 (a) b (c)) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 200";
        let info = parse_stat(line).unwrap();
        assert_eq!(info.pgid, 4240);
        assert_eq!(info.start_time, 98765);
        assert!(!info.zombie);
    }

    #[test]
    fn zombie_state_is_reported() {
        let line = b"7 (sh) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 555 0 0";
        assert!(parse_stat(line).unwrap().zombie);
    }

    #[test]
    fn own_identity_is_alive_and_a_wrong_start_time_is_not() {
        let me = Identity::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let impostor = Identity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!impostor.is_alive());
    }

    #[test]
    fn never_signallable() {
        for pid in [-5, -1, 0, 1] {
            assert!(!signallable(pid), "{pid}");
        }
        assert!(signallable(2));
    }
}
