//! `CoordinatorActor`: the root of the supervision tree.
//!
//! State it owns: the config, the instances it wants running (global services
//! once, per-project services once per active project), the handle of each
//! instance's supervising actor, the instances a user stopped, the queue of
//! changes to the tree, and the stops still in flight.
//! Every health interval it beats (refreshes its own registry record, which
//! the watchdog reads), ends sessions whose process is gone, starts and stops
//! per-project instances as projects become active or inactive, and rotates
//! service logs. On start it adopts the live processes a previous coordinator
//! left, instead of starting duplicates, and restarts those started from a
//! spec the config no longer has. On stop (`down`, SIGTERM, SIGINT) it stops
//! every instance in parallel, waits for every stop in flight, removes their
//! records and its own, and ends the actix system.
//!
//! **One control path.** Everything that changes the tree — `start`, `stop`,
//! `restart`, `reload`, `down`, the signals, the tick's per-project
//! reconciliation — is a [`Change`] in one queue, carried out one at a time
//! and to its end (stops awaited) before the next begins. Two commands that
//! race therefore act as if one came after the other: a reload never sees
//! another's half-done work, and a start never runs beside a stop of the
//! same instance. `ping` is answered at once, even while a change runs.
//! The decisions themselves are pure functions in `plan.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::prelude::*;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::deps::{self, DepState};
use super::plan::{self, Instances, Start};
use super::protocol::{Request, Response, Target};
use crate::config::{Config, Instance};
use crate::paths::Paths;
use crate::process::{terminate, Identity};
use crate::registry::writer::{Persist, PersistNow, ReadRegistry};
use crate::registry::{
    status, Registry, RegistryActor, RegistryOp, Scope, ServiceKey, ServiceRecord, SessionRecord,
    StateManager, Store,
};
use crate::supervisor::service::MANAGED_BY;
use crate::supervisor::{
    Extensions, KindContext, ProbeHealth, Readiness, ReadinessChanged, RefreshRecord,
    RestartService, ServiceActor, ServiceHandle, StopService,
};
use crate::time::now_millis;

/// How long past its stop timeout a service actor may take to confirm a
/// stop before the coordinator goes on without it.
const STOP_REPLY_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The coordinator's own registry record (the seed's name).
pub const COORDINATOR_NAME: &str = "global-service-coordinator";

/// Control socket → coordinator: one request; replies with the response.
#[derive(Message)]
#[rtype(result = "Response")]
pub struct Control(pub Request);

/// Signal task → coordinator: SIGTERM/SIGINT (stop everything) or SIGHUP (reload).
#[derive(Message)]
#[rtype(result = "()")]
pub enum SignalReceived {
    Shutdown,
    Reload,
}

struct Managed {
    instance: Instance,
    handle: ServiceHandle,
    /// A built-in service without a health probe: stamped by the
    /// coordinator's round, asked to write its record when the stamp missed.
    unprobed: Option<Recipient<RefreshRecord>>,
}

/// An instance held back by its dependencies.
struct Waiting {
    instance: Instance,
    /// Its dependencies, resolved once (a reload that changes them
    /// replaces the instance): each readiness report checks every waiting
    /// instance, so this keeps a long chain linear per report.
    deps: Vec<ServiceKey>,
    /// The reason last recorded.
    reason: String,
}

/// A change to the supervision tree, queued and carried out one at a time.
enum Change {
    /// A control request other than `ping`.
    Request(Request),
    /// SIGHUP.
    Reload,
    /// SIGTERM or SIGINT.
    Shutdown,
    /// The tick's per-project reconciliation, with the registry it read.
    Reconcile(Box<Registry>),
}

struct Queued {
    change: Change,
    /// Where the response goes (the control connection), if anyone waits.
    reply: Option<oneshot::Sender<Response>>,
}

pub struct CoordinatorActor {
    paths: Paths,
    config_path: PathBuf,
    config: Config,
    extensions: Extensions,
    probes: HashMap<String, Recipient<ProbeHealth>>,
    registry: Addr<RegistryActor>,
    services: BTreeMap<ServiceKey, Managed>,
    user_stopped: BTreeSet<ServiceKey>,
    /// Instances held back by `depends-on`, with the reason last recorded.
    /// They have no actor; they start once every dependency is ready.
    waiting: BTreeMap<ServiceKey, Waiting>,
    /// Instances whose current run is ready.
    ready: BTreeSet<ServiceKey>,
    /// Instances that have been ready since their actor started: their next
    /// readiness is a new run, which restarts their `restart-with` dependents.
    was_ready: BTreeSet<ServiceKey>,
    /// Instances whose actor gave up, and why.
    failed: BTreeMap<ServiceKey, String>,
    /// This actor's address, for the service actors' readiness reports.
    me_addr: Option<Addr<CoordinatorActor>>,
    /// Changes waiting for the one in progress to end.
    queue: VecDeque<Queued>,
    /// A change is being carried out.
    busy: bool,
    /// A reconciliation is queued; the tick does not queue another.
    reconcile_queued: bool,
    /// Stops running outside any service actor (a previous coordinator's
    /// leftovers, ended sessions' services): shutdown waits for them.
    in_flight: Vec<JoinHandle<()>>,
    me: Identity,
    started: u64,
    shutting_down: bool,
}

