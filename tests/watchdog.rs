//! The watchdog and what surrounds it, through the real binary: a dead, hung
//! or impostor coordinator is replaced (and a healthy one left alone) without
//! restarting a service or ever running two coordinators; the launchd and
//! systemd files that schedule it; `psm verify` and its exit codes; and the
//! start-up scripts in `scripts/`.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::{
    alive, lines, output_within, pid_of, start_time, stderr, wait_for, wait_until, Children, Root,
    COORDINATOR, FAST, PSM,
};

/// Generous on a loaded 2-core machine; the product needs a fraction of it.
const LIMIT: Duration = Duration::from_secs(15);

/// One watchdog run may wait 2 s for a stuck registry lock, 2 s for a killed
/// coordinator to go, and 10 s for its successor's heartbeat.
const WATCHDOG_LIMIT: Duration = Duration::from_secs(30);

/// `psm --root <root> watchdog args…`, to completion.
fn watchdog(root: &Root, args: &[&str]) -> Output {
    let mut cmd = root.cmd();
    cmd.arg("watchdog").args(args);
    output_within(
        cmd,
        WATCHDOG_LIMIT,
        &format!("psm watchdog {args:?} to exit"),
    )
}

/// Asserts exit 0 and returns stdout.
fn succeeded(out: &Output, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: stdout {:?}, stderr {:?}",
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

/// The lines of `.logs/system-watchdog.log`.
fn watchdog_log(root: &Root) -> Vec<String> {
    lines(root, ".logs/system-watchdog.log")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64
}

fn signal(pid: i32, sig: libc::c_int) {
    assert!(pid > 1, "refusing to signal pid {pid}");
    unsafe { libc::kill(pid, sig) };
}

/// Live (not zombie) processes running `psm … coordinator` for this root.
fn live_coordinators(root: &Root) -> Vec<i32> {
    support::all_pids()
        .into_iter()
        .filter(|&pid| support::runs_coordinator_of(pid, root.path()) && alive(pid))
        .collect()
}

/// Two global services, `a` and `b`; each appends its pid to `<name>.runs`
/// once per run.
fn two_services(root: &Root) {
    root.script(
        "svc.sh",
        r#"echo $$ >> "$PSM_ROOT/$1.runs"
exec sleep 1000"#,
    );
    root.write_config(&format!(
        r#"{FAST}
[[service]]
name = "a"
type = "global"
command = ["sh", "svc.sh", "a"]

[[service]]
name = "b"
type = "global"
command = ["sh", "svc.sh", "b"]
"#
    ));
}

/// The pids of `a` and `b` once both run and recorded their one run.
fn service_pids(root: &Root) -> [i32; 2] {
    let pids = ["a", "b"].map(|n| root.service_pid(n));
    for (n, p) in ["a", "b"].iter().zip(pids) {
        root.reaper.group(p);
        wait_for(LIMIT, &format!("{n} recorded its run"), || {
            lines(root, &format!("{n}.runs")) == [p.to_string()]
        });
    }
    pids
}

/// `a` and `b` still run under `pids`, each having run exactly once.
fn assert_services_untouched(root: &Root, pids: [i32; 2]) {
    for (n, p) in ["a", "b"].iter().zip(pids) {
        let rec = root.global(n);
        assert_eq!(pid_of(&rec), Some(p), "{n} kept its pid: {rec}");
        assert_eq!(rec["status"], "running", "{n}: {rec}");
        assert!(alive(p), "{n} (pid {p}) still runs");
        assert_eq!(
            lines(root, &format!("{n}.runs")),
            [p.to_string()],
            "{n} ran exactly once"
        );
    }
}

/// Waits until the registry records `pid` as the coordinator.
fn wait_recorded_coordinator(root: &Root, pid: i32) {
    wait_until(LIMIT, "the coordinator's record", || {
        let rec = root.global(COORDINATOR);
        if pid_of(&rec) == Some(pid) {
            Ok(())
        } else {
            Err(rec)
        }
    });
}

/// The one line the watchdog logged, asserted to carry `verdict=<verdict>`.
fn assert_one_log_line(root: &Root, verdict: &str) -> String {
    let log = watchdog_log(root);
    assert_eq!(log.len(), 1, "one line per watchdog run: {log:?}");
    assert!(
        log[0].contains(&format!(" verdict={verdict} ")),
        "expected verdict={verdict}: {log:?}"
    );
    log[0].clone()
}

// ---------------------------------------------------------------------------
// 1. Recovery.

/// A coordinator killed with SIGKILL is replaced by one `psm watchdog` run:
/// exit 0, a new coordinator, the services adopted under their pids (none
/// restarted), one `pid_dead` line in the watchdog log, and
/// `watchdogRestarts: 1` in the coordinator's record, kept across the new
/// coordinator's heartbeats.
#[test]
fn sigkilled_coordinator_is_replaced_and_its_services_adopted() {
    let root = Root::new();
    two_services(&root);
    let first = root.up();
    let pids = service_pids(&root);

    signal(first, libc::SIGKILL);
    wait_for(LIMIT, "first coordinator gone", || !alive(first));
    let out = watchdog(&root, &[]);
    let said = succeeded(&out, "watchdog after SIGKILL");
    assert!(said.starts_with("pid_dead: "), "{said}");

    let second = root
        .coordinator_pid()
        .expect("a coordinator after the watchdog");
    assert_ne!(second, first);
    assert_eq!(
        live_coordinators(&root),
        [second],
        "exactly one coordinator"
    );
    let line = assert_one_log_line(&root, "pid_dead");
    assert!(
        line.contains(&format!("started coordinator pid {second}")),
        "{line}"
    );
    let rec = root.global(COORDINATOR);
    assert_eq!(pid_of(&rec), Some(second), "{rec}");
    assert_eq!(rec["metadata"]["watchdogRestarts"], 1, "{rec}");
    assert_eq!(
        rec["metadata"]["lastWatchdogRestart"]["verdict"], "pid_dead",
        "{rec}"
    );

    // The count survives the coordinator's own heartbeats.
    let returned = now_ms();
    wait_until(LIMIT, "a heartbeat after the watchdog returned", || {
        let rec = root.global(COORDINATOR);
        match rec["lastHealthCheck"].as_u64() {
            Some(t) if t > returned + 200 => Ok(()),
            _ => Err(rec),
        }
    });
    let rec = root.global(COORDINATOR);
    assert_eq!(rec["metadata"]["watchdogRestarts"], 1, "{rec}");
    assert_eq!(pid_of(&rec), Some(second), "{rec}");
    thread::sleep(Duration::from_millis(500)); // proves a service is never restarted or twinned: five health intervals
    assert_services_untouched(&root, pids);
    assert_eq!(live_coordinators(&root), [second]);
}

/// A coordinator stopped with SIGSTOP, once its heartbeat is stale, is killed
/// and replaced by `psm watchdog --max-age 300ms`: exit 0, the stopped one is
/// dead when the watchdog returns, at no moment do two coordinators run, and
/// the services keep their pids.
#[test]
fn stopped_coordinator_is_killed_before_its_successor_starts() {
    let root = Root::new();
    two_services(&root);
    let first = root.up();
    let pids = service_pids(&root);
    wait_recorded_coordinator(&root, first);

    signal(first, libc::SIGSTOP);
    wait_until(LIMIT, "the coordinator stopped", || {
        match support::state(first) {
            Some('T') => Ok(()),
            other => Err(other),
        }
    });
    // Stopped, it cannot write: its last heartbeat only grows older.
    wait_until(
        LIMIT,
        "the stopped coordinator's heartbeat to go stale",
        || {
            let rec = root.global(COORDINATOR);
            match rec["lastHealthCheck"].as_u64() {
                Some(t) if now_ms().saturating_sub(t) > 600 => Ok(()),
                _ => Err(rec),
            }
        },
    );

    // Count this root's live coordinators all through the watchdog's run.
    let done = AtomicBool::new(false);
    let (out, most) = thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut most: Vec<i32> = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let live = live_coordinators(&root);
                if live.len() > most.len() {
                    most = live;
                }
                thread::sleep(Duration::from_millis(5)); // sampling period; never a wait for a condition
            }
            most
        });
        let out = watchdog(&root, &["--max-age", "300ms"]);
        done.store(true, Ordering::SeqCst);
        (out, sampler.join().expect("sampler"))
    });
    let said = succeeded(&out, "watchdog on a stopped coordinator");
    assert!(said.starts_with("stale_health: "), "{said}");
    assert!(
        !alive(first),
        "the stopped coordinator is dead when the watchdog returns (state {:?})",
        support::state(first)
    );
    assert!(
        most.len() <= 1,
        "two coordinators ran at once during the watchdog's run: {most:?}"
    );

    let second = root
        .coordinator_pid()
        .expect("a coordinator after the watchdog");
    assert_ne!(second, first);
    assert_eq!(
        live_coordinators(&root),
        [second],
        "exactly one coordinator"
    );
    let line = assert_one_log_line(&root, "stale_health");
    assert!(
        line.contains(&format!("killed hung coordinator pid {first}")),
        "{line}"
    );
    let rec = root.global(COORDINATOR);
    assert_eq!(pid_of(&rec), Some(second), "{rec}");
    assert_eq!(rec["metadata"]["watchdogRestarts"], 1, "{rec}");
    thread::sleep(Duration::from_millis(500)); // proves a service is never restarted or twinned: five health intervals
    assert_services_untouched(&root, pids);
}

