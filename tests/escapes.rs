//! Nothing escapes its service: a descendant that leaves the service's
//! process group (`setsid`) and clears its environment ends with the service
//! on `restart`, `stop` and `down` (issue 8 §5).

mod support;

use std::time::Duration;

use support::{alive, wait_for, Root};

const LIMIT: Duration = Duration::from_secs(20);

/// A service whose child calls `setsid`, clears its environment (`env -i`)
/// and ignores SIGTERM: `psm restart` ends that helper, and `psm stop` and
/// `psm down` return only once it is gone.
#[test]
fn a_setsid_descendant_ends_with_restart_stop_and_down() {
    let root = Root::new();
    // The helper writes its pid to escaped.<n>, n counting the runs.
    root.script(
        "svc.sh",
        r#"n=$(($(cat "$PSM_ROOT/runs" 2>/dev/null || echo 0) + 1))
echo $n > "$PSM_ROOT/runs"
setsid env -i "$(command -v sh)" -c 'trap "" TERM; echo $$ > "$0/escaped.$1"; exec "$2" 1000' "$PSM_ROOT" "$n" "$(command -v sleep)" &
exec sleep 1000"#,
    );
    root.write_config(
        r#"health-interval = "100ms"
[[service]]
name = "svc"
type = "global"
command = ["sh", "svc.sh"]
stop-timeout = "300ms"
"#,
    );
    root.up();
    let helper = |n: u32| {
        let pid = root.pid_from(&format!("escaped.{n}"));
        root.reaper.pid(pid); // killed on drop should the test fail
        let leader = root.service_pid("svc");
        assert_ne!(
            psm::process::ProcInfo::read(pid).map(|i| i.pgid),
            Some(leader),
            "the helper left the service's group"
        );
        pid
    };

    let first = helper(1);
    root.ok(&["restart", "svc"]);
    wait_for(LIMIT, "the first helper ended by restart", || !alive(first));

    let second = helper(2);
    root.ok(&["stop", "svc"]);
    assert!(
        !alive(second),
        "stop returned with the helper still running"
    );

    root.ok(&["start", "svc"]);
    let third = helper(3);
    root.ok(&["down"]);
    assert!(!alive(third), "down returned with the helper still running");
}

/// A classic daemonizing service (fork, `setsid`, fork, the parent exits 0)
/// is supervised as its daemon: exactly one daemon, no restart while it
/// runs, the record names it, `stop` and `down` end it, and its death leads
/// to a restart.
#[test]
fn a_daemonizing_service_is_supervised_through_its_daemon() {
    let root = Root::new();
    // Each start appends a line to `starts`, each daemon its pid to `daemons`.
    root.script(
        "daemon.sh",
        r#"echo start >> "$PSM_ROOT/starts"
( setsid sh -c 'echo $$ >> "$PSM_ROOT/daemons"; exec sleep 1000' & )
exit 0"#,
    );
    root.write_config(
        r#"health-interval = "100ms"
[[service]]
name = "svc"
type = "global"
command = ["sh", "daemon.sh"]
stop-timeout = "300ms"
"#,
    );
    root.up();
    let daemon = |n: usize| {
        let mut pid = 0;
        support::wait_until(LIMIT, &format!("daemon {n} recorded"), || {
            let daemons = support::lines(&root, "daemons");
            let recorded = root.global("svc")["pid"].as_i64();
            match daemons.get(n - 1).and_then(|p| p.parse::<i32>().ok()) {
                Some(p) if recorded == Some(p as i64) => {
                    root.reaper.pid(p);
                    pid = p;
                    Ok(())
                }
                _ => Err((daemons, recorded)),
            }
        });
        pid
    };
    let first = daemon(1);
    // Several health rounds later: still the one start, the one daemon.
    support::heartbeats(&root, 5);
    assert_eq!(support::lines(&root, "starts").len(), 1, "restarted");
    assert_eq!(support::lines(&root, "daemons").len(), 1);
    assert!(alive(first));
    assert_eq!(root.global("svc")["status"], "running");

    support::sigkill(first);
    let second = daemon(2);
    assert_eq!(support::lines(&root, "starts").len(), 2);

    root.ok(&["stop", "svc"]);
    assert!(!alive(second), "stop returned with the daemon running");

    root.ok(&["start", "svc"]);
    let third = daemon(3);
    root.ok(&["down"]);
    assert!(!alive(third), "down returned with the daemon running");
}

