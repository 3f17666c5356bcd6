//! The seed's Process State Manager API, in Rust: register, query, refresh,
//! sessions and cleanup. Short-lived CLI processes and the coordinator both
//! go through it, so every rule lives here once:
//! - a pid is recorded with its start time, and only a matching process counts;
//! - long waits (terminating processes) never happen while the registry lock is
//!   held: records are read, processes stopped, then records removed only if
//!   they still describe what was stopped.

use std::collections::BTreeMap;
use std::thread;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use super::model::{
    status, Registry, Scope, ServiceKey, ServiceRecord, ServiceType, SessionRecord,
};
use super::store::{Store, StoreError};
use crate::process::{terminate, Identity, ProcInfo, StopOutcome};
use crate::time::now_millis;

/// Default time between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("pid {0} is not a running process")]
    NotAlive(i32),
    #[error("service {0} is not registered")]
    NotFound(ServiceKey),
    #[error("session {0} is not registered")]
    SessionNotFound(String),
    #[error("session {0} is not registered or has ended; start the service inside a live session (`psm session run -- CMD`, or `psm session register` first)")]
    SessionClosed(String),
}

/// What `register_service` records.
#[derive(Debug, Clone)]
pub struct Registration {
    pub key: ServiceKey,
    pub pid: i32,
    pub script: String,
    pub metadata: Map<String, Value>,
}

/// A process that cleanup stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Terminated {
    pub name: String,
    pub pid: i32,
}

/// Result of `cleanup_session`, in the seed's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SessionCleanup {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub session: String,
    /// Records removed.
    pub cleaned: usize,
    /// Processes that were running and were stopped.
    pub terminated: Vec<Terminated>,
}

/// Result of `cleanup_dead_processes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// Records whose process was gone, removed.
    pub removed: Vec<Terminated>,
    /// Sessions whose process was gone, cleaned up.
    pub sessions: Vec<SessionCleanup>,
}

impl CleanupReport {
    /// Every record removed, directly or with a session.
    pub fn cleaned(&self) -> usize {
        self.removed.len() + self.sessions.iter().map(|s| s.cleaned).sum::<usize>()
    }
}

/// One service as `status` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceHealth {
    pub name: String,
    #[serde(rename = "type")]
    pub service_type: ServiceType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub pid: Option<i32>,
    /// The recorded status, or `dead` when the recorded process is gone.
    pub status: String,
    pub healthy: bool,
    pub start_time: u64,
    pub last_health_check: u64,
    pub restart_count: u32,
    /// Percent of one core used by the service's process tree (running
    /// services only; filled in by the CLI, which measures it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Resident bytes of the service's process tree (running services only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss: Option<u64>,
    /// The record's `lastExit`, as recorded: why it last ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<serde_json::Value>,
    /// For a `waiting` service, what it waits for: `waiting for db`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// One session as `status` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionHealth {
    pub id: String,
    pub pid: i32,
    pub project_path: String,
    pub start_time: u64,
    pub alive: bool,
    pub services: usize,
}

/// `get_health_status`, in the seed's shape plus sessions.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthStatus {
    pub total_services: usize,
    pub healthy_services: usize,
    pub unhealthy_services: usize,
    pub by_service_type: BTreeMap<ServiceType, usize>,
    pub details: Vec<ServiceHealth>,
    pub sessions: Vec<SessionHealth>,
}

/// The Process State Manager of one root.
#[derive(Debug, Clone)]
pub struct StateManager {
    store: Store,
    grace: Duration,
}

impl StateManager {
    pub fn new(store: Store) -> Self {
        StateManager {
            store,
            grace: DEFAULT_GRACE,
        }
    }

    /// Sets the time between SIGTERM and SIGKILL when stopping services.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The time between SIGTERM and SIGKILL.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Records a running process as a service, replacing any record of that
    /// name in that scope. The process must be alive; its start time and (if
    /// it leads its own group) its process group are recorded with it.
    pub fn register_service(&self, reg: Registration) -> Result<ServiceRecord, ManagerError> {
        let info = ProcInfo::read(reg.pid)
            .filter(|i| !i.zombie)
            .ok_or(ManagerError::NotAlive(reg.pid))?;
        let identity = Identity {
            pid: reg.pid,
            start_time: info.start_time,
        };
        let pgid = (info.pgid == reg.pid).then_some(reg.pid);
        self.record_service(&reg.key, identity, pgid, &reg.script, reg.metadata)
    }

