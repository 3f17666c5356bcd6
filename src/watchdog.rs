//! The watchdog: one synchronous check of the coordinator, then exit.
//!
//! Deliberately simpler than what it watches (Erlang's `heart`, launchd's
//! `StartInterval`): no actors, no threads. launchd or a systemd timer runs
//! it every 60 s. It reads the coordinator's record under the shared lock,
//! decides with a pure function ([`judge`]), and only when the verdict is not
//! `ok` acts:
//! - after `psm down` (its mark is on disk) it does nothing: verdict
//!   `stopped`, exit 0; the user stopped psm, and only `psm up` undoes that;
//! - a heartbeat is stale after twice the health interval the coordinator
//!   records, plus a minute ([`max_age_for`]); a stale coordinator is asked
//!   over its control socket first, and one that answers is left alone
//!   (verdict `responsive`): a slow heartbeat is not a hang;
//! - a coordinator whose identity matches that does not answer is killed
//!   with SIGKILL, never SIGTERM: SIGTERM means "stop every service", and a
//!   hung coordinator's services should keep running and be adopted by its
//!   successor;
//! - a process that merely reused the coordinator's pid is never signalled;
//! - a new coordinator is started with the config recorded in the old one's
//!   metadata; its own lock makes a second coordinator impossible, so the
//!   watchdog never works around it;
//! - the restart (count, reason, time) is recorded in the coordinator's record.
//!
//! One line per check is appended to `.logs/system-watchdog.log`.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::Serialize;
use serde_json::{json, Value};

use crate::coordinator::client;
use crate::coordinator::protocol::Request;
use crate::coordinator::{self, CoordinatorLock, DownMark, COORDINATOR_NAME, INTERVAL_KEY};
use crate::paths::Paths;
use crate::process::{signal_tree, Identity, ProcInfo};
use crate::registry::{ServiceKey, ServiceRecord, Store, StoreError};
use crate::time::now_millis;

/// Heartbeat age beyond which a coordinator that records no health
/// interval (an older psm) counts as stale.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(120);
/// What a heartbeat may be late beyond two intervals: a loaded machine, a
/// long registry write, a suspended laptop waking up.
const STALE_SLACK: Duration = Duration::from_secs(60);
/// How long to wait for the registry lock before reading without it.
const LOCK_PATIENCE: Duration = Duration::from_secs(2);
/// How long a coordinator that holds the lock has to answer a ping.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for a new coordinator's heartbeat.
const RECOVERY_WAIT: Duration = Duration::from_secs(10);
/// How long after the coordinator it started has exited the watchdog still
/// looks for another one (proved by the lock) whose heartbeat it may await.
const HOLDER_GRACE: Duration = Duration::from_millis(500);

/// What the watchdog concluded about the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    /// `psm down` stopped psm on purpose: nothing to do until `psm up`.
    Stopped,
    /// The heartbeat is stale but the coordinator answers: left alone.
    Responsive,
    /// The registry could not be read: nothing can be judged or done safely.
    Unknown,
    NotRegistered,
    PidDead,
    WrongProcess,
    StaleHealth,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(Value::as_str).unwrap_or("?"))
    }
}

/// The verdict with its reason, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Judgement {
    pub verdict: Verdict,
    pub reason: String,
}

/// Decides from what was observed: the coordinator's record, what the kernel
/// says about its pid right now, the current time and the allowed heartbeat age.
pub fn judge(
    record: Option<&ServiceRecord>,
    observed: Option<ProcInfo>,
    now: u64,
    max_age: Duration,
) -> Judgement {
    let j = |verdict, reason: String| Judgement { verdict, reason };
    let Some(record) = record else {
        return j(
            Verdict::NotRegistered,
            "no coordinator record in the registry".into(),
        );
    };
    let Some(pid) = record.pid else {
        return j(
            Verdict::NotRegistered,
            "the coordinator record has no pid".into(),
        );
    };
    let Some(info) = observed.filter(|i| !i.zombie) else {
        return j(Verdict::PidDead, format!("pid {pid} is not running"));
    };
    if record.pid_start_time != Some(info.start_time) {
        return j(
            Verdict::WrongProcess,
            format!("pid {pid} now belongs to another process (start time differs)"),
        );
    }
    let age = Duration::from_millis(now.saturating_sub(record.last_health_check));
    if age > max_age {
        return j(
            Verdict::StaleHealth,
            format!(
                "last heartbeat {} ago (max {})",
                humantime::format_duration(Duration::from_millis(age.as_millis() as u64)),
                humantime::format_duration(max_age)
            ),
        );
    }
    j(
        Verdict::Ok,
        format!("pid {pid} alive, heartbeat {}ms ago", age.as_millis()),
    )
}

