//! `psm top`: the live view of the supervision tree, and the CPU/memory
//! figures `psm status` shares with it.
//!
//! The view reads the registry (the coordinator's heartbeat and its services'
//! writes keep it current) and the process table every [`REFRESH`], so a
//! change shows within a second whether or not a coordinator runs. Actions
//! (`r`, `s`) go through the same control-socket calls as `psm restart /
//! stop / start`, on a worker thread, so a slow stop never freezes the
//! screen. The terminal is restored on every exit path: normally, on error,
//! and on panic (ratatui's hook).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, List, ListItem, ListState, Paragraph};
use ratatui::{DefaultTerminal, Frame};

use super::args::TargetArgs;
use super::output::{age, cpu_cell, memory_cell};
use super::{daemon, CliError, CliResult};
use crate::coordinator::protocol::{Request, Target};
use crate::coordinator::COORDINATOR_NAME;
use crate::input;
use crate::paths::Paths;
use crate::process::usage::Snapshot;
use crate::registry::manager::health_with;
use crate::registry::{
    status, HealthStatus, Registry, Scope, ServiceHealth, ServiceKey, ServiceRecord, ServiceType,
    StateManager,
};
use crate::time::{short_duration, since_millis};

/// How often the view re-reads the registry and the process table.
const REFRESH: Duration = Duration::from_millis(500);
/// How long the view waits for a key before redrawing.
const TICK: Duration = Duration::from_millis(100);

/// Fills in `cpu` and `rss` of every running service from `now`: CPU since
/// `before` when there is an earlier snapshot, else over each process's
/// lifetime. A record whose leader no longer matches gets nothing.
pub(super) fn measure(
    health: &mut HealthStatus,
    registry: &Registry,
    now: &mut Snapshot,
    before: Option<&Snapshot>,
) {
    now.set_leaders(registry.services().filter_map(|(_, r)| r.identity()));
    for d in &mut health.details {
        if d.status == status::DEAD {
            continue;
        }
        let Some(leader) = registry.get(&key_of(d)).and_then(|r| r.identity()) else {
            continue;
        };
        let usage = match before {
            Some(b) => now.usage_since(b, leader),
            None => now.usage(leader),
        };
        if let Some(u) = usage {
            // One decimal is all a person reads, and it keeps JSON short.
            d.cpu = Some((u.cpu * 10.0).round() / 10.0);
            d.rss = Some(u.rss);
        }
    }
}

pub(super) fn key_of(d: &ServiceHealth) -> ServiceKey {
    let scope = match (d.service_type, &d.project_path, &d.session_id) {
        (ServiceType::PerProject, Some(p), _) => Scope::Project(p.clone()),
        (ServiceType::PerSession, _, Some(s)) => Scope::Session(s.clone()),
        _ => Scope::Global,
    };
    ServiceKey::new(d.name.clone(), scope)
}

/// `psm top`.
pub fn run(paths: &Paths, manager: &StateManager) -> CliResult {
    if !std::io::stdout().is_terminal() {
        return Err(CliError::Usage(
            "psm top needs a terminal; use `psm status` (or `psm status --json`) in scripts".into(),
        ));
    }
    let mut app = App::new(paths.clone(), manager);
    quit_on_signals();
    // Installs a panic hook that restores the terminal before the message.
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let result = app.run(&mut terminal);
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

/// Set by SIGTERM or SIGHUP: the loop ends at its next tick and restores
/// the terminal, instead of dying with it in raw mode on the alternate screen.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNALLED.store(true, Ordering::SeqCst);
}

fn quit_on_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic. Without it the
        // default (terminate) applies, which is no worse than before.
        let _ = unsafe { sigaction(signal, &action) };
    }
}

/// What the screen shows besides the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overlay {
    None,
    /// The selected service's log below the list (`enter`).
    LogPane,
    /// The selected service's log on the whole screen (`l`).
    Logs,
    Help,
}

/// One line of the list: a group heading or a service.
enum Item {
    Group(String),
    Service(Box<ServiceRow>),
}

struct ServiceRow {
    health: ServiceHealth,
    last_exit: Option<String>,
}

