//! Files under the root, opened so that psm never touches what is not its own.
//!
//! The root is whatever the user chose (a symlink included) and is opened
//! once, following links. Below it nothing is followed and nothing is
//! re-resolved:
//! - every file is opened relative to an open directory fd (`openat`), with
//!   `O_NOFOLLOW | O_CLOEXEC`, and `O_NONBLOCK` so that opening a FIFO can
//!   never hang; `fstat` then refuses anything that is not a regular file
//!   before a byte is read or written;
//! - psm's own directories (`.psm`, `.logs`) are opened the same way and
//!   refused unless they are real directories owned by the user; their mode
//!   is fixed through the fd, never through a path a link could redirect;
//! - a file that replaces another is written to a new temp file (`O_EXCL`,
//!   unpredictable name) and renamed over it: a planted link is replaced,
//!   never written through.
//!
//! A refusal is an `io::Error` whose message is the whole user-facing line:
//! the path, what is wrong, and how to fix it ([`is_refusal`] tells callers
//! not to wrap it in more words).

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// The largest config file psm reads: a config is kilobytes; beyond this it
/// is not one (and reading it whole would be the problem).
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// A file or directory psm will not use, and why (one user-facing line).
#[derive(Debug)]
pub struct Refusal(String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

fn refuse(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, Refusal(message))
}

/// True if `e` is a [`Refusal`]: its message already says everything.
pub fn is_refusal(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Refusal>())
}

/// How a file is opened. Every mode adds `O_NOFOLLOW | O_CLOEXEC`; modes that
/// create use mode 0600.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    Read,
    /// Read and write, created if missing, never truncated (lock files).
    ReadWrite,
    /// Append-only, created if missing (logs).
    Append,
    /// Read and write an existing file (a log being rotated).
    Update,
}

impl How {
    fn flags(self) -> OFlags {
        let base = OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        base | match self {
            How::Read => OFlags::RDONLY,
            How::ReadWrite => OFlags::RDWR | OFlags::CREATE,
            How::Append => OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE,
            How::Update => OFlags::RDWR,
        }
    }
}

/// What a file type is called in messages.
pub fn kind_name(ft: FileType) -> &'static str {
    match ft {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO (named pipe)",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "special file",
    }
}

fn symlink_refusal(path: &Path) -> io::Error {
    refuse(format!(
        "{} is a symbolic link; psm never follows links under its root: remove the link (`rm {}`) and retry",
        path.display(),
        path.display()
    ))
}

/// `path` is of type `ft` where a `wanted` (e.g. "regular file") belongs.
fn wrong_type(path: &Path, ft: FileType, wanted: &str) -> io::Error {
    if ft == FileType::Symlink {
        return symlink_refusal(path);
    }
    refuse(format!(
        "{} is a {}, not a {wanted}; move it out of the way and retry",
        path.display(),
        kind_name(ft)
    ))
}

fn not_regular(path: &Path, ft: FileType) -> io::Error {
    wrong_type(path, ft, "regular file")
}

fn not_directory(path: &Path, ft: FileType) -> io::Error {
    wrong_type(path, ft, "directory")
}

