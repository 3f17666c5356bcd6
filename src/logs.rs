//! Service logs: size-based rotation, `tail`, and `tail -F`-style following.
//!
//! Services write their stdout and stderr straight into `<root>/.logs/<label>.log`
//! through an `O_APPEND` fd they inherited at spawn (see
//! [`crate::process::spawn::open_log`]); no pipe runs through psm, so they
//! outlive it. That decides how rotation works:
//!
//! - Rename-based rotation would not work: the service keeps writing to the
//!   renamed inode, and psm has no way to make it reopen its log.
//! - So rotation is **copy-truncate** (logrotate's `copytruncate`): copy the
//!   log to `<path>.1`, then truncate it in place. Because every write of the
//!   service's fd is `O_APPEND`, its next write lands at the new end of file,
//!   offset 0, rather than at its old offset (which would leave a hole of
//!   zeros the size of the old log).
//! - The price is a small window: bytes written after the copy reached end of
//!   file and before the truncation are lost. Logs tolerate that; services
//!   must not rely on their log for anything else.
//!
//! Old copies are `<path>.1` (newest) … `<path>.<keep>` (oldest), mode 0600.
//! Everything here is blocking `std` I/O; async callers run it on a blocking
//! thread (`spawn_blocking`), it never takes long but may touch the disk.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::fsx::{self, Dir, How};

/// How much `tail` and `follow` read per system call.
const BLOCK: usize = 64 * 1024;

/// The most `tail` reads from the end of a file.
const MAX_TAIL: u64 = 4 * 1024 * 1024;

/// How often `follow` looks at the file (and at `stop`).
const POLL: Duration = Duration::from_millis(100);

/// `<name>.<n>`, in the log's directory.
fn rotated_name(name: &OsStr, n: u32) -> OsString {
    let mut out = name.to_owned();
    out.push(format!(".{n}"));
    out
}

/// Rotates `path` if it is larger than `max_size` bytes: shifts `path.(keep-1)`
/// → `path.keep` … `path.1` → `path.2` (dropping the oldest beyond `keep`),
/// copies `path` to `path.1` (mode 0600), then truncates `path` to 0. Returns
/// `Ok(true)` if it rotated. `keep == 0` means truncate without keeping a copy.
/// A missing file (or log directory) is `Ok(false)`.
///
/// Everything happens through the log directory's fd (see [`crate::fsx`]):
/// a log that is a link or a FIFO is refused, a planted `.N` link is renamed
/// or replaced like a file, never written through, and `.1` is a new file
/// renamed into place.
pub fn rotate_if_needed(path: &Path, max_size: u64, keep: u32) -> io::Result<bool> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(false);
    };
    let dir = match Dir::own(dir, false, false) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut file = match dir.open_file(name, How::Update) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if file.metadata()?.len() <= max_size {
        return Ok(false);
    }

    // Copies beyond `keep` are left over from a larger `keep` in an earlier
    // config; without this they would never be removed. Copies are numbered
    // without gaps, so the first missing one ends the sweep.
    let mut stale = keep.saturating_add(1);
    while stale < u32::MAX && dir.remove(rotated_name(name, stale))? {
        stale += 1;
    }

    if keep > 0 {
        let first = rotated_name(name, 1);
        // The copy is made first, under a temp name, so that `.1` is never
        // missing: readers (`ls`, `tail .log.1`) always find the newest copy.
        let tmp = copy_private(&dir, &mut file, &first)?;
        let shifted = shift_copies(&dir, name, keep).and_then(|()| dir.rename(&tmp, &first));
        if shifted.is_err() {
            let _ = dir.remove(&tmp);
        }
        shifted?;
    }

    // Truncate through our fd rather than replacing the file: the service
    // holds the inode open and must keep writing into the file we follow.
    file.set_len(0)?;
    Ok(true)
}

/// Moves `.n` → `.(n+1)` for n = keep-1 … 1, dropping the oldest. Oldest
/// first, so each move lands on a name already moved away. `.1` is hard-linked
/// to `.2` rather than renamed, so it stays in place until the new copy is
/// renamed over it. Links in the log directory are moved or linked as links,
/// never followed.
fn shift_copies(dir: &Dir, name: &OsStr, keep: u32) -> io::Result<()> {
    let ignore_missing = |r: io::Result<()>| match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    for n in (2..keep).rev() {
        ignore_missing(dir.rename(rotated_name(name, n), rotated_name(name, n + 1)))?;
    }
    if keep >= 2 {
        let second = rotated_name(name, 2);
        dir.remove(&second)?;
        ignore_missing(dir.link(rotated_name(name, 1), &second))?;
    }
    Ok(())
}

