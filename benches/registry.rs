//! Registry benchmark (issue: foundation): concurrent `psm register`
//! processes into a fresh root, and `psm status --json` over 1,000 records.
//!
//! Run: `cargo bench --bench registry` (add `-- --quick` for one repetition).
//! It prints a markdown table; the figures in docs/benchmarks.md come from it.

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const PSM: &str = env!("CARGO_BIN_EXE_psm");

fn psm(root: &std::path::Path, args: &[&str]) {
    let out = Command::new(PSM)
        .arg("--root")
        .arg(root)
        .args(args)
        .stdout(Stdio::null())
        .output()
        .expect("run psm");
    assert!(
        out.status.success(),
        "psm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn records(root: &std::path::Path) -> usize {
    let text = std::fs::read_to_string(root.join(".live-process-registry.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["services"]["global"].as_object().map_or(0, |m| m.len())
}

struct Sleepers(Vec<Child>);
impl Sleepers {
    fn new(n: usize) -> Self {
        Sleepers(
            (0..n)
                .map(|_| Command::new("sleep").arg("100000").spawn().unwrap())
                .collect(),
        )
    }
}
impl Drop for Sleepers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `total` registrations split over `writers` concurrent sequences of
/// `psm register` processes; returns (wall time, records lost).
fn concurrent_register(writers: usize, total: usize, pid: u32) -> (Duration, usize) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let pid = pid.to_string();
    let start = Instant::now();
    thread::scope(|s| {
        for w in 0..writers {
            let pid = &pid;
            s.spawn(move || {
                for i in (w..total).step_by(writers) {
                    psm(
                        root,
                        &["register", &format!("svc-{i}"), pid, "global", "bench.sh"],
                    );
                }
            });
        }
    });
    let wall = start.elapsed();
    (wall, total - records(root))
}

fn status_time(root: &std::path::Path) -> Duration {
    let start = Instant::now();
    let out = Command::new(PSM)
        .arg("--root")
        .arg(root)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let t = start.elapsed();
    assert!(out.status.success());
    t
}

fn summary(mut xs: Vec<Duration>) -> String {
    xs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{:.1} ms (min {:.1}, max {:.1}, n={})",
        ms(xs[xs.len() / 2]),
        ms(xs[0]),
        ms(xs[xs.len() - 1]),
        xs.len()
    )
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 1 } else { 7 };
    let sleepers = Sleepers::new(10);
    let pid = sleepers.0[0].id();
    println!("| workload | median (min, max) | records lost |");
    println!("|---|---|---|");
    for writers in [8, 32] {
        let mut times = Vec::new();
        let mut lost = 0;
        for _ in 0..reps {
            let (t, l) = concurrent_register(writers, 200, pid);
            times.push(t);
            lost += l;
        }
        println!(
            "| 200 `psm register` from {writers} concurrent writers | {} | {lost} |",
            summary(times)
        );
    }

    // 1,000 records over 10 live processes: every record's identity is checked.
    let dir = tempfile::tempdir().unwrap();
    let mut reg = serde_json::json!({"version": "3.0.0", "lastChange": 0, "sessions": {},
        "services": {"global": {}, "projects": {}, "sessions": {}}});
    for (i, c) in (0..1000).zip(sleepers.0.iter().cycle()) {
        let pid = c.id() as i32;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let start: u64 = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(19)
            .unwrap()
            .parse()
            .unwrap();
        reg["services"]["global"][format!("svc-{i}")] = serde_json::json!({
            "pid": pid, "pidStartTime": start, "type": "global", "script": "s.sh",
            "startTime": 1, "lastHealthCheck": 1, "status": "running", "metadata": {}, "restartCount": 0
        });
    }
    std::fs::write(
        dir.path().join(".live-process-registry.json"),
        serde_json::to_vec_pretty(&reg).unwrap(),
    )
    .unwrap();
    status_time(dir.path()); // warm the page cache
    let times = (0..if quick { 3 } else { 30 })
        .map(|_| status_time(dir.path()))
        .collect();
    println!(
        "| `psm status --json`, 1,000 records | {} | - |",
        summary(times)
    );

    write_cost(quick);
    batching(quick);
}

/// One in-process locked write (`Store::update`: lock, read, parse, apply,
/// serialize, write, fsync, rename, fsync dir) as the registry grows.
fn write_cost(quick: bool) {
    use psm::process::Identity;
    use psm::registry::{Registry, ServiceKey, ServiceRecord, Store, StoreError};
    println!();
    println!("| records in the registry | one in-process write, median (min, max) |");
    println!("|---|---|");
    let id = Identity::of(std::process::id() as i32).unwrap();
    for n in [10usize, 100, 1_000, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(psm::paths::Paths::new(dir.path()));
        store
            .update(|reg: &mut Registry| {
                for i in 0..n {
                    let key = ServiceKey::global(format!("svc-{i}"));
                    reg.insert(&key, ServiceRecord::new(&key.scope, "s.sh", id, 1));
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let reps = if quick { 3 } else { 20 };
        let times = (0..reps)
            .map(|i| {
                let start = Instant::now();
                store
                    .update(|reg: &mut Registry| {
                        let key = ServiceKey::global(format!("extra-{i}"));
                        reg.insert(&key, ServiceRecord::new(&key.scope, "s.sh", id, 1));
                        Ok::<_, StoreError>(())
                    })
                    .unwrap();
                start.elapsed()
            })
            .collect();
        println!("| {n} | {} |", summary(times));
    }
}

/// The daemon's write batching: N registry changes sent to the
/// `RegistryActor` at once (as N services starting together do) against N
/// locked writes one after another.
fn batching(quick: bool) {
    use psm::process::Identity;
    use psm::registry::writer::{Persist, PersistNow, RegistryActor, RegistryOp};
    use psm::registry::{Registry, ServiceKey, ServiceRecord, Store, StoreError};
    let n = if quick { 50 } else { 200 };
    let id = Identity::of(std::process::id() as i32).unwrap();
    let record = move |i: usize| {
        let key = ServiceKey::global(format!("svc-{i}"));
        let rec = ServiceRecord::new(&key.scope, "s.sh", id, 1);
        (key, rec)
    };

    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(psm::paths::Paths::new(dir.path()));
    let start = Instant::now();
    for i in 0..n {
        let (key, rec) = record(i);
        store
            .update(|reg: &mut Registry| {
                reg.insert(&key, rec);
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }
    let sequential = start.elapsed();

    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(psm::paths::Paths::new(dir.path()));
    let system = actix::System::new();
    let batched = system.block_on(async move {
        use actix::Actor;
        let registry = RegistryActor::new(store).start();
        let start = Instant::now();
        for i in 0..n {
            let (key, rec) = record(i);
            registry.do_send(Persist(RegistryOp::Upsert {
                key,
                record: Box::new(rec),
            }));
        }
        // Replies once everything queued before it is on disk.
        let last = ServiceKey::global("last");
        registry
            .send(PersistNow(RegistryOp::Remove {
                key: last,
                pid: None,
            }))
            .await
            .unwrap()
            .unwrap();
        start.elapsed()
    });
    let text = std::fs::read_to_string(dir.path().join(".live-process-registry.json")).unwrap();
    let written: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(written["services"]["global"].as_object().unwrap().len(), n);
    println!();
    println!("| {n} registry changes | wall time |");
    println!("|---|---|");
    println!(
        "| one locked write each, in a row | {:.1} ms |",
        sequential.as_secs_f64() * 1e3
    );
    println!(
        "| through the `RegistryActor` (batched) | {:.1} ms |",
        batched.as_secs_f64() * 1e3
    );
}