/// An open directory: the root, or one of psm's own directories in it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Opens `path` as a directory, following links: for the root (the user
    /// named it) and for directories psm does not own.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Opens psm's own directory `path` (`.psm`, `.logs`): its parent is
    /// opened as given, the directory itself without following a link.
    /// See [`Dir::own_subdir`].
    pub fn own(path: &Path, create: bool, private: bool) -> io::Result<Dir> {
        let (parent, name) = split(path)?;
        Dir::open(parent)?.own_subdir(name, create, private)
    }

    /// Opens the directory `name` in this one as psm's own: created 0700 if
    /// missing and `create`; refused unless it is a real directory owned by
    /// the effective user; with `private`, its mode is made 0700 (through
    /// the fd, so a link swapped in meanwhile cannot redirect the chmod).
    pub fn own_subdir(&self, name: &OsStr, create: bool, private: bool) -> io::Result<Dir> {
        let path = self.path.join(name);
        if create {
            match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if e == rustix::io::Errno::NOENT => return Err(e.into()),
            // ELOOP (a link) or ENOTDIR (anything else): say which it is.
            Err(e) => {
                return Err(match self.file_type(name)? {
                    Some(ft) if ft != FileType::Directory => not_directory(&path, ft),
                    _ => e.into(),
                })
            }
        };
        let stat = rustix::fs::fstat(&fd)?;
        let me = nix::unistd::geteuid().as_raw();
        if stat.st_uid != me {
            return Err(refuse(format!(
                "{} belongs to uid {}, not to you (uid {me}); psm keeps its files only in directories you own: remove it or use a root of your own",
                path.display(),
                stat.st_uid
            )));
        }
        if private && (stat.st_mode as u32) & 0o777 != 0o700 {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
        }
        Ok(Dir { fd, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The type of `name` itself (a link is a link), or `None` if missing.
    pub fn file_type(&self, name: &OsStr) -> io::Result<Option<FileType>> {
        Ok(self.stat(name)?.map(|s| FileType::from_raw_mode(s.st_mode)))
    }

    /// `lstat` of `name` in this directory, or `None` if it does not exist.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<rustix::fs::Stat>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => Ok(Some(s)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the regular file `name` in this directory. A link, a FIFO, a
    /// device, a socket or a directory is refused without blocking and
    /// without touching what a link points to. Missing (with `How::Read`) is
    /// `io::ErrorKind::NotFound`.
    pub fn open_file(&self, name: impl AsRef<OsStr>, how: How) -> io::Result<File> {
        let name = name.as_ref();
        let path = self.path.join(name);
        let fd = match rustix::fs::openat(&self.fd, name, how.flags(), Mode::from_raw_mode(0o600)) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Err(rustix::io::Errno::NOENT.into()),
            // ELOOP (a link), EISDIR, ENXIO (a FIFO without reader or a
            // socket), …: say what the name really is.
            Err(e) => {
                return Err(match self.file_type(name)? {
                    Some(ft) if ft != FileType::RegularFile => not_regular(&path, ft),
                    _ => e.into(),
                })
            }
        };
        let ft = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
        if ft != FileType::RegularFile {
            return Err(not_regular(&path, ft));
        }
        // O_NONBLOCK only guarded the open; a regular file's reads and
        // writes never block on it, but a service inherits this fd, so do
        // not leave a surprising flag on it.
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK)?;
        Ok(File::from(fd))
    }

    /// Reads the regular file `name`, refusing one larger than `limit` bytes.
    pub fn read(&self, name: impl AsRef<OsStr>, limit: u64) -> io::Result<Vec<u8>> {
        let name = name.as_ref();
        read_limited(
            self.open_file(name, How::Read)?,
            &self.path.join(name),
            limit,
        )
    }

    /// Creates a new file (mode 0600) with an unpredictable name starting
    /// with `prefix`; `O_EXCL` means nothing planted can be opened instead.
    pub fn create_temp(&self, prefix: &str) -> io::Result<(File, OsString)> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        loop {
            let name = OsString::from(format!("{prefix}{}", unpredictable()));
            match rustix::fs::openat(&self.fd, &name, flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => return Ok((File::from(fd), name)),
                // Someone guessed it (or a leftover): draw again.
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Replaces `name` with `bytes` atomically and durably: a temp file
    /// (`O_EXCL`) is written, synced, renamed over `name`, and the directory
    /// synced. A link at `name` is replaced, its target left alone.
    pub fn replace(&self, name: impl AsRef<OsStr>, bytes: &[u8]) -> io::Result<()> {
        let name = name.as_ref();
        let mut prefix = name.to_string_lossy().into_owned();
        prefix.push_str(".tmp-");
        let (mut file, tmp) = self.create_temp(&prefix)?;
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_data())
            .and_then(|()| self.rename(&tmp, name));
        if written.is_err() {
            let _ = self.remove(&tmp);
        }
        written?;
        self.sync()
    }

    /// Renames within this directory (links are moved, never followed).
    pub fn rename(&self, from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> io::Result<()> {
        rustix::fs::renameat(&self.fd, from.as_ref(), &self.fd, to.as_ref())?;
        Ok(())
    }

    /// Hard-links `from` to `to` within this directory (a link at `from`
    /// is linked as a link, never followed).
    pub fn link(&self, from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> io::Result<()> {
        rustix::fs::linkat(
            &self.fd,
            from.as_ref(),
            &self.fd,
            to.as_ref(),
            AtFlags::empty(),
        )?;
        Ok(())
    }

    /// Removes the file (or link) `name`; false if there was none.
    pub fn remove(&self, name: impl AsRef<OsStr>) -> io::Result<bool> {
        match rustix::fs::unlinkat(&self.fd, name.as_ref(), AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the empty directory `name` (`rmdir`: never its contents).
    pub fn remove_dir(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        rustix::fs::unlinkat(&self.fd, name.as_ref(), AtFlags::REMOVEDIR)?;
        Ok(())
    }

    /// Makes renames in this directory durable.
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::fsync(&self.fd)?;
        Ok(())
    }

    /// The names in this directory (not `.`/`..`), read through the fd.
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let fd = rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let dir = rustix::fs::Dir::read_from(&fd)?;
        let mut out = Vec::new();
        for entry in dir {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                use std::os::unix::ffi::OsStrExt;
                out.push(OsStr::from_bytes(name).to_os_string());
            }
        }
        Ok(out)
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Opens the regular file `path` without following a link in its last
/// component; its directory is opened as given.
pub fn open_file(path: &Path, how: How) -> io::Result<File> {
    let (parent, name) = split(path)?;
    Dir::open(parent)?.open_file(name, how)
}

/// Opens the regular file `path` that lives in one of psm's own
/// directories (`.psm/…`, `.logs/…`): the directory as [`Dir::own`] does
/// (`create`, `private`), then the file as [`Dir::open_file`] does.
pub fn open_in_own_dir(path: &Path, create: bool, private: bool, how: How) -> io::Result<File> {
    let (dir, name) = split(path)?;
    Dir::own(dir, create, private)?.open_file(name, how)
}

/// Opens the log file `path` (in psm's own log directory, created 0700 if
/// missing) for appending.
pub fn open_log(path: &Path) -> io::Result<File> {
    open_in_own_dir(path, true, false, How::Append)
}

/// Reads a file the user names (the config): links are followed, since
/// that file is the user's choice, but it must be a regular file — a FIFO,
/// device, socket or directory is refused at once instead of hanging — and
/// at most `limit` bytes.
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    let ft = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
    if ft != FileType::RegularFile {
        return Err(not_regular(path, ft));
    }
    read_limited(File::from(fd), path, limit)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_text(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read_regular(path, limit)?).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not UTF-8 text ({e})", path.display()),
        )
    })
}

