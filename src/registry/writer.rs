//! `RegistryActor`: the only writer of the registry inside the daemon, and
//! [`RegistryHandle`], the narrow handle the actors below the coordinator
//! (services, extension kinds) persist through.
//!
//! It belongs to the Process State Manager, not to the daemon: the supervisor
//! layer writes through it without knowing who runs it.
//!
//! It runs on its own arbiter (thread), so flock waits and fsyncs never stall
//! the actors that supervise processes. Operations that arrive while a write
//! is in progress queue up in its mailbox and are applied together in the next
//! write: N services starting at once cost a handful of rewrites, not N.
//! Every write is still a locked read-modify-write, so updates made by CLI
//! processes between two of our writes are never lost.

use std::time::Duration;

use actix::prelude::*;
use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tracing::{debug, error};

use super::{Registry, ServiceKey, ServiceRecord, Store, StoreError};

/// One change to the registry.
#[derive(Debug, Clone)]
pub enum RegistryOp {
    /// Inserts or replaces a record, keeping fields and metadata keys that
    /// others (the watchdog, other tools) added to the existing one.
    Upsert {
        key: ServiceKey,
        record: Box<ServiceRecord>,
    },
    /// Removes a record, only if it still names `pid` (when given): a record
    /// replaced by someone else in the meantime stays.
    Remove { key: ServiceKey, pid: Option<i32> },
    /// One health round of the services without a probe: `lastHealthCheck`
    /// of each named record that is `running` becomes `at`. Their check is
    /// the exit watcher's, which reports a death at once, so a record still
    /// running at the round was checked then; any other record is left for
    /// its actor to write (the coordinator asks it to, see `RefreshRecord`).
    Stamp { keys: Vec<ServiceKey>, at: u64 },
    /// Removes the records of a session's stopped services and, once it has
    /// none left, the session itself.
    EndSession {
        id: String,
        stopped: Vec<(String, ServiceRecord)>,
    },
}

/// Any actor → `RegistryActor`: apply `op` in the next write. Fire and forget.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Persist(pub RegistryOp);

/// Any actor → `RegistryActor`: apply `op` in the next write and reply once
/// it is on disk (or failed).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct PersistNow(pub RegistryOp);

/// Any actor → `RegistryActor`: the registry as it is after pending writes.
#[derive(Message)]
#[rtype(result = "Result<Registry, String>")]
pub struct ReadRegistry;

/// What a service (or an extension kind's actor) may do to the registry:
/// queue a change, or queue one and wait until it is on disk. It cannot read
/// the registry or reach the writer's other messages, and it does not name
/// the actor type, so the supervisor layer never depends on the daemon.
#[derive(Clone)]
pub struct RegistryHandle {
    persist: Recipient<Persist>,
    persist_now: Recipient<PersistNow>,
}

impl RegistryHandle {
    /// Applies `op` in the writer's next batch; fire and forget.
    pub fn persist(&self, op: RegistryOp) {
        self.persist.do_send(Persist(op));
    }

    /// Applies `op` in a write that starts now; resolves once it is on disk
    /// (or failed, or the writer is gone).
    pub fn persist_now(
        &self,
        op: RegistryOp,
    ) -> impl std::future::Future<Output = Result<(), String>> + 'static {
        let sent = self.persist_now.send(PersistNow(op));
        async move {
            sent.await
                .unwrap_or_else(|_| Err("registry actor stopped".into()))
        }
    }
}

impl From<&Addr<RegistryActor>> for RegistryHandle {
    fn from(addr: &Addr<RegistryActor>) -> Self {
        RegistryHandle {
            persist: addr.clone().recipient(),
            persist_now: addr.clone().recipient(),
        }
    }
}

type Waiter = oneshot::Sender<Result<(), String>>;

/// How long a change waits at least for others to share its write: a health
/// round of N services arrives within a few milliseconds.
const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// How long at most: the registry never lags the processes by more.
const MAX_WINDOW: Duration = Duration::from_millis(250);

pub struct RegistryActor {
    store: Store,
    pending: Vec<RegistryOp>,
    waiters: Vec<Waiter>,
    flush_scheduled: bool,
    /// How long the last write took. The next batch waits at least twice
    /// that, so writing never takes more than a third of this thread's time
    /// however fast changes come (1,000 services starting at once would
    /// otherwise mean hundreds of rewrites of an ever larger file).
    last_write: Duration,
}

impl RegistryActor {
    pub fn new(store: Store) -> Self {
        RegistryActor {
            store,
            pending: Vec::new(),
            waiters: Vec::new(),
            flush_scheduled: false,
            last_write: Duration::ZERO,
        }
    }

