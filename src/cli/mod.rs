//! The `psm` command line: parse, validate into domain types, call the
//! library, print. Exit codes: 0 success, 1 failure or not found, 2 usage.

mod all_logs;
pub mod args;
mod completions;
mod daemon;
mod describe;
mod entry;
mod output;
mod session;
mod top;
mod watch;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Map, Value};

use crate::coordinator::protocol::Request;
use crate::input::{self, InputError};
use crate::paths::Paths;
use crate::process::usage::Snapshot;
use crate::registry::{
    ManagerError, Registration, Scope, ServiceKey, ServiceType, StateManager, Store,
};
use crate::supervisor::Extensions;
use args::{Cli, Command, RegisterArgs, ServiceArgs, SessionCommand};
pub use entry::main;
use session::session_or_env;

/// A command's failure, carrying its exit code.
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments: exit 2.
    Usage(String),
    /// The command could not do its job: exit 1.
    Failed(anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Failed(_) => ExitCode::from(1),
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m) => f.write_str(m),
            // `{:#}` puts the whole cause chain on one line.
            CliError::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<InputError> for CliError {
    fn from(e: InputError) -> Self {
        CliError::Usage(e.to_string())
    }
}

impl From<ManagerError> for CliError {
    fn from(e: ManagerError) -> Self {
        CliError::Failed(e.into())
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::Failed(e)
    }
}

pub type CliResult = Result<ExitCode, CliError>;

/// Runs one parsed command with the built-in service kinds and probes.
pub fn run(cli: Cli) -> CliResult {
    run_with(cli, Extensions::new())
}

