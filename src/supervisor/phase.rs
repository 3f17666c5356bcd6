//! A `ServiceActor`'s lifecycle as a pure state machine: given where it is
//! and what happened, where it goes next and the one thing it must do. The
//! actor only carries the action out (Horust's `service_handler`), so every
//! interleaving of exits, timers, stops and restarts is a row of the table
//! tested below, not a combination of flags.
//!
//! ```text
//!            Exited: decide → Restart ─────────▶ Backoff ──BackoffElapsed──┐
//!   ┌──────── Running ◀───────────────────────────────────────────────────┘
//!   │          │  │ Exited: decide → GiveUp ──▶ Failed ──Restart──▶ Running
//!   │          │  └ Restart{force} ──▶ Restarting ──Exited──▶ Running
//!   │          └ Stop ──▶ Stopping ──Exited──▶ Stopped (record kept or removed)
//!   └ Backoff / Failed ──Stop──▶ Stopped at once (no process to wait for)
//! ```
//!
//! `Stopped` is final: the actor ends once it has written its last record.
//! Readiness within `Running` (recorded `starting` until ready, then
//! `running`) is decided by [`ready_when`] and [`probe_failure_counts`].
//! Events that cannot happen in a phase (an exit with no process, a stale
//! timer) are refused with [`Invalid`]; the actor ignores them.

use std::time::Duration;

use super::policy::{decide, Decision};
use crate::config::RestartPolicy;

/// Where a service is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A process runs: spawned by this actor or adopted.
    Running,
    /// No process; the next start waits for the backoff timer.
    Backoff,
    /// No process; given up after too many failures in a row, until a user
    /// starts or restarts it.
    Failed,
    /// The stop signal went to the process on a restart request; the next
    /// start follows its exit at once, with the failure count reset.
    Restarting,
    /// The stop signal went to the process on a stop request; its exit ends
    /// the service. With `keep_record` its record stays as `stopped`.
    Stopping { keep_record: bool },
    /// Final: the service ended; its record is kept as `stopped` or removed.
    Stopped { keep_record: bool },
}

/// What happened to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The watched process ended (or could not be started), after `uptime`.
    Exited { uptime: Duration },
    /// The backoff timer of the current wait fired.
    BackoffElapsed,
    /// `StopService`.
    Stop { keep_record: bool },
    /// `RestartService`.
    Restart { force: bool },
}

/// The one thing the actor does on a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing (a start of a running service, a second stop).
    Nothing,
    /// Start a process now.
    Spawn,
    /// Record `backoff` and start again after `delay` (by a message or a
    /// timer, never by calling itself: a start that fails at once must not
    /// grow the stack).
    Wait { delay: Duration },
    /// Record `failed`; nothing runs until a user asks.
    GiveUp,
    /// Send the stop signal to the process (SIGKILL after the stop timeout).
    SignalStop,
    /// Cancel a pending backoff and end the service without a process.
    Finish,
    /// The process is gone; end the service (record, reply, stop the actor).
    Finished,
}

/// An event the phase cannot receive: the actor ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    pub phase: Phase,
    pub event: Event,
}

/// The lifecycle state: the phase and the failures in a row so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    pub phase: Phase,
    pub failures: u32,
}

impl Lifecycle {
    /// A service whose first process is being started (or adopted).
    pub fn running(failures: u32) -> Self {
        Lifecycle {
            phase: Phase::Running,
            failures,
        }
    }

    /// Whether the service has a process the actor watches.
    pub fn has_process(self) -> bool {
        matches!(
            self.phase,
            Phase::Running | Phase::Restarting | Phase::Stopping { .. }
        )
    }

