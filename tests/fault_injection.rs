//! Fault injection: many rounds of `up`, `reload`, `restart`, `stop`,
//! `start`, `down` and session commands racing each other, while the
//! coordinator and services are SIGKILLed at random moments and strangers are
//! planted on pids psm once recorded. After each round psm must have kept its
//! promises: one process per instance, no process without a record or a
//! session, no record without its process, no stranger signalled, a registry
//! that parses, and `down` leaves nothing behind.
//!
//! Rounds and seed are printed; `PSM_FAULT_SEED=N PSM_FAULT_ROUNDS=M cargo
//! test --test fault_injection -- --nocapture` replays or lengthens a run.

#![cfg(target_os = "linux")]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{alive, output_within, pid_of, start_time, wait_until, Root, COORDINATOR, PSM};

/// How long one round's chaos lasts before psm is left to settle.
const CHAOS: Duration = Duration::from_millis(2500);
/// Any single command: a command that takes longer has hung.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);
/// Settling after the chaos, on a loaded 2-core machine.
const SETTLE: Duration = Duration::from_secs(20);

/// xorshift64*: enough randomness for choosing moments, reproducible by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// Two config variants: a reload between them changes `b`'s command (its
/// argument) and adds or removes `c`, so reloads restart, start and stop.
fn config(variant: u64) -> String {
    let (b_arg, with_c) = if variant % 2 == 0 {
        ("one", false)
    } else {
        ("two", true)
    };
    let mut toml = format!(
        r#"health-interval = "100ms"
[restart]
base = "20ms"
max = "100ms"
attempts = 100
stable-after = "200ms"

[[service]]
name = "a"
type = "global"
command = ["sh", "svc.sh", "a"]
stop-timeout = "300ms"

[[service]]
name = "b"
type = "global"
command = ["sh", "tree.sh", "b", "{b_arg}"]
stop-timeout = "300ms"
"#
    );
    if with_c {
        toml.push_str(
            r#"
[[service]]
name = "c"
type = "global"
command = ["sh", "svc.sh", "c"]
stop-timeout = "300ms"
"#,
        );
    }
    toml
}

/// A process psm must never signal: leads its own process group (as a shell
/// job does) and appends every catchable signal it gets to its file.
struct Stranger {
    child: Child,
    log: std::path::PathBuf,
}

impl Stranger {
    fn spawn(dir: &Path, n: usize) -> Stranger {
        use std::os::unix::process::CommandExt;
        let log = dir.join(format!("stranger-{n}.signals"));
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "for s in TERM INT HUP USR1 USR2 QUIT; do trap \"echo $s >> '{}'\" $s; done; \
                 while :; do sleep 0.05; done",
                log.display()
            ))
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn stranger");
        Stranger { child, log }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Asserts it is alive and was never sent a catchable signal.
    fn assert_untouched(&mut self, round: usize) {
        let got = fs::read_to_string(&self.log).unwrap_or_default();
        assert!(
            got.is_empty(),
            "round {round}: stranger {} was signalled: {got:?}",
            self.pid()
        );
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "round {round}: stranger {} was killed",
            self.pid()
        );
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Tries to make the kernel hand `pid` to a new stranger (Linux, root only):
/// the next pid allocated after a write of `pid - 1` to ns_last_pid. Other
/// processes fork too, so it may miss; then the stranger is still a stranger.
///
/// Only while no other test steers the counter (`support::steer_pids`), and
/// never in the clock tick the victim started in: a process on the victim's
/// pid with the victim's start time *is* the victim to anyone reading the
/// process table (pid + start time in 10 ms ticks is the identity), so psm
/// could not tell it apart, and it would be no stranger.
fn stranger_on(dir: &Path, n: usize, pid: i32, victim_start: u64) -> Stranger {
    let _steering = support::steer_pids(false);
    if _steering.is_some() {
        let _ = fs::write(support::NS_LAST_PID, format!("{}", pid - 1));
    }
    let mut stranger = Stranger::spawn(dir, n);
    while stranger.pid() == pid && start_time(pid) == Some(victim_start) {
        drop(stranger);
        thread::sleep(Duration::from_millis(10)); // nothing happens: the clock ticks on
        if _steering.is_some() {
            let _ = fs::write(support::NS_LAST_PID, format!("{}", pid - 1));
        }
        stranger = Stranger::spawn(dir, n);
    }
    stranger
}

