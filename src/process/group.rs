//! Which processes of a group psm started it may signal: the proof rule.
//!
//! A pid or pgid alone proves nothing. Linux never hands out a pid number
//! while a process, process group or session of that number exists (the
//! kernel's `struct pid` stays in its table). So, for a recorded group
//! leader (pid + start time) that psm made a session leader with `setsid`:
//! - the number still runs as the recorded leader (alive or a zombie): the
//!   group is the one psm started, so the whole group may be signalled;
//! - the number runs as another process (another start time): the recorded
//!   group ended before that process got the number, so nothing is signalled;
//! - nobody holds the number, but a group of that number exists: it is ours
//!   only if it never emptied, and that cannot be seen. So each member must
//!   prove itself: same session and group as the recorded leader (`setsid`
//!   made them equal), started no earlier than the leader, and either the
//!   environment marker psm set when it spawned the service, or a parent
//!   that proved itself (a child is never older than its parent).
//!
//! macOS reads the same fields through libproc (`proc_listpgrppids`,
//! `proc_bsdinfo`), the session through `getsid`, and the marker from
//! `KERN_PROCARGS2`; its kernel, like Linux, skips a pid number still in use
//! as a process, group or session id when it forks. Elsewhere no member can
//! prove itself: nothing but a matching leader is signalled.

use super::identity::{group_exists, signallable, Identity, ProcInfo};

/// The environment variables psm sets on a service it spawns, inherited by
/// its descendants; a member carrying all of them was started by that
/// service. An empty marker proves nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marker {
    vars: Vec<(String, Vec<u8>)>,
}

/// `PSM_ROOT`: the root whose psm spawned the process.
pub const ROOT_VAR: &str = "PSM_ROOT";
/// `PSM_SERVICE`: the instance label of a coordinator service.
pub const SERVICE_VAR: &str = "PSM_SERVICE";
/// `PSM_SESSION_ID`: the session a session service belongs to.
pub const SESSION_VAR: &str = "PSM_SESSION_ID";
/// `PSM_SESSION_SERVICE`: the name of a service `psm session spawn` started.
pub const SESSION_SERVICE_VAR: &str = "PSM_SESSION_SERVICE";

impl Marker {
    /// Proves nothing: only a matching leader is ever signalled.
    pub fn none() -> Self {
        Marker::default()
    }

    /// A coordinator service of `root` with instance label `label`.
    pub fn service(root: &std::path::Path, label: &str) -> Self {
        use std::os::unix::ffi::OsStrExt;
        Marker {
            vars: vec![
                (ROOT_VAR.into(), root.as_os_str().as_bytes().to_vec()),
                (SERVICE_VAR.into(), label.as_bytes().to_vec()),
            ],
        }
    }

    /// A service `psm session spawn` started as `name` in `session` of `root`.
    pub fn session_service(root: &std::path::Path, session: &str, name: &str) -> Self {
        use std::os::unix::ffi::OsStrExt;
        Marker {
            vars: vec![
                (ROOT_VAR.into(), root.as_os_str().as_bytes().to_vec()),
                (SESSION_VAR.into(), session.as_bytes().to_vec()),
                (SESSION_SERVICE_VAR.into(), name.as_bytes().to_vec()),
            ],
        }
    }

    /// The variables to put in the environment of the process psm spawns.
    pub fn env(&self) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        use std::os::unix::ffi::OsStringExt;
        self.vars
            .iter()
            .map(|(k, v)| (k.into(), std::ffi::OsString::from_vec(v.clone())))
            .collect()
    }

    /// True when the NUL-separated `environ` holds every variable of the
    /// marker with its value. An empty marker matches nothing.
    pub fn matches(&self, environ: &[u8]) -> bool {
        !self.vars.is_empty()
            && self.vars.iter().all(|(k, v)| {
                environ.split(|&b| b == 0).any(|var| {
                    var.strip_prefix(k.as_bytes())
                        .and_then(|rest| rest.strip_prefix(b"="))
                        == Some(v.as_slice())
                })
            })
    }
}

/// Who holds the recorded leader's pid number right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// No process has that pid.
    Nobody,
    /// The recorded leader itself (same start time), possibly a zombie.
    Leader { zombie: bool },
    /// Another process: the pid was reused.
    Other,
}

/// One process that may belong to the group, as read from the process table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub identity: Identity,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub zombie: bool,
    /// Its environment carries the service's marker.
    pub marked: bool,
}

/// What may be signalled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// The whole group, with `killpg`: its leader still holds the number.
    Group(i32),
    /// These processes, one by one, each re-checked by identity.
    Members(Vec<Identity>),
    /// Nothing: the group is gone or cannot be proved ours.
    Nothing,
}