impl CoordinatorActor {
    pub fn new(
        paths: Paths,
        config_path: PathBuf,
        config: Config,
        extensions: Extensions,
        registry: Addr<RegistryActor>,
    ) -> Self {
        let pid = std::process::id() as i32;
        CoordinatorActor {
            me: Identity::of(pid).unwrap_or(Identity { pid, start_time: 0 }),
            started: now_millis(),
            paths,
            config_path,
            config,
            probes: HashMap::new(),
            extensions,
            registry,
            services: BTreeMap::new(),
            user_stopped: BTreeSet::new(),
            waiting: BTreeMap::new(),
            ready: BTreeSet::new(),
            was_ready: BTreeSet::new(),
            failed: BTreeMap::new(),
            me_addr: None,
            queue: VecDeque::new(),
            busy: false,
            reconcile_queued: false,
            in_flight: Vec::new(),
            shutting_down: false,
        }
    }

    fn key() -> ServiceKey {
        ServiceKey::global(COORDINATOR_NAME)
    }

    /// Refreshes the coordinator's own record: the heartbeat the watchdog reads.
    fn heartbeat(&self) {
        let mut record =
            ServiceRecord::new(&Scope::Global, "psm coordinator", self.me, self.started);
        record.last_health_check = now_millis();
        record.pgid = None;
        let mut meta = Map::new();
        meta.insert("managedBy".into(), Value::from("psm"));
        meta.insert(
            "config".into(),
            Value::from(self.config_path.display().to_string()),
        );
        meta.insert(
            "socket".into(),
            Value::from(self.paths.control_socket().display().to_string()),
        );
        meta.insert("services".into(), Value::from(self.services.len()));
        // The watchdog derives how old a heartbeat may be from it.
        meta.insert(
            super::INTERVAL_KEY.into(),
            Value::from(self.config.health_interval.as_millis() as u64),
        );
        record.metadata = meta;
        self.registry.do_send(Persist(RegistryOp::Upsert {
            key: Self::key(),
            record: Box::new(record),
        }));
    }

