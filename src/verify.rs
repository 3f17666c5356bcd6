//! `psm verify`: the seed's monitoring-verifier, run before start-up. Each
//! check passes, warns or fails with a one-line reason; `--fix` repairs what
//! it safely can (dead records, a missing coordinator) and checks again.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, HealthSpec};
use crate::coordinator::{DownMark, COORDINATOR_NAME};
use crate::fsx::Dir;
use crate::paths::Paths;
use crate::process::{Identity, ProcInfo};
use crate::registry::{Registry, ServiceKey, Store};
use crate::schedule;
use crate::time::now_millis;
use crate::watchdog::{self, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub reason: String,
}

fn finding(check: &'static str, level: Level, reason: impl Into<String>) -> Finding {
    Finding {
        check,
        level,
        reason: reason.into(),
    }
}

/// How long the registry lock may take before the check fails.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Runs every check. `home` locates the scheduler files of the watchdog.
pub fn verify(paths: &Paths, config_path: &Path, home: Option<&Path>) -> Vec<Finding> {
    let mut out = Vec::new();
    check_seed_lock(paths, &mut out);
    let registry = check_registry(paths, &mut out);
    let config = check_config(config_path, &mut out);
    check_writable(paths, &mut out);
    check_runtime(paths, &mut out);
    if let Some(reg) = &registry {
        check_coordinator(paths, reg, &mut out);
        check_records(reg, &mut out);
        if let Some(cfg) = &config {
            check_ports(reg, cfg, &mut out);
        }
    }
    out.push(match home {
        Some(home)
            if !schedule::installed_files(schedule::Format::native(), paths, home).is_empty() =>
        {
            finding("watchdog", Level::Pass, "scheduled")
        }
        _ => finding(
            "watchdog",
            Level::Warn,
            "not scheduled; run `psm watchdog install` so a dead coordinator is replaced",
        ),
    });
    out
}

/// The check that names the seed's lock directory.
pub const SEED_LOCK: &str = "seed lock";

/// proper-lockfile's own rule: a lock directory older than this is stale.
const SEED_LOCK_STALE: Duration = Duration::from_secs(10);

/// The JavaScript PSM (the seed) locks with proper-lockfile: a *directory*
/// where psm keeps its lock file, often left behind by a killed node process.
/// Reported only when there is one.
fn check_seed_lock(paths: &Paths, out: &mut Vec<Finding>) {
    let lock = paths.registry_lock();
    if std::fs::symlink_metadata(&lock).is_ok_and(|m| m.is_dir()) {
        out.push(finding(
            SEED_LOCK,
            Level::Fail,
            format!(
                "{} is the JavaScript PSM's lock directory (proper-lockfile); `psm verify --fix` removes it once it is {}s old and no `process-state-manager` node process runs (or `rmdir` it yourself)",
                lock.display(),
                SEED_LOCK_STALE.as_secs()
            ),
        ));
    }
}

/// Whether the seed's lock directory may go: proper-lockfile's stale rule
/// (older than 10 s) and no seed PSM running that could hold it.
pub fn seed_lock_removable(age: Duration, seed_running: bool) -> Result<(), String> {
    if seed_running {
        Err("a `process-state-manager` node process is running; stop it first".into())
    } else if age < SEED_LOCK_STALE {
        Err(format!(
            "it is only {}s old, so it may be in use; retry in {}s",
            age.as_secs(),
            SEED_LOCK_STALE.as_secs()
        ))
    } else {
        Ok(())
    }
}

/// `--fix`: removes the seed's lock directory (only an empty one, through
/// the root's fd) when [`seed_lock_removable`] allows; says what it did.
pub fn remove_seed_lock(paths: &Paths) -> Result<String, String> {
    let lock = paths.registry_lock();
    let shown = lock.display();
    let age = std::fs::symlink_metadata(&lock)
        .and_then(|m| m.modified())
        .map(|t| t.elapsed().unwrap_or_default())
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    seed_lock_removable(age, seed_psm_running())
        .map_err(|why| format!("left the seed's lock directory {shown}: {why}"))?;
    let name = lock.file_name().unwrap_or_default();
    Dir::open(paths.root())
        .and_then(|root| root.remove_dir(name))
        .map_err(|e| format!("cannot remove {shown}: {e}"))?;
    Ok(format!("removed the seed's stale lock directory {shown}"))
}

