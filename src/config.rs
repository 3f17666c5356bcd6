//! `psm.toml`: parsing and validation of the service configuration.
//!
//! Responsibility: turn the file into a validated [`Config`] (defaults filled
//! in, per-service restart overrides merged) or into one [`ConfigError`] whose
//! message is a single line naming the file, the line, the key and the fix.
//! Nothing here touches processes or the registry; [`ServiceSpec::instantiate`]
//! only derives what one instance of a service would run.
//!
//! Invariants of a parsed `Config`: service names are valid names and unique
//! per type; no service is `per-session` (sessions start their own); every
//! command has a non-empty program; `health-interval` is positive; `projects`
//! are absolute.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use crate::input::validate_name;
use crate::process::signal::parse_signal;
use crate::registry::{Scope, ServiceKey, ServiceType};

/// The kind of a service that is a plain supervised process.
pub const DEFAULT_KIND: &str = "daemon";

const DURATION_HINT: &str = "use a humantime duration like \"15s\" or \"250ms\"";

/// The whole configuration of one root.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it came from; `None` for [`Config::empty`].
    pub source: Option<PathBuf>,
    /// Period of health checks and of the coordinator's heartbeat.
    pub health_interval: Duration,
    /// Projects whose per-project services run even without a live session.
    pub projects: Vec<PathBuf>,
    /// The file's `[restart]`, i.e. the defaults before per-service overrides.
    pub restart: RestartPolicy,
    pub logs: LogPolicy,
    pub services: Vec<ServiceSpec>,
}

/// Backoff and give-up rules: attempt k waits `min(base * 2^(k-1), max)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    pub base: Duration,
    pub max: Duration,
    /// Failures in a row before the service is `failed`.
    pub attempts: u32,
    /// Healthy this long and the failure count resets.
    pub stable_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(30),
            attempts: 5,
            stable_after: Duration::from_secs(60),
        }
    }
}

/// Size-based rotation of service logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogPolicy {
    /// Bytes before a log is rotated.
    pub max_size: u64,
    /// Rotated files kept besides the live one.
    pub keep: u32,
}

impl Default for LogPolicy {
    fn default() -> Self {
        LogPolicy {
            max_size: 10 * 1024 * 1024,
            keep: 3,
        }
    }
}

/// One `[[service]]` as configured (placeholders not yet expanded).
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSpec {
    pub name: String,
    /// `Global` or `PerProject`; never `PerSession`.
    pub service_type: ServiceType,
    /// [`DEFAULT_KIND`] or the name of an extension service kind.
    pub kind: String,
    /// Program and arguments; `command[0]` is non-empty.
    pub command: Vec<String>,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
    pub health: Option<HealthSpec>,
    /// Health failures during this time after a start do not count.
    pub start_period: Duration,
    pub stop_signal: Signal,
    /// Time between `stop_signal` and SIGKILL.
    pub stop_timeout: Duration,
    /// The file's `[restart]` with this service's overrides applied.
    pub restart: RestartPolicy,
    /// Free table for extension kinds; an empty object when absent.
    pub options: Value,
}

/// The one health check a service may have besides the pid check.
#[derive(Clone, Debug, PartialEq)]
pub enum HealthSpec {
    /// A TCP connect succeeds.
    Port { host: String, port: u16 },
    /// The file's mtime is younger than `max_age`.
    File { path: String, max_age: Duration },
    /// A probe registered by an extension.
    Probe { name: String, options: Value },
}

/// One running instance of a service: global, or one per active project.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    /// `Scope::Global`, or `Scope::Project(project path)`.
    pub key: ServiceKey,
    /// `web` or `web@projname`; used for log file names.
    pub label: String,
    /// The spec with `{project}` and `{project_name}` expanded.
    pub spec: ServiceSpec,
    /// Absolute working directory.
    pub cwd: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} not found: create it or pass --config FILE", .0.display())]
    Missing(PathBuf),
    #[error("cannot read config file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}{}: {}", .path.display(), LineSuffix(*.line), .message)]
    Invalid {
        path: PathBuf,
        /// 1-based, where the problem could be located.
        line: Option<usize>,
        message: String,
    },
}

struct LineSuffix(Option<usize>);

impl fmt::Display for LineSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, " line {n}"),
            None => Ok(()),
        }
    }
}

