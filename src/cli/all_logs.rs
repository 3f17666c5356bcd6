//! `psm logs` without a service: every service's log, each line prefixed by
//! its service (`web       | ...`), coloured per service at a terminal.
//!
//! The service logs are the `<label>.log` files in `<root>/.logs` (psm's
//! own logs and rotated copies left out), listed through the directory's fd.
//! `-f` follows each with [`crate::logs::follow`] on a thread of its own
//! (so rotation and replacement are handled as for one service) and looks
//! for new logs every [`DISCOVER`]: a service that starts later is followed
//! from its first line. Lines from different services are whole lines,
//! never interleaved mid-line: each follower writes a line only once it has
//! its newline, under the one stdout lock.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

use super::CliResult;
use crate::fsx::Dir;
use crate::paths::Paths;

/// How often `-f` looks for logs of services that started since.
const DISCOVER: Duration = Duration::from_millis(500);

/// Prefix widths: at least `web       ` (as pm2 and process-compose pad),
/// at most this, so one long name does not push every line right.
const MIN_WIDTH: usize = 9;
const MAX_WIDTH: usize = 24;

/// ANSI foreground colours, one per service in turn (no red: it reads as
/// an error, and no black/white: invisible on one theme or the other).
const COLOURS: [u8; 6] = [36, 33, 32, 35, 34, 96];

