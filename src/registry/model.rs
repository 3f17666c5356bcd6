//! The registry file's data, in the seed's layout: camelCase keys, times in
//! milliseconds since the epoch. Every struct keeps the fields it does not know
//! in `extra`, so a rewrite by psm never drops what another tool wrote.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::process::{Identity, Marker, StopRequest};

pub const REGISTRY_VERSION: &str = "3.0.0";

/// The whole registry file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registry {
    #[serde(default = "current_version")]
    pub version: String,
    #[serde(default)]
    pub last_change: u64,
    #[serde(default)]
    pub sessions: BTreeMap<String, SessionRecord>,
    #[serde(default)]
    pub services: Services,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn current_version() -> String {
    REGISTRY_VERSION.to_string()
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            version: current_version(),
            last_change: 0,
            sessions: BTreeMap::new(),
            services: Services::default(),
            extra: Map::new(),
        }
    }
}

/// Services by scope: `global` by name, `projects` and `sessions` by owner, then name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Services {
    #[serde(default)]
    pub global: BTreeMap<String, ServiceRecord>,
    #[serde(default)]
    pub projects: BTreeMap<String, BTreeMap<String, ServiceRecord>>,
    #[serde(default)]
    pub sessions: BTreeMap<String, BTreeMap<String, ServiceRecord>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The three kinds of service the seed defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceType {
    Global,
    PerProject,
    PerSession,
}

impl ServiceType {
    pub const ALL: [ServiceType; 3] = [Self::Global, Self::PerProject, Self::PerSession];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::PerProject => "per-project",
            Self::PerSession => "per-session",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a service lives in the registry: its type plus the owner it needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Global,
    Project(String),
    Session(String),
}

impl Scope {
    pub fn service_type(&self) -> ServiceType {
        match self {
            Scope::Global => ServiceType::Global,
            Scope::Project(_) => ServiceType::PerProject,
            Scope::Session(_) => ServiceType::PerSession,
        }
    }

    /// The project path or session id, if the scope has one.
    pub fn owner(&self) -> Option<&str> {
        match self {
            Scope::Global => None,
            Scope::Project(p) | Scope::Session(p) => Some(p),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Project(p) => write!(f, "per-project {p}"),
            Scope::Session(s) => write!(f, "per-session {s}"),
        }
    }
}

/// A service's address: scope + name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub scope: Scope,
    pub name: String,
}

impl ServiceKey {
    pub fn new(name: impl Into<String>, scope: Scope) -> Self {
        ServiceKey {
            scope,
            name: name.into(),
        }
    }

    pub fn global(name: impl Into<String>) -> Self {
        Self::new(name, Scope::Global)
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.scope)
    }
}

/// One service record: the seed's fields, then psm's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRecord {
    /// `null` while the service has no process (failed, or between restarts).
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub script: String,
    #[serde(rename = "type")]
    pub service_type: ServiceType,
    #[serde(default)]
    pub start_time: u64,
    #[serde(default)]
    pub last_health_check: u64,
    #[serde(default = "running")]
    pub status: String,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The kernel's start time of `pid`; without it psm cannot vouch for the pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start_time: Option<u64>,
    #[serde(default)]
    pub restart_count: u32,
    /// Set when `pid` leads its own process group: stopping it stops the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<i32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn running() -> String {
    status::RUNNING.to_string()
}

/// The status strings psm writes. Others (written by other tools) are kept as is.
pub mod status {
    /// Running and ready: its probe has passed (or, without one, it stayed
    /// up for its start period).
    pub const RUNNING: &str = "running";
    /// Spawned, not yet ready.
    pub const STARTING: &str = "starting";
    /// Not started: held back until its dependencies are ready. The record
    /// has no process; `metadata.waiting` says for what.
    pub const WAITING: &str = "waiting";
    pub const BACKOFF: &str = "backoff";
    pub const FAILED: &str = "failed";
    pub const STOPPED: &str = "stopped";
    /// Not stored: what psm shows for a record whose process is gone.
    pub const DEAD: &str = "dead";
}

