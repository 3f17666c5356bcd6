//! `psm watchdog [install|uninstall]` and `psm verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};

use super::args::{VerifyArgs, WatchdogAction, WatchdogArgs};
use super::daemon::{resolve_config, start_detached, wait_healthy};
use super::{output, CliError, CliResult};
use crate::coordinator::CoordinatorLock;
use crate::paths::Paths;
use crate::registry::StateManager;
use crate::schedule::{self, Format};
use crate::verify::{self, Level};
use crate::watchdog;

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

fn format(launchd: bool, systemd: bool) -> Format {
    match (launchd, systemd) {
        (true, _) => Format::Launchd,
        (_, true) => Format::Systemd,
        _ => Format::native(),
    }
}

pub fn watchdog(paths: &Paths, args: WatchdogArgs) -> CliResult {
    match args.action {
        None => {
            let config = resolve_config(paths, args.config.as_deref());
            let report = watchdog::check(paths, config, args.max_age)
                .map_err(|e| CliError::Failed(e.into()))?;
            if args.json {
                output::print_json(&report);
            } else {
                println!(
                    "{}: {} ({})",
                    report.judgement.verdict, report.judgement.reason, report.action
                );
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Some(WatchdogAction::Install {
            interval,
            dry_run,
            launchd,
            systemd,
        }) => {
            let home = home()
                .ok_or_else(|| anyhow!("HOME is not set; cannot place the scheduler files"))?;
            let exe = std::env::current_exe().context("finding the psm executable")?;
            let root = paths
                .root()
                .canonicalize()
                .with_context(|| format!("root {}", paths.root().display()))?;
            let paths = Paths::new(root);
            let format = format(launchd, systemd);
            let files = schedule::render(format, &exe, &paths, interval, &home)?;
            if dry_run {
                for f in &files {
                    println!("# {}\n{}", f.path.display(), f.contents);
                }
                return Ok(ExitCode::SUCCESS);
            }
            schedule::install(format, &files, &paths)?;
            for f in &files {
                println!("installed {}", f.path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(WatchdogAction::Uninstall { launchd, systemd }) => {
            let home = home()
                .ok_or_else(|| anyhow!("HOME is not set; cannot find the scheduler files"))?;
            let root = paths
                .root()
                .canonicalize()
                .with_context(|| format!("root {}", paths.root().display()))?;
            let removed = schedule::uninstall(format(launchd, systemd), &Paths::new(root), &home)?;
            if removed.is_empty() {
                println!("no watchdog schedule was installed for this root");
            }
            for f in removed {
                println!("removed {}", f.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn verify(paths: &Paths, manager: &StateManager, args: &VerifyArgs) -> CliResult {
    let config = resolve_config(paths, args.config.as_deref());
    let home = home();
    let mut findings = verify::verify(paths, &config, home.as_deref());
    if args.fix {
        let mut fixed = Vec::new();
        // First: while the seed's lock directory is there, nothing can lock
        // the registry, so every other fix waits for it.
        if failed(&findings, verify::SEED_LOCK) {
            let done = verify::remove_seed_lock(paths).map_err(|e| CliError::Failed(anyhow!(e)))?;
            fixed.push(done);
            findings = verify::verify(paths, &config, home.as_deref());
        }
        if failed(&findings, "dead records") {
            let report = super::cleanup_dead(paths, manager)?;
            fixed.push(format!("removed {} dead record(s)", report.cleaned()));
        }
        if failed(&findings, "coordinator") && !failed(&findings, "config") {
            let started = match CoordinatorLock::holder(paths) {
                // Should a `psm down` come in between, it still wins.
                None => Some(start_detached(paths, &config, true)?),
                Some(_) => None,
            };
            wait_healthy(paths, started)?;
            fixed.push("started the coordinator".into());
        }
        if !fixed.is_empty() {
            eprintln!("psm: fixed: {}", fixed.join("; "));
            findings = verify::verify(paths, &config, home.as_deref());
        }
    }
    let worst = findings
        .iter()
        .map(|f| f.level)
        .max()
        .unwrap_or(Level::Pass);
    if args.json {
        output::print_json(
            &serde_json::json!({ "ok": worst == Level::Pass || (worst == Level::Warn && !args.strict), "checks": findings }),
        );
    } else {
        for f in &findings {
            let level = match f.level {
                Level::Pass => "pass",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            println!("{level:<4}  {:<12}  {}", f.check, f.reason);
        }
    }
    let bad = worst == Level::Fail || (args.strict && worst == Level::Warn);
    Ok(if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn failed(findings: &[verify::Finding], check: &str) -> bool {
    findings
        .iter()
        .any(|f| f.check == check && f.level == Level::Fail)
}
