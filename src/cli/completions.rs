//! Shell completions and the man page, generated from the clap types so
//! they never drift from the real command line.
//!
//! Completions are dynamic (clap_complete's `CompleteEnv`): the shell asks
//! `psm` itself for candidates, so service names come from the psm.toml of
//! the root the shell is in (`$PSM_ROOT`, `$CODING_REPO`, or the current
//! directory), not from a list frozen at install time.

use std::ffi::OsStr;
use std::io::Write;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::engine::CompletionCandidate;
use clap_complete::env::Shells;

use super::args::{Cli, Shell};
use super::{CliError, CliResult};
use crate::config::Config;
use crate::paths::Paths;

/// The environment variable through which the shell asks for candidates.
const VAR: &str = "COMPLETE";

/// Answers a completion request from a shell and exits, when the process
/// was started as one (`COMPLETE=<shell>` set); otherwise returns.
pub fn answer_if_asked() {
    clap_complete::CompleteEnv::with_factory(Cli::command)
        .var(VAR)
        .complete();
}

/// `psm completions <shell>`: the script that registers psm's completer.
pub fn print_registration(shell: Shell) -> CliResult {
    let name = shell.name();
    let shells = Shells::builtins();
    let completer = shells
        .completer(name)
        .ok_or_else(|| CliError::Usage(format!("no completer for {name}")))?;
    // The completer is this very binary, so completions work whether psm is
    // on PATH or run from a build directory.
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.to_str().map(str::to_owned))
        .unwrap_or_else(|| "psm".to_owned());
    let mut out = std::io::stdout().lock();
    completer
        .write_registration(VAR, "psm", "psm", &exe, &mut out)
        .and_then(|()| out.flush())
        .map_err(|e| CliError::Failed(anyhow::anyhow!("writing the completion script: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

/// `psm man`: the man page, as roff.
pub fn print_man() -> CliResult {
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .and_then(|()| out.flush())
        .map_err(|e| CliError::Failed(anyhow::anyhow!("writing the man page: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

/// Service names of the current root's config that start with `current`.
/// A root without a readable config offers none: completion never errors.
pub fn service_names(current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(prefix) = current.to_str() else {
        return Vec::new();
    };
    let Ok(paths) = Paths::resolve(None) else {
        return Vec::new();
    };
    let Ok(config) = Config::load(&paths.default_config()) else {
        return Vec::new();
    };
    let mut names: Vec<&str> = config
        .services
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort_unstable();
    names.dedup();
    names.into_iter().map(CompletionCandidate::new).collect()
}