/// True if `argv` is the seed's PSM: node running a `process-state-manager`
/// script (a psm whose root path merely contains the word is not).
fn is_seed_psm(argv: &[&[u8]]) -> bool {
    let base =
        |arg: &[u8]| -> Vec<u8> { arg.rsplit(|&b| b == b'/').next().unwrap_or(arg).to_vec() };
    let Some((program, args)) = argv.split_first() else {
        return false;
    };
    base(program).starts_with(b"node")
        && args
            .iter()
            .any(|a| base(a).starts_with(b"process-state-manager"))
}

/// Whether a seed PSM runs on this machine (Linux: `/proc/*/cmdline`;
/// macOS: each process's `KERN_PROCARGS2`; elsewhere: `ps`, whose
/// arguments are split at spaces).
fn seed_psm_running() -> bool {
    #[cfg(target_os = "linux")]
    {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return false;
        };
        dir.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .any(|cmdline| {
                let argv: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
                is_seed_psm(&argv)
            })
    }
    #[cfg(target_os = "macos")]
    {
        use crate::process::macos;
        macos::all_pids().into_iter().any(|pid| {
            macos::argv(pid).is_some_and(|args| {
                let argv: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                is_seed_psm(&argv)
            })
        })
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        let Ok(out) = std::process::Command::new("ps")
            .args(["-Ao", "args="])
            .output()
        else {
            return false;
        };
        String::from_utf8_lossy(&out.stdout).lines().any(|line| {
            let argv: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
            is_seed_psm(&argv)
        })
    }
}

fn check_registry(paths: &Paths, out: &mut Vec<Finding>) -> Option<Registry> {
    let store = Store::new(paths.clone());
    let waited = match store.shared_lock_wait(LOCK_WAIT) {
        Ok(Some(waited)) => waited,
        Ok(None) => {
            out.push(finding(
                "registry",
                Level::Fail,
                format!(
                    "lock not obtained within {}s: a writer is stuck",
                    LOCK_WAIT.as_secs()
                ),
            ));
            return None;
        }
        Err(e) => {
            out.push(finding(
                "registry",
                Level::Fail,
                format!("{:#}", anyhow::Error::from(e)),
            ));
            return None;
        }
    };
    match store.read() {
        Ok(reg) => {
            out.push(finding(
                "registry",
                Level::Pass,
                format!(
                    "parses ({} services); lock obtained in {}ms",
                    reg.service_count(),
                    waited.as_millis()
                ),
            ));
            Some(reg)
        }
        Err(e) => {
            out.push(finding(
                "registry",
                Level::Fail,
                format!("{:#}", anyhow::Error::from(e)),
            ));
            None
        }
    }
}

fn check_config(path: &Path, out: &mut Vec<Finding>) -> Option<Config> {
    if !path.exists() {
        out.push(finding(
            "config",
            Level::Warn,
            format!(
                "{} not found: the coordinator runs no services",
                path.display()
            ),
        ));
        return Some(Config::empty());
    }
    match Config::load(path) {
        Ok(c) => {
            out.push(finding(
                "config",
                Level::Pass,
                format!("{} services", c.services.len()),
            ));
            Some(c)
        }
        Err(e) => {
            out.push(finding(
                "config",
                Level::Fail,
                format!("{:#}", anyhow::Error::from(e)),
            ));
            None
        }
    }
}