    /// The next state and what to do, or `Invalid`.
    pub fn step(
        self,
        policy: &RestartPolicy,
        event: Event,
    ) -> Result<(Lifecycle, Action), Invalid> {
        use Phase::*;
        let to = |phase, failures, action| Ok((Lifecycle { phase, failures }, action));
        let failures = self.failures;
        match (self.phase, event) {
            (Running, Event::Exited { uptime }) => match decide(policy, failures, uptime) {
                Decision::Restart { attempt, delay } => {
                    to(Backoff, attempt, Action::Wait { delay })
                }
                Decision::GiveUp { failures } => to(Failed, failures, Action::GiveUp),
            },
            (Running, Event::Stop { keep_record }) => {
                to(Stopping { keep_record }, failures, Action::SignalStop)
            }
            (Running, Event::Restart { force: false }) => to(Running, failures, Action::Nothing),
            (Running, Event::Restart { force: true }) => to(Restarting, 0, Action::SignalStop),

            (Backoff, Event::BackoffElapsed) => to(Running, failures, Action::Spawn),
            (Backoff | Failed, Event::Stop { keep_record }) => {
                to(Stopped { keep_record }, failures, Action::Finish)
            }
            (Backoff | Failed, Event::Restart { .. }) => to(Running, 0, Action::Spawn),

            (Restarting, Event::Exited { .. }) => to(Running, 0, Action::Spawn),
            // The stop signal is out already (and its SIGKILL timer armed):
            // the exit now ends the service instead of restarting it.
            (Restarting, Event::Stop { keep_record }) => {
                to(Stopping { keep_record }, failures, Action::Nothing)
            }
            (Restarting, Event::Restart { .. }) => to(Restarting, failures, Action::Nothing),

            (Stopping { keep_record }, Event::Exited { .. }) => {
                to(Stopped { keep_record }, failures, Action::Finished)
            }
            // Two stops at once (`psm stop` then `down`): a removal wins, so
            // `down` never leaves a record behind.
            (Stopping { keep_record }, Event::Stop { keep_record: again }) => to(
                Stopping {
                    keep_record: keep_record && again,
                },
                failures,
                Action::Nothing,
            ),
            // A stop in progress is not undone: the coordinator starts a new
            // actor once this one has ended.
            (Stopping { .. }, Event::Restart { .. }) => to(self.phase, failures, Action::Nothing),

            (phase, event) => Err(Invalid { phase, event }),
        }
    }
}

/// When a run becomes ready (recorded `running` rather than `starting`, and
/// its dependents may start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyWhen {
    /// Now.
    Now,
    /// Once it has stayed up this much longer.
    After(Duration),
    /// When its health probe first passes.
    ProbePasses,
}

/// Readiness of a run that has been up for `up`: with a probe, its first
/// pass; without, the end of the start period (Docker's `start-period`,
/// systemd's `Type=simple` when it is zero).
pub fn ready_when(has_probe: bool, start_period: Duration, up: Duration) -> ReadyWhen {
    match start_period.checked_sub(up) {
        _ if has_probe => ReadyWhen::ProbePasses,
        Some(left) if !left.is_zero() => ReadyWhen::After(left),
        _ => ReadyWhen::Now,
    }
}

/// Whether a failed probe counts (kills the run): not within the start
/// period, where probes run only to find the run ready early.
pub fn probe_failure_counts(start_period: Duration, up: Duration) -> bool {
    up >= start_period
}

#[cfg(test)]
mod tests {
    use super::*;

