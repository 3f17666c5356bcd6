//! Commands racing each other, and restart loops that must end: every
//! interleaving leaves one process per service instance and a record that
//! matches it (issue 8 §3), restarts never recurse and an instant-exit loop
//! ends `failed` (issue 9 §3), and a new coordinator runs what the config
//! says, not what its predecessor started (issue 8 §4).

mod support;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::process::{Child, Stdio};
use std::time::Duration;

use support::{
    alive, exit_of, lines, pid_of, sigkill, wait_for, wait_until, Children, Root, COORDINATOR,
};

/// Generous on a loaded 2-core machine; the product needs a fraction of it.
const LIMIT: Duration = Duration::from_secs(20);

/// `sh svc.sh <name> <version>`: appends `<version> <pid>` to `<name>.runs`
/// and sleeps in the same process, so a service is exactly one process.
fn service_script(root: &Root) {
    root.script(
        "svc.sh",
        r#"echo "$2 $$" >> "$PSM_ROOT/$1.runs"
exec sleep 1000"#,
    );
}

fn service(name: &str, version: &str) -> String {
    format!(
        r#"
[[service]]
name = "{name}"
type = "global"
command = ["sh", "svc.sh", "{name}", "{version}"]
stop-timeout = "1s"
"#
    )
}

/// The live processes whose environment says this root's coordinator
/// started them for `label` (`PSM_ROOT` and `PSM_SERVICE`) and that lead
/// their own group (each service is started in its own session; its
/// children inherit the environment but not the leadership), whatever any
/// record says.
fn processes_of(root: &Root, label: &str) -> Vec<i32> {
    let mut roots = vec![root.path().to_path_buf()];
    roots.extend(fs::canonicalize(root.path()).ok());
    support::all_pids()
        .into_iter()
        .filter(|&pid| {
            let ours = support::env_var(pid, "PSM_ROOT")
                .is_some_and(|v| roots.iter().any(|r| r.as_os_str().as_bytes() == v));
            ours && support::env_var(pid, "PSM_SERVICE").as_deref() == Some(label.as_bytes())
        })
        .filter(|&pid| alive(pid) && pgid(pid) == Some(pid))
        .collect()
}

/// The process group of `pid`.
fn pgid(pid: i32) -> Option<i32> {
    psm::process::ProcInfo::read(pid).map(|info| info.pgid)
}

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

/// Waits until `label` runs as exactly one process and its record names it
/// (`running`, that pid); returns the pid.
fn settled_running(root: &Root, label: &str) -> i32 {
    let mut pid = 0;
    wait_until(LIMIT, &format!("{label}: one process, recorded"), || {
        let procs = processes_of(root, label);
        let record = root.global(label);
        match (procs.as_slice(), record["status"].as_str(), pid_of(&record)) {
            ([p], Some("running"), Some(r)) if *p == r => {
                pid = r;
                Ok(())
            }
            _ => Err((procs, record)),
        }
    });
    pid
}

/// Waits until `label` has run as one recorded process across two
/// heartbeats (a restart the last reply did not wait for settles within
/// that); returns the pid.
fn stable_running(root: &Root, label: &str) -> i32 {
    let mut pid = 0;
    wait_until(
        LIMIT,
        &format!("{label}: one recorded process, stable"),
        || {
            let first = settled_running(root, label);
            beats(root, 2);
            let procs = processes_of(root, label);
            if procs == [first] && pid_of(&root.global(label)) == Some(first) {
                pid = first;
                Ok(())
            } else {
                Err((first, procs))
            }
        },
    );
    pid
}

/// `psm args…` started without waiting; output discarded.
fn spawn_psm(root: &Root, args: &[&str]) -> Child {
    root.cmd()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psm")
}

/// Waits for every command of a race and asserts each succeeded.
fn finish(children: &mut Children, what: &str) {
    for child in &mut children.0 {
        let status = exit_of(child, LIMIT, what);
        assert!(status.success(), "{what} failed: {status:?}");
    }
}

// ---------------------------------------------------------------------------
// Issue 8 §3: one control path.

