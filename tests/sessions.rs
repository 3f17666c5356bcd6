//! Sessions: services tied to a terminal session end with it, grandchildren
//! included, whether the session's command exits or its wrapper is SIGKILLed.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{alive, wait_for, wait_until, Root, PSM};

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
    let shell = root.sleeper();
    root.ok(&[
        "session",
        "register",
        "s1",
        &shell.id().to_string(),
        &root.path().display().to_string(),
    ]);
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
    assert_eq!(
        support::session_of(pid),
        Some(pid),
        "own session (sid == pid)"
    );
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

/// `session spawn` under a session that is not registered is refused with
/// one line, starts nothing and records nothing.
#[test]
fn spawn_under_an_unknown_session_is_refused() {
    let root = Root::new();
    let marker = root.file("started");
    let out = root
        .cmd()
        .args([
            "session",
            "spawn",
            "svc",
            "--session",
            "NOPE",
            "--",
            "sh",
            "-c",
        ])
        .arg(format!("touch {}; exec sleep 1000", marker.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", support::stderr(&out));
    let err = support::stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("session NOPE"), "{err}");
    assert!(
        root.registry()["services"]["sessions"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "{}",
        root.registry()
    );
    // The command would have touched the file at once; `psm` has returned,
    // so a started process would have had its chance (this only shows that
    // nothing ran).
    std::thread::sleep(Duration::from_millis(300)); // shows the command never ran
    assert!(!marker.exists(), "the command was started");
}

/// The race from the issue: the session's command backgrounds a `session
/// spawn` and exits at once, so the session is cleaned up while the spawn
/// runs. Whichever wins, no service survives its session: 20 runs, no leak.
#[test]
fn a_spawn_racing_the_end_of_its_session_never_leaks() {
    let root = Root::new();
    let pidfile = root.file("pids");
    for round in 0..20 {
        let status = root
            .cmd()
            .args(["session", "run", "--project"])
            .arg(root.path())
            .args(["--", "sh", "-c"])
            .arg(format!(
                "\"$PSM_BIN\" session spawn s{round} -- sh -c 'echo $$ >> {}; exec sleep 1000' > /dev/null 2>&1 & exit 0",
                pidfile.display()
            ))
            .env("PSM_BIN", PSM)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "round {round}: {status:?}");
    }
    // Each backgrounded spawn either recorded its service before the
    // session ended (then the session's cleanup ends it) or was refused and
    // ended its own process. Both finish within the spawn's own run; wait
    // for every spawn CLI of this root (PSM_ROOT in its environment, from
    // `session run`) to be done.
    let root_bytes = root
        .path()
        .as_os_str()
        .to_string_lossy()
        .into_owned()
        .into_bytes();
    wait_for(Duration::from_secs(20), "every spawn finished", || {
        support::all_pids().into_iter().all(|p| {
            let spawning = support::argv(p).is_some_and(|args| {
                args.first().is_some_and(|a| a == PSM.as_bytes())
                    && args.iter().any(|a| a == b"spawn")
            });
            !(spawning && alive(p) && support::env_var(p, "PSM_ROOT") == Some(root_bytes.clone()))
        })
    });
    let pids: Vec<i32> = root
        .read("pids")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for &p in &pids {
        root.reaper.group(p);
    }
    let mut leaked = Vec::new();
    wait_until(
        Duration::from_secs(10),
        "no service outlives its session",
        || {
            leaked = pids
                .iter()
                .copied()
                .filter(|&p| alive(p))
                .collect::<Vec<_>>();
            if leaked.is_empty() {
                Ok(())
            } else {
                Err(leaked.clone())
            }
        },
    );
    let reg = root.registry();
    assert!(
        reg["services"]["sessions"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "{reg}"
    );
    assert!(
        reg["sessions"].as_object().is_none_or(|m| m.is_empty()),
        "{reg}"
    );
}

/// Services filed under a session that has no record (registered by hand
/// under a made-up id) are ended by `psm cleanup`, grandchildren included.
#[test]
fn cleanup_ends_services_of_a_session_that_does_not_exist() {
    let root = Root::new();
    let child = root.sleeper();
    let pid = child.id() as i32;
    root.ok(&[
        "register",
        "stray",
        &pid.to_string(),
        "per-session",
        "x",
        "--session",
        "ghost",
    ]);
    let report: serde_json::Value = serde_json::from_str(&root.ok(&["cleanup", "--json"])).unwrap();
    assert_eq!(report["sessions"][0]["session"], "ghost", "{report}");
    wait_for(Duration::from_secs(5), "the stray service ended", || {
        !alive(pid)
    });
    assert!(root.registry()["services"]["sessions"]
        .get("ghost")
        .is_none());
}

/// The seed's session variable: with the seed's registry on disk,
/// `CLAUDE_SESSION_ID` names the session when `PSM_SESSION_ID` is unset, and
/// `session run` exports both to its command.
#[test]
fn claude_session_id_is_honoured_and_exported() {
    let root = Root::new();
    std::fs::copy("tests/data/seed-registry.json", root.registry_path()).unwrap();
    let child = root.sleeper();
    let out = root
        .cmd()
        .args([
            "register",
            "helper",
            &child.id().to_string(),
            "per-session",
            "h.sh",
        ])
        .env("CLAUDE_SESSION_ID", "claude-12345-1234567890")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::stderr(&out));
    let reg = root.registry();
    assert_eq!(
        reg["services"]["sessions"]["claude-12345-1234567890"]["helper"]["pid"],
        child.id()
    );
    assert_eq!(
        reg["sessions"]["claude-12345-1234567890"]["pid"], 12345,
        "seed data kept"
    );
    // PSM_SESSION_ID wins over the seed's variable.
    let out = root
        .cmd()
        .args([
            "register",
            "other",
            &child.id().to_string(),
            "per-session",
            "h.sh",
        ])
        .env("CLAUDE_SESSION_ID", "claude-12345-1234567890")
        .env("PSM_SESSION_ID", "mine")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert!(root.registry()["services"]["sessions"]["mine"]["other"].is_object());

    let env_file = root.file("env");
    let status = root
        .cmd()
        .args(["session", "run", "--id", "s-exported", "--project"])
        .arg(root.path())
        .args(["--", "sh", "-c"])
        .arg(format!(
            "echo \"$PSM_SESSION_ID $CLAUDE_SESSION_ID\" > {}",
            env_file.display()
        ))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(root.read("env").trim(), "s-exported s-exported");
}