struct App<'a> {
    paths: Paths,
    manager: &'a StateManager,
    items: Vec<Item>,
    /// The selected service, by key, so a refresh does not move it.
    selected: Option<ServiceKey>,
    coordinator: String,
    summary: String,
    overlay: Overlay,
    log: Vec<String>,
    footer: Option<(String, Instant)>,
    before: Option<Snapshot>,
    replies: (mpsc::Sender<String>, mpsc::Receiver<String>),
}

impl<'a> App<'a> {
    fn new(paths: Paths, manager: &'a StateManager) -> Self {
        App {
            paths,
            manager,
            items: Vec::new(),
            selected: None,
            coordinator: String::new(),
            summary: String::new(),
            overlay: Overlay::None,
            log: Vec::new(),
            footer: None,
            before: None,
            replies: mpsc::channel(),
        }
    }

    fn run(&mut self, terminal: &mut DefaultTerminal) -> Result<(), CliError> {
        let mut refreshed = Instant::now() - REFRESH;
        loop {
            if SIGNALLED.load(Ordering::SeqCst) {
                return Ok(());
            }
            if refreshed.elapsed() >= REFRESH {
                self.refresh();
                refreshed = Instant::now();
            }
            while let Ok(reply) = self.replies.1.try_recv() {
                self.footer = Some((reply, Instant::now()));
                // Show the action's effect now, not at the next tick.
                refreshed = Instant::now() - REFRESH;
            }
            terminal
                .draw(|f| self.draw(f))
                .context("drawing the screen")?;
            if !event::poll(TICK).context("reading the terminal")? {
                continue;
            }
            let Event::Key(key) = event::read().context("reading the terminal")? else {
                continue;
            };
            if key.kind != KeyEventKind::Press {
                continue;
            }
            match key.code {
                // Raw mode turns Ctrl-C into a key, not a signal.
                KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                    return Ok(())
                }
                KeyCode::Char('q') => return Ok(()),
                KeyCode::Esc if self.overlay == Overlay::None => return Ok(()),
                KeyCode::Esc => self.overlay = Overlay::None,
                KeyCode::Up | KeyCode::Char('k') => self.step(-1),
                KeyCode::Down | KeyCode::Char('j') => self.step(1),
                KeyCode::Enter => self.toggle(Overlay::LogPane),
                KeyCode::Char('l') => self.toggle(Overlay::Logs),
                KeyCode::Char('?') => self.toggle(Overlay::Help),
                KeyCode::Char('r') => self.act(|_| Request::Restart),
                KeyCode::Char('s') => self.act(stop_or_start),
                _ => continue,
            }
            refreshed = Instant::now() - REFRESH;
        }
    }

    fn toggle(&mut self, overlay: Overlay) {
        self.overlay = if self.overlay == overlay {
            Overlay::None
        } else {
            overlay
        };
    }

    fn services(&self) -> impl Iterator<Item = &ServiceRow> {
        self.items.iter().filter_map(|i| match i {
            Item::Service(s) => Some(s.as_ref()),
            Item::Group(_) => None,
        })
    }

    fn selected_row(&self) -> Option<&ServiceRow> {
        let key = self.selected.as_ref()?;
        self.services().find(|s| &key_of(&s.health) == key)
    }

    fn step(&mut self, by: isize) {
        let keys: Vec<ServiceKey> = self.services().map(|s| key_of(&s.health)).collect();
        if keys.is_empty() {
            return;
        }
        let at = self
            .selected
            .as_ref()
            .and_then(|k| keys.iter().position(|x| x == k))
            .unwrap_or(0);
        let next = (at as isize + by).clamp(0, keys.len() as isize - 1) as usize;
        self.selected = Some(keys[next].clone());
    }

    /// Sends a control request for the selected service on a worker thread;
    /// its answer shows in the footer.
    fn act(&mut self, request: fn(&str) -> fn(Target) -> Request) {
        let Some(row) = self.selected_row() else {
            return;
        };
        let d = &row.health;
        if let Some(why) = not_controllable(d) {
            self.footer = Some((why, Instant::now()));
            return;
        }
        let make = request(&d.status);
        let args = TargetArgs {
            service: d.name.clone(),
            project: d.project_path.as_ref().map(PathBuf::from),
        };
        let paths = self.paths.clone();
        let reply = self.replies.0.clone();
        let name = d.name.clone();
        self.footer = Some((format!("{name}: asking the coordinator…"), Instant::now()));
        std::thread::spawn(move || {
            let message = match daemon::control_message(&paths, make, &args) {
                Ok(m) => m,
                Err(e) => format!("{name}: {e}"),
            };
            let _ = reply.send(message);
        });
    }

    fn refresh(&mut self) {
        let registry = match self.manager.store().read() {
            Ok(r) => r,
            Err(e) => {
                // Keep the last view: a registry being replaced is brief.
                self.coordinator = format!("cannot read the registry: {e}");
                return;
            }
        };
        let mut now = Snapshot::take();
        let mut health = health_with(&registry, |id| now.is_alive(id));
        measure(&mut health, &registry, &mut now, self.before.as_ref());
        self.before = Some(now);
        self.coordinator = coordinator_line(&health);
        self.summary = format!(
            "{} service(s): {} healthy, {} not; {} session(s)",
            health.total_services,
            health.healthy_services,
            health.unhealthy_services,
            health.sessions.len()
        );
        self.items = items(&registry, health);
        if self.selected_row().is_none() {
            let first = self.services().next().map(|s| key_of(&s.health));
            self.selected = first;
        }
        self.log = match (self.overlay, self.selected_row()) {
            (Overlay::LogPane | Overlay::Logs, Some(row)) => {
                let path = log_path(&self.paths, &row.health);
                // Opening a FIFO would block the screen until a writer came.
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if !m.file_type().is_file() => {
                        vec![format!("{} is not a regular file", path.display())]
                    }
                    _ => match crate::logs::tail(&path, 200) {
                        Ok(lines) => lines.iter().map(|l| log_line(l)).collect(),
                        Err(e) => vec![format!("no log at {}: {e}", path.display())],
                    },
                }
            }
            _ => Vec::new(),
        };
    }

    fn draw(&self, f: &mut Frame) {
        let [header, body, footer] = Layout::vertical([
            Constraint::Length(2),
            Constraint::Fill(1),
            Constraint::Length(1),
        ])
        .areas(f.area());
        f.render_widget(
            Paragraph::new(vec![
                Line::styled(self.coordinator.clone(), Style::new().bold()),
                Line::raw(self.summary.clone()),
            ]),
            header,
        );
        match self.overlay {
            Overlay::Logs => self.draw_log(f, body),
            Overlay::LogPane => {
                let [list, log] =
                    Layout::vertical([Constraint::Percentage(50), Constraint::Fill(1)]).areas(body);
                self.draw_list(f, list);
                self.draw_log(f, log);
            }
            Overlay::None | Overlay::Help => self.draw_list(f, body),
        }
        if self.overlay == Overlay::Help {
            draw_help(f, body);
        }
        let hint = "↑↓/jk select  enter log  l logs  r restart  s stop/start  ? help  q quit";
        let text = match &self.footer {
            Some((m, at)) if at.elapsed() < Duration::from_secs(10) => m.as_str(),
            _ => hint,
        };
        f.render_widget(Paragraph::new(text).style(Style::new().reversed()), footer);
    }

    /// The list is lines, not a table, so a group heading (a long project
    /// path or session) spans the width instead of being cut to a column.
    fn draw_list(&self, f: &mut Frame, area: Rect) {
        // Names as wide as the longest (indented under their group), but
        // leaving LAST EXIT at least 16 columns (at 80 columns, names are
        // cut after 11 characters).
        let fixed: usize = widths(0).iter().sum::<usize>() + 2;
        let room = (area.width as usize).saturating_sub(fixed + 16);
        let name = self
            .services()
            .map(|s| s.health.name.chars().count() + 2)
            .max()
            .unwrap_or(4)
            .clamp(6, room.clamp(10, 28));
        let mut selected = None;
        let lines: Vec<ListItem> = self
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Item::Group(title) => ListItem::new(Line::styled(
                    input::printable(title).into_owned(),
                    Style::new().bold(),
                )),
                Item::Service(s) => {
                    if self.selected.as_ref() == Some(&key_of(&s.health)) {
                        selected = Some(i);
                    }
                    ListItem::new(service_line(s, name))
                }
            })
            .collect();
        let [header, body] =
            Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(area);
        let titles = [
            "NAME", "STATUS", "PID", "UPTIME", "RST", "CPU", "MEM", "HEALTH",
        ];
        let mut heading = String::from("  ");
        for (title, width) in titles.iter().zip(widths(name)) {
            heading.push_str(&cell(title, width));
        }
        heading.push_str("LAST EXIT");
        f.render_widget(
            Paragraph::new(heading).style(Style::new().add_modifier(Modifier::UNDERLINED)),
            header,
        );
        let list = List::new(lines)
            .highlight_style(Style::new().reversed())
            .highlight_symbol("> ");
        let mut state = ListState::default().with_selected(selected);
        f.render_stateful_widget(list, body, &mut state);
    }

    fn draw_log(&self, f: &mut Frame, area: Rect) {
        let title = match self.selected_row() {
            Some(row) => format!(" log: {} ", log_path(&self.paths, &row.health).display()),
            None => " log: no service selected ".to_string(),
        };
        let block = Block::bordered().title(title);
        let room = block.inner(area).height as usize;
        let start = self.log.len().saturating_sub(room);
        let lines: Vec<Line> = self.log[start..]
            .iter()
            .map(|l| Line::raw(l.clone()))
            .collect();
        f.render_widget(Paragraph::new(lines).block(block), area);
    }
}