/// The proof rule (see the module docs). `candidates` is what the process
/// table showed at this moment; the caller may pass every process or only
/// those in the group.
pub fn judge(leader: Identity, holder: Holder, candidates: &[Candidate]) -> Targets {
    let pgid = leader.pid;
    if !signallable(pgid) {
        return Targets::Nothing;
    }
    let in_group =
        |c: &&Candidate| c.pgid == pgid && !c.zombie && c.identity.start_time >= leader.start_time;
    match holder {
        Holder::Other => Targets::Nothing,
        Holder::Leader { zombie: false } => Targets::Group(pgid),
        // The unreaped leader still holds the number, so every member of the
        // group is ours; but a group of zombies only would "exist" forever
        // for killpg, so the live members are named one by one.
        Holder::Leader { zombie: true } => Targets::Members(
            candidates
                .iter()
                .filter(in_group)
                .map(|c| c.identity)
                .collect(),
        ),
        Holder::Nobody => {
            let eligible: Vec<&Candidate> = candidates
                .iter()
                .filter(in_group)
                .filter(|c| c.sid == pgid)
                .collect();
            let mut proven: Vec<Identity> = eligible
                .iter()
                .filter(|c| c.marked)
                .map(|c| c.identity)
                .collect();
            // Parenthood: a child of a proven member, no older than it.
            loop {
                let before = proven.len();
                for c in &eligible {
                    let parent_proven = proven
                        .iter()
                        .any(|p| p.pid == c.ppid && p.start_time <= c.identity.start_time);
                    if parent_proven && !proven.contains(&c.identity) {
                        proven.push(c.identity);
                    }
                }
                if proven.len() == before {
                    break;
                }
            }
            if proven.is_empty() {
                Targets::Nothing
            } else {
                Targets::Members(proven)
            }
        }
    }
}

/// What may be signalled of the group `leader` leads, by the proof rule,
/// as the kernel shows it at this moment.
pub fn targets(leader: Identity, marker: &Marker) -> Targets {
    if !signallable(leader.pid) {
        return Targets::Nothing;
    }
    let holder = match ProcInfo::read(leader.pid) {
        None => Holder::Nobody,
        Some(info) if info.start_time == leader.start_time => Holder::Leader {
            zombie: info.zombie,
        },
        Some(_) => Holder::Other,
    };
    let candidates = match holder {
        // The decision needs no member list: spare the process-table scan.
        Holder::Other | Holder::Leader { zombie: false } => Vec::new(),
        // An empty group is the common case: one signal-0 probe says so.
        _ if !group_exists(leader.pid) => Vec::new(),
        _ => group_candidates(leader.pid, marker),
    };
    judge(leader, holder, &candidates)
}

/// Every live member of the group `leader` leads, while it still holds its
/// pid (empty otherwise): the processes a health check may credit it with.
pub fn live_members(leader: Identity) -> Vec<Identity> {
    match targets(leader, &Marker::none()) {
        Targets::Group(g) => group_candidates(g, &Marker::none())
            .into_iter()
            .filter(|c| !c.zombie && c.identity.start_time >= leader.start_time)
            .map(|c| c.identity)
            .collect(),
        Targets::Members(members) => members,
        Targets::Nothing => Vec::new(),
    }
}

/// Every process now in group `pgid`, with whether it carries `marker`.
#[cfg(any(target_os = "linux", target_os = "macos"))]
fn group_candidates(pgid: i32, marker: &Marker) -> Vec<Candidate> {
    group_pids(pgid)
        .into_iter()
        .filter_map(|pid| {
            let stat = super::identity::read_stat(pid).filter(|s| s.pgid == pgid)?;
            // Read only for group members: a few environments, not one per process.
            let marked = super::tree::environ(pid).is_some_and(|environ| marker.matches(&environ));
            Some(Candidate {
                identity: Identity {
                    pid,
                    start_time: stat.start_time,
                },
                ppid: stat.ppid,
                pgid: stat.pgid,
                sid: stat.sid,
                zombie: stat.zombie,
                marked,
            })
        })
        .collect()
}