fn check_writable(paths: &Paths, out: &mut Vec<Finding>) {
    for (name, dir) in [
        ("root", paths.root().to_path_buf()),
        ("logs", paths.logs_dir()),
    ] {
        // Through fsx: a `.logs` that is a link or not ours is reported,
        // and the probe is never written outside the root.
        let opened = if name == "root" {
            Dir::open(&dir)
        } else {
            Dir::own(&dir, true, false)
        };
        let result = opened.and_then(|d| {
            let (_file, probe) = d.create_temp(".psm-verify-")?;
            d.remove(probe).map(drop)
        });
        out.push(match result {
            Ok(()) => finding(name, Level::Pass, format!("{} is writable", dir.display())),
            Err(e) if crate::fsx::is_refusal(&e) => finding(name, Level::Fail, e.to_string()),
            Err(e) => finding(
                name,
                Level::Fail,
                format!("{} is not writable: {e}", dir.display()),
            ),
        });
    }
}

/// What keeps a coordinator from starting before it starts: a `.psm` that
/// is not a directory, or a socket directory that is not privately ours.
fn check_runtime(paths: &Paths, out: &mut Vec<Finding>) {
    let dir = paths.runtime_dir();
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if !m.is_dir() => out.push(finding(
            "runtime",
            Level::Fail,
            format!(
                "{} is not a directory: the coordinator cannot start; move it away",
                dir.display()
            ),
        )),
        _ => {}
    }
    let socket = paths.control_socket();
    if let Ok(m) = std::fs::symlink_metadata(&socket) {
        use std::os::unix::fs::FileTypeExt;
        if !m.file_type().is_socket() {
            out.push(finding(
                "socket",
                Level::Fail,
                format!(
                    "{} is not a socket: the coordinator cannot bind there; move it away",
                    socket.display()
                ),
            ));
            return;
        }
    }
    let Some(sock_dir) = socket.parent().filter(|d| *d != dir) else {
        out.push(finding("socket", Level::Pass, socket.display().to_string()));
        return;
    };
    let uid = nix::unistd::geteuid().as_raw();
    // A missing directory is fine: the coordinator creates it on start.
    let problem = sock_dir
        .symlink_metadata()
        .is_ok()
        .then(|| crate::paths::private_dir_problem(sock_dir, uid))
        .flatten();
    out.push(match problem {
        Some(problem) => finding(
            "socket",
            Level::Fail,
            format!("the coordinator cannot bind its socket: {problem}"),
        ),
        None => finding(
            "socket",
            Level::Pass,
            format!(
                "{} (the root is too long for .psm/coordinator.sock)",
                socket.display()
            ),
        ),
    });
}

fn check_coordinator(paths: &Paths, reg: &Registry, out: &mut Vec<Finding>) {
    if let Some(mark) = DownMark::read(paths) {
        out.push(finding(
            "coordinator",
            Level::Warn,
            format!("{}; `psm up` starts it again", mark.note),
        ));
        return;
    }
    let record = reg.get(&ServiceKey::global(COORDINATOR_NAME));
    let observed = record.and_then(|r| r.pid).and_then(ProcInfo::read);
    let max_age = watchdog::max_age_for(record, None);
    let j = watchdog::judge(record, observed, now_millis(), max_age);
    out.push(match j.verdict {
        Verdict::Ok => finding("coordinator", Level::Pass, j.reason),
        v => finding(
            "coordinator",
            Level::Fail,
            format!("{v}: {}; start it with `psm up`", j.reason),
        ),
    });
}

fn check_records(reg: &Registry, out: &mut Vec<Finding>) {
    let dead: Vec<String> = reg
        .services()
        .filter(|(_, r)| r.pid.is_some() && !r.is_alive())
        .map(|(k, _)| k.to_string())
        .collect();
    out.push(if dead.is_empty() {
        finding("dead records", Level::Pass, "none")
    } else {
        finding(
            "dead records",
            Level::Fail,
            format!(
                "{} record(s) of gone processes ({}); `psm cleanup` removes them",
                dead.len(),
                dead.join(", ")
            ),
        )
    });
    let mut by_identity: HashMap<Identity, Vec<String>> = HashMap::new();
    for (key, r) in reg.services() {
        if let Some(id) = r.identity().filter(|_| r.is_alive()) {
            by_identity.entry(id).or_default().push(key.to_string());
        }
    }
    let dups: Vec<String> = by_identity
        .into_iter()
        .filter(|(_, keys)| keys.len() > 1)
        .map(|(id, keys)| format!("pid {} as {}", id.pid, keys.join(" and ")))
        .collect();
    out.push(if dups.is_empty() {
        finding("duplicates", Level::Pass, "none")
    } else {
        finding(
            "duplicates",
            Level::Fail,
            format!("one process recorded twice: {}", dups.join("; ")),
        )
    });
}