    /// This round's health stamp of every built-in service without a probe,
    /// in one registry change beside the heartbeat; returns its time.
    fn stamp_unprobed(&self) -> u64 {
        let at = now_millis();
        let keys: Vec<ServiceKey> = self
            .services
            .iter()
            .filter(|(_, m)| m.unprobed.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        if !keys.is_empty() {
            self.registry
                .do_send(Persist(RegistryOp::Stamp { keys, at }));
        }
        at
    }

    /// Asks each unprobed service whose record the stamp at `round` missed
    /// (gone, not `running`, another pid's) to write it whole; one whose run
    /// is not up ignores it, as its own round would have.
    fn refresh_missed(&self, registry: &Registry, round: u64) {
        for (key, m) in &self.services {
            let Some(refresh) = &m.unprobed else { continue };
            let stamped = registry
                .get(key)
                .is_some_and(|r| r.status == status::RUNNING && r.last_health_check >= round);
            if !stamped {
                refresh.do_send(RefreshRecord);
            }
        }
    }

    /// Projects whose per-project services should run: the configured ones
    /// and those of live sessions.
    fn active_projects(&self, registry: &Registry) -> BTreeSet<PathBuf> {
        plan::active_projects(&self.config.projects, registry, |s| s.is_alive())
    }

    /// Every instance the config asks for, given the active projects.
    fn desired(&self, projects: &BTreeSet<PathBuf>) -> BTreeMap<ServiceKey, Instance> {
        let (specs, root) = (&self.config.services, self.paths.root());
        plan::desired(specs, root, projects, Instances::All, Path::is_dir)
    }

    /// The per-project instances alone: what a tick's reconciliation needs,
    /// without instantiating every global service each round.
    fn project_instances(&self, projects: &BTreeSet<PathBuf>) -> BTreeMap<ServiceKey, Instance> {
        let (specs, root) = (&self.config.services, self.paths.root());
        plan::desired(specs, root, projects, Instances::PerProject, Path::is_dir)
    }

    /// The instances whose actors run now, and those waiting to start.
    fn running(&self, scope: impl Fn(&Scope) -> bool) -> BTreeMap<ServiceKey, Instance> {
        self.services
            .iter()
            .map(|(k, m)| (k, &m.instance))
            .chain(self.waiting.iter().map(|(k, w)| (k, &w.instance)))
            .filter(|(k, _)| scope(&k.scope))
            .map(|(k, i)| (k.clone(), i.clone()))
            .collect()
    }

    /// Every managed instance (running or waiting) → what it depends on.
    fn graph(&self) -> deps::Graph {
        self.running(|_| true)
            .into_iter()
            .map(|(k, i)| {
                let d = i.dependency_keys(&self.config.services);
                (k, d)
            })
            .collect()
    }

    fn dep_state(&self, key: &ServiceKey) -> DepState {
        if self.ready.contains(key) {
            DepState::Ready
        } else if let Some(why) = self.failed.get(key) {
            DepState::Failed(why.clone())
        } else if self.services.contains_key(key) || self.waiting.contains_key(key) {
            DepState::Coming
        } else if self.user_stopped.contains(key) {
            DepState::Stopped
        } else {
            DepState::Absent
        }
    }

    /// Why an instance depending on `deps` must wait, or `None`.
    fn wait_reason(&self, deps: &[ServiceKey]) -> Option<String> {
        let states: Vec<(ServiceKey, DepState)> = deps
            .iter()
            .map(|k| (k.clone(), self.dep_state(k)))
            .collect();
        deps::wait_reason(&states)
    }

    /// Starts `instance` now if its dependencies are ready (or it adopts a
    /// live process: what runs is never held back), else records it
    /// `waiting` until they are.
    fn launch(&mut self, instance: Instance, adopt: Option<ServiceRecord>) {
        if adopt.is_some() {
            return self.start_instance(instance, adopt);
        }
        let deps = instance.dependency_keys(&self.config.services);
        match self.wait_reason(&deps) {
            None => self.start_instance(instance, None),
            Some(reason) => {
                info!(service = %instance.label, reason, "waiting");
                self.record_waiting(&instance, &reason);
                let key = instance.key.clone();
                let waiting = Waiting {
                    instance,
                    deps,
                    reason,
                };
                self.waiting.insert(key, waiting);
            }
        }
    }

    fn record_waiting(&self, instance: &Instance, reason: &str) {
        let key = &instance.key;
        let script = instance.spec.command.join(" ");
        let mut rec = ServiceRecord::without_process(&key.scope, script, now_millis());
        rec.status = status::WAITING.into();
        rec.metadata
            .insert("managedBy".into(), Value::from(MANAGED_BY));
        rec.metadata
            .insert(status::WAITING.into(), Value::from(reason));
        self.registry.do_send(Persist(RegistryOp::Upsert {
            key: key.clone(),
            record: Box::new(rec),
        }));
    }

    /// Starts the waiting instances whose dependencies are all ready now;
    /// records a new reason for those whose reason changed. With `changed`,
    /// only the instances that depend on it are looked at (a readiness
    /// report: a chain of 1,000 stays linear, not a full pass per link).
    fn release_waiting(&mut self, changed: Option<&ServiceKey>) {
        if self.shutting_down {
            return;
        }
        // An instance started here that is ready at once (an extension kind)
        // releases its own waiters in turn: a worklist, not recursion.
        let mut work: VecDeque<Option<ServiceKey>> = VecDeque::from([changed.cloned()]);
        while let Some(changed) = work.pop_front() {
            let keys: Vec<ServiceKey> = self
                .waiting
                .iter()
                .filter(|(_, w)| changed.as_ref().is_none_or(|c| w.deps.contains(c)))
                .map(|(k, _)| k.clone())
                .collect();
            for key in keys {
                let Some(w) = self.waiting.get(&key) else {
                    continue;
                };
                match self.wait_reason(&w.deps) {
                    None => {
                        if let Some(w) = self.waiting.remove(&key) {
                            info!(service = %w.instance.label, "dependencies ready; starting");
                            self.start_instance(w.instance, None);
                            if self.ready.contains(&key) {
                                work.push_back(Some(key));
                            }
                        }
                    }
                    Some(now) if now != w.reason => {
                        self.record_waiting(&w.instance, &now);
                        if let Some(w) = self.waiting.get_mut(&key) {
                            w.reason = now;
                        }
                    }
                    Some(_) => {}
                }
            }
        }
    }

    /// The running instances that restart with `key` (`restart-with`).
    fn restart_with(&self, key: &ServiceKey) -> Vec<ServiceKey> {
        self.services
            .iter()
            .filter(|(_, m)| m.instance.spec.restart_with.contains(&key.name))
            .filter(|(_, m)| {
                m.instance
                    .dependency_keys(&self.config.services)
                    .contains(key)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Starts the actor that supervises `instance`, adopting `adopt` if given.
    fn start_instance(&mut self, instance: Instance, adopt: Option<ServiceRecord>) {
        let ctx = KindContext {
            instance: instance.clone(),
            registry: (&self.registry).into(),
            paths: self.paths.clone(),
            health_interval: self.config.health_interval,
            adopt,
            readiness: self.me_addr.clone().map(Recipient::from),
        };
        self.failed.remove(&instance.key);
        // Thousands of services need thousands of descriptors (the services
        // themselves get the limit psm started with back).
        match crate::process::spawn::make_room_for(self.services.len() + 1) {
            Ok(Some((from, to))) => info!(from, to, "raised the open-file limit"),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cannot raise the open-file limit"),
        }
        let (handle, unprobed) = match self.extensions.kind_for(&instance.spec.kind) {
            Some(kind) => {
                // An extension kind may not report readiness: it counts as
                // ready once started.
                self.ready.insert(instance.key.clone());
                (kind.start(ctx), None)
            }
            None if instance.spec.kind == "daemon" => {
                let addr = ServiceActor::new(ctx, &self.probes).start();
                let unprobed = instance
                    .spec
                    .health
                    .is_none()
                    .then(|| addr.clone().recipient());
                (addr.into(), unprobed)
            }
            None => {
                error!(service = %instance.label, kind = %instance.spec.kind, "unknown service kind; not started");
                return;
            }
        };
        self.services.insert(
            instance.key.clone(),
            Managed {
                instance,
                handle,
                unprobed,
            },
        );
    }

    /// Adopts or starts what the config wants (replacing an adopted process
    /// started from another spec); ends what a previous coordinator left
    /// running that the config no longer has.
    fn initial(&mut self, registry: Registry) {
        let previous: BTreeMap<ServiceKey, ServiceRecord> = registry
            .services()
            .filter(|(_, r)| {
                r.metadata.get("managedBy").and_then(Value::as_str) == Some(MANAGED_BY)
            })
            .map(|(k, r)| (k, r.clone()))
            .collect();
        // A recorded leader that died while no coordinator watched it (its
        // group never swept) may have left members behind: they would run
        // beside the fresh process. Stopping a dead record signals only the
        // members that prove they descend from it.
        let dead: Vec<(ServiceKey, ServiceRecord)> = previous
            .iter()
            .filter(|(_, r)| r.pid.is_some() && !r.is_alive())
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        self.end_processes(dead, false);
        let desired = self.desired(&self.active_projects(&registry));
        let unrecorded = self.unrecorded_services(&previous);
        let split = plan::adoption(
            previous,
            unrecorded,
            &desired,
            ServiceRecord::is_alive,
            now_millis(),
        );
        self.user_stopped = split.user_stopped;
        let (mut adopted, mut replaced) = (0, 0);
        for (key, start) in split.start {
            let instance = desired[&key].clone();
            match start {
                Start::Adopt(record) => {
                    adopted += 1;
                    self.start_instance(instance, Some(record));
                }
                Start::Replace(record) => {
                    // Taken over first, so that its actor owns the process
                    // and its stop (a `psm stop` arriving meanwhile included),
                    // then restarted on the config's spec.
                    replaced += 1;
                    info!(service = %instance.label, pid = ?record.pid, "started from another spec; restarting");
                    self.start_instance(instance, Some(record));
                    if let Some(m) = self.services.get(&key) {
                        m.handle.restart.do_send(RestartService { force: true });
                    }
                }
                Start::Fresh => self.launch(instance, None),
            }
        }
        if !split.twins.is_empty() {
            warn!(
                count = split.twins.len(),
                "ending unrecorded service processes of this root"
            );
            self.end_processes(split.twins, false);
        }
        // An instance launched before its dependency was: its reason now
        // says the dependency is coming rather than not running.
        self.release_waiting(None);
        info!(
            services = desired.len(),
            adopted,
            replaced,
            leftovers = split.leftovers.len(),
            "supervising"
        );
        self.end_processes(split.leftovers, true);
    }

    /// Processes this root's coordinators spawned that no record names,
    /// grouped by instance label. (The key only names them for the stop;
    /// they have no record to update.)
    fn unrecorded_services(
        &self,
        previous: &BTreeMap<ServiceKey, ServiceRecord>,
    ) -> HashMap<String, Vec<(ServiceKey, Identity)>> {
        let recorded: HashSet<Identity> = previous
            .values()
            .filter_map(ServiceRecord::identity)
            .collect();
        let mut out: HashMap<String, Vec<(ServiceKey, Identity)>> = HashMap::new();
        for (label, identity) in crate::process::identity::spawned_services(self.paths.root()) {
            if !recorded.contains(&identity) {
                let key = ServiceKey::global(label.clone());
                out.entry(label).or_default().push((key, identity));
            }
        }
        out
    }

    /// Stops processes of ours that no instance wants, off the actor thread
    /// (stopping waits); with `recorded`, then removes their records.
    fn end_processes(&mut self, leftovers: Vec<(ServiceKey, ServiceRecord)>, recorded: bool) {
        for (key, record) in leftovers {
            let registry = self.registry.clone();
            let stop = record.stop_request(&key.name, self.paths.root(), Duration::from_secs(2));
            self.track(async move {
                if let Some(req) = stop {
                    let _ = actix_rt::task::spawn_blocking(move || terminate(&req)).await;
                }
                if recorded {
                    registry.do_send(Persist(RegistryOp::Remove {
                        key,
                        pid: record.pid,
                    }));
                }
            });
        }
    }

    /// Runs `work` (a stop outside any service actor) on the runtime;
    /// shutdown waits for it.
    fn track(&mut self, work: impl std::future::Future<Output = ()> + 'static) {
        self.in_flight.retain(|h| !h.is_finished());
        self.in_flight.push(actix_rt::spawn(work));
    }

    /// The periodic work: heartbeat, session sweep, project changes, logs.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        self.heartbeat();
        let round = self.stamp_unprobed();
        self.rotate_logs();
        // A safety net under the SIGCHLD-driven reaper (one waitpid when
        // nothing has exited).
        let reaped = crate::process::reaper::reap();
        if !reaped.is_empty() {
            tracing::debug!(?reaped, "reaped inherited orphans");
        }
        // Read after the stamp (one mailbox, and the read writes what is
        // queued first), so it shows which records the stamp missed.
        ctx.spawn(
            self.registry
                .send(ReadRegistry)
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(Ok(registry)) => {
                        act.refresh_missed(&registry, round);
                        act.sweep(registry);
                        act.pump(ctx);
                    }
                    Ok(Err(e)) => warn!(error = %e, "sweep skipped: cannot read the registry"),
                    Err(_) => {}
                }),
        );
    }

    fn sweep(&mut self, registry: Registry) {
        if self.shutting_down {
            return;
        }
        for id in registry.sessions_to_end(SessionRecord::is_alive) {
            let services: Vec<(String, ServiceRecord)> = registry
                .scope(&Scope::Session(id.clone()))
                .map(|m| m.iter().map(|(n, r)| (n.clone(), r.clone())).collect())
                .unwrap_or_default();
            info!(session = %id, services = services.len(), "session ended; cleaning up");
            let manager = StateManager::new(Store::new(self.paths.clone()));
            let registry_addr = self.registry.clone();
            self.track(async move {
                let stopped = services.clone();
                let _ =
                    actix_rt::task::spawn_blocking(move || manager.stop_services(&services)).await;
                registry_addr.do_send(Persist(RegistryOp::EndSession { id, stopped }));
            });
        }
        // Starting and stopping instances changes the tree: queued behind
        // any change in progress (the caller pumps the queue).
        if !std::mem::replace(&mut self.reconcile_queued, true) {
            self.queue.push_back(Queued {
                change: Change::Reconcile(Box::new(registry)),
                reply: None,
            });
        }
    }

    /// Starts per-project instances of newly active projects and stops those
    /// of projects no longer active (awaited). Global instances are untouched.
    fn reconcile_projects(&mut self, registry: &Registry) -> impl std::future::Future<Output = ()> {
        let desired = self.project_instances(&self.active_projects(registry));
        let running = self.running(|s| matches!(s, Scope::Project(_)));
        let plan = plan::reload_plan(&running, &self.user_stopped, &desired);
        // Waiting instances are among them: they have no actor, so the
        // label comes from `running`, which holds both.
        for key in &plan.removed {
            if let Some(instance) = running.get(key) {
                info!(service = %instance.label, "project inactive; stopping");
            }
        }
        let stops = self.stop_keys(plan.removed, false);
        for key in plan.added {
            let instance = desired[&key].clone();
            info!(service = %instance.label, "project active; starting");
            self.launch(instance, None);
        }
        self.release_waiting(None);
        stops
    }

    /// Rotation itself is done promptly by the log size watch's own thread
    /// (`logs::SizeWatch`); each tick hands it the current config's policy.
    fn rotate_logs(&self) {
        crate::logs::set_policy(self.config.logs.max_size, self.config.logs.keep);
        crate::logs::set_timestamps(self.config.logs.timestamps);
    }

    /// The managed instances a request names; every instance of the name
    /// unless a project is given.
    fn matching(&self, target: &Target, pool: &BTreeMap<ServiceKey, Instance>) -> Vec<ServiceKey> {
        pool.keys()
            .filter(|k| k.name == target.service)
            .filter(|k| match (&target.project, &k.scope) {
                (None, _) => true,
                (Some(p), Scope::Project(kp)) => Path::new(kp) == Path::new(p),
                (Some(_), _) => false,
            })
            .cloned()
            .collect()
    }

    fn configured(&self) -> BTreeMap<ServiceKey, Instance> {
        // Instances that exist now, plus what the config would start for the
        // currently known projects (so a stopped per-project service can be
        // named and started again).
        let mut pool: BTreeMap<ServiceKey, Instance> = self.running(|_| true);
        let projects: BTreeSet<PathBuf> = pool
            .keys()
            .chain(self.user_stopped.iter())
            .filter_map(|k| match &k.scope {
                Scope::Project(p) => Some(PathBuf::from(p)),
                _ => None,
            })
            .chain(self.config.projects.iter().cloned())
            .collect();
        for (k, inst) in self.desired(&projects) {
            pool.entry(k).or_insert(inst);
        }
        pool
    }

    /// Stops the actors of `keys` (removing them from the tree at once);
    /// the future resolves when every one has confirmed.
    ///
    /// They stop in waves, dependents before what they depend on; one wave
    /// stops in parallel. Waiting instances among them only lose their
    /// `waiting` record (kept as `stopped` with `keep_record`).
    fn stop_keys(
        &mut self,
        keys: Vec<ServiceKey>,
        keep_record: bool,
    ) -> impl std::future::Future<Output = ()> {
        let set: BTreeSet<ServiceKey> = keys.into_iter().collect();
        // Every tick's reconcile asks to stop nothing: the graph (a copy of
        // every instance) is built only when something stops.
        let waves = if set.is_empty() {
            Vec::new()
        } else {
            deps::stop_order(&self.graph(), &set)
        };
        let mut stages = Vec::with_capacity(waves.len());
        let mut records = Vec::new();
        for wave in waves {
            let mut stage = Vec::new();
            for key in wave {
                self.ready.remove(&key);
                self.was_ready.remove(&key);
                self.failed.remove(&key);
                if self.waiting.remove(&key).is_some() {
                    records.push(no_process_op(&key, keep_record));
                }
                let Some(m) = self.services.remove(&key) else {
                    continue;
                };
                // A stop ends within its stop timeout (then SIGKILL) and the
                // moment the exit is seen. An actor silent far beyond that
                // (an extension kind's bug, a process stuck in the kernel)
                // must not hold every later change back for ever.
                let patience = m.instance.spec.stop_timeout + STOP_REPLY_GRACE;
                stage.push((m.instance.label, m.handle.stop, patience));
            }
            if !stage.is_empty() {
                stages.push(stage);
            }
        }
        // A waiting instance's record is on disk before the stop is done,
        // so a `psm status` after `psm stop` returns sees it.
        let records = persist_all(self.registry.clone(), records);
        async move {
            records.await;
            for stage in stages {
                // Every stop of a wave is sent before any reply is awaited,
                // so a wave stops in parallel.
                let sent: Vec<_> = stage
                    .into_iter()
                    .map(|(label, stop, patience)| {
                        (
                            label,
                            stop.send(StopService { keep_record }).timeout(patience),
                        )
                    })
                    .collect();
                for (label, stop) in sent {
                    if let Err(MailboxError::Timeout) = stop.await {
                        error!(service = %label, "did not confirm its stop in time; going on without it");
                    }
                }
            }
        }
    }

    /// Queues a change; it is carried out once those before it are done.
    fn enqueue(
        &mut self,
        change: Change,
        reply: Option<oneshot::Sender<Response>>,
        ctx: &mut Context<Self>,
    ) {
        self.queue.push_back(Queued { change, reply });
        self.pump(ctx);
    }

    /// Starts the next queued change unless one is in progress.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        let Some(Queued { change, reply }) = self.queue.pop_front() else {
            return;
        };
        self.busy = true;
        let work = self.carry_out(change, ctx);
        ctx.spawn(work.map(move |response, act, ctx| {
            if let Some(reply) = reply {
                let _ = reply.send(response);
            }
            act.busy = false;
            act.pump(ctx);
        }));
    }

    /// One change, to its end: the future resolves once every stop it
    /// started is done.
    fn carry_out(
        &mut self,
        change: Change,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Response> {
        let ready = |r: Response| -> ResponseActFuture<Self, Response> { Box::pin(fut::ready(r)) };
        if self.shutting_down && !matches!(change, Change::Shutdown) {
            return ready(Response::error("the coordinator is shutting down"));
        }
        match change {
            Change::Request(Request::Ping) => ready(self.ping()),
            Change::Request(Request::Start(target)) => self.start_request(&target, false),
            Change::Request(Request::Restart(target)) => self.start_request(&target, true),
            Change::Request(Request::Stop(target)) => self.stop_request(&target),
            Change::Request(Request::Reload) | Change::Reload => self.reload(),
            Change::Request(Request::Down) | Change::Shutdown => {
                self.shutdown(ctx);
                ready(Response::ok(
                    "stopping every service; the coordinator exits when done",
                ))
            }
            Change::Reconcile(registry) => {
                self.reconcile_queued = false;
                let stops = self.reconcile_projects(&registry);
                Box::pin(
                    stops
                        .into_actor(self)
                        .map(|(), _, _| Response::ok("reconciled")),
                )
            }
        }
    }

    fn ping(&self) -> Response {
        Response {
            data: json!({
                "pid": self.me.pid,
                "services": self.services.len(),
                "stopping": self.shutting_down,
            }),
            ..Response::ok(format!("coordinator running (pid {})", self.me.pid))
        }
    }

    /// `psm stop`: stops the running instances of the target (awaited) and
    /// records every one of them `stopped`, to stay down until started.
    fn stop_request(&mut self, target: &Target) -> ResponseActFuture<Self, Response> {
        let keys = self.matching(target, &self.configured());
        if keys.is_empty() {
            return Box::pin(fut::ready(no_such_service(target)));
        }
        // What depends on them stops first, and stays stopped with them.
        let all = deps::with_dependents(&self.graph(), &keys);
        let managed =
            |k: &ServiceKey| self.services.contains_key(k) || self.waiting.contains_key(k);
        // Already-stopped instances still get a `stopped` record, on disk
        // before the reply.
        let records: Vec<RegistryOp> = keys
            .iter()
            .filter(|k| !managed(k))
            .map(|k| no_process_op(k, true))
            .collect();
        let records = persist_all(self.registry.clone(), records);
        let dependents: Vec<String> = all
            .iter()
            .filter(|k| !keys.contains(k))
            .map(deps::label)
            .collect();
        self.user_stopped.extend(all.iter().cloned());
        let n = keys.len();
        let name = target.service.clone();
        let along = if dependents.is_empty() {
            String::new()
        } else {
            format!(", and first what depends on it: {}", dependents.join(", "))
        };
        let stops = self.stop_keys(all.into_iter().collect(), true);
        Box::pin(
            async move {
                records.await;
                stops.await;
            }
            .into_actor(self)
            .map(move |(), _, _| Response::ok(format!("stopped {name} ({n} instance(s)){along}"))),
        )
    }

    /// `psm start` / `psm restart`: the target's actors are told to start
    /// (or restart); instances without one get a new actor.
    fn start_request(&mut self, target: &Target, force: bool) -> ResponseActFuture<Self, Response> {
        let pool = self.configured();
        let keys = self.matching(target, &pool);
        if keys.is_empty() {
            return Box::pin(fut::ready(no_such_service(target)));
        }
        // What they depend on and is not running starts too (as systemd's
        // `Requires=` and process-compose's `depends_on` do); they wait for
        // it. Dependencies first, so each waits with the right reason.
        let graph: deps::Graph = pool
            .iter()
            .map(|(k, i)| (k.clone(), i.dependency_keys(&self.config.services)))
            .collect();
        let along = deps::with_dependencies(&graph, &keys);
        let mut order: Vec<ServiceKey> = deps::stop_order(&graph, &along)
            .into_iter()
            .flatten()
            .collect();
        order.reverse();
        for key in order {
            let named = keys.contains(&key);
            let managed = self.services.contains_key(&key) || self.waiting.contains_key(&key);
            if !named && (managed || !pool.contains_key(&key)) {
                continue;
            }
            self.user_stopped.remove(&key);
            match self.services.get(&key) {
                Some(m) => {
                    // A failed service starts again: its dependents wait
                    // for it as for any starting one.
                    self.failed.remove(&key);
                    m.handle.restart.do_send(RestartService { force });
                }
                None if self.waiting.contains_key(&key) => {}
                None => {
                    if let Some(instance) = pool.get(&key) {
                        self.launch(instance.clone(), None);
                    }
                }
            }
        }
        self.release_waiting(None);
        let verb = if force { "restarted" } else { "started" };
        Box::pin(fut::ready(Response::ok(format!(
            "{verb} {} ({} instance(s))",
            target.service,
            keys.len()
        ))))
    }

    /// Re-reads the config: starts added instances, stops removed ones,
    /// restarts changed ones, leaves the rest untouched.
    fn reload(&mut self) -> ResponseActFuture<Self, Response> {
        let config = if self.config_path.exists() {
            match Config::load(&self.config_path) {
                Ok(c) => c,
                Err(e) => {
                    let msg = format!(
                        "reload refused, the running config stays: {:#}",
                        anyhow::Error::from(e)
                    );
                    error!("{msg}");
                    return Box::pin(fut::ready(Response::error(msg)));
                }
            }
        } else {
            Config::empty()
        };
        self.config = config;
        let registry = self.registry.clone();
        Box::pin(
            registry
                .send(ReadRegistry)
                .into_actor(self)
                .then(|res, act, _| {
                    let projects = match res {
                        Ok(Ok(reg)) => act.active_projects(&reg),
                        _ => act.config.projects.iter().cloned().collect(),
                    };
                    let desired = act.desired(&projects);
                    let plan =
                        plan::reload_plan(&act.running(|_| true), &act.user_stopped, &desired);
                    // A stopped service the config no longer has: forget it.
                    for key in &plan.forgotten {
                        act.user_stopped.remove(key);
                        act.registry.do_send(Persist(RegistryOp::Remove {
                            key: key.clone(),
                            pid: None,
                        }));
                    }
                    let summary = plan.summary();
                    info!("{summary}");
                    let stop_all: Vec<ServiceKey> =
                        plan.removed.iter().chain(&plan.changed).cloned().collect();
                    // A replaced instance that had been ready: its
                    // replacement's first ready run is a new run of it, which
                    // restarts its `restart-with` dependents (they still run
                    // on the old one). The stop forgets it; it is put back.
                    let replaced_ready: Vec<ServiceKey> = plan
                        .changed
                        .iter()
                        .filter(|k| act.was_ready.contains(*k))
                        .cloned()
                        .collect();
                    act.stop_keys(stop_all, false)
                        .into_actor(act)
                        .map(move |(), act, _| {
                            for key in plan.added.iter().chain(&plan.changed) {
                                act.launch(desired[key].clone(), None);
                            }
                            act.was_ready.extend(replaced_ready);
                            // Dependencies added or removed change who waits.
                            act.release_waiting(None);
                            act.heartbeat();
                            Response::ok(summary)
                        })
                }),
        )
    }

    fn shutdown(&mut self, ctx: &mut Context<Self>) {
        if std::mem::replace(&mut self.shutting_down, true) {
            return;
        }
        info!(services = self.services.len(), "stopping every service");
        let keys: Vec<ServiceKey> = self.running(|_| true).into_keys().collect();
        let registry = self.registry.clone();
        // `down` leaves no record of ours behind, `stopped` ones included.
        for key in std::mem::take(&mut self.user_stopped) {
            registry.do_send(Persist(RegistryOp::Remove { key, pid: None }));
        }
        let stops = self.stop_keys(keys, false);
        // Stops outside the service actors (leftovers, sessions) finish too:
        // a process being stopped is never left to itself.
        let in_flight = std::mem::take(&mut self.in_flight);
        ctx.spawn(fut::wrap_future(async move {
            stops.await;
            for work in in_flight {
                let _ = work.await;
            }
            let _ = registry
                .send(PersistNow(RegistryOp::Remove {
                    key: Self::key(),
                    pid: None,
                }))
                .await;
            System::current().stop();
        }));
    }
}

