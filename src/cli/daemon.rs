//! The commands that run or talk to the coordinator: `coordinator`, `up`,
//! `down`, `start`, `stop`, `restart`, `reload`, `logs`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use super::args::{ConfigArgs, CoordinatorArgs, LogsArgs, TargetArgs};
use super::{output, CliError, CliResult};
use crate::config::Config;
use crate::coordinator::client::{self, ClientError};
use crate::coordinator::protocol::{Request, Response, Target};
use crate::coordinator::{
    self, CoordinatorLock, DownMark, Outcome, Settings, UpDownLock, COORDINATOR_NAME,
};
use crate::input;
use crate::paths::Paths;
use crate::process::{signal_tree, Identity};
use crate::registry::{ServiceKey, ServiceRecord, StateManager, Store};
use crate::supervisor::Extensions;

/// How long `up` waits for a new coordinator to answer.
const UP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a control request may take (`stop` waits for its service to stop).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `up` or `down` waits for the other to finish: a `down` may wait
/// out long stop timeouts.
const UPDOWN_PATIENCE: Duration = Duration::from_secs(300);
/// How long the coordinator has to acknowledge `down` (it replies at once).
const DOWN_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// What `down` allows beyond the longest stop timeout: the last registry
/// writes and the exit of a coordinator on a loaded machine.
const DOWN_SLACK: Duration = Duration::from_secs(10);
/// The longest `down` waits before it SIGKILLs the coordinator.
const DOWN_WAIT_MAX: Duration = Duration::from_secs(3600);

pub(super) fn config_path(paths: &Paths, args: &ConfigArgs) -> PathBuf {
    resolve_config(paths, args.config.as_deref())
}

/// An explicit config (relative to the current directory) or `<root>/psm.toml`.
pub(super) fn resolve_config(paths: &Paths, flag: Option<&Path>) -> PathBuf {
    match flag {
        Some(p) if p.is_absolute() => p.to_path_buf(),
        Some(p) => std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf()),
        None => paths.default_config(),
    }
}

/// Loads the config up front so a bad one is one clear line, not a daemon
/// that dies in the background. A missing default config means no services;
/// a missing explicit one is an error.
fn load_config(path: &Path, explicit: bool) -> Result<Config, CliError> {
    if !path.exists() && !explicit {
        return Ok(Config::empty());
    }
    Config::load(path).map_err(|e| CliError::Failed(e.into()))
}

fn already_running(pid: Option<i32>) {
    match pid {
        Some(pid) => eprintln!("psm: already running (pid {pid})"),
        None => eprintln!("psm: already running"),
    }
}