/// Runs one parsed command; a coordinator it starts knows `extensions`.
/// This is how an extended psm binary is made (see `examples/`).
pub fn run_with(cli: Cli, extensions: Extensions) -> CliResult {
    // Neither needs a root (which may not resolve): they describe psm itself.
    match cli.command {
        Command::Completions { shell } => return completions::print_registration(shell),
        Command::Man => return completions::print_man(),
        Command::LogStamp { log } => {
            crate::logs::stamp(std::io::stdin().lock(), &log)
                .with_context(|| format!("stamping into {}", log.display()))?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let paths = Paths::resolve(cli.root.as_deref()).context("finding the current directory")?;
    let manager = StateManager::new(Store::new(paths.clone()));
    match cli.command {
        Command::Register(a) => register(&manager, a),
        Command::Unregister(a) => {
            let key = service_key(&a)?;
            manager.unregister_service(&key)?;
            println!("unregistered {key}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Get(a) => {
            let key = service_key(&a)?;
            let record = manager
                .get_service(&key)?
                .ok_or(ManagerError::NotFound(key))?;
            output::print_json(&record);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(a) => {
            let key = service_key(&a)?;
            let running = manager.is_service_running(&key)?;
            println!("{running}");
            Ok(if running {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Refresh(a) => {
            manager.refresh_health_check(&service_key(&a)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(a) if a.service.is_some() => {
            let name = a.service.clone().unwrap_or_default();
            describe::run(&paths, &manager, &a, &name)
        }
        Command::Status(a) => {
            // The process table is read while the registry is parsed (each
            // costs about 10 ms at 5,000 services); a process the table
            // missed because it started in between is read after the
            // registry (`include`), so nothing the registry names shows dead
            // for having started during this command.
            let (registry, snapshot) = std::thread::scope(|scope| {
                let table = scope.spawn(Snapshot::take);
                let registry = manager.store().read();
                // A snapshot only parses what it reads; nothing in it panics.
                (registry, table.join().unwrap_or_else(|_| Snapshot::take()))
            });
            let registry = registry.map_err(ManagerError::from)?;
            // One snapshot, so CPU is each process's lifetime average (as
            // `ps` shows it): a second sample would cost its interval. It
            // also answers liveness, so no process is read twice.
            let mut snapshot = snapshot;
            snapshot.include(registry.services().filter_map(|(_, r)| r.identity()));
            let mut health =
                crate::registry::manager::health_with(&registry, |id| snapshot.is_alive(id));
            top::measure(&mut health, &registry, &mut snapshot, None);
            if a.json {
                output::print_json(&health);
            } else {
                output::print_status(&health);
            }
            // The command ends here: freeing thousands of records and the
            // process table one allocation at a time only delays the exit
            // (the kernel takes the memory back at once).
            std::mem::forget((registry, health, snapshot));
            Ok(ExitCode::SUCCESS)
        }
        Command::Cleanup(a) => {
            let report = cleanup_dead(&paths, &manager)?;
            if a.json {
                output::print_json(&report);
            } else {
                println!(
                    "cleaned {} record(s); {} session(s) ended",
                    report.cleaned(),
                    report.sessions.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Session(cmd) => session_command(&paths, &manager, cmd),
        Command::Coordinator(a) => daemon::run_coordinator(&paths, &a, extensions),
        Command::Up(a) => daemon::up(&paths, &manager, &a),
        Command::Down => daemon::down(&paths),
        Command::Start(a) => daemon::control(&paths, Request::Start, &a),
        Command::Stop(a) => daemon::control(&paths, Request::Stop, &a),
        Command::Restart(a) => daemon::control(&paths, Request::Restart, &a),
        Command::Reload => daemon::reload(&paths),
        Command::Logs(a) => match &a.service {
            Some(service) => daemon::logs(&paths, &a, service),
            None => all_logs::run(&paths, a.lines, a.follow, a.since),
        },
        Command::Top => top::run(&paths, &manager),
        Command::Watchdog(a) => watch::watchdog(&paths, a),
        Command::Verify(a) => watch::verify(&paths, &manager, &a),
        Command::Completions { shell } => completions::print_registration(shell),
        Command::Man => completions::print_man(),
        Command::LogStamp { .. } => unreachable!("handled above"),
    }
}

fn session_command(paths: &Paths, manager: &StateManager, cmd: SessionCommand) -> CliResult {
    match cmd {
        SessionCommand::Register {
            id,
            pid,
            project_path,
        } => {
            input::validate_name("session id", &id)?;
            let pid = input::parse_pid(&pid)?;
            let project = input::canonical_project(&project_path)?;
            manager.register_session(&id, pid, &project.to_string_lossy())?;
            println!("registered session {id}");
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Cleanup { id, json } => {
            input::validate_name("session id", &id)?;
            let result = manager.cleanup_session(&id)?;
            if json.json {
                output::print_json(&result);
            } else {
                println!(
                    "session {id}: cleaned {}, terminated {}",
                    result.cleaned,
                    result.terminated.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::Spawn {
            name,
            session,
            command,
        } => session::spawn(paths, manager, &name, session, &command),
        SessionCommand::Run {
            project,
            id,
            command,
        } => session::run(paths, manager, project.as_deref(), id, &command),
    }
}

fn register(manager: &StateManager, a: RegisterArgs) -> CliResult {
    let scope = scope_of(&a.service_type, a.project.as_deref(), a.session)?;
    input::validate_name("service name", &a.name)?;
    let pid = input::parse_pid(&a.pid)?;
    let mut metadata = Map::new();
    for m in &a.meta {
        let (k, v) = input::parse_meta(m)?;
        metadata.insert(k, Value::String(v));
    }
    let key = ServiceKey::new(a.name, scope);
    manager.register_service(Registration {
        key: key.clone(),
        pid,
        script: a.script,
        metadata,
    })?;
    println!("registered {key} pid {pid}");
    Ok(ExitCode::SUCCESS)
}

fn service_key(a: &ServiceArgs) -> Result<ServiceKey, CliError> {
    let scope = scope_of(&a.service_type, a.project.as_deref(), a.session.clone())?;
    input::validate_name("service name", &a.name)?;
    Ok(ServiceKey::new(a.name.clone(), scope))
}

/// Turns a type name and its owner flags into a validated scope.
fn scope_of(
    service_type: &str,
    project: Option<&Path>,
    session: Option<String>,
) -> Result<Scope, InputError> {
    match ServiceType::parse(service_type) {
        Some(ServiceType::Global) => Ok(Scope::Global),
        Some(ServiceType::PerProject) => {
            let dir = project.ok_or(InputError::MissingProject)?;
            let dir = input::canonical_project(dir)?;
            Ok(Scope::Project(dir.to_string_lossy().into_owned()))
        }
        Some(ServiceType::PerSession) => {
            let id = session_or_env(session).ok_or(InputError::MissingSession)?;
            input::validate_name("session id", &id)?;
            Ok(Scope::Session(id))
        }
        None => Err(InputError::Type(service_type.to_string())),
    }
}

/// `psm cleanup` (and `verify --fix`): dead records go, and what their
/// process groups left running goes with them, except the remnants of a
/// running coordinator's own services, which it ends (or lets carry the
/// service on, for a daemonizing one) itself when it sees their leader exit.
fn cleanup_dead(
    paths: &Paths,
    manager: &StateManager,
) -> Result<crate::registry::manager::CleanupReport, ManagerError> {
    // A killed coordinator's last thread may hold the lock a while after
    // its pid is gone (see `CoordinatorLock::wait_leaving`): it ends
    // nothing any more, so only a live, proven holder counts.
    let coordinator_runs = crate::coordinator::CoordinatorLock::proven_holder(paths).is_some();
    manager.cleanup_dead_processes_ending(|record| {
        !coordinator_runs
            || record.metadata.get("managedBy").and_then(Value::as_str) != Some("coordinator")
    })
}
