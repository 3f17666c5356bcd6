//! The coordinator's supervision, black-box: crash loops back off and give
//! up, stable runs reset the count, killed and unhealthy services come back,
//! `stop` and `down` take grandchildren with them, and `reload` (or SIGHUP)
//! touches only what changed. Every child is a small `sh` script that records
//! its runs in files under the temp root; assertions are on those files and
//! on the registry, with lower bounds only where time matters.

mod support;

use std::fs;
use std::thread;
use std::time::Duration;

use support::{alive, lines, start_time, stderr, wait_for, wait_until, Root};

/// Generous: the suite runs in parallel with other test binaries on 2 cores.
const LONG: Duration = Duration::from_secs(20);

/// The pids a script appended (one per line, first word) to `name`.
fn pids_in(root: &Root, name: &str) -> Vec<i32> {
    lines(root, name)
        .iter()
        .map(|l| {
            let word = l.split_whitespace().next().unwrap_or("");
            word.parse()
                .unwrap_or_else(|_| panic!("{name}: not a pid: {l:?}"))
        })
        .collect()
}

/// Waits until `svc` has run twice and the registry counts a restart.
fn wait_restarted(root: &Root, what: &str) {
    wait_until(LONG, what, || {
        let pids = pids_in(root, "pids");
        let count = restart_count(root, "svc");
        if pids.len() >= 2 && count.is_some_and(|c| c > 0) {
            Ok(())
        } else {
            Err((pids, count))
        }
    });
}

/// The registry's `restartCount` of a global service.
fn restart_count(root: &Root, name: &str) -> Option<u64> {
    root.global(name)["restartCount"].as_u64()
}

fn status_of(root: &Root, name: &str) -> Option<String> {
    root.global(name)["status"].as_str().map(String::from)
}

/// The pid of global service `name` once it runs under a pid other than `old`.
fn new_pid(root: &Root, name: &str, old: i32) -> i32 {
    let mut pid = 0;
    wait_until(
        LONG,
        &format!("{name} running with a pid other than {old}"),
        || {
            let r = root.global(name);
            match (r["status"].as_str(), r["pid"].as_i64()) {
                (Some("running"), Some(p)) if p as i32 != old && alive(p as i32) => {
                    pid = p as i32;
                    Ok(())
                }
                _ => Err(r),
            }
        },
    );
    pid
}

fn wait_dead(pid: i32, what: &str) {
    wait_for(LONG, &format!("{what} (pid {pid}) dead"), || !alive(pid));
}

/// `[[service]]` entries for global services, each `(name, command args)`.
fn services_toml(services: &[(&str, &str)]) -> String {
    services
        .iter()
        .map(|(name, command)| {
            format!("\n[[service]]\nname = \"{name}\"\ntype = \"global\"\ncommand = {command}\n")
        })
        .collect()
}