fn draw_help(f: &mut Frame, body: Rect) {
    let lines = [
        "psm top: every service the registry knows, refreshed twice a second",
        "",
        "  ↑ ↓  j k   select a service",
        "  enter      show / hide its log below the list",
        "  l          show / hide its log on the whole screen",
        "  r          restart it (through the coordinator)",
        "  s          stop it, or start it when stopped or failed",
        "  ?          show / hide this help",
        "  q  Esc     quit (Esc first closes a log or this help); Ctrl-C too",
        "",
        "CPU is percent of one core since the last refresh; MEM is resident",
        "memory of the service's whole process tree.",
    ];
    let width =
        (lines.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u16 + 4).min(body.width);
    let height = (lines.len() as u16 + 2).min(body.height);
    let area = Rect {
        x: body.x + (body.width - width) / 2,
        y: body.y + (body.height - height) / 2,
        width,
        height,
    };
    f.render_widget(Clear, area);
    f.render_widget(
        Paragraph::new(lines.map(Line::raw).to_vec()).block(Block::bordered().title(" keys ")),
        area,
    );
}

/// Column widths, separator included, of everything before LAST EXIT.
fn widths(name: usize) -> [usize; 8] {
    [name + 1, 9, 8, 8, 4, 7, 6, 7]
}