/// Copies `from` into a new file (mode 0600, `O_EXCL`, named after `to`) and
/// syncs it, so the truncation that follows can never lose data a crash
/// would have kept. Returns the temp name; the caller renames it.
fn copy_private(dir: &Dir, from: &mut File, to: &OsStr) -> io::Result<OsString> {
    let mut prefix = to.to_string_lossy().into_owned();
    prefix.push_str(".tmp-");
    let (mut dst, tmp) = dir.create_temp(&prefix)?;
    // Copies to end of file as it is while copying, so lines the service
    // appends during the copy are kept too.
    match io::copy(from, &mut dst).and_then(|_| dst.sync_data()) {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = dir.remove(&tmp);
            Err(e)
        }
    }
}

/// `[logs] timestamps`: whether services started from now on write through
/// a stamper (see [`stamp`]). Published like the rotation policy.
static TIMESTAMPS: AtomicBool = AtomicBool::new(false);

pub fn set_timestamps(on: bool) {
    TIMESTAMPS.store(on, Ordering::Relaxed);
}

pub fn timestamps() -> bool {
    TIMESTAMPS.load(Ordering::Relaxed)
}

/// `psm log-stamp <log>`: copies `input` (a service's stdout and stderr,
/// through a pipe) to the log, each line preceded by the time it was read
/// (`[2026-11-26T23:10:00.123Z] `), until end of input: when the service
/// and every descendant holding the pipe have exited. It runs in a
/// session of its own, so it outlives a coordinator restart as the service
/// does. A line is written (with `O_APPEND`) as soon as it is complete; a
/// last line without a newline is written at the end.
pub fn stamp(input: impl io::Read, log: &Path) -> io::Result<()> {
    use io::BufRead;
    let mut out = crate::process::open_log(log)?;
    let mut input = io::BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bounded: a service writing no newline for a gigabyte does not
        // make the stamper hold it all.
        let n = io::Read::take(&mut input, BLOCK as u64 * 16).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let mut text = format!("[{time}] ").into_bytes();
        text.extend_from_slice(&line);
        if !line.ends_with(b"\n") {
            text.push(b'\n');
        }
        out.write_all(&text)?;
    }
}

/// The rotation policy the watch applies: `max-size` and `keep` of the
/// config the coordinator runs (published by it on every tick, so a reload
/// takes effect within one tick). Process-global because there is one
/// coordinator per process and the watch outlives no config.
static POLICY: Mutex<(u64, u32)> = Mutex::new((10 * 1024 * 1024, 3));

/// Publishes the rotation policy to the size watch.
pub fn set_policy(max_size: u64, keep: u32) {
    // A poisoned lock only means a panic elsewhere mid-assignment of two
    // plain numbers: the value is still whole.
    *POLICY.lock().unwrap_or_else(|e| e.into_inner()) = (max_size, keep);
}

fn policy() -> (u64, u32) {
    *POLICY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shortest and longest pause between two looks at one log.
const MIN_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// How often the watch lists the log directory for new logs: a new log may
/// grow this long before its first look.
const LIST_EVERY: Duration = Duration::from_millis(100);

/// When to look at a log again: half the time it needs to reach `max_size`
/// at the rate it grew since the last look, within [`MIN_PAUSE`, `MAX_PAUSE`].
/// A quiet log costs four `stat`s a second, and a burst after quiet grows it
/// by at most a quarter second of writing; a log written at 50 MB/s is
/// looked at every 10 ms, so it overshoots `max_size` by about half a MB.
pub fn next_look(size: u64, max_size: u64, bytes_per_sec: f64) -> Duration {
    if bytes_per_sec <= 0.0 {
        return MAX_PAUSE;
    }
    let headroom = max_size.saturating_sub(size) as f64;
    let half = Duration::from_secs_f64((headroom / bytes_per_sec / 2.0).min(60.0));
    half.clamp(MIN_PAUSE, MAX_PAUSE)
}

/// One log's state in the watch.
struct Watched {
    size: u64,
    seen: Instant,
    /// When to look next; `None`: not until the kernel says it changed
    /// (Linux, where the watch hears of every write; see [`SizeWatch`]).
    next: Option<Instant>,
    /// Not looked at yet: its rate is unknown, so the second look is soon.
    fresh: bool,
}

/// Every `*.log` in the directory and when to look at each.
struct Logs<'a> {
    dir: &'a Path,
    logs: HashMap<OsString, Watched>,
    /// Whether a log that stopped growing may wait for the next change
    /// notice instead of being looked at every [`MAX_PAUSE`].
    notified: bool,
}

impl<'a> Logs<'a> {
    fn new(dir: &'a Path, notified: bool) -> Self {
        Logs {
            dir,
            logs: HashMap::new(),
            notified,
        }
    }

