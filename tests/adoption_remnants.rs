//! What a service left behind while no coordinator watched it: a leader
//! that died between two coordinators leaves its group's members running,
//! and the next coordinator must end them before it starts the service anew.

mod support;

use std::time::Duration;

use support::{alive, sigkill, wait_for, Root};

const LIMIT: Duration = Duration::from_secs(20);

/// Service `tree` (a leader whose `sleep` child records its pid) runs under
/// a coordinator; then the coordinator is SIGKILLed, and the leader after
/// it, so the grandchild is left in the dead leader's group with nobody
/// watching. Returns (leader, grandchild).
fn leader_dies_unwatched(root: &Root) -> (i32, i32) {
    root.script(
        "tree.sh",
        "sleep 1000 &\necho $! > \"$PSM_ROOT/grandchild.$$\"\nwait",
    );
    root.write_config(
        r#"health-interval = "100ms"
[[service]]
name = "tree"
type = "global"
command = ["sh", "tree.sh"]
"#,
    );
    let coordinator = root.up();
    let leader = root.service_pid("tree");
    let grandchild = root.pid_from(&format!("grandchild.{leader}"));
    root.reaper.pid(grandchild); // killed on drop should the test fail
    sigkill(coordinator);
    wait_for(LIMIT, "coordinator gone", || !alive(coordinator));
    sigkill(leader);
    wait_for(LIMIT, "leader gone", || !alive(leader));
    assert!(alive(grandchild), "the grandchild outlives its leader");
    (leader, grandchild)
}

/// SIGKILL the coordinator, then the service's leader: its grandchild keeps
/// the old process group. `psm up` starts one new service process and ends
/// the grandchild of the dead one.
#[test]
fn a_new_coordinator_ends_what_a_dead_leader_left_behind() {
    let root = Root::new();
    let (leader, grandchild) = leader_dies_unwatched(&root);

    root.up();
    let fresh = root.service_pid("tree");
    assert_ne!(fresh, leader);
    wait_for(LIMIT, "the dead leader's grandchild ended", || {
        !alive(grandchild)
    });
    let new_grandchild = root.pid_from(&format!("grandchild.{fresh}"));
    assert!(
        alive(new_grandchild),
        "the new run's own child is left alone"
    );
}

/// `psm cleanup` while no coordinator runs does not drop a dead leader's
/// record and leave its group's members running with nothing to name them
/// (no later coordinator could find them then): it ends the members that
/// prove they are the service's (psm's marker), then removes the record.
#[test]
fn cleanup_ends_what_a_dead_leader_left_before_dropping_its_record() {
    let root = Root::new();
    let (_, grandchild) = leader_dies_unwatched(&root);

    root.ok(&["cleanup"]);
    wait_for(
        LIMIT,
        "the dead leader's grandchild ended by cleanup",
        || !alive(grandchild),
    );
    assert!(
        root.registry()["services"]["global"].get("tree").is_none(),
        "the dead record is removed"
    );
}