impl ServiceRecord {
    /// A running service record for `identity`, stamped `now`.
    pub fn new(scope: &Scope, script: impl Into<String>, identity: Identity, now: u64) -> Self {
        ServiceRecord {
            pid: Some(identity.pid),
            script: script.into(),
            service_type: scope.service_type(),
            start_time: now,
            last_health_check: now,
            status: running(),
            metadata: Map::new(),
            project_path: match scope {
                Scope::Project(p) => Some(p.clone()),
                _ => None,
            },
            session_id: match scope {
                Scope::Session(s) => Some(s.clone()),
                _ => None,
            },
            pid_start_time: Some(identity.start_time),
            restart_count: 0,
            pgid: None,
            extra: Map::new(),
        }
    }

    /// A record of a service that has no process right now (between
    /// restarts, failed, or stopped).
    pub fn without_process(scope: &Scope, script: impl Into<String>, now: u64) -> Self {
        ServiceRecord {
            pid: None,
            pid_start_time: None,
            ..Self::new(
                scope,
                script,
                Identity {
                    pid: 0,
                    start_time: 0,
                },
                now,
            )
        }
    }

    /// The recorded identity, if the record has both pid and start time.
    pub fn identity(&self) -> Option<Identity> {
        Some(Identity {
            pid: self.pid?,
            start_time: self.pid_start_time?,
        })
    }

    /// The environment marker psm set when it spawned this record's process,
    /// by which the members of its group prove their descent once it is gone
    /// (`process::group`). `name` is the record's name in its scope. A process
    /// psm did not spawn (registered by hand) has none: only it is signalled.
    pub fn marker(&self, name: &str, root: &std::path::Path) -> Marker {
        let managed_by = self.metadata.get("managedBy").and_then(Value::as_str);
        match (managed_by, self.service_type, &self.session_id) {
            (Some("coordinator"), _, _) => self
                .metadata
                .get("instance")
                .and_then(Value::as_str)
                .map_or_else(Marker::none, |label| Marker::service(root, label)),
            (Some("session"), ServiceType::PerSession, Some(session)) => {
                Marker::session_service(root, session, name)
            }
            _ => Marker::none(),
        }
    }

    /// How to stop this record's process and the group it leads, or `None`
    /// when the record names no process that psm could vouch for.
    pub fn stop_request(
        &self,
        name: &str,
        root: &std::path::Path,
        grace: std::time::Duration,
    ) -> Option<StopRequest> {
        Some(
            StopRequest::new(self.identity()?, self.pgid, grace)
                .with_marker(self.marker(name, root)),
        )
    }

    /// True only while the recorded process runs. A record without a start
    /// time (written by the seed) cannot be vouched for and counts as dead:
    /// unknown is never healthy.
    pub fn is_alive(&self) -> bool {
        self.identity().is_some_and(|id| id.is_alive())
    }
}

/// The record keys of the exit history: kept in `extra`, read leniently as
/// JSON, so a `lastExit` another tool wrote in another shape (a plain
/// string, say) never makes the registry unreadable.
pub const LAST_EXIT_KEY: &str = "lastExit";
pub const EXITS_KEY: &str = "exits";
/// How many exits a record keeps for `psm status <service>`.
pub const EXITS_KEPT: usize = 5;

/// One end of a run: an exit, a start that failed, a probe that failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Milliseconds since the epoch.
    pub time: u64,
    pub code: Option<i32>,
    /// The signal's name ("SIGKILL").
    pub signal: Option<String>,
    /// For a person: "exited with code 3", "killed by SIGKILL", ...
    pub reason: String,
}

impl ExitRecord {
    /// An end seen now whose exit status psm cannot know (the process was
    /// not its child).
    pub fn unknown(reason: &str) -> ExitRecord {
        ExitRecord {
            time: crate::time::now_millis(),
            code: None,
            signal: None,
            reason: reason.to_string(),
        }
    }
}