/// The outcome of one watchdog run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub judgement: Judgement,
    /// What the watchdog did about it.
    pub action: String,
    /// True when the coordinator is healthy now (was, or was recovered).
    pub ok: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The config a new coordinator would start from is unusable (a FIFO,
    /// a directory, bad TOML): nothing was killed or started.
    #[error("{0}")]
    Config(String),
}

/// How old a heartbeat may be: `flag` if given, else twice the interval the
/// coordinator recorded plus a minute, else [`DEFAULT_MAX_AGE`].
pub fn max_age_for(record: Option<&ServiceRecord>, flag: Option<Duration>) -> Duration {
    let recorded = record
        .and_then(|r| r.metadata.get(INTERVAL_KEY))
        .and_then(Value::as_u64)
        .map(Duration::from_millis);
    match (flag, recorded) {
        (Some(max), _) => max,
        (None, Some(interval)) => interval.saturating_mul(2).saturating_add(STALE_SLACK),
        (None, None) => DEFAULT_MAX_AGE,
    }
}

/// Runs one check and, if needed, one recovery. `config` is used when the
/// coordinator's record does not name its config; `max_age` overrides the
/// staleness limit derived from the record.
pub fn check(
    paths: &Paths,
    config: PathBuf,
    max_age: Option<Duration>,
) -> Result<Report, WatchdogError> {
    if let Some(mark) = DownMark::read(paths) {
        let report = Report {
            judgement: Judgement {
                verdict: Verdict::Stopped,
                reason: mark.note,
            },
            action: "none: `psm up` starts psm again".into(),
            ok: true,
        };
        log_line(paths, &report);
        return Ok(report);
    }
    let store = Store::new(paths.clone());
    let key = ServiceKey::global(COORDINATOR_NAME);
    // A coordinator stopped while writing holds the registry lock: do not
    // wait on it forever; that coordinator is exactly what we are here for.
    let registry = match store.read_within(LOCK_PATIENCE) {
        Ok(r) => r,
        Err(e) => {
            let judgement = Judgement {
                verdict: Verdict::Unknown,
                reason: format!("{:#}", anyhow::Error::from(e)),
            };
            log_line(
                paths,
                &Report {
                    judgement: judgement.clone(),
                    action: "none: fix the registry first".into(),
                    ok: false,
                },
            );
            return Ok(Report {
                judgement,
                action: "none: fix the registry first".into(),
                ok: false,
            });
        }
    };
    let record = registry.get(&key).cloned();
    let observed = record.as_ref().and_then(|r| r.pid).and_then(ProcInfo::read);
    let max_age = max_age_for(record.as_ref(), max_age);
    let mut judgement = judge(record.as_ref(), observed, now_millis(), max_age);
    if judgement.verdict == Verdict::StaleHealth {
        if let Some(pid) = record.as_ref().and_then(|r| r.pid) {
            if answers(paths, pid) {
                judgement = Judgement {
                    verdict: Verdict::Responsive,
                    reason: format!("{}, but pid {pid} answers a ping", judgement.reason),
                };
            }
        }
    }
    let report = if matches!(judgement.verdict, Verdict::Ok | Verdict::Responsive) {
        Report {
            judgement,
            action: "none".into(),
            ok: true,
        }
    } else {
        recover(paths, &store, record.as_ref(), judgement, config)?
    };
    log_line(paths, &report);
    Ok(report)
}

/// Whether the coordinator `pid` answers a ping on the control socket
/// within [`PING_TIMEOUT`]. A stopped (SIGSTOP) or hung one does not: the
/// kernel accepts the connection, but nobody replies.
fn answers(paths: &Paths, pid: i32) -> bool {
    match client::request(paths, &Request::Ping, PING_TIMEOUT) {
        // A coordinator at its connection cap answers `busy` (not ok) with
        // its pid: flooded, not hung — its accept loop is running.
        Ok(r) => {
            let busy = r.data.get("busy").and_then(Value::as_bool) == Some(true);
            (r.ok || busy) && r.data.get("pid").and_then(Value::as_i64) == Some(i64::from(pid))
        }
        Err(_) => false,
    }
}

