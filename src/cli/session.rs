//! `psm session spawn` and `psm session run`: the launcher the seed's
//! `launch-claude.sh` meant to be. The wrapper never `exec`s away — that is
//! why the seed's EXIT trap never ran — so it is always there to clean up.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{Map, Value};
use tokio::signal::unix::{signal, SignalKind};

use super::{CliError, CliResult};
use crate::input::{self, InputError};
use crate::paths::Paths;
use crate::process::group::SESSION_VAR;
use crate::process::{spawn_detached, terminate, DetachedSpec, Identity, Marker, StopRequest};
use crate::registry::{Scope, ServiceKey, StateManager};

/// Starts `command` detached as per-session service `name` and prints its pid.
/// The session must be registered and alive, both before the start and in
/// the transaction that records the service; if it ended in between, the
/// process just started is ended again and the command fails.
pub fn spawn(
    paths: &Paths,
    manager: &StateManager,
    name: &str,
    session: Option<String>,
    command: &[String],
) -> CliResult {
    input::validate_name("service name", name)?;
    let session = session_or_env(session).ok_or(InputError::MissingSession)?;
    input::validate_name("session id", &session)?;
    let (program, args) = split_command(command)?;
    // Nothing is started for a session that is not there.
    manager.check_session_open(&session)?;
    let marker = Marker::session_service(paths.root(), &session, name);
    let spec = DetachedSpec {
        program: program.into(),
        args: args.iter().map(OsString::from).collect(),
        cwd: None,
        env: marker.env(),
        log: paths.session_service_log(&session, name),
    };
    let mut child = spawn_detached(&spec).with_context(|| format!("cannot start '{program}'"))?;
    let pid = child.id() as i32;
    // Not yet reaped by us, so even an instant exit leaves a zombie whose
    // identity is still readable.
    let identity = Identity::of(pid).ok_or_else(|| anyhow!("process {pid} vanished at start"))?;
    let mut metadata = Map::new();
    metadata.insert("managedBy".into(), Value::from("session"));
    let key = ServiceKey::new(name, Scope::Session(session));
    let recorded =
        manager.record_session_service(&key, identity, Some(pid), &command.join(" "), metadata);
    if let Err(e) = recorded {
        // Unrecorded, nobody would ever end it. Our own unreaped child: its
        // pid cannot have been reused.
        terminate(&StopRequest::new(identity, Some(pid), manager.grace()).with_marker(marker));
        let _ = child.wait();
        return Err(e.into());
    }
    // Dropping `child` does not wait or kill: the service outlives this CLI
    // and is reparented, which is the point of spawning it detached.
    drop(child);
    println!("{pid}");
    Ok(ExitCode::SUCCESS)
}

/// The session id from a flag, else `$PSM_SESSION_ID`, else the seed's
/// `$CLAUDE_SESSION_ID` (so the seed's session scripts keep working).
pub(super) fn session_or_env(flag: Option<String>) -> Option<String> {
    let var = |name| std::env::var(name).ok().filter(|s: &String| !s.is_empty());
    flag.or_else(|| var(SESSION_VAR))
        .or_else(|| var(SEED_SESSION_VAR))
}

/// The seed's session variable, set by its `launch-claude.sh`.
const SEED_SESSION_VAR: &str = "CLAUDE_SESSION_ID";

fn split_command(command: &[String]) -> Result<(&str, &[String]), CliError> {
    match command.split_first() {
        Some((program, args)) if !program.is_empty() => Ok((program, args)),
        _ => Err(CliError::Usage(
            "no command given: put it after --, e.g. psm session run -- bash".into(),
        )),
    }
}

/// Runs `command` as a session and cleans the session up when it ends.
pub fn run(
    paths: &Paths,
    manager: &StateManager,
    project: Option<&Path>,
    id: Option<String>,
    command: &[String],
) -> CliResult {
    let (program, args) = split_command(command)?;
    let me = std::process::id() as i32;
    let id = id.unwrap_or_else(|| {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("session-{me}-{secs}")
    });
    input::validate_name("session id", &id)?;
    let project = match project {
        Some(p) => input::canonical_project(p)?,
        None => std::env::current_dir()
            .context("finding the current directory")?
            .canonicalize()
            .context("resolving the current directory")?,
    };
    let project = project.to_string_lossy().into_owned();
    manager.register_session(&id, me, &project)?;

    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env(SESSION_VAR, &id)
        .env(SEED_SESSION_VAR, &id)
        .env("PSM_PROJECT", &project)
        .env("PSM_ROOT", paths.root());
    hang_up_with_parent(&mut cmd);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the session's event loop")?;
    let outcome = runtime.block_on(supervise(cmd, manager.grace()));
    // Clean up whatever happened to the command: that is the whole point.
    let cleanup = manager.cleanup_session(&id);
    let code =
        outcome.map_err(|e| CliError::Failed(e.context(format!("cannot run '{program}'"))))?;
    cleanup?;
    Ok(ExitCode::from(code))
}

/// Waits for the command; forwards SIGINT/SIGTERM/SIGHUP to it, and SIGKILLs
/// it if it outlives the grace period after one. Returns its exit code, or
/// 128 + signal if a signal ended it (as shells report it).
async fn supervise(mut cmd: tokio::process::Command, grace: Duration) -> anyhow::Result<u8> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut child = cmd.spawn()?;
    // The child is ours and unreaped until `wait` returns, so its pid cannot
    // be reused while we hold it: signalling it by pid is safe.
    let pid = child.id().map(|p| Pid::from_raw(p as i32));
    let mut deadline: Option<tokio::time::Instant> = None;
    let status = loop {
        let forwarded = tokio::select! {
            status = child.wait() => break status?,
            _ = int.recv() => Signal::SIGINT,
            _ = term.recv() => Signal::SIGTERM,
            _ = hup.recv() => Signal::SIGHUP,
            _ = sleep_until(deadline) => Signal::SIGKILL,
        };
        if let Some(pid) = pid {
            let _ = kill(pid, forwarded);
        }
        deadline.get_or_insert_with(|| tokio::time::Instant::now() + grace);
        if forwarded == Signal::SIGKILL {
            deadline = None;
        }
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        (None, None) => 1,
    })
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// If the wrapper itself is killed (SIGKILL gives it no chance to clean up),
/// the command gets SIGHUP, as it would when its terminal closes; `psm
/// cleanup` or the coordinator's sweep then ends the session's services.
#[cfg(target_os = "linux")]
fn hang_up_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: prctl is async-signal-safe and touches no parent memory.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGHUP) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn hang_up_with_parent(_cmd: &mut tokio::process::Command) {}