/// Live processes of this root: (pid, PSM_SERVICE label if any, leads its group).
fn processes_of(root: &Path) -> Vec<(i32, Option<String>, bool)> {
    let want = [b"PSM_ROOT=".as_slice(), root.as_os_str().as_bytes()].concat();
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid <= 1 || pid == me || !alive(pid) {
            continue;
        }
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
        if !vars.contains(&want.as_slice()) {
            continue;
        }
        let label = vars
            .iter()
            .find_map(|v| v.strip_prefix(b"PSM_SERVICE="))
            .map(|l| String::from_utf8_lossy(l).into_owned());
        let leads = pgid_of(pid) == Some(pid);
        out.push((pid, label, leads));
    }
    out
}

/// Every per-session service record.
fn session_records(reg: &Value) -> Vec<Value> {
    reg["services"]["sessions"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .flat_map(|s| s.as_object().into_iter().flat_map(|m| m.values()))
        .cloned()
        .collect()
}

/// A process for a failure message: pid, pgid, parent, command line and the
/// psm variables of its environment.
fn describe(pid: i32) -> String {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default();
    let ppid = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let vars: Vec<String> = fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|v| v.starts_with(b"PSM_"))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    format!(
        "pid {pid} pgid {:?} ppid {ppid} `{cmdline}` {vars:?}",
        pgid_of(pid)
    )
}

/// The process group of `pid` (field 5 of /proc/<pid>/stat).
fn pgid_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// Every (name, record) of the global scope except the coordinator's own.
fn global_records(reg: &Value) -> BTreeMap<String, Value> {
    reg["services"]["global"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(n, _)| n.as_str() != COORDINATOR)
        .map(|(n, r)| (n.clone(), r.clone()))
        .collect()
}

fn psm_within(root: &Root, args: &[&str]) -> std::process::Output {
    let mut cmd = root.cmd();
    cmd.args(args).env("PSM_BIN", PSM);
    output_within(cmd, COMMAND_LIMIT, &format!("psm {args:?} to finish"))
}

/// One random command, as a user or script would type it.
fn random_command(root: &Root, rng: &mut Rng, variant: &Mutex<u64>) {
    match rng.below(11) {
        0 | 1 => {
            psm_within(root, &["up"]);
        }
        2 => {
            let mut v = variant.lock().unwrap();
            *v += 1;
            fs::write(root.file("psm.toml"), config(*v)).unwrap();
            drop(v);
            psm_within(root, &["reload"]);
        }
        3 => {
            psm_within(root, &["reload"]);
        }
        4 => {
            psm_within(root, &["restart", "a"]);
        }
        5 => {
            psm_within(root, &["stop", "a"]);
        }
        6 => {
            psm_within(root, &["start", "a"]);
        }
        7 => {
            psm_within(root, &["down"]);
        }
        8 => {
            // A session whose command spawns a service in the background and
            // ends at once: the service must not outlive it.
            psm_within(
                root,
                &[
                    "session",
                    "run",
                    "--",
                    "sh",
                    "-c",
                    "\"$PSM_BIN\" session spawn s1 -- sleep 1000 >/dev/null & exit 0",
                ],
            );
        }
        _ => {
            // A session that lives a little while with two services, long
            // enough for the fault thread to kill one and plant a stranger.
            psm_within(
                root,
                &[
                    "session",
                    "run",
                    "--",
                    "sh",
                    "-c",
                    "\"$PSM_BIN\" session spawn s1 -- sleep 1000 >/dev/null; \
                     \"$PSM_BIN\" session spawn s2 -- sleep 1000 >/dev/null; sleep 0.4",
                ],
            );
        }
    }
}