    fn enqueue(&mut self, op: RegistryOp, ctx: &mut Context<Self>) {
        self.pending.push(op);
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            // Deferred so that every change sent in the same moment (a
            // health round, N services starting) joins this write.
            let window = BATCH_WINDOW.max((self.last_write * 2).min(MAX_WINDOW));
            ctx.run_later(window, |act, _| act.flush());
        }
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.flush_scheduled = false;
        let ops = std::mem::take(&mut self.pending);
        let count = ops.len();
        let started = std::time::Instant::now();
        let result = self
            .store
            .update_if(|registry| {
                let changed = ops
                    .into_iter()
                    .fold(false, |acc, op| apply(registry, op) | acc);
                Ok::<_, StoreError>(((), changed))
            })
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)));
        self.last_write = started.elapsed();
        match &result {
            Ok(()) => debug!(ops = count, "registry written"),
            Err(e) => error!(ops = count, error = %e, "registry write failed"),
        }
        for w in self.waiters.drain(..) {
            let _ = w.send(result.clone());
        }
    }
}

/// Applies one operation; returns whether it changed anything.
pub fn apply(registry: &mut Registry, op: RegistryOp) -> bool {
    match op {
        RegistryOp::Upsert { key, record } => {
            let mut record = *record;
            if let Some(old) = registry.get(&key) {
                merge_kept(&mut record.metadata, &old.metadata);
                merge_kept(&mut record.extra, &old.extra);
            }
            registry.insert(&key, record);
            true
        }
        RegistryOp::Remove { key, pid } => {
            let matches = registry
                .get(&key)
                .is_some_and(|r| pid.is_none() || r.pid == pid);
            matches && registry.remove(&key).is_some()
        }
        RegistryOp::Stamp { keys, at } => {
            keys.iter()
                .fold(false, |acc, key| match registry.get_mut(key) {
                    Some(r) if r.status == super::status::RUNNING => {
                        r.last_health_check = at;
                        true
                    }
                    _ => acc,
                })
        }
        RegistryOp::EndSession { id, stopped } => {
            crate::registry::manager::remove_stopped(registry, &id, &stopped).0 > 0
                || registry.sessions.contains_key(&id)
                    && crate::registry::manager::end_session_if_empty(registry, &id)
        }
    }
}

/// Copies keys present in `old` but not in `new`.
fn merge_kept(new: &mut Map<String, Value>, old: &Map<String, Value>) {
    for (k, v) in old {
        new.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

impl Actor for RegistryActor {
    type Context = Context<Self>;

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        // Nothing queued may be lost on shutdown.
        self.flush();
        Running::Stop
    }
}

impl Handler<Persist> for RegistryActor {
    type Result = ();

    fn handle(&mut self, msg: Persist, ctx: &mut Context<Self>) {
        self.enqueue(msg.0, ctx);
    }
}

impl Handler<PersistNow> for RegistryActor {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, msg: PersistNow, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        // Someone waits: write now, with whatever else is queued. A flush
        // scheduled for later then finds nothing left to do.
        self.pending.push(msg.0);
        self.flush();
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err("registry actor stopped".into()))
        })
    }
}

impl Handler<ReadRegistry> for RegistryActor {
    type Result = Result<Registry, String>;

    fn handle(&mut self, _: ReadRegistry, _: &mut Context<Self>) -> Self::Result {
        self.flush();
        self.store
            .read()
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Identity;
    use crate::registry::{status, Scope};

    /// A round's stamp moves `lastHealthCheck` of running records only, and
    /// says it changed nothing when no named record runs (no rewrite).
    #[test]
    fn a_stamp_touches_running_records_only() {
        let id = Identity {
            pid: 7,
            start_time: 1,
        };
        let mut registry = Registry::default();
        let key = |n: &str| ServiceKey::global(n);
        for (name, state) in [("up", status::RUNNING), ("down", status::BACKOFF)] {
            let mut r = ServiceRecord::new(&Scope::Global, "x", id, 10);
            r.status = state.into();
            registry.insert(&key(name), r);
        }
        let stamp = |keys: &[&str], at| RegistryOp::Stamp {
            keys: keys.iter().map(|n| key(n)).collect(),
            at,
        };
        // (keys, changed, then up's stamp, down's stamp)
        let table: [(&[&str], bool, u64, u64); 4] = [
            (&["down"], false, 10, 10),
            (&["gone"], false, 10, 10),
            (&["up", "down", "gone"], true, 20, 10),
            (&[], false, 20, 10),
        ];
        for (i, (keys, changed, up, down)) in table.into_iter().enumerate() {
            let at = 20;
            assert_eq!(apply(&mut registry, stamp(keys, at)), changed, "row {i}");
            let seen = |n: &str| registry.get(&key(n)).unwrap().last_health_check;
            assert_eq!((seen("up"), seen("down")), (up, down), "row {i}");
        }
    }
}
