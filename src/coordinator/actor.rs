//! `CoordinatorActor`: the root of the supervision tree.
//!
//! State it owns: the config, the instances it wants running (global services
//! once, per-project services once per active project), the handle of each
//! instance's supervising actor, and the instances a user stopped.
//! Every health interval it beats (refreshes its own registry record, which
//! the watchdog reads), ends sessions whose process is gone, starts and stops
//! per-project instances as projects become active or inactive, and rotates
//! service logs. On start it adopts the live processes a previous coordinator
//! left, instead of starting duplicates. On stop (`down`, SIGTERM, SIGINT) it
//! stops every instance in parallel, removes their records and its own, and
//! ends the actix system.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::prelude::*;
use serde_json::{json, Map, Value};
use tracing::{error, info, warn};

use super::protocol::{Request, Response, Target};
use crate::config::{Config, Instance};
use crate::paths::Paths;
use crate::process::{terminate, Identity};
use crate::registry::writer::{Persist, PersistNow, ReadRegistry};
use crate::registry::{
    status, Registry, RegistryActor, RegistryOp, Scope, ServiceKey, ServiceRecord, ServiceType,
    SessionRecord, StateManager, Store,
};
use crate::supervisor::service::MANAGED_BY;
use crate::supervisor::{
    Extensions, KindContext, ProbeHealth, RestartService, ServiceActor, ServiceHandle, StopService,
};
use crate::time::now_millis;

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
}

pub struct CoordinatorActor {
    paths: Paths,
    config_path: PathBuf,
    config: Config,
    extensions: Extensions,
    probes: HashMap<String, Recipient<ProbeHealth>>,
    registry: Addr<RegistryActor>,
    services: BTreeMap<ServiceKey, Managed>,
    user_stopped: HashSet<ServiceKey>,
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
            user_stopped: HashSet::new(),
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

    /// Projects whose per-project services should run: the configured ones
    /// and those of live sessions.
    fn active_projects(&self, registry: &Registry) -> BTreeSet<PathBuf> {
        let mut projects: BTreeSet<PathBuf> = self.config.projects.iter().cloned().collect();
        projects.extend(
            registry
                .sessions
                .values()
                .filter(|s| s.is_alive() && !s.project_path.is_empty())
                .map(|s| PathBuf::from(&s.project_path)),
        );
        projects
    }

    /// Every instance the config asks for, given the active projects.
    fn desired(&self, projects: &BTreeSet<PathBuf>) -> BTreeMap<ServiceKey, Instance> {
        let root = self.paths.root();
        let mut out = self.project_instances(projects);
        for spec in &self.config.services {
            if spec.service_type != ServiceType::PerProject {
                let inst = spec.instantiate(root, None);
                out.insert(inst.key.clone(), inst);
            }
        }
        out
    }