/// One random fault: the coordinator or a service SIGKILLed, and a stranger
/// planted on the pid that was freed.
fn random_fault(root: &Root, rng: &mut Rng, strangers: &Mutex<Vec<Stranger>>, n: &mut usize) {
    // The test itself must never hit a stranger: records are trusted only
    // while their identity matches, and a planted stranger is never a victim.
    let victim = match rng.below(4) {
        0 => root.coordinator_pid(),
        n => {
            let reg = root.registry();
            let records: Vec<Value> = if n == 1 {
                global_records(&reg).into_values().collect()
            } else {
                session_records(&reg)
            };
            let live: Vec<i32> = records
                .iter()
                .filter_map(|r| Some((pid_of(r)?, r["pidStartTime"].as_u64()?)))
                .filter(|&(p, st)| p > 1 && start_time(p) == Some(st) && alive(p))
                .map(|(p, _)| p)
                .collect();
            (!live.is_empty()).then(|| live[rng.below(live.len() as u64) as usize])
        }
    };
    let victim = victim.filter(|v| !strangers.lock().unwrap().iter().any(|s| s.pid() == *v));
    let Some(victim) = victim else { return };
    let Some(victim_start) = start_time(victim) else {
        return;
    };
    unsafe { libc::kill(victim, libc::SIGKILL) };
    // Once the victim is reaped its pid is free: hand it to a stranger, which
    // leads its own group as a shell job would.
    let deadline = Instant::now() + Duration::from_millis(500);
    while start_time(victim).is_some() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5)); // poll for the reap, as wait_until does
    }
    if start_time(victim).is_none() {
        *n += 1;
        let stranger = stranger_on(root.path(), *n, victim, victim_start);
        if stranger.pid() == victim {
            eprintln!("stranger planted on reused pid {victim}");
        }
        strangers.lock().unwrap().push(stranger);
    }
}

/// After the chaos: psm is brought up and must settle into exactly one
/// recorded, live process per configured service and nothing else of this
/// root's running; then `down` must leave nothing.
fn settle_and_check(root: &Root, round: usize, variant: u64) {
    psm_within(root, &["start", "a"]);
    let out = psm_within(root, &["up"]);
    assert!(out.status.success(), "round {round}: up failed: {out:?}");
    // A reload that met no listening coordinator (SIGKILLed, or one just
    // starting) failed and said so: apply the final config now.
    let out = psm_within(root, &["reload"]);
    assert!(
        out.status.success(),
        "round {round}: reload failed: {out:?}"
    );
    // `start a` before `up` may have found no coordinator; after `up`, `a`
    // must run again even if a `stop a` was the last word on it.
    psm_within(root, &["start", "a"]);
    let mut wanted: BTreeSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
    if variant % 2 == 1 {
        wanted.insert("c".into());
    }
    let root_path = root.path().to_path_buf();
    wait_until(SETTLE, &format!("round {round}: settled"), || {
        psm_within(root, &["cleanup"]);
        let reg = root.registry();
        let records = global_records(&reg);
        let names: BTreeSet<String> = records
            .iter()
            .filter(|(_, r)| r["status"] == "running")
            .map(|(n, _)| n.clone())
            .collect();
        if names != wanted {
            return Err(format!("running records {names:?}, want {wanted:?}"));
        }
        let recorded: BTreeSet<(i32, u64)> = records
            .values()
            .filter_map(|r| Some((pid_of(r)?, r["pidStartTime"].as_u64()?)))
            .collect();
        for &(pid, st) in &recorded {
            if start_time(pid) != Some(st) {
                return Err(format!("record of pid {pid} names no live process"));
            }
        }
        let procs = processes_of(&root_path);
        let mut per_label: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (pid, label, leads) in &procs {
            if let (Some(l), true) = (label, leads) {
                per_label.entry(l.clone()).or_default().push(*pid);
            }
        }
        for (label, pids) in &per_label {
            if pids.len() != 1 {
                return Err(format!("{label}: {} processes {pids:?}", pids.len()));
            }
            let st = start_time(pids[0]).unwrap_or(0);
            if !recorded.contains(&(pids[0], st)) {
                return Err(format!("{label}: pid {} has no record", pids[0]));
            }
        }
        if per_label.keys().cloned().collect::<BTreeSet<_>>() != wanted {
            return Err(format!("processes {per_label:?}, want {wanted:?}"));
        }
        // Sessions ended with their commands: no session, no session service.
        let sessions = reg["services"]["sessions"].as_object().map_or(0, |m| {
            m.values()
                .filter(|s| s.as_object().is_some_and(|s| !s.is_empty()))
                .count()
        });
        if sessions != 0 || reg["sessions"].as_object().is_some_and(|m| !m.is_empty()) {
            return Err(format!(
                "sessions left: {} with services {}",
                reg["sessions"], reg["services"]["sessions"]
            ));
        }
        // Every process of this root belongs to a recorded service's group
        // (grandchildren included); anything else escaped or leaked.
        let strays: Vec<i32> = procs
            .iter()
            .map(|(pid, _, _)| *pid)
            .filter(|&pid| !pgid_of(pid).is_some_and(|g| recorded.iter().any(|(p, _)| *p == g)))
            .collect();
        if !strays.is_empty() {
            let described: Vec<String> = strays.iter().map(|&p| describe(p)).collect();
            return Err(format!(
                "processes of this root with no record: {described:?}"
            ));
        }
        Ok(())
    });
    let out = psm_within(root, &["down"]);
    assert!(out.status.success(), "round {round}: down failed: {out:?}");
    let left = processes_of(&root_path);
    assert!(
        left.is_empty(),
        "round {round}: down returned with processes of this root alive: {left:?}"
    );
    assert!(
        global_records(&root.registry()).is_empty(),
        "round {round}: down left records: {}",
        root.registry()
    );
}