/// `text` cut (ending in `…`) or padded to `width` characters, the last
/// one a space.
fn cell(text: &str, width: usize) -> String {
    let room = width.saturating_sub(1);
    let cut: String = if text.chars().count() > room {
        let mut c: String = text.chars().take(room.saturating_sub(1)).collect();
        c.push('…');
        c
    } else {
        text.to_string()
    };
    format!("{cut:<width$}")
}

fn service_line(s: &ServiceRow, name: usize) -> Line<'static> {
    let d = &s.health;
    let running = d.status != status::DEAD && d.pid.is_some();
    let colour = match d.status.as_str() {
        status::RUNNING if d.healthy => Color::Green,
        status::RUNNING | status::STARTING => Color::Yellow,
        status::STOPPED => Color::Reset,
        _ => Color::Red,
    };
    let since = |millis| if running { age(millis) } else { "-".into() };
    let [w_name, w_status, rest @ ..] = widths(name);
    let mut tail = String::new();
    let cells = [
        d.pid.map_or("-".into(), |p| p.to_string()),
        since(d.start_time),
        d.restart_count.to_string(),
        cpu_cell(d.cpu),
        memory_cell(d.rss),
        since(d.last_health_check),
    ];
    for (text, width) in cells.iter().zip(rest) {
        tail.push_str(&cell(text, width));
    }
    tail.push_str(&input::printable(
        s.last_exit.as_deref().unwrap_or_default(),
    ));
    Line::from(vec![
        Span::raw(cell(&format!("  {}", input::printable(&d.name)), w_name)),
        Span::styled(cell(&d.status, w_status), Style::new().fg(colour)),
        Span::raw(tail),
    ])
}

