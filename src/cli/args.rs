//! The command line, as clap types. Doc comments are the help text users read.
// These doc comments are clap's help text, where `<root>` and `<pid>` are
// placeholders for people, not HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use clap_complete::engine::ArgValueCompleter;

/// psm — a process supervisor for developer machines.
///
/// Keeps a registry of every service (global, per-project, per-session) in
/// <root>/.live-process-registry.json. The root is --root, else $PSM_ROOT,
/// else $CODING_REPO, else the current directory.
#[derive(Debug, Parser)]
#[command(name = "psm", version, propagate_version = true)]
pub struct Cli {
    /// The psm root directory (registry, logs, runtime files).
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record a running process as a service (replaces a record of that name).
    Register(RegisterArgs),
    /// Remove a service's record (the process is left running).
    Unregister(ServiceArgs),
    /// Print a service's record as JSON.
    Get(ServiceArgs),
    /// Print whether a service's process runs (true/false; exit 0/1).
    Check(ServiceArgs),
    /// Stamp a service's last health check with the current time.
    Refresh(ServiceArgs),
    /// Show every service and session (dead processes show as dead, and why
    /// each service that is not running last ended), or one service in detail.
    Status(StatusArgs),
    /// Remove records of processes that are gone; clean up sessions whose process is gone.
    Cleanup(JsonArgs),
    /// Terminal sessions whose services end with them.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Run the coordinator in the foreground (launchd, systemd, debugging).
    Coordinator(CoordinatorArgs),
    /// Start the coordinator in the background if none runs, wait until it
    /// is healthy, and show the status.
    Up(ConfigArgs),
    /// Stop every service and the coordinator, and keep them stopped: the
    /// watchdog, `verify --fix` and launchd agents start nothing until
    /// `psm up` (or `psm coordinator`). Returns when all of it is gone.
    Down,
    /// Start a configured service (also one that failed or was stopped).
    Start(TargetArgs),
    /// Stop a service and keep it down until started again.
    Stop(TargetArgs),
    /// Restart a service, resetting its restart count.
    Restart(TargetArgs),
    /// Re-read the configuration: start added, stop removed, restart changed services.
    Reload,
    /// Print (and follow) a service's log, or every service's.
    Logs(LogsArgs),
    /// A live, full-screen view of every service and session: status, pid,
    /// uptime, restarts, CPU, memory, health, last exit; restart, stop,
    /// start and read logs from it (`?` lists the keys).
    Top,
    /// Check the coordinator once and replace it if it is dead or hung
    /// (launchd/systemd run this every 60 s); or schedule that.
    Watchdog(WatchdogArgs),
    /// Pre-start-up checks: registry, config, permissions, coordinator,
    /// dead records, duplicates, ports, watchdog.
    Verify(VerifyArgs),
    /// Print the shell script that enables completion (service names come
    /// from the psm.toml of the root you are in). Bash: add
    /// `source <(psm completions bash)` to ~/.bashrc.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print psm's man page (roff): `psm man > ~/.local/share/man/man1/psm.1`.
    Man,
    /// (Internal) Copy stdin to LOG, each line preceded by its time: what
    /// a service writes through with `[logs] timestamps = true`.
    #[command(hide = true)]
    LogStamp { log: PathBuf },
}

/// The shells `psm completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

impl Shell {
    /// clap_complete's name for the shell.
    pub fn name(self) -> &'static str {
        match self {
            Shell::Bash => "bash",
            Shell::Zsh => "zsh",
            Shell::Fish => "fish",
            Shell::Elvish => "elvish",
            Shell::Powershell => "powershell",
        }
    }
}

