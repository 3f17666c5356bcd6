//! `ServiceActor`: supervises one service instance.
//!
//! State it owns: the current process (identity, start, generation) and its
//! [`Lifecycle`] (phase and failures in a row). Every exit, timer, stop and
//! restart is an [`Event`] for the pure state machine in `phase.rs`; the
//! actor carries out the [`Action`] it returns and nothing else. What happens:
//! - **start**: adopt the process a previous coordinator left running if its
//!   identity still matches, else spawn a new one (own session, output
//!   appended to `<root>/.logs/<label>.log`, the hash of its spec recorded);
//! - **exit** is seen at once: the actor awaits its own child's status from
//!   the coordinator's reaper (`process::reaper`), or an adopted
//!   process's pidfd (Linux; elsewhere a poll every 500 ms). Whatever is left
//!   of the process group is killed, then `policy::decide` says restart after
//!   a backoff or give up (`failed`). Each attempt is a message to itself
//!   (at once, or by a timer): a program that cannot start never recurses;
//! - **health**: every health interval, after the start period, the pid's
//!   identity and the configured probe; a failure kills the group and counts
//!   as a failure like any exit;
//! - **stop**: the stop signal to the group, SIGKILL after the stop timeout,
//!   the record removed (or marked `stopped`) before the reply, then the
//!   actor stops.
//!
//! Every registry change goes through the daemon's registry writer, by the
//! narrow `RegistryHandle`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use actix::prelude::*;
use nix::sys::signal::Signal;
use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::fingerprint::{spec_hash, SPEC_HASH_KEY};
use super::health;
use super::messages::{
    ProbeHealth, Readiness, ReadinessChanged, RefreshRecord, RestartService, StopService,
};
use super::phase::{probe_failure_counts, ready_when, Action, Event, Lifecycle, Phase, ReadyWhen};
use crate::config::{HealthSpec, Instance};
use crate::paths::Paths;
use crate::process::{
    signal_marked, signal_tree, terminate, DetachedSpec, Identity, Marker, ProcInfo, StopRequest,
};
use crate::registry::model::EXITS_KEPT;
use crate::registry::{status, ExitRecord, RegistryHandle, RegistryOp, ServiceRecord};
use crate::time::now_millis;

/// How many looks ([`SETTLE_PAUSE`] apart) a leader's clean exit gets for
/// the daemon it may have left (see `ServiceActor::look_for_daemon`).
const SETTLE_TRIES: u32 = 5;
const SETTLE_PAUSE: Duration = Duration::from_millis(20);

/// Who manages a record, in its metadata: the coordinator adopts only these.
pub const MANAGED_BY: &str = "coordinator";

/// One probe's answer, to come.
type Probe = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>>>>;

/// How often a starting run's probe runs until it passes: the health
/// interval, but at most every 250 ms. Short enough that a chain of
/// dependencies starts about as fast as its services do; long enough that a
/// slow start costs a few cheap probes a second (a file's stat, a connect).
pub fn start_interval(health_interval: Duration) -> Duration {
    health_interval.min(Duration::from_millis(250))
}

/// Service actor → itself: the wait before restart `generation` + 1 is
/// over. A restart or stop in the meantime makes it stale.
#[derive(Message)]
#[rtype(result = "()")]
struct BackoffElapsed {
    generation: u64,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    identity: Identity,
    started: Instant,
    start_millis: u64,
    generation: u64,
    /// The kill was ours, after a failed probe (for the log line).
    probe_failed: bool,
    /// A descendant that outlived the leader (a daemonizing service),
    /// carrying the run on.
    daemon: bool,
    /// The leader has exited and its daemon is being looked for.
    settling: bool,
}

pub struct ServiceActor {
    inst: Instance,
    paths: Paths,
    registry: RegistryHandle,
    health_interval: Duration,
    probe: Option<Recipient<ProbeHealth>>,
    adopt: Option<ServiceRecord>,
    run: Option<Run>,
    state: Lifecycle,
    /// Counts runs; each exit watcher and backoff carries the number of the
    /// run it belongs to, so a late one from an earlier run is ignored.
    generation: u64,
    /// The timer of a backoff in progress (cancelled on leaving `Backoff`).
    backoff: Option<SpawnHandle>,
    /// The hash of the spec the current (or last) process was started from;
    /// `None` for an adopted process whose record had none.
    started_from: Option<String>,
    stop_waiters: Vec<oneshot::Sender<()>>,
    /// Descendants of the run being stopped that left its process group:
    /// signalled with it, ended before the stop is confirmed.
    escaped: Vec<Identity>,
    /// The last [`EXITS_KEPT`] ends of a run, oldest first: in the record
    /// as `exits`, the newest also as `lastExit`.
    exits: VecDeque<ExitRecord>,
    /// Why the current run's probe failed, once it has (the kill's reason).
    probe_failure: Option<String>,
    /// The last probe's time and outcome, for `psm status <service>`.
    last_probe: Option<(u64, Result<(), String>)>,
    /// The current run is ready (recorded `running`, else `starting`).
    ready: bool,
    /// The coordinator, told when `ready` changes or the service gives up.
    readiness: Option<Recipient<ReadinessChanged>>,
    span: tracing::Span,
}

