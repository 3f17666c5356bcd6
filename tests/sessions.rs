//! Sessions: services tied to a terminal session end with it, grandchildren
//! included, whether the session's command exits or its wrapper is SIGKILLed.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{alive, wait_for, Root, PSM};

fn session_run(root: &Root, script: &std::path::Path) -> Command {
    let mut cmd = root.cmd();
    cmd.args(["session", "run", "--project"])
        .arg(root.path())
        .arg("--")
        .arg("sh")
        .arg(script)
        .env("PSM_BIN", PSM)
        .env("PSM_TEST_DIR", root.path())
        .stdout(Stdio::null());
    cmd
}

fn service_pids(root: &Root) -> Vec<i32> {
    let pids: Vec<i32> = [
        "alpha.pid",
        "alpha.grandchild",
        "beta.pid",
        "beta.grandchild",
    ]
    .iter()
    .map(|f| root.pid_from(f))
    .collect();
    for &p in &pids {
        root.reaper.group(p);
    }
    pids
}

/// When the session's command exits, every service it spawned and every
/// grandchild of theirs is gone, the session is gone from the registry, and
/// the wrapper exits with the command's status.
#[test]
fn session_run_cleans_up_when_the_command_exits() {
    let root = Root::new();
    let script = support::session_command(&root, "exit 7");
    let status = session_run(&root, &script).status().unwrap();
    assert_eq!(
        status.code(),
        Some(7),
        "wrapper must exit with the command's status"
    );
    let pids = service_pids(&root);
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived its session");
    }
    let reg = root.registry();
    assert!(reg["sessions"].as_object().unwrap().is_empty(), "{reg}");
    assert!(
        reg["services"]["sessions"].as_object().unwrap().is_empty(),
        "{reg}"
    );
}

/// A wrapper killed with SIGKILL cannot clean up; `psm cleanup` afterwards
/// finds the session's pid gone and ends everything the session started.
#[test]
fn session_killed_with_sigkill_is_cleaned_by_cleanup() {
    let root = Root::new();
    let script = support::session_command(&root, "exec sleep 1000");
    let mut wrapper = session_run(&root, &script).spawn().unwrap();
    root.reaper.pid(wrapper.id() as i32);
    let pids = service_pids(&root);
    // Written after the services' pid files, so it may lag them.
    wait_for(Duration::from_secs(10), "session id written", || {
        !root.read("session.id").trim().is_empty()
    });
    let id = root.read("session.id").trim().to_string();
    wait_for(Duration::from_secs(5), "session registered", || {
        root.registry()["sessions"].get(&id).is_some()
    });

    wrapper.kill().unwrap();
    wrapper.wait().unwrap();
    for &pid in &pids {
        assert!(alive(pid), "services must still run before cleanup");
    }
    let out = root.ok(&["cleanup", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["sessions"][0]["session"], id.as_str());
    assert_eq!(
        report["sessions"][0]["terminated"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "{report}"
    );
    for pid in pids {
        assert!(
            !alive(pid),
            "pid {pid} survived cleanup of its dead session"
        );
    }
    let reg = root.registry();
    assert!(reg["sessions"].get(&id).is_none());
    assert!(reg["services"]["sessions"].get(&id).is_none());
}

/// `session spawn` starts the command detached (own session and group,
/// output in the session log) and records its pid, start time and group.
#[test]
fn session_spawn_records_a_detached_group_leader() {
    let root = Root::new();
    let out = root
        .cmd()
        .args([
            "session",
            "spawn",
            "echoer",
            "--session",
            "s1",
            "--",
            "sh",
            "-c",
            "echo hello; exec sleep 1000",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::stderr(&out));
    let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    root.reaper.group(pid);
    let record = &root.registry()["services"]["sessions"]["s1"]["echoer"];
    assert_eq!(record["pid"], pid);
    assert_eq!(record["pgid"], pid);
    assert_eq!(record["type"], "per-session");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(fields[3], pid.to_string(), "own session (sid == pid)");
    wait_for(Duration::from_secs(5), "output in the session log", || {
        root.read(".logs/s1.echoer.log").contains("hello")
    });

    let res: serde_json::Value =
        serde_json::from_str(&root.ok(&["session", "cleanup", "s1", "--json"])).unwrap();
    assert_eq!(res["cleaned"], 1);
    assert_eq!(res["terminated"][0]["pid"], pid);
    assert!(!alive(pid));
}

/// SIGTERM to the wrapper is passed to the command, and the session is
/// cleaned up before the wrapper exits.
#[test]
fn sigterm_to_the_wrapper_cleans_up() {
    let root = Root::new();
    let script = support::session_command(&root, "exec sleep 1000");
    let mut wrapper = session_run(&root, &script).spawn().unwrap();
    root.reaper.pid(wrapper.id() as i32);
    let pids = service_pids(&root);
    unsafe { libc::kill(wrapper.id() as i32, libc::SIGTERM) };
    let status = wrapper.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived");
    }
    assert!(root.registry()["sessions"].as_object().unwrap().is_empty());
}