/// Commands racing each other while the coordinator and services are
/// SIGKILLed and strangers take freed pids: after every round, one process
/// per instance, every process recorded, every record live, no stranger
/// signalled, and `down` leaves nothing.
#[test]
fn random_faults_never_break_the_promises() {
    let seed = env_u64("PSM_FAULT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    let rounds = env_u64("PSM_FAULT_ROUNDS").unwrap_or(5) as usize;
    eprintln!("fault injection: seed {seed}, {rounds} rounds");
    let root = Root::new();
    root.script("svc.sh", "exec sleep 1000");
    root.script(
        "tree.sh",
        "sleep 1000 &\necho $! >> \"$PSM_ROOT/grandchildren\"\nwait",
    );
    let variant = Arc::new(Mutex::new(0u64));
    fs::write(root.file("psm.toml"), config(0)).unwrap();
    let root = Arc::new(root);
    let strangers: Arc<Mutex<Vec<Stranger>>> = Arc::new(Mutex::new(
        (0..3)
            .map(|i| Stranger::spawn(root.path(), 1000 + i))
            .collect(),
    ));
    let mut rng = Rng(seed);
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..3 {
            let (root, variant, stop) = (root.clone(), variant.clone(), stop.clone());
            let mut rng = Rng(rng.next() | 1);
            workers.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    random_command(&root, &mut rng, &variant);
                }
                let _ = w;
            }));
        }
        {
            let (root, strangers, stop) = (root.clone(), strangers.clone(), stop.clone());
            let mut rng = Rng(rng.next() | 1);
            workers.push(thread::spawn(move || {
                let mut n = round * 1000;
                while !stop.load(Ordering::Relaxed) {
                    // A fault every 50–250 ms.
                    thread::sleep(Duration::from_millis(50 + rng.below(200))); // paces faults; never a wait for a result
                    random_fault(&root, &mut rng, &strangers, &mut n);
                }
            }));
        }
        thread::sleep(CHAOS); // the chaos lasts this long; it never stands in for a wait on a result
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().expect("a worker panicked");
        }
        let reg = fs::read_to_string(root.registry_path()).unwrap_or_else(|_| "{}".into());
        serde_json::from_str::<Value>(&reg)
            .unwrap_or_else(|e| panic!("round {round}: registry does not parse: {e}: {reg}"));
        let v = *variant.lock().unwrap();
        settle_and_check(&root, round, v);
        for s in strangers.lock().unwrap().iter_mut() {
            s.assert_untouched(round);
        }
        eprintln!("round {round}: ok");
    }
}
