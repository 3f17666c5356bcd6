//! Stopping processes without ever hitting a stranger.
//!
//! Invariants, checked on every signal sent, not once up front:
//! - never pid 0, 1 or a negative pid (`identity::signallable`);
//! - a process is signalled only while its recorded identity matches;
//! - a recorded process-group leader is signalled as a group, so its
//!   grandchildren go with it, while it still holds its pid. If the leader
//!   is already gone, only members that prove they descend from it
//!   (`group::judge`: the marker psm set, or a proven parent) are signalled,
//!   one by one, each by its own identity; a reused pid means nothing is.

use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::group::{targets, Marker, Targets};
use super::identity::{signallable, Identity};

/// How often termination polls for the processes to be gone.
const POLL: Duration = Duration::from_millis(10);
/// How long to wait for the kernel to finish a SIGKILL before giving up.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// One process (and optionally its group) to stop.
#[derive(Debug, Clone)]
pub struct StopRequest {
    pub identity: Identity,
    /// The recorded process group. Honoured only when it equals the pid, i.e.
    /// the process is the leader psm made it with `setsid`.
    pub pgid: Option<i32>,
    /// The polite signal (SIGTERM unless configured otherwise).
    pub signal: Signal,
    /// How long after the polite signal before SIGKILL.
    pub grace: Duration,
    /// What the group's members carry once the leader is gone.
    pub marker: Marker,
}

/// What `terminate` found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// Nothing matching the record was running; nothing was signalled.
    AlreadyGone,
    /// Everything exited after the polite signal.
    Stopped,
    /// SIGKILL was needed.
    Killed,
    /// Still running after SIGKILL (uninterruptible sleep, or not ours to kill).
    Survived,
}

impl StopRequest {
    pub fn new(identity: Identity, pgid: Option<i32>, grace: Duration) -> Self {
        StopRequest {
            identity,
            pgid,
            signal: Signal::SIGTERM,
            grace,
            marker: Marker::none(),
        }
    }

    /// The marker psm set on the process it spawned (see `group`).
    pub fn with_marker(mut self, marker: Marker) -> Self {
        self.marker = marker;
        self
    }

    fn group(&self) -> Option<i32> {
        self.pgid
            .filter(|&g| g == self.identity.pid && signallable(g))
    }

    /// Everything this request still covers that runs right now.
    fn anything_alive(&self) -> bool {
        self.identity.is_alive()
            || self.group().is_some()
                && match targets(self.identity, &self.marker) {
                    Targets::Group(_) => true,
                    Targets::Members(members) => !members.is_empty(),
                    Targets::Nothing => false,
                }
    }

    fn send(&self, sig: Signal) -> bool {
        signal_marked(self.identity, self.pgid, &self.marker, sig)
    }

    fn wait_gone(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if !self.anything_alive() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL);
        }
    }
}

/// Sends `sig` to the recorded process, or to its whole group if it leads one,
/// without waiting. Members of a group whose leader is gone are signalled
/// only if they prove their descent (none can without a marker). Returns
/// whether anything was signalled. Never signals anything whose identity
/// does not match.
pub fn signal_tree(identity: Identity, pgid: Option<i32>, sig: Signal) -> bool {
    signal_marked(identity, pgid, &Marker::none(), sig)
}

/// `signal_tree` for a process psm spawned with `marker` in its environment:
/// members left in its group after it exited are found by the marker.
pub fn signal_marked(identity: Identity, pgid: Option<i32>, marker: &Marker, sig: Signal) -> bool {
    if !signallable(identity.pid) {
        return false;
    }
    let group = pgid.filter(|&g| g == identity.pid && signallable(g));
    if group.is_none() {
        return identity.is_alive() && kill(Pid::from_raw(identity.pid), sig).is_ok();
    }
    match targets(identity, marker) {
        // The leader still holds its pid, so the group is the one it made.
        Targets::Group(g) => killpg(Pid::from_raw(g), sig).is_ok(),
        Targets::Members(members) => {
            let mut any = false;
            for member in members {
                // Re-checked per member: it may have exited (and its pid been
                // reused) since the scan.
                if signallable(member.pid) && member.is_alive() {
                    any |= kill(Pid::from_raw(member.pid), sig).is_ok();
                }
            }
            any
        }
        Targets::Nothing => false,
    }
}

/// Stops the process (and its group): the polite signal, then SIGKILL after
/// the grace period. Blocks for at most `grace` + 2 s. Safe to call on a record
/// whose process is long gone or whose pid now belongs to someone else: then it
/// signals nothing and returns `AlreadyGone`.
pub fn terminate(req: &StopRequest) -> StopOutcome {
    if !signallable(req.identity.pid) || !req.anything_alive() {
        return StopOutcome::AlreadyGone;
    }
    if req.send(req.signal) && req.wait_gone(req.grace) {
        return StopOutcome::Stopped;
    }
    req.send(Signal::SIGKILL);
    if req.wait_gone(KILL_WAIT) {
        StopOutcome::Killed
    } else {
        StopOutcome::Survived
    }
}

/// Parses a signal name as written in configs: `TERM`, `SIGTERM`, `term`, `15`.
pub fn parse_signal(name: &str) -> Option<Signal> {
    if let Ok(n) = name.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("TERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("sigint"), Some(Signal::SIGINT));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("BOGUS"), None);
    }

    #[test]
    fn refuses_pid_one_and_below() {
        for pid in [-1, 0, 1] {
            let req = StopRequest::new(
                Identity { pid, start_time: 0 },
                Some(pid),
                Duration::from_millis(1),
            );
            assert_eq!(terminate(&req), StopOutcome::AlreadyGone);
        }
    }
}