fn recover(
    paths: &Paths,
    store: &Store,
    record: Option<&ServiceRecord>,
    judgement: Judgement,
    default_config: PathBuf,
) -> Result<Report, WatchdogError> {
    let config = record
        .and_then(|r| r.metadata.get("config"))
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .unwrap_or(default_config);
    // The new coordinator would refuse a config it cannot read (a FIFO, a
    // directory, bad TOML) and die in the background: refuse it here, at
    // once and in one line, before ending the old one. A missing file is the
    // coordinator's to judge (the default one means "no services").
    match crate::config::Config::load(&config) {
        Ok(_) | Err(crate::config::ConfigError::Missing(_)) => {}
        Err(e) => {
            let problem = format!("{:#}", anyhow::Error::from(e));
            log_line(
                paths,
                &Report {
                    judgement,
                    action: format!("none: {problem}"),
                    ok: false,
                },
            );
            return Err(WatchdogError::Config(problem));
        }
    }
    let mut actions = Vec::new();
    // Only a hung coordinator is still there to end, and only if it is the
    // very process recorded (`wrong_process` means a stranger has the pid).
    if judgement.verdict == Verdict::StaleHealth {
        if let Some(identity) = record.and_then(ServiceRecord::identity) {
            if signal_tree(identity, None, Signal::SIGKILL) {
                actions.push(format!("killed hung coordinator pid {}", identity.pid));
                wait_gone(identity);
            }
        }
    }
    // A coordinator may hold the lock while its record is missing or stale
    // (someone edited the registry, or it was started by hand): if it
    // answers, it is alive and beating soon; if not, it is hung.
    if let Some(holder) = CoordinatorLock::holder(paths).flatten() {
        // Only an answer from the holder itself counts: whatever else
        // listens on the socket's path says nothing about the holder.
        if answers(paths, holder) {
            return Ok(Report {
                judgement,
                action: format!("coordinator pid {holder} holds the lock and answers; left alone"),
                ok: true,
            });
        }
        // Holding the lock is what makes it the coordinator, but the file
        // may still name a dead predecessor's pid, now a stranger's, in the
        // instant before a new holder overwrites it: only a holder whose
        // identity the lock file and the kernel prove is signalled.
        match CoordinatorLock::proven_holder(paths).filter(|id| id.pid == holder) {
            Some(identity) => {
                if signal_tree(identity, None, Signal::SIGKILL) {
                    actions.push(format!("killed unresponsive coordinator pid {holder}"));
                    wait_gone(identity);
                }
            }
            None => actions.push(format!(
                "left pid {holder} alone: the lock file does not prove it holds the lock"
            )),
        }
    }
    // A killed coordinator's lock outlives its pid a moment: a successor
    // started in that moment finds it held and leaves at once.
    CoordinatorLock::wait_leaving(paths);
    let started = now_millis();
    // With --respect-down: should `psm down` run while we recover, the new
    // coordinator sees its mark and starts nothing.
    let mut spawned = coordinator::spawn_background(paths, &config, true);
    let healthy = match &mut spawned {
        Ok(child) => {
            actions.push(format!("started coordinator pid {}", child.id()));
            wait_heartbeat(paths, store, started, child)
        }
        Err(e) => {
            actions.push(format!("could not start a coordinator: {e}"));
            None
        }
    };
    if let (None, Some(mark)) = (healthy, DownMark::read(paths)) {
        actions.push("`psm down` came in meanwhile: it started nothing".into());
        return Ok(Report {
            judgement: Judgement {
                verdict: Verdict::Stopped,
                reason: mark.note,
            },
            action: actions.join("; "),
            ok: true,
        });
    }
    let ok = healthy.is_some();
    if let Some(pid) = healthy {
        actions.push(format!("coordinator pid {pid} healthy"));
        record_restart(store, &judgement)?;
    } else if let Ok(child) = &mut spawned {
        let what = match child.try_wait() {
            Ok(Some(status)) => format!("it exited ({status}) without a heartbeat"),
            _ => format!("no heartbeat within {}s", RECOVERY_WAIT.as_secs()),
        };
        actions.push(format!("{what}; see {}", paths.coordinator_log().display()));
    }
    Ok(Report {
        judgement,
        action: actions.join("; "),
        ok,
    })
}

