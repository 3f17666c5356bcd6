//! The extension seam: new health probes and new service kinds, as actors.
//!
//! - A **probe** is any actor that handles [`ProbeHealth`]. A service selects
//!   it with `health = { probe = "<name>", options = { ... } }`; its
//!   `ServiceActor` sends one `ProbeHealth` per health interval and treats an
//!   `Err` (or no answer) like any failed probe: the group is killed and the
//!   restart policy decides.
//! - A **kind** is a factory for the actor that supervises one instance of a
//!   service whose config says `kind = "<name>"` (the built-in kind,
//!   `daemon`, is [`ServiceActor`](super::ServiceActor)). The factory gets the
//!   instance, a [`RegistryHandle`] to persist through and the record to
//!   adopt, and returns a [`ServiceHandle`] the coordinator stops and
//!   restarts it by.
//!
//! Extensions are registered on an [`Extensions`] value passed to
//! `cli::run_with`, so an extended `psm` is a ten-line binary; see `examples/`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::messages::{ProbeHealth, ReadinessChanged, RestartService, StopService};
use crate::config::Instance;
use crate::paths::Paths;
use crate::registry::{RegistryHandle, ServiceRecord};

/// What a kind factory is given to start one instance.
pub struct KindContext {
    pub instance: Instance,
    /// Queue or await registry changes; the only registry access a kind has.
    pub registry: RegistryHandle,
    pub paths: Paths,
    pub health_interval: Duration,
    /// The record a previous coordinator left for this instance, if its
    /// process still runs: adopt it rather than start a duplicate.
    pub adopt: Option<ServiceRecord>,
    /// Where to report readiness ([`ReadinessChanged`]). A kind that never
    /// reports is taken as ready once started.
    pub readiness: Option<Recipient<ReadinessChanged>>,
}

/// How the coordinator talks to the actor supervising one instance.
#[derive(Clone)]
pub struct ServiceHandle {
    pub stop: Recipient<StopService>,
    pub restart: Recipient<RestartService>,
}

impl<A> From<Addr<A>> for ServiceHandle
where
    A: Actor<Context = Context<A>> + Handler<StopService> + Handler<RestartService>,
{
    fn from(addr: Addr<A>) -> Self {
        ServiceHandle {
            stop: addr.clone().recipient(),
            restart: addr.recipient(),
        }
    }
}

/// Starts the actor for one instance of a custom kind. Called on the
/// coordinator's thread, inside its actix system.
pub trait ServiceKind: Send + Sync + 'static {
    fn start(&self, ctx: KindContext) -> ServiceHandle;
}

type ProbeFactory = Arc<dyn Fn() -> Recipient<ProbeHealth> + Send + Sync>;

/// The probes and kinds a coordinator knows beyond the built-in ones.
#[derive(Clone, Default)]
pub struct Extensions {
    probes: HashMap<String, ProbeFactory>,
    kinds: HashMap<String, Arc<dyn ServiceKind>>,
}

impl Extensions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a probe: `start` runs once in the coordinator's system and
    /// returns the probe actor's recipient.
    pub fn probe<F>(mut self, name: &str, start: F) -> Self
    where
        F: Fn() -> Recipient<ProbeHealth> + Send + Sync + 'static,
    {
        self.probes.insert(name.to_string(), Arc::new(start));
        self
    }

    /// Registers a service kind.
    pub fn kind(mut self, name: &str, kind: impl ServiceKind) -> Self {
        self.kinds.insert(name.to_string(), Arc::new(kind));
        self
    }

    pub fn probe_names(&self) -> impl Iterator<Item = &str> {
        self.probes.keys().map(String::as_str)
    }

    pub fn kind_names(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }

    pub(crate) fn start_probes(&self) -> HashMap<String, Recipient<ProbeHealth>> {
        self.probes
            .iter()
            .map(|(name, start)| (name.clone(), start()))
            .collect()
    }

    pub(crate) fn kind_for(&self, name: &str) -> Option<Arc<dyn ServiceKind>> {
        self.kinds.get(name).cloned()
    }
}