    /// Lists the directory: forgets logs that went, adds new ones (due now).
    fn list(&mut self, now: Instant) {
        let names: HashSet<OsString> = Dir::own(self.dir, false, false)
            .and_then(|d| d.names())
            .unwrap_or_default()
            .into_iter()
            .collect();
        self.logs.retain(|name, _| names.contains(name));
        for name in names {
            self.changed(name, now);
        }
    }

    /// `name` was created or written: look at it now unless a look is
    /// already due (a growing log is looked at as its rate asks, however
    /// many writes it sees in between).
    fn changed(&mut self, name: OsString, now: Instant) {
        if Path::new(&name).extension() != Some(OsStr::new("log")) {
            return;
        }
        let log = self.logs.entry(name).or_insert(Watched {
            size: 0,
            seen: now,
            next: Some(now),
            fresh: true,
        });
        log.next.get_or_insert(now);
    }

    /// Looks at (and rotates) every log that is due.
    fn look_due(&mut self, now: Instant) {
        let (max_size, keep) = policy();
        let notified = self.notified;
        for (name, log) in self.logs.iter_mut() {
            if log.next.is_none_or(|t| t > now) {
                continue;
            }
            let path = self.dir.join(name);
            let size = fs::symlink_metadata(&path).map_or(0, |m| m.len());
            let elapsed = now.duration_since(log.seen).as_secs_f64();
            let rate = if elapsed > 0.0 && size > log.size {
                (size - log.size) as f64 / elapsed
            } else {
                0.0
            };
            let mut after = size;
            if size > max_size {
                match rotate_if_needed(&path, max_size, keep) {
                    Ok(_) => after = 0,
                    // A refused or vanished log: say so, look again later.
                    Err(e) => {
                        tracing::warn!(log = %path.display(), error = %e, "log rotation failed")
                    }
                }
            }
            log.size = after;
            log.seen = now;
            log.next = if log.fresh {
                Some(now + MIN_PAUSE)
            } else if notified && rate == 0.0 && after <= max_size {
                // Quiet: its next write wakes the watch.
                None
            } else {
                Some(now + next_look(after, max_size, rate))
            };
            log.fresh = false;
        }
    }

    /// The earliest look due, if any.
    fn next_due(&self) -> Option<Instant> {
        self.logs.values().filter_map(|l| l.next).min()
    }
}

/// Keeps every log in the log directory (`*.log`: services, sessions, the
/// coordinator's own) within `max-size` as it is written, not once per
/// health tick: a thread that looks at each log as often as its growth
/// requires ([`next_look`]) and rotates it ([`rotate_if_needed`]) as soon as
/// it passes `max-size`. Services write their logs directly (see the module
/// docs), so only a prompt look can bound them; this is that look.
///
/// On Linux the thread sleeps until inotify reports a write, creation or
/// removal in the directory: a quiet log costs nothing (polling cost four
/// `stat`s a second per log, 1.3 % of a core idle at 1,000 services), and a
/// growing one is looked at as its rate asks, as before. A policy change
/// (smaller `max-size`) reaches a quiet log at its next write. Where inotify
/// is missing or out of watches, and on other systems, it polls: each log at
/// least every [`MAX_PAUSE`], the directory every [`LIST_EVERY`]; a log
/// directory that is removed is polled until it is back, then watched again.
///
/// Stops (and joins) on drop, at once: the drop also closes the pipe the
/// thread waits on.
pub struct SizeWatch {
    stop: Arc<AtomicBool>,
    /// Its reading end is in the thread's poll; closing this end wakes it.
    waker: Option<std::os::fd::OwnedFd>,
    thread: Option<thread::JoinHandle<()>>,
}

impl SizeWatch {
    /// Starts watching `dir` (which may not exist yet).
    pub fn start(dir: PathBuf) -> io::Result<SizeWatch> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (woken, waker) = crate::process::spawn::cloexec_pipe()?;
        let thread = thread::Builder::new()
            .name("psm-log-watch".into())
            .spawn(move || watch(&dir, &flag, woken))?;
        Ok(SizeWatch {
            stop,
            waker: Some(waker),
            thread: Some(thread),
        })
    }
}

impl Drop for SizeWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.waker.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(dir: &Path, stop: &AtomicBool, woken: std::os::fd::OwnedFd) {
    // Copies of a rotation a crash interrupted: only this thread rotates,
    // and one coordinator runs per root, so none is in flight now.
    if let Ok(d) = Dir::own(dir, false, false) {
        for name in d.names().unwrap_or_default() {
            if name.to_string_lossy().contains(".log.1.tmp-") {
                let _ = d.remove(&name);
            }
        }
    }
    #[cfg(target_os = "linux")]
    loop {
        match notified::Notices::watch(dir) {
            Ok(notices) => {
                if notified::watch(dir, stop, &woken, &notices) {
                    return;
                }
                tracing::warn!(dir = %dir.display(),
                    "the log directory was removed or moved; polling it until it is back");
            }
            // Not there (yet): polled until it is, then watched again.
            Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e,
                    "cannot watch the log directory with inotify; polling it");
                break;
            }
        }
        // Services make the directory anew at their next start; from then
        // on the inotify watch takes over again instead of polling forever.
        let back = || fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir());
        if poll_watch(dir, stop, &woken, back) {
            return;
        }
    }
    poll_watch(dir, stop, &woken, || false);
}

