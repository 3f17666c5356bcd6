//! What a service costs: CPU (percent of one core) and resident memory,
//! summed over its process tree.
//!
//! One [`Snapshot`] reads the whole process table once (Linux: one
//! `/proc/<pid>/stat` per process, which carries parent, start time, CPU
//! time and RSS together; macOS: `proc_pidinfo` per pid). Every service's
//! tree is then a walk in memory, so the cost grows with the processes on
//! the machine, not with services × syscalls: `psm status` at 1,000
//! services stays within its budget (docs/benchmarks.md).
//!
//! Only processes proven to be the service's count: the walk starts from the
//! recorded leader only while its identity (pid + start time) matches, and
//! each step down accepts a child no older than its parent (a reused pid's
//! stranger is older than the parent it appears under). CPU is either the
//! rate between two snapshots ([`Snapshot::usage_since`], what `psm top`
//! shows) or, from one snapshot, each process's CPU time over its lifetime
//! ([`Snapshot::usage`], what a one-shot `psm status` shows, like `ps`).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::identity::Identity;

/// One process in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub ppid: i32,
    /// The same opaque start time as [`Identity::start_time`].
    pub start_time: u64,
    /// User + system CPU time consumed so far.
    pub cpu_ns: u64,
    /// How long the process has existed.
    pub age_ns: u64,
    /// Resident memory.
    pub rss: u64,
    pub zombie: bool,
}

/// What one service's tree costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// Percent of one core (a tree busy on two cores shows 200).
    pub cpu: f64,
    /// Resident bytes, summed over the tree.
    pub rss: u64,
    /// How many processes were counted.
    pub processes: usize,
}

/// The process table at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    taken: Instant,
    procs: HashMap<i32, ProcStat>,
    children: HashMap<i32, Vec<i32>>,
    leaders: HashSet<Identity>,
}

/// The most processes one tree walk counts: a fork bomb must not keep psm
/// walking forever.
const MAX_TREE: usize = 4096;

impl Snapshot {
    /// Reads the process table now.
    pub fn take() -> Snapshot {
        Snapshot::from_procs(Instant::now(), platform::read_all())
    }

    /// A snapshot of the given table, taken at `taken` (tests build these).
    pub fn from_procs(taken: Instant, procs: HashMap<i32, ProcStat>) -> Snapshot {
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for (&pid, p) in &procs {
            children.entry(p.ppid).or_default().push(pid);
        }
        Snapshot {
            taken,
            procs,
            children,
            leaders: HashSet::new(),
        }
    }

    /// Whether `id` ran, and was not a zombie, when the snapshot was taken:
    /// [`Identity::is_alive`] without reading the process again.
    pub fn is_alive(&self, id: Identity) -> bool {
        self.procs
            .get(&id.pid)
            .is_some_and(|p| p.start_time == id.start_time && !p.zombie)
    }

    /// Reads again each of `ids` the snapshot does not show alive, and adds
    /// those that now run: a snapshot taken beside (not after) a read of
    /// the registry may predate a process the registry names, and must not
    /// show it dead. A process added this way counts alone in its tree (its
    /// own children, if any, started after the snapshot too).
    pub fn include(&mut self, ids: impl IntoIterator<Item = Identity>) {
        let missing: Vec<i32> = ids
            .into_iter()
            .filter(|&id| !self.is_alive(id))
            .map(|id| id.pid)
            .collect();
        if missing.is_empty() {
            return;
        }
        for (pid, stat) in platform::read_pids(&missing) {
            if let Some(old) = self.procs.insert(pid, stat) {
                if let Some(siblings) = self.children.get_mut(&old.ppid) {
                    siblings.retain(|&c| c != pid);
                }
            }
            self.children.entry(stat.ppid).or_default().push(pid);
        }
    }

    /// How many processes the snapshot holds.
    pub fn processes(&self) -> usize {
        self.procs.len()
    }

