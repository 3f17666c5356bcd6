//! What the CLI prints: compact tables for people, JSON for programs.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::Path;

use serde::Serialize;

use crate::input::printable;
use crate::registry::{HealthStatus, ServiceHealth};
use crate::time::{short_duration, since_millis};

/// Prints JSON: indented for a person at a terminal, compact (one line, a
/// third smaller) for the programs that read it through a pipe.
pub fn print_json<T: Serialize>(value: &T) {
    let mut out = std::io::stdout().lock();
    // Serializing psm's own types cannot fail: no maps with non-string keys.
    let mut bytes = if out.is_terminal() {
        serde_json::to_vec_pretty(value)
    } else {
        serde_json::to_vec(value)
    }
    .expect("serializable");
    bytes.push(b'\n');
    // A closed pipe (`psm status --json | head`) is not psm's failure.
    let _ = out.write_all(&bytes);
}

/// Renders rows as left-aligned columns separated by two spaces. Every cell
/// goes through [`printable`]: names, statuses, sessions and paths come from
/// the registry, which any program may write, and a raw escape sequence in
/// one would reach the user's terminal (clear the screen, set the title,
/// hide text). `--json` prints them exactly.
fn table(rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub(super) fn age(millis: u64) -> String {
    if millis == 0 {
        "-".to_string()
    } else {
        short_duration(since_millis(millis))
    }
}

/// The last path component: enough to tell projects apart in a table.
fn short_project(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

/// CPU as a table shows it: "12.5%", "-" when not measured.
pub(super) fn cpu_cell(cpu: Option<f64>) -> String {
    cpu.map_or("-".to_string(), |c| format!("{c:.1}%"))
}

/// Resident memory in at most five characters: "812K", "12.4M", "1.2G".
pub(super) fn memory_cell(rss: Option<u64>) -> String {
    let Some(bytes) = rss else {
        return "-".to_string();
    };
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 && unit > 0 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{value:.0}{}", UNITS[unit])
    }
}

/// The widest a reason line gets: the table stays readable at 100 columns.
const REASON_WIDTH: usize = 100;

/// The table with, under each service that is not running, why it last
/// ended (`  └ exited with code 3`), cut to fit [`REASON_WIDTH`]. The
/// table's first line is its header; `details` are its other lines.
fn with_reasons(table: &str, details: &[ServiceHealth]) -> String {
    let mut out = String::new();
    let mut lines = table.lines();
    if let Some(header) = lines.next() {
        out.push_str(header);
        out.push('\n');
    }
    for (line, d) in lines.zip(details) {
        out.push_str(line);
        out.push('\n');
        use crate::registry::status;
        // A starting service has a process: its last exit is history.
        let running =
            matches!(d.status.as_str(), status::RUNNING | status::STARTING) && d.pid.is_some();
        // A waiting service says what it waits for rather than how it ended.
        let reason = d.waiting.as_deref().or_else(|| {
            d.last_exit
                .as_ref()
                .and_then(crate::registry::model::exit_reason)
        });
        if let (false, Some(reason)) = (running, reason) {
            let text = format!("  └ {}", printable(reason));
            out.push_str(&cut(&text, REASON_WIDTH));
            out.push('\n');
        }
    }
    out
}

/// `text` in at most `width` characters, ending in `…` when cut.
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut s: String = text.chars().take(width.saturating_sub(1)).collect();
    s.push('…');
    s
}

pub fn print_status(health: &HealthStatus) {
    if health.details.is_empty() {
        println!("no services registered");
    } else {
        let mut rows = vec![[
            "NAME", "TYPE", "SCOPE", "PID", "STATUS", "UPTIME", "HEALTH", "RESTARTS", "CPU", "MEM",
        ]
        .map(String::from)
        .to_vec()];
        for d in &health.details {
            let scope = match (&d.project_path, &d.session_id) {
                (_, Some(s)) => s.clone(),
                (Some(p), None) => short_project(p),
                (None, None) => "-".to_string(),
            };
            let running = d.status != "dead" && d.pid.is_some();
            rows.push(vec![
                d.name.clone(),
                d.service_type.to_string(),
                scope,
                d.pid.map_or("-".to_string(), |p| p.to_string()),
                d.status.clone(),
                if running {
                    age(d.start_time)
                } else {
                    "-".to_string()
                },
                age(d.last_health_check),
                d.restart_count.to_string(),
                cpu_cell(d.cpu),
                memory_cell(d.rss),
            ]);
        }
        print!("{}", with_reasons(&table(&rows), &health.details));
        println!(
            "{} service(s): {} healthy, {} unhealthy",
            health.total_services, health.healthy_services, health.unhealthy_services
        );
    }
    if !health.sessions.is_empty() {
        let mut rows = vec![["SESSION", "PID", "PROJECT", "ALIVE", "AGE", "SERVICES"]
            .map(String::from)
            .to_vec()];
        for s in &health.sessions {
            rows.push(vec![
                s.id.clone(),
                s.pid.to_string(),
                short_project(&s.project_path),
                if s.alive { "yes" } else { "no" }.to_string(),
                age(s.start_time),
                s.services.to_string(),
            ]);
        }
        println!();
        print!("{}", table(&rows));
    }
}

