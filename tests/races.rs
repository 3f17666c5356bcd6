//! Restart loops that must end: restarts never recurse and an instant-exit
//! loop ends `failed` (issue 9 §3).

mod support;

use std::time::Duration;

use support::{alive, lines, wait_until, Root, COORDINATOR};

/// Generous on a loaded 2-core machine; the product needs a fraction of it.
const LIMIT: Duration = Duration::from_secs(20);

/// The coordinator's heartbeat stamp.
fn heartbeat(root: &Root) -> Option<u64> {
    root.global(COORDINATOR)["lastHealthCheck"].as_u64()
}

/// Returns once the coordinator has beaten `n` more times: a wait that
/// shows time has passed, for a test proving something does NOT happen.
fn beats(root: &Root, n: usize) {
    for _ in 0..n {
        let last = heartbeat(root);
        wait_until(LIMIT, "a later heartbeat", || {
            let now = heartbeat(root);
            if now > last {
                Ok(())
            } else {
                Err(now)
            }
        });
    }
}

// ---------------------------------------------------------------------------
// Issue 9 §3: restarts are iterative and an instant-exit loop ends.

/// A program that cannot start, with `base = "0s"` and either
/// `stable-after = "0s"` or many attempts: the service ends `failed` and the
/// coordinator keeps serving (no stack overflow from one start calling the
/// next).
#[test]
fn a_program_that_cannot_start_ends_failed_without_recursion() {
    // (stable-after, attempts)
    for (stable_after, attempts) in [("0s", 5), ("60s", 3000)] {
        let root = Root::new();
        root.write_config(&format!(
            r#"health-interval = "100ms"
[restart]
base = "0s"
stable-after = "{stable_after}"
attempts = {attempts}

[[service]]
name = "missing"
type = "global"
command = ["{}/no-such-program"]
"#,
            root.path().display()
        ));
        let coordinator = root.up();
        wait_until(LIMIT, "missing failed", || {
            let r = root.global("missing");
            assert!(
                alive(coordinator),
                "coordinator died: {}",
                root.read(".logs/coordinator.log")
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            if r["status"] == "failed" {
                Ok(())
            } else {
                Err(r)
            }
        });
        assert_eq!(
            root.global("missing")["restartCount"].as_u64(),
            Some(attempts + 1),
            "stable-after {stable_after}"
        );
        root.ok(&["reload"]); // still serving
        root.ok(&["down"]);
    }
}

/// A program that exits at once, with `base = "0s"` and
/// `stable-after = "0s"`: it runs `attempts + 1` times and ends `failed`,
/// instead of being respawned forever.
#[test]
fn an_instant_exit_loop_with_stable_after_zero_ends_failed() {
    let root = Root::new();
    root.script("quit.sh", "echo $$ >> \"$PSM_ROOT/runs\"\nexit 1");
    root.write_config(
        r#"health-interval = "100ms"
[restart]
base = "0s"
stable-after = "0s"
attempts = 4

[[service]]
name = "quit"
type = "global"
command = ["sh", "quit.sh"]
"#,
    );
    root.up();
    wait_until(LIMIT, "quit failed", || {
        let r = root.global("quit");
        if r["status"] == "failed" {
            Ok(())
        } else {
            Err((lines(&root, "runs").len(), r))
        }
    });
    beats(&root, 3); // time for a further run to show (there must be none)
    assert_eq!(lines(&root, "runs").len(), 5, "first start + 4 restarts");
    assert_eq!(root.global("quit")["status"], "failed");
}