    /// Records a process psm itself started and whose identity it took at
    /// spawn time (it may already have exited: that shows as dead, which is
    /// the truth).
    pub fn record_service(
        &self,
        key: &ServiceKey,
        identity: Identity,
        pgid: Option<i32>,
        script: &str,
        metadata: Map<String, Value>,
    ) -> Result<ServiceRecord, ManagerError> {
        self.store
            .update(|registry| Ok(file(registry, key, identity, pgid, script, metadata)))
    }

    /// Records a process psm itself started as a per-session service, in
    /// the same locked transaction that checks its session is registered and
    /// alive: a session cleaned up a moment before is never given a service
    /// nobody would end. On `SessionClosed` nothing was written.
    pub fn record_session_service(
        &self,
        key: &ServiceKey,
        identity: Identity,
        pgid: Option<i32>,
        script: &str,
        metadata: Map<String, Value>,
    ) -> Result<ServiceRecord, ManagerError> {
        let Scope::Session(session) = &key.scope else {
            return self.record_service(key, identity, pgid, script, metadata);
        };
        self.store.update(|registry| {
            if !registry
                .sessions
                .get(session)
                .is_some_and(SessionRecord::is_alive)
            {
                return Err(ManagerError::SessionClosed(session.clone()));
            }
            Ok(file(registry, key, identity, pgid, script, metadata))
        })
    }

    /// Fails with `SessionClosed` unless session `id` is registered and its
    /// process alive (a read: the check that counts is the one in
    /// `record_session_service`).
    pub fn check_session_open(&self, id: &str) -> Result<(), ManagerError> {
        match self.store.read()?.sessions.get(id) {
            Some(s) if s.is_alive() => Ok(()),
            _ => Err(ManagerError::SessionClosed(id.to_string())),
        }
    }

    /// Removes a record (the process is left alone), returning it.
    pub fn unregister_service(&self, key: &ServiceKey) -> Result<ServiceRecord, ManagerError> {
        self.store.update(|registry| {
            registry
                .remove(key)
                .ok_or_else(|| ManagerError::NotFound(key.clone()))
        })
    }

    pub fn get_service(&self, key: &ServiceKey) -> Result<Option<ServiceRecord>, ManagerError> {
        Ok(self.store.read()?.get(key).cloned())
    }

    /// True while the recorded process runs (identity checked).
    pub fn is_service_running(&self, key: &ServiceKey) -> Result<bool, ManagerError> {
        Ok(self.get_service(key)?.is_some_and(|r| r.is_alive()))
    }

    /// Stamps `lastHealthCheck` with the current time.
    pub fn refresh_health_check(&self, key: &ServiceKey) -> Result<(), ManagerError> {
        self.store.update(|registry| {
            let record = registry
                .get_mut(key)
                .ok_or_else(|| ManagerError::NotFound(key.clone()))?;
            record.last_health_check = now_millis();
            Ok(())
        })
    }

    /// Records a session: the process whose death ends it, and its project.
    pub fn register_session(
        &self,
        id: &str,
        pid: i32,
        project_path: &str,
    ) -> Result<SessionRecord, ManagerError> {
        let identity = Identity::of(pid)
            .filter(|i| i.is_alive())
            .ok_or(ManagerError::NotAlive(pid))?;
        self.store.update(|registry| {
            let record = SessionRecord {
                pid,
                project_path: project_path.to_string(),
                start_time: now_millis(),
                pid_start_time: Some(identity.start_time),
                extra: Map::new(),
            };
            registry.sessions.insert(id.to_string(), record.clone());
            Ok(record)
        })
    }