impl ServiceRecord {
    /// Records `exit` as the last one and appends it to the bounded history.
    pub fn set_exits<'a>(&mut self, exits: impl IntoIterator<Item = &'a ExitRecord>) {
        let exits: Vec<Value> = exits
            .into_iter()
            .filter_map(|e| serde_json::to_value(e).ok())
            .collect();
        match exits.last() {
            Some(last) => {
                self.extra.insert(LAST_EXIT_KEY.into(), last.clone());
                self.extra.insert(EXITS_KEY.into(), Value::Array(exits));
            }
            None => {
                self.extra.remove(LAST_EXIT_KEY);
                self.extra.remove(EXITS_KEY);
            }
        }
    }

    /// The recorded exits, oldest first: those psm can read, at most
    /// [`EXITS_KEPT`].
    pub fn exits(&self) -> Vec<ExitRecord> {
        let Some(Value::Array(all)) = self.extra.get(EXITS_KEY) else {
            return Vec::new();
        };
        let exits: Vec<ExitRecord> = all
            .iter()
            .filter_map(|e| serde_json::from_value(e.clone()).ok())
            .collect();
        let skip = exits.len().saturating_sub(EXITS_KEPT);
        exits.into_iter().skip(skip).collect()
    }

    /// The last exit as recorded, in whatever shape it was written.
    pub fn last_exit(&self) -> Option<&Value> {
        self.extra
            .get(LAST_EXIT_KEY)
            .or_else(|| self.metadata.get(LAST_EXIT_KEY))
    }

    /// The last exit's reason: `lastExit.reason`, or a plain `lastExit`
    /// string (as the job example writes), at the top level or in metadata.
    pub fn last_exit_reason(&self) -> Option<String> {
        exit_reason(self.last_exit()?).map(str::to_string)
    }

    /// What a `waiting` service waits for (`waiting for db`); `None` for
    /// any other status.
    pub fn waiting_reason(&self) -> Option<String> {
        if self.status != status::WAITING {
            return None;
        }
        let reason = self.metadata.get(status::WAITING).and_then(Value::as_str);
        Some(reason.unwrap_or("waiting for its dependencies").to_string())
    }
}

/// The reason in a recorded `lastExit`: its `reason`, or the value itself
/// when it is a plain string.
pub fn exit_reason(last_exit: &Value) -> Option<&str> {
    match last_exit {
        Value::String(s) => Some(s),
        other => other.get("reason")?.as_str(),
    }
}

/// A terminal session whose per-session services end with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    pub pid: i32,
    #[serde(default)]
    pub project_path: String,
    #[serde(default)]
    pub start_time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start_time: Option<u64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SessionRecord {
    pub fn identity(&self) -> Option<Identity> {
        Some(Identity {
            pid: self.pid,
            start_time: self.pid_start_time?,
        })
    }

    pub fn is_alive(&self) -> bool {
        self.identity().is_some_and(|id| id.is_alive())
    }
}

impl Registry {
    /// The services of one scope, if any exist.
    pub fn scope(&self, scope: &Scope) -> Option<&BTreeMap<String, ServiceRecord>> {
        match scope {
            Scope::Global => Some(&self.services.global),
            Scope::Project(p) => self.services.projects.get(p),
            Scope::Session(s) => self.services.sessions.get(s),
        }
    }

    fn scope_mut(&mut self, scope: &Scope) -> &mut BTreeMap<String, ServiceRecord> {
        match scope {
            Scope::Global => &mut self.services.global,
            Scope::Project(p) => self.services.projects.entry(p.clone()).or_default(),
            Scope::Session(s) => self.services.sessions.entry(s.clone()).or_default(),
        }
    }

    pub fn get(&self, key: &ServiceKey) -> Option<&ServiceRecord> {
        self.scope(&key.scope)?.get(&key.name)
    }

    pub fn get_mut(&mut self, key: &ServiceKey) -> Option<&mut ServiceRecord> {
        match &key.scope {
            Scope::Global => self.services.global.get_mut(&key.name),
            Scope::Project(p) => self.services.projects.get_mut(p)?.get_mut(&key.name),
            Scope::Session(s) => self.services.sessions.get_mut(s)?.get_mut(&key.name),
        }
    }

    /// Inserts or replaces a record.
    pub fn insert(&mut self, key: &ServiceKey, record: ServiceRecord) {
        self.scope_mut(&key.scope).insert(key.name.clone(), record);
    }

    /// Removes a record, dropping its project/session map once empty.
    pub fn remove(&mut self, key: &ServiceKey) -> Option<ServiceRecord> {
        let (map, owner) = match &key.scope {
            Scope::Global => return self.services.global.remove(&key.name),
            Scope::Project(p) => (&mut self.services.projects, p),
            Scope::Session(s) => (&mut self.services.sessions, s),
        };
        let scoped = map.get_mut(owner)?;
        let removed = scoped.remove(&key.name);
        if scoped.is_empty() {
            map.remove(owner);
        }
        removed
    }