/// A crash-looping service runs exactly 6 times, each start at least its
/// backoff after the previous one, then is `failed`; `psm restart` runs it
/// again with its count reset.
#[test]
fn crash_loop_backs_off_gives_up_and_restart_resets_it() {
    let root = Root::new();
    // A nanosecond stamp per run: BSD date (macOS) has no %N, Perl does.
    let stamp = if cfg!(target_os = "macos") {
        r#"perl -MTime::HiRes=time -e 'printf "%.0f\n", time * 1e9'"#
    } else {
        "date +%s%N"
    };
    root.script("crash.sh", &format!("{stamp} >> runs\nexit 1"));
    root.write_config(
        r#"health-interval = "100ms"
[restart]
base = "50ms"
max = "1s"
attempts = 5

[[service]]
name = "crash"
type = "global"
command = ["sh", "crash.sh"]
"#,
    );
    root.up();
    wait_until(LONG, "crash to be failed", || {
        let r = root.global("crash");
        if r["status"] == "failed" {
            Ok(())
        } else {
            Err(r)
        }
    });

    let stamps: Vec<u128> = lines(&root, "runs")
        .iter()
        .map(|l| {
            l.parse()
                .unwrap_or_else(|_| panic!("runs: not a nanosecond stamp: {l:?}"))
        })
        .collect();
    assert_eq!(stamps.len(), 6, "runs before giving up: {stamps:?}");
    for (k, pair) in stamps.windows(2).enumerate() {
        let gap_ms = (pair[1] - pair[0]) as f64 / 1e6;
        let backoff_ms = (50u64 << k) as f64;
        assert!(
            gap_ms >= backoff_ms,
            "restart {} came {gap_ms:.1} ms after the previous run, less than its {backoff_ms} ms backoff; stamps {stamps:?}",
            k + 1
        );
    }
    let given_up_at = restart_count(&root, "crash").expect("restartCount when failed");

    thread::sleep(Duration::from_millis(2500)); // proves a 7th run never happens: 2.5x the 1 s cap on any backoff
    assert_eq!(lines(&root, "runs").len(), 6, "a failed service ran again");
    assert_eq!(status_of(&root, "crash").as_deref(), Some("failed"));

    root.ok(&["restart", "crash"]);
    wait_until(LONG, "a 7th run with restartCount reset", || {
        let runs = lines(&root, "runs").len();
        let count = restart_count(&root, "crash");
        if runs >= 7 && count.is_some_and(|c| c < given_up_at) {
            Ok(())
        } else {
            Err((runs, count, given_up_at))
        }
    });
}

/// A service that crashes only after running longer than `stable-after` has
/// its failure count reset each time, so it is never given up on.
#[test]
fn runs_longer_than_stable_after_reset_the_count() {
    let root = Root::new();
    root.script("flaky.sh", "echo $$ >> runs\nsleep 0.3\nexit 1");
    root.write_config(
        r#"health-interval = "100ms"
[restart]
base = "50ms"
max = "1s"
attempts = 2
stable-after = "100ms"

[[service]]
name = "flaky"
type = "global"
command = ["sh", "flaky.sh"]
"#,
    );
    root.up();
    // Without the reset, attempts = 2 means `failed` after the 3rd run.
    wait_until(LONG, "more than 4 runs", || {
        let r = root.global("flaky");
        assert_ne!(r["status"], "failed", "given up despite stable runs: {r}");
        let count = r["restartCount"].as_u64().unwrap_or(0);
        assert!(count <= 1, "count not reset by a stable run: {r}");
        let runs = lines(&root, "runs").len();
        if runs > 4 {
            Ok(())
        } else {
            Err((runs, r))
        }
    });
    assert_ne!(status_of(&root, "flaky").as_deref(), Some("failed"));
}

/// A service killed with SIGKILL is started again under a new pid, and the
/// registry records the new process.
#[test]
fn a_killed_service_gets_a_new_pid_in_the_registry() {
    let root = Root::new();
    root.script("svc.sh", "echo $$ >> pids\nexec sleep 1000");
    root.write_config(
        r#"health-interval = "100ms"
[restart]
base = "50ms"

[[service]]
name = "svc"
type = "global"
command = ["sh", "svc.sh"]
"#,
    );
    root.up();
    let first = root.service_pid("svc");
    assert_eq!(pids_in(&root, "pids"), [first]);

    unsafe { libc::kill(first, libc::SIGKILL) };
    let second = new_pid(&root, "svc", first);
    assert!(!alive(first));
    assert_eq!(pids_in(&root, "pids"), [first, second]);
    let r = root.global("svc");
    assert_eq!(r["pidStartTime"].as_u64(), start_time(second), "{r}");
    assert_eq!(r["restartCount"], 1, "{r}");
}

