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

    /// The control socket: `<root>/.psm/coordinator.sock`, unless that path
    /// is too long for a unix socket; then [`fallback_socket`]. Every client
    /// derives it from the root alone, so all of them agree.
    pub fn control_socket(&self) -> PathBuf {
        socket_path(&self.root, nix::unistd::geteuid().as_raw())
    }

    /// Held by `psm up` and `psm down` while they run, so they never interleave.
    pub fn updown_lock(&self) -> PathBuf {
        self.runtime_dir().join("updown.lock")
    }

    /// The "stopped on purpose" mark `psm down` leaves: while it exists, the
    /// watchdog, `verify --fix` and `coordinator --respect-down` start nothing.
    pub fn down_mark(&self) -> PathBuf {
        self.runtime_dir().join("down")
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
    format!("{:016x}", fnv1a_bytes(bytes))
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

/// The longest socket path the kernel takes: `sun_path` is 108 bytes on
/// Linux and 104 on macOS, the terminating NUL included.
#[cfg(target_os = "macos")]
pub const SOCKET_PATH_MAX: usize = 103;
#[cfg(not(target_os = "macos"))]
pub const SOCKET_PATH_MAX: usize = 107;

/// Where the control socket of `root` lives for user `uid`: a pure function,
/// so the coordinator and every client compute the same path.
pub fn socket_path(root: &Path, uid: u32) -> PathBuf {
    let usual = root.join(".psm").join("coordinator.sock");
    if usual.as_os_str().len() <= SOCKET_PATH_MAX {
        usual
    } else {
        fallback_socket(root, uid)
    }
}

/// `/tmp/psm-<uid>/<hash of the root>.sock`: short whatever the root. Not
/// `$XDG_RUNTIME_DIR` or `$TMPDIR`: launchd, systemd timers, cron and shells
/// set them differently, and clients that disagree on the path cannot talk.
/// The directory must be the user's own, mode 0700 and not a symlink
/// ([`private_dir_problem`]); a 64-bit hash keeps two roots of one user apart.
pub fn fallback_socket(root: &Path, uid: u32) -> PathBuf {
    fallback_dir(uid).join(format!("{:016x}.sock", fnv1a(root)))
}

/// The per-user directory of fallback sockets.
pub fn fallback_dir(uid: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/psm-{uid}"))
}

/// FNV-1a (64 bit) of a path's bytes: stable across runs, builds and machines.
pub fn fnv1a(path: &Path) -> u64 {
    fnv1a_bytes(path.as_os_str().as_encoded_bytes())
}

/// FNV-1a (64 bit) of `bytes`.
fn fnv1a_bytes(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// Why `dir` may not hold a private socket, if it may not: it must be a real
/// directory (not a symlink), owned by `uid`, with no group or other access.
pub fn private_dir_problem(dir: &Path, uid: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) => return Some(format!("{} cannot be read: {e}", dir.display())),
    };
    let shown = dir.display();
    if meta.file_type().is_symlink() {
        Some(format!("{shown} is a symlink; remove it"))
    } else if !meta.is_dir() {
        Some(format!("{shown} is not a directory; remove it"))
    } else if meta.uid() != uid {
        Some(format!(
            "{shown} belongs to uid {}, not {uid}; remove it",
            meta.uid()
        ))
    } else if meta.mode() & 0o077 != 0 {
        Some(format!(
            "{shown} has mode {:o}; it must be 0700",
            meta.mode() & 0o7777
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod socket_tests {
    use super::*;

    #[test]
    fn the_socket_stays_under_the_root_while_it_fits() {
        let long = format!("/{}", "d".repeat(200));
        let edge = format!(
            "/{}",
            "e".repeat(SOCKET_PATH_MAX - "/.psm/coordinator.sock".len() - 1)
        );
        let table: [(&str, bool); 4] = [
            ("/home/u/coding", true),
            (&edge, true),
            (&format!("{edge}x"), false),
            (&long, false),
        ];
        for (root, under_root) in table {
            let path = socket_path(Path::new(root), 1000);
            assert!(path.as_os_str().len() <= SOCKET_PATH_MAX, "{root}");
            assert_eq!(path.starts_with(root), under_root, "{root}: {path:?}");
        }
    }

    #[test]
    fn the_fallback_is_per_user_per_root_and_stable() {
        let a = Path::new("/a").join("x".repeat(150));
        let b = Path::new("/b").join("x".repeat(150));
        assert_eq!(socket_path(&a, 1000), socket_path(&a, 1000));
        assert_ne!(socket_path(&a, 1000), socket_path(&b, 1000));
        assert_ne!(socket_path(&a, 1000), socket_path(&a, 1001));
        assert!(socket_path(&a, 1000).starts_with("/tmp/psm-1000"));
    }

    #[test]
    fn a_private_dir_is_the_users_own_0700_directory() {
        use std::os::unix::fs::PermissionsExt;
        let uid = nix::unistd::geteuid().as_raw();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(private_dir_problem(&dir, uid), None);
        assert!(private_dir_problem(&dir, uid + 1).is_some());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(private_dir_problem(&dir, uid).is_some());
        let link = tmp.path().join("l");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(private_dir_problem(&link, uid).unwrap().contains("symlink"));
        let file = tmp.path().join("f");
        std::fs::write(&file, "").unwrap();
        assert!(private_dir_problem(&file, uid).is_some());
    }
}