/// The list: global services, then each project's, then each session's
/// (every session, also one without services).
fn items(registry: &Registry, health: HealthStatus) -> Vec<Item> {
    let mut items = Vec::new();
    let mut group = None;
    for d in health.details {
        let title = match d.service_type {
            ServiceType::Global => "global".to_string(),
            ServiceType::PerProject => {
                format!("project {}", d.project_path.as_deref().unwrap_or("?"))
            }
            ServiceType::PerSession => {
                let id = d.session_id.clone().unwrap_or_default();
                session_title(&health.sessions, &id)
            }
        };
        if group.as_ref() != Some(&title) {
            items.push(Item::Group(title.clone()));
            group = Some(title);
        }
        // A waiting service shows what it waits for in the reason column.
        let last_exit = d
            .waiting
            .clone()
            .or_else(|| registry.get(&key_of(&d)).and_then(last_exit_reason));
        items.push(Item::Service(Box::new(ServiceRow {
            health: d,
            last_exit,
        })));
    }
    for s in &health.sessions {
        if s.services == 0 {
            items.push(Item::Group(format!(
                "{} (no services)",
                session_title(&health.sessions, &s.id)
            )));
        }
    }
    items
}

/// The record's last exit reason, if it has one (see
/// [`ServiceRecord::last_exit_reason`]).
fn last_exit_reason(record: &ServiceRecord) -> Option<String> {
    record.last_exit_reason()
}

fn session_title(sessions: &[crate::registry::SessionHealth], id: &str) -> String {
    match sessions.iter().find(|s| s.id == id) {
        Some(s) => format!(
            "session {id} (pid {}, {})",
            s.pid,
            if s.alive { "alive" } else { "ended" }
        ),
        None => format!("session {id} (not registered)"),
    }
}

/// The header's first line: the coordinator, identity-checked as `psm
/// status` checks every record (a dead one shows as `dead` there).
fn coordinator_line(health: &HealthStatus) -> String {
    let record = health
        .details
        .iter()
        .find(|d| d.service_type == ServiceType::Global && d.name == COORDINATOR_NAME);
    match record {
        Some(d) if d.status != status::DEAD && d.pid.is_some() => format!(
            "psm top — coordinator pid {}, heartbeat {} ago",
            d.pid.unwrap_or_default(),
            short_duration(since_millis(d.last_health_check))
        ),
        _ => {
            "psm top — no coordinator runs: showing the registry (`psm up` starts one)".to_string()
        }
    }
}

/// Why `r`/`s` cannot act on a service, if they cannot.
fn not_controllable(d: &ServiceHealth) -> Option<String> {
    if d.name == COORDINATOR_NAME {
        Some("the coordinator itself: use `psm down` / `psm up`".into())
    } else if d.service_type == ServiceType::PerSession {
        Some(format!(
            "{} belongs to a session, not to the coordinator; it ends with its session",
            d.name
        ))
    } else {
        None
    }
}

/// A log line as the screen may show it: colour and other CSI sequences
/// (ESC `[` … final byte, which services print all the time) dropped, tabs
/// as spaces, and anything else hostile escaped as the status table escapes
/// it ([`input::printable`]), so a service's output cannot move the cursor
/// or repaint the view.
fn log_line(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' if chars.next_if_eq(&'[').is_some() => {
                // Parameters and intermediates, then one final byte.
                while chars
                    .next_if(|c| ('\u{20}'..='\u{3f}').contains(c))
                    .is_some()
                {}
                chars.next();
            }
            '\t' => plain.push_str("    "),
            c => plain.push(c),
        }
    }
    input::printable(&plain).into_owned()
}

/// `s` starts what is not running and stops what is.
fn stop_or_start(status: &str) -> fn(Target) -> Request {
    match status {
        status::STOPPED | status::FAILED | status::DEAD => Request::Start,
        _ => Request::Stop,
    }
}