/// `psm logs [-f] [-n N] [--since D]` for every service.
pub fn run(paths: &Paths, lines: usize, follow: bool, since: Option<Duration>) -> CliResult {
    let dir = paths.logs_dir();
    let labels = service_logs(&dir)?;
    let since = since.map(Since::new);
    let colour = wants_colour(
        io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let width = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(MIN_WIDTH, MAX_WIDTH);
    let style = Style { width, colour };
    if !follow {
        let mut out = io::stdout().lock();
        for (i, label) in labels.iter().enumerate() {
            let path = paths.service_log(label);
            let tail = match crate::logs::tail(&path, lines) {
                Ok(tail) => tail,
                // Rotated or removed since the listing: nothing to show.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                // One bad file (a FIFO or link planted in .logs) must not
                // hide the others: said on stderr, and the rest shown.
                Err(e) => {
                    eprintln!("psm: skipping {}: {e}", path.display());
                    continue;
                }
            };
            let prefix = style.prefix(label, i);
            let mut since = since;
            for line in tail {
                if !since.as_mut().is_none_or(|s| s.keep(line.as_bytes())) {
                    continue;
                }
                if writeln!(out, "{prefix}{line}").is_err() {
                    return Ok(ExitCode::SUCCESS); // the reader went away
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let gone = Arc::new(AtomicBool::new(false));
    let mut followed = BTreeSet::new();
    loop {
        for label in service_logs(&dir)? {
            if !followed.insert(label.clone()) {
                continue;
            }
            let prefix = style.prefix(&label, followed.len() - 1);
            let path = paths.service_log(&label);
            let gone = Arc::clone(&gone);
            std::thread::spawn(move || {
                let mut out = Prefixed::new(prefix, since);
                let stop = || gone.load(Ordering::Relaxed);
                match crate::logs::follow(&path, lines, &mut out, &stop) {
                    // A broken pipe ends the follower: the reader went away.
                    Ok(()) if out.broken => gone.store(true, Ordering::Relaxed),
                    Ok(()) => {}
                    Err(e) => eprintln!("psm: following {}: {e}", path.display()),
                }
            });
        }
        if gone.load(Ordering::Relaxed) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(DISCOVER);
    }
}

/// The labels of the service logs in `dir`, sorted; none when the
/// directory does not exist yet.
fn service_logs(dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let names = match Dir::own(dir, false, false) {
        Ok(d) => d.names(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
    .with_context(|| format!("listing {}", dir.display()))?;
    Ok(service_labels(names))
}

/// Which names in `.logs` are service logs: `<label>.log`, not psm's own
/// logs, rotated copies (`.log.1`) or hidden files.
fn service_labels(names: Vec<OsString>) -> Vec<String> {
    let mut labels: Vec<String> = names
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .filter(|n| n != "coordinator.log" && n != "system-watchdog.log")
        .filter_map(|n| n.strip_suffix(".log").map(str::to_string))
        .filter(|l| !l.is_empty())
        .collect();
    labels.sort();
    labels
}

/// Colour only for a person at a terminal who has not asked for none
/// (<https://no-color.org>: any non-empty `NO_COLOR`).
fn wants_colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[derive(Debug, Clone, Copy)]
struct Style {
    width: usize,
    colour: bool,
}

impl Style {
    /// `web       | `, in the `n`-th service's colour when colour is on.
    /// The label goes through `printable`: it is a file name anyone with
    /// access to `.logs` could choose.
    fn prefix(&self, label: &str, n: usize) -> String {
        let label = crate::input::printable(label);
        let text = format!("{label:<width$} | ", width = self.width);
        if self.colour {
            format!("\x1b[{}m{text}\x1b[0m", COLOURS[n % COLOURS.len()])
        } else {
            text
        }
    }
}

/// A writer that prefixes each complete line and writes it to stdout under
/// its lock; a partial line waits for its newline.
pub(super) struct Prefixed {
    prefix: String,
    pending: Vec<u8>,
    broken: bool,
    since: Option<Since>,
}

impl Prefixed {
    pub(super) fn new(prefix: String, since: Option<Since>) -> Self {
        Prefixed {
            prefix,
            pending: Vec::new(),
            broken: false,
            since,
        }
    }
}

/// `--since`: keeps a line whose leading time is at or after the cutoff;
/// a line without a time goes with the line before it (a stack trace stays
/// with its first line), and lines before the first timed one are kept.
#[derive(Debug, Clone, Copy)]
pub struct Since {
    cutoff: SystemTime,
    keeping: bool,
}

impl Since {
    pub fn new(ago: Duration) -> Since {
        Since::at(
            SystemTime::now()
                .checked_sub(ago)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        )
    }

    fn at(cutoff: SystemTime) -> Since {
        Since {
            cutoff,
            keeping: true,
        }
    }

    pub fn keep(&mut self, line: &[u8]) -> bool {
        if let Some(time) = line_time(line) {
            self.keeping = time >= self.cutoff;
        }
        self.keeping
    }
}

/// The RFC 3339 time a line starts with, if any: `2026-11-26T23:10:00Z`,
/// `2026-11-26 23:10:00.123+00:00`, either in `[...]`.
fn line_time(line: &[u8]) -> Option<SystemTime> {
    let head = std::str::from_utf8(&line[..line.len().min(64)])
        .or_else(|e| std::str::from_utf8(&line[..e.valid_up_to()]))
        .ok()?;
    let head = head.strip_prefix('[').unwrap_or(head);
    let mut words = head.split([' ', ']']);
    let first = words.next()?;
    if let Ok(t) = humantime::parse_rfc3339_weak(first) {
        return Some(t);
    }
    let two = format!("{first} {}", words.next()?);
    humantime::parse_rfc3339_weak(&two).ok()
}

impl Write for Prefixed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        let Some(last) = self.pending.iter().rposition(|&b| b == b'\n') else {
            return Ok(buf.len());
        };
        let mut text = Vec::with_capacity(last + 1);
        for line in self.pending[..=last].split_inclusive(|&b| b == b'\n') {
            if !self.since.as_mut().is_none_or(|s| s.keep(line)) {
                continue;
            }
            text.extend_from_slice(self.prefix.as_bytes());
            text.extend_from_slice(line);
        }
        self.pending.drain(..=last);
        let mut out = io::stdout().lock();
        let written = out.write_all(&text).and_then(|()| out.flush());
        if let Err(e) = &written {
            self.broken = e.kind() == io::ErrorKind::BrokenPipe;
        }
        written.map(|()| buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_service_logs_are_listed() {
        let names = [
            "web.log",
            "coordinator.log",
            "system-watchdog.log",
            "web.log.1",
            "web.log.1.tmp-0123",
            ".hidden.log",
            ".log",
            "api@proj.log",
            "s1.worker.log",
            "notes.txt",
        ]
        .map(OsString::from)
        .to_vec();
        assert_eq!(service_labels(names), vec!["api@proj", "s1.worker", "web"]);
    }

    #[test]
    fn since_keeps_recent_lines_and_their_continuations() {
        let cutoff = humantime::parse_rfc3339("2026-11-26T23:00:00Z").unwrap();
        let mut since = Since::at(cutoff);
        let cases: [(&str, bool); 9] = [
            ("no time yet", true),
            ("2026-11-26T22:59:59Z old", false),
            ("  at a stack frame", false),
            ("[2026-11-26 23:00:00] at the cutoff", true),
            ("continued", true),
            ("2026-11-26T22:00:00.5+00:00 older", false),
            ("[2026-11-26T23:30:00Z]new", true),
            ("2026-13-99T00:00:00Z not a time", true),
            ("\u{fffd}2026", true),
        ];
        for (line, want) in cases {
            assert_eq!(since.keep(line.as_bytes()), want, "{line:?}");
        }
        assert_eq!(line_time(&[0xff, b'x']), None);
        assert_eq!(line_time(b""), None);
    }

    #[test]
    fn colour_only_at_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        let cases = [
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (false, None, false),
            (false, Some("1"), false),
        ];
        for (tty, env, want) in cases {
            assert_eq!(
                wants_colour(tty, env.map(OsStr::new)),
                want,
                "{tty} {env:?}"
            );
        }
    }

    #[test]
    fn prefixes_pad_colour_and_escape() {
        let plain = Style {
            width: 9,
            colour: false,
        };
        assert_eq!(plain.prefix("web", 0), "web       | ");
        assert_eq!(plain.prefix("a\x1b[2J", 0), "a\\u{1b}[2J | ");
        let coloured = Style {
            width: 3,
            colour: true,
        };
        assert_eq!(coloured.prefix("web", 1), "\x1b[33mweb | \x1b[0m");
        assert_eq!(coloured.prefix("db", 6), "\x1b[36mdb  | \x1b[0m");
    }
}
