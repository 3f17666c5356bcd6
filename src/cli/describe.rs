//! `psm status <service>`: one service in detail, like `pm2 describe`.
//! Everything shown comes from the registry record (written by the service's
//! actor: exits, last probe, cwd) and from one read of the process table
//! (CPU, memory, children), so it works with or without a coordinator.

use std::process::ExitCode;

use serde::Serialize;
use serde_json::Value;

use super::args::StatusArgs;
use super::output::{self, age, cpu_cell, memory_cell};
use super::top;
use super::{CliError, CliResult};
use crate::input;
use crate::paths::Paths;
use crate::process::usage::Snapshot;
use crate::registry::{
    manager::health_with, ExitRecord, ManagerError, Registry, ServiceHealth, StateManager,
};
use crate::time::now_millis;

/// One service as `psm status <service> --json` prints it: the status
/// table's entry plus what only the detail view shows.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDetail {
    #[serde(flatten)]
    pub health: ServiceHealth,
    pub command: String,
    pub cwd: Option<String>,
    pub pgid: Option<i32>,
    /// Milliseconds the current process has run (running services only).
    pub uptime: Option<u64>,
    /// The last exits, oldest first.
    pub exits: Vec<ExitRecord>,
    /// The configured health check ("port 127.0.0.1:8765"), if any.
    pub health_check: Option<String>,
    /// The last probe: `{time, ok, reason}`.
    pub last_probe: Option<Value>,
    pub log: String,
    /// The pids of the service's live descendants.
    pub children: Vec<i32>,
}

/// `psm status <service> [--project P] [--json]`.
pub fn run(paths: &Paths, manager: &StateManager, args: &StatusArgs, name: &str) -> CliResult {
    input::validate_name("service name", name)?;
    let project = match &args.project {
        Some(p) => Some(input::canonical_project(p)?.to_string_lossy().into_owned()),
        None => None,
    };
    let registry = manager.store().read().map_err(ManagerError::from)?;
    let mut snapshot = Snapshot::take();
    let mut health = health_with(&registry, |id| snapshot.is_alive(id));
    top::measure(&mut health, &registry, &mut snapshot, None);
    let details: Vec<ServiceDetail> = health
        .details
        .into_iter()
        .filter(|d| d.name == name && (project.is_none() || d.project_path == project))
        .map(|d| detail(paths, &registry, &snapshot, d))
        .collect();
    if details.is_empty() {
        let within = project.map_or(String::new(), |p| format!(" in project {p}"));
        return Err(CliError::Failed(anyhow::anyhow!(
            "no service named '{}'{within}; `psm status` lists them",
            crate::input::printable(name)
        )));
    }
    if args.json {
        output::print_json(&details);
    } else {
        let text: Vec<String> = details.iter().map(render).collect();
        print!("{}", text.join("\n"));
    }
    Ok(ExitCode::SUCCESS)
}

fn detail(
    paths: &Paths,
    registry: &Registry,
    snapshot: &Snapshot,
    health: ServiceHealth,
) -> ServiceDetail {
    let record = registry.get(&top::key_of(&health));
    let meta = |key: &str| {
        record
            .and_then(|r| r.metadata.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let running = health.status != crate::registry::status::DEAD && health.pid.is_some();
    let identity = record.and_then(|r| r.identity()).filter(|_| running);
    let children = identity.map_or(Vec::new(), |leader| {
        snapshot
            .tree(leader)
            .into_iter()
            .skip(1) // the leader itself
            .map(|id| id.pid)
            .collect()
    });
    ServiceDetail {
        command: record.map(|r| r.script.clone()).unwrap_or_default(),
        cwd: meta("cwd"),
        pgid: record.and_then(|r| r.pgid),
        uptime: running.then(|| now_millis().saturating_sub(health.start_time)),
        exits: record.map(|r| r.exits()).unwrap_or_default(),
        health_check: meta("health"),
        last_probe: record
            .and_then(|r| r.extra.get(crate::supervisor::service::LAST_PROBE_KEY))
            .cloned(),
        log: top::log_path(paths, &health).to_string_lossy().into_owned(),
        children,
        health,
    }
}

/// The detail as a person reads it: one `key  value` line each, exits
/// newest first. Every value goes through `printable` (the registry is
/// anyone's to write).
pub fn render(d: &ServiceDetail) -> String {
    let h = &d.health;
    let scope = match (&h.project_path, &h.session_id) {
        (_, Some(s)) => format!("session {s}"),
        (Some(p), None) => format!("project {p}"),
        (None, None) => "global".to_string(),
    };
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    let probe = match &d.last_probe {
        Some(p) => {
            let when = age(p["time"].as_u64().unwrap_or(0));
            match p["reason"].as_str() {
                Some(why) if p["ok"] == Value::Bool(false) => format!("failed {when} ago: {why}"),
                _ => format!("passed {when} ago"),
            }
        }
        None => "-".to_string(),
    };
    let children = if d.children.is_empty() {
        "-".to_string()
    } else {
        let pids: Vec<String> = d.children.iter().map(i32::to_string).collect();
        format!("{} ({})", d.children.len(), pids.join(" "))
    };
    let status = match &h.waiting {
        Some(why) => format!("{} ({why})", h.status),
        None => h.status.clone(),
    };
    let mut rows = vec![
        ("status", status),
        ("command", d.command.clone()),
        ("cwd", dash(d.cwd.clone())),
        ("pid", dash(h.pid.map(|p| p.to_string()))),
        ("pgid", dash(d.pgid.map(|p| p.to_string()))),
        (
            "uptime",
            dash(
                d.uptime
                    .map(|ms| crate::time::short_duration(std::time::Duration::from_millis(ms))),
            ),
        ),
        ("restarts", h.restart_count.to_string()),
        ("cpu", cpu_cell(h.cpu)),
        ("memory", memory_cell(h.rss)),
        ("children", children),
        ("health", dash(d.health_check.clone())),
        ("last probe", probe),
        ("log", d.log.clone()),
    ];
    if d.exits.is_empty() {
        rows.push(("exits", "-".to_string()));
    }
    let mut out = format!("{} ({scope})\n", input::printable(&h.name));
    for (key, value) in rows {
        out.push_str(&format!("  {key:<10}  {}\n", input::printable(&value)));
    }
    for (i, exit) in d.exits.iter().rev().enumerate() {
        let key = if i == 0 { "exits" } else { "" };
        out.push_str(&format!(
            "  {key:<10}  {} ago  {}\n",
            age(exit.time),
            input::printable(&exit.reason)
        ));
    }
    out
}