/// Where a service's log is: the coordinator's instances under their label
/// (`name` or `name@project`), session services under session and name.
pub(super) fn log_path(paths: &Paths, d: &ServiceHealth) -> PathBuf {
    match (&d.session_id, &d.project_path) {
        (Some(session), _) => paths.session_service_log(session, &d.name),
        (None, Some(project)) => {
            let project = std::path::Path::new(project)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            paths.service_log(&format!("{}@{project}", d.name))
        }
        (None, None) => paths.service_log(&d.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s_starts_what_is_down_and_stops_the_rest() {
        let t = || Target {
            service: "x".into(),
            project: None,
        };
        let cases = [
            ("stopped", Request::Start(t())),
            ("failed", Request::Start(t())),
            ("dead", Request::Start(t())),
            ("running", Request::Stop(t())),
            ("starting", Request::Stop(t())),
            ("backoff", Request::Stop(t())),
        ];
        for (status, want) in cases {
            assert_eq!(stop_or_start(status)(t()), want, "{status}");
        }
    }

    #[test]
    fn last_exit_reason_is_found_where_it_is() {
        let scope = Scope::Global;
        let id = crate::process::Identity {
            pid: 5,
            start_time: 1,
        };
        let with = |key: &str, value: serde_json::Value| {
            let mut r = ServiceRecord::new(&scope, "s", id, 0);
            if key == "metadata" {
                r.metadata.insert("lastExit".into(), value);
            } else {
                r.extra.insert("lastExit".into(), value);
            }
            last_exit_reason(&r)
        };
        let reason = serde_json::json!({"time": 1, "code": 3, "reason": "exited with code 3"});
        let cases = [
            (
                "top level",
                with("extra", reason.clone()),
                Some("exited with code 3"),
            ),
            (
                "in metadata",
                with("metadata", reason),
                Some("exited with code 3"),
            ),
            (
                "a plain string",
                with("metadata", serde_json::Value::from("exit 0")),
                Some("exit 0"),
            ),
            (
                "no reason",
                with("extra", serde_json::json!({"code": 1})),
                None,
            ),
            (
                "none",
                last_exit_reason(&ServiceRecord::new(&scope, "s", id, 0)),
                None,
            ),
        ];
        for (what, got, want) in cases {
            assert_eq!(got.as_deref(), want, "{what}");
        }
    }

    #[test]
    fn cells_are_cut_or_padded_to_their_width() {
        let cases = [
            ("abc", 5, "abc  "),
            ("abcd", 5, "abcd "),
            ("abcde", 5, "abc… "),
            ("", 3, "   "),
            ("é✓x", 3, "é… "),
        ];
        for (text, width, want) in cases {
            assert_eq!(cell(text, width), want, "{text:?} in {width}");
        }
    }

    #[test]
    fn log_lines_cannot_drive_the_terminal() {
        let cases = [
            ("plain", "plain"),
            ("\u{1b}[31mred\u{1b}[0m", "red"),
            ("\u{1b}[2J\u{1b}[1;1Hhome", "home"),
            ("a\tb", "a    b"),
            ("bell\u{7}\r", "bell\\u{7}\\r"),
            ("lone \u{1b}x", "lone \\u{1b}x"),
            ("cut \u{1b}[", "cut "),
            ("\u{1b}]0;title\u{7}", "\\u{1b}]0;title\\u{7}"),
            ("é ✓", "é ✓"),
        ];
        for (line, want) in cases {
            assert_eq!(log_line(line), want, "{line:?}");
        }
    }

    #[test]
    fn log_paths_follow_the_instance_labels() {
        let paths = Paths::new("/r");
        let mut d = ServiceHealth {
            name: "kb".into(),
            service_type: ServiceType::Global,
            project_path: None,
            session_id: None,
            pid: None,
            status: "running".into(),
            healthy: true,
            start_time: 0,
            last_health_check: 0,
            restart_count: 0,
            cpu: None,
            rss: None,
            last_exit: None,
            waiting: None,
        };
        assert_eq!(log_path(&paths, &d), paths.service_log("kb"));
        d.project_path = Some("/home/me/proj".into());
        assert_eq!(log_path(&paths, &d), paths.service_log("kb@proj"));
        d.session_id = Some("s1".into());
        assert_eq!(log_path(&paths, &d), paths.session_service_log("s1", "kb"));
    }
}