    /// Names every service's leader: a walk does not descend into another
    /// service's tree (the coordinator's children are the services it
    /// runs), so each process counts once, for the service nearest to it.
    pub fn set_leaders(&mut self, leaders: impl IntoIterator<Item = Identity>) {
        self.leaders = leaders.into_iter().collect();
    }

    /// The live processes of `leader`'s tree (leader first), as identities;
    /// empty when the leader no longer runs as the recorded process.
    pub fn tree(&self, leader: Identity) -> Vec<Identity> {
        let Some(root) = self.procs.get(&leader.pid) else {
            return Vec::new();
        };
        if root.start_time != leader.start_time || root.zombie {
            return Vec::new();
        }
        let mut found = vec![leader];
        let mut frontier = vec![leader];
        while let Some(parent) = frontier.pop() {
            for &pid in self.children.get(&parent.pid).into_iter().flatten() {
                let p = &self.procs[&pid];
                // A child is never older than its parent: anything older
                // under this pid is a stranger that reused a number.
                if p.start_time < parent.start_time || found.len() >= MAX_TREE {
                    continue;
                }
                let child = Identity {
                    pid,
                    start_time: p.start_time,
                };
                if self.leaders.contains(&child) {
                    continue;
                }
                if !p.zombie {
                    found.push(child);
                }
                frontier.push(child);
            }
        }
        found
    }

    /// CPU over each process's lifetime (like `ps`'s `%CPU`) and RSS now.
    pub fn usage(&self, leader: Identity) -> Option<Usage> {
        self.sum(leader, |_, p| ratio(p.cpu_ns, p.age_ns))
    }

    /// CPU over the time since `earlier` (like `top`) and RSS now. A
    /// process `earlier` did not see counts the share of its CPU time that
    /// fits in the interval.
    pub fn usage_since(&self, earlier: &Snapshot, leader: Identity) -> Option<Usage> {
        let interval = self
            .taken
            .saturating_duration_since(earlier.taken)
            .as_nanos() as u64;
        if interval == 0 {
            return self.usage(leader);
        }
        self.sum(leader, |id, p| {
            let before = earlier
                .procs
                .get(&id.pid)
                .filter(|b| b.start_time == id.start_time);
            let spent = match before {
                Some(b) => p.cpu_ns.saturating_sub(b.cpu_ns),
                None if p.age_ns > interval => {
                    (p.cpu_ns as f64 * interval as f64 / p.age_ns as f64) as u64
                }
                None => p.cpu_ns,
            };
            ratio(spent, interval)
        })
    }

    fn sum(&self, leader: Identity, cpu: impl Fn(Identity, &ProcStat) -> f64) -> Option<Usage> {
        let tree = self.tree(leader);
        if tree.is_empty() {
            return None;
        }
        let mut usage = Usage {
            cpu: 0.0,
            rss: 0,
            processes: tree.len(),
        };
        for id in tree {
            let p = &self.procs[&id.pid];
            usage.cpu += cpu(id, p);
            usage.rss += p.rss;
        }
        Some(usage)
    }
}

/// `part / whole` in percent; 0 when there is no time to divide by.
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[cfg(target_os = "linux")]
mod platform {
    use std::collections::HashMap;
    use std::io::Read;

    use super::ProcStat;

    /// The given processes only (those that run).
    pub fn read_pids(pids: &[i32]) -> HashMap<i32, ProcStat> {
        read_some(pids, &units()).into_iter().collect()
    }