fn check_ports(reg: &Registry, cfg: &Config, out: &mut Vec<Finding>) {
    for spec in &cfg.services {
        let Some(HealthSpec::Port { host, port }) = &spec.health else {
            continue;
        };
        let running: Vec<Identity> = reg
            .services()
            .filter(|(k, r)| k.name == spec.name && r.is_alive())
            .filter_map(|(_, r)| r.identity())
            .collect();
        let level_reason = if !running.is_empty() {
            port_holder(host, *port, &spec.name, &running)
        } else {
            match std::net::TcpListener::bind((host.as_str(), *port)) {
                Ok(_) => (Level::Pass, format!("{host}:{port} free for {}", spec.name)),
                Err(e) => (
                    Level::Fail,
                    format!(
                        "{host}:{port} is taken by another process ({e}); {} could not listen",
                        spec.name
                    ),
                ),
            }
        };
        out.push(finding("port", level_reason.0, level_reason.1));
    }
}

/// Who holds the port of a running service: "held by" only when its
/// listening socket is in the service's process tree (`sockets::owner_check`).
fn port_holder(host: &str, port: u16, name: &str, running: &[Identity]) -> (Level, String) {
    use crate::process::sockets::{owner_check, Owner};
    use std::net::ToSocketAddrs;
    let ips: Vec<std::net::IpAddr> = (host, port)
        .to_socket_addrs()
        .map(|addrs| addrs.map(|a| a.ip()).collect())
        .unwrap_or_default();
    let mut seen = Vec::new();
    for &ip in &ips {
        for &id in running {
            match owner_check(ip, port, id) {
                Owner::Service => {
                    return (
                        Level::Pass,
                        format!("{host}:{port} held by {name} (pid {})", id.pid),
                    )
                }
                owner => seen.push(owner),
            }
        }
    }
    if seen.contains(&Owner::Unknown) {
        (
            Level::Pass,
            format!("{name} is running; which process holds {host}:{port} is not checked on this system"),
        )
    } else if seen.contains(&Owner::Stranger) {
        (
            Level::Fail,
            format!("{host}:{port} is held by a process outside {name}, which is running; stop that process"),
        )
    } else {
        (
            Level::Warn,
            format!("{name} is running but nothing of it listens on {host}:{port}"),
        )
    }
}

#[cfg(test)]
mod seed_tests {
    use super::*;

    /// The seed's PSM is node running a process-state-manager script.
    #[test]
    fn seed_psm_table() {
        let cases: &[(&[&str], bool)] = &[
            (
                &["node", "scripts/process-state-manager.js", "status"],
                true,
            ),
            (
                &["/usr/bin/node", "/r/scripts/process-state-manager.js"],
                true,
            ),
            (&["nodejs", "process-state-manager.js"], true),
            (&["psm", "--root", "/home/u/process-state-manager"], false),
            (
                &["node", "/home/process-state-manager-repo/server.js"],
                false,
            ),
            (&["vim", "process-state-manager.js"], false),
            (&[], false),
        ];
        for (argv, want) in cases {
            let argv: Vec<&[u8]> = argv.iter().map(|a| a.as_bytes()).collect();
            assert_eq!(is_seed_psm(&argv), *want, "{argv:?}");
        }
    }

    /// Removable only when stale (10 s, proper-lockfile's rule) and no seed
    /// PSM runs.
    #[test]
    fn seed_lock_removable_table() {
        let s = Duration::from_secs;
        let cases = [
            (s(11), false, true),
            (s(10), false, true),
            (s(9), false, false),
            (s(3600), true, false),
            (s(0), true, false),
        ];
        for (age, running, ok) in cases {
            assert_eq!(
                seed_lock_removable(age, running).is_ok(),
                ok,
                "{age:?} {running}"
            );
        }
    }
}
