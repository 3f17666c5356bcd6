//! Many writers at once, and writers killed mid-write: nothing is lost and the
//! file always parses. These are the seed's lost-update bugs, as tests.

mod support;

use std::collections::HashSet;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::Root;

fn global_names(root: &Root) -> HashSet<String> {
    root.registry()["services"]["global"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Runs `writers` threads, each invoking `psm register` `each` times in a row.
fn register_concurrently(root: &Root, pid: u32, writers: usize, each: usize) {
    let pid = pid.to_string();
    thread::scope(|s| {
        for w in 0..writers {
            let pid = &pid;
            s.spawn(move || {
                for i in 0..each {
                    let name = format!("svc-{w}-{i}");
                    root.ok(&["register", &name, pid, "global", "s.sh"]);
                }
            });
        }
    });
}

/// 8 concurrent processes × 50 registrations each leave exactly 400 records.
#[test]
fn eight_writers_lose_nothing() {
    let root = Root::new();
    let child = root.sleeper();
    register_concurrently(&root, child.id(), 8, 50);
    let names = global_names(&root);
    assert_eq!(names.len(), 400);
    for w in 0..8 {
        for i in 0..50 {
            assert!(names.contains(&format!("svc-{w}-{i}")));
        }
    }
}

/// 32 concurrent writers: every one succeeds and every write is there.
#[test]
fn thirty_two_writers_lose_nothing() {
    let root = Root::new();
    let child = root.sleeper();
    register_concurrently(&root, child.id(), 32, 8);
    assert_eq!(global_names(&root).len(), 32 * 8);
}

/// A tiny deterministic generator, seeded from the clock and printed, so a
/// failing interleaving can be replayed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

/// Writers SIGKILLed at random moments, many times over: the registry always
/// parses, and every write whose `psm register` exited 0 is in it.
#[test]
fn writers_killed_at_random_never_corrupt_or_lose_completed_writes() {
    let root = Root::new();
    let child = root.sleeper();
    let pid = child.id().to_string();
    // A larger file makes each save take longer, so kills land mid-write.
    register_concurrently(&root, child.id(), 4, 50);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}");
    let mut rng = Lcg(seed);
    let mut completed: Vec<String> = Vec::new();
    let mut killed = 0;
    for round in 0..40 {
        let mut running: Vec<(String, std::process::Child)> = (0..4)
            .map(|w| {
                let name = format!("k-{round}-{w}");
                let c = root
                    .cmd()
                    .args(["register", &name, &pid, "global", "s.sh"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                (name, c)
            })
            .collect();
        // Kill some writers after a random delay of up to 3 ms: the point is
        // to interrupt them at arbitrary moments, not to wait for anything.
        thread::sleep(Duration::from_micros(rng.next(3000))); // never a wait for an outcome
        for (_, c) in running.iter_mut() {
            if rng.next(2) == 0 {
                let _ = c.kill();
            }
        }
        for (name, mut c) in running {
            let status = c.wait().unwrap();
            if status.success() {
                completed.push(name);
            } else {
                killed += 1;
            }
        }
        // Parses after every round (Root::registry panics otherwise).
        let names = global_names(&root);
        for name in &completed {
            assert!(
                names.contains(name),
                "completed write {name} lost (seed {seed})"
            );
        }
    }
    assert!(killed > 0, "no writer was ever killed (seed {seed})");
}