/// SIGKILL is not instant for a stopped or exiting process; give it 2 s.
fn wait_gone(identity: Identity) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while identity.is_alive() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a live coordinator whose heartbeat is newer than `since`; stops
/// early when `child` has exited and `psm down` has left its mark (the child
/// then started nothing on purpose).
fn wait_heartbeat(
    paths: &Paths,
    store: &Store,
    since: u64,
    child: &mut std::process::Child,
) -> Option<i32> {
    let key = ServiceKey::global(COORDINATOR_NAME);
    let deadline = Instant::now() + RECOVERY_WAIT;
    let mut child_gone: Option<Instant> = None;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            if DownMark::read(paths).is_some() {
                return None;
            }
            // Ours died (see its log) or found another holding the lock:
            // only a holder proved to be a coordinator may still beat. One
            // that took the lock a moment ago gets a moment to write itself.
            let since = *child_gone.get_or_insert_with(Instant::now);
            if since.elapsed() >= HOLDER_GRACE && CoordinatorLock::proven_holder(paths).is_none() {
                return None;
            }
        }
        if let Ok(reg) = store.read_within(LOCK_PATIENCE) {
            if let Some(r) = reg.get(&key) {
                if r.last_health_check >= since && r.is_alive() {
                    return r.pid;
                }
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Counts the restart in the coordinator's record; the coordinator keeps
/// metadata it did not write, so the count survives its heartbeats.
fn record_restart(store: &Store, judgement: &Judgement) -> Result<(), WatchdogError> {
    let key = ServiceKey::global(COORDINATOR_NAME);
    store.update_if(|reg| {
        let Some(r) = reg.get_mut(&key) else {
            return Ok::<_, StoreError>(((), false));
        };
        let count = r.metadata.get("watchdogRestarts").and_then(Value::as_u64).unwrap_or(0) + 1;
        r.metadata.insert("watchdogRestarts".into(), Value::from(count));
        r.metadata.insert(
            "lastWatchdogRestart".into(),
            json!({ "time": now_millis(), "verdict": judgement.verdict, "reason": judgement.reason }),
        );
        Ok(((), true))
    })?;
    Ok(())
}

/// One line per check: timestamp, verdict, reason, action.
fn log_line(paths: &Paths, report: &Report) {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let line = format!(
        "{stamp} verdict={} reason={:?} action={:?}\n",
        report.judgement.verdict, report.judgement.reason, report.action
    );
    // A log that cannot be written must not stop the recovery it describes.
    if let Ok(mut f) = crate::process::open_log(&paths.watchdog_log()) {
        let _ = f.write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Scope;

    const NOW: u64 = 1_000_000;
    const MAX: Duration = Duration::from_secs(120);

    fn record(pid: Option<i32>, start: u64, beat: u64) -> ServiceRecord {
        let mut r = ServiceRecord::new(
            &Scope::Global,
            "psm coordinator",
            Identity {
                pid: 1234,
                start_time: start,
            },
            0,
        );
        r.pid = pid;
        r.last_health_check = beat;
        r
    }

    fn info(start: u64, zombie: bool) -> Option<ProcInfo> {
        Some(ProcInfo {
            start_time: start,
            pgid: 1234,
            zombie,
        })
    }

    #[test]
    fn verdict_table() {
        let fresh = NOW - 1_000;
        let stale = NOW - 121_000;
        let table: Vec<(Option<ServiceRecord>, Option<ProcInfo>, Verdict)> = vec![
            (None, None, Verdict::NotRegistered),
            (Some(record(None, 7, fresh)), None, Verdict::NotRegistered),
            (Some(record(Some(1234), 7, fresh)), None, Verdict::PidDead),
            (
                Some(record(Some(1234), 7, fresh)),
                info(7, true),
                Verdict::PidDead,
            ),
            (
                Some(record(Some(1234), 7, fresh)),
                info(8, false),
                Verdict::WrongProcess,
            ),
            (
                Some(record(Some(1234), 7, stale)),
                info(8, false),
                Verdict::WrongProcess,
            ),
            (
                Some(record(Some(1234), 7, stale)),
                info(7, false),
                Verdict::StaleHealth,
            ),
            (
                Some(record(Some(1234), 7, fresh)),
                info(7, false),
                Verdict::Ok,
            ),
            (
                Some(record(Some(1234), 7, NOW + 5)),
                info(7, false),
                Verdict::Ok,
            ),
        ];
        for (i, (rec, observed, expected)) in table.into_iter().enumerate() {
            let j = judge(rec.as_ref(), observed, NOW, MAX);
            assert_eq!(j.verdict, expected, "row {i}: {}", j.reason);
            assert!(!j.reason.is_empty());
        }
    }

    #[test]
    fn max_age_follows_the_recorded_interval_unless_given() {
        let with = |ms: Option<u64>| {
            let mut r = record(Some(1234), 7, NOW);
            if let Some(ms) = ms {
                r.metadata.insert(INTERVAL_KEY.into(), Value::from(ms));
            }
            r
        };
        let s = Duration::from_secs;
        let table: [(Option<ServiceRecord>, Option<Duration>, Duration); 6] = [
            (None, None, DEFAULT_MAX_AGE),
            (Some(with(None)), None, DEFAULT_MAX_AGE),
            (Some(with(Some(15_000))), None, s(90)),
            (Some(with(Some(300_000))), None, s(660)),
            (Some(with(Some(100))), None, Duration::from_millis(60_200)),
            (Some(with(Some(300_000))), Some(s(5)), s(5)),
        ];
        for (i, (rec, flag, expected)) in table.into_iter().enumerate() {
            assert_eq!(max_age_for(rec.as_ref(), flag), expected, "row {i}");
        }
        let absurd = with(Some(u64::MAX));
        // No overflow panic for an absurd recorded interval.
        assert!(max_age_for(Some(&absurd), None) > Duration::from_millis(u64::MAX));
    }

    #[test]
    fn verdicts_print_in_snake_case() {
        assert_eq!(Verdict::StaleHealth.to_string(), "stale_health");
        assert_eq!(Verdict::NotRegistered.to_string(), "not_registered");
    }
}