/// A coordinator record whose pid belongs to an unrelated live process (its
/// start time differs) is `wrong_process`: that process receives no signal
/// and keeps running, and a new coordinator is started.
#[test]
fn a_stranger_holding_the_coordinators_pid_is_never_signalled() {
    let root = Root::new();
    root.write_config(FAST);
    // Records every catchable signal; `wait` returns at once when one comes.
    let script = root.script(
        "stranger.sh",
        r#"for s in HUP INT QUIT TERM USR1 USR2; do
  trap "echo $s >> \"$PSM_ROOT/stranger.signals\"" $s
done
echo $$ > "$PSM_ROOT/stranger.pid"
while :; do sleep 1000 & wait $!; done"#,
    );
    let child = Command::new("sh")
        .arg(&script)
        .env("PSM_ROOT", root.path())
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn the stranger");
    let stranger = child.id() as i32;
    let _children = Children(vec![child]);
    root.reaper.group(stranger);
    assert_eq!(root.pid_from("stranger.pid"), stranger);

    // The record names the stranger's pid with another start time, as if a
    // dead coordinator's pid had been reused; no coordinator runs.
    root.ok(&[
        "register",
        COORDINATOR,
        &stranger.to_string(),
        "global",
        "psm coordinator",
    ]);
    let mut reg = root.registry();
    let real = start_time(stranger).expect("the stranger's start time");
    reg["services"]["global"][COORDINATOR]["pidStartTime"] = json!(real + 1);
    fs::write(root.registry_path(), serde_json::to_vec(&reg).unwrap()).unwrap();
    assert_eq!(root.coordinator_pid(), None);

    let out = watchdog(&root, &[]);
    let said = succeeded(&out, "watchdog on an impostor pid");
    assert!(said.starts_with("wrong_process: "), "{said}");
    let coordinator = root
        .coordinator_pid()
        .expect("a coordinator after the watchdog");
    assert_ne!(coordinator, stranger);
    assert_eq!(live_coordinators(&root), [coordinator]);
    assert_eq!(pid_of(&root.global(COORDINATOR)), Some(coordinator));
    let line = assert_one_log_line(&root, "wrong_process");
    assert!(!line.contains("killed"), "{line}");

    thread::sleep(Duration::from_millis(300)); // proves a signal never reaches the stranger: time for its trap to write one
    assert!(alive(stranger), "the stranger was killed");
    assert_ne!(
        support::state(stranger),
        Some('T'),
        "the stranger was stopped"
    );
    assert_eq!(
        root.read("stranger.signals"),
        "",
        "the stranger was signalled"
    );
}