#[derive(Debug, Args)]
pub struct WatchdogArgs {
    #[command(subcommand)]
    pub action: Option<WatchdogAction>,
    /// A heartbeat older than this makes the watchdog ask the coordinator
    /// (ping) and kill it if it does not answer. Default: twice the health
    /// interval the coordinator records, plus a minute.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub max_age: Option<std::time::Duration>,
    /// The config to start a coordinator with when its record names none
    /// (default <root>/psm.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the verdict as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum WatchdogAction {
    /// Schedule the watchdog for this root (launchd on macOS, systemd elsewhere).
    Install {
        /// How often it runs.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        /// Print the files instead of writing and loading them.
        #[arg(long)]
        dry_run: bool,
        /// Write a launchd LaunchAgent, whatever the OS.
        #[arg(long, conflicts_with = "systemd")]
        launchd: bool,
        /// Write a systemd user service and timer, whatever the OS.
        #[arg(long)]
        systemd: bool,
    },
    /// Unload and remove this root's watchdog schedule.
    Uninstall {
        #[arg(long, conflicts_with = "systemd")]
        launchd: bool,
        #[arg(long)]
        systemd: bool,
    },
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Clean dead records and start the coordinator, then check again.
    #[arg(long)]
    pub fix: bool,
    /// Warnings fail too.
    #[arg(long)]
    pub strict: bool,
    /// Machine-readable JSON.
    #[arg(long)]
    pub json: bool,
    /// The service configuration (default <root>/psm.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// A service's name, type and owner.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// The service name.
    pub name: String,
    /// global, per-project or per-session.
    #[arg(value_name = "TYPE")]
    pub service_type: String,
    /// The project directory (absolute; for per-project).
    #[arg(long, value_name = "PATH")]
    pub project: Option<PathBuf>,
    /// The session id (for per-session; default $PSM_SESSION_ID, else $CLAUDE_SESSION_ID).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The service name.
    pub name: String,
    /// The process id of the running service.
    #[arg(allow_hyphen_values = true)]
    pub pid: String,
    /// global, per-project or per-session.
    #[arg(value_name = "TYPE")]
    pub service_type: String,
    /// What runs (a script path or command), for people reading the registry.
    pub script: String,
    /// The project directory (absolute; for per-project).
    #[arg(long, value_name = "PATH")]
    pub project: Option<PathBuf>,
    /// The session id (for per-session; default $PSM_SESSION_ID, else $CLAUDE_SESSION_ID).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Extra metadata, repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
}

#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Machine-readable JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One service to show in detail: command, process, exits, health, log.
    #[arg(add = ArgValueCompleter::new(super::completions::service_names))]
    pub service: Option<String>,
    /// Only the instance of this project (per-project services); default: all.
    #[arg(long, value_name = "PATH", requires = "service")]
    pub project: Option<PathBuf>,
    /// Machine-readable JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Record a session: the process whose end ends it, and its project.
    Register {
        /// The session id.
        id: String,
        /// The session's process (usually the shell or launcher).
        #[arg(allow_hyphen_values = true)]
        pid: String,
        /// The project directory (absolute).
        project_path: PathBuf,
    },
    /// End a session: stop its services (and their process groups), remove its records.
    Cleanup {
        /// The session id.
        id: String,
        #[command(flatten)]
        json: JsonArgs,
    },
    /// Start a command detached as a per-session service; prints its pid.
    Spawn {
        /// The service name.
        name: String,
        /// The session id (default $PSM_SESSION_ID, else $CLAUDE_SESSION_ID); the
        /// session must be registered and alive.
        #[arg(long, value_name = "ID")]
        session: Option<String>,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Run a command as a session: register it, export PSM_SESSION_ID (and
    /// CLAUDE_SESSION_ID), and
    /// clean the session up when the command ends or this wrapper is signalled.
    Run {
        /// The project directory (default: the current directory).
        #[arg(long, value_name = "PATH")]
        project: Option<PathBuf>,
        /// The session id (default session-<pid>-<unix seconds>).
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
}

/// Which service a control command names.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The service name, as in psm.toml.
    #[arg(add = ArgValueCompleter::new(super::completions::service_names))]
    pub service: String,
    /// Only the instance of this project (per-project services); default: all.
    #[arg(long, value_name = "PATH")]
    pub project: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Exit 0 without starting if `psm down` stopped this root on purpose
    /// (for launchd/systemd agents); without it, the mark is cleared.
    #[arg(long)]
    pub respect_down: bool,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The service configuration (default <root>/psm.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The service name (per-project instances: name@project, or --project);
    /// without one, every service's log, each line prefixed by its service.
    #[arg(add = ArgValueCompleter::new(super::completions::service_names))]
    pub service: Option<String>,
    /// The project of a per-project instance.
    #[arg(long, value_name = "PATH", requires = "service")]
    pub project: Option<PathBuf>,
    /// Keep printing what is appended, like tail -F.
    #[arg(short, long)]
    pub follow: bool,
    /// How many lines to print first.
    #[arg(short = 'n', long, default_value_t = 50)]
    pub lines: usize,
    /// Leave out lines older than this ("10m", "2h") among those that start
    /// with an RFC 3339 time ("2026-11-26T23:10:00Z", also in brackets);
    /// lines without one go with the line before them.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: Option<std::time::Duration>,
}