    /// The per-project instances alone: what a tick's reconciliation needs,
    /// without instantiating every global service each round.
    fn project_instances(&self, projects: &BTreeSet<PathBuf>) -> BTreeMap<ServiceKey, Instance> {
        let root = self.paths.root();
        self.config
            .services
            .iter()
            .filter(|spec| spec.service_type == ServiceType::PerProject)
            .flat_map(|spec| {
                projects
                    .iter()
                    .filter(|p| p.is_dir())
                    .map(move |p| spec.instantiate(root, Some(p)))
            })
            .map(|inst| (inst.key.clone(), inst))
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
        };
        let handle = match self.extensions.kind_for(&instance.spec.kind) {
            Some(kind) => kind.start(ctx),
            None if instance.spec.kind == "daemon" => {
                ServiceActor::new(ctx, &self.probes).start().into()
            }
            None => {
                error!(service = %instance.label, kind = %instance.spec.kind, "unknown service kind; not started");
                return;
            }
        };
        self.services
            .insert(instance.key.clone(), Managed { instance, handle });
    }

    /// Adopts or starts what the config wants; ends what a previous
    /// coordinator left running that the config no longer has.
    fn initial(&mut self, registry: Registry) {
        let previous: BTreeMap<ServiceKey, ServiceRecord> = registry
            .services()
            .filter(|(_, r)| {
                r.metadata.get("managedBy").and_then(Value::as_str) == Some(MANAGED_BY)
            })
            .map(|(k, r)| (k, r.clone()))
            .collect();
        self.user_stopped = previous
            .iter()
            .filter(|(_, r)| r.status == status::STOPPED)
            .map(|(k, _)| k.clone())
            .collect();
        let desired = self.desired(&self.active_projects(&registry));
        let mut unrecorded = self.unrecorded_services(&previous);
        let mut adopted = 0;
        for (key, instance) in &desired {
            if self.user_stopped.contains(key) {
                continue;
            }
            let adopt = previous
                .get(key)
                .filter(|r| r.is_alive())
                .cloned()
                .or_else(|| {
                    // Started by a coordinator that died before recording it.
                    let (_, identity) = unrecorded.get_mut(&instance.label)?.pop()?;
                    let mut r = ServiceRecord::new(
                        &key.scope,
                        instance.spec.command.join(" "),
                        identity,
                        now_millis(),
                    );
                    r.pgid = Some(identity.pid);
                    Some(r)
                });
            adopted += usize::from(adopt.is_some());
            self.start_instance(instance.clone(), adopt);
        }
        // Whatever is left is a twin or no longer configured: end it.
        let twins: Vec<(ServiceKey, ServiceRecord)> = unrecorded
            .into_values()
            .flatten()
            .map(|(key, identity)| {
                let mut r = ServiceRecord::new(&key.scope, "", identity, now_millis());
                r.pgid = Some(identity.pid);
                (key, r)
            })
            .collect();
        if !twins.is_empty() {
            warn!(
                count = twins.len(),
                "ending unrecorded service processes of this root"
            );
            self.end_processes(twins, false);
        }
        let leftovers: Vec<(ServiceKey, ServiceRecord)> = previous
            .into_iter()
            .filter(|(k, _)| !desired.contains_key(k))
            .collect();
        info!(
            services = desired.len(),
            adopted,
            leftovers = leftovers.len(),
            "supervising"
        );
        self.end_processes(leftovers, true);
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
    fn end_processes(&self, leftovers: Vec<(ServiceKey, ServiceRecord)>, recorded: bool) {
        for (key, record) in leftovers {
            let registry = self.registry.clone();
            let stop = record.stop_request(&key.name, self.paths.root(), Duration::from_secs(2));
            actix_rt::spawn(async move {
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

    /// The periodic work: heartbeat, session sweep, project changes, logs.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        self.heartbeat();
        self.rotate_logs();
        ctx.spawn(
            self.registry
                .send(ReadRegistry)
                .into_actor(self)
                .map(|res, act, _| match res {
                    Ok(Ok(registry)) => act.sweep(registry),
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
            actix_rt::spawn(async move {
                let stopped = services.clone();
                let _ =
                    actix_rt::task::spawn_blocking(move || manager.stop_services(&services)).await;
                registry_addr.do_send(Persist(RegistryOp::EndSession { id, stopped }));
            });
        }
        self.reconcile_projects(&registry);
    }

    /// Starts per-project instances of newly active projects and stops those
    /// of projects no longer active. Global instances are untouched.
    fn reconcile_projects(&mut self, registry: &Registry) {
        let desired = self.project_instances(&self.active_projects(registry));
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| matches!(k.scope, Scope::Project(_)) && !desired.contains_key(k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(m) = self.services.remove(&key) {
                info!(service = %m.instance.label, "project inactive; stopping");
                m.handle.stop.do_send(StopService { keep_record: false });
            }
        }
        for (key, instance) in desired {
            if !self.services.contains_key(&key) && !self.user_stopped.contains(&key) {
                info!(service = %instance.label, "project active; starting");
                self.start_instance(instance, None);
            }
        }
    }

    /// Rotation copies up to `max-size` bytes per log: done on a blocking
    /// thread so no actor waits for it.
    fn rotate_logs(&self) {
        let policy = self.config.logs;
        let logs: Vec<PathBuf> = self
            .services
            .values()
            .map(|m| self.paths.service_log(&m.instance.label))
            .collect();
        actix_rt::task::spawn_blocking(move || {
            for path in logs {
                if let Err(e) = crate::logs::rotate_if_needed(&path, policy.max_size, policy.keep) {
                    warn!(log = %path.display(), error = %e, "log rotation failed");
                }
            }
        });
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
        let mut pool: BTreeMap<ServiceKey, Instance> = self
            .services
            .iter()
            .map(|(k, m)| (k.clone(), m.instance.clone()))
            .collect();
        let projects: BTreeSet<PathBuf> = self
            .services
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

    fn stop_keys(
        &mut self,
        keys: Vec<ServiceKey>,
        keep_record: bool,
    ) -> impl std::future::Future<Output = ()> {
        let stops: Vec<_> = keys
            .into_iter()
            .filter_map(|k| self.services.remove(&k))
            .map(|m| m.handle.stop.send(StopService { keep_record }))
            .collect();
        // `send` has already queued every message, so the services stop in
        // parallel; awaiting the replies one by one only collects them.
        async move {
            for stop in stops {
                let _ = stop.await;
            }
        }
    }

    fn handle_request(
        &mut self,
        req: Request,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Response> {
        let ready = |r: Response| -> ResponseActFuture<Self, Response> { Box::pin(fut::ready(r)) };
        if self.shutting_down && req != Request::Ping {
            return ready(Response::error("the coordinator is shutting down"));
        }
        match req {
            Request::Ping => ready(Response {
                data: json!({ "pid": self.me.pid, "services": self.services.len() }),
                ..Response::ok(format!("coordinator running (pid {})", self.me.pid))
            }),
            Request::Start(target) => self.start_request(&target, false, ctx),
            Request::Restart(target) => self.start_request(&target, true, ctx),
            Request::Stop(target) => {
                let keys = self.matching(&target, &self.configured());
                if keys.is_empty() {
                    return ready(no_such_service(&target));
                }
                let running: Vec<ServiceKey> = keys
                    .iter()
                    .filter(|k| self.services.contains_key(k))
                    .cloned()
                    .collect();
                let registry = self.registry.clone();
                // Already-stopped instances still get a `stopped` record.
                for key in keys.iter().filter(|k| !self.services.contains_key(k)) {
                    let mut rec = ServiceRecord::without_process(&key.scope, "", now_millis());
                    rec.status = status::STOPPED.into();
                    rec.metadata
                        .insert("managedBy".into(), Value::from(MANAGED_BY));
                    registry.do_send(Persist(RegistryOp::Upsert {
                        key: key.clone(),
                        record: Box::new(rec),
                    }));
                }
                self.user_stopped.extend(keys.iter().cloned());
                let n = keys.len();
                let name = target.service.clone();
                Box::pin(
                    self.stop_keys(running, true)
                        .into_actor(self)
                        .map(move |(), _, _| {
                            Response::ok(format!("stopped {name} ({n} instance(s))"))
                        }),
                )
            }
            Request::Reload => self.reload(),
            Request::Down => {
                self.shutdown(ctx);
                ready(Response::ok(
                    "stopping every service; the coordinator exits when done",
                ))
            }
        }
    }

    fn start_request(
        &mut self,
        target: &Target,
        force: bool,
        _ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Response> {
        let pool = self.configured();
        let keys = self.matching(target, &pool);
        if keys.is_empty() {
            return Box::pin(fut::ready(no_such_service(target)));
        }
        for key in &keys {
            self.user_stopped.remove(key);
            match self.services.get(key) {
                Some(m) => m.handle.restart.do_send(RestartService { force }),
                None => self.start_instance(pool[key].clone(), None),
            }
        }
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
                    let msg = format!("reload refused, the running config stays: {e}");
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
                    let removed: Vec<ServiceKey> = act
                        .services
                        .keys()
                        .filter(|k| !desired.contains_key(k))
                        .cloned()
                        .collect();
                    let changed: Vec<ServiceKey> = act
                        .services
                        .iter()
                        .filter(|(k, m)| desired.get(k).is_some_and(|d| *d != m.instance))
                        .map(|(k, _)| k.clone())
                        .collect();
                    let added: Vec<ServiceKey> = desired
                        .keys()
                        .filter(|k| !act.services.contains_key(k) && !act.user_stopped.contains(k))
                        .cloned()
                        .collect();
                    let unchanged = act.services.len() - removed.len() - changed.len();
                    // A stopped service the config no longer has: forget it.
                    let forgotten: Vec<ServiceKey> = act
                        .user_stopped
                        .iter()
                        .filter(|k| !desired.contains_key(k))
                        .cloned()
                        .collect();
                    for key in forgotten {
                        act.user_stopped.remove(&key);
                        act.registry
                            .do_send(Persist(RegistryOp::Remove { key, pid: None }));
                    }
                    let summary = format!(
                        "reloaded: {} added, {} removed, {} changed, {} unchanged",
                        added.len(),
                        removed.len(),
                        changed.len(),
                        unchanged
                    );
                    info!("{summary}");
                    let stop_all: Vec<ServiceKey> =
                        removed.iter().chain(changed.iter()).cloned().collect();
                    act.stop_keys(stop_all, false)
                        .into_actor(act)
                        .map(move |(), act, _| {
                            for key in added.iter().chain(changed.iter()) {
                                if let Some(inst) = desired.get(key) {
                                    act.start_instance(inst.clone(), None);
                                }
                            }
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
        let keys: Vec<ServiceKey> = self.services.keys().cloned().collect();
        let registry = self.registry.clone();
        // `down` leaves no record of ours behind, `stopped` ones included.
        for key in self.user_stopped.drain() {
            registry.do_send(Persist(RegistryOp::Remove { key, pid: None }));
        }
        let stops = self.stop_keys(keys, false);
        ctx.spawn(fut::wrap_future(async move {
            stops.await;
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

fn no_such_service(target: &Target) -> Response {
    let scope = target
        .project
        .as_deref()
        .map(|p| format!(" for project {p}"))
        .unwrap_or_default();
    Response::error(format!(
        "no configured service named '{}'{scope}; see psm.toml or `psm status`",
        target.service
    ))
}

impl Actor for CoordinatorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
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
    type Result = ResponseActFuture<Self, Response>;

    fn handle(&mut self, msg: Control, ctx: &mut Context<Self>) -> Self::Result {
        self.handle_request(msg.0, ctx)
    }
}

impl Handler<SignalReceived> for CoordinatorActor {
    type Result = ();

    fn handle(&mut self, msg: SignalReceived, ctx: &mut Context<Self>) {
        match msg {
            SignalReceived::Shutdown => self.shutdown(ctx),
            SignalReceived::Reload => {
                let reload = self.reload();
                ctx.spawn(reload.map(|resp, _, _| info!(ok = resp.ok, "{}", resp.message)));
            }
        }
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