/// A healthy coordinator is left alone: exit 0, verdict `ok`, one `ok` line
/// with action `none`, the same coordinator and service pids, and the
/// registry as the coordinator keeps it (only heartbeat times move; no
/// watchdog metadata).
#[test]
fn a_healthy_coordinator_is_left_alone() {
    let root = Root::new();
    two_services(&root);
    let first = root.up();
    let pids = service_pids(&root);
    // A heartbeat written after both services run: the record's metadata
    // counts them, and keeps counting them.
    let running = now_ms();
    wait_until(LIMIT, "a heartbeat after the services started", || {
        let rec = root.global(COORDINATOR);
        match rec["lastHealthCheck"].as_u64() {
            Some(t) if t > running && pid_of(&rec) == Some(first) => Ok(()),
            _ => Err(rec),
        }
    });

    /// The registry without the times that heartbeats and checks move.
    fn settled(mut reg: Value) -> Value {
        reg.as_object_mut().unwrap().remove("lastChange");
        for rec in reg["services"]["global"]
            .as_object_mut()
            .unwrap()
            .values_mut()
        {
            rec.as_object_mut().unwrap().remove("lastHealthCheck");
        }
        reg
    }
    let before = settled(root.registry());
    let out = watchdog(&root, &[]);
    let said = succeeded(&out, "watchdog on a healthy coordinator");
    assert!(said.starts_with("ok: "), "{said}");
    let after = settled(root.registry());
    assert_eq!(before, after, "the registry changed beyond heartbeats");
    assert!(
        after["services"]["global"][COORDINATOR]["metadata"]
            .get("watchdogRestarts")
            .is_none(),
        "{after}"
    );

    assert_eq!(root.coordinator_pid(), Some(first));
    assert_eq!(live_coordinators(&root), [first]);
    let line = assert_one_log_line(&root, "ok");
    assert!(line.ends_with(" action=\"none\""), "{line}");
    assert_services_untouched(&root, pids);
}

/// `psm watchdog --json` prints its verdict as one JSON object: for a root
/// without a coordinator, `not_registered` and the coordinator it started;
/// then, for that coordinator, `ok` and action `none`.
#[test]
fn json_prints_the_verdict() {
    let root = Root::new();
    root.write_config(FAST);

    let said = succeeded(&watchdog(&root, &["--json"]), "watchdog --json");
    assert_eq!(said.lines().count(), 1, "{said}");
    let v: Value = serde_json::from_str(&said).expect("JSON");
    let coordinator = root.coordinator_pid().expect("a coordinator started");
    assert_eq!(v["verdict"], "not_registered", "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
    assert!(
        v["action"]
            .as_str()
            .is_some_and(|a| a.contains(&format!("started coordinator pid {coordinator}"))),
        "{v}"
    );

    let said = succeeded(&watchdog(&root, &["--json"]), "second watchdog --json");
    let v: Value = serde_json::from_str(&said).expect("JSON");
    assert_eq!(v["verdict"], "ok", "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["action"], "none", "{v}");
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("pid {coordinator} alive"))),
        "{v}"
    );
    assert_eq!(root.coordinator_pid(), Some(coordinator));
}

