//! The registry on disk: locked reads, locked read-modify-write, atomic saves.
//!
//! Invariants:
//! - every change happens under an exclusive `flock` of the lock file, and
//!   re-reads the file under that lock, so no update made by another process
//!   is ever lost; reads take the shared lock;
//! - a save writes a temp file in the same directory, fsyncs it, renames it
//!   over the registry and fsyncs the directory: a reader (or a crash) sees
//!   the old file or the new one, never half of one;
//! - a file that does not parse is never treated as empty: it is copied aside
//!   and the operation fails, naming the file and the parse error;
//! - files are created mode 0600.

use std::fs::{self, File};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fs2::FileExt;

use super::model::Registry;
use crate::fsx::{self, Dir, How};
use crate::paths::{Paths, REGISTRY_FILE};
use crate::time::now_millis;

/// How long one holder may keep the registry lock before a waiting command
/// gives up and names it: a healthy holder keeps it for milliseconds. While
/// the lock changes hands, a command keeps waiting (up to 12 deadlines).
pub const LOCK_DEADLINE: Duration = Duration::from_secs(5);

/// Overrides [`LOCK_DEADLINE`] (humantime, e.g. `500ms`), for tests and for
/// users on very slow disks.
pub const LOCK_DEADLINE_ENV: &str = "PSM_LOCK_TIMEOUT";

/// The largest registry psm reads: thousands of services are a few MB; a
/// file beyond this is not a registry psm wrote.
const MAX_REGISTRY_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "root {0} does not exist; create it or point --root (or PSM_ROOT) at an existing directory"
    )]
    MissingRoot(PathBuf),
    #[error("root {0} is not a directory; point --root (or PSM_ROOT) at a directory")]
    RootNotDirectory(PathBuf),
    #[error("cannot open lock file {path} (is the root writable?)")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is the lock directory of the JavaScript PSM (proper-lockfile), not psm's lock file; if no `process-state-manager` node process runs, remove it (`rmdir {path}`, or `psm verify --fix` once it is 10s old) and retry"
    )]
    SeedLock { path: PathBuf },
    #[error(
        "the registry lock {path} is held by {holder} for more than {}s; if that process is stopped or hung, resume (`kill -CONT`) or end it, then retry",
        waited.as_secs_f32()
    )]
    LockTimeout {
        path: PathBuf,
        holder: Holder,
        waited: Duration,
    },
    /// A link, FIFO, device or other non-file where psm expects its own
    /// file: the message says which and what to do.
    #[error(transparent)]
    Refused(io::Error),
    #[error("reading registry {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "registry {path} is corrupt ({detail}); {kept}; repair it or move it aside, then retry"
    )]
    Corrupt {
        path: PathBuf,
        detail: String,
        kept: String,
    },
    #[error("writing registry {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Who holds the registry lock, as far as the system tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder(pub Vec<i32>);

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [] => f.write_str("another process"),
            [pid] => write!(f, "pid {pid}"),
            pids => {
                let list: Vec<String> = pids.iter().map(i32::to_string).collect();
                write!(f, "pids {}", list.join(", "))
            }
        }
    }
}

/// How a [`Store`] waits for the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Commands: give up after the deadline, naming the holder.
    Deadline(Duration),
    /// The daemon's registry writer, on its own thread: a change it drops
    /// would be lost, so it keeps waiting, warning once per deadline.
    Patient(Duration),
}

/// Handle to one root's registry. Cheap to clone; holds no lock between calls.
#[derive(Debug, Clone)]
pub struct Store {
    paths: Paths,
    wait: Wait,
    /// The daemon's writer only: what it wrote last (see [`Written`]).
    written: Option<Arc<Mutex<Option<Written>>>>,
}

/// The registry as this store last saved it, with the exact bytes saved. A
/// load under the lock that reads the same bytes takes this instead of
/// parsing them again: the daemon's writer rewrites the whole file every
/// health round, and the parse was half of that write's cost. Comparing the
/// bytes (not the inode or the time stamps, which a writer outside the lock
/// or a reused inode can leave equal) makes a change by anyone else always
/// a miss; parsing what we serialised gives back what we serialised (the
/// round trip is tested), so a hit is exactly what a parse would return.
struct Written {
    bytes: Vec<u8>,
    registry: Registry,
}

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Written({} bytes)", self.bytes.len())
    }
}