impl Config {
    /// Reads and parses `path`. A missing file is [`ConfigError::Missing`], so
    /// callers can choose to run with [`Config::empty`] instead.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match crate::fsx::read_text(path, crate::fsx::MAX_CONFIG_BYTES) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ConfigError::Missing(path.to_path_buf()))
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses `text`; `source` is the file name used in errors and in `source`.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
        let ctx = Ctx { text, path: source };
        // Parsing as a plain table first separates TOML syntax errors from
        // schema errors, which are worded differently.
        if let Err(e) = toml::from_str::<toml::Table>(text) {
            return Err(ctx.toml_error(&e, true));
        }
        let raw: RawConfig = toml::from_str(text).map_err(|e| ctx.toml_error(&e, false))?;
        ctx.validate(raw)
    }

    /// All defaults, no services, no source.
    pub fn empty() -> Config {
        Config {
            source: None,
            health_interval: Duration::from_secs(15),
            projects: Vec::new(),
            restart: RestartPolicy::default(),
            logs: LogPolicy::default(),
            services: Vec::new(),
        }
    }
}

impl ServiceSpec {
    /// Expands `{project}` (the absolute project path) and `{project_name}`
    /// (its last component) in command, cwd, env values and the health file
    /// path; for global services returns a plain clone. cwd: relative paths
    /// are joined to `root`; `None` → `root` for global, the project dir for
    /// per-project.
    ///
    /// A per-project spec is meant to get `Some(project)`; given `None` it
    /// treats `root` as the project rather than failing.
    pub fn instantiate(&self, root: &Path, project: Option<&Path>) -> Instance {
        if self.service_type != ServiceType::PerProject {
            return Instance {
                key: ServiceKey::global(self.name.clone()),
                label: self.name.clone(),
                cwd: resolve_cwd(root, self.cwd.as_deref(), root),
                spec: self.clone(),
            };
        }
        let project = project.unwrap_or(root);
        let project_str = project.to_string_lossy().into_owned();
        let project_name = project
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| project_str.clone());
        let expand = |s: &str| {
            s.replace("{project_name}", &project_name)
                .replace("{project}", &project_str)
        };
        let mut spec = self.clone();
        spec.command = spec.command.iter().map(|a| expand(a)).collect();
        spec.cwd = spec.cwd.as_deref().map(expand);
        for value in spec.env.values_mut() {
            *value = expand(value);
        }
        if let Some(HealthSpec::File { path, .. }) = &mut spec.health {
            *path = expand(path);
        }
        Instance {
            key: ServiceKey::new(self.name.clone(), Scope::Project(project_str.clone())),
            label: format!("{}@{}", self.name, project_name),
            cwd: resolve_cwd(root, spec.cwd.as_deref(), project),
            spec,
        }
    }
}

fn resolve_cwd(root: &Path, cwd: Option<&str>, default: &Path) -> PathBuf {
    match cwd {
        // `join` keeps an absolute cwd as it is.
        Some(dir) => root.join(dir),
        None => default.to_path_buf(),
    }
}

// ---------------------------------------------------------------------------
// The file as written. Spans are kept where a later check may need a line.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    health_interval: Option<Spanned<Human>>,
    #[serde(default)]
    projects: Vec<Spanned<String>>,
    #[serde(default)]
    restart: RawRestart,
    #[serde(default)]
    logs: RawLogs,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRestart {
    base: Option<Human>,
    max: Option<Human>,
    attempts: Option<u32>,
    stable_after: Option<Human>,
}