impl ServiceActor {
    pub fn new(ctx: super::KindContext, probes: &HashMap<String, Recipient<ProbeHealth>>) -> Self {
        let probe = match &ctx.instance.spec.health {
            Some(HealthSpec::Probe { name, .. }) => probes.get(name).cloned(),
            _ => None,
        };
        // At error level so the service's name is on its every log line,
        // whatever level the filter lets through.
        let span = tracing::error_span!("service", name = %ctx.instance.label);
        ServiceActor {
            inst: ctx.instance,
            paths: ctx.paths,
            registry: ctx.registry,
            health_interval: ctx.health_interval,
            probe,
            adopt: ctx.adopt,
            run: None,
            state: Lifecycle::running(0),
            generation: 0,
            backoff: None,
            started_from: None,
            stop_waiters: Vec::new(),
            escaped: Vec::new(),
            exits: VecDeque::new(),
            probe_failure: None,
            last_probe: None,
            ready: false,
            readiness: ctx.readiness,
            span,
        }
    }

    /// `running` once the run is ready, `starting` before.
    fn run_status(&self) -> &'static str {
        if self.ready {
            status::RUNNING
        } else {
            status::STARTING
        }
    }

    fn tell(&self, readiness: Readiness) {
        if let Some(to) = &self.readiness {
            to.do_send(ReadinessChanged {
                key: self.inst.key.clone(),
                readiness,
            });
        }
    }

    fn set_ready(&mut self, ready: bool) {
        if std::mem::replace(&mut self.ready, ready) != ready {
            self.tell(if ready {
                Readiness::Ready
            } else {
                Readiness::NotReady
            });
        }
    }

    /// Without a probe, a run is ready once it has stayed up for the start
    /// period (`up` of it has passed already); with one, when the probe
    /// first passes (`probed`).
    fn await_readiness(&mut self, up: Duration, ctx: &mut Context<Self>) {
        let spec = &self.inst.spec;
        let left = match ready_when(spec.health.is_some(), spec.start_period, up) {
            ReadyWhen::ProbePasses => {
                // Right after the spawn, once the actor is done with it.
                let generation = self.generation;
                ctx.run_later(Duration::ZERO, move |act, ctx| {
                    act.probe_until_ready(generation, ctx)
                });
                return;
            }
            ReadyWhen::Now => return self.set_ready(true),
            ReadyWhen::After(left) => left,
        };
        let generation = self.generation;
        ctx.run_later(left, move |act, _| {
            let current = act.run.is_some_and(|r| r.generation == generation);
            if current && act.state.phase == Phase::Running && !act.ready {
                act.set_ready(true);
                act.persist(status::RUNNING);
            }
        });
    }

    /// The environment marker of this instance's processes (`process::group`).
    fn marker(&self) -> Marker {
        Marker::service(self.paths.root(), &self.inst.label)
    }

    fn script(&self) -> String {
        self.inst.spec.command.join(" ")
    }

    /// The registry record for the current state.
    fn record(&self, status: &str) -> ServiceRecord {
        let now = now_millis();
        let mut record = match &self.run {
            Some(run) => {
                let mut r = ServiceRecord::new(
                    &self.inst.key.scope,
                    self.script(),
                    run.identity,
                    run.start_millis,
                );
                r.pgid = Some(run.identity.pid);
                r.last_health_check = now;
                r
            }
            None => ServiceRecord::without_process(&self.inst.key.scope, self.script(), now),
        };
        record.status = status.to_string();
        record.restart_count = self.state.failures;
        let mut meta = Map::new();
        meta.insert("managedBy".into(), Value::from(MANAGED_BY));
        meta.insert("instance".into(), Value::from(self.inst.label.clone()));
        meta.insert("kind".into(), Value::from(self.inst.spec.kind.clone()));
        meta.insert("cwd".into(), Value::from(self.inst.cwd.to_string_lossy()));
        if let Some(spec) = &self.inst.spec.health {
            meta.insert("health".into(), Value::from(describe_probe(spec)));
        }
        if let Some(hash) = &self.started_from {
            meta.insert(SPEC_HASH_KEY.into(), Value::from(hash.clone()));
        }
        record.metadata = meta;
        record.set_exits(&self.exits);
        if let Some((time, result)) = &self.last_probe {
            record.extra.insert(
                LAST_PROBE_KEY.into(),
                serde_json::json!({
                    "time": time,
                    "ok": result.is_ok(),
                    "reason": result.as_ref().err(),
                }),
            );
        }
        record
    }

    /// Keeps `exit` as the last one, dropping the oldest beyond [`EXITS_KEPT`].
    fn record_exit(&mut self, exit: ExitRecord) {
        self.exits.push_back(exit);
        while self.exits.len() > EXITS_KEPT {
            self.exits.pop_front();
        }
    }

    fn persist(&self, status: &str) {
        self.registry.persist(RegistryOp::Upsert {
            key: self.inst.key.clone(),
            record: Box::new(self.record(status)),
        });
    }

    fn spawn(&mut self, ctx: &mut Context<Self>) {
        let _enter = self.span.clone().entered();
        self.generation += 1;
        let generation = self.generation;
        self.started_from = Some(spec_hash(&self.inst));
        let spec = &self.inst.spec;
        let detached = DetachedSpec {
            program: spec.command[0].clone().into(),
            args: spec.command[1..].iter().map(Into::into).collect(),
            cwd: Some(self.inst.cwd.clone()),
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.into(), v.into()))
                .chain(self.marker().env())
                .collect(),
            log: self.paths.service_log(&self.inst.label),
        };
        // The reaper hands over the exit; the identity is read before the
        // child can have been reaped.
        let spawned = crate::logs::timestamps()
            .then(|| start_stamper(&detached.log))
            .transpose()
            .and_then(|output| {
                let io = crate::process::spawn::Stdio3 {
                    stdin: None,
                    output,
                };
                crate::process::reaper::spawn_owned(|| {
                    crate::process::spawn::spawn_pid(&detached, io)
                })
            });
        let (identity, exit) = match spawned {
            Ok(spawned) => spawned,
            Err(e) => {
                error!(error = %e, "cannot start");
                // A run of no length: the state machine answers with a wait
                // (a message at the earliest) or `failed`, never a spawn, so
                // this does not recurse however often it fails.
                let how = format!("could not start: {e}");
                self.record_exit(ExitRecord {
                    time: now_millis(),
                    code: None,
                    signal: None,
                    reason: how.clone(),
                });
                self.on(
                    Event::Exited {
                        uptime: Duration::ZERO,
                    },
                    &how,
                    ctx,
                );
                return;
            }
        };
        let pid = identity.pid;
        self.probe_failure = None;
        self.last_probe = None;
        self.run = Some(Run {
            identity,
            started: Instant::now(),
            start_millis: now_millis(),
            generation,
            probe_failed: false,
            daemon: false,
            settling: false,
        });
        info!(pid, attempt = self.state.failures, "started");
        self.set_ready(false);
        self.await_readiness(Duration::ZERO, ctx);
        self.persist(self.run_status());
        ctx.spawn(
            async move {
                match exit.await {
                    Ok(status) => describe_exit(status),
                    // The reaper went away (the runtime is ending).
                    Err(_) => ExitRecord::unknown("exited (status lost at shutdown)"),
                }
            }
            .into_actor(self)
            .map(move |exit, act, ctx| act.exited(generation, exit, ctx)),
        );
    }

    /// Takes over a process a previous coordinator started.
    fn adopt(&mut self, record: ServiceRecord, identity: Identity, ctx: &mut Context<Self>) {
        self.generation += 1;
        let generation = self.generation;
        let age = Duration::from_millis(now_millis().saturating_sub(record.start_time));
        self.run = Some(Run {
            identity,
            started: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            start_millis: record.start_time,
            generation,
            probe_failed: false,
            daemon: false,
            settling: false,
        });
        self.state = Lifecycle::running(record.restart_count);
        self.exits = record.exits().into();
        self.started_from = record
            .metadata
            .get(SPEC_HASH_KEY)
            .and_then(Value::as_str)
            .map(str::to_string);
        info!(parent: &self.span, pid = identity.pid, "adopted");
        // A run a previous coordinator recorded ready stays ready: its
        // dependents may be running on it already.
        if record.status == status::RUNNING {
            self.set_ready(true);
        } else {
            self.await_readiness(age, ctx);
        }
        self.persist(self.run_status());
        self.watch_unowned(
            identity,
            generation,
            "exited (adopted; status unknown)",
            ctx,
        );
    }

    /// Handles the exit of a process that is not our child (adopted, or a
    /// daemon carrying the run) as run `generation`'s end; its status is
    /// unknown, so `reason` says so.
    fn watch_unowned(
        &self,
        identity: Identity,
        generation: u64,
        reason: &'static str,
        ctx: &mut Context<Self>,
    ) {
        ctx.spawn(
            wait_for_exit(identity)
                .into_actor(self)
                .map(move |(), act, ctx| act.exited(generation, ExitRecord::unknown(reason), ctx)),
        );
    }

    fn exited(&mut self, generation: u64, exit: ExitRecord, ctx: &mut Context<Self>) {
        let Some(run) = self.run.filter(|r| r.generation == generation) else {
            return; // an earlier run's exit, already handled
        };
        // A daemonizing service's leader exits 0 once its daemon is off on
        // its own: while a descendant attributed to the service lives, the
        // service runs, carried by that process (see `carry_on`).
        if (exit.code == Some(0) || run.daemon) && self.state.phase == Phase::Running {
            let looks = if exit.code == Some(0) && !run.daemon {
                SETTLE_TRIES
            } else {
                1
            };
            self.look_for_daemon(run, exit, looks, ctx);
            return;
        }
        self.run = None;
        self.ended(run, exit, ctx);
    }

    /// Looks for the oldest live process that outlived the run's leader
    /// and is attributed to this service (an orphan we inherited as a
    /// subreaper whose environment names the service), `looks` times.
    ///
    /// After a leader's exit 0, a daemon still being born (its setsid parent
    /// not yet gone, its environment unreadable mid-exec) is given up to
    /// `SETTLE_TRIES` looks `SETTLE_PAUSE` apart to show: counting that run
    /// as a crash would start a second daemon beside the first. The looks
    /// are timers, not sleeps, so the actor answers meanwhile; the run stays
    /// current (marked `settling`, so no probe judges its dead leader) until
    /// it is carried on or ended. A stop or restart that comes meanwhile
    /// ends the run as any exit would, and what the leader left goes with it.
    fn look_for_daemon(&mut self, run: Run, exit: ExitRecord, looks: u32, ctx: &mut Context<Self>) {
        let inherited = || crate::process::tree::inherited_by(&self.inst.label, self.paths.root());
        if self.state.phase != Phase::Running {
            for orphan in inherited() {
                if !self.escaped.contains(&orphan) {
                    self.escaped.push(orphan);
                }
            }
            self.run = None;
            self.ended(run, exit, ctx);
            return;
        }
        if let Some(daemon) = inherited().into_iter().next() {
            self.run = None;
            let how = exit.reason.clone();
            self.record_exit(exit);
            self.carry_on(run, daemon, &how, ctx);
            return;
        }
        if looks <= 1 {
            self.run = None;
            self.ended(run, exit, ctx);
            return;
        }
        self.run = Some(Run {
            settling: true,
            ..run
        });
        ctx.run_later(SETTLE_PAUSE, move |act, ctx| {
            if act.run.is_some_and(|r| r.generation == run.generation) {
                act.look_for_daemon(run, exit, looks - 1, ctx);
            }
        });
    }

    /// The run is over: its group's leftovers are ended and the lifecycle
    /// steps on (restart, backoff, stop finished).
    fn ended(&mut self, run: Run, mut exit: ExitRecord, ctx: &mut Context<Self>) {
        // Orphaned grandchildren would hold ports and files the next run
        // needs. Usually there are none (one signal-0 probe says so); when
        // there are, finding them means scanning the process table, which is
        // done on a blocking thread, off the restart's path.
        let identity = run.identity;
        if crate::process::identity::group_exists(identity.pid) {
            let marker = self.marker();
            actix_rt::task::spawn_blocking(move || {
                signal_marked(identity, Some(identity.pid), &marker, Signal::SIGKILL)
            });
        }
        // A run ended by a failed probe was healthy until then, so its uptime
        // counts towards `stable-after` like any other run's.
        if run.probe_failed {
            if let Some(why) = self.probe_failure.take() {
                exit.reason = format!("health probe failed: {why}");
            }
        }
        let how = exit.reason.clone();
        self.record_exit(exit);
        self.set_ready(false);
        let uptime = run.started.elapsed();
        self.on(Event::Exited { uptime }, &how, ctx);
    }

    /// Makes `daemon` the run's process: watched for its exit like an
    /// adopted process, in the record, stopped with the service.
    fn carry_on(&mut self, ended: Run, daemon: Identity, how: &str, ctx: &mut Context<Self>) {
        self.generation += 1;
        let generation = self.generation;
        self.run = Some(Run {
            identity: daemon,
            generation,
            daemon: true,
            probe_failed: false,
            settling: false,
            ..ended
        });
        info!(parent: &self.span, how, pid = daemon.pid, "leader exited; its daemon carries the service on");
        self.persist(self.run_status());
        self.watch_unowned(
            daemon,
            generation,
            "the daemon exited (status unknown)",
            ctx,
        );
    }

    /// Steps the lifecycle and carries out what it says. `how` describes an
    /// exit, for the log line.
    fn on(&mut self, event: Event, how: &str, ctx: &mut Context<Self>) {
        let _enter = self.span.clone().entered();
        let (next, action) = match self.state.step(&self.inst.spec.restart, event) {
            Ok(step) => step,
            Err(invalid) => {
                debug!(?invalid, "event ignored");
                return;
            }
        };
        let before = self.state.phase;
        self.state = next;
        if next.phase != Phase::Backoff {
            if let Some(timer) = self.backoff.take() {
                ctx.cancel_future(timer);
            }
        }
        match action {
            Action::Nothing => {}
            Action::Spawn => {
                if before == Phase::Restarting {
                    info!(how, "restarting on request");
                    self.end_escaped();
                }
                self.spawn(ctx);
            }
            Action::Wait { delay } => {
                warn!(
                    how,
                    attempt = next.failures,
                    delay_ms = delay.as_millis() as u64,
                    "exited; restarting"
                );
                let elapsed = BackoffElapsed {
                    generation: self.generation,
                };
                if delay.is_zero() {
                    // A zero-length timer still waits for the next tick of
                    // the timer wheel (up to 1 ms): the mailbox is sooner.
                    ctx.notify(elapsed);
                } else {
                    self.persist(status::BACKOFF);
                    self.backoff = Some(ctx.notify_later(elapsed, delay));
                }
            }
            Action::GiveUp => {
                error!(
                    how,
                    failures = next.failures,
                    "exited; giving up until `psm restart`"
                );
                self.persist(status::FAILED);
                self.tell(Readiness::Failed(format!(
                    "failed after {} attempts, last {how}",
                    next.failures
                )));
            }
            Action::SignalStop => {
                if let Some(run) = self.run {
                    self.signal_stop(run, ctx);
                }
            }
            Action::Finish => self.finish_stop(ctx),
            Action::Finished => {
                info!(how, "stopped");
                self.finish_stop(ctx);
            }
        }
    }

    fn health_tick(&mut self, ctx: &mut Context<Self>) {
        let Some(run) = self
            .run
            .filter(|r| self.state.phase == Phase::Running && !r.settling)
        else {
            return;
        };
        // No /proc read for the pid's identity here: the exit watcher checks
        // it continuously (our child's wait, an adopted process's pidfd, or
        // the 500 ms identity poll), and reports a death at once. Reading it
        // again per round was 15 % of the daemon's idle CPU.
        // Within the start period a probe still runs: its first pass makes
        // the run ready (dependents start), its failures do not count. A
        // service without a probe is ready once the period is over.
        if run.started.elapsed() < self.inst.spec.start_period && self.inst.spec.health.is_none() {
            return;
        }
        let generation = run.generation;
        let probe = self.probe_once(run);
        ctx.spawn(
            probe
                .into_actor(self)
                .map(move |res, act, ctx| act.probed(generation, res, true, ctx)),
        );
    }

    /// A starting run with a probe is probed right after its spawn and then
    /// every [`start_interval`] until it is ready (Docker's
    /// `start-interval`): a dependency whose probe passes at once releases
    /// its dependents at once, not on the next health round. Only a pass
    /// counts here; failures are judged by the health round alone, so this
    /// never kills sooner than the round would. One probe at a time: the
    /// next is scheduled when this one has answered.
    fn probe_until_ready(&mut self, generation: u64, ctx: &mut Context<Self>) {
        let Some(run) = self
            .run
            .filter(|r| r.generation == generation && self.state.phase == Phase::Running)
        else {
            return;
        };
        if self.ready || self.inst.spec.health.is_none() {
            return;
        }
        let probe = self.probe_once(run);
        ctx.spawn(probe.into_actor(self).map(move |res, act, ctx| {
            act.probed(generation, res, false, ctx);
            let every = start_interval(act.health_interval);
            ctx.run_later(every, move |act, ctx| {
                act.probe_until_ready(generation, ctx)
            });
        }));
    }

    /// One probe of `run`: the configured one, or a pass without one (the
    /// round then only stamps the record).
    fn probe_once(&self, run: Run) -> Probe {
        match self.inst.spec.health.clone() {
            None => Box::pin(std::future::ready(Ok(()))),
            Some(HealthSpec::File { path, max_age }) => {
                let path = self.inst.cwd.join(path);
                Box::pin(std::future::ready(health::probe_file(&path, max_age)))
            }
            Some(HealthSpec::Port { host, port }) => {
                let leader = run.identity;
                Box::pin(async move { health::probe_port(&host, port, leader).await })
            }
            Some(HealthSpec::Probe { name, options }) => {
                let Some(probe) = self.probe.clone() else {
                    let why = format!("no probe named '{name}' is registered");
                    return Box::pin(std::future::ready(Err(why)));
                };
                let msg = ProbeHealth {
                    instance: self.inst.label.clone(),
                    pid: run.identity.pid,
                    options,
                };
                let timeout = self.health_interval.max(health::CONNECT_TIMEOUT);
                Box::pin(async move {
                    match probe.send(msg).timeout(timeout).await {
                        Ok(res) => res,
                        Err(e) => Err(format!("probe '{name}' did not answer: {e}")),
                    }
                })
            }
        }
    }

    /// A probe's result; with `judged` (the health round) a failure counts
    /// (after the start period it kills the run), else only a pass does.
    fn probed(
        &mut self,
        generation: u64,
        result: Result<(), String>,
        judged: bool,
        _ctx: &mut Context<Self>,
    ) {
        let Some(run) = self.run.as_mut().filter(|r| r.generation == generation) else {
            return;
        };
        if !judged && result.is_err() {
            return;
        }
        if self.inst.spec.health.is_some() {
            // Without a probe, the round only stamps the record: no result.
            self.last_probe = Some((now_millis(), result.clone()));
        }
        match result {
            // The whole record, not just a stamp: a registry that lost it
            // (moved aside, edited) has it back within one interval.
            Ok(()) => {
                self.set_ready(true);
                self.persist(status::RUNNING);
            }
            Err(_) if !probe_failure_counts(self.inst.spec.start_period, run.started.elapsed()) => {
            }
            Err(reason) => {
                run.probe_failed = true;
                let identity = run.identity;
                self.probe_failure = Some(reason.clone());
                warn!(parent: &self.span, pid = identity.pid, reason, "unhealthy; killing");
                signal_tree(identity, Some(identity.pid), Signal::SIGKILL);
            }
        }
    }

    /// The stop signal to the run's group now, SIGKILL after the stop
    /// timeout if that run is still the current one. The exit is handled
    /// where every exit is: `exited`.
    ///
    /// Descendants that left the group (`setsid`, often with a cleared
    /// environment) are not reached by the group signal. While the leader
    /// runs they are still found through parenthood: they get the stop
    /// signal by their own identity too, and the stop is finished only once
    /// they are gone as well (`finish_stop`).
    fn signal_stop(&mut self, run: Run, ctx: &mut Context<Self>) {
        let leader = run.identity.pid;
        for escaped in crate::process::tree::descendants(run.identity) {
            let left_group = ProcInfo::read(escaped.pid).is_some_and(|i| i.pgid != leader);
            if left_group && !self.escaped.contains(&escaped) {
                self.escaped.push(escaped);
            }
        }
        // Orphans whose parent already exited, inherited by the coordinator
        // as a subreaper, and their own descendants.
        for orphan in crate::process::tree::inherited_by(&self.inst.label, self.paths.root()) {
            let family = std::iter::once(orphan).chain(crate::process::tree::descendants(orphan));
            for id in family {
                if id != run.identity && !self.escaped.contains(&id) {
                    self.escaped.push(id);
                }
            }
        }
        for escaped in &self.escaped {
            signal_tree(*escaped, None, self.inst.spec.stop_signal);
        }
        signal_tree(
            run.identity,
            Some(run.identity.pid),
            self.inst.spec.stop_signal,
        );
        let generation = run.generation;
        ctx.run_later(self.inst.spec.stop_timeout, move |act, _| {
            if let Some(run) = act.run.filter(|r| r.generation == generation) {
                warn!(parent: &act.span, pid = run.identity.pid, "did not stop in time; SIGKILL");
                signal_tree(run.identity, Some(run.identity.pid), Signal::SIGKILL);
            }
        });
    }

    /// Ends the descendants that left the group (they had the stop signal
    /// with the leader: SIGKILL for those still there after the stop
    /// timeout), then writes the last record.
    fn finish_stop(&mut self, ctx: &mut Context<Self>) {
        let escaped = std::mem::take(&mut self.escaped);
        if escaped.is_empty() {
            self.write_last_record(ctx);
            return;
        }
        let (signal, grace) = (self.inst.spec.stop_signal, self.inst.spec.stop_timeout);
        let ending = actix_rt::task::spawn_blocking(move || end_all(escaped, signal, grace));
        ctx.spawn(
            async move {
                let _ = ending.await;
            }
            .into_actor(self)
            .map(|(), act, ctx| act.write_last_record(ctx)),
        );
    }

    /// After a restart's stop: the escaped descendants of the old run had
    /// its stop signal; those still there get SIGKILL after the stop
    /// timeout, off the actor thread (the new run does not wait for them).
    fn end_escaped(&mut self) {
        let escaped = std::mem::take(&mut self.escaped);
        if escaped.is_empty() {
            return;
        }
        let (signal, grace) = (self.inst.spec.stop_signal, self.inst.spec.stop_timeout);
        actix_rt::task::spawn_blocking(move || end_all(escaped, signal, grace));
    }

    /// Writes the service's last record (`stopped`, or none), answers every
    /// stop request and ends the actor.
    fn write_last_record(&mut self, ctx: &mut Context<Self>) {
        let keep_record = matches!(self.state.phase, Phase::Stopped { keep_record: true });
        let op = if keep_record {
            RegistryOp::Upsert {
                key: self.inst.key.clone(),
                record: Box::new(self.record(status::STOPPED)),
            }
        } else {
            RegistryOp::Remove {
                key: self.inst.key.clone(),
                pid: None,
            }
        };
        if !keep_record {
            // A removal joins the batch: `down` stops every service and then
            // writes once, and its final write (queued after this one)
            // is what it waits for.
            self.registry.persist(op);
            self.stopped(ctx);
            return;
        }
        // A user's `psm stop` returns once the registry says `stopped`.
        ctx.spawn(
            self.registry
                .persist_now(op)
                .into_actor(self)
                .map(|_, act, ctx| act.stopped(ctx)),
        );
    }

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        for w in self.stop_waiters.drain(..) {
            let _ = w.send(());
        }
        ctx.stop();
    }
}