/// The watchdog on a root without a psm.toml starts a coordinator that runs
/// no services: a missing default config means "no services" (design.md), so
/// launchd's watchdog must not leave such a root without a coordinator.
#[test]
fn watchdog_starts_a_coordinator_on_a_root_without_a_config() {
    let root = Root::new();
    let out = watchdog(&root, &["--json"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {said:?}, stderr {:?}, coordinator.log {:?}",
        stderr(&out),
        root.read(".logs/coordinator.log")
    );
    let v: Value = serde_json::from_str(&said).expect("JSON");
    assert_eq!(v["verdict"], "not_registered", "{v}");
    let coordinator = root.coordinator_pid().expect("a coordinator started");
    assert_eq!(pid_of(&root.global(COORDINATOR)), Some(coordinator));
}

/// A registry that does not parse leaves the watchdog nothing to judge
/// safely: exit 1, verdict `unknown` (one log line), the file as it was, and
/// no coordinator started.
#[test]
fn an_unreadable_registry_is_left_alone() {
    let root = Root::new();
    root.write_config(FAST);
    let garbage = b"{ \"version\": \"3.0.0\", \"services\": { oops";
    fs::write(root.registry_path(), garbage).unwrap();

    let out = watchdog(&root, &["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["verdict"], "unknown", "{v}");
    assert_eq!(v["ok"], false, "{v}");
    assert_one_log_line(&root, "unknown");
    assert_eq!(root.registry_bytes().as_deref(), Some(&garbage[..]));
    assert_eq!(root.coordinator_pid(), None, "nothing started");
    assert_eq!(live_coordinators(&root), Vec::<i32>::new());
}

// ---------------------------------------------------------------------------
// 1b. `down` stays down; the watchdog asks before it kills.

/// Sets the coordinator's `lastHealthCheck` to `age` ago, under the
/// registry's exclusive lock as every writer does.
fn age_heartbeat(root: &Root, age: Duration) {
    use std::os::fd::AsRawFd;
    let lock = fs::File::open(root.file(".live-process-registry.json.lock")).expect("lock file");
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let mut reg = root.registry();
    reg["services"]["global"][COORDINATOR]["lastHealthCheck"] =
        json!(now_ms() - age.as_millis() as u64);
    let tmp = root.file("registry.test-tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(&reg).unwrap()).unwrap();
    fs::rename(&tmp, root.registry_path()).unwrap();
    drop(lock); // closing the file releases the lock
}

/// `psm up; psm down; psm watchdog` starts nothing: verdict `stopped`, exit
/// 0, one `stopped` log line, no coordinator, no service run again; neither
/// does `verify --fix` (a warning) nor a KeepAlive agent's `psm coordinator
/// --respect-down` (exit 0). Then `psm up` starts everything again and
/// clears the mark, so the watchdog is back to `ok`.
#[test]
fn down_stays_down_until_up() {
    let root = Root::new();
    two_services(&root);
    root.up();
    let first = service_pids(&root);
    root.ok(&["down"]);
    assert_eq!(root.coordinator_pid(), None, "down left a coordinator");

    let out = watchdog(&root, &[]);
    let said = succeeded(&out, "watchdog after down");
    assert!(said.starts_with("stopped: "), "{said}");
    assert!(said.contains("psm down"), "the verdict says who: {said}");
    assert_one_log_line(&root, "stopped");

    let home = tempfile::tempdir().unwrap();
    let fix = verify(&root, home.path(), &["--fix"]);
    assert_eq!(fix.status.code(), Some(0), "{}", stderr(&fix));
    let warned = not_passing(&fix);
    assert!(
        warned
            .iter()
            .any(|l| l.contains("coordinator") && l.contains("psm up")),
        "verify says psm is down on purpose: {warned:?}"
    );

    let mut agent = root.cmd();
    agent.args(["coordinator", "--respect-down"]);
    let out = output_within(agent, LIMIT, "coordinator --respect-down");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("not starting"), "{}", stderr(&out));

    // Each of the three has returned: nothing they started could run now.
    assert_eq!(
        root.coordinator_pid(),
        None,
        "something started a coordinator"
    );
    for (n, p) in ["a", "b"].iter().zip(first) {
        assert!(!alive(p), "{n} was stopped by down");
        assert_eq!(lines(&root, &format!("{n}.runs")).len(), 1, "{n} ran again");
    }

    let second = root.up();
    for n in ["a", "b"] {
        let pid = root.service_pid(n);
        root.reaper.group(pid);
        wait_for(LIMIT, &format!("{n} ran again after up"), || {
            lines(&root, &format!("{n}.runs")).len() == 2
        });
    }
    wait_recorded_coordinator(&root, second);
    let out = watchdog(&root, &[]);
    let said = succeeded(&out, "watchdog after up");
    assert!(said.starts_with("ok: "), "{said}");
}

/// A symlink planted where `down` leaves its mark is replaced, never written
/// through: the file it points to keeps its content, and the mark is a
/// regular 0600 file that still keeps psm down.
#[test]
fn down_never_writes_its_mark_through_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let root = Root::new();
    root.write_config(FAST);
    root.up();
    let victim = root.file("victim");
    fs::write(&victim, "keep me").unwrap();
    std::os::unix::fs::symlink(&victim, root.file(".psm/down")).unwrap();
    root.ok(&["down"]);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep me");
    let mark = fs::symlink_metadata(root.file(".psm/down")).unwrap();
    assert!(mark.is_file(), "{mark:?}");
    assert_eq!(mark.permissions().mode() & 0o777, 0o600);
    let said = succeeded(&watchdog(&root, &[]), "watchdog after down");
    assert!(said.starts_with("stopped: "), "{said}");
}

/// A coordinator with a long health interval (`5m`) whose heartbeat is an
/// hour old but that answers on its control socket is left alone: the
/// coordinator records its interval, the watchdog (no `--max-age`) finds the
/// heartbeat stale, pings, and reports `responsive` with exit 0; the same
/// coordinator and services run, and nothing is killed.
#[test]
fn a_slow_coordinator_that_answers_is_left_alone() {
    let root = Root::new();
    two_services(&root);
    let config = root.read("psm.toml").replace("100ms", "5m");
    root.write_config(&config);
    let coordinator = root.up();
    let pids = service_pids(&root);
    wait_recorded_coordinator(&root, coordinator);
    let rec = root.global(COORDINATOR);
    assert_eq!(rec["metadata"]["healthIntervalMs"], 300_000, "{rec}");

    // Default max age with a 5m interval: 2 × 5m + 60 s = 11 min.
    age_heartbeat(&root, Duration::from_secs(3600));
    let out = watchdog(&root, &[]);
    let said = succeeded(&out, "watchdog on a slow coordinator");
    assert!(said.starts_with("responsive: "), "{said}");
    assert!(said.contains("answers"), "{said}");
    assert_one_log_line(&root, "responsive");
    assert_eq!(root.coordinator_pid(), Some(coordinator), "it was killed");
    assert!(alive(coordinator));
    assert_services_untouched(&root, pids);
}

/// A coordinator at its control-connection cap answers the watchdog's ping
/// `busy`, naming its pid: flooded, not hung, so it is left alone.
#[test]
fn a_flooded_coordinator_answering_busy_is_left_alone() {
    let root = Root::new();
    two_services(&root);
    let config = root.read("psm.toml").replace("100ms", "5m");
    root.write_config(&format!("{config}\n[control]\nmax-connections = 1\n"));
    let coordinator = root.up();
    wait_recorded_coordinator(&root, coordinator);
    let socket = psm::paths::Paths::new(root.path()).control_socket();
    // One idle client takes the only connection slot.
    let _hog = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    age_heartbeat(&root, Duration::from_secs(3600));
    let out = watchdog(&root, &[]);
    let said = succeeded(&out, "watchdog on a flooded coordinator");
    assert!(said.starts_with("responsive: "), "{said}");
    assert_eq!(root.coordinator_pid(), Some(coordinator), "it was killed");
}

/// A heartbeat younger than twice the recorded interval plus a minute is not
/// stale, even past the old fixed 120 s: with `health-interval = "5m"` and a
/// heartbeat 4 minutes old, the verdict is `ok`, no ping needed.
#[test]
fn the_staleness_limit_follows_the_recorded_interval() {
    let root = Root::new();
    two_services(&root);
    let config = root.read("psm.toml").replace("100ms", "5m");
    root.write_config(&config);
    let coordinator = root.up();
    wait_recorded_coordinator(&root, coordinator);
    age_heartbeat(&root, Duration::from_secs(240));
    let out = watchdog(&root, &["--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("json verdict");
    assert_eq!(report["verdict"], "ok", "{report}");
    assert_eq!(root.coordinator_pid(), Some(coordinator));
}

// ---------------------------------------------------------------------------
// 2. Scheduling.

/// Runs `python3 -c code` with `input` on stdin; parses what it prints as JSON.
fn python(code: &str, input: &str) -> Value {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(code)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .expect("write to python3");
    let out = child.wait_with_output().expect("python3 output");
    assert!(
        out.status.success(),
        "python3 failed on {input:?}: {}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).expect("python3 prints JSON")
}

/// A plist, parsed by Python's plistlib (an error fails the test).
fn plist(text: &str) -> Value {
    python(
        "import json, plistlib, sys; print(json.dumps(plistlib.loads(sys.stdin.buffer.read())))",
        text,
    )
}

/// An INI file (a systemd unit), parsed by Python's configparser:
/// `{section: {key: value}}`, keys in their case, the last of repeated keys.
fn ini(text: &str) -> Value {
    python(
        "import configparser, json, sys
p = configparser.ConfigParser(strict=False, interpolation=None)
p.optionxform = str
p.read_string(sys.stdin.read())
print(json.dumps({s: dict(p.items(s)) for s in p.sections()}))",
        text,
    )
}

/// `(path, contents)` of each file `install --dry-run` prints (each after a
/// `# <path>` line).
fn dry_run_files(stdout: &str) -> Vec<(PathBuf, String)> {
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for line in stdout.lines() {
        match line.strip_prefix("# /") {
            Some(rest) => files.push((PathBuf::from(format!("/{rest}")), String::new())),
            None => {
                let (_, text) = files
                    .last_mut()
                    .expect("output starts with a # <path> line");
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    files
}

/// `psm watchdog install --dry-run args…` with HOME at `home`.
fn dry_run(root: &Root, home: &Path, args: &[&str]) -> Vec<(PathBuf, String)> {
    let mut cmd = root.cmd();
    cmd.args(["watchdog", "install", "--dry-run"])
        .args(args)
        .env("HOME", home);
    let out = output_within(cmd, LIMIT, "install --dry-run");
    dry_run_files(&succeeded(&out, &format!("install --dry-run {args:?}")))
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn absolute(v: &Value) -> bool {
    v.as_str().is_some_and(|s| Path::new(s).is_absolute())
}

/// `psm watchdog install --dry-run` renders a launchd agent (StartInterval 60,
/// an absolute program, PSM_ROOT the root) and a systemd service and timer
/// (OnUnitActiveSec=60s, an absolute ExecStart) that parse, writing nothing;
/// `--interval 90s` changes both; the plists in launchd/ parse and carry the
/// same keys. No real install is run: there is no launchd or user systemd here.
#[test]
fn install_renders_parseable_schedules_matching_the_launchd_files() {
    let root = Root::new();
    let home = tempfile::tempdir().expect("temp home");
    let canonical_root = fs::canonicalize(root.path()).unwrap();
    let canonical_root = canonical_root.to_str().unwrap();

    // launchd
    let files = dry_run(&root, home.path(), &["--launchd"]);
    assert_eq!(files.len(), 1, "{files:?}");
    let (path, text) = &files[0];
    assert!(
        path.starts_with(home.path().join("Library/LaunchAgents")),
        "{path:?}"
    );
    let rendered = plist(text);
    let label = rendered["Label"].as_str().expect("a label");
    assert!(label.starts_with("dev.psm.watchdog."), "{rendered}");
    assert_eq!(path.file_name().unwrap(), format!("{label}.plist").as_str());
    assert_eq!(rendered["StartInterval"], 60, "{rendered}");
    let program = &rendered["ProgramArguments"];
    assert!(absolute(&program[0]), "{rendered}");
    assert_eq!(
        program.as_array().unwrap().last(),
        Some(&json!("watchdog")),
        "{rendered}"
    );
    assert_eq!(
        rendered["EnvironmentVariables"]["PSM_ROOT"], canonical_root,
        "{rendered}"
    );
    for log in ["StandardOutPath", "StandardErrorPath"] {
        assert!(
            rendered[log]
                .as_str()
                .is_some_and(|p| p.starts_with(&format!("{canonical_root}/.logs/"))),
            "{log}: {rendered}"
        );
    }
    let plist90 = plist(&dry_run(&root, home.path(), &["--launchd", "--interval", "90s"])[0].1);
    assert_eq!(plist90["StartInterval"], 90, "{plist90}");

    // The hand-install files carry the rendered agent's keys.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("launchd");
    let by_hand = plist(&fs::read_to_string(dir.join("dev.psm.watchdog.plist")).unwrap());
    assert_eq!(keys(&by_hand), keys(&rendered), "{by_hand}");
    assert_eq!(
        keys(&by_hand["EnvironmentVariables"]),
        keys(&rendered["EnvironmentVariables"])
    );
    assert_eq!(by_hand["StartInterval"], 60);
    assert!(absolute(&by_hand["ProgramArguments"][0]), "{by_hand}");
    assert_eq!(
        by_hand["ProgramArguments"].as_array().unwrap().last(),
        Some(&json!("watchdog"))
    );
    let hand_root = by_hand["EnvironmentVariables"]["PSM_ROOT"]
        .as_str()
        .expect("PSM_ROOT");
    assert!(Path::new(hand_root).is_absolute(), "{by_hand}");
    for log in ["StandardOutPath", "StandardErrorPath"] {
        assert!(
            by_hand[log]
                .as_str()
                .is_some_and(|p| p.starts_with(&format!("{hand_root}/.logs/"))),
            "{log}: {by_hand}"
        );
    }
    let coordinator = plist(&fs::read_to_string(dir.join("dev.psm.coordinator.plist")).unwrap());
    let mut want = keys(&rendered);
    want.remove("StartInterval");
    want.insert("KeepAlive".into());
    assert_eq!(keys(&coordinator), want, "{coordinator}");
    assert_eq!(
        coordinator["KeepAlive"],
        json!({ "SuccessfulExit": false }),
        "{coordinator}"
    );
    assert!(
        absolute(&coordinator["ProgramArguments"][0]),
        "{coordinator}"
    );
    // A KeepAlive relaunch after `psm down` must start nothing.
    assert_eq!(
        coordinator["ProgramArguments"].as_array().unwrap()[1..],
        [json!("coordinator"), json!("--respect-down")]
    );
    assert_eq!(
        keys(&coordinator["EnvironmentVariables"]),
        keys(&rendered["EnvironmentVariables"])
    );

    // systemd
    let units = dry_run(&root, home.path(), &["--systemd"]);
    assert_eq!(units.len(), 2, "{units:?}");
    let unit_dir = home.path().join(".config/systemd/user");
    let (service_path, service_text) = &units[0];
    let (timer_path, timer_text) = &units[1];
    assert_eq!(service_path.parent(), Some(unit_dir.as_path()));
    assert_eq!(service_path.extension().unwrap(), "service");
    assert_eq!(timer_path.extension().unwrap(), "timer");
    let service = ini(service_text);
    let timer = ini(timer_text);
    assert_eq!(timer["Timer"]["OnUnitActiveSec"], "60s", "{timer}");
    assert_eq!(
        timer["Timer"]["Unit"],
        service_path.file_name().unwrap().to_str().unwrap(),
        "{timer}"
    );
    assert_eq!(timer["Install"]["WantedBy"], "timers.target", "{timer}");
    assert_eq!(service["Service"]["Type"], "oneshot", "{service}");
    let exec = service["Service"]["ExecStart"].as_str().expect("ExecStart");
    let program = exec.split_whitespace().next().unwrap().trim_matches('"');
    assert!(Path::new(program).is_absolute(), "{exec}");
    assert!(exec.ends_with(" watchdog"), "{exec}");
    assert!(exec.contains(canonical_root), "{exec}");
    let timer90 = ini(&dry_run(&root, home.path(), &["--systemd", "--interval", "90s"])[1].1);
    assert_eq!(timer90["Timer"]["OnUnitActiveSec"], "90s", "{timer90}");

    assert_eq!(
        fs::read_dir(home.path()).unwrap().count(),
        0,
        "a dry run writes nothing"
    );
}

// ---------------------------------------------------------------------------
// 3. psm verify.

/// `psm --root <root> verify args…` with HOME at `home`.
fn verify(root: &Root, home: &Path, args: &[&str]) -> Output {
    let mut cmd = root.cmd();
    cmd.arg("verify").args(args).env("HOME", home);
    output_within(cmd, WATCHDOG_LIMIT, &format!("psm verify {args:?}"))
}

/// The lines of a `verify` table whose level is not `pass`.
fn not_passing(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("pass "))
        .map(str::to_string)
        .collect()
}

/// The check names of `verify --json`, which must be `{ok, checks: [...]}`.
fn json_checks(out: &Output) -> (bool, Vec<Value>) {
    let v: Value = serde_json::from_slice(&out.stdout).expect("verify --json prints JSON");
    assert_eq!(
        keys(&v),
        BTreeSet::from(["ok".into(), "checks".into()]),
        "{v}"
    );
    let checks = v["checks"].as_array().expect("checks").clone();
    for c in &checks {
        assert_eq!(
            keys(c),
            BTreeSet::from(["check".into(), "level".into(), "reason".into()]),
            "{c}"
        );
    }
    (v["ok"].as_bool().expect("ok is a bool"), checks)
}

/// On a healthy root `psm verify` exits 0 with the unscheduled watchdog as
/// its only warning; `--strict` turns that warning into exit 1, until the
/// schedule's files exist; `--json` prints `{ok, checks}`.
#[test]
fn verify_passes_a_healthy_root_and_strict_fails_on_a_warning() {
    let root = Root::new();
    root.write_config(FAST);
    let coordinator = root.up();
    wait_recorded_coordinator(&root, coordinator);
    let home = tempfile::tempdir().expect("temp home");

    let out = verify(&root, home.path(), &[]);
    succeeded(&out, "verify on a healthy root");
    let warned = not_passing(&out);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].starts_with("warn  watchdog"), "{warned:?}");

    let out = verify(&root, home.path(), &["--strict"]);
    assert_eq!(out.status.code(), Some(1), "--strict fails on a warning");

    let out = verify(&root, home.path(), &["--json"]);
    succeeded(&out, "verify --json");
    let (ok, checks) = json_checks(&out);
    assert!(ok);
    let names: BTreeSet<&str> = checks.iter().filter_map(|c| c["check"].as_str()).collect();
    for name in [
        "registry",
        "config",
        "root",
        "logs",
        "coordinator",
        "dead records",
        "duplicates",
        "watchdog",
    ] {
        assert!(names.contains(name), "no {name} check: {names:?}");
    }
    let out = verify(&root, home.path(), &["--json", "--strict"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!json_checks(&out).0, "ok is false when --strict fails");

    // With the schedule's files where install would put them, nothing warns.
    for (path, text) in dry_run(&root, home.path(), &[]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
    }
    let out = verify(&root, home.path(), &["--strict"]);
    succeeded(&out, "verify --strict with the watchdog scheduled");
    assert_eq!(not_passing(&out), Vec::<String>::new());
}

/// A record of a dead process fails `psm verify` (exit 1, the record named);
/// `--fix` removes it and starts the coordinator, then exits 0.
#[test]
fn verify_names_dead_records_and_fix_repairs_them() {
    let root = Root::new();
    root.write_config(FAST);
    let home = tempfile::tempdir().expect("temp home");
    let mut victim = root.sleeper();
    root.ok(&[
        "register",
        "victim",
        &victim.id().to_string(),
        "global",
        "sleep",
    ]);
    victim.stop();

    let out = verify(&root, home.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let failed = not_passing(&out);
    assert!(
        failed
            .iter()
            .any(|l| l.starts_with("FAIL  dead records") && l.contains("victim")),
        "{failed:?}"
    );
    let out = verify(&root, home.path(), &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let (ok, checks) = json_checks(&out);
    assert!(!ok);
    assert!(
        checks.iter().any(|c| c["check"] == "dead records"
            && c["level"] == "fail"
            && c["reason"].as_str().unwrap().contains("victim")),
        "{checks:?}"
    );
    assert_eq!(root.coordinator_pid(), None, "verify alone starts nothing");

    let out = verify(&root, home.path(), &["--fix"]);
    succeeded(&out, "verify --fix");
    assert!(root.global("victim").is_null(), "{}", root.global("victim"));
    let coordinator = root
        .coordinator_pid()
        .expect("--fix started the coordinator");
    assert_eq!(live_coordinators(&root), [coordinator]);
    assert_eq!(pid_of(&root.global(COORDINATOR)), Some(coordinator));
    succeeded(&verify(&root, home.path(), &[]), "verify after --fix");
}

/// A registry that does not parse fails `psm verify` (exit 1, the parse error
/// on the registry line), with or without `--fix`, and nothing is written
/// over the file or started.
#[test]
fn verify_reports_a_broken_registry_and_writes_nothing() {
    let root = Root::new();
    root.write_config(FAST);
    let home = tempfile::tempdir().expect("temp home");
    let garbage = b"{ \"version\": \"3.0.0\", \"services\": { oops";
    fs::write(root.registry_path(), garbage).unwrap();

    for args in [&[][..], &["--fix"][..]] {
        let out = verify(&root, home.path(), args);
        assert_eq!(out.status.code(), Some(1), "verify {args:?}");
        let failed = not_passing(&out);
        let registry: Vec<&String> = failed
            .iter()
            .filter(|l| l.starts_with("FAIL  registry"))
            .collect();
        assert_eq!(registry.len(), 1, "{failed:?}");
        assert!(
            registry[0].contains("corrupt") && registry[0].contains("line 1 column"),
            "the parse error: {failed:?}"
        );
        assert_eq!(
            root.registry_bytes().as_deref(),
            Some(&garbage[..]),
            "verify {args:?} wrote over the registry"
        );
    }
    assert_eq!(root.coordinator_pid(), None, "nothing started");
}

// ---------------------------------------------------------------------------
// 4. The start-up scripts.

/// `bash scripts/<name> args…` in the root, with the debug psm first on PATH
/// (so nothing is built) and HOME at `home`.
fn script_cmd(root: &Root, home: &Path, name: &str) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    let bin_dir = Path::new(PSM).parent().expect("the binary's directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .current_dir(root.path())
        .env("PATH", path)
        .env("HOME", home)
        .env_remove("PSM_ROOT")
        .env_remove("CODING_REPO")
        .env_remove("PSM_SESSION_ID");
    cmd
}

/// `scripts/start-services.sh --root DIR` starts the coordinator and the
/// services and prints the status; run again, it changes nothing: the same
/// coordinator, the same service pids, each service run once.
#[test]
fn start_services_twice_changes_nothing() {
    let root = Root::new();
    two_services(&root);
    let home = tempfile::tempdir().expect("temp home");
    let run = || {
        let mut cmd = script_cmd(&root, home.path(), "start-services.sh");
        cmd.arg("--root").arg(root.path());
        output_within(cmd, WATCHDOG_LIMIT, "start-services.sh")
    };

    let said = succeeded(&run(), "first start-services.sh");
    assert!(said.contains(COORDINATOR), "prints the status: {said}");
    let coordinator = root.coordinator_pid().expect("a coordinator");
    let pids = service_pids(&root);

    let said = succeeded(&run(), "second start-services.sh");
    assert!(said.contains(COORDINATOR), "prints the status: {said}");
    assert_eq!(
        root.coordinator_pid(),
        Some(coordinator),
        "same coordinator"
    );
    assert_eq!(live_coordinators(&root), [coordinator]);
    thread::sleep(Duration::from_millis(500)); // proves a service is never restarted or twinned: five health intervals
    assert_services_untouched(&root, pids);
}

/// `scripts/launch-session.sh --root DIR -- CMD` starts the services, runs
/// CMD as a registered session (PSM_SESSION_ID set, the session and the
/// service it spawned in the registry while it runs), and when CMD exits
/// removes both, ends the service and exits with CMD's status.
#[test]
fn launch_session_runs_the_command_as_a_session_and_cleans_up() {
    let root = Root::new();
    root.write_config(FAST);
    let home = tempfile::tempdir().expect("temp home");
    root.script(
        "helper.sh",
        r#"echo $$ > "$PSM_ROOT/helper.pid"
exec sleep 1000"#,
    );
    root.script(
        "work.sh",
        r#"echo "$PSM_SESSION_ID" > "$PSM_ROOT/session.id"
psm session spawn helper -- sh "$PSM_ROOT/helper.sh" > /dev/null
while [ ! -s "$PSM_ROOT/helper.pid" ]; do sleep 0.02; done
cp "$PSM_ROOT/.live-process-registry.json" "$PSM_ROOT/during.json"
exit 7"#,
    );
    let mut cmd = script_cmd(&root, home.path(), "launch-session.sh");
    cmd.arg("--root")
        .arg(root.path())
        .arg("--")
        .arg("sh")
        .arg(root.file("work.sh"));
    let out = output_within(cmd, WATCHDOG_LIMIT, "launch-session.sh");
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));

    let id = root.read("session.id").trim().to_string();
    assert!(!id.is_empty(), "PSM_SESSION_ID was set");
    let helper = root.pid_from("helper.pid");
    root.reaper.group(helper);
    let during: Value = serde_json::from_str(&root.read("during.json")).expect("a registry copy");
    assert!(during["sessions"][&id].is_object(), "{during}");
    assert_eq!(
        pid_of(&during["services"]["sessions"][&id]["helper"]),
        Some(helper),
        "{during}"
    );

    wait_for(LIMIT, "the session's helper ended", || !alive(helper));
    let reg = root.registry();
    assert!(reg["sessions"].get(&id).is_none(), "{reg}");
    assert!(reg["services"]["sessions"].get(&id).is_none(), "{reg}");
    assert!(root.coordinator_pid().is_some(), "the services stay up");
}

/// While the coordinator lock is held by a process that has not written its
/// pid (a new coordinator in its first instant), the lock file still names
/// the dead predecessor, whose pid a stranger may now hold: the watchdog
/// never SIGKILLs that stranger, whether the file names its pid alone (an
/// older psm's format) or its pid and its true start time. Only a holder the
/// lock file and the kernel's lock table prove is signalled.
#[cfg(target_os = "linux")]
#[test]
fn a_stranger_named_in_the_coordinator_lock_file_is_never_signalled() {
    use std::os::unix::fs::DirBuilderExt;
    let root = Root::new();
    root.write_config(FAST);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(root.file(".psm"))
        .unwrap();
    let lock = root.file(".psm/coordinator.lock");
    fs::write(&lock, "").unwrap();
    // The holder (this test) takes the lock and writes nothing into the file.
    let held = fs::File::open(&lock).unwrap();
    fs2::FileExt::lock_exclusive(&held).unwrap();
    let stranger = root.sleeper();
    let pid = stranger.id() as i32;
    let start = start_time(pid).unwrap();
    let runs: Vec<_> = [format!("{pid}"), format!("{pid} {start}")]
        .into_iter()
        .map(|text| {
            fs::write(&lock, &text).unwrap();
            let out = watchdog(&root, &[]);
            (text, out)
        })
        .collect();
    for (text, out) in runs {
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            alive(pid),
            "lock file {text:?}: the stranger {pid} was killed: {printed}"
        );
        assert!(
            printed.contains(&format!("left pid {pid} alone")),
            "lock file {text:?}: {printed} {}",
            stderr(&out)
        );
    }
}

/// A FIFO where psm.toml should be makes `psm watchdog` refuse at once with
/// one line naming it and a non-zero exit, before it kills or starts
/// anything (it used to start a coordinator that died on it, and wait 10 s
/// for its heartbeat).
#[test]
fn a_fifo_config_is_refused_by_the_watchdog_at_once() {
    let root = Root::new();
    nix::unistd::mkfifo(
        &root.file("psm.toml"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let mut cmd = root.cmd();
    cmd.arg("watchdog");
    // Well under the 10 s the old watchdog waited for a heartbeat.
    let out = output_within(cmd, Duration::from_secs(5), "psm watchdog refuses");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("FIFO"), "{err}");
    assert!(root.coordinator_pid().is_none(), "nothing was started");
    assert!(
        watchdog_log(&root).iter().any(|l| l.contains("FIFO")),
        "{:?}",
        watchdog_log(&root)
    );
}

/// The watchdog's recovery waits for a lock that outlives its holder's pid
/// (a killed coordinator's last thread still leaving) instead of starting a
/// coordinator that finds it held and leaves: with `.psm/coordinator.lock`
/// naming a pid nobody holds, held a moment longer by another process, the
/// check ends with a new coordinator running. Linux: flock(1) is util-linux's.
#[cfg(target_os = "linux")]
#[test]
fn recovery_waits_for_a_dead_holders_lock() {
    let root = Root::new();
    root.write_config(FAST);
    fs::create_dir_all(root.file(".psm")).unwrap();
    let lock = root.file(".psm/coordinator.lock");
    // A pid above any pid_max: nobody holds it, ever.
    fs::write(&lock, "2147483646 1").unwrap();
    let (holder, pid) = root.hold_lock(&lock);
    wait_until(LIMIT, "flock(1) holding the coordinator lock", || {
        let file = fs::File::open(&lock).unwrap();
        use std::os::fd::AsRawFd;
        let held = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0;
        if held {
            Ok(())
        } else {
            Err("not yet")
        }
    });
    // The holder leaves a moment after the watchdog has started looking.
    let release = thread::spawn(move || {
        thread::sleep(Duration::from_millis(1500)); // the holder must not leave before the watchdog looks: the window it must wait out
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        holder
    });
    let out = watchdog(&root, &["--json"]);
    drop(release.join());
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("json verdict: {e}: {out:?}"));
    assert_eq!(report["ok"], true, "{report}");
    let next = root.coordinator_pid().expect("a new coordinator");
    assert!(alive(next), "{report}");
}