fn read_limited(file: File, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(refuse(format!(
            "{} is larger than {limit} bytes, more than psm reads; move it aside and retry",
            path.display()
        )));
    }
    Ok(bytes)
}

/// `(parent, last component)` of a path psm derived.
fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            Ok((parent, name))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )),
    }
}

/// 64 bits nobody else can predict: `RandomState` is seeded from the OS's
/// randomness once per process (and varies per instance), so no crate is
/// needed for a temp-file name.
fn unpredictable() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn fifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    /// A directory holding `link`, a link to a file "precious" outside it:
    /// (directory, outside directory, the target).
    fn planted(link: &str) -> (tempfile::TempDir, tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("target");
        std::fs::write(&target, b"precious").unwrap();
        symlink(&target, dir.path().join(link)).unwrap();
        (dir, outside, target)
    }

    /// Links, FIFOs and directories are refused for every mode, with a
    /// message naming the kind; a link's target is never created or changed.
    #[test]
    fn special_files_are_refused_for_every_mode() {
        let (dir, outside, target) = planted("link");
        symlink(outside.path().join("nothing"), dir.path().join("dangling")).unwrap();
        fifo(&dir.path().join("fifo"));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let d = Dir::open(dir.path()).unwrap();
        for how in [How::Read, How::ReadWrite, How::Append, How::Update] {
            for (name, says) in [
                ("link", "symbolic link"),
                ("dangling", "symbolic link"),
                ("fifo", "FIFO"),
                ("sub", "directory"),
            ] {
                let err = d.open_file(name, how).unwrap_err();
                assert!(is_refusal(&err), "{name} {how:?}: {err}");
                assert!(err.to_string().contains(says), "{name} {how:?}: {err}");
                assert_eq!(err.to_string().lines().count(), 1);
            }
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        assert!(!outside.path().join("nothing").exists());
    }

    /// A replace over a planted link replaces the link, not its target.
    #[test]
    fn replace_never_writes_through_a_link() {
        let (dir, _outside, target) = planted("file");
        let d = Dir::open(dir.path()).unwrap();
        d.replace("file", b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        assert_eq!(std::fs::read(dir.path().join("file")).unwrap(), b"new");
        let mode = std::fs::metadata(dir.path().join("file"))
            .unwrap()
            .permissions();
        assert_eq!(mode.mode() & 0o777, 0o600);
        assert_eq!(d.names().unwrap(), [OsString::from("file")]);
    }

    /// Own directories: created 0700, a link or a file refused, a private
    /// one's mode fixed; the link's target keeps its mode.
    #[test]
    fn own_directories() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = Dir::open(dir.path()).unwrap();
        let made = d.own_subdir(OsStr::new("made"), true, true).unwrap();
        let meta = std::fs::metadata(made.path()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);

        symlink(outside.path(), dir.path().join("link")).unwrap();
        let err = d.own_subdir(OsStr::new("link"), true, true).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let meta = std::fs::metadata(outside.path()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);

        std::fs::write(dir.path().join("file"), b"").unwrap();
        let err = d.own_subdir(OsStr::new("file"), true, false).unwrap_err();
        assert!(
            err.to_string().contains("regular file, not a directory"),
            "{err}"
        );

        std::fs::create_dir(dir.path().join("open")).unwrap();
        std::fs::set_permissions(
            dir.path().join("open"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        d.own_subdir(OsStr::new("open"), false, true).unwrap();
        let meta = std::fs::metadata(dir.path().join("open")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    }

    /// A FIFO config is refused at once; a large file beyond the limit too.
    #[test]
    fn read_regular_refuses_fifo_and_oversize() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("psm.toml");
        fifo(&path);
        let err = read_regular(&path, 1024).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, vec![b'#'; 2000]).unwrap();
        let err = read_regular(&path, 1024).unwrap_err();
        assert!(err.to_string().contains("larger than 1024 bytes"), "{err}");
        assert_eq!(read_regular(&path, 2000).unwrap().len(), 2000);
        let missing = read_regular(&dir.path().join("nope"), 10).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}