/// The watch without change notices: every log at least every
/// [`MAX_PAUSE`], the directory listed every [`LIST_EVERY`]. Returns `true`
/// once stopped, `false` as soon as `until` holds (asked at each listing).
fn poll_watch(
    dir: &Path,
    stop: &AtomicBool,
    woken: &std::os::fd::OwnedFd,
    until: impl Fn() -> bool,
) -> bool {
    let mut logs = Logs::new(dir, false);
    let mut listed: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        // New logs appear with new services: list the directory once per
        // LIST_EVERY; between listings only logs that are due get a `stat`.
        if listed.is_none_or(|t| now.duration_since(t) >= LIST_EVERY) {
            if until() {
                return false;
            }
            listed = Some(now);
            logs.list(now);
        }
        logs.look_due(now);
        let wake = logs
            .next_due()
            .unwrap_or(now + MAX_PAUSE)
            .min(listed.unwrap_or(now) + LIST_EVERY);
        wait(
            woken,
            None,
            wake.saturating_duration_since(Instant::now())
                .max(MIN_PAUSE),
        );
    }
    true
}

/// Sleeps up to `timeout`, or until `notices` has something to read, or
/// until the waker closes (stop). `timeout` of `None`: no limit.
fn wait(
    woken: &std::os::fd::OwnedFd,
    notices: Option<std::os::fd::BorrowedFd<'_>>,
    timeout: impl Into<Option<Duration>>,
) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let timeout = match timeout.into() {
        // Rounded up, so a look is never due a moment after we wake.
        Some(t) => PollTimeout::try_from(t.as_millis().saturating_add(1).min(60_000) as i32)
            .unwrap_or(PollTimeout::MAX),
        None => PollTimeout::NONE,
    };
    let mut fds = vec![PollFd::new(woken.as_fd(), PollFlags::POLLIN)];
    if let Some(fd) = notices {
        fds.push(PollFd::new(fd, PollFlags::POLLIN));
    }
    // EINTR is as good as a wake: the caller looks at the time again.
    let _ = poll(&mut fds, timeout);
}

/// The inotify watch (Linux).
#[cfg(target_os = "linux")]
mod notified {
    use super::*;
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use std::os::fd::AsFd;

    pub struct Notices(Inotify);

    impl Notices {
        /// Notices of every write, creation, rename and removal in `dir`.
        pub fn watch(dir: &Path) -> nix::Result<Notices> {
            let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
            inotify.add_watch(
                dir,
                AddWatchFlags::IN_MODIFY
                    | AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_MOVE_SELF
                    // Nothing outside the root: a `.logs` link is not
                    // followed (the listing refuses it too).
                    | AddWatchFlags::IN_DONT_FOLLOW
                    | AddWatchFlags::IN_ONLYDIR,
            )?;
            Ok(Notices(inotify))
        }
    }

    /// Returns `true` once stopped, `false` when the directory itself was
    /// removed or moved away (a watch on it hears nothing more, while the
    /// services create it anew at their next start): the caller polls until
    /// it is back.
    pub fn watch(
        dir: &Path,
        stop: &AtomicBool,
        woken: &std::os::fd::OwnedFd,
        notices: &Notices,
    ) -> bool {
        let mut logs = Logs::new(dir, true);
        // Logs that exist before the watch: looked at once, then on change.
        logs.list(Instant::now());
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            // Read every notice before looking, so a write after a look is
            // always a notice still to come.
            loop {
                match notices.0.read_events() {
                    Ok(events) if !events.is_empty() => {
                        for event in events {
                            if event.mask.intersects(
                                AddWatchFlags::IN_IGNORED
                                    | AddWatchFlags::IN_DELETE_SELF
                                    | AddWatchFlags::IN_MOVE_SELF,
                            ) {
                                return false;
                            }
                            if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                                // Notices were lost: look at everything.
                                logs.list(now);
                                for log in logs.logs.values_mut() {
                                    log.next = Some(now);
                                }
                                continue;
                            }
                            let Some(name) = event.name else { continue };
                            if event
                                .mask
                                .intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM)
                            {
                                logs.logs.remove(&name);
                            } else {
                                logs.changed(name, now);
                            }
                        }
                    }
                    _ => break,
                }
            }
            logs.look_due(now);
            let due = logs.next_due();
            // At most one round per MIN_PAUSE however busy the logs are;
            // the writes in between are one merged notice.
            std::thread::sleep(MIN_PAUSE);
            wait(
                woken,
                Some(notices.0.as_fd()),
                due.map(|t| t.saturating_duration_since(Instant::now())),
            );
        }
        true
    }
}