    /// Every service with its key, global first, then projects, then sessions.
    pub fn services(&self) -> impl Iterator<Item = (ServiceKey, &ServiceRecord)> {
        let global = self
            .services
            .global
            .iter()
            .map(|(n, r)| (ServiceKey::global(n.clone()), r));
        let projects = self.services.projects.iter().flat_map(|(p, m)| {
            m.iter()
                .map(move |(n, r)| (ServiceKey::new(n.clone(), Scope::Project(p.clone())), r))
        });
        let sessions = self.services.sessions.iter().flat_map(|(s, m)| {
            m.iter()
                .map(move |(n, r)| (ServiceKey::new(n.clone(), Scope::Session(s.clone())), r))
        });
        global.chain(projects).chain(sessions)
    }

    /// The sessions whose services must end now: every registered session
    /// whose process is gone (`alive` judges a session), and every session
    /// scope that holds services but has no session record at all (it never
    /// existed, or was cleaned up while a service was being filed under it).
    /// Sorted, each once.
    pub fn sessions_to_end(&self, alive: impl Fn(&SessionRecord) -> bool) -> Vec<String> {
        let dead = self
            .sessions
            .iter()
            .filter(|(_, s)| !alive(s))
            .map(|(id, _)| id);
        let orphaned = self
            .services
            .sessions
            .iter()
            .filter(|(id, services)| !services.is_empty() && !self.sessions.contains_key(*id))
            .map(|(id, _)| id);
        let ids: std::collections::BTreeSet<&String> = dead.chain(orphaned).collect();
        ids.into_iter().cloned().collect()
    }