/// A service whose port probe fails (nothing listens) is killed and restarted.
#[test]
fn a_failing_port_probe_restarts_the_service() {
    let root = Root::new();
    let port = support::free_port();
    root.script("svc.sh", "echo $$ >> pids\nexec sleep 1000");
    root.write_config(&format!(
        r#"health-interval = "50ms"
[restart]
base = "50ms"

[[service]]
name = "svc"
type = "global"
command = ["sh", "svc.sh"]
health = {{ port = {port} }}
"#
    ));
    root.up();
    wait_restarted(&root, "a restart after failed port probes");
    let first = pids_in(&root, "pids")[0];
    wait_dead(first, "the unhealthy first run");
}

/// A service that touches its health file once and then never again is
/// killed and restarted once the file is older than `max-age`.
#[test]
fn a_stale_health_file_restarts_the_service() {
    let root = Root::new();
    root.script("svc.sh", "echo $$ >> pids\ntouch beat\nexec sleep 1000");
    root.write_config(
        r#"health-interval = "50ms"
[restart]
base = "50ms"

[[service]]
name = "svc"
type = "global"
command = ["sh", "svc.sh"]
health = { file = "beat", max-age = "200ms" }
"#,
    );
    root.up();
    wait_restarted(&root, "a restart after the health file went stale");
    let first = pids_in(&root, "pids")[0];
    wait_dead(first, "the stale first run");
}

/// A service that keeps touching its health file passes its checks and is
/// never restarted.
#[test]
fn a_fresh_health_file_keeps_the_service_running() {
    let root = Root::new();
    root.script(
        "svc.sh",
        "echo $$ >> pids\nwhile :; do touch beat; sleep 0.05; done",
    );
    root.write_config(
        r#"health-interval = "50ms"
[restart]
base = "50ms"

[[service]]
name = "svc"
type = "global"
command = ["sh", "svc.sh"]
start-period = "500ms"
health = { file = "beat", max-age = "1s" }
"#,
    );
    root.up();
    let pid = root.service_pid("svc");
    let started = root.global("svc")["startTime"].as_u64().expect("startTime");
    // Checks keep passing (each stamps lastHealthCheck) for 2 s: several
    // max-ages and well past the start period.
    wait_until(LONG, "passing health checks 2 s after the start", || {
        let r = root.global("svc");
        match r["lastHealthCheck"].as_u64() {
            Some(t) if t >= started + 2000 => Ok(()),
            _ => Err(r),
        }
    });
    let r = root.global("svc");
    assert_eq!(pids_in(&root, "pids"), [pid], "restarted: {r}");
    assert_eq!(r["pid"], pid, "{r}");
    assert_eq!(r["status"], "running", "{r}");
    assert_eq!(r["restartCount"], 0, "{r}");
    assert!(alive(pid));
}

/// `psm stop` ends a service and its grandchild and records it `stopped`;
/// `psm start` brings it back; `psm down` ends every service, grandchildren
/// included, and the coordinator, leaving no record of either.
#[test]
fn stop_and_down_take_grandchildren_with_them() {
    let root = Root::new();
    root.script(
        "svc.sh",
        "sleep 1000 &\necho $! >> grandchildren\necho $$ >> pids\nexec sleep 1000",
    );
    root.write_config(
        r#"health-interval = "100ms"

[[service]]
name = "svc"
type = "global"
command = ["sh", "svc.sh"]

[[service]]
name = "other"
type = "global"
command = ["sh", "-c", "exec sleep 1000"]
"#,
    );
    let coordinator = root.up();
    let first = root.service_pid("svc");
    let other = root.service_pid("other");
    wait_for(LONG, "first grandchild pid", || {
        pids_in(&root, "grandchildren").len() == 1
    });
    let grandchild = pids_in(&root, "grandchildren")[0];
    assert!(alive(grandchild));

    root.ok(&["stop", "svc"]);
    wait_dead(first, "stopped service");
    wait_dead(grandchild, "stopped service's grandchild");
    wait_until(LONG, "svc recorded as stopped", || {
        match status_of(&root, "svc").as_deref() {
            Some("stopped") => Ok(()),
            _ => Err(root.global("svc")),
        }
    });
    assert!(alive(other), "stopping svc ended another service");

    root.ok(&["start", "svc"]);
    let second = new_pid(&root, "svc", first);
    wait_for(LONG, "second grandchild pid", || {
        pids_in(&root, "grandchildren").len() == 2
    });
    let grandchild2 = pids_in(&root, "grandchildren")[1];
    assert!(alive(grandchild2));

    root.ok(&["down"]);
    for (pid, what) in [
        (second, "service"),
        (grandchild2, "grandchild"),
        (other, "other service"),
        (coordinator, "coordinator"),
    ] {
        wait_dead(pid, what);
    }
    let reg = root.registry();
    let global = reg["services"]["global"].as_object();
    assert!(
        global.is_none_or(|g| !g.contains_key("global-service-coordinator")),
        "coordinator record left after down: {reg}"
    );
    assert!(
        global.is_none_or(|g| g.is_empty()),
        "service records left after down: {reg}"
    );
    for scope in ["projects", "sessions"] {
        let empty = reg["services"][scope].as_object().is_none_or(|m| {
            m.values()
                .all(|v| v.as_object().is_none_or(|s| s.is_empty()))
        });
        assert!(empty, "{scope} records left after down: {reg}");
    }
}