    fn units() -> Units {
        // SAFETY: sysconf only reads configuration values.
        let (tick, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        Units {
            tick_ns: 1_000_000_000 / tick.max(1) as u64,
            page: page.max(1) as u64,
            uptime_ns: uptime_ns(),
        }
    }

    pub fn read_all() -> HashMap<i32, ProcStat> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return HashMap::new();
        };
        let units = units();
        let pids: Vec<i32> = dir
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .collect();
        // Each read costs the kernel a few microseconds (most of a
        // snapshot's time), so large tables are read on every core.
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(pids.len() / MIN_PER_THREAD)
            .clamp(1, 8);
        let chunk = pids.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = pids
                .chunks(chunk)
                .map(|part| scope.spawn(|| read_some(part, &units)))
                .collect();
            workers
                .into_iter()
                // A reader thread only parses; it has nothing that panics.
                .flat_map(|w| w.join().unwrap_or_default())
                .collect()
        })
    }

    /// Below this many processes per thread, a thread costs more than it saves.
    const MIN_PER_THREAD: usize = 256;

    fn read_some(pids: &[i32], units: &Units) -> Vec<(i32, ProcStat)> {
        let mut buf = [0u8; 1024];
        let mut path = String::with_capacity(32);
        pids.iter()
            .filter_map(|&pid| {
                use std::fmt::Write;
                // One read into a stack buffer through a reused path, as
                // `ProcInfo::read` does: a stat line is a few hundred bytes,
                // and this runs once per process on the machine.
                path.clear();
                let _ = write!(path, "/proc/{pid}/stat");
                let n = std::fs::File::open(&path).ok()?.read(&mut buf).ok()?;
                Some((pid, parse_stat(&buf[..n], units)?))
            })
            .collect()
    }

    /// What turns `/proc` numbers into nanoseconds and bytes.
    pub struct Units {
        pub tick_ns: u64,
        pub page: u64,
        pub uptime_ns: u64,
    }

    fn uptime_ns() -> u64 {
        std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0, |secs| (secs * 1e9) as u64)
    }

    /// Parses `/proc/<pid>/stat`; fields are counted from the last `)`,
    /// because the command name may hold spaces and parentheses.
    pub fn parse_stat(stat: &[u8], units: &Units) -> Option<ProcStat> {
        let close = stat.iter().rposition(|&b| b == b')')?;
        let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
        // One pass, no allocation: field N (1-based) is the (N - 3)th after
        // the name, since the name is field 2.
        let mut fields = rest.split_ascii_whitespace();
        let state = fields.next()?; // 3
        let ppid = fields.next()?.parse().ok()?; // 4
        let mut fields = fields.skip(14 - 5);
        let utime: u64 = fields.next()?.parse().ok()?; // 14
        let stime: u64 = fields.next()?.parse().ok()?; // 15
        let mut fields = fields.skip(22 - 16);
        let start_time: u64 = fields.next()?.parse().ok()?; // 22
        let rss: u64 = fields.nth(24 - 23)?.parse().ok()?; // 24
        Some(ProcStat {
            ppid,
            start_time,
            cpu_ns: (utime + stime) * units.tick_ns,
            age_ns: units.uptime_ns.saturating_sub(start_time * units.tick_ns),
            rss: rss * units.page,
            zombie: state == "Z" || state == "X",
        })
    }
}

#[cfg(target_os = "macos")]
mod platform {
    use std::collections::HashMap;

    use super::ProcStat;
    use crate::process::macos::{self, pidinfo};

    pub fn read_all() -> HashMap<i32, ProcStat> {
        read_pids(&macos::all_pids())
    }

    /// The given processes only (those that run).
    pub fn read_pids(pids: &[i32]) -> HashMap<i32, ProcStat> {
        let (numer, denom) = timebase();
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        pids.iter()
            .filter_map(|&pid| {
                let bsd = macos::bsd_info(pid)?;
                let start_time = macos::start_time(&bsd);
                // Another user's task info is not readable: it costs nothing
                // that psm could attribute anyway.
                let task: Option<libc::proc_taskinfo> = pidinfo(pid, libc::PROC_PIDTASKINFO);
                let (cpu, rss) = task.map_or((0, 0), |t| {
                    (
                        (t.pti_total_user + t.pti_total_system) * numer / denom,
                        t.pti_resident_size,
                    )
                });
                Some((
                    pid,
                    ProcStat {
                        ppid: bsd.pbi_ppid as i32,
                        start_time,
                        cpu_ns: cpu,
                        age_ns: now_us.saturating_sub(start_time) * 1000,
                        rss,
                        zombie: bsd.pbi_status == libc::SZOMB,
                    },
                ))
            })
            .collect()
    }