/// Two `psm reload` at once after each of six config changes (one service
/// changed, one added per round): every service runs as exactly one process
/// whose record names it, and after `psm down` none of them is left.
#[test]
fn two_reloads_at_once_start_each_change_once() {
    let root = Root::new();
    service_script(&root);
    let mut config = format!("health-interval = \"100ms\"\n{}", service("keep", "v0"));
    root.write_config(&format!("{config}{}", service("changing", "v0")));
    root.up();
    let mut names = vec!["keep".to_string(), "changing".to_string()];
    for round in 1..=6 {
        let added = format!("added{round}");
        config.push_str(&service(&added, "v0"));
        names.push(added);
        root.write_config(&format!(
            "{config}{}",
            service("changing", &format!("v{round}"))
        ));
        let mut race = Children(vec![
            spawn_psm(&root, &["reload"]),
            spawn_psm(&root, &["reload"]),
        ]);
        finish(&mut race, "reload");
        for name in &names {
            settled_running(&root, name);
        }
        // A duplicate's actor starts its process a moment after the reply:
        // give it two heartbeats' time to show, then count again.
        beats(&root, 2);
        for name in &names {
            let procs = processes_of(&root, name);
            assert_eq!(procs.len(), 1, "round {round}: {name} runs as {procs:?}");
        }
        let runs = lines(&root, "changing.runs");
        assert_eq!(
            runs.iter()
                .filter(|l| l.starts_with(&format!("v{round} ")))
                .count(),
            1,
            "round {round}: the changed service started once: {runs:?}"
        );
    }
    root.ok(&["down"]);
    for name in &names {
        wait_until(LIMIT, &format!("{name} gone after down"), || {
            let procs = processes_of(&root, name);
            if procs.is_empty() {
                Ok(())
            } else {
                Err(procs)
            }
        });
    }
}

/// `psm restart svc` and `psm reload` that changes svc, each sent while the
/// other's stop of svc is in progress (svc takes 300 ms to stop), eight
/// times: one process of the new version runs, and the record names it.
#[test]
fn restart_racing_reload_leaves_one_process() {
    let root = Root::new();
    root.script(
        "slow.sh",
        r#"trap 'echo $$ >> "$PSM_ROOT/svc.term"; sleep 0.3; exit 0' TERM
echo "$1 $$" >> "$PSM_ROOT/svc.runs"
sleep 1000 &
wait"#,
    );
    let config = |version: &str| {
        format!(
            r#"health-interval = "100ms"
[[service]]
name = "svc"
type = "global"
command = ["sh", "slow.sh", "{version}"]
"#
        )
    };
    root.write_config(&config("v0"));
    root.up();
    for round in 1..=8 {
        let version = format!("v{round}");
        root.write_config(&config(&version));
        let (first, second) = if round % 2 == 0 {
            (&["restart", "svc"][..], &["reload"][..])
        } else {
            (&["reload"][..], &["restart", "svc"][..])
        };
        let stops = lines(&root, "svc.term").len();
        let mut race = Children(vec![spawn_psm(&root, first)]);
        let what = format!("round {round}: {first:?} stopping svc");
        wait_for(LIMIT, &what, || lines(&root, "svc.term").len() > stops);
        race.0.push(spawn_psm(&root, second));
        finish(&mut race, "restart and reload");
        // Stable, and not a process still in its 300 ms stop (which has
        // written its pid to svc.term): the restart may still be under way.
        let mut pid = 0;
        wait_until(LIMIT, "svc running and not stopping", || {
            pid = stable_running(&root, "svc");
            let stopping = lines(&root, "svc.term");
            if stopping.contains(&pid.to_string()) {
                Err(stopping)
            } else {
                Ok(())
            }
        });
        let last = lines(&root, "svc.runs").pop().unwrap_or_default();
        assert_eq!(
            last,
            format!("{version} {pid}"),
            "round {round}: runs the new config"
        );
    }
}

