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
        self.logs_dir()
            .join(format!("{}.log", log_stem(&format!("{session}.{name}"))))
    }

    /// Log of a service instance run by the coordinator.
    pub fn service_log(&self, instance: &str) -> PathBuf {
        self.logs_dir().join(format!("{}.log", log_stem(instance)))
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

/// The longest log file stem: with `.log`, a rotation suffix (`.1` … up to
/// ten digits) and the temp name a rotation writes (`.log.1.tmp-` and 16 hex
/// digits), a file name stays under the 255 bytes file systems allow.
const MAX_LOG_STEM: usize = 200;

/// `label` if it fits [`MAX_LOG_STEM`] bytes, else its start and a hash of
/// the whole: the longest names the README allows (128-character service
/// name plus a 128-character project or session) would otherwise give a log
/// name no file system accepts, and that service could never start. The
/// hash keeps two long labels with the same start apart.
fn log_stem(label: &str) -> std::borrow::Cow<'_, str> {
    if label.len() <= MAX_LOG_STEM {
        return label.into();
    }
    let hash = short_hash(label.as_bytes());
    let mut cut = MAX_LOG_STEM - hash.len() - 1;
    while !label.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hash}", &label[..cut]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Short labels are kept; long ones are cut to a prefix plus a hash,
    /// within the limit, distinct for distinct labels, at a char boundary.
    #[test]
    fn log_stems_table() {
        let long_a = format!("{}@{}", "a".repeat(128), "p".repeat(128));
        let long_b = format!("{}@{}", "a".repeat(128), "q".repeat(128));
        let wide = "é".repeat(150);
        let cases: [(&str, bool); 5] = [
            ("web", true),
            ("web@proj", true),
            (&"x".repeat(MAX_LOG_STEM), true),
            (&long_a, false),
            (&wide, false),
        ];
        for (label, kept) in cases {
            let stem = log_stem(label);
            assert!(stem.len() <= MAX_LOG_STEM, "{label}");
            assert_eq!(stem == label, kept, "{label}");
            if !kept {
                assert!(label.starts_with(stem.rsplit_once('-').unwrap().0));
            }
        }
        assert_ne!(log_stem(&long_a), log_stem(&long_b));
        let paths = Paths::new("/r");
        let name = paths.service_log(&long_a);
        let file = name.file_name().unwrap().len();
        assert!(file + ".1.tmp-0123456789abcdef".len() <= 255, "{file}");
        let session = paths.session_service_log(&"s".repeat(128), &"n".repeat(128));
        assert!(session.file_name().unwrap().len() <= MAX_LOG_STEM + 4);
    }
}