    /// Ends a session: stops every per-session service of it (their process
    /// groups too), removes their records and the session's.
    pub fn cleanup_session(&self, id: &str) -> Result<SessionCleanup, ManagerError> {
        let scope = Scope::Session(id.to_string());
        let mut result = SessionCleanup {
            session: id.to_string(),
            ..Default::default()
        };
        // A service may be registered into the session while we stop the
        // others; go round again for those (bounded: a session that keeps
        // spawning is stopped on a later sweep).
        for round in 0..3 {
            let registry = self.store.read()?;
            if round == 0 && !registry.sessions.contains_key(id) && registry.scope(&scope).is_none()
            {
                return Err(ManagerError::SessionNotFound(id.to_string()));
            }
            let services: Vec<(String, ServiceRecord)> = registry
                .scope(&scope)
                .map(|m| m.iter().map(|(n, r)| (n.clone(), r.clone())).collect())
                .unwrap_or_default();
            result.terminated.extend(self.stop_services(&services));
            let (removed, remaining) = self.store.update_if(|registry| {
                let (removed, remaining) = remove_stopped(registry, id, &services);
                let ended = remaining == 0 && end_session_if_empty(registry, id);
                Ok::<_, ManagerError>(((removed, remaining), removed > 0 || ended))
            })?;
            result.cleaned += removed;
            if remaining == 0 {
                break;
            }
        }
        Ok(result)
    }

    /// Stops the recorded processes in parallel; returns those that were running.
    pub fn stop_services(&self, services: &[(String, ServiceRecord)]) -> Vec<Terminated> {
        thread::scope(|s| {
            let handles: Vec<_> = services
                .iter()
                .filter_map(|(name, record)| {
                    let req = record.stop_request(name, self.store.paths().root(), self.grace)?;
                    Some(s.spawn(move || (name, req.identity.pid, terminate(&req))))
                })
                .collect();
            handles
                .into_iter()
                // A stop thread only runs `terminate`, which does not panic.
                .map(|h| h.join().expect("stop thread panicked"))
                .filter(|(_, _, outcome)| *outcome != StopOutcome::AlreadyGone)
                .map(|(name, pid, _)| Terminated {
                    name: name.clone(),
                    pid,
                })
                .collect()
        })
    }

    /// Cleans up sessions whose process is gone and services filed under a
    /// session that does not exist (stopping their services),
    /// then removes every record whose process is gone. Records without a
    /// process (a `failed` service) are state, not processes, and stay.
    ///
    /// A dead leader may have left members in its process group (a
    /// grandchild that outlived it). Its record is the only thing that
    /// names them: dropped, nothing would ever find them again. So before a
    /// dead record goes, what still runs of its group and proves itself the
    /// service's (psm's marker; see `process::group`) is stopped.
    pub fn cleanup_dead_processes(&self) -> Result<CleanupReport, ManagerError> {
        self.cleanup_dead_processes_ending(|_| true)
    }

