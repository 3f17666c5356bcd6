//! Extension example: a new service kind, `job`, supervised by its own actor.
//!
//! ```toml
//! [[service]]
//! name = "backup"
//! type = "global"
//! kind = "job"
//! command = ["sh", "-c", "date >> backups.txt"]
//! options = { every = "10m" }
//! ```
//! Instead of keeping a process alive, a job runs its command every `every`
//! (a humantime duration), one run at a time, and records in the registry,
//! through the `RegistryHandle` it is given, how many runs there were and
//! how the last one ended. `psm stop backup` ends the schedule (and a run in
//! progress), `psm restart backup` runs it now.
//!
//! `cargo run --example scheduled_job -- --root DIR up`.

use std::process::ExitCode;
use std::time::Duration;

use actix::prelude::*;
use psm::process::{signal_tree, DetachedSpec, Identity};
use psm::registry::{RegistryOp, ServiceRecord};
use psm::supervisor::{
    Extensions, KindContext, RestartService, ServiceHandle, ServiceKind, StopService,
};
use psm::time::now_millis;
use serde_json::Value;

/// Supervises one job: owns its schedule, the run in progress (if any) and
/// its counters. On stop it kills a run in progress and removes its record.
struct JobActor {
    ctx: KindContext,
    every: Duration,
    runs: u64,
    running: Option<Identity>,
    last_exit: Option<String>,
    /// Set by `StopService`: no run starts and no record is written after
    /// it, though the interval and a killed run's exit may still arrive
    /// while the removal is being persisted.
    stopping: bool,
}

impl JobActor {
    fn record(&self, status: &str) -> ServiceRecord {
        let scope = &self.ctx.instance.key.scope;
        let script = self.ctx.instance.spec.command.join(" ");
        let mut r = match self.running {
            Some(id) => ServiceRecord::new(scope, script, id, now_millis()),
            None => ServiceRecord::without_process(scope, script, now_millis()),
        };
        r.status = status.to_string();
        r.metadata
            .insert("managedBy".into(), Value::from("coordinator"));
        r.metadata.insert("kind".into(), Value::from("job"));
        r.metadata.insert("runs".into(), Value::from(self.runs));
        r.metadata.insert(
            "lastExit".into(),
            self.last_exit.clone().map_or(Value::Null, Value::from),
        );
        r
    }

    fn persist(&self, status: &str) {
        self.ctx.registry.persist(RegistryOp::Upsert {
            key: self.ctx.instance.key.clone(),
            record: Box::new(self.record(status)),
        });
    }

    fn run_now(&mut self, ctx: &mut Context<Self>) {
        if self.running.is_some() || self.stopping {
            return; // one run at a time: a slow job skips a beat
        }
        let spec = &self.ctx.instance.spec;
        let detached = DetachedSpec {
            program: spec.command[0].clone().into(),
            args: spec.command[1..].iter().map(Into::into).collect(),
            cwd: Some(self.ctx.instance.cwd.clone()),
            env: spec.env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
            log: self.ctx.paths.service_log(&self.ctx.instance.label),
        };
        // The coordinator's reaper waits for every child it has: a child
        // spawned through it hands its exit status here (a child waited for
        // any other way would have its status taken by the reaper).
        let spawned = psm::process::reaper::spawn_owned(|| {
            psm::process::spawn::spawn_pid(&detached, Default::default())
        });
        let (identity, exit) = match spawned {
            Ok(s) => s,
            Err(e) => {
                self.last_exit = Some(format!("could not start: {e}"));
                self.persist("idle");
                return;
            }
        };
        self.running = Some(identity);
        self.runs += 1;
        self.persist("running");
        ctx.spawn(
            async move {
                exit.await
                    .map(|s| s.to_string())
                    .unwrap_or_else(|_| "exit status lost".to_string())
            }
            .into_actor(self)
            .map(|how, act, _| {
                act.running = None;
                act.last_exit = Some(how);
                if !act.stopping {
                    act.persist("idle");
                }
            }),
        );
    }
}

impl Actor for JobActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.run_now(ctx);
        ctx.run_interval(self.every, |act, ctx| act.run_now(ctx));
    }
}

impl Handler<StopService> for JobActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopService, _: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        if let Some(id) = self.running.take() {
            signal_tree(id, Some(id.pid), nix::sys::signal::Signal::SIGKILL);
        }
        let remove = RegistryOp::Remove {
            key: self.ctx.instance.key.clone(),
            pid: None,
        };
        Box::pin(
            self.ctx
                .registry
                .persist_now(remove)
                .into_actor(self)
                .map(|_, _, ctx| ctx.stop()),
        )
    }
}

impl Handler<RestartService> for JobActor {
    type Result = ();

    fn handle(&mut self, _: RestartService, ctx: &mut Context<Self>) {
        self.run_now(ctx);
    }
}

/// The factory the coordinator calls for each `kind = "job"` instance.
struct JobKind;

impl ServiceKind for JobKind {
    fn start(&self, ctx: KindContext) -> ServiceHandle {
        let every = ctx.instance.spec.options["every"]
            .as_str()
            .and_then(|s| humantime::parse_duration(s).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(60));
        JobActor {
            ctx,
            every,
            runs: 0,
            running: None,
            last_exit: None,
            stopping: false,
        }
        .start()
        .into()
    }
}

fn main() -> ExitCode {
    psm::cli::main(Extensions::new().kind("job", JobKind))
}
