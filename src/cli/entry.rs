//! The process entry point shared by `psm` and extended binaries: parse
//! arguments, set up logging, run, map the result to an exit code.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use super::args::{Cli, Command};
use crate::supervisor::Extensions;

/// Runs psm as a program, with `extensions` known to any coordinator it runs.
pub fn main(extensions: Extensions) -> ExitCode {
    // A shell asking for completion candidates gets them and nothing else.
    super::completions::answer_if_asked();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let daemon = matches!(cli.command, Command::Coordinator(_));
    if !matches!(cli.command, Command::Coordinator(_) | Command::Watchdog(_)) {
        end_quietly_on_broken_pipe();
    }
    init_tracing(cli.verbose, daemon);
    match super::run_with(cli, extensions) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("psm: {e}");
            e.exit_code()
        }
    }
}

/// A command printing into a pipe whose reader has gone (`psm status |
/// head -1`) ends as `cat` or `ls` do, killed by SIGPIPE, quietly, instead
/// of panicking in `println!` (Rust ignores SIGPIPE, so every write would
/// return EPIPE). The coordinator and the watchdog keep ignoring it: they
/// live on sockets whose peer may go at any moment. The one socket write
/// of a command (`client::request`) asks for EPIPE instead of the signal.
fn end_quietly_on_broken_pipe() {
    // SAFETY: setting a disposition to SIG_DFL runs no handler; done once,
    // before this process starts another thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Prints help and version as clap does; any other parse error as one line
/// (clap's own message spans several), exit 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.use_stderr() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let text = e.render().to_string();
    let message: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("psm: {message} (see psm --help)");
    ExitCode::from(2)
}

/// Logs go to stderr: the terminal for CLI commands, the coordinator's log
/// file when `psm up` started it. The daemon logs what it does (info) by
/// default; a CLI command only warnings.
fn init_tracing(verbose: u8, daemon: bool) {
    use std::io::IsTerminal;
    let level = match (verbose, daemon) {
        (0, false) => "warn",
        (0, true) | (1, _) => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