    /// Task times are in Mach absolute time units (nanoseconds on Intel,
    /// ticks of a slower clock on Apple silicon): this many ns per `denom`
    /// units, as (numer, denom). libc marks its Mach bindings deprecated in
    /// favour of the `mach2` crate; for one call a dependency does not earn
    /// its place.
    #[allow(deprecated)]
    fn timebase() -> (u64, u64) {
        let mut base = libc::mach_timebase_info { numer: 0, denom: 0 };
        // SAFETY: fills in the struct it is given.
        unsafe { libc::mach_timebase_info(&mut base) };
        if base.denom == 0 {
            (1, 1)
        } else {
            (base.numer as u64, base.denom as u64)
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod platform {
    pub fn read_all() -> std::collections::HashMap<i32, super::ProcStat> {
        std::collections::HashMap::new()
    }

    pub fn read_pids(_: &[i32]) -> std::collections::HashMap<i32, super::ProcStat> {
        std::collections::HashMap::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SEC: u64 = 1_000_000_000;

    fn proc(ppid: i32, start_time: u64, cpu_ns: u64, rss: u64) -> ProcStat {
        ProcStat {
            ppid,
            start_time,
            cpu_ns,
            age_ns: 10 * SEC,
            rss,
            zombie: false,
        }
    }

    fn id(pid: i32, start_time: u64) -> Identity {
        Identity { pid, start_time }
    }

    /// A service (100) with a child (101), a grandchild (102), a zombie
    /// child (103), a stranger (104) older than the pid it claims as
    /// parent, and a child that leads a service of its own (105, with 106);
    /// 200 is another service.
    fn table(at: Instant, cpu: u64) -> Snapshot {
        let mut zombie = proc(100, 60, 0, 0);
        zombie.zombie = true;
        let mut t = Snapshot::from_procs(
            at,
            HashMap::from([
                (1, proc(0, 1, 0, 0)),
                (100, proc(1, 50, cpu, 1000)),
                (101, proc(100, 55, cpu, 200)),
                (102, proc(101, 56, 0, 30)),
                (103, zombie),
                (104, proc(100, 40, 9 * SEC, 5000)),
                (105, proc(100, 57, 9 * SEC, 5000)),
                (106, proc(105, 58, 9 * SEC, 5000)),
                (200, proc(1, 70, 0, 7)),
            ]),
        );
        t.set_leaders([id(100, 50), id(105, 57), id(200, 70)]);
        t
    }

    #[test]
    fn trees_count_only_proven_members() {
        let t = table(Instant::now(), 0);
        let pids = |leader| -> Vec<i32> {
            let mut p: Vec<i32> = t.tree(leader).iter().map(|i| i.pid).collect();
            p.sort();
            p
        };
        let cases = [
            (
                "the tree, without zombie or stranger",
                id(100, 50),
                vec![100, 101, 102],
            ),
            ("a leaf", id(200, 70), vec![200]),
            ("a service under another", id(105, 57), vec![105, 106]),
            ("a reused leader pid", id(100, 49), vec![]),
            ("a gone leader", id(300, 1), vec![]),
            ("a zombie leader", id(103, 60), vec![]),
        ];
        for (what, leader, want) in cases {
            assert_eq!(pids(leader), want, "{what}");
            assert_eq!(t.is_alive(leader), !want.is_empty(), "{what}");
        }
    }

    #[test]
    fn usage_sums_rss_and_lifetime_cpu() {
        let t = table(Instant::now(), 5 * SEC);
        let u = t.usage(id(100, 50)).unwrap();
        assert_eq!(u.rss, 1230);
        assert_eq!(u.processes, 3);
        // Two processes, each 5 s of CPU over 10 s of life: 50% + 50%.
        assert!((u.cpu - 100.0).abs() < 1e-9, "{}", u.cpu);
        assert_eq!(t.usage(id(100, 49)), None);
    }

    #[test]
    fn usage_since_is_the_rate_over_the_interval() {
        let start = Instant::now();
        let before = table(start, SEC);
        let after = table(start + Duration::from_secs(2), 2 * SEC);
        // 100 and 101 each spent 1 s of CPU in 2 s: 50% + 50%.
        let u = after.usage_since(&before, id(100, 50)).unwrap();
        assert!((u.cpu - 100.0).abs() < 1e-6, "{}", u.cpu);
        // The same instant twice falls back to the lifetime figure.
        let same = after.usage_since(&after, id(100, 50)).unwrap();
        assert_eq!(same, after.usage(id(100, 50)).unwrap());
    }

    #[test]
    fn a_process_new_since_the_first_sample_counts_its_share() {
        let start = Instant::now();
        let before = Snapshot::from_procs(start, HashMap::from([(100, proc(1, 50, 0, 0))]));
        let mut young = proc(100, 55, SEC / 2, 0);
        young.age_ns = SEC / 2;
        let mut old = proc(100, 51, 4 * SEC, 0);
        old.age_ns = 8 * SEC; // missed by the first sample; 1/4 of it is in the interval
        let after = Snapshot::from_procs(
            start + Duration::from_secs(2),
            HashMap::from([(100, proc(1, 50, 0, 0)), (101, young), (102, old)]),
        );
        let u = after.usage_since(&before, id(100, 50)).unwrap();
        // 0.5 s (all of the young one's) + 1 s (2/8 of 4 s) over 2 s.
        assert!((u.cpu - 75.0).abs() < 1e-6, "{}", u.cpu);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn parses_stat_fields() {
        let units = platform::Units {
            tick_ns: SEC / 100,
            page: 4096,
            uptime_ns: 1000 * SEC,
        };
        let line =
            b"4242 (a) b (c)) S 7 4240 4240 0 -1 0 0 0 0 0 150 50 0 0 20 0 1 0 90000 1000 25";
        let p = platform::parse_stat(line, &units).unwrap();
        assert_eq!(p.ppid, 7);
        assert_eq!(p.start_time, 90000);
        assert_eq!(p.cpu_ns, 2 * SEC);
        assert_eq!(p.age_ns, 100 * SEC);
        assert_eq!(p.rss, 25 * 4096);
        assert!(!p.zombie);
    }

    #[cfg(any(target_os = "linux", target_os = "macos"))]
    #[test]
    fn a_busy_child_shows_cpu_and_memory() {
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("while :; do :; done")
            .spawn()
            .unwrap();
        let leader = Identity::of(child.id() as i32).unwrap();
        let first = Snapshot::take();
        // Polls until the spinning child has been charged CPU time (a tick
        // or more on a loaded machine), within a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let u = loop {
            std::thread::sleep(Duration::from_millis(50));
            let u = Snapshot::take().usage_since(&first, leader);
            if u.is_none_or(|u| u.cpu > 0.0) || std::time::Instant::now() > deadline {
                break u;
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        let u = u.expect("the spinning child is in the snapshot");
        assert!(u.rss > 0);
        assert!(u.cpu > 0.0, "{u:?}");
    }

    /// A snapshot that missed a running process (started after it was
    /// taken) shows it alive once asked to include it; a stranger on a
    /// recorded pid (other start time) and a pid nobody holds stay dead.
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    #[test]
    fn include_adds_what_runs_and_nothing_else() {
        let me = Identity::of(std::process::id() as i32).expect("own identity");
        let stranger = Identity {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        let nobody = Identity {
            pid: i32::MAX,
            start_time: 1,
        };
        let mut snapshot = Snapshot::from_procs(Instant::now(), HashMap::new());
        assert!(!snapshot.is_alive(me));
        snapshot.include([stranger, nobody]);
        // Reading the stranger's pid found the process that holds it: us.
        // (identity, alive after include, processes in its tree)
        let table = [(me, true, 1), (stranger, false, 0), (nobody, false, 0)];
        for (id, alive, tree) in table {
            assert_eq!(snapshot.is_alive(id), alive, "{id:?}");
            assert_eq!(snapshot.tree(id).len(), tree, "{id:?}");
        }
    }
}