    pub fn service_count(&self) -> usize {
        self.services.global.len()
            + self
                .services
                .projects
                .values()
                .map(BTreeMap::len)
                .sum::<usize>()
            + self
                .services
                .sessions
                .values()
                .map(BTreeMap::len)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry example from the seed's specification, verbatim.
    const SEED_EXAMPLE: &str = include_str!("../../tests/data/seed-registry.json");

    #[test]
    fn seed_example_loads_and_keeps_unknown_fields() {
        let mut value: Value = serde_json::from_str(SEED_EXAMPLE).unwrap();
        value["futureField"] = Value::from("kept");
        value["services"]["global"]["global-service-coordinator"]["color"] = Value::from("blue");
        let reg: Registry = serde_json::from_value(value).unwrap();
        assert_eq!(reg.service_count(), 2);
        let coord = reg
            .get(&ServiceKey::global("global-service-coordinator"))
            .unwrap();
        assert_eq!(coord.pid, Some(24834));
        assert_eq!(coord.metadata["managedBy"], "watchdog");
        let back = serde_json::to_value(&reg).unwrap();
        assert_eq!(back["futureField"], "kept");
        assert_eq!(
            back["services"]["global"]["global-service-coordinator"]["color"],
            "blue"
        );
        assert_eq!(
            back["sessions"]["claude-12345-1234567890"]["projectPath"],
            "/path/to/project"
        );
    }

    #[test]
    fn sessions_to_end_table() {
        let session = |pid| SessionRecord {
            pid,
            project_path: String::new(),
            start_time: 0,
            pid_start_time: Some(1),
            extra: Map::new(),
        };
        let id = Identity {
            pid: 10,
            start_time: 1,
        };
        let with_service = |reg: &mut Registry, s: &str| {
            let key = ServiceKey::new("svc", Scope::Session(s.into()));
            reg.insert(&key, ServiceRecord::new(&key.scope, "x", id, 0));
        };
        // Sessions with pid 1 are "alive", any other pid "dead".
        let alive = |s: &SessionRecord| s.pid == 1;
        // (what, sessions as (id, pid), session scopes with a service, want)
        type Case<'a> = (&'a str, Vec<(&'a str, i32)>, Vec<&'a str>, Vec<&'a str>);
        let cases: Vec<Case> = vec![
            ("nothing registered", vec![], vec![], vec![]),
            (
                "live session with services",
                vec![("a", 1)],
                vec!["a"],
                vec![],
            ),
            (
                "dead session without services",
                vec![("a", 2)],
                vec![],
                vec!["a"],
            ),
            (
                "dead session with services",
                vec![("a", 2)],
                vec!["a"],
                vec!["a"],
            ),
            (
                "services under no session",
                vec![],
                vec!["nope"],
                vec!["nope"],
            ),
            (
                "mixed",
                vec![("live", 1), ("dead", 2)],
                vec!["live", "dead", "gone"],
                vec!["dead", "gone"],
            ),
        ];
        for (what, sessions, scopes, want) in cases {
            let mut reg = Registry::default();
            for (s, pid) in sessions {
                reg.sessions.insert(s.into(), session(pid));
            }
            for s in scopes {
                with_service(&mut reg, s);
            }
            assert_eq!(reg.sessions_to_end(alive), want, "{what}");
        }
    }

    #[test]
    fn markers_follow_who_spawned_the_record() {
        let root = std::path::Path::new("/r");
        let id = Identity {
            pid: 10,
            start_time: 1,
        };
        let record = |scope: &Scope, meta: &[(&str, &str)]| {
            let mut r = ServiceRecord::new(scope, "x", id, 0);
            for (k, v) in meta {
                r.metadata.insert((*k).into(), Value::from(*v));
            }
            r
        };
        let session = Scope::Session("s1".into());
        let cases = [
            (
                "coordinator service: its instance label",
                record(
                    &Scope::Global,
                    &[("managedBy", "coordinator"), ("instance", "web@p")],
                ),
                Marker::service(root, "web@p"),
            ),
            (
                "coordinator record without a label proves nothing",
                record(&Scope::Global, &[("managedBy", "coordinator")]),
                Marker::none(),
            ),
            (
                "session spawn: session and name",
                record(&session, &[("managedBy", "session")]),
                Marker::session_service(root, "s1", "svc"),
            ),
            ("registered by hand", record(&session, &[]), Marker::none()),
            (
                "a foreign managedBy",
                record(&Scope::Global, &[("managedBy", "watchdog")]),
                Marker::none(),
            ),
        ];
        for (what, r, want) in cases {
            assert_eq!(r.marker("svc", root), want, "{what}");
        }
    }

    #[test]
    fn remove_prunes_empty_owner_maps() {
        let mut reg = Registry::default();
        let key = ServiceKey::new("t", Scope::Project("/p".into()));
        let id = Identity {
            pid: 10,
            start_time: 1,
        };
        reg.insert(&key, ServiceRecord::new(&key.scope, "s", id, 0));
        assert_eq!(reg.services().count(), 1);
        assert!(reg.remove(&key).is_some());
        assert!(reg.services.projects.is_empty());
    }

    /// Exits round-trip through the record's JSON; a `lastExit` or `exits`
    /// in another shape (another tool's) is kept, read as far as it can be,
    /// and never makes the record unreadable.
    #[test]
    fn exits_are_kept_leniently() {
        let id = Identity {
            pid: 10,
            start_time: 1,
        };
        let mut r = ServiceRecord::new(&Scope::Global, "s", id, 0);
        let exit = |n: u64| ExitRecord {
            time: n,
            code: Some(n as i32),
            signal: None,
            reason: format!("exited with code {n}"),
        };
        let all: Vec<ExitRecord> = (1..=7).map(exit).collect();
        r.set_exits(&all);
        let back: ServiceRecord =
            serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(back.exits(), all[2..].to_vec());
        assert_eq!(
            back.last_exit_reason().as_deref(),
            Some("exited with code 7")
        );

        let theirs = serde_json::json!({
            "pid": 5, "type": "global",
            "lastExit": "oom", "exits": ["x", {"time": 1}, serde_json::to_value(exit(2)).unwrap()],
        });
        let r: ServiceRecord = serde_json::from_value(theirs.clone()).unwrap();
        assert_eq!(r.last_exit_reason().as_deref(), Some("oom"));
        assert_eq!(r.exits(), vec![exit(2)]);
        let again = serde_json::to_value(&r).unwrap();
        assert_eq!(again["lastExit"], theirs["lastExit"]);
        assert_eq!(again["exits"], theirs["exits"]);
        assert_eq!(exit_reason(&serde_json::json!(3)), None);
    }
}
