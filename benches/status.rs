//! `psm status` at 1,000 services (issue 10: it stays under 20 ms with CPU
//! and memory measured): 1,000 live services, each one process (`sleep`),
//! then each a process group of two (`sh -c 'sleep & exec sleep'`), so
//! every service's tree has a child.
//!
//! Run: `cargo bench --bench status` (add `-- --quick` for fewer
//! repetitions). It prints a markdown table; docs/benchmarks.md quotes it.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use psm::process::usage::Snapshot;
use psm::process::Identity;

const PSM: &str = env!("CARGO_BIN_EXE_psm");
const SERVICES: usize = 1000;

/// The services, SIGKILLed (whole group) and reaped on drop.
struct Services(Vec<Child>);

impl Drop for Services {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: each child leads its own group (process_group(0)).
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

/// The binary measured: this build, or `$PSM_BENCH_BIN` (e.g. a build of
/// main without the usage figures, for the baseline on the same machine).
fn binary() -> String {
    std::env::var("PSM_BENCH_BIN").unwrap_or_else(|_| PSM.to_string())
}

fn time(root: &std::path::Path, args: &[&str]) -> Duration {
    let start = Instant::now();
    let out = Command::new(binary())
        .arg("--root")
        .arg(root)
        .args(args)
        .stderr(Stdio::inherit())
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
    let reps = if std::env::args().any(|a| a == "--quick") {
        5
    } else {
        30
    };
    for (per_service, script) in [
        (1, "exec sleep 100001"),
        (2, "sleep 100000 & exec sleep 100001"),
    ] {
        run(reps, per_service, script);
    }
}

fn run(reps: usize, per_service: usize, script: &str) {
    let services = Services(
        (0..SERVICES)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", script])
                    .process_group(0)
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut reg = serde_json::json!({"version": "3.0.0", "lastChange": 0, "sessions": {},
        "services": {"global": {}, "projects": {}, "sessions": {}}});
    let mut leaders = Vec::new();
    for (i, c) in services.0.iter().enumerate() {
        let id = Identity::of(c.id() as i32).unwrap();
        leaders.push(id);
        reg["services"]["global"][format!("svc-{i}")] = serde_json::json!({
            "pid": id.pid, "pidStartTime": id.start_time, "pgid": id.pid, "type": "global",
            "script": "s.sh", "startTime": 1, "lastHealthCheck": 1, "status": "running",
            "metadata": {}, "restartCount": 0
        });
    }
    std::fs::write(
        dir.path().join(".live-process-registry.json"),
        serde_json::to_vec_pretty(&reg).unwrap(),
    )
    .unwrap();
    // Every service's child has forked (the sh exec'd into the leader).
    let deadline = Instant::now() + Duration::from_secs(30);
    while Snapshot::take()
        .usage(leaders[SERVICES - 1])
        .is_none_or(|u| u.processes < per_service)
    {
        assert!(Instant::now() < deadline, "services did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let processes = Snapshot::take().processes();
    time(dir.path(), &["status", "--json"]); // warm the page cache

    println!(
        "| {SERVICES} services ({per_service} process(es) each; {processes} processes on the machine), `{}` | median (min, max) |",
        binary()
    );
    println!("|---|---|");
    let json = (0..reps)
        .map(|_| time(dir.path(), &["status", "--json"]))
        .collect();
    println!("| `psm status --json` | {} |", summary(json));
    let table = (0..reps).map(|_| time(dir.path(), &["status"])).collect();
    println!("| `psm status` (table) | {} |", summary(table));
    let snapshots = (0..reps)
        .map(|_| {
            let start = Instant::now();
            let mut s = Snapshot::take();
            s.set_leaders(leaders.iter().copied());
            let rss: u64 = leaders
                .iter()
                .filter_map(|&l| s.usage(l))
                .map(|u| u.rss)
                .sum();
            assert!(rss > 0);
            start.elapsed()
        })
        .collect();
    println!(
        "| in process: one snapshot + {SERVICES} trees | {} |",
        summary(snapshots)
    );
    drop(services);
    println!();
}
