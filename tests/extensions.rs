//! The extension examples work: an HTTP probe actor and a scheduled job kind,
//! each plugged into an otherwise unchanged psm binary.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{free_port, wait_for, wait_until, Root};

/// An example binary, built by `cargo test` next to the test binaries.
fn example(name: &str) -> PathBuf {
    let psm = PathBuf::from(support::PSM);
    let path = psm.parent().unwrap().join("examples").join(name);
    assert!(
        path.exists(),
        "{} not built; run `cargo build --examples`",
        path.display()
    );
    path
}

fn run(root: &Root, exe: &PathBuf, args: &[&str]) -> String {
    let out = Command::new(exe)
        .arg("--root")
        .arg(root.path())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", support::stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The `http` probe keeps a service that answers HTTP healthy (its health
/// stamp advances, one run only) and restarts one whose URL does not answer.
#[test]
fn http_probe_example_checks_services_over_http() {
    let root = Root::new();
    let exe = example("http_probe");
    let (good, bad) = (free_port(), free_port());
    root.script(
        "web.sh",
        &format!("echo run >> web.runs\nexec python3 -m http.server {good} --bind 127.0.0.1"),
    );
    root.script("deaf.sh", "echo run >> deaf.runs\nexec sleep 1000");
    root.write_config(&format!(
        r#"health-interval = "100ms"
[restart]
base = "10ms"
[[service]]
name = "web"
type = "global"
command = ["sh", "web.sh"]
start-period = "1s"
health = {{ probe = "http", options = {{ url = "http://127.0.0.1:{good}/" }} }}
[[service]]
name = "deaf"
type = "global"
command = ["sh", "deaf.sh"]
health = {{ probe = "http", options = {{ url = "http://127.0.0.1:{bad}/" }} }}
"#
    ));
    run(&root, &exe, &["up"]);
    wait_for(
        Duration::from_secs(10),
        "deaf restarted by the http probe",
        || root.read("deaf.runs").lines().count() >= 3,
    );
    let first = root.global("web")["lastHealthCheck"].as_u64().unwrap();
    wait_until(
        Duration::from_secs(10),
        "web's health stamp to advance past the start period",
        || {
            let now = root.global("web")["lastHealthCheck"].as_u64().unwrap();
            if now > first + 1000 {
                Ok(())
            } else {
                Err(now)
            }
        },
    );
    assert_eq!(
        root.read("web.runs").lines().count(),
        1,
        "a healthy service was restarted"
    );
    run(&root, &exe, &["down"]);
}

/// The `job` kind runs its command on a schedule, records its runs in the
/// registry, and stops with `psm stop`.
#[test]
fn scheduled_job_example_runs_on_schedule() {
    let root = Root::new();
    let exe = example("scheduled_job");
    root.write_config(
        r#"health-interval = "100ms"
[[service]]
name = "tick"
type = "global"
kind = "job"
command = ["sh", "-c", "echo tick >> ticks"]
options = { every = "50ms" }
"#,
    );
    run(&root, &exe, &["up"]);
    wait_for(Duration::from_secs(10), "three runs", || {
        root.read("ticks").lines().count() >= 3
    });
    wait_until(Duration::from_secs(10), "runs recorded", || {
        let r = root.global("tick");
        match r["metadata"]["runs"].as_u64() {
            Some(n) if n >= 3 && r["metadata"]["lastExit"].as_str().is_some() => Ok(()),
            _ => Err(r),
        }
    });
    run(&root, &exe, &["stop", "tick"]);
    let after_stop = root.read("ticks").lines().count();
    wait_for(Duration::from_secs(5), "record removed", || {
        root.global("tick").is_null()
    });
    std::thread::sleep(Duration::from_millis(300)); // proves a run never happens after stop
    assert_eq!(root.read("ticks").lines().count(), after_stop);
}

/// An extension kind counts as ready once started: a service that depends
/// on a job that itself waited for a dependency starts as soon as the job
/// does (not at the coordinator's next round: the interval here is an hour).
#[test]
fn a_chain_through_an_extension_kind_is_released() {
    let root = Root::new();
    let exe = example("scheduled_job");
    root.write_config(
        r#"health-interval = "1h"
[[service]]
name = "db"
type = "global"
command = ["sleep", "1000"]
start-period = "300ms"
[[service]]
name = "tick"
type = "global"
kind = "job"
command = ["sh", "-c", "echo tick >> ticks"]
options = { every = "50ms" }
depends-on = ["db"]
[[service]]
name = "web"
type = "global"
command = ["sleep", "1000"]
depends-on = ["tick"]
"#,
    );
    run(&root, &exe, &["up"]);
    let status = |name: &str| root.global(name)["status"].as_str().map(str::to_string);
    wait_for(Duration::from_secs(10), "web running", || {
        status("web").as_deref() == Some("running")
    });
    run(&root, &exe, &["down"]);
}
