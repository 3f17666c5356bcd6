//! Every file psm touches under a root, derived in one place.
//!
//! The root is `--root DIR`, else `$PSM_ROOT`, else `$CODING_REPO` (the seed's
//! name for it), else the current directory. Nothing else in psm builds a path
//! from scratch, so tests that point `--root` at a temp dir are fully isolated.

use std::path::{Path, PathBuf};

/// The registry file name, kept from the seed so its readers keep working.
pub const REGISTRY_FILE: &str = ".live-process-registry.json";

/// Paths of one psm root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    root: PathBuf,
}

impl Paths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Paths { root: root.into() }
    }

    /// Resolves the root from an explicit flag or the environment, as documented
    /// in the README: flag, `$PSM_ROOT`, `$CODING_REPO`, current directory.
    pub fn resolve(flag: Option<&Path>) -> std::io::Result<Self> {
        let chosen = flag.map(Path::to_path_buf).or_else(|| {
            ["PSM_ROOT", "CODING_REPO"]
                .iter()
                .filter_map(std::env::var_os)
                .find(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        let root = match chosen {
            Some(p) if p.is_absolute() => p,
            Some(p) => std::env::current_dir()?.join(p),
            None => std::env::current_dir()?,
        };
        // One spelling per root: services carry it in PSM_ROOT, and a new
        // coordinator recognises them by it. A root that does not exist is
        // kept as given, so the error can name it.
        Ok(Paths::new(root.canonicalize().unwrap_or(root)))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn registry(&self) -> PathBuf {
        self.root.join(REGISTRY_FILE)
    }

    /// The file psm `flock`s; never deleted, so a lock can never be "stale".
    pub fn registry_lock(&self) -> PathBuf {
        self.root.join(format!("{REGISTRY_FILE}.lock"))
    }

    /// Where an unparseable registry is preserved before anything replaces
    /// it; `hash` ([`short_hash`] of its bytes) makes one copy per content.
    pub fn registry_corrupt_copy(&self, millis: u64, hash: &str) -> PathBuf {
        self.root
            .join(format!("{REGISTRY_FILE}.corrupt-{millis}-{hash}"))
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.root.join(".logs")
    }

    /// Log of a per-session service started by `psm session spawn`.
    pub fn session_service_log(&self, session: &str, name: &str) -> PathBuf {
        self.logs_dir().join(format!("{session}.{name}.log"))
    }

    /// Log of a service instance run by the coordinator.
    pub fn service_log(&self, instance: &str) -> PathBuf {
        self.logs_dir().join(format!("{instance}.log"))
    }

    pub fn coordinator_log(&self) -> PathBuf {
        self.logs_dir().join("coordinator.log")
    }

    pub fn watchdog_log(&self) -> PathBuf {
        self.logs_dir().join("system-watchdog.log")
    }

    /// Runtime files (socket, coordinator lock); created mode 0700.
    pub fn runtime_dir(&self) -> PathBuf {
        self.root.join(".psm")
    }

    pub fn coordinator_lock(&self) -> PathBuf {
        self.runtime_dir().join("coordinator.lock")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.runtime_dir().join("coordinator.sock")
    }

    pub fn default_config(&self) -> PathBuf {
        self.root.join("psm.toml")
    }
}

/// A short stable hash of `bytes` (FNV-1a, 64 bits, in hex): for names that
/// must be the same in every psm version (copies of a corrupt registry,
/// shortened log names), where `std`'s hasher promises no stability. Not a
/// defence against collisions chosen by an attacker: callers that must be
/// exact compare the bytes too.
pub fn short_hash(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}