    use Phase::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            base: MS(100),
            max: MS(1000),
            attempts: 2,
            stable_after: Duration::from_secs(10),
        }
    }

    fn at(phase: Phase, failures: u32) -> Lifecycle {
        Lifecycle { phase, failures }
    }

    const QUICK: Event = Event::Exited {
        uptime: Duration::from_millis(300),
    };
    const STABLE: Event = Event::Exited {
        uptime: Duration::from_secs(11),
    };
    const STOP: Event = Event::Stop { keep_record: true };
    const REMOVE: Event = Event::Stop { keep_record: false };
    const START: Event = Event::Restart { force: false };
    const RESTART: Event = Event::Restart { force: true };
    const KEEP: Phase = Stopped { keep_record: true };

    #[test]
    fn valid_transitions() {
        // (from, event, to, action)
        let table = [
            (
                at(Running, 0),
                QUICK,
                at(Backoff, 1),
                Action::Wait { delay: MS(100) },
            ),
            (
                at(Running, 1),
                QUICK,
                at(Backoff, 2),
                Action::Wait { delay: MS(200) },
            ),
            (at(Running, 2), QUICK, at(Failed, 3), Action::GiveUp),
            (
                at(Running, 2),
                STABLE,
                at(Backoff, 1),
                Action::Wait { delay: MS(100) },
            ),
            (
                at(Running, 1),
                STOP,
                at(Stopping { keep_record: true }, 1),
                Action::SignalStop,
            ),
            (
                at(Running, 1),
                REMOVE,
                at(Stopping { keep_record: false }, 1),
                Action::SignalStop,
            ),
            (at(Running, 1), START, at(Running, 1), Action::Nothing),
            (
                at(Running, 1),
                RESTART,
                at(Restarting, 0),
                Action::SignalStop,
            ),
            (
                at(Backoff, 1),
                Event::BackoffElapsed,
                at(Running, 1),
                Action::Spawn,
            ),
            (at(Backoff, 1), STOP, at(KEEP, 1), Action::Finish),
            (at(Backoff, 1), START, at(Running, 0), Action::Spawn),
            (at(Backoff, 1), RESTART, at(Running, 0), Action::Spawn),
            (at(Failed, 3), START, at(Running, 0), Action::Spawn),
            (at(Failed, 3), RESTART, at(Running, 0), Action::Spawn),
            (
                at(Failed, 3),
                REMOVE,
                at(Stopped { keep_record: false }, 3),
                Action::Finish,
            ),
            (at(Restarting, 0), QUICK, at(Running, 0), Action::Spawn),
            (
                at(Restarting, 0),
                STOP,
                at(Stopping { keep_record: true }, 0),
                Action::Nothing,
            ),
            (
                at(Restarting, 0),
                RESTART,
                at(Restarting, 0),
                Action::Nothing,
            ),
            (
                at(Stopping { keep_record: true }, 1),
                QUICK,
                at(KEEP, 1),
                Action::Finished,
            ),
            (
                at(Stopping { keep_record: true }, 1),
                REMOVE,
                at(Stopping { keep_record: false }, 1),
                Action::Nothing,
            ),
            (
                at(Stopping { keep_record: false }, 1),
                STOP,
                at(Stopping { keep_record: false }, 1),
                Action::Nothing,
            ),
            (
                at(Stopping { keep_record: true }, 1),
                RESTART,
                at(Stopping { keep_record: true }, 1),
                Action::Nothing,
            ),
        ];
        for (from, event, to, action) in table {
            assert_eq!(
                from.step(&policy(), event),
                Ok((to, action)),
                "{from:?} on {event:?}"
            );
        }
    }

    #[test]
    fn invalid_transitions() {
        let table = [
            // No process to exit.
            (Backoff, QUICK),
            (Failed, QUICK),
            // A timer from an earlier wait.
            (Running, Event::BackoffElapsed),
            (Failed, Event::BackoffElapsed),
            (Restarting, Event::BackoffElapsed),
            (Stopping { keep_record: true }, Event::BackoffElapsed),
            // Nothing leaves Stopped.
            (KEEP, QUICK),
            (KEEP, STOP),
            (KEEP, RESTART),
            (KEEP, Event::BackoffElapsed),
        ];
        for (phase, event) in table {
            assert_eq!(
                at(phase, 1).step(&policy(), event),
                Err(Invalid { phase, event }),
                "{phase:?} on {event:?}"
            );
        }
    }

    /// Every phase × event pair is either a row above or refused: no event
    /// leaves a service in a phase with a process it does not watch.
    #[test]
    fn process_ownership_follows_the_action() {
        let phases = [
            Running,
            Backoff,
            Failed,
            Restarting,
            Stopping { keep_record: true },
            Stopped { keep_record: false },
        ];
        let events = [QUICK, Event::BackoffElapsed, STOP, REMOVE, START, RESTART];
        for phase in phases {
            for event in events {
                let from = at(phase, 1);
                let Ok((to, action)) = from.step(&policy(), event) else {
                    continue;
                };
                // A process exists after the step iff one existed and did not
                // exit, or one was just spawned.
                let exited = matches!(event, Event::Exited { .. });
                let expected = (from.has_process() && !exited) || action == Action::Spawn;
                assert_eq!(
                    to.has_process(),
                    expected,
                    "{phase:?} on {event:?} → {to:?}"
                );
            }
        }
    }

    #[test]
    fn readiness() {
        let table = [
            (true, MS(0), MS(0), ReadyWhen::ProbePasses),
            (true, MS(500), MS(100), ReadyWhen::ProbePasses),
            (false, MS(0), MS(0), ReadyWhen::Now),
            (false, MS(500), MS(100), ReadyWhen::After(MS(400))),
            (false, MS(500), MS(500), ReadyWhen::Now),
            // An adopted run older than its start period.
            (false, MS(500), MS(9000), ReadyWhen::Now),
        ];
        for (probe, period, up, want) in table {
            assert_eq!(
                ready_when(probe, period, up),
                want,
                "{probe} {period:?} {up:?}"
            );
        }
        let counts = [
            (MS(0), MS(0), true),
            (MS(500), MS(499), false),
            (MS(500), MS(500), true),
        ];
        for (period, up, want) in counts {
            assert_eq!(probe_failure_counts(period, up), want, "{period:?} {up:?}");
        }
    }

    /// A program that cannot start, restarted with no delay: the steps end in
    /// `Failed` after `attempts`, each a separate step (the actor sends
    /// itself one message per attempt).
    #[test]
    fn instant_failures_end_failed() {
        let p = RestartPolicy {
            base: Duration::ZERO,
            stable_after: Duration::ZERO,
            attempts: 1000,
            ..policy()
        };
        let mut state = Lifecycle::running(0);
        let mut steps = 0;
        loop {
            let (next, action) = state
                .step(
                    &p,
                    Event::Exited {
                        uptime: Duration::ZERO,
                    },
                )
                .unwrap();
            steps += 1;
            if action == Action::GiveUp {
                assert_eq!(next, at(Failed, 1001));
                break;
            }
            assert_eq!(
                action,
                Action::Wait {
                    delay: Duration::ZERO
                }
            );
            (state, _) = next.step(&p, Event::BackoffElapsed).unwrap();
        }
        assert_eq!(steps, 1001);
    }
}