    /// [`Self::cleanup_dead_processes`], ending the remnants of a dead
    /// record's group only where `end_remnants` says so: a running
    /// coordinator ends those of its own services itself when it sees the
    /// leader's exit, and may be about to let one of them carry the
    /// service on (a daemonizing service), so the CLI leaves them to it.
    pub fn cleanup_dead_processes_ending(
        &self,
        end_remnants: impl Fn(&ServiceRecord) -> bool,
    ) -> Result<CleanupReport, ManagerError> {
        let mut report = CleanupReport::default();
        let dead_sessions = self.store.read()?.sessions_to_end(SessionRecord::is_alive);
        for id in dead_sessions {
            match self.cleanup_session(&id) {
                Ok(cleanup) => report.sessions.push(cleanup),
                // Cleaned up by someone else in the meantime.
                Err(ManagerError::SessionNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let remnants: Vec<(String, ServiceRecord)> = self
            .store
            .read()?
            .services()
            .filter(|(_, r)| r.pid.is_some() && !r.is_alive() && end_remnants(r))
            .map(|(key, r)| (key.name, r.clone()))
            .collect();
        // Only groups with members left cost more than a signal-0 probe.
        self.stop_services(&remnants);
        report.removed = self.store.update_if(|registry| {
            let dead: Vec<(ServiceKey, i32)> = registry
                .services()
                .filter_map(|(key, r)| Some((key, r.pid?)).filter(|_| !r.is_alive()))
                .collect();
            let removed: Vec<Terminated> = dead
                .into_iter()
                .map(|(key, pid)| {
                    registry.remove(&key);
                    Terminated {
                        name: key.name,
                        pid,
                    }
                })
                .collect();
            let changed = !removed.is_empty();
            Ok::<_, ManagerError>((removed, changed))
        })?;
        Ok(report)
    }

    /// Every service and session, with liveness checked now.
    pub fn get_health_status(&self) -> Result<HealthStatus, ManagerError> {
        Ok(health_of(&self.store.read()?))
    }
}

/// Inserts a running record of `identity` under `key`, stamped now.
fn file(
    registry: &mut Registry,
    key: &ServiceKey,
    identity: Identity,
    pgid: Option<i32>,
    script: &str,
    metadata: Map<String, Value>,
) -> ServiceRecord {
    let mut record = ServiceRecord::new(&key.scope, script, identity, now_millis());
    record.metadata = metadata;
    record.pgid = pgid;
    registry.insert(key, record.clone());
    record
}

/// Removes the records of a session's services that were stopped, but only
/// where the record still describes the process that was stopped: a
/// re-registration under the same name in the meantime is someone else's and
/// stays. Returns (removed, services the session still has).
pub fn remove_stopped(
    registry: &mut Registry,
    session: &str,
    stopped: &[(String, ServiceRecord)],
) -> (usize, usize) {
    let scope = Scope::Session(session.to_string());
    let mut removed = 0;
    for (name, old) in stopped {
        let key = ServiceKey::new(name.clone(), scope.clone());
        if registry.get(&key).is_some_and(|now| same_process(now, old)) {
            registry.remove(&key);
            removed += 1;
        }
    }
    (removed, registry.scope(&scope).map_or(0, |m| m.len()))
}

/// Removes a session record once it has no services left; true if removed.
pub fn end_session_if_empty(registry: &mut Registry, session: &str) -> bool {
    let scope = Scope::Session(session.to_string());
    registry.scope(&scope).is_none_or(|m| m.is_empty())
        && registry.sessions.remove(session).is_some()
}

/// True when two records describe the same process.
fn same_process(a: &ServiceRecord, b: &ServiceRecord) -> bool {
    a.pid == b.pid && a.pid_start_time == b.pid_start_time
}

/// The health view of a registry, with liveness checked now.
pub fn health_of(registry: &Registry) -> HealthStatus {
    health_with(registry, |id| id.is_alive())
}

/// `health_of` with liveness decided by `alive`: `status` passes a process
/// table it has already read for CPU and memory, so no process is read twice.
pub fn health_with(registry: &Registry, alive: impl Fn(Identity) -> bool) -> HealthStatus {
    let details: Vec<ServiceHealth> = registry
        .services()
        .map(|(key, r)| {
            let alive = r.identity().is_some_and(&alive);
            let status = if r.pid.is_some() && !alive {
                status::DEAD.to_string()
            } else {
                r.status.clone()
            };
            ServiceHealth {
                healthy: alive && r.status == status::RUNNING,
                status,
                name: key.name,
                service_type: key.scope.service_type(),
                project_path: r.project_path.clone(),
                session_id: r.session_id.clone(),
                pid: r.pid,
                start_time: r.start_time,
                last_health_check: r.last_health_check,
                restart_count: r.restart_count,
                cpu: None,
                rss: None,
                last_exit: r.last_exit().cloned(),
                waiting: r.waiting_reason(),
            }
        })
        .collect();
    let mut by_service_type: BTreeMap<ServiceType, usize> =
        ServiceType::ALL.into_iter().map(|t| (t, 0)).collect();
    for d in &details {
        *by_service_type.entry(d.service_type).or_default() += 1;
    }
    let healthy = details.iter().filter(|d| d.healthy).count();
    let sessions = registry
        .sessions
        .iter()
        .map(|(id, s)| SessionHealth {
            id: id.clone(),
            pid: s.pid,
            project_path: s.project_path.clone(),
            start_time: s.start_time,
            alive: s.identity().is_some_and(&alive),
            services: registry.services.sessions.get(id).map_or(0, BTreeMap::len),
        })
        .collect();
    HealthStatus {
        total_services: details.len(),
        healthy_services: healthy,
        unhealthy_services: details.len() - healthy,
        by_service_type,
        details,
        sessions,
    }
}
