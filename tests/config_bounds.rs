//! Config values have bounds (issue 9 §3): a value that would make the
//! coordinator spin, hang or overflow is refused before anything starts, with
//! one line naming the file, the line, the key and the allowed range — by
//! `up`, by `reload` (the running coordinator keeps its config), by `verify`.

mod support;

use std::time::Duration;

use support::{output_within, stderr, wait_until, Root, COORDINATOR};

/// Long enough for a loaded machine; a refused `up` answers in milliseconds.
const LIMIT: Duration = Duration::from_secs(20);

/// A config with `line` in the place it belongs, and a service that would run.
fn config_with(root: &Root, head: &str) -> String {
    root.script("svc.sh", "echo $$ >> \"$PSM_ROOT/runs\"\nexec sleep 1000");
    format!(
        "{head}\n[[service]]\nname = \"web\"\ntype = \"global\"\ncommand = [\"sh\", \"svc.sh\"]\n"
    )
}

/// The values the issue reported, as `(head of psm.toml, line, needles)`.
fn absurd() -> Vec<(&'static str, usize, Vec<&'static str>)> {
    vec![
        (
            "health-interval = \"1ns\"",
            1,
            vec!["'health-interval' = \"1ns\"", "10ms to 1h"],
        ),
        (
            "health-interval = \"99999999999d\"",
            1,
            vec!["'health-interval' = \"99999999999d\"", "10ms to 1h"],
        ),
        (
            "[logs]\nkeep = 4294967295",
            2,
            vec!["'keep' = 4294967295 in [logs]", "0 to 100"],
        ),
        (
            "[restart]\nbase = \"0s\"\nmax = \"400d\"",
            3,
            vec!["'max' = \"400d\" in [restart]", "0s to 1day"],
        ),
    ]
}

/// `psm up` refuses each absurd value at once: exit 1, one stderr line with
/// file, line, key and range; no coordinator, no service, no registry.
#[test]
fn up_refuses_out_of_range_values_and_starts_nothing() {
    for (head, line, needles) in absurd() {
        let root = Root::new();
        root.write_config(&config_with(&root, head));
        let mut up = root.cmd();
        up.arg("up");
        let out = output_within(up, LIMIT, "psm up answers");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{head}: {err}");
        assert_eq!(err.lines().count(), 1, "{head}: not one line: {err}");
        let file = root.file("psm.toml").display().to_string();
        assert!(err.contains(&format!("{file} line {line}: ")), "{err}");
        for needle in needles {
            assert!(err.contains(needle), "no {needle:?} in: {err}");
        }
        assert_eq!(root.coordinator_pid(), None, "{head}: a coordinator runs");
        assert!(!root.file("runs").exists(), "{head}: a service ran");
        assert!(root.registry_bytes().is_none(), "{head}: registry written");
    }
}

/// `psm reload` of an out-of-range value is refused with the same line, and
/// the running coordinator keeps its config: the service is not restarted
/// and a later good reload still works.
#[test]
fn reload_refuses_out_of_range_values_and_keeps_running() {
    let root = Root::new();
    let good = config_with(&root, "health-interval = \"100ms\"");
    root.write_config(&good);
    let coordinator = root.up();
    let pid = root.service_pid("web");
    for (head, line, needles) in absurd() {
        root.write_config(&config_with(&root, head));
        let out = root.psm(&["reload"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{head}: {err}");
        assert_eq!(err.lines().count(), 1, "{head}: not one line: {err}");
        assert!(err.contains(&format!("line {line}: ")), "{err}");
        for needle in needles {
            assert!(err.contains(needle), "no {needle:?} in: {err}");
        }
    }
    root.write_config(&good);
    root.ok(&["reload"]);
    assert_eq!(root.coordinator_pid(), Some(coordinator));
    assert_eq!(root.service_pid("web"), pid, "web was restarted");
    assert_eq!(support::lines(&root, "runs").len(), 1);
    // The heartbeat still advances: the coordinator was never given 1ns.
    let beat = |r: &Root| r.global(COORDINATOR)["lastHealthCheck"].as_u64();
    let first = beat(&root);
    wait_until(LIMIT, "a later heartbeat", || {
        if beat(&root) > first {
            Ok(())
        } else {
            Err(first)
        }
    });
    root.ok(&["down"]);
}

/// `psm verify` reports an out-of-range value as a failed config check.
#[test]
fn verify_reports_out_of_range_values() {
    let root = Root::new();
    root.write_config(&config_with(&root, "[logs]\nkeep = 4294967295"));
    let out = root.psm(&["verify"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("line 2: 'keep' = 4294967295 in [logs]") && l.contains("0 to 100")),
        "{text}"
    );
}

/// Zero where it means something stays allowed: `base = "0s"` with
/// `stable-after = "0s"` starts (the supervisor ends an instant-exit loop
/// `failed`, so it cannot spin), as do `attempts = 0` and `keep = 0`.
#[test]
fn meaningful_zeros_are_accepted() {
    let root = Root::new();
    root.write_config(&config_with(
        &root,
        "health-interval = \"100ms\"\n[restart]\nbase = \"0s\"\nstable-after = \"0s\"\nattempts = 0\n[logs]\nkeep = 0",
    ));
    root.up();
    root.service_pid("web");
    root.ok(&["down"]);
}