/// The record of an instance without a process: `stopped`, or removed.
fn no_process_op(key: &ServiceKey, keep_record: bool) -> RegistryOp {
    if keep_record {
        let mut rec = ServiceRecord::without_process(&key.scope, "", now_millis());
        rec.status = status::STOPPED.into();
        rec.metadata
            .insert("managedBy".into(), Value::from(MANAGED_BY));
        RegistryOp::Upsert {
            key: key.clone(),
            record: Box::new(rec),
        }
    } else {
        RegistryOp::Remove {
            key: key.clone(),
            pid: None,
        }
    }
}

/// Writes `ops` in one write; resolves once they are on disk (or the write
/// failed, which the registry actor logs).
fn persist_all(
    registry: Addr<RegistryActor>,
    mut ops: Vec<RegistryOp>,
) -> impl std::future::Future<Output = ()> {
    // Queued now, in order behind what was sent before: the last one waits
    // and its write takes every one before it along (one write, not one per
    // instance: a `down` may remove a thousand waiting records).
    let last = ops.pop().map(|op| {
        for op in ops {
            registry.do_send(Persist(op));
        }
        registry.send(PersistNow(op))
    });
    async move {
        if let Some(write) = last {
            let _ = write.await;
        }
    }
}

fn no_such_service(target: &Target) -> Response {
    let scope = target
        .project
        .as_deref()
        .map(|p| format!(" for project {}", crate::input::shown(p)))
        .unwrap_or_default();
    Response::error(format!(
        "no configured service named '{}'{scope}; see psm.toml or `psm status`",
        crate::input::shown(&target.service)
    ))
}

