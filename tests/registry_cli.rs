//! The registry through the real binary: records, identity, status, cleanup.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{alive, Root};

/// A registered live process is running to `check`, shown healthy by
/// `status`, and survives `get`/`refresh`/`unregister` round trips.
#[test]
fn register_get_check_refresh_unregister() {
    let root = Root::new();
    let child = root.sleeper();
    let pid = child.id().to_string();
    root.ok(&[
        "register",
        "web",
        &pid,
        "global",
        "scripts/web.js",
        "--meta",
        "port=8080",
    ]);

    let record: Value = serde_json::from_str(&root.ok(&["get", "web", "global"])).unwrap();
    assert_eq!(record["pid"], child.id());
    assert_eq!(record["type"], "global");
    assert_eq!(record["status"], "running");
    assert_eq!(record["metadata"]["port"], "8080");
    assert!(record["pidStartTime"].as_u64().is_some());
    assert_eq!(root.ok(&["check", "web", "global"]).trim(), "true");

    let before = root.registry()["services"]["global"]["web"]["lastHealthCheck"]
        .as_u64()
        .unwrap();
    support::wait_for(Duration::from_secs(5), "a newer health stamp", || {
        root.ok(&["refresh", "web", "global"]);
        root.registry()["services"]["global"]["web"]["lastHealthCheck"]
            .as_u64()
            .unwrap()
            > before
    });

    let status: Value = serde_json::from_str(&root.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["totalServices"], 1);
    assert_eq!(status["healthyServices"], 1);
    assert_eq!(status["byServiceType"]["global"], 1);
    assert_eq!(status["details"][0]["status"], "running");

    root.ok(&["unregister", "web", "global"]);
    let out = root.psm(&["get", "web", "global"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(support::stderr(&out).contains("not registered"));
    assert!(
        alive(child.id() as i32),
        "unregister must not touch the process"
    );
}

/// Per-project records are stored under the canonical project path, and
/// per-session records under the session id (from the flag or PSM_SESSION_ID).
#[test]
fn scopes_are_stored_in_the_seed_layout() {
    let root = Root::new();
    let child = root.sleeper();
    let pid = child.id().to_string();
    let project = root.file("proj");
    std::fs::create_dir(&project).unwrap();
    let spelled = format!("{}/..", project.join("x").display());
    std::fs::create_dir(project.join("x")).unwrap();
    root.ok(&[
        "register",
        "tm",
        &pid,
        "per-project",
        "tm.js",
        "--project",
        &spelled,
    ]);
    let out = root
        .cmd()
        .args(["register", "helper", &pid, "per-session", "h.sh"])
        .env("PSM_SESSION_ID", "s-1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::stderr(&out));

    let reg = root.registry();
    let canonical = project.canonicalize().unwrap().display().to_string();
    let tm = &reg["services"]["projects"][&canonical]["tm"];
    assert_eq!(tm["type"], "per-project");
    assert_eq!(tm["projectPath"], canonical.as_str());
    assert_eq!(
        reg["services"]["sessions"]["s-1"]["helper"]["sessionId"],
        "s-1"
    );
    assert_eq!(reg["version"], "3.0.0");
    assert!(reg["lastChange"].as_u64().unwrap() > 0);
    assert_eq!(
        root.ok(&["check", "tm", "per-project", "--project", &canonical])
            .trim(),
        "true"
    );
}

/// A record whose start time does not match the live process at that pid is
/// dead to check/status, cleanup removes it, and the process is not signalled.
#[test]
fn identity_mismatch_is_dead_and_never_signalled() {
    let root = Root::new();
    let child = root.sleeper();
    let pid = child.id() as i32;
    root.ok(&["register", "svc", &pid.to_string(), "global", "svc.sh"]);
    // A session whose shell is gone, owning a record that points at our live
    // process with the wrong start time: the pid-reuse case that made the
    // seed's watchdog kill a stranger.
    root.ok(&[
        "register",
        "stale",
        &pid.to_string(),
        "per-session",
        "x",
        "--session",
        "gone",
    ]);
    let mut reg = root.registry();
    let real = reg["services"]["global"]["svc"]["pidStartTime"]
        .as_u64()
        .unwrap();
    reg["services"]["global"]["svc"]["pidStartTime"] = (real + 1).into();
    reg["services"]["sessions"]["gone"]["stale"]["pidStartTime"] = (real + 1).into();
    reg["sessions"]["gone"] = serde_json::json!({
        "pid": 999_999, "projectPath": "/", "startTime": 1, "pidStartTime": 1
    });
    std::fs::write(root.registry_path(), serde_json::to_vec(&reg).unwrap()).unwrap();

    let out = root.psm(&["check", "svc", "global"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "false");
    let status: Value = serde_json::from_str(&root.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["healthyServices"], 0);
    assert!(status["details"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["status"] == "dead"));

    let report: Value = serde_json::from_str(&root.ok(&["cleanup", "--json"])).unwrap();
    assert_eq!(report["removed"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["sessions"][0]["cleaned"], 1, "{report}");
    assert_eq!(
        report["sessions"][0]["terminated"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // cleanup returns only after anything it signalled has died, so the
    // process being alive now proves it was never signalled.
    assert!(
        alive(pid),
        "a process psm could not vouch for was signalled"
    );
    let reg = root.registry();
    assert!(reg["services"]["global"].as_object().unwrap().is_empty());
    assert!(reg["sessions"].as_object().unwrap().is_empty());
}

/// `status` shows a dead process as dead and `cleanup` removes exactly the
/// dead records, keeping fields psm does not know on the rest.
#[test]
fn cleanup_removes_only_dead_records_and_keeps_unknown_fields() {
    let root = Root::new();
    let live = root.sleeper();
    let mut doomed = root.sleeper();
    root.ok(&["register", "live", &live.id().to_string(), "global", "a"]);
    root.ok(&[
        "register",
        "doomed",
        &doomed.id().to_string(),
        "global",
        "b",
    ]);
    let mut reg = root.registry();
    reg["services"]["global"]["live"]["color"] = "blue".into();
    reg["topLevelExtra"] = serde_json::json!({"kept": true});
    std::fs::write(root.registry_path(), serde_json::to_vec(&reg).unwrap()).unwrap();

    doomed.stop();
    let table = root.ok(&["status"]);
    let doomed_line = table.lines().find(|l| l.starts_with("doomed")).unwrap();
    assert!(doomed_line.contains("dead"), "{table}");
    assert!(table
        .lines()
        .find(|l| l.starts_with("live"))
        .unwrap()
        .contains("running"));

    assert!(root.ok(&["cleanup"]).contains("cleaned 1 record"));
    let reg = root.registry();
    assert!(reg["services"]["global"].get("doomed").is_none());
    assert_eq!(reg["services"]["global"]["live"]["color"], "blue");
    assert_eq!(reg["topLevelExtra"]["kept"], true);
}

/// The seed's own example registry loads, and a psm write keeps its records.
#[test]
fn seed_registry_file_loads_and_survives_a_write() {
    let root = Root::new();
    std::fs::copy("tests/data/seed-registry.json", root.registry_path()).unwrap();
    let status: Value = serde_json::from_str(&root.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["totalServices"], 2);
    assert_eq!(status["sessions"][0]["id"], "claude-12345-1234567890");
    let child = root.sleeper();
    root.ok(&["register", "new", &child.id().to_string(), "global", "n"]);
    let reg = root.registry();
    assert_eq!(
        reg["services"]["global"]["global-service-coordinator"]["metadata"]["managedBy"],
        "watchdog"
    );
    assert_eq!(
        reg["services"]["projects"]["/path/to/project"]["transcript-monitor"]["pid"],
        25001
    );
}