/// The last `n` lines of the file (without reading the whole file when it is
/// large: read backwards in blocks). Missing file → `io::ErrorKind::NotFound`.
///
/// Lines are returned without their `\n`; a last line without one is a line
/// too. Invalid UTF-8 is replaced with U+FFFD rather than failing: a service
/// may write anything to its log.
pub fn tail(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let file = fsx::open_file(path, How::Read)?;
    let (bytes, _) = tail_bytes(&file, n)?;
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    Ok(body
        .split(|&b| b == b'\n')
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .collect())
}

/// The raw bytes of the last `n` lines of `file` (with their newlines, exactly
/// as on disk) and the offset where they end, so `follow` can continue from
/// there without missing or repeating a byte. At most [`MAX_TAIL`] bytes are
/// read, backwards in blocks: a last line longer than that (a 2 GB log
/// without a newline) is shown as its last `MAX_TAIL` bytes, in bounded
/// memory, instead of being read whole.
fn tail_bytes(file: &File, n: usize) -> io::Result<(Vec<u8>, u64)> {
    let end = file.metadata()?.len();
    if n == 0 {
        return Ok((Vec::new(), end));
    }
    // Blocks read so far, last block first, and the newlines they hold.
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut newlines = 0usize;
    let mut start = end;
    let mut ends_with_newline = false;
    // n complete lines need n newlines before them plus, if the file ends
    // with one, that final newline, which ends a line rather than starting one.
    while start > 0 && newlines < n + usize::from(ends_with_newline) && end - start < MAX_TAIL {
        let size = (start.min(BLOCK as u64)) as usize;
        start -= size as u64;
        let mut block = vec![0; size];
        read_exact_at(file, &mut block, start)?;
        if blocks.is_empty() {
            ends_with_newline = block.last() == Some(&b'\n');
        }
        newlines += block.iter().filter(|&&b| b == b'\n').count();
        blocks.push(block);
    }
    let mut bytes: Vec<u8> = blocks.into_iter().rev().flatten().collect();

    // Drop everything before the newline that precedes the n-th last line.
    let body_len = bytes.len() - usize::from(ends_with_newline);
    let mut seen = 0;
    if let Some(cut) = bytes[..body_len].iter().rposition(|&b| {
        seen += usize::from(b == b'\n');
        seen == n
    }) {
        bytes.drain(..=cut);
    }
    Ok((bytes, end))
}