pub fn run_coordinator(paths: &Paths, args: &CoordinatorArgs, extensions: Extensions) -> CliResult {
    let config_path = config_path(paths, &args.config);
    let config = load_config(&config_path, args.config.config.is_some())?;
    let settings = Settings {
        paths: paths.clone(),
        config_path,
        config,
        extensions,
        respect_down: args.respect_down,
    };
    match coordinator::run(settings)? {
        Outcome::Stopped => Ok(ExitCode::SUCCESS),
        // launchd reads a non-zero exit as a crash; another coordinator
        // being in charge is not one.
        Outcome::AlreadyRunning(pid) => {
            already_running(pid);
            Ok(ExitCode::SUCCESS)
        }
        // A decision, not a failure: exit 0 so no agent retries.
        Outcome::StayedDown(mark) => {
            eprintln!(
                "psm: not starting: {}; `psm up` starts psm again",
                mark.note
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn up(paths: &Paths, manager: &StateManager, args: &ConfigArgs) -> CliResult {
    let config_path = config_path(paths, args);
    let config = load_config(&config_path, args.config.is_some())?;
    let _serial = UpDownLock::acquire(paths, UPDOWN_PATIENCE)?;
    // `up` is the user's word against an earlier `down`.
    let was_down = DownMark::read(paths).is_some();
    if was_down {
        DownMark::clear(paths)?;
    }
    let mut holder = CoordinatorLock::holder(paths);
    if let (true, Some(pid)) = (was_down, holder) {
        // A `down` may still be under way: that coordinator is leaving, so
        // wait for it rather than report it as running.
        if let Some(identity) = pid.and_then(Identity::of) {
            wait_exit(paths, identity, UP_TIMEOUT);
        }
        holder = CoordinatorLock::holder(paths);
    }
    if holder == Some(None) {
        holder = CoordinatorLock::wait_leaving(paths);
    }
    let child = match holder {
        Some(pid) => {
            already_running(pid);
            None
        }
        None => Some(start_detached(paths, &config_path, false)?),
    };
    wait_healthy_within(paths, child, up_patience(config.services.len()))?;
    wait_recorded(manager, &config);
    output::print_status(&manager.get_health_status()?);
    Ok(ExitCode::SUCCESS)
}

/// Waits (briefly) until every global service of the config has a record, so
/// the table `up` prints shows the whole tree, not the part written so far.
/// Not finding them is not an error: the table then shows what there is.
fn wait_recorded(manager: &StateManager, config: &Config) {
    let names: Vec<&str> = config
        .services
        .iter()
        .filter(|s| s.service_type == crate::registry::ServiceType::Global)
        .map(|s| s.name.as_str())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let Ok(reg) = manager.store().read() else {
            return;
        };
        if names.iter().all(|n| reg.services.global.contains_key(*n)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A coordinator started by this command: our child, so its exit is seen
/// at once, and where its log stood, so its own error line can be shown.
pub(super) struct Started {
    child: std::process::Child,
    log_from: u64,
}

/// Starts a coordinator in the background; with `respect_down` it starts
/// nothing should `psm down` have left its mark (a repair, not the user's
/// `up`).
pub(super) fn start_detached(
    paths: &Paths,
    config_path: &Path,
    respect_down: bool,
) -> Result<Started, CliError> {
    let log_from = std::fs::metadata(paths.coordinator_log()).map_or(0, |m| m.len());
    let child =
        coordinator::spawn_background(paths, config_path, respect_down).with_context(|| {
            format!(
                "starting the coordinator (log: {})",
                paths.coordinator_log().display()
            )
        })?;
    Ok(Started { child, log_from })
}

/// The line a coordinator that died at start-up left in its log: its
/// `psm: …` error line, else its last line.
fn startup_error(paths: &Paths, from: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(paths.coordinator_log()).ok()?;
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut text = String::new();
    // Bounded: a start-up writes a few lines, never megabytes.
    file.take(64 * 1024).read_to_string(&mut text).ok()?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("psm: "))
        .or(lines.last())
        .map(|l| l.strip_prefix("psm: ").unwrap_or(l).to_string())
}

/// Waits until the coordinator answers. A coordinator this command started
/// that exits first has failed (or found another in charge, exit 0): its
/// error line is the answer, at once.
pub(super) fn wait_healthy(paths: &Paths, started: Option<Started>) -> Result<(), CliError> {
    wait_healthy_within(paths, started, UP_TIMEOUT)
}

/// How long `up` waits for a new coordinator of `services` services: it
/// answers once it has started them (a fork and exec each, serial: 1–2 ms
/// on two cores), so 5,000 services need longer than [`UP_TIMEOUT`].
/// Capped at ten minutes, whatever the config says.
fn up_patience(services: usize) -> Duration {
    (UP_TIMEOUT + Duration::from_millis(5).saturating_mul(services.min(u32::MAX as usize) as u32))
        .min(Duration::from_secs(600))
}

fn wait_healthy_within(
    paths: &Paths,
    mut started: Option<Started>,
    patience: Duration,
) -> Result<(), CliError> {
    let deadline = Instant::now() + patience;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        if let Some(s) = &mut started {
            if let Ok(Some(status)) = s.child.try_wait() {
                if !status.success() {
                    let line =
                        startup_error(paths, s.log_from).unwrap_or_else(|| "no error line".into());
                    return Err(CliError::Failed(anyhow!(
                        "the coordinator exited at start-up ({status}): {line}; see {}",
                        paths.coordinator_log().display()
                    )));
                }
                if let Some(mark) = DownMark::read(paths) {
                    return Err(CliError::Failed(anyhow!(
                        "not started: {}; `psm up` starts psm again",
                        mark.note
                    )));
                }
                // Exit 0: another coordinator won the race; wait for that one.
                started = None;
            }
        }
        match client::request(paths, &Request::Ping, Duration::from_secs(2)) {
            Ok(r) if r.ok => return Ok(()),
            Ok(r) => last = r.message,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(CliError::Failed(anyhow!(
        "the coordinator did not become healthy within {}s ({last}); see {}",
        patience.as_secs(),
        paths.coordinator_log().display()
    )))
}

/// Sends a request; a failed response is exit 1 with its message.
fn send(paths: &Paths, req: Request) -> Result<Response, CliError> {
    let resp = client::request(paths, &req, REQUEST_TIMEOUT)
        .map_err(|e: ClientError| CliError::Failed(e.into()))?;
    if resp.ok {
        Ok(resp)
    } else {
        Err(CliError::Failed(anyhow!(resp.message)))
    }
}

/// `psm down`: leave the "stopped on purpose" mark, ask the coordinator to
/// stop everything, and return only when it has exited (by identity) or
/// been SIGKILLed, with what it left stopped too.
pub fn down(paths: &Paths) -> CliResult {
    let not_running =
        || CliError::Failed(ClientError::NotRunning(paths.root().display().to_string()).into());
    // A root that never ran a coordinator is left as it is.
    if !paths.runtime_dir().is_dir() {
        return Err(not_running());
    }
    let _serial = UpDownLock::acquire(paths, UPDOWN_PATIENCE)?;
    let was_down = DownMark::read(paths).is_some();
    // Before looking for the coordinator: one a racing watchdog starts from
    // now on sees the mark and stays down; one started before is found.
    DownMark::write(paths)?;
    let store = Store::new(paths.clone());
    let mut holder = CoordinatorLock::holder(paths);
    if holder == Some(None) {
        holder = CoordinatorLock::wait_leaving(paths);
    }
    let Some(holder) = holder else {
        return down_without_coordinator(paths, &store, was_down);
    };
    // Its identity now, before its pid could be reused by anyone.
    let identity = holder.and_then(Identity::of);
    let limit = down_limit(&stop_timeouts(paths, &store));
    let deadline = Instant::now() + limit;
    let (message, acknowledged) = match client::request(paths, &Request::Down, DOWN_ACK_TIMEOUT) {
        Ok(r) => (r.message, true),
        // Gone already, hung, or busy with another `down`: the wait decides.
        Err(_) => (String::new(), false),
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let gone = match identity {
        Some(id) => wait_exit(paths, id, left),
        None => wait_lock_free(paths, left),
    };
    if !gone {
        let Some(id) = identity else {
            return Err(CliError::Failed(anyhow!(
                "the coordinator holding {} did not exit within {}s and its pid is unknown; see {}",
                paths.coordinator_lock().display(),
                limit.as_secs(),
                paths.coordinator_log().display()
            )));
        };
        // The lock file may name a stranger (a coordinator that had just
        // taken the lock had not yet replaced its dead predecessor's pid, now
        // reused): only the recorded coordinator is killed.
        if !is_recorded_coordinator(&store, id) {
            return Err(CliError::Failed(anyhow!(
                "the coordinator did not exit within {}s, and pid {} (named in {}) is not the coordinator the registry records; not signalling it; see {}",
                limit.as_secs(),
                id.pid,
                paths.coordinator_lock().display(),
                paths.coordinator_log().display()
            )));
        }
        signal_tree(id, None, nix::sys::signal::Signal::SIGKILL);
        wait_exit(paths, id, Duration::from_secs(2));
        eprintln!(
            "psm: the coordinator (pid {}) did not exit within {}s; SIGKILLed it",
            id.pid,
            limit.as_secs()
        );
        stop_leftovers(&store).context("stopping what the coordinator left")?;
    } else if !acknowledged {
        // It exited without taking the `down` (it was dying as we asked):
        // what it recorded is still there to stop.
        let left = stop_leftovers(&store).context("stopping what the coordinator left")?;
        if left > 0 {
            println!("the coordinator exited before it could stop anything; stopped what it left");
        }
    }
    if acknowledged {
        println!(
            "{}",
            message.replace("; the coordinator exits when done", "")
        );
    }
    println!("coordinator stopped");
    Ok(ExitCode::SUCCESS)
}

/// `down` on a root whose coordinator is gone (crashed, SIGKILLed): the
/// decision stands all the same. The mark stays (else the watchdog would
/// start a coordinator that adopts everything), and the services the dead
/// coordinator left are stopped and unrecorded as a clean `down` would. A
/// root with nothing recorded is "no coordinator is running", and left as
/// it was.
fn down_without_coordinator(paths: &Paths, store: &Store, was_down: bool) -> CliResult {
    let not_running =
        || CliError::Failed(ClientError::NotRunning(paths.root().display().to_string()).into());
    let left = stop_leftovers(store).context("stopping what the coordinator left")?;
    if left == 0 {
        if !was_down {
            DownMark::clear(paths)?;
        }
        return Err(not_running());
    }
    println!("no coordinator was running; stopped what the last one left");
    println!("coordinator stopped");
    Ok(ExitCode::SUCCESS)
}

/// Whether `identity` is the coordinator the registry records (pid and
/// start time): what makes a process safe for `down` to SIGKILL.
fn is_recorded_coordinator(store: &Store, identity: Identity) -> bool {
    store
        .read_within(Duration::from_secs(5))
        .ok()
        .and_then(|reg| reg.get(&ServiceKey::global(COORDINATOR_NAME))?.identity())
        == Some(identity)
}

/// How long `down` waits for the coordinator: its services stop in
/// parallel, each within its stop timeout, plus slack; an absurd stop
/// timeout is waited for an hour at most.
fn down_limit(stop_timeouts: &[Duration]) -> Duration {
    let longest = stop_timeouts.iter().max().copied().unwrap_or_default();
    longest.saturating_add(DOWN_SLACK).min(DOWN_WAIT_MAX)
}

/// The stop timeouts of the config the running coordinator recorded (else
/// the default config). An unreadable config leaves the defaults.
fn stop_timeouts(paths: &Paths, store: &Store) -> Vec<Duration> {
    let recorded = store
        .read_within(Duration::from_secs(2))
        .ok()
        .and_then(|reg| {
            reg.get(&ServiceKey::global(COORDINATOR_NAME))?
                .metadata
                .get("config")?
                .as_str()
                .map(PathBuf::from)
        });
    let path = recorded.unwrap_or_else(|| paths.default_config());
    Config::load(&path)
        .map(|c| c.services.iter().map(|s| s.stop_timeout).collect())
        .unwrap_or_default()
}

/// Waits until the process `identity` has exited and the coordinator lock is
/// free; false if `limit` passes first.
fn wait_exit(paths: &Paths, identity: Identity, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while identity.is_alive() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_lock_free(paths, deadline.saturating_duration_since(Instant::now()))
}

/// Waits until nobody holds the coordinator lock; false if `limit` passes.
fn wait_lock_free(paths: &Paths, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while CoordinatorLock::holder(paths).is_some() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// After the coordinator had to be SIGKILLed: stops every service it
/// recorded (identity-checked; its group only while the leader is ours) and
/// removes their records and its own, as a clean `down` would have.
/// Returns how many records it removed.
fn stop_leftovers(store: &Store) -> anyhow::Result<usize> {
    let registry = store.read_within(Duration::from_secs(5))?;
    let ours: Vec<(ServiceKey, ServiceRecord)> = registry
        .services()
        .filter(|(_, r)| {
            r.metadata
                .get("managedBy")
                .and_then(serde_json::Value::as_str)
                == Some(crate::supervisor::service::MANAGED_BY)
        })
        .map(|(k, r)| (k, r.clone()))
        .collect();
    let manager = StateManager::new(store.clone());
    let named: Vec<(String, ServiceRecord)> = ours
        .iter()
        .map(|(k, r)| (k.to_string(), r.clone()))
        .collect();
    for t in manager.stop_services(&named) {
        eprintln!(
            "psm: stopped {} (pid {}) the coordinator left",
            t.name, t.pid
        );
    }
    // Written only when something was removed: a root with nothing
    // recorded is left exactly as it was.
    let removed = store.update_if(|reg| {
        let mut removed = 0;
        for (key, _) in &ours {
            removed += usize::from(reg.remove(key).is_some());
        }
        removed += usize::from(reg.remove(&ServiceKey::global(COORDINATOR_NAME)).is_some());
        Ok::<_, crate::registry::StoreError>((removed, removed > 0))
    })?;
    Ok(removed)
}

fn target(args: &TargetArgs) -> Result<Target, CliError> {
    input::validate_name("service name", &args.service)?;
    let project = match &args.project {
        Some(p) => Some(input::canonical_project(p)?.to_string_lossy().into_owned()),
        None => None,
    };
    Ok(Target {
        service: args.service.clone(),
        project,
    })
}

pub fn control(paths: &Paths, make: fn(Target) -> Request, args: &TargetArgs) -> CliResult {
    println!("{}", control_message(paths, make, args)?);
    Ok(ExitCode::SUCCESS)
}

/// Sends `start`/`stop`/`restart` and returns the coordinator's one-line
/// answer (`psm top` shows it in its footer instead of printing it).
pub(super) fn control_message(
    paths: &Paths,
    make: fn(Target) -> Request,
    args: &TargetArgs,
) -> Result<String, CliError> {
    let target = target(args)?;
    // The coordinator answers once the registry says what it did: a stuck
    // lock holder is named now rather than after the request timeout.
    crate::registry::Store::new(paths.clone())
        .check_lock()
        .map_err(|e| CliError::Failed(e.into()))?;
    Ok(send(paths, make(target))?.message)
}

pub fn reload(paths: &Paths) -> CliResult {
    let resp = send(paths, Request::Reload)?;
    println!("{}", resp.message);
    Ok(ExitCode::SUCCESS)
}

pub fn logs(paths: &Paths, args: &LogsArgs, service: &str) -> CliResult {
    let label = match &args.project {
        Some(p) => {
            let project = input::canonical_project(p)?;
            let name = project
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{service}@{name}")
        }
        None => service.to_string(),
    };
    if !label
        .split('@')
        .all(|part| input::validate_name("service name", part).is_ok())
    {
        input::validate_name("service name", &label)?;
    }
    let path = paths.service_log(&label);
    if !path.exists() {
        return Err(CliError::Failed(anyhow!(
            "no log for service '{label}' at {}; check the name with `psm status`",
            path.display()
        )));
    }
    let mut since = args.since.map(super::all_logs::Since::new);
    if args.follow {
        let result = match since {
            // Line by line, to filter the lines printed first.
            Some(_) => {
                let mut out = super::all_logs::Prefixed::new(String::new(), since);
                crate::logs::follow(&path, args.lines, &mut out, &|| false)
            }
            None => {
                crate::logs::follow(&path, args.lines, &mut std::io::stdout().lock(), &|| false)
            }
        };
        result.map_err(|e| log_error(e, "following", &path))?;
    } else {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for line in
            crate::logs::tail(&path, args.lines).map_err(|e| log_error(e, "reading", &path))?
        {
            if !since.as_mut().is_none_or(|s| s.keep(line.as_bytes())) {
                continue;
            }
            if writeln!(out, "{line}").is_err() {
                break;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A log that cannot be read: a refusal (a link, a FIFO) already names the
/// file and the fix; anything else gets the file named.
fn log_error(e: std::io::Error, doing: &str, path: &Path) -> CliError {
    if crate::fsx::is_refusal(&e) {
        CliError::Failed(e.into())
    } else {
        CliError::Failed(anyhow::Error::from(e).context(format!("{doing} {}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_waits_longer_for_more_services_within_ten_minutes() {
        for (services, want) in [
            (0, 10_000),
            (1_000, 15_000),
            (5_000, 35_000),
            (1_000_000, 600_000),
            (usize::MAX, 600_000),
        ] {
            assert_eq!(up_patience(services).as_millis(), want, "{services}");
        }
    }

    #[test]
    fn down_waits_for_the_longest_stop_timeout_plus_slack_within_an_hour() {
        let s = Duration::from_secs;
        let table: [(&[Duration], Duration); 5] = [
            (&[], s(10)),
            (&[s(2)], s(12)),
            (&[s(2), s(30), s(5)], s(40)),
            (&[s(3595)], s(3600)),
            (&[Duration::MAX], s(3600)),
        ];
        for (i, (timeouts, expected)) in table.into_iter().enumerate() {
            assert_eq!(down_limit(timeouts), expected, "row {i}");
        }
    }
}