#[cfg(test)]
mod table_tests {
    use super::*;

    /// Control characters in cells are escaped, and columns align on what
    /// is printed.
    #[test]
    fn cells_are_escaped_and_aligned() {
        let rows = vec![
            vec!["NAME".to_string(), "STATUS".to_string()],
            vec!["a\u{1b}[2J".to_string(), "ok".to_string()],
            vec!["b\nc".to_string(), "x\u{7}".to_string()],
        ];
        let text = table(&rows);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        assert_eq!(
            text,
            "NAME        STATUS\na\\u{1b}[2J  ok\nb\\nc        x\\u{7}\n"
        );
    }
}

#[cfg(test)]
mod usage_cell_tests {
    use super::*;

    #[test]
    fn memory_and_cpu_cells_stay_short() {
        let cases = [
            (None, "-"),
            (Some(0), "0K"),
            (Some(812 * 1024), "812K"),
            (Some(999 * 1024 + 1000), "1000K"),
            (Some(1024 * 1024), "1.0M"),
            (Some(12_400 * 1024), "12M"),
            (Some(3 * 1024 * 1024 * 1024), "3.0G"),
            (Some(u64::MAX), "16777216T"),
        ];
        for (rss, want) in cases {
            assert_eq!(memory_cell(rss), want, "{rss:?}");
        }
        assert_eq!(cpu_cell(Some(12.345)), "12.3%");
        assert_eq!(cpu_cell(None), "-");
    }
}

#[cfg(test)]
mod reason_tests {
    use super::*;
    use crate::registry::ServiceType;

    fn service(
        status: &str,
        pid: Option<i32>,
        last_exit: Option<serde_json::Value>,
    ) -> ServiceHealth {
        ServiceHealth {
            name: "s".into(),
            service_type: ServiceType::Global,
            project_path: None,
            session_id: None,
            pid,
            status: status.into(),
            healthy: false,
            start_time: 0,
            last_health_check: 0,
            restart_count: 0,
            cpu: None,
            rss: None,
            last_exit,
            waiting: None,
        }
    }

    /// A reason line under each service that is not running and has one;
    /// none under a running one; long or hostile reasons are cut and escaped.
    #[test]
    fn reasons_go_under_services_that_are_not_running() {
        let exit = |r: &str| Some(serde_json::json!({ "reason": r }));
        let long = "x".repeat(300);
        let details = [
            service("running", Some(5), exit("exited with code 1")),
            service("failed", None, exit("exited with code 3")),
            service("dead", Some(6), Some(serde_json::json!("oom"))),
            service("backoff", None, None),
            service("stopped", None, exit(&long)),
            service("failed", None, exit("\u{1b}[2Jgone")),
            ServiceHealth {
                waiting: Some("waiting for db".into()),
                ..service("waiting", None, exit("exited with code 1"))
            },
            service("starting", Some(7), exit("exited with code 2")),
        ];
        let table = "H\na\nb\nc\nd\ne\nf\ng\nh\n";
        let text = with_reasons(table, &details);
        let cut_line = format!("  └ {}…", "x".repeat(95));
        let want = [
            "H",
            "a",
            "b",
            "  └ exited with code 3",
            "c",
            "  └ oom",
            "d",
            "e",
            &cut_line,
            "f",
            "  └ \\u{1b}[2Jgone",
            "g",
            "  └ waiting for db",
            "h",
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), want);
        assert!(text.lines().all(|l| l.chars().count() <= REASON_WIDTH));
    }
}