impl Actor for ServiceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let adoptable = self.adopt.take().and_then(|r| {
            let id = r.identity().filter(Identity::is_alive)?;
            Some((r, id))
        });
        match adoptable {
            Some((record, identity)) => self.adopt(record, identity, ctx),
            None => self.spawn(ctx),
        }
        // Without a probe the round only stamps the record: the coordinator
        // stamps them all in one registry change (a timer, a wake and a
        // record per service per round were most of the idle cost).
        if self.inst.spec.health.is_some() {
            health::every_round(ctx, self.health_interval, Self::health_tick);
        }
    }
}

impl Handler<RefreshRecord> for ServiceActor {
    type Result = ();

    /// The round's stamp missed this record: written whole, as the round
    /// of a probed service writes it, when the run is up and ready.
    fn handle(&mut self, _: RefreshRecord, _: &mut Context<Self>) {
        let up = self
            .run
            .filter(|r| self.state.phase == Phase::Running && !r.settling)
            .is_some_and(|r| r.started.elapsed() >= self.inst.spec.start_period);
        if up {
            self.set_ready(true);
            self.persist(status::RUNNING);
        }
    }
}

impl Handler<StopService> for ServiceActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: StopService, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        // Answered when the actor has ended (or dropped, should it end
        // another way: the reply then comes all the same).
        self.stop_waiters.push(tx);
        let keep_record = msg.keep_record;
        self.on(Event::Stop { keep_record }, "", ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<RestartService> for ServiceActor {
    type Result = ();

    fn handle(&mut self, msg: RestartService, ctx: &mut Context<Self>) {
        self.on(Event::Restart { force: msg.force }, "", ctx);
    }
}

impl Handler<BackoffElapsed> for ServiceActor {
    type Result = ();

    fn handle(&mut self, msg: BackoffElapsed, ctx: &mut Context<Self>) {
        if msg.generation == self.generation {
            self.backoff = None;
            self.on(Event::BackoffElapsed, "", ctx);
        }
    }
}

/// Stops each process (blocking): `signal`, SIGKILL after `grace`.
/// Identity-checked: one that is gone, or whose pid now names another
/// process, is left alone.
fn end_all(processes: Vec<Identity>, signal: Signal, grace: Duration) {
    for identity in processes {
        let req = StopRequest {
            signal,
            ..StopRequest::new(identity, None, grace)
        };
        terminate(&req);
    }
}

/// The health check as `psm status <service>` shows it.
fn describe_probe(spec: &HealthSpec) -> String {
    match spec {
        HealthSpec::Port { host, port } => format!("port {host}:{port}"),
        HealthSpec::File { path, max_age } => {
            format!("file {path} younger than {} ms", max_age.as_millis())
        }
        HealthSpec::Probe { name, .. } => format!("probe {name}"),
    }
}

/// The record's key for the last probe's time and outcome.
pub const LAST_PROBE_KEY: &str = "lastProbe";

/// The exit, now: "exited with code 3" / "killed by SIGKILL".
fn describe_exit(status: std::process::ExitStatus) -> ExitRecord {
    use std::os::unix::process::ExitStatusExt;
    exit_record(now_millis(), status.code(), status.signal())
}

/// What a wait status says, as a record (a pure function, table-tested).
fn exit_record(time: u64, code: Option<i32>, signal: Option<i32>) -> ExitRecord {
    let name = signal.map(|sig| match Signal::try_from(sig) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => format!("signal {sig}"),
    });
    let reason = match (code, &name) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(name)) => format!("killed by {name}"),
        _ => "exited".to_string(),
    };
    ExitRecord {
        time,
        code,
        signal: name,
        reason,
    }
}