/// `psm reload` keeps unchanged services, restarts changed ones, ends removed
/// ones and starts added ones; a broken config is refused with exit 1 and one
/// line, and changes nothing.
#[test]
fn reload_touches_only_what_changed() {
    let root = Root::new();
    root.script("svc.sh", "echo \"$$ $*\" >> \"$1.runs\"\nexec sleep 1000");
    let header = "health-interval = \"100ms\"\n";
    root.write_config(
        &(header.to_string()
            + &services_toml(&[
                ("a", r#"["sh", "svc.sh", "a"]"#),
                ("b", r#"["sh", "svc.sh", "b"]"#),
                ("c", r#"["sh", "svc.sh", "c"]"#),
            ])),
    );
    root.up();
    let (a, b, c) = (
        root.service_pid("a"),
        root.service_pid("b"),
        root.service_pid("c"),
    );

    // A broken config: refused, and the running services stay as they are.
    root.write_config(&(header.to_string() + "[[service]]\nname = \"a\"\ncolour = 1\n"));
    let out = root.psm(&["reload"]);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "reload of a broken config: {err}"
    );
    assert_eq!(err.lines().count(), 1, "want one stderr line, got: {err:?}");
    for (name, pid) in [("a", a), ("b", b), ("c", c)] {
        assert!(alive(pid), "{name} ended by a refused reload");
        assert_eq!(
            root.global(name)["pid"],
            pid,
            "{name} changed by a refused reload"
        );
    }

    root.write_config(
        &(header.to_string()
            + &services_toml(&[
                ("a", r#"["sh", "svc.sh", "a"]"#),
                ("b", r#"["sh", "svc.sh", "b", "v2"]"#),
                ("d", r#"["sh", "svc.sh", "d"]"#),
            ])),
    );
    root.ok(&["reload"]);

    let b2 = new_pid(&root, "b", b);
    wait_dead(b, "b's old process");
    assert_eq!(
        lines(&root, "b.runs").last().map(String::as_str),
        Some(format!("{b2} b v2").as_str()),
        "b's new process runs the new command"
    );
    wait_dead(c, "removed service c");
    wait_until(LONG, "c's record gone", || {
        let r = root.global("c");
        if r.is_null() {
            Ok(())
        } else {
            Err(r)
        }
    });
    let d = root.service_pid("d");
    assert!(alive(d));
    assert_eq!(pids_in(&root, "d.runs"), [d]);

    assert_eq!(root.global("a")["pid"], a, "unchanged a was restarted");
    assert!(alive(a));
    assert_eq!(pids_in(&root, "a.runs"), [a], "unchanged a ran again");
}

/// SIGHUP to the coordinator reloads its config like `psm reload`.
#[test]
fn sighup_reloads_the_config() {
    let root = Root::new();
    root.script("svc.sh", "echo $$ >> \"$1.runs\"\nexec sleep 1000");
    let header = "health-interval = \"100ms\"\n";
    root.write_config(&(header.to_string() + &services_toml(&[("a", r#"["sh", "svc.sh", "a"]"#)])));
    let coordinator = root.up();
    let a = root.service_pid("a");

    root.write_config(
        &(header.to_string()
            + &services_toml(&[
                ("a", r#"["sh", "svc.sh", "a"]"#),
                ("e", r#"["sh", "svc.sh", "e"]"#),
            ])),
    );
    unsafe { libc::kill(coordinator, libc::SIGHUP) };
    let e = root.service_pid("e");
    assert_eq!(pids_in(&root, "e.runs"), [e]);
    assert!(alive(coordinator), "SIGHUP ended the coordinator");
    assert_eq!(root.global("a")["pid"], a, "unchanged a was restarted");
    assert_eq!(pids_in(&root, "a.runs"), [a]);
}

/// `down` leaves no record of the coordinator's behind, not even of a
/// service the user had stopped.
#[test]
fn down_removes_stopped_records_too() {
    let root = Root::new();
    root.script("svc.sh", "exec sleep 1000");
    root.write_config(&format!(
        "health-interval = \"100ms\"\n{}",
        services_toml(&[
            ("kept", r#"["sh", "svc.sh"]"#),
            ("halted", r#"["sh", "svc.sh"]"#)
        ])
    ));
    root.up();
    root.service_pid("kept");
    root.service_pid("halted");
    root.ok(&["stop", "halted"]);
    assert_eq!(status_of(&root, "halted").as_deref(), Some("stopped"));
    root.ok(&["down"]);
    let reg = root.registry();
    assert!(
        reg["services"]["global"].as_object().unwrap().is_empty(),
        "records left after down: {reg}"
    );
}

/// A service log larger than `[logs] max-size` is rotated by the coordinator
/// (copy-truncate): the service keeps writing into the fresh file, and no
/// more than `keep` old copies are kept.
#[test]
fn service_logs_are_rotated_by_size() {
    let root = Root::new();
    root.script(
        "chatty.sh",
        "i=0\nwhile :; do i=$((i+1)); echo \"line $i of a chatty service\"; sleep 0.01; done",
    );
    root.write_config(
        r#"health-interval = "50ms"
[logs]
max-size = 2000
keep = 2

[[service]]
name = "chatty"
type = "global"
command = ["sh", "chatty.sh"]
"#,
    );
    root.up();
    let pid = root.service_pid("chatty");
    let log = |suffix: &str| root.file(&format!(".logs/chatty.log{suffix}"));
    wait_for(LONG, "two rotated copies", || log(".2").exists());
    wait_for(LONG, "the live log written after a rotation", || {
        fs::metadata(log("")).is_ok_and(|m| m.len() > 0)
    });
    assert!(!log(".3").exists(), "keep = 2 keeps two copies");
    // Rotation renames `.1` away before the next one arrives: read it once
    // it is there again.
    wait_for(LONG, "a rotated copy holding the service's output", || {
        fs::read_to_string(log(".1")).is_ok_and(|t| t.contains("chatty service"))
    });
    assert_eq!(
        root.service_pid("chatty"),
        pid,
        "rotation must not restart the service"
    );
}

// ---------------------------------------------------------------------------
// `down` returns when everything is gone; `up` right after it works;
// deep roots and start-up failures.

/// A global service `svc` that appends its pid to `runs` and sleeps.
fn one_service(root: &Root, extra: &str) {
    root.script("svc.sh", "echo $$ >> \"$PSM_ROOT/runs\"\nexec sleep 1000");
    root.write_config(&format!(
        "{}\n[[service]]\nname = \"svc\"\ntype = \"global\"\ncommand = [\"sh\", \"svc.sh\"]\n{extra}",
        support::FAST
    ));
}

/// `psm up` issued while a `psm down` is under way (its service is slowly
/// stopping), ten times: every `up` exits 0 without "already running" and,
/// once both have returned, a new coordinator and a new service run — the
/// later command wins, never a leaving coordinator taken for a running one.
#[test]
fn up_during_down_starts_again_after_it() {
    let root = Root::new();
    root.script(
        "slow.sh",
        r#"echo $$ >> "$PSM_ROOT/runs"
trap 'echo $$ >> "$PSM_ROOT/terms"; sleep 0.3; exit 0' TERM
sleep 1000 &
wait"#,
    );
    root.write_config(&format!(
        "{}\n[[service]]\nname = \"svc\"\ntype = \"global\"\ncommand = [\"sh\", \"slow.sh\"]\n",
        support::FAST
    ));
    let mut coordinator = root.up();
    let mut service = root.service_pid("svc");
    root.reaper.group(service);
    for round in 0..10 {
        let mut down = support::Children(vec![root
            .cmd()
            .arg("down")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn psm down")]);
        // `down` is under way once the service got its SIGTERM.
        wait_for(LONG, &format!("round {round}: svc told to stop"), || {
            lines(&root, "terms").len() == round + 1
        });
        let up = root.psm(&["up"]);
        let status = support::exit_of(&mut down.0[0], LONG, "psm down");
        assert!(status.success(), "round {round}: down failed");
        assert!(up.status.success(), "round {round}: {}", stderr(&up));
        assert!(
            !stderr(&up).contains("already running"),
            "round {round}: up took the leaving coordinator for a running one: {}",
            stderr(&up)
        );
        assert!(
            !alive(coordinator),
            "round {round}: the old coordinator survived"
        );
        let next = root.coordinator_pid().expect("a coordinator after up");
        assert_ne!(next, coordinator, "round {round}");
        coordinator = next;
        service = new_pid(&root, "svc", service);
        root.reaper.group(service);
    }
}

/// A coordinator that cannot act on `down` (SIGSTOPped) is SIGKILLed by
/// `psm down` once the deadline derived from the stop timeouts passes; `down`
/// says so, stops the service the coordinator left (identity checked) and
/// removes the records, and the mark keeps psm down.
#[test]
fn down_sigkills_a_coordinator_that_does_not_exit() {
    let root = Root::new();
    one_service(&root, "stop-timeout = \"300ms\"\n");
    let coordinator = root.up();
    let service = root.service_pid("svc");
    root.reaper.group(service);
    unsafe { libc::kill(coordinator, libc::SIGSTOP) };
    let out = support::output_within(
        {
            let mut c = root.cmd();
            c.arg("down");
            c
        },
        Duration::from_secs(40),
        "psm down of a stopped coordinator",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("SIGKILLed"), "{}", stderr(&out));
    assert!(
        !alive(coordinator),
        "down returned with the coordinator alive"
    );
    wait_dead(service, "the service the killed coordinator left");
    let reg = root.registry();
    assert!(
        reg["services"]["global"]
            .as_object()
            .is_none_or(|g| g.is_empty()),
        "records left after down: {reg}"
    );
    assert!(root.file(".psm/down").exists(), "the down mark");
}

/// A root so deep that `.psm/coordinator.sock` would pass the unix socket
/// limit (a ~200-byte root) still works: `up`, `status`, `stop`, `start`,
/// `down` all reach the coordinator through its socket in the per-user
/// runtime directory (0700), and `verify` names where the socket is.
#[test]
fn a_200_byte_root_works_through_a_short_socket_path() {
    let root = Root::deep(200);
    one_service(&root, "");
    let coordinator = root.up();
    let service = root.service_pid("svc");
    root.reaper.group(service);
    assert!(!root.file(".psm/coordinator.sock").exists());

    let status = root.ok(&["status"]);
    assert!(status.contains("svc"), "{status}");
    let ping = root.ok(&["stop", "svc"]);
    assert!(ping.contains("stopped svc"), "{ping}");
    wait_dead(service, "stopped svc");
    root.ok(&["start", "svc"]);
    let again = new_pid(&root, "svc", service);
    root.reaper.group(again);
    let verify = root.psm(&["verify"]);
    let table = String::from_utf8_lossy(&verify.stdout).into_owned();
    let socket_line = table
        .lines()
        .find(|l| l.contains("socket"))
        .unwrap_or_else(|| panic!("no socket line: {table}"));
    assert!(socket_line.starts_with("pass"), "{table}");
    assert!(socket_line.contains("too long"), "{table}");
    root.ok(&["down"]);
    wait_dead(again, "svc after down");
    assert!(!alive(coordinator));
}

/// When the coordinator dies at start-up (something that is not a socket
/// sits where its socket goes), `psm up` fails with the coordinator's own
/// error line, not "did not become healthy within 10s"; `psm verify` names
/// the cause. A `.psm` that is a plain file is one line from `up` and a
/// `verify` failure too, and is left as it was.
#[test]
fn up_reports_why_the_coordinator_died_at_start_up() {
    let root = Root::new();
    one_service(&root, "");
    fs::create_dir_all(root.file(".psm/coordinator.sock")).unwrap();
    let out = root.psm(&["up"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("exited at start-up"), "{err}");
    assert!(
        err.contains("coordinator.sock is a directory, not psm's control socket"),
        "the coordinator's cause: {err}"
    );
    assert!(!err.contains("did not become healthy"), "{err}");
    let fails = |root: &Root| {
        let verify = root.psm(&["verify"]);
        String::from_utf8_lossy(&verify.stdout)
            .lines()
            .filter(|l| l.starts_with("FAIL"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let table = fails(&root);
    assert!(
        table
            .iter()
            .any(|l| l.contains("coordinator.sock is not a socket")),
        "{table:?}"
    );

    fs::remove_dir_all(root.file(".psm")).unwrap();
    fs::write(root.file(".psm"), "not a directory").unwrap();
    let out = root.psm(&["up"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains(".psm"), "{err}");
    assert_eq!(root.read(".psm"), "not a directory", "left as it was");
    let table = fails(&root);
    assert!(
        table.iter().any(|l| l.contains(".psm is not a directory")),
        "{table:?}"
    );
}

/// The coordinator raises its soft open-file limit to the hard one when its
/// services could run short of descriptors (here: under a soft limit of 64),
/// else leaves it (under 512, one service); either way its services get the
/// soft limit psm was started with, not psm's (the raised case starts them
/// by fork + exec to give it back, the other by posix_spawn).
#[cfg(target_os = "linux")]
#[test]
fn the_coordinator_raises_its_file_limit_and_services_get_the_original() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    use std::os::unix::process::CommandExt;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    for (soft, raised) in [(64.min(hard - 1), true), (512.min(hard - 1), false)] {
        let root = Root::new();
        let script = root.script("svc.sh", "ulimit -n > \"$0.limit\"\nexec sleep 1000");
        root.write_config(&format!(
            "[[service]]\nname = \"svc\"\ntype = \"global\"\ncommand = [\"{}\"]\n",
            script.display()
        ));
        let mut up = root.cmd();
        up.arg("up");
        // SAFETY: setrlimit is an async-signal-safe system call.
        unsafe {
            up.pre_exec(move || Ok(setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?));
        }
        let out = up.output().unwrap();
        assert!(out.status.success(), "psm up: {}", stderr(&out));
        let coordinator = root.coordinator_pid().expect("a coordinator after psm up");
        wait_until(LONG, "the service wrote its open-file limit", || {
            let limit = fs::read_to_string(root.file("svc.sh.limit")).unwrap_or_default();
            (limit.trim() == soft.to_string())
                .then_some(())
                .ok_or(limit)
        });
        let limits = fs::read_to_string(format!("/proc/{coordinator}/limits")).unwrap();
        let open_files = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .split_whitespace()
            .nth(3)
            .unwrap()
            .to_string();
        let want = if raised { hard } else { soft };
        assert_eq!(
            open_files,
            want.to_string(),
            "coordinator's soft limit (started with {soft}):\n{limits}"
        );
        root.ok(&["down"]);
    }
}

/// Edits the registry under its exclusive lock, as every writer does.
fn edit_registry(root: &Root, edit: impl FnOnce(&mut serde_json::Value)) {
    use std::os::fd::AsRawFd;
    let lock = fs::File::open(root.file(".live-process-registry.json.lock")).expect("lock file");
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let mut reg = root.registry();
    edit(&mut reg);
    let tmp = root.file("registry.test-tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(&reg).unwrap()).unwrap();
    fs::rename(&tmp, root.registry_path()).unwrap();
    drop(lock); // closing the file releases the lock
}

/// A service without a health probe is checked every round though it has no
/// round of its own (the coordinator stamps it): its `lastHealthCheck` keeps
/// advancing, a record someone removed comes back whole within a round, and
/// one a hand edit marked `stopped` (with another pid) is written back as it
/// is: running, under its own pid.
#[test]
fn an_unprobed_service_is_stamped_and_its_lost_record_comes_back() {
    let root = Root::new();
    root.write_config(
        "health-interval = \"100ms\"\n\n[[service]]\nname = \"svc\"\ntype = \"global\"\n\
         command = [\"sleep\", \"1000\"]\nstart-period = \"0s\"\n",
    );
    root.up();
    let pid = root.service_pid("svc");
    let stamp = |root: &Root| root.global("svc")["lastHealthCheck"].as_u64();
    let first = stamp(&root).expect("lastHealthCheck");
    wait_until(LONG, "a later stamp", || match stamp(&root) {
        Some(t) if t > first => Ok(()),
        other => Err(other),
    });

    edit_registry(&root, |reg| {
        reg["services"]["global"]
            .as_object_mut()
            .unwrap()
            .remove("svc");
    });
    wait_until(LONG, "the removed record back", || {
        let r = root.global("svc");
        (r["pid"] == pid && r["status"] == "running" && r["startTime"].is_u64())
            .then_some(())
            .ok_or(r)
    });

    edit_registry(&root, |reg| {
        let r = &mut reg["services"]["global"]["svc"];
        r["status"] = "stopped".into();
        r["pid"] = 1.into();
    });
    wait_until(LONG, "the edited record written back", || {
        let r = root.global("svc");
        (r["pid"] == pid && r["status"] == "running")
            .then_some(())
            .ok_or(r)
    });
    assert!(alive(pid));
}

/// A service between runs (backoff) is not stamped: its `lastHealthCheck`
/// stays where its last run left it while rounds pass.
#[test]
fn a_service_in_backoff_is_not_stamped() {
    let root = Root::new();
    root.script("crash.sh", "echo $$ >> runs\nexit 3");
    root.write_config(
        "health-interval = \"100ms\"\n\n[restart]\nbase = \"60s\"\nmax = \"60s\"\n\n\
         [[service]]\nname = \"svc\"\ntype = \"global\"\ncommand = [\"sh\", \"crash.sh\"]\n\
         start-period = \"0s\"\n",
    );
    root.up();
    wait_until(LONG, "svc in backoff", || {
        let r = root.global("svc");
        (r["status"] == "backoff").then_some(()).ok_or(r)
    });
    let before = root.global("svc");
    // Rounds that would each have stamped it had it counted as running.
    support::heartbeats(&root, 3);
    let after = root.global("svc");
    assert_eq!(
        after["lastHealthCheck"], before["lastHealthCheck"],
        "{after}"
    );
    assert_eq!(after["status"], "backoff", "{after}");
}
