//! The commands that run or talk to the coordinator: `coordinator`, `up`,
//! `down`, `start`, `stop`, `restart`, `reload`, `logs`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use super::args::{ConfigArgs, LogsArgs, TargetArgs};
use super::{output, CliError, CliResult};
use crate::config::Config;
use crate::coordinator::client::{self, ClientError};
use crate::coordinator::protocol::{Request, Response, Target};
use crate::coordinator::{self, CoordinatorLock, Outcome, Settings};
use crate::input;
use crate::paths::Paths;
use crate::registry::StateManager;
use crate::supervisor::Extensions;

/// How long `up` waits for a new coordinator to answer.
const UP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a control request may take (`down` waits for every service to stop).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

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

pub fn run_coordinator(paths: &Paths, args: &ConfigArgs, extensions: Extensions) -> CliResult {
    let config_path = config_path(paths, args);
    let config = load_config(&config_path, args.config.is_some())?;
    let settings = Settings {
        paths: paths.clone(),
        config_path,
        config,
        extensions,
    };
    match coordinator::run(settings)? {
        Outcome::Stopped => Ok(ExitCode::SUCCESS),
        // launchd reads a non-zero exit as a crash; another coordinator
        // being in charge is not one.
        Outcome::AlreadyRunning(pid) => {
            already_running(pid);
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn up(paths: &Paths, manager: &StateManager, args: &ConfigArgs) -> CliResult {
    let config_path = config_path(paths, args);
    let config = load_config(&config_path, args.config.is_some())?;
    if let Some(pid) = CoordinatorLock::holder(paths) {
        already_running(pid);
    } else {
        start_detached(paths, &config_path)?;
    }
    wait_healthy(paths)?;
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

pub(super) fn start_detached(paths: &Paths, config_path: &Path) -> Result<(), CliError> {
    coordinator::spawn_background(paths, config_path).with_context(|| {
        format!(
            "starting the coordinator (log: {})",
            paths.coordinator_log().display()
        )
    })?;
    Ok(())
}

/// Waits until the coordinator answers and its heartbeat is in the registry.
pub(super) fn wait_healthy(paths: &Paths) -> Result<(), CliError> {
    let deadline = Instant::now() + UP_TIMEOUT;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match client::request(paths, &Request::Ping, Duration::from_secs(2)) {
            Ok(r) if r.ok => return Ok(()),
            Ok(r) => last = r.message,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(CliError::Failed(anyhow!(
        "the coordinator did not become healthy within {}s ({last}); see {}",
        UP_TIMEOUT.as_secs(),
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

pub fn down(paths: &Paths) -> CliResult {
    let pid = CoordinatorLock::holder(paths);
    let resp = send(paths, Request::Down)?;
    // The reply comes before the last records are gone; the lock is
    // released only when the coordinator has exited, after all of it.
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    while CoordinatorLock::holder(paths).is_some() {
        if Instant::now() >= deadline {
            return Err(CliError::Failed(anyhow!(
                "the coordinator (pid {}) has not exited; see {}",
                pid.flatten().map_or("?".into(), |p| p.to_string()),
                paths.coordinator_log().display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "{}",
        resp.message
            .replace("; the coordinator exits when done", "")
    );
    println!("coordinator stopped");
    Ok(ExitCode::SUCCESS)
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
    let target = target(args)?;
    // The coordinator answers once the registry says what it did: a stuck
    // lock holder is named now rather than after the request timeout.
    crate::registry::Store::new(paths.clone())
        .check_lock()
        .map_err(|e| CliError::Failed(e.into()))?;
    let resp = send(paths, make(target))?;
    println!("{}", resp.message);
    Ok(ExitCode::SUCCESS)
}

pub fn reload(paths: &Paths) -> CliResult {
    let resp = send(paths, Request::Reload)?;
    println!("{}", resp.message);
    Ok(ExitCode::SUCCESS)
}

pub fn logs(paths: &Paths, args: &LogsArgs) -> CliResult {
    let label = match &args.project {
        Some(p) => {
            let project = input::canonical_project(p)?;
            let name = project
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{}@{name}", args.service)
        }
        None => args.service.clone(),
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
    let mut out = std::io::stdout().lock();
    if args.follow {
        crate::logs::follow(&path, args.lines, &mut out, &|| false)
            .with_context(|| format!("following {}", path.display()))?;
    } else {
        use std::io::Write;
        for line in crate::logs::tail(&path, args.lines)
            .with_context(|| format!("reading {}", path.display()))?
        {
            if writeln!(out, "{line}").is_err() {
                break;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