/// A `setsid` helper whose parent exited before psm looked is an orphan the
/// coordinator inherits as a subreaper: attributed to its service by its
/// environment, it ends with `stop`, and once dead it is reaped (no zombie
/// left under the coordinator).
#[cfg(target_os = "linux")]
#[test]
fn an_orphaned_helper_is_inherited_ended_with_its_service_and_reaped() {
    let root = Root::new();
    root.script(
        "svc.sh",
        r#"( setsid sh -c 'echo $$ > "$PSM_ROOT/orphan"; exec sleep 1000' & )
exec sleep 1000"#,
    );
    root.write_config(
        r#"health-interval = "100ms"
[[service]]
name = "svc"
type = "global"
command = ["sh", "svc.sh"]
stop-timeout = "300ms"
"#,
    );
    let coordinator = root.up();
    let orphan = root.pid_from("orphan");
    root.reaper.pid(orphan);
    let parent = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()?
                    .split_whitespace()
                    .nth(1)?
                    .parse::<i32>()
                    .ok()
            })
    };
    wait_for(LIMIT, "the orphan inherited by the coordinator", || {
        parent(orphan) == Some(coordinator)
    });
    root.ok(&["stop", "svc"]);
    assert!(!alive(orphan), "stop returned with the orphan running");
    wait_for(LIMIT, "the dead orphan reaped", || {
        parent(orphan) != Some(coordinator)
    });
    root.ok(&["down"]);
}

/// `psm session run` inherits what its command leaves behind: a helper that
/// called `setsid` and cleared its environment, whose parent (the command)
/// exited, is ended when the session ends.
#[cfg(target_os = "linux")]
#[test]
fn a_session_ends_the_setsid_helpers_its_command_left_behind() {
    let root = Root::new();
    let script = root.script(
        "session.sh",
        r#"setsid env -i "$(command -v sh)" -c 'echo $$ > "$0/escaped.tmp"; mv "$0/escaped.tmp" "$0/escaped"; exec "$1" 1000' "$PSM_TEST_DIR" "$(command -v sleep)" > /dev/null 2>&1 &
while [ ! -s "$PSM_TEST_DIR/escaped" ]; do sleep 0.02; done
exit 0"#,
    );
    let out = support::output_within(
        {
            let mut cmd = root.cmd();
            cmd.args(["session", "run", "--project"])
                .arg(root.path())
                .arg("--")
                .arg("sh")
                .arg(&script)
                .env("PSM_TEST_DIR", root.path());
            cmd
        },
        LIMIT,
        "psm session run",
    );
    let escaped = root.pid_from("escaped");
    root.reaper.pid(escaped);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert!(!alive(escaped), "the session ended with its helper running");
}

/// A coordinator replacement (SIGKILL, `psm up`) adopts the running service
/// and leaves its `setsid` helper running; `restart` and `down` then end
/// the helpers, as they would without the replacement.
#[test]
fn a_coordinator_replacement_keeps_the_helpers_of_an_adopted_service() {
    let root = Root::new();
    root.script(
        "svc.sh",
        r#"n=$(($(cat "$PSM_ROOT/runs" 2>/dev/null || echo 0) + 1))
echo $n > "$PSM_ROOT/runs"
setsid env -i "$(command -v sh)" -c 'echo $$ > "$0/helper.$1"; exec "$2" 1000' "$PSM_ROOT" "$n" "$(command -v sleep)" &
exec sleep 1000"#,
    );
    root.write_config(
        r#"health-interval = "100ms"
[[service]]
name = "svc"
type = "global"
command = ["sh", "svc.sh"]
stop-timeout = "300ms"
"#,
    );
    let old = root.up();
    let leader = root.service_pid("svc");
    let first = root.pid_from("helper.1");
    root.reaper.pid(first);
    support::sigkill(old);
    wait_for(LIMIT, "the old coordinator gone", || !alive(old));
    root.up();
    // Adopted, not restarted; a few health rounds of the new coordinator
    // later the helper still runs.
    support::heartbeats(&root, 3);
    assert_eq!(
        root.service_pid("svc"),
        leader,
        "the service was not adopted"
    );
    assert!(
        alive(first),
        "the replacement ended the adopted service's helper"
    );

    root.ok(&["restart", "svc"]);
    wait_for(LIMIT, "the first helper ended by restart", || !alive(first));
    let second = root.pid_from("helper.2");
    root.reaper.pid(second);
    root.ok(&["down"]);
    assert!(!alive(second), "down returned with the helper running");
}