/// `read_exact_at`, except that a file that shrank under us (a rotation while
/// we read) reads as zeros instead of failing: the caller only wants a
/// best-effort view of a log that is being written.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(k) => done += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Prints the last `n` lines then follows the file like `tail -F`: polls every
/// 100 ms (no extra crate), prints appended data, and when the file shrinks
/// (copy-truncate rotation) starts again from offset 0. Writes to `out`;
/// returns when `stop()` returns true (checked every poll) or on a write error
/// (e.g. broken pipe → `Ok(())`).
///
/// - A missing file at the start is `io::ErrorKind::NotFound`, as for [`tail`].
/// - Like `tail -F`, it follows the *name*: if the file is deleted it waits for
///   it to reappear, and if a different file takes the name it drains the old
///   one and reads the new one from its start.
/// - A broken pipe means the reader went away (`psm logs -f | head`): that is
///   a normal end, `Ok(())`. Any other write error is returned.
/// - Data is copied byte for byte, partial lines included, so the output is
///   exactly what the service wrote.
/// - Known limit of polling: if the file is truncated and then grows back past
///   the old offset within one poll, the truncation goes unnoticed and that
///   many bytes of the new content are skipped.
pub fn follow(
    path: &Path,
    n: usize,
    out: &mut dyn Write,
    stop: &dyn Fn() -> bool,
) -> io::Result<()> {
    let mut file = fsx::open_file(path, How::Read)?;
    let (initial, mut offset) = tail_bytes(&file, n)?;
    if !emit(out, &initial)? {
        return Ok(());
    }
    let mut id = file_id(&file.metadata()?);

    while !stop() {
        // The name itself: a link that took it is refused by the reopen.
        let current = match fs::symlink_metadata(path) {
            Ok(meta) => Some(meta),
            // Deleted (or mid-replace): keep the old fd and wait for the name.
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(meta) = current.filter(|m| file_id(m) != id) {
            // Another file took the name: finish the old one first, as
            // `tail -F` does, so nothing written before the switch is lost.
            if !copy_from(&file, &mut offset, out)? {
                return Ok(());
            }
            match fsx::open_file(path, How::Read) {
                Ok(new) => {
                    file = new;
                    id = file_id(&meta);
                    offset = 0;
                }
                // Gone again between stat and open; retry on the next poll.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        // Our fd, not the name: stays right while the file is deleted.
        if file.metadata()?.len() < offset {
            // Copy-truncate rotation: the service now writes from offset 0.
            offset = 0;
        }
        if !copy_from(&file, &mut offset, out)? {
            return Ok(());
        }
        thread::sleep(POLL);
    }
    Ok(())
}

/// Identity of a file, to notice that another file took the name.
fn file_id(meta: &fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// Writes everything from `*offset` to end of file to `out`, advancing
/// `offset`. False if the reader went away.
fn copy_from(file: &File, offset: &mut u64, out: &mut dyn Write) -> io::Result<bool> {
    let mut buf = vec![0; BLOCK];
    loop {
        let k = match file.read_at(&mut buf, *offset) {
            Ok(0) => return Ok(true),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        *offset += k as u64;
        if !emit(out, &buf[..k])? {
            return Ok(false);
        }
    }
}

/// Writes and flushes (a follower is read live); false on a broken pipe.
fn emit(out: &mut dyn Write, bytes: &[u8]) -> io::Result<bool> {
    if bytes.is_empty() {
        return Ok(true);
    }
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::open_log;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    /// `<path>.<n>`: the name of the `n`-th most recent rotated copy.
    fn rotated(path: &Path, n: u32) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Polls `cond` every 20 ms until it holds or 5 s pass; on timeout panics
    /// naming the condition and the last state it reported.
    fn wait_until<T: std::fmt::Debug>(what: &str, mut cond: impl FnMut() -> Result<(), T>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match cond() {
                Ok(()) => return,
                Err(last) if Instant::now() >= deadline => {
                    panic!("timed out waiting for {what}; last seen: {last:?}")
                }
                Err(_) => thread::sleep(Duration::from_millis(20)), // wait_until's poll
            }
        }
    }

    /// The size watch rotates a log that went quiet and then grows past
    /// `max-size`, both one that existed before the watch started and one
    /// created after: on Linux only a change notice can bring that look.
    #[test]
    fn size_watch_rotates_quiet_logs_once_they_grow() {
        set_policy(1000, 2);
        let dir = tempfile::tempdir().unwrap();
        let before = dir.path().join("before.log");
        fs::write(&before, "x\n").unwrap();
        let watch = SizeWatch::start(dir.path().to_path_buf()).unwrap();
        let after = dir.path().join("after.log");
        fs::write(&after, "x\n").unwrap();
        // Not a wait for something to happen: long enough that the watch
        // has looked at both and found them quiet (two looks, MIN_PAUSE
        // apart, then no growth).
        thread::sleep(MAX_PAUSE * 2);
        for path in [&before, &after] {
            let mut f = open_log(path).unwrap();
            f.write_all(&[b'y'; 1500]).unwrap();
        }
        for path in [&before, &after] {
            wait_until(&format!("{} rotated", path.display()), || {
                let rotated_size = fs::metadata(rotated(path, 1)).map(|m| m.len()).ok();
                let size = fs::metadata(path).map(|m| m.len()).ok();
                (rotated_size.is_some_and(|r| r >= 1500) && size.is_some_and(|s| s < 1000))
                    .then_some(())
                    .ok_or((rotated_size, size))
            });
        }
        drop(watch);
    }

    /// A log directory removed and made anew while the watch runs (a user's
    /// `rm -rf .logs`; services create it again) is still watched: a log in
    /// the new directory that grows past `max-size` is rotated.
    #[test]
    fn size_watch_survives_its_directory_being_replaced() {
        set_policy(1000, 2);
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("logs");
        fs::create_dir(&dir).unwrap();
        let watch = SizeWatch::start(dir.clone()).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        fs::create_dir(&dir).unwrap();
        let log = dir.join("web.log");
        let mut f = open_log(&log).unwrap();
        f.write_all(&[b'y'; 1500]).unwrap();
        wait_until("the log in the new directory rotated", || {
            let rotated_size = fs::metadata(rotated(&log, 1)).map(|m| m.len()).ok();
            rotated_size
                .filter(|&r| r >= 1500)
                .map(drop)
                .ok_or(rotated_size)
        });
        drop(watch);
    }

    fn log_in(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("web.log")
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    /// A shared buffer `follow` writes into while the test reads it.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    /// Runs `follow` on a thread; stops and joins it on drop.
    struct Follower {
        sink: Sink,
        stop: Arc<AtomicBool>,
        handle: Option<thread::JoinHandle<io::Result<()>>>,
    }

    impl Follower {
        fn start(path: &Path, n: usize) -> Self {
            let sink = Sink::default();
            let stop = Arc::new(AtomicBool::new(false));
            let (path, mut out, flag) = (path.to_owned(), sink.clone(), stop.clone());
            let handle =
                thread::spawn(move || follow(&path, n, &mut out, &|| flag.load(Ordering::SeqCst)));
            Follower {
                sink,
                stop,
                handle: Some(handle),
            }
        }

        fn wait_for_output(&self, what: &str, expected: &str) {
            wait_until(what, || {
                let text = self.sink.text();
                if text == expected {
                    Ok(())
                } else {
                    Err(text)
                }
            });
        }

        fn finish(mut self) -> io::Result<()> {
            self.stop.store(true, Ordering::SeqCst);
            self.handle.take().unwrap().join().unwrap()
        }
    }

    impl Drop for Follower {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(handle) = self.handle.take() {
                let _ = handle.join();
            }
        }
    }

    /// The next look comes before the log can reach max-size at its rate,
    /// never sooner than MIN_PAUSE, never later than MAX_PAUSE.
    #[test]
    fn next_look_table() {
        const MB: u64 = 1 << 20;
        let cases: &[(u64, u64, f64, Duration)] = &[
            (0, 10 * MB, 0.0, MAX_PAUSE),                               // quiet
            (0, 10 * MB, 1.0, MAX_PAUSE),                               // a line now and then
            (0, 10 * MB, 50.0 * MB as f64, Duration::from_millis(100)), // 200 ms to full
            (9 * MB, 10 * MB, 50.0 * MB as f64, MIN_PAUSE),             // 20 ms to full
            (11 * MB, 10 * MB, 50.0 * MB as f64, MIN_PAUSE),            // already over
            (0, u64::MAX, 1e9, MAX_PAUSE),                              // no limit in sight
        ];
        for &(size, max, rate, want) in cases {
            assert_eq!(next_look(size, max, rate), want, "{size} {max} {rate}");
        }
    }

    /// A file at or below the threshold, or a missing one, is left alone.
    #[test]
    fn no_rotation_at_or_below_threshold_or_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        assert!(!rotate_if_needed(&log, 10, 3).unwrap());
        fs::write(&log, "0123456789").unwrap();
        assert!(!rotate_if_needed(&log, 10, 3).unwrap());
        assert_eq!(read(&log), "0123456789");
        assert!(!rotated(&log, 1).exists());
    }

    /// Above the threshold the log is copied to `.1` (mode 0600) and emptied.
    #[test]
    fn rotation_copies_then_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        fs::write(&log, "0123456789a").unwrap();
        assert!(rotate_if_needed(&log, 10, 3).unwrap());
        assert_eq!(read(&log), "");
        let copy = rotated(&log, 1);
        assert_eq!(read(&copy), "0123456789a");
        assert_eq!(copy.file_name().unwrap(), "web.log.1");
        assert_eq!(fs::metadata(&copy).unwrap().mode() & 0o777, 0o600);
    }

    /// keep = 3 retains exactly the 3 newest copies, newest in `.1`.
    #[test]
    fn keep_three_retains_three_newest_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        for generation in 1..=5 {
            fs::write(&log, format!("generation {generation}\n")).unwrap();
            assert!(rotate_if_needed(&log, 1, 3).unwrap());
        }
        assert_eq!(read(&rotated(&log, 1)), "generation 5\n");
        assert_eq!(read(&rotated(&log, 2)), "generation 4\n");
        assert_eq!(read(&rotated(&log, 3)), "generation 3\n");
        assert!(!rotated(&log, 4).exists());
        let files = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 4, "the log and exactly three copies");
    }

    /// Lowering `keep` removes the copies beyond it; keep = 0 keeps none.
    #[test]
    fn lower_keep_drops_stale_copies_and_zero_keeps_none() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        for generation in 1..=4 {
            fs::write(&log, format!("generation {generation}\n")).unwrap();
            rotate_if_needed(&log, 1, 4).unwrap();
        }
        fs::write(&log, "generation 5\n").unwrap();
        assert!(rotate_if_needed(&log, 1, 2).unwrap());
        assert_eq!(read(&rotated(&log, 1)), "generation 5\n");
        assert_eq!(read(&rotated(&log, 2)), "generation 4\n");
        assert!(!rotated(&log, 3).exists());
        assert!(!rotated(&log, 4).exists());

        fs::write(&log, "generation 6\n").unwrap();
        assert!(rotate_if_needed(&log, 1, 0).unwrap());
        assert_eq!(read(&log), "");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A service's O_APPEND fd, opened before rotation, writes at the start of
    /// the truncated file afterwards: no hole, nothing lost from the copy.
    #[test]
    fn append_fd_writes_at_start_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        let mut service = open_log(&log).unwrap();
        service.write_all(&[b'x'; 200]).unwrap();
        assert!(rotate_if_needed(&log, 100, 1).unwrap());
        service.write_all(b"after rotation\n").unwrap();
        assert_eq!(read(&log), "after rotation\n");
        assert_eq!(fs::read(rotated(&log, 1)).unwrap(), vec![b'x'; 200]);
    }

    /// Fewer lines than asked returns them all; more returns the last n.
    #[test]
    fn tail_fewer_and_more_lines_than_n() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        fs::write(&log, "a\nb\nc\n").unwrap();
        assert_eq!(tail(&log, 10).unwrap(), ["a", "b", "c"]);
        assert_eq!(tail(&log, 2).unwrap(), ["b", "c"]);
        assert_eq!(tail(&log, 0).unwrap(), Vec::<String>::new());
    }

    /// A last line without a newline counts as a line; empty lines are kept.
    #[test]
    fn tail_without_trailing_newline_and_empty_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        fs::write(&log, "a\n\nb\nc").unwrap();
        assert_eq!(tail(&log, 2).unwrap(), ["b", "c"]);
        assert_eq!(tail(&log, 3).unwrap(), ["", "b", "c"]);
        fs::write(&log, "").unwrap();
        assert_eq!(tail(&log, 3).unwrap(), Vec::<String>::new());
        fs::write(&log, "\n").unwrap();
        assert_eq!(tail(&log, 3).unwrap(), [""]);
    }

    /// A missing file is NotFound, for tail and follow alike.
    #[test]
    fn missing_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        assert_eq!(tail(&log, 5).unwrap_err().kind(), io::ErrorKind::NotFound);
        let err = follow(&log, 5, &mut io::sink(), &|| true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    /// On a 1 MB+ file the last lines are found across block boundaries.
    #[test]
    fn tail_of_large_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        let text: String = (0..100_000).map(|i| format!("line {i:06}\n")).collect();
        assert!(text.len() > 1_000_000);
        fs::write(&log, &text).unwrap();
        let expected: Vec<String> = (99_995..100_000).map(|i| format!("line {i:06}")).collect();
        assert_eq!(tail(&log, 5).unwrap(), expected);
        // A line longer than a block is returned whole.
        let long = "y".repeat(3 * BLOCK);
        fs::write(&log, format!("short\n{long}\nend")).unwrap();
        assert_eq!(tail(&log, 2).unwrap(), [long.as_str(), "end"]);
    }

    /// Follow prints the last n lines, then what is appended, then what is
    /// written after a copy-truncate rotation; it ends when told to stop.
    #[test]
    fn follow_appends_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        let mut service = open_log(&log).unwrap();
        service.write_all(b"old 1\nold 2\nold 3\n").unwrap();

        let follower = Follower::start(&log, 2);
        follower.wait_for_output("the last 2 lines", "old 2\nold 3\n");

        service.write_all(b"new 1\npart").unwrap();
        follower.wait_for_output("appended data", "old 2\nold 3\nnew 1\npart");

        assert!(rotate_if_needed(&log, 1, 1).unwrap());
        service.write_all(b"ial\n").unwrap();
        follower.wait_for_output(
            "data after the truncation",
            "old 2\nold 3\nnew 1\npartial\n",
        );
        follower.finish().unwrap();
    }

    /// Follow reads a file that replaced the name from its start, after
    /// draining the old one (rename-style rotation by someone else).
    #[test]
    fn follow_switches_to_a_replaced_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        fs::write(&log, "first\n").unwrap();
        let follower = Follower::start(&log, 10);
        follower.wait_for_output("the initial line", "first\n");

        fs::rename(&log, dir.path().join("moved")).unwrap();
        fs::write(&log, "second\n").unwrap();
        follower.wait_for_output("the new file", "first\nsecond\n");
        follower.finish().unwrap();
    }

    /// A reader that went away (broken pipe) ends follow with Ok; other
    /// write errors are returned.
    #[test]
    fn follow_ends_on_broken_pipe() {
        struct Failing(io::ErrorKind);
        impl Write for Failing {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(self.0.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        fs::write(&log, "line\n").unwrap();
        // `stop` never says stop: only the write error can end these calls.
        let never = || false;
        follow(&log, 1, &mut Failing(io::ErrorKind::BrokenPipe), &never).unwrap();
        let err = follow(
            &log,
            1,
            &mut Failing(io::ErrorKind::PermissionDenied),
            &never,
        );
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
    }
}
