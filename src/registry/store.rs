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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fs2::FileExt;

use super::model::Registry;
use crate::paths::Paths;
use crate::time::now_millis;

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

/// Handle to one root's registry. Cheap to clone; holds no lock between calls.
#[derive(Debug, Clone)]
pub struct Store {
    paths: Paths,
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

impl Store {
    pub fn new(paths: Paths) -> Self {
        Store { paths }
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Reads the registry under the shared lock. A missing file is an empty registry.
    pub fn read(&self) -> Result<Registry, StoreError> {
        let _guard = self.lock(false)?;
        self.load(false)
    }

    /// Reads under the shared lock if it can be had within `patience`; else
    /// reads the file without it. That is safe because every save is an
    /// atomic rename, so the file is always one whole version; the lock only
    /// orders readers after writers. For the watchdog, which must be able to
    /// judge a coordinator that hung (or was stopped) while holding the lock.
    pub fn read_within(&self, patience: Duration) -> Result<Registry, StoreError> {
        let guard = self.shared_within(patience)?;
        if guard.is_none() {
            tracing::warn!(
                lock = %self.paths.registry_lock().display(),
                "registry lock held too long; reading without it"
            );
        }
        let registry = self.load(false);
        drop(guard);
        registry
    }

    /// How long the shared lock took to obtain, or `None` if it could not be
    /// had within `patience` (a writer is stuck). Released before returning.
    pub fn shared_lock_wait(&self, patience: Duration) -> Result<Option<Duration>, StoreError> {
        let start = Instant::now();
        Ok(self.shared_within(patience)?.map(|_guard| start.elapsed()))
    }

    /// Polls for the shared lock for up to `patience`.
    fn shared_within(&self, patience: Duration) -> Result<Option<LockGuard>, StoreError> {
        let file = self.open_lock()?;
        let deadline = Instant::now() + patience;
        loop {
            if FileExt::try_lock_shared(&file).is_ok() {
                return Ok(Some(LockGuard(file)));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Applies `op` to the current registry under the exclusive lock and saves
    /// the result. If `op` fails, nothing is written and its error is returned.
    pub fn update<T, E>(&self, op: impl FnOnce(&mut Registry) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let _guard = self.lock(true)?;
        let mut registry = self.load(true)?;
        let out = op(&mut registry)?;
        registry.last_change = now_millis();
        self.save(&registry)?;
        Ok(out)
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
        let _guard = self.lock(true)?;
        let mut registry = self.load(true)?;
        let (out, changed) = op(&mut registry)?;
        if changed {
            registry.last_change = now_millis();
            self.save(&registry)?;
        }
        Ok(out)
    }

    fn check_root(&self) -> Result<(), StoreError> {
        let root = self.paths.root();
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(StoreError::RootNotDirectory(root.to_path_buf())),
            Err(_) => Err(StoreError::MissingRoot(root.to_path_buf())),
        }
    }

    /// Opens (creating, 0600) the lock file; a missing or non-directory
    /// root is named as such rather than as a lock error.
    fn open_lock(&self) -> Result<File, StoreError> {
        let path = self.paths.registry_lock();
        create_private(&path, false).map_err(|source| match self.check_root() {
            Err(e) => e,
            Ok(()) => StoreError::Lock { path, source },
        })
    }

    fn lock(&self, exclusive: bool) -> Result<LockGuard, StoreError> {
        let path = self.paths.registry_lock();
        let file = self.open_lock()?;
        // Called through fs2's trait explicitly: newer std has inherent
        // methods of the same names that would otherwise shadow it.
        let locked = if exclusive {
            FileExt::lock_exclusive(&file)
        } else {
            FileExt::lock_shared(&file)
        };
        locked.map_err(|source| StoreError::Lock { path, source })?;
        Ok(LockGuard(file))
    }

    /// Loads the file; the caller holds the lock. With `for_write`, a corrupt
    /// file is first copied aside so the evidence survives whatever the user
    /// does next.
    fn load(&self, for_write: bool) -> Result<Registry, StoreError> {
        let path = self.paths.registry();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Registry::default()),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            let kept = if for_write {
                self.keep_corrupt(&bytes)
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

    fn keep_corrupt(&self, bytes: &[u8]) -> String {
        let copy = self.paths.registry_corrupt_copy(now_millis());
        match write_private(&copy, bytes) {
            Ok(()) => format!("a copy was kept at {}", copy.display()),
            Err(e) => format!("the file was left as it is (copying it aside failed: {e})"),
        }
    }

    fn save(&self, registry: &Registry) -> Result<(), StoreError> {
        let path = self.paths.registry();
        let tmp = self.paths.registry_tmp();
        let write = || -> io::Result<()> {
            let mut json = serde_json::to_vec_pretty(registry)?;
            json.push(b'\n');
            write_private(&tmp, &json)?;
            fs::rename(&tmp, &path)?;
            sync_dir(self.paths.root())
        };
        write().map_err(|source| StoreError::Write { path, source })
    }
}

fn create_private(path: &Path, truncate: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(0o600)
        .open(path)
}

/// Writes `bytes` to `path` (0600) and fsyncs it.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = create_private(path, true)?;
    file.write_all(bytes)?;
    file.sync_data()
}

/// Makes the rename durable: without it a crash could bring back the old file.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::ServiceKey;
    use std::os::unix::fs::PermissionsExt;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(Paths::new(dir.path()));
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
        assert!(!store.paths.registry_tmp().exists());
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

    #[test]
    fn missing_root_is_named() {
        let store = Store::new(Paths::new("/nonexistent/psm-root"));
        let err = store.read().unwrap_err();
        assert!(matches!(err, StoreError::MissingRoot(_)), "{err}");
    }
}
