//! The test helpers themselves: a root's drop must kill its coordinator and
//! every process group it started, or failing tests would leak daemons.

mod support;

use std::time::Duration;

use support::{alive, wait_for, Root};

/// Dropping a Root kills the coordinator, its services and their grandchildren.
#[test]
fn dropping_a_root_kills_its_coordinator_and_services() {
    let root = Root::new();
    root.script(
        "svc.sh",
        "sleep 1000 &\necho $! > grandchild\nexec sleep 1000",
    );
    root.write_config(
        r#"health-interval = "100ms"
[[service]]
name = "svc"
type = "global"
command = ["sh", "svc.sh"]
"#,
    );
    let coordinator = root.up();
    let service = root.service_pid("svc");
    let grandchild = root.pid_from("grandchild");
    assert!(alive(coordinator) && alive(service) && alive(grandchild));
    drop(root);
    for pid in [coordinator, service, grandchild] {
        wait_for(Duration::from_secs(5), &format!("pid {pid} gone"), || {
            !alive(pid)
        });
    }
}