impl Actor for CoordinatorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.me_addr = Some(ctx.address());
        self.probes = self.extensions.start_probes();
        self.heartbeat();
        // Nothing else is handled until the previous state is known, so a
        // control request can never race the adoption.
        ctx.wait(self.registry.send(ReadRegistry).into_actor(self).map(|res, act, _| {
            match res {
                Ok(Ok(registry)) => act.initial(registry),
                Ok(Err(e)) => {
                    error!(error = %e, "cannot read the registry; starting services without adoption");
                    act.initial(Registry::default());
                }
                Err(_) => {}
            }
        }));
        // On the services' health rounds, so the heartbeat joins their write.
        crate::supervisor::health::every_round(ctx, self.config.health_interval, Self::tick);
    }
}

impl Handler<Control> for CoordinatorActor {
    type Result = ResponseFuture<Response>;

    fn handle(&mut self, msg: Control, ctx: &mut Context<Self>) -> Self::Result {
        // A ping changes nothing: answered at once, even mid-change, so
        // `up` and the watchdog see a busy coordinator as alive.
        if msg.0 == Request::Ping {
            let pong = self.ping();
            return Box::pin(async move { pong });
        }
        if self.shutting_down {
            return Box::pin(async { Response::error("the coordinator is shutting down") });
        }
        let (tx, rx) = oneshot::channel();
        self.enqueue(Change::Request(msg.0), Some(tx), ctx);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Response::error("the coordinator is shutting down"))
        })
    }
}