/// Lock held for the duration of one operation; released on drop (and by
/// the kernel if the process dies, which is why a lock can never go stale).
struct LockGuard(File);

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Closing the file would release it too; unlocking first just makes
        // the release explicit and immediate.
        let _ = FileExt::unlock(&self.0);
    }
}

/// The lock deadline: `$PSM_LOCK_TIMEOUT` if it parses, else [`LOCK_DEADLINE`].
fn lock_deadline() -> Duration {
    std::env::var(LOCK_DEADLINE_ENV)
        .ok()
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .unwrap_or(LOCK_DEADLINE)
}

impl Store {
    /// A store for commands: lock waits end at the deadline with an error.
    pub fn new(paths: Paths) -> Self {
        Store {
            paths,
            wait: Wait::Deadline(lock_deadline()),
            written: None,
        }
    }

    /// A store for the daemon's single writer: it waits for the lock as long
    /// as it takes (logging who holds it), because giving up would drop
    /// changes nobody else will make.
    pub fn patient(paths: Paths) -> Self {
        Store {
            paths,
            wait: Wait::Patient(lock_deadline()),
            written: Some(Arc::default()),
        }
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Reads the registry under the shared lock. A missing file is an empty registry.
    pub fn read(&self) -> Result<Registry, StoreError> {
        let (root, _guard) = self.lock(false)?;
        self.load(&root, false, false)
    }

    /// Reads under the shared lock if it can be had within `patience`; else
    /// reads the file without it. That is safe because every save is an
    /// atomic rename, so the file is always one whole version; the lock only
    /// orders readers after writers. For the watchdog, which must be able to
    /// judge a coordinator that hung (or was stopped) while holding the lock.
    pub fn read_within(&self, patience: Duration) -> Result<Registry, StoreError> {
        let (root, file) = self.open_lock()?;
        let guard = try_lock_until(file, false, Instant::now() + patience).ok();
        if guard.is_none() {
            tracing::warn!(
                lock = %self.paths.registry_lock().display(),
                "registry lock held too long; reading without it"
            );
        }
        let registry = self.load(&root, false, false);
        drop(guard);
        registry
    }

    /// How long the shared lock took to obtain, or `None` if it could not be
    /// had within `patience` (a writer is stuck). Released before returning.
    pub fn shared_lock_wait(&self, patience: Duration) -> Result<Option<Duration>, StoreError> {
        let start = Instant::now();
        let (_root, file) = self.open_lock()?;
        Ok(try_lock_until(file, false, start + patience)
            .ok()
            .map(|_guard| start.elapsed()))
    }

    /// Whether the registry can be used at all: reads it, and fails only
    /// when it never could be by waiting — a link, FIFO or other non-file,
    /// the seed's lock directory, a missing root. A corrupt registry passes:
    /// a coordinator keeps its services running on one (its writes fail
    /// until the file is repaired), and a lock held too long passes too: the
    /// daemon's writer waits it out.
    pub fn check_usable(&self) -> Result<(), StoreError> {
        match self.read() {
            Ok(_) | Err(StoreError::Corrupt { .. } | StoreError::LockTimeout { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes the temp files of saves a crash (or SIGKILL) interrupted.
    /// Under the exclusive lock no save is in flight, so every temp file
    /// there is a leftover. For start-up: it lists the root, which may be a
    /// large repository, so not on every write. Returns how many it removed.
    pub fn remove_leftover_temps(&self) -> Result<usize, StoreError> {
        let (root, _guard) = self.lock(true)?;
        let prefix = format!("{REGISTRY_FILE}.");
        let names = root.names().unwrap_or_default();
        Ok(names
            .iter()
            .filter(|n| {
                let n = n.to_string_lossy();
                n.strip_prefix(&prefix)
                    .is_some_and(|rest| rest.contains(".tmp-") || rest.starts_with("tmp-"))
            })
            .filter(|n| root.remove(n).unwrap_or(false))
            .count())
    }

    /// Waits for the shared lock as a read would and releases it: for
    /// commands that ask the coordinator to change a record, so that a stuck
    /// lock holder fails them at once, with its pid, instead of leaving the
    /// coordinator's write (and so the answer) waiting.
    pub fn check_lock(&self) -> Result<(), StoreError> {
        self.lock(false).map(drop)
    }

    /// Applies `op` to the current registry under the exclusive lock and saves
    /// the result. If `op` fails, nothing is written and its error is returned.
    pub fn update<T, E>(&self, op: impl FnOnce(&mut Registry) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        self.update_if(|registry| op(registry).map(|out| (out, true)))
    }

    /// Like `update`, but `op` says whether it changed anything; an unchanged
    /// registry is not rewritten (cheap no-op sweeps and heartbeats that found
    /// nothing to do).
    pub fn update_if<T, E>(
        &self,
        op: impl FnOnce(&mut Registry) -> Result<(T, bool), E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let (root, _guard) = self.lock(true)?;
        // Taken out of the cache (no copy): a failed or unchanged `op` may
        // have changed it half-way, so only a saved registry goes back.
        let mut registry = self.load(&root, true, true)?;
        let (out, changed) = op(&mut registry)?;
        if changed {
            registry.last_change = now_millis();
            let bytes = self.save(&root, &registry)?;
            self.remember(bytes, registry);
        }
        Ok(out)
    }

    /// What a load that reads `bytes` would parse, if this store saved them
    /// last: taken out of the cache with `take`, else copied.
    fn recall(&self, bytes: &[u8], take: bool) -> Option<Registry> {
        let mut written = self.written.as_ref()?.lock().ok()?;
        if written.as_ref()?.bytes != bytes {
            return None;
        }
        if take {
            written.take().map(|w| w.registry)
        } else {
            written.as_ref().map(|w| w.registry.clone())
        }
    }

    fn remember(&self, bytes: Vec<u8>, registry: Registry) {
        if let Some(Ok(mut written)) = self.written.as_ref().map(|w| w.lock()) {
            *written = Some(Written { bytes, registry });
        }
    }

    fn check_root(&self) -> Result<(), StoreError> {
        let root = self.paths.root();
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(StoreError::RootNotDirectory(root.to_path_buf())),
            Err(_) => Err(StoreError::MissingRoot(root.to_path_buf())),
        }
    }

    /// Opens the root and in it (creating, 0600) the lock file. A missing or
    /// non-directory root is named as such rather than as a lock error; the
    /// seed's lock directory is recognised; a link or other non-file is
    /// refused without touching what it points to.
    fn open_lock(&self) -> Result<(Dir, File), StoreError> {
        let path = self.paths.registry_lock();
        let root = Dir::open(self.paths.root()).map_err(|source| match self.check_root() {
            Err(e) => e,
            Ok(()) => StoreError::Lock {
                path: path.clone(),
                source,
            },
        })?;
        let name = lock_name();
        match root.open_file(&name, How::ReadWrite) {
            Ok(file) => Ok((root, file)),
            Err(_)
                if root.file_type(name.as_ref()).ok().flatten()
                    == Some(rustix::fs::FileType::Directory) =>
            {
                Err(StoreError::SeedLock { path })
            }
            Err(e) if fsx::is_refusal(&e) => Err(StoreError::Refused(e)),
            Err(source) => Err(StoreError::Lock { path, source }),
        }
    }

    fn lock(&self, exclusive: bool) -> Result<(Dir, LockGuard), StoreError> {
        let path = self.paths.registry_lock();
        let (root, mut file) = self.open_lock()?;
        let started = Instant::now();
        let (deadline, patient) = match self.wait {
            Wait::Deadline(d) => (d, false),
            Wait::Patient(d) => (d, true),
        };
        // Who held the lock when this window of waiting began. Under heavy
        // contention (dozens of writers on a loaded machine) a command may
        // wait longer than the deadline while the lock changes hands many
        // times; only one holder keeping it for a whole window is a hang.
        let mut window_holders = holders(&file);
        loop {
            match try_lock_until(file, exclusive, Instant::now() + deadline) {
                Ok(guard) => return Ok((root, guard)),
                Err(TryLock::Failed(source)) => return Err(StoreError::Lock { path, source }),
                Err(TryLock::TimedOut(back)) => {
                    let now_holders = holders(&back);
                    let moving = !now_holders.is_empty()
                        && now_holders != window_holders
                        && started.elapsed() < deadline * MAX_WINDOWS;
                    window_holders = now_holders.clone();
                    let holder = Holder(now_holders);
                    if moving {
                        file = back;
                        continue;
                    }
                    if !patient {
                        return Err(StoreError::LockTimeout {
                            path,
                            holder,
                            waited: started.elapsed(),
                        });
                    }
                    tracing::warn!(
                        lock = %path.display(), %holder, waited_ms = started.elapsed().as_millis() as u64,
                        "registry lock still held; waiting"
                    );
                    file = back;
                }
            }
        }
    }

    /// Loads the file; the caller holds the lock. With `for_write`, a corrupt
    /// file is first copied aside so the evidence survives whatever the user
    /// does next.
    /// With `take`, a registry this store saved last is taken out of its
    /// cache rather than copied (the caller saves what it makes of it).
    fn load(&self, root: &Dir, for_write: bool, take: bool) -> Result<Registry, StoreError> {
        let path = self.paths.registry();
        let bytes = match root.read(REGISTRY_FILE, MAX_REGISTRY_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Registry::default()),
            Err(e) if fsx::is_refusal(&e) => return Err(StoreError::Refused(e)),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        if let Some(registry) = self.recall(&bytes, take) {
            return Ok(registry);
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            let kept = if for_write {
                self.keep_corrupt(root, &bytes)
            } else {
                "the file was left as it is".to_string()
            };
            StoreError::Corrupt {
                path,
                // serde echoes wrong-typed values whole; the message stays short.
                detail: crate::input::shown(&e.to_string()),
                kept,
            }
        })
    }

    /// Copies a corrupt registry aside, once per distinct content: a daemon
    /// that retries every round must not fill the disk with copies of the
    /// same bytes. The name carries a hash of the content; a copy with the
    /// same hash and the same bytes is the same evidence.
    fn keep_corrupt(&self, root: &Dir, bytes: &[u8]) -> String {
        let hash = crate::paths::short_hash(bytes);
        let prefix = format!("{REGISTRY_FILE}.corrupt-");
        let suffix = format!("-{hash}");
        let existing = root.names().unwrap_or_default().into_iter().find(|n| {
            let n = n.to_string_lossy();
            n.starts_with(&prefix)
                && n.ends_with(&suffix)
                && root.read(n.as_ref(), bytes.len() as u64).ok().as_deref() == Some(bytes)
        });
        if let Some(name) = existing {
            return format!(
                "a copy was already kept at {}",
                root.path().join(name).display()
            );
        }
        let copy = self.paths.registry_corrupt_copy(now_millis(), &hash);
        let name = copy.file_name().unwrap_or_default();
        match root.replace(name, bytes) {
            Ok(()) => format!("a copy was kept at {}", copy.display()),
            Err(e) => format!("the file was left as it is (copying it aside failed: {e})"),
        }
    }

    /// Saves `registry`; returns the bytes now in the file.
    fn save(&self, root: &Dir, registry: &Registry) -> Result<Vec<u8>, StoreError> {
        let path = self.paths.registry();
        let write = || -> io::Result<Vec<u8>> {
            let mut json = serde_json::to_vec_pretty(registry)?;
            json.push(b'\n');
            // A temp file with an unpredictable name (O_EXCL), renamed over
            // the registry: a planted link is replaced, never written through.
            root.replace(REGISTRY_FILE, &json)?;
            Ok(json)
        };
        write().map_err(|source| StoreError::Write { path, source })
    }
}

/// The lock file's name in the root.
fn lock_name() -> std::ffi::OsString {
    format!("{REGISTRY_FILE}.lock").into()
}

enum TryLock {
    Failed(io::Error),
    /// The file comes back so the caller can keep waiting on it.
    TimedOut(File),
}

/// How many deadlines a command waits at most while the lock keeps
/// changing hands (see `Store::lock`).
const MAX_WINDOWS: u32 = 12;

/// Polls for the lock until `deadline`. flock has no timeout of its own;
/// polling (1 ms doubling to 20 ms) keeps a quick hand-over quick.
fn try_lock_until(file: File, exclusive: bool, deadline: Instant) -> Result<LockGuard, TryLock> {
    let mut pause = Duration::from_millis(1);
    loop {
        // Called through fs2's trait explicitly: newer std has inherent
        // methods of the same names that would otherwise shadow it.
        let tried = if exclusive {
            FileExt::try_lock_exclusive(&file)
        } else {
            FileExt::try_lock_shared(&file)
        };
        match tried {
            Ok(()) => return Ok(LockGuard(file)),
            Err(e)
                if e.kind() != io::ErrorKind::WouldBlock
                    && e.raw_os_error() != Some(libc::EWOULDBLOCK) =>
            {
                return Err(TryLock::Failed(e))
            }
            Err(_) if Instant::now() >= deadline => return Err(TryLock::TimedOut(file)),
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
    }
}

/// The pids holding a lock on `file`, where the system tells (Linux:
/// `/proc/locks`); empty elsewhere.
pub fn holders(file: &File) -> Vec<i32> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let (Ok(meta), Ok(text)) = (file.metadata(), fs::read_to_string("/proc/locks")) else {
            return Vec::new();
        };
        let dev = meta.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        flock_holders(&text, major as u64, minor as u64, meta.ino())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        Vec::new()
    }
}

/// The pids in `/proc/locks` text that hold (not wait for) a FLOCK on the
/// file `major:minor:inode` (device numbers in hex, as the kernel prints them).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn flock_holders(text: &str, major: u64, minor: u64, inode: u64) -> Vec<i32> {
    let exact = format!("{major:02x}:{minor:02x}:{inode}");
    let same_inode = format!(":{inode}");
    let holders = |matches: &dyn Fn(&str) -> bool| {
        let mut pids: Vec<i32> = text
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // "1: FLOCK ADVISORY WRITE 123 fd:01:456 0 EOF"; waiters have
                // "->" after the number, so they do not match.
                match fields.as_slice() {
                    [_, "FLOCK", _, _, pid, file, ..] if matches(file) => pid.parse().ok(),
                    _ => None,
                }
            })
            .filter(|&pid: &i32| pid > 0)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    };
    let found = holders(&|f| f == exact);
    if !found.is_empty() {
        return found;
    }
    // On overlay file systems the lock sits on the underlying inode, whose
    // device differs from the one stat reports: fall back to the inode.
    holders(&|f| f.ends_with(&same_inode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::{Scope, ServiceKey, ServiceRecord};
    use std::os::unix::fs::PermissionsExt;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(Paths::new(dir.path()));
        (dir, store)
    }

    /// The daemon's writer: the one store that keeps what it wrote.
    fn patient_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::patient(Paths::new(dir.path()));
        (dir, store)
    }

    #[test]
    fn round_trip_and_private_modes() {
        let (_dir, store) = store();
        store
            .update(|reg| {
                reg.extra.insert("note".into(), "kept".into());
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let back = store.read().unwrap();
        assert_eq!(back.extra["note"], "kept");
        assert!(back.last_change > 0);
        for p in [store.paths.registry(), store.paths.registry_lock()] {
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let names: Vec<String> = fs::read_dir(store.paths.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains(".tmp")), "{names:?}");
    }

    /// What the daemon's writer keeps of its last save is what a parse of
    /// the file gives back: the seed's file and one with psm's own fields
    /// survive parse → save → parse unchanged, byte for byte.
    #[test]
    fn a_saved_registry_parses_back_to_itself() {
        let seed: Registry =
            serde_json::from_str(include_str!("../../tests/data/seed-registry.json")).unwrap();
        let (_dir, store) = patient_store();
        let mut with_ours = seed.clone();
        let me = crate::process::Identity {
            pid: 42,
            start_time: 123_456,
        };
        let mut record = ServiceRecord::new(&Scope::Global, "sleep 1", me, 1_760_000_000_000);
        record.pgid = Some(42);
        record
            .metadata
            .insert("ratio".into(), serde_json::json!(0.1 + 0.2));
        with_ours.insert(&ServiceKey::global("mine"), record);
        for registry in [seed, with_ours] {
            let bytes = store
                .save(&Dir::open(store.paths.root()).unwrap(), &registry)
                .unwrap();
            let back: Registry = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(back, registry);
            assert_eq!(
                serde_json::to_vec_pretty(&back).unwrap(),
                bytes[..bytes.len() - 1]
            );
        }
    }

    /// The writer's cache never hides a change made by anyone else: another
    /// store's locked write, and an edit in place that keeps the length
    /// (outside the lock, as a hand edit would be), are both read.
    #[test]
    fn the_writers_cache_sees_every_other_change() {
        let (_dir, writer) = patient_store();
        let other = Store::new(writer.paths.clone());
        let stamp = |store: &Store, name: &str| {
            store
                .update(|reg| {
                    reg.extra.insert(name.into(), "1".into());
                    Ok::<_, StoreError>(())
                })
                .unwrap()
        };
        stamp(&writer, "a");
        stamp(&other, "b");
        assert!(writer.read().unwrap().extra.contains_key("b"));
        stamp(&writer, "c");
        let reg = other.read().unwrap();
        assert!(
            ["a", "b", "c"].iter().all(|k| reg.extra.contains_key(*k)),
            "{reg:?}"
        );
        // Same length, other bytes: "c": "1" becomes "c": "2".
        let path = writer.paths.registry();
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace(r#""c": "1""#, r#""c": "2""#);
        fs::write(&path, text).unwrap();
        assert_eq!(writer.read().unwrap().extra["c"], "2");
        stamp(&writer, "d");
        assert_eq!(other.read().unwrap().extra["c"], "2");
    }

    /// An operation that fails half-way leaves the writer's next load with
    /// the file as it is, not with the half-changed registry.
    #[test]
    fn a_failed_operation_does_not_stay_in_the_writers_cache() {
        let (_dir, writer) = patient_store();
        writer
            .update(|reg| {
                reg.extra.insert("kept".into(), "1".into());
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let res: Result<(), String> = writer.update(|reg| {
            reg.extra.insert("half".into(), "1".into());
            Err("no".to_string())
        });
        assert!(res.is_err());
        let reg = writer.read().unwrap();
        assert!(
            reg.extra.contains_key("kept") && !reg.extra.contains_key("half"),
            "{reg:?}"
        );
        // Nor one that changed it but said it did not.
        writer
            .update_if(|reg| {
                reg.extra.insert("unsaid".into(), "1".into());
                Ok::<_, StoreError>(((), false))
            })
            .unwrap();
        writer
            .update(|reg| {
                reg.extra.insert("next".into(), "1".into());
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let reg = Store::new(writer.paths.clone()).read().unwrap();
        assert!(!reg.extra.contains_key("unsaid"), "{reg:?}");
    }

    #[test]
    fn failed_operation_writes_nothing() {
        let (_dir, store) = store();
        let res: Result<(), String> = store.update(|reg| {
            reg.remove(&ServiceKey::global("x"));
            Err("no".to_string())
        });
        assert!(res.is_err());
        assert!(!store.paths.registry().exists());
    }

    impl From<StoreError> for String {
        fn from(e: StoreError) -> String {
            e.to_string()
        }
    }

    #[test]
    fn corrupt_file_is_kept_and_never_overwritten() {
        let (_dir, store) = store();
        fs::write(store.paths.registry(), b"{ not json").unwrap();
        let err = store.update(|_| Ok::<_, StoreError>(())).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("is corrupt"), "{msg}");
        assert!(msg.contains("a copy was kept at"), "{msg}");
        assert_eq!(fs::read(store.paths.registry()).unwrap(), b"{ not json");
        let copies: Vec<_> = fs::read_dir(store.paths.root())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(copies.len(), 1);
        assert!(matches!(store.read(), Err(StoreError::Corrupt { .. })));
    }

    /// The same corrupt bytes are copied aside once however often a write
    /// is tried; different corrupt bytes get their own copy.
    #[test]
    fn one_corrupt_copy_per_distinct_content() {
        let (_dir, store) = store();
        let copies = || {
            fs::read_dir(store.paths.root())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
                .count()
        };
        fs::write(store.paths.registry(), b"{ not json").unwrap();
        for _ in 0..3 {
            let err = store.update(|_| Ok::<_, StoreError>(())).unwrap_err();
            assert!(err.to_string().contains("kept at"), "{err}");
        }
        assert_eq!(copies(), 1);
        fs::write(store.paths.registry(), b"{ other garbage").unwrap();
        store.update(|_| Ok::<_, StoreError>(())).unwrap_err();
        store.update(|_| Ok::<_, StoreError>(())).unwrap_err();
        assert_eq!(copies(), 2);
    }

    /// `/proc/locks` lines: holders of a FLOCK on the file, not waiters, not
    /// other files, not POSIX locks; the inode alone when devices differ.
    #[test]
    fn flock_holders_table() {
        let text = "1: FLOCK  ADVISORY  WRITE 4242 fd:01:777 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 5151 fd:01:777 0 EOF\n\
                    2: FLOCK  ADVISORY  READ 6161 fd:01:778 0 EOF\n\
                    3: POSIX  ADVISORY  WRITE 7171 fd:01:777 0 EOF\n\
                    4: FLOCK  ADVISORY  READ 8181 fd:01:777 0 EOF\n";
        let cases: &[(u64, u64, u64, &[i32])] = &[
            (0xfd, 1, 777, &[4242, 8181]),
            (0xfd, 1, 778, &[6161]),
            (0x08, 2, 777, &[4242, 8181]),
            (0xfd, 1, 779, &[]),
        ];
        for &(major, minor, inode, want) in cases {
            assert_eq!(flock_holders(text, major, minor, inode), want, "{inode}");
        }
    }

    /// Temp files of interrupted saves (of the registry or a corrupt copy)
    /// are removed at start-up; nothing else is.
    #[test]
    fn leftover_temps_are_removed() {
        let (_dir, store) = store();
        let root = store.paths.root().to_path_buf();
        for name in [
            ".live-process-registry.json.tmp-0123456789abcdef",
            ".live-process-registry.json.corrupt-1-ab.tmp-0123456789abcdef",
            ".live-process-registry.json",
            ".live-process-registry.json.corrupt-1-ab",
            "notes.tmp-1",
        ] {
            fs::write(root.join(name), b"{}").unwrap();
        }
        assert_eq!(store.remove_leftover_temps().unwrap(), 2);
        let mut left: Vec<String> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".live-process-registry.json",
                ".live-process-registry.json.corrupt-1-ab",
                "notes.tmp-1"
            ]
        );
    }

    /// A held lock ends a command's wait at the deadline, naming the holder.
    #[test]
    fn lock_wait_has_a_deadline_and_names_the_holder() {
        let (_dir, mut store) = store();
        store.wait = Wait::Deadline(Duration::from_millis(200));
        let (_root, file) = store.open_lock().unwrap();
        FileExt::lock_exclusive(&file).unwrap();
        let err = store.read().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::LockTimeout { .. }), "{msg}");
        #[cfg(target_os = "linux")]
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
    }

    #[test]
    fn missing_root_is_named() {
        let store = Store::new(Paths::new("/nonexistent/psm-root"));
        let err = store.read().unwrap_err();
        assert!(matches!(err, StoreError::MissingRoot(_)), "{err}");
    }
}
