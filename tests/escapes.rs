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