impl Handler<ReadinessChanged> for CoordinatorActor {
    type Result = ();

    fn handle(&mut self, msg: ReadinessChanged, _ctx: &mut Context<Self>) {
        let key = msg.key;
        // A report from an actor already stopped (or replaced) is stale.
        if !self.services.contains_key(&key) {
            return;
        }
        match msg.readiness {
            Readiness::Ready => {
                self.ready.insert(key.clone());
                self.failed.remove(&key);
                if !self.was_ready.insert(key.clone()) {
                    // A new run of a dependency that was ready before.
                    for dependent in self.restart_with(&key) {
                        if let Some(m) = self.services.get(&dependent) {
                            info!(service = %m.instance.label, dependency = %key.name, "restarting with its dependency");
                            m.handle.restart.do_send(RestartService { force: true });
                        }
                    }
                }
            }
            Readiness::NotReady => {
                self.ready.remove(&key);
            }
            Readiness::Failed(why) => {
                self.ready.remove(&key);
                self.failed.insert(key.clone(), why);
            }
        }
        self.release_waiting(Some(&key));
    }
}

impl Handler<SignalReceived> for CoordinatorActor {
    type Result = ();

    fn handle(&mut self, msg: SignalReceived, ctx: &mut Context<Self>) {
        let change = match msg {
            SignalReceived::Shutdown => Change::Shutdown,
            SignalReceived::Reload => Change::Reload,
        };
        self.enqueue(change, None, ctx);
    }
}

/// SIGTERM/SIGINT → shutdown, SIGHUP → reload.
pub fn forward_signals(coordinator: Addr<CoordinatorActor>) {
    use tokio::signal::unix::{signal, SignalKind};
    actix_rt::spawn(async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            error!("cannot install signal handlers");
            return;
        };
        loop {
            let msg = tokio::select! {
                _ = term.recv() => SignalReceived::Shutdown,
                _ = int.recv() => SignalReceived::Shutdown,
                _ = hup.recv() => SignalReceived::Reload,
            };
            coordinator.do_send(msg);
        }
    });
}