/// Starts `psm log-stamp <log>` in a session of its own, reading a new
/// pipe; returns the pipe's write end for the service's stdout and stderr.
/// The stamper ends at end of input, when the service and all its
/// descendants have closed the pipe; the reaper reaps it then.
fn start_stamper(log: &std::path::Path) -> std::io::Result<std::os::fd::OwnedFd> {
    let (reader, writer) = crate::process::spawn::cloexec_pipe()?;
    let spec = DetachedSpec {
        program: std::env::current_exe()?.into(),
        args: vec!["log-stamp".into(), log.into()],
        cwd: None,
        env: Vec::new(),
        log: log.to_path_buf(),
    };
    let io = crate::process::spawn::Stdio3 {
        stdin: Some(reader),
        output: Some(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")?
                .into(),
        ),
    };
    crate::process::reaper::spawn_unwatched(|| crate::process::spawn::spawn_pid(&spec, io))?;
    Ok(writer)
}

/// Resolves when the (not our child) process `identity` exits.
async fn wait_for_exit(identity: Identity) {
    #[cfg(target_os = "linux")]
    if let Some(fd) = pidfd::open(identity) {
        // A pidfd becomes readable when its process exits.
        // SAFETY: the AsyncFd takes ownership of the fd and is the only user
        // of it until it is dropped, which deregisters it first.
        if let Ok(afd) = unsafe { tokio::io::unix::AsyncFd::register(fd) } {
            let _ = afd.readable().await;
            return;
        }
    }
    #[cfg(target_os = "macos")]
    if let Some(fd) = crate::process::macos::exit_fd(identity) {
        // A kqueue holding EVFILT_PROC/NOTE_EXIT becomes readable when the
        // process exits: macOS's pidfd.
        // SAFETY: as above, the AsyncFd owns the fd until dropped.
        if let Ok(afd) = unsafe { tokio::io::unix::AsyncFd::register(fd) } {
            let _ = afd.readable().await;
            return;
        }
    }
    // Without either: poll the identity, at most every half second.
    while identity.is_alive() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(target_os = "linux")]
mod pidfd {
    use std::os::fd::{FromRawFd, OwnedFd};

    use crate::process::Identity;

    /// A pidfd for `identity`, verified to name that very process: the check
    /// comes after the open, so a pid reused in between cannot slip through.
    pub fn open(identity: Identity) -> Option<OwnedFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, identity.pid, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the kernel just returned this fd to us; nobody else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        identity.is_alive().then_some(fd)
    }
}

#[cfg(test)]
mod exit_tests {
    use super::*;

    #[test]
    fn wait_statuses_read_as_reasons() {
        let cases = [
            (Some(3), None, "exited with code 3", None),
            (Some(0), None, "exited with code 0", None),
            (None, Some(9), "killed by SIGKILL", Some("SIGKILL")),
            (None, Some(15), "killed by SIGTERM", Some("SIGTERM")),
            (None, Some(99), "killed by signal 99", Some("signal 99")),
            (None, None, "exited", None),
        ];
        for (code, signal, reason, name) in cases {
            let e = exit_record(7, code, signal);
            assert_eq!(e.reason, reason, "{code:?} {signal:?}");
            assert_eq!(e.signal.as_deref(), name);
            assert_eq!((e.time, e.code), (7, code));
        }
    }
}