impl RawRestart {
    fn over(&self, base: RestartPolicy) -> RestartPolicy {
        RestartPolicy {
            base: self.base.map_or(base.base, |h| h.0),
            max: self.max.map_or(base.max, |h| h.0),
            attempts: self.attempts.unwrap_or(base.attempts),
            stable_after: self.stable_after.map_or(base.stable_after, |h| h.0),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLogs {
    max_size: Option<u64>,
    keep: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawService {
    name: Spanned<String>,
    #[serde(rename = "type")]
    service_type: Spanned<String>,
    command: Spanned<Vec<String>>,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, String>,
    health: Option<Spanned<RawHealth>>,
    start_period: Option<Human>,
    stop_signal: Option<Spanned<String>>,
    stop_timeout: Option<Human>,
    #[serde(default)]
    restart: RawRestart,
    kind: Option<Spanned<String>>,
    options: Option<serde_json::Map<String, Value>>,
}

/// Every form's keys in one table, so a mix of forms gets a precise message
/// instead of serde's "did not match any variant".
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHealth {
    port: Option<Spanned<u16>>,
    host: Option<String>,
    file: Option<String>,
    max_age: Option<Human>,
    probe: Option<Spanned<String>>,
    options: Option<serde_json::Map<String, Value>>,
}

/// A humantime duration. Parsed inside deserialization so that toml attaches
/// the value's span to the error.
#[derive(Clone, Copy)]
struct Human(Duration);

impl<'de> Deserialize<'de> for Human {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(Human)
            .map_err(|_| de::Error::custom(format!("invalid duration '{text}'")))
    }
}

// ---------------------------------------------------------------------------
// Validation and error wording.

/// The text being parsed and its file name, for locating and wording errors.
struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Ctx<'_> {
    fn error(&self, at: Option<usize>, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: at.map(|o| line_of(self.text, o)),
            message,
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let mut config = Config::empty();
        config.source = Some(self.path.to_path_buf());
        if let Some(interval) = raw.health_interval {
            if interval.get_ref().0.is_zero() {
                return Err(self.error(
                    Some(interval.span().start),
                    "'health-interval' must be greater than 0: it is the period of health checks and heartbeats; use e.g. \"15s\"".into(),
                ));
            }
            config.health_interval = interval.into_inner().0;
        }
        for entry in raw.projects {
            if !Path::new(entry.get_ref()).is_absolute() {
                return Err(self.error(
                    Some(entry.span().start),
                    format!(
                        "'projects' entry '{}' is not absolute: give the full path of the project directory",
                        entry.get_ref()
                    ),
                ));
            }
            config.projects.push(PathBuf::from(entry.into_inner()));
        }
        config.restart = raw.restart.over(RestartPolicy::default());
        config.logs = LogPolicy {
            max_size: raw.logs.max_size.unwrap_or(config.logs.max_size),
            keep: raw.logs.keep.unwrap_or(config.logs.keep),
        };
        // (type, name) → line of the first definition, for duplicate messages.
        let mut seen: BTreeMap<(ServiceType, String), usize> = BTreeMap::new();
        for (index, service) in raw.services.into_iter().enumerate() {
            let spec = self.service(index, service, config.restart, &mut seen)?;
            config.services.push(spec);
        }
        Ok(config)
    }

    fn service(
        &self,
        index: usize,
        raw: RawService,
        defaults: RestartPolicy,
        seen: &mut BTreeMap<(ServiceType, String), usize>,
    ) -> Result<ServiceSpec, ConfigError> {
        let name_at = raw.name.span().start;
        let name = raw.name.into_inner();
        if let Err(e) = validate_name("service name", &name) {
            return Err(self.error(
                Some(name_at),
                format!("{e} (key 'name' of [[service]] #{})", index + 1),
            ));
        }
        let within = format!("[[service]] '{name}'");

        let type_at = raw.service_type.span().start;
        let service_type = match ServiceType::parse(raw.service_type.get_ref()) {
            Some(ServiceType::PerSession) => {
                return Err(self.error(
                    Some(type_at),
                    format!("'type' per-session is not allowed in {within}: sessions start their own services; use global or per-project"),
                ))
            }
            Some(t) => t,
            None => {
                return Err(self.error(
                    Some(type_at),
                    format!(
                        "unknown 'type' '{}' in {within}: use global or per-project",
                        raw.service_type.get_ref()
                    ),
                ))
            }
        };
        if let Some(first) = seen.insert((service_type, name.clone()), line_of(self.text, name_at))
        {
            return Err(self.error(
                Some(name_at),
                format!("duplicate 'name' in {within}: a {service_type} service '{name}' is already defined at line {first}; rename one of them"),
            ));
        }

        let command_at = raw.command.span().start;
        let command = raw.command.into_inner();
        if !matches!(command.first(), Some(program) if !program.is_empty()) {
            return Err(self.error(
                Some(command_at),
                format!("empty 'command' in {within}: give the program and its arguments, e.g. [\"python3\", \"-m\", \"http.server\"]"),
            ));
        }

        let mut env = BTreeMap::new();
        for (key, value) in raw.env {
            let bad = key.get_ref().is_empty() || key.get_ref().contains(['=', '\0']);
            if bad {
                return Err(self.error(
                    Some(key.span().start),
                    format!("invalid variable name '{}' in 'env' of {within}: use a name without '=' or NUL", key.get_ref()),
                ));
            }
            env.insert(key.into_inner(), value);
        }

        let health = match raw.health {
            Some(h) => Some(self.health(h, &within)?),
            None => None,
        };

        let stop_signal = match raw.stop_signal {
            None => Signal::SIGTERM,
            Some(s) => parse_signal(s.get_ref()).ok_or_else(|| {
                self.error(
                    Some(s.span().start),
                    format!("unknown signal '{}' for 'stop-signal' in {within}: use a name like TERM, INT, HUP, QUIT or a number", s.get_ref()),
                )
            })?,
        };

        let kind = match raw.kind {
            None => DEFAULT_KIND.to_string(),
            Some(k) => {
                if let Err(e) = validate_name("kind", k.get_ref()) {
                    return Err(self.error(
                        Some(k.span().start),
                        format!("{e} (key 'kind' of {within})"),
                    ));
                }
                k.into_inner()
            }
        };

        Ok(ServiceSpec {
            name,
            service_type,
            kind,
            command,
            cwd: raw.cwd,
            env,
            health,
            start_period: raw.start_period.map_or(Duration::ZERO, |h| h.0),
            stop_signal,
            stop_timeout: raw.stop_timeout.map_or(Duration::from_secs(2), |h| h.0),
            restart: raw.restart.over(defaults),
            options: Value::Object(raw.options.unwrap_or_default()),
        })
    }

    fn health(&self, raw: Spanned<RawHealth>, within: &str) -> Result<HealthSpec, ConfigError> {
        let at = raw.span().start;
        let raw = raw.into_inner();
        let forms: Vec<&str> = [
            raw.port.as_ref().map(|_| "port"),
            raw.file.as_ref().map(|_| "file"),
            raw.probe.as_ref().map(|_| "probe"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let fail = |message: String| Err(self.error(Some(at), message));
        if forms.len() != 1 {
            let found = if forms.is_empty() {
                "none".to_string()
            } else {
                forms.join(" and ")
            };
            return fail(format!("'health' in {within} needs exactly one of port, file or probe (found {found}): keep one"));
        }
        // Keys that belong to another form are mistakes, not silently ignored.
        let stray = [
            (raw.host.is_some() && raw.port.is_none(), "host", "port"),
            (
                raw.max_age.is_some() && raw.file.is_none(),
                "max-age",
                "file",
            ),
            (
                raw.options.is_some() && raw.probe.is_none(),
                "options",
                "probe",
            ),
        ];
        if let Some((_, key, form)) = stray.iter().find(|(bad, ..)| *bad) {
            return fail(format!(
                "key '{key}' in 'health' of {within} only goes with '{form}': remove it"
            ));
        }
        match (raw.port, raw.file, raw.probe) {
            (Some(port), _, _) => {
                if *port.get_ref() == 0 {
                    return Err(self.error(
                        Some(port.span().start),
                        format!("'port' 0 in 'health' of {within}: use a port from 1 to 65535"),
                    ));
                }
                Ok(HealthSpec::Port {
                    host: raw.host.unwrap_or_else(|| "127.0.0.1".into()),
                    port: port.into_inner(),
                })
            }
            (_, Some(path), _) => Ok(HealthSpec::File {
                path,
                max_age: raw.max_age.map_or(Duration::from_secs(30), |h| h.0),
            }),
            (_, _, Some(probe)) => {
                if let Err(e) = validate_name("probe name", probe.get_ref()) {
                    return Err(self.error(
                        Some(probe.span().start),
                        format!("{e} (key 'probe' in 'health' of {within})"),
                    ));
                }
                Ok(HealthSpec::Probe {
                    name: probe.into_inner(),
                    options: Value::Object(raw.options.unwrap_or_default()),
                })
            }
            // Ruled out by the count of forms above.
            (None, None, None) => fail("'health' has no form".into()),
        }
    }

    /// Rewords a toml error as one line; toml's own Display spans several.
    fn toml_error(&self, err: &toml::de::Error, syntax: bool) -> ConfigError {
        let span = err.span();
        let at = span.as_ref().map(|s| s.start);
        let raw = one_line(err.message());
        if syntax {
            return self.error(at, format!("{raw}: fix the TOML syntax"));
        }
        let within = span
            .as_ref()
            .map(|s| self.location(s))
            .unwrap_or_else(|| "the top level".into());
        let message = if let Some(rest) = raw.strip_prefix("unknown field `") {
            let (key, tail) = rest.split_once('`').unwrap_or((rest, ""));
            let expected = backticked(tail);
            if expected.is_empty() {
                format!("unknown key '{key}' in {within}; remove it")
            } else {
                format!(
                    "unknown key '{key}' in {within}; expected one of {}",
                    expected.join(", ")
                )
            }
        } else if let Some(rest) = raw.strip_prefix("missing field `") {
            let key = rest.split('`').next().unwrap_or(rest);
            format!("missing key '{key}' in {within}; add it")
        } else {
            let key = at.and_then(|o| key_before(self.text, o));
            let for_key = key.map(|k| format!(" for '{k}'")).unwrap_or_default();
            if raw.starts_with("invalid duration") {
                format!("{raw}{for_key} in {within}: {DURATION_HINT}")
            } else {
                format!("bad value{for_key} in {within}: {raw}")
            }
        };
        self.error(at, message)
    }

    /// Names the table holding `span`: "[restart]", "[[service]] 'web'",
    /// "'health' of [[service]] 'web'", or "the top level".
    fn location(&self, span: &Range<usize>) -> String {
        let start = span.start.min(self.text.len());
        let mut header: Option<(usize, String)> = None;
        let mut offset = 0;
        for line in self.text.split_inclusive('\n') {
            if offset > start {
                break;
            }
            if let Some(h) = table_header(line) {
                header = Some((offset, h));
            }
            offset += line.len();
        }
        let table = match header {
            None => "the top level".to_string(),
            Some((from, h)) if h == "[[service]]" => match service_name_after(self.text, from) {
                Some(name) => format!("[[service]] '{name}'"),
                None => h,
            },
            Some((_, h)) => h,
        };
        match inline_table_key(self.text, start) {
            Some(key) => format!("'{key}' of {table}"),
            None => table,
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `quoted` names in serde's "expected one of `a`, `b`".
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// `[name]` or `[[name]]`, spaces and comment dropped, if `line` is a table
/// header.
fn table_header(line: &str) -> Option<String> {
    let line = line.split('#').next().unwrap_or("").trim();
    let inner = line.strip_prefix('[')?.strip_suffix(']')?;
    let array = inner.starts_with('[') && inner.ends_with(']');
    let bare = inner.trim_start_matches('[').trim_end_matches(']').trim();
    let is_key = !bare.is_empty()
        && bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    match (is_key, array) {
        (false, _) => None,
        (true, true) => Some(format!("[[{bare}]]")),
        (true, false) => Some(format!("[{bare}]")),
    }
}

/// The `name = "..."` of the `[[service]]` table whose header starts at `from`.
fn service_name_after(text: &str, from: usize) -> Option<String> {
    for line in text[from..].split_inclusive('\n').skip(1) {
        if table_header(line).is_some() {
            return None;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() == "name" {
            let value = value.trim();
            let quote = value.chars().next().filter(|c| matches!(c, '"' | '\''))?;
            return value[1..].split(quote).next().map(str::to_string);
        }
    }
    None
}

/// The bare key just before the value at `offset` (`key = <value>`).
fn key_before(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?.trim_end();
    let before = before.strip_suffix('=')?.trim_end();
    let key: String = before
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (!key.is_empty()).then_some(key)
}

/// If `offset` lies inside an inline table `key = { ... }` on its line, that
/// key. A heuristic for messages only: braces inside strings can fool it.
fn inline_table_key(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let mut depth = 0usize;
    for (i, c) in before[line_start..].char_indices().rev() {
        match c {
            '}' => depth += 1,
            '{' if depth > 0 => depth -= 1,
            '{' => return key_before(text, line_start + i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FULL: &str = r#"health-interval = "15s"
projects = ["/abs/path"]
[restart]
base = "1s"
max = "30s"
attempts = 5
stable-after = "60s"
[logs]
max-size = 10485760
keep = 3
[[service]]
name = "web"
type = "global"
command = ["python3", "-m", "http.server", "8765"]
cwd = "."
env = { PORT = "8765" }
health = { port = 8765 }
start-period = "2s"
stop-signal = "TERM"
stop-timeout = "2s"
restart = { attempts = 3 }
kind = "daemon"
options = { a = 1 }
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/r/psm.toml"))
    }

    /// A minimal valid service, for tests that vary one key.
    fn web(extra: &str) -> String {
        format!("[[service]]\nname = \"web\"\ntype = \"global\"\ncommand = [\"srv\"]\n{extra}")
    }

    /// Asserts that `text` fails with a message naming the file, `line` and every
    /// `needle`, on one line.
    #[track_caller]
    fn assert_error(text: &str, line: Option<usize>, needles: &[&str]) {
        let err = parse(text).expect_err("config should be rejected");
        let message = err.to_string();
        assert!(!message.contains('\n'), "not one line: {message}");
        assert!(message.starts_with("/r/psm.toml"), "{message}");
        match line {
            Some(n) => assert!(message.contains(&format!(" line {n}: ")), "{message}"),
            None => assert!(!message.contains(" line "), "{message}"),
        }
        for needle in needles {
            assert!(message.contains(needle), "no {needle:?} in: {message}");
        }
        if let ConfigError::Invalid { line: got, .. } = err {
            assert_eq!(got, line, "{message}");
        }
    }

    /// An empty file means every default and no services.
    #[test]
    fn empty_file_gives_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.source.as_deref(), Some(Path::new("/r/psm.toml")));
        let expected = Config {
            source: config.source.clone(),
            ..Config::empty()
        };
        assert_eq!(config, expected);
        assert_eq!(config.health_interval, Duration::from_secs(15));
        assert_eq!(config.restart.attempts, 5);
        assert_eq!(config.restart.max, Duration::from_secs(30));
        assert_eq!(config.logs.max_size, 10 * 1024 * 1024);
        assert_eq!(config.logs.keep, 3);
        assert_eq!(Config::empty().source, None);
    }

    /// The documented example parses to exactly the values it spells out.
    #[test]
    fn full_example() {
        let config = parse(FULL).unwrap();
        assert_eq!(config.projects, vec![PathBuf::from("/abs/path")]);
        assert_eq!(config.restart, RestartPolicy::default());
        assert_eq!(config.logs, LogPolicy::default());
        let expected = ServiceSpec {
            name: "web".into(),
            service_type: ServiceType::Global,
            kind: "daemon".into(),
            command: ["python3", "-m", "http.server", "8765"]
                .map(String::from)
                .to_vec(),
            cwd: Some(".".into()),
            env: BTreeMap::from([("PORT".to_string(), "8765".to_string())]),
            health: Some(HealthSpec::Port {
                host: "127.0.0.1".into(),
                port: 8765,
            }),
            start_period: Duration::from_secs(2),
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(2),
            restart: RestartPolicy {
                attempts: 3,
                ..RestartPolicy::default()
            },
            options: json!({ "a": 1 }),
        };
        assert_eq!(config.services, vec![expected]);
    }

    /// Optional service keys take their documented defaults.
    #[test]
    fn service_defaults() {
        let config = parse(&web("")).unwrap();
        let spec = &config.services[0];
        assert_eq!(spec.kind, DEFAULT_KIND);
        assert_eq!(spec.cwd, None);
        assert_eq!(spec.health, None);
        assert_eq!(spec.start_period, Duration::ZERO);
        assert_eq!(spec.stop_signal, Signal::SIGTERM);
        assert_eq!(spec.stop_timeout, Duration::from_secs(2));
        assert_eq!(spec.restart, RestartPolicy::default());
        assert_eq!(spec.options, json!({}));
    }

    /// A service's `restart` overrides only the keys it names, over the
    /// file's `[restart]`, not over the built-in defaults.
    #[test]
    fn restart_override_merges() {
        let text = format!(
            "[restart]\nbase = \"250ms\"\nattempts = 7\n{}",
            web("restart = { max = \"5s\", attempts = 2 }\n")
        ) + "[[service]]\nname = \"other\"\ntype = \"global\"\ncommand = [\"x\"]\n";
        let config = parse(&text).unwrap();
        let file = RestartPolicy {
            base: Duration::from_millis(250),
            attempts: 7,
            ..RestartPolicy::default()
        };
        assert_eq!(config.restart, file);
        assert_eq!(
            config.services[0].restart,
            RestartPolicy {
                max: Duration::from_secs(5),
                attempts: 2,
                ..file
            }
        );
        assert_eq!(config.services[1].restart, file);
    }

    /// The other health forms, their defaults, and extension kinds.
    #[test]
    fn health_forms_and_kinds() {
        let file = parse(&web(
            "health = { file = \"/tmp/hb\" }\nkind = \"vkb-kind\"\n",
        ))
        .unwrap();
        assert_eq!(
            file.services[0].health,
            Some(HealthSpec::File {
                path: "/tmp/hb".into(),
                max_age: Duration::from_secs(30)
            })
        );
        assert_eq!(file.services[0].kind, "vkb-kind");
        let probe = parse(&web(
            "health = { probe = \"http\", options = { path = \"/ok\" } }\nstop-signal = \"sigint\"\n",
        ))
        .unwrap();
        assert_eq!(
            probe.services[0].health,
            Some(HealthSpec::Probe {
                name: "http".into(),
                options: json!({ "path": "/ok" })
            })
        );
        assert_eq!(probe.services[0].stop_signal, Signal::SIGINT);
        let host = parse(&web("health = { port = 80, host = \"::1\" }\n")).unwrap();
        assert_eq!(
            host.services[0].health,
            Some(HealthSpec::Port {
                host: "::1".into(),
                port: 80
            })
        );
    }

    /// The same name is fine for different types, not within one type.
    #[test]
    fn names_are_unique_per_type() {
        let two_types =
            web("") + "[[service]]\nname = \"web\"\ntype = \"per-project\"\ncommand = [\"x\"]\n";
        assert_eq!(parse(&two_types).unwrap().services.len(), 2);
        let dup = web("") + "[[service]]\nname = \"web\"\ntype = \"global\"\ncommand = [\"x\"]\n";
        assert_error(&dup, Some(6), &["duplicate 'name'", "'web'", "line 2"]);
    }

    /// Every rejected input says file, line, key (and service) on one line.
    #[test]
    fn bad_inputs_name_file_line_and_key() {
        let cases: Vec<(String, Option<usize>, Vec<&str>)> = vec![
            // Schema errors reported by toml, reworded.
            (
                "helth = 1\n".into(),
                Some(1),
                vec!["unknown key 'helth'", "health-interval"],
            ),
            (
                web("helth = { port = 1 }\n"),
                Some(5),
                vec![
                    "unknown key 'helth'",
                    "[[service]] 'web'",
                    "expected one of",
                ],
            ),
            (
                web("health = { prot = 1 }\n"),
                Some(5),
                vec!["unknown key 'prot'", "'health' of [[service]] 'web'"],
            ),
            (
                "[logs]\nkeep = 1\nsize = 2\n".into(),
                Some(3),
                vec!["unknown key 'size'", "[logs]", "max-size"],
            ),
            (
                "\n\nhealth-interval = \"5 parsecs\"\n".into(),
                Some(3),
                vec![
                    "invalid duration '5 parsecs'",
                    "'health-interval'",
                    "\"250ms\"",
                ],
            ),
            (
                "[restart]\nbase = \"1s\"\nstable-after = \"soon\"\n".into(),
                Some(3),
                vec!["'stable-after'", "[restart]", "humantime"],
            ),
            (
                web("restart = { max = \"x\" }\n"),
                Some(5),
                vec![
                    "invalid duration 'x'",
                    "'max'",
                    "'restart' of [[service]] 'web'",
                ],
            ),
            (
                web("stop-timeout = \"2 s s\"\n"),
                Some(5),
                vec!["'stop-timeout'", "[[service]] 'web'"],
            ),
            (
                web("health = { port = \"a\" }\n"),
                Some(5),
                vec!["'port'", "[[service]] 'web'", "u16"],
            ),
            (
                "[restart]\nattempts = -1\n".into(),
                Some(2),
                vec!["'attempts'", "[restart]"],
            ),
            (
                "[[service]]\nname = \"web\"\ncommand = [\"x\"]\n".into(),
                Some(1),
                vec!["missing key 'type'", "[[service]] 'web'"],
            ),
            ("x = [\n".into(), Some(2), vec!["TOML syntax"]),
            // Semantic errors found after deserializing.
            (
                "[[service]]\nname = \"web\"\ntype = \"per-session\"\ncommand = [\"x\"]\n".into(),
                Some(3),
                vec![
                    "per-session",
                    "'type'",
                    "[[service]] 'web'",
                    "global or per-project",
                ],
            ),
            (
                "[[service]]\nname = \"web\"\ntype = \"local\"\ncommand = [\"x\"]\n".into(),
                Some(3),
                vec!["'type' 'local'", "[[service]] 'web'"],
            ),
            (
                "[[service]]\nname = \"web\"\ntype = \"global\"\ncommand = []\n".into(),
                Some(4),
                vec!["empty 'command'", "[[service]] 'web'"],
            ),
            (
                "[[service]]\nname = \"web\"\ntype = \"global\"\ncommand = [\"\", \"a\"]\n".into(),
                Some(4),
                vec!["empty 'command'"],
            ),
            (
                "[[service]]\nname = \"we b\"\ntype = \"global\"\ncommand = [\"x\"]\n".into(),
                Some(2),
                vec!["'we b'", "'name'", "[[service]] #1"],
            ),
            (
                web("health = { port = 1, file = \"/f\" }\n"),
                Some(5),
                vec![
                    "exactly one",
                    "port and file",
                    "'health'",
                    "[[service]] 'web'",
                ],
            ),
            (
                web("health = { host = \"h\" }\n"),
                Some(5),
                vec!["exactly one", "found none", "'health'"],
            ),
            (
                web("health = { file = \"/f\", host = \"h\" }\n"),
                Some(5),
                vec!["'host'", "'health'", "only goes with 'port'"],
            ),
            (
                web("health = { port = 0 }\n"),
                Some(5),
                vec!["'port' 0", "[[service]] 'web'"],
            ),
            (
                web("\nstop-signal = \"BOGUS\"\n"),
                Some(6),
                vec![
                    "unknown signal 'BOGUS'",
                    "'stop-signal'",
                    "[[service]] 'web'",
                ],
            ),
            (
                web("kind = \"bad kind\"\n"),
                Some(5),
                vec!["'bad kind'", "'kind'", "[[service]] 'web'"],
            ),
            (
                web("env = { \"A=B\" = \"1\" }\n"),
                Some(5),
                vec!["'A=B'", "'env'", "[[service]] 'web'"],
            ),
            (
                "# c\nprojects = [\"/a\",\n  \"rel/p\"]\n".into(),
                Some(3),
                vec!["'projects'", "'rel/p'", "absolute"],
            ),
            (
                "\nhealth-interval = \"0s\"\n".into(),
                Some(2),
                vec!["'health-interval'", "greater than 0"],
            ),
        ];
        for (text, line, needles) in cases {
            assert_error(&text, line, &needles);
        }
    }

    /// The error's line counts lines of the file, with services further down.
    #[test]
    fn second_service_errors_point_at_it() {
        let text = web("")
            + "\n[[service]]\nname = \"api\"\ntype = \"global\"\ncommand = [\"x\"]\ncolour = 1\n";
        assert_error(
            &text,
            Some(10),
            &["unknown key 'colour'", "[[service]] 'api'"],
        );
    }

    /// `load` distinguishes a missing file from a bad one.
    #[test]
    fn load_missing_and_present() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("psm.toml");
        assert!(matches!(Config::load(&path), Err(ConfigError::Missing(p)) if p == path));
        std::fs::write(&path, FULL).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.source, Some(path.clone()));
        assert_eq!(config.services.len(), 1);
    }

    /// Per-project instances expand placeholders and resolve cwd; global
    /// instances are plain clones.
    #[test]
    fn instantiate_expands_and_resolves_cwd() {
        let text = r#"
[[service]]
name = "kb"
type = "per-project"
command = ["kb", "--dir", "{project}", "--name={project_name}"]
cwd = "{project}/sub"
env = { NAME = "{project_name}", PLAIN = "x" }
health = { file = "{project}/.hb" }
[[service]]
name = "rel"
type = "per-project"
command = ["x"]
cwd = "tools"
[[service]]
name = "dash"
type = "global"
command = ["dash", "{project}"]
"#;
        let config = parse(text).unwrap();
        let root = Path::new("/r");
        let project = Path::new("/code/proj");

        let kb = config.services[0].instantiate(root, Some(project));
        assert_eq!(
            kb.key,
            ServiceKey::new("kb", Scope::Project("/code/proj".into()))
        );
        assert_eq!(kb.label, "kb@proj");
        assert_eq!(
            kb.spec.command,
            ["kb", "--dir", "/code/proj", "--name=proj"]
        );
        assert_eq!(kb.spec.cwd.as_deref(), Some("/code/proj/sub"));
        assert_eq!(kb.cwd, Path::new("/code/proj/sub"));
        assert_eq!(kb.spec.env["NAME"], "proj");
        assert_eq!(kb.spec.env["PLAIN"], "x");
        assert!(
            matches!(&kb.spec.health, Some(HealthSpec::File { path, .. }) if path == "/code/proj/.hb")
        );

        let rel = config.services[1].instantiate(root, Some(project));
        assert_eq!(rel.cwd, Path::new("/r/tools"));
        let mut no_cwd = config.services[1].clone();
        no_cwd.cwd = None;
        assert_eq!(no_cwd.instantiate(root, Some(project)).cwd, project);

        let dash = config.services[2].instantiate(root, Some(project));
        assert_eq!(dash.key, ServiceKey::global("dash"));
        assert_eq!(dash.label, "dash");
        assert_eq!(dash.spec, config.services[2]);
        assert_eq!(dash.cwd, root);
    }
}