/// Linux has no per-group list: every pid, filtered by group above.
#[cfg(target_os = "linux")]
fn group_pids(_pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// macOS lists a group's pids directly (`proc_listpgrppids`).
#[cfg(target_os = "macos")]
fn group_pids(pgid: i32) -> Vec<i32> {
    super::macos::group_pids(pgid)
}

/// Without a process table to scan, no member can prove itself.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn group_candidates(_pgid: i32, _marker: &Marker) -> Vec<Candidate> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEADER: Identity = Identity {
        pid: 100,
        start_time: 1000,
    };

    fn cand(pid: i32, start: u64, ppid: i32, pgid: i32, sid: i32, marked: bool) -> Candidate {
        Candidate {
            identity: Identity {
                pid,
                start_time: start,
            },
            ppid,
            pgid,
            sid,
            zombie: false,
            marked,
        }
    }

    fn pids(t: Targets) -> Vec<i32> {
        match t {
            Targets::Members(m) => {
                let mut p: Vec<i32> = m.iter().map(|i| i.pid).collect();
                p.sort();
                p
            }
            Targets::Group(g) => vec![-g],
            Targets::Nothing => vec![],
        }
    }

    #[test]
    fn proof_table() {
        let ours = cand(101, 1001, 1, 100, 100, true);
        let unmarked_child_of_ours = cand(102, 1002, 101, 100, 100, false);
        let grandchild = cand(103, 1003, 102, 100, 100, false);
        let orphan_unmarked = cand(104, 1004, 1, 100, 100, false);
        let shell_job = cand(105, 1005, 1, 100, 77, true); // another session
        let older = cand(106, 999, 1, 100, 100, true); // older than the leader
        let other_group = cand(107, 1007, 1, 200, 100, true);
        let child_older_than_parent = cand(108, 1000, 101, 100, 100, false);
        let mut zombie = cand(109, 1009, 1, 100, 100, true);
        zombie.zombie = true;
        let all = [
            ours,
            unmarked_child_of_ours,
            grandchild,
            orphan_unmarked,
            shell_job,
            older,
            other_group,
            child_older_than_parent,
            zombie,
        ];
        type Case<'a> = (&'a str, Identity, Holder, Vec<Candidate>, Vec<i32>);
        let cases: Vec<Case> = vec![
            (
                "live leader: the group",
                LEADER,
                Holder::Leader { zombie: false },
                all.to_vec(),
                vec![-100],
            ),
            (
                "pid reused: nothing",
                LEADER,
                Holder::Other,
                all.to_vec(),
                vec![],
            ),
            (
                "zombie leader: every live member no older than it",
                LEADER,
                Holder::Leader { zombie: true },
                all.to_vec(),
                vec![101, 102, 103, 104, 105, 108],
            ),
            (
                "nobody: marked members and their descendants",
                LEADER,
                Holder::Nobody,
                all.to_vec(),
                vec![101, 102, 103],
            ),
            (
                "nobody, no marker anywhere: nothing",
                LEADER,
                Holder::Nobody,
                vec![orphan_unmarked],
                vec![],
            ),
            (
                "a stranger's job in its own session",
                LEADER,
                Holder::Nobody,
                vec![shell_job],
                vec![],
            ),
            (
                "pid 1 is never a group",
                Identity {
                    pid: 1,
                    start_time: 0,
                },
                Holder::Leader { zombie: false },
                vec![],
                vec![],
            ),
            (
                "pid 0 is never a group",
                Identity {
                    pid: 0,
                    start_time: 0,
                },
                Holder::Nobody,
                vec![],
                vec![],
            ),
        ];
        for (what, leader, holder, candidates, want) in cases {
            assert_eq!(pids(judge(leader, holder, &candidates)), want, "{what}");
        }
    }

    /// Kills and reaps a process on drop, so a failed assert leaves nothing.
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    struct Reaped(i32);

    #[cfg(any(target_os = "linux", target_os = "macos"))]
    impl Drop for Reaped {
        fn drop(&mut self) {
            // SAFETY: plain syscalls on a pid this test started.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }

    /// A member an exited leader left in its group is found through the
    /// process table and proves itself by psm's marker; another service's
    /// marker proves nothing (Linux: /proc; macOS: libproc and getsid).
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    #[test]
    fn an_exited_leaders_marked_member_is_found_and_a_foreign_marker_is_not() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let marker = Marker::service(dir.path(), "web");
        let pidfile = dir.path().join("member");
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(format!("sleep 60 & echo $! > '{}'", pidfile.display()))
            .envs(marker.env());
        // SAFETY: setsid is async-signal-safe and touches no parent memory.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(drop)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().unwrap();
        let leader = Identity::of(child.id() as i32).unwrap();
        // The leader writes the member's pid, then exits; reaped, its number is free.
        child.wait().unwrap();
        let member_pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let _guard = Reaped(member_pid);
        let member = Identity::of(member_pid).unwrap();
        assert_eq!(
            targets(leader, &marker),
            Targets::Members(vec![member]),
            "the marked member of the dead leader's group"
        );
        assert_eq!(
            targets(leader, &Marker::service(dir.path(), "other")),
            Targets::Nothing,
            "another service's marker"
        );
    }

    #[test]
    fn markers_match_whole_variables_only() {
        let m = Marker::service(std::path::Path::new("/r"), "web");
        assert!(m.matches(b"A=1\0PSM_ROOT=/r\0PSM_SERVICE=web\0"));
        assert!(!m.matches(b"PSM_ROOT=/r\0PSM_SERVICE=web2\0"));
        assert!(!m.matches(b"PSM_ROOT=/r/x\0PSM_SERVICE=web\0"));
        assert!(!m.matches(b"PSM_ROOT=/r\0"));
        assert!(!m.matches(b"XPSM_ROOT=/r\0PSM_SERVICE=web\0"));
        assert!(!Marker::none().matches(b"PSM_ROOT=/r\0"));
        let s = Marker::session_service(std::path::Path::new("/r"), "s1", "db");
        assert!(s.matches(b"PSM_SESSION_SERVICE=db\0PSM_SESSION_ID=s1\0PSM_ROOT=/r"));
    }
}