/// `psm stop svc` and `psm start svc` at once, twelve times: afterwards the
/// record always matches the processes — `running` naming the one live
/// process, or `stopped` with none — with no health round to correct it.
#[test]
fn stop_racing_start_leaves_a_matching_record() {
    let root = Root::new();
    service_script(&root);
    // No health round during the test: only the control path may write.
    root.write_config(&format!(
        "health-interval = \"10m\"\n{}",
        service("svc", "v0")
    ));
    root.up();
    settled_running(&root, "svc");
    let mut outcomes = Vec::new();
    for round in 0..12 {
        let (first, second) = if round % 2 == 0 {
            (&["stop", "svc"][..], &["start", "svc"][..])
        } else {
            (&["start", "svc"][..], &["stop", "svc"][..])
        };
        let mut race = Children(vec![spawn_psm(&root, first), spawn_psm(&root, second)]);
        finish(&mut race, "stop and start");
        wait_until(LIMIT, "record matching the processes", || {
            let procs = processes_of(&root, "svc");
            let record = root.global("svc");
            let consistent = match (record["status"].as_str(), procs.as_slice()) {
                (Some("running"), [p]) => pid_of(&record) == Some(*p),
                (Some("stopped"), []) => record["pid"].is_null(),
                _ => false,
            };
            if consistent {
                Ok(())
            } else {
                Err((round, procs, record))
            }
        });
        outcomes.push(
            root.global("svc")["status"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
        // Back to running for the next round.
        root.ok(&["start", "svc"]);
        settled_running(&root, "svc");
    }
    eprintln!("outcomes: {outcomes:?}");
}

/// `psm stop db` (db ignores SIGTERM) and, while it waits, `psm down`:
/// down returns only once db is gone (SIGKILLed after its stop timeout),
/// with no record of it left and the coordinator gone.
#[test]
fn down_during_a_slow_stop_finishes_it() {
    let root = Root::new();
    root.script(
        "db.sh",
        r#"trap 'echo term >> "$PSM_ROOT/db.term"' TERM
echo $$ > "$PSM_ROOT/db.pid"
while :; do sleep 0.05; done"#,
    );
    root.write_config(
        r#"health-interval = "100ms"
[[service]]
name = "db"
type = "global"
command = ["sh", "db.sh"]
stop-timeout = "2s"
"#,
    );
    let coordinator = root.up();
    let db = settled_running(&root, "db");
    let mut stop = Children(vec![spawn_psm(&root, &["stop", "db"])]);
    wait_for(LIMIT, "db got SIGTERM", || !root.read("db.term").is_empty());
    assert!(alive(db), "db ignores SIGTERM");
    root.ok(&["down"]);
    // `down` has returned: everything must be gone now, not later.
    assert!(!alive(db), "db still runs after down returned");
    assert!(processes_of(&root, "db").is_empty());
    assert!(
        !alive(coordinator),
        "coordinator still runs after down returned"
    );
    assert!(root.global("db").is_null(), "{}", root.global("db"));
    exit_of(&mut stop.0[0], LIMIT, "psm stop");
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

// ---------------------------------------------------------------------------
// Issue 8 §4: the config is the truth after a coordinator restart.

/// Edit psm.toml, SIGKILL the coordinator, `psm up`: the changed service is
/// restarted on its new command (the old process ended), the unchanged one
/// is adopted (same pid, one run), and `psm reload` then finds nothing to do.
#[test]
fn a_new_coordinator_restarts_what_the_config_changed() {
    let root = Root::new();
    service_script(&root);
    let head = "health-interval = \"100ms\"\n";
    root.write_config(&format!(
        "{head}{}{}",
        service("same", "v1"),
        service("edited", "v1")
    ));
    let coordinator = root.up();
    let same = settled_running(&root, "same");
    let old = settled_running(&root, "edited");

    root.write_config(&format!(
        "{head}{}{}",
        service("same", "v1"),
        service("edited", "v2")
    ));
    sigkill(coordinator);
    wait_for(LIMIT, "coordinator gone", || !alive(coordinator));
    root.up();

    wait_for(LIMIT, "edited started on v2", || {
        lines(&root, "edited.runs").len() == 2
    });
    let new = settled_running(&root, "edited");
    assert_ne!(new, old);
    assert!(
        !alive(old),
        "the old process of the edited service still runs"
    );
    assert_eq!(
        lines(&root, "edited.runs"),
        [format!("v1 {old}"), format!("v2 {new}")]
    );
    assert_eq!(settled_running(&root, "same"), same, "unchanged: adopted");
    assert_eq!(lines(&root, "same.runs"), [format!("v1 {same}")]);
    let out = root.ok(&["reload"]);
    assert!(out.contains("0 added, 0 removed, 0 changed"), "{out}");
    let hash = root.global("edited")["metadata"]["specHash"].clone();
    assert_eq!(hash.as_str().map(str::len), Some(16), "{hash}");
}
