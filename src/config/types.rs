//! The validated configuration: what the coordinator, services and `verify`
//! read. Every value here has passed validation; nothing here parses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::registry::{Scope, ServiceKey, ServiceType};

/// The kind of a service that is a plain supervised process.
pub const DEFAULT_KIND: &str = "daemon";

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
    pub control: ControlPolicy,
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
    /// Each line of a service's log starts with the time it was written.
    pub timestamps: bool,
}

impl Default for LogPolicy {
    fn default() -> Self {
        LogPolicy {
            max_size: 10 * 1024 * 1024,
            keep: 3,
            timestamps: false,
        }
    }
}

/// Limits of the control socket (`[control]`). Read when the coordinator
/// starts; a reload does not change them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlPolicy {
    /// Connections served at once; one more is told "busy" and closed.
    pub max_connections: u32,
    /// A connection that sends no complete request for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ControlPolicy {
    fn default() -> Self {
        ControlPolicy {
            max_connections: 64,
            idle_timeout: Duration::from_secs(60),
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
    /// Services that must be ready before this one starts (`depends-on`):
    /// known names, never itself, no cycle. A per-project service's name
    /// means the per-project service of the same project if there is one,
    /// else the global one.
    pub depends_on: Vec<String>,
    /// Dependencies whose every new ready run restarts this service
    /// (`restart-with`); each is also in `depends_on`.
    pub restart_with: Vec<String>,
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

impl Config {
    /// All defaults, no services, no source.
    pub fn empty() -> Config {
        Config {
            source: None,
            health_interval: Duration::from_secs(15),
            projects: Vec::new(),
            restart: RestartPolicy::default(),
            logs: LogPolicy::default(),
            control: ControlPolicy::default(),
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

/// The service a dependency `name` of a service of type `of` means: for a
/// per-project service, the per-project service of that name (of the same
/// project) if the config has one, else the global one; for a global
/// service, only a global one. `None`: no such service.
pub fn resolve_dependency(specs: &[ServiceSpec], of: ServiceType, name: &str) -> Option<usize> {
    let find = |t: ServiceType| {
        specs
            .iter()
            .position(|s| s.service_type == t && s.name == name)
    };
    match of {
        ServiceType::PerProject => {
            find(ServiceType::PerProject).or_else(|| find(ServiceType::Global))
        }
        _ => find(ServiceType::Global),
    }
}

impl Instance {
    /// The instances this one depends on, by key, in its own scope (see
    /// [`resolve_dependency`]); names the config does not have are skipped
    /// (validation refuses them).
    pub fn dependency_keys(&self, specs: &[ServiceSpec]) -> Vec<ServiceKey> {
        self.spec
            .depends_on
            .iter()
            .filter_map(|name| {
                let i = resolve_dependency(specs, self.spec.service_type, name)?;
                Some(match (&specs[i].service_type, &self.key.scope) {
                    (ServiceType::PerProject, scope) => {
                        ServiceKey::new(name.clone(), scope.clone())
                    }
                    _ => ServiceKey::global(name.clone()),
                })
            })
            .collect()
    }
}

fn resolve_cwd(root: &Path, cwd: Option<&str>, default: &Path) -> PathBuf {
    match cwd {
        // `join` keeps an absolute cwd as it is.
        Some(dir) => root.join(dir),
        None => default.to_path_buf(),
    }
}
