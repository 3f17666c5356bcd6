//! Restart decisions, as pure functions with table tests. Actors only carry
//! them out (Horust's `handle_restart_strategy`).
//!
//! A crash-looping service with the default policy runs six times in all: the
//! first start and five restarts, waiting 1, 2, 4, 8 and 16 s, then it is
//! `failed`. A run that lasted `stable-after` or longer resets the count, so a
//! service that crashes once a day is never given up on. A run shorter than
//! [`MIN_STABLE_RUN`] never does, whatever `stable-after` says: with
//! `stable-after = "0s"` a program that exits at once would otherwise be
//! respawned forever, hundreds of times a second.

use std::time::Duration;

use crate::config::RestartPolicy;

/// What to do after a service's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after `delay`; this is restart number `attempt` in a row.
    Restart { attempt: u32, delay: Duration },
    /// Too many failures in a row: mark it `failed` and leave it down.
    GiveUp { failures: u32 },
}

/// The shortest run that can count as stable. A program that cannot start
/// (bad flag, missing file, a port in use) fails within milliseconds; a
/// quarter second is far beyond that and below any `stable-after` a service
/// that is meant to run would sensibly use.
pub const MIN_STABLE_RUN: Duration = Duration::from_millis(250);

/// Attempt k (1-based) waits `min(base * 2^(k-1), max)`.
pub fn backoff_delay(policy: &RestartPolicy, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    policy.base.saturating_mul(factor).min(policy.max)
}

/// Decides after an exit. `failures` is how many restarts in a row preceded
/// this run; `uptime` is how long this run lasted.
pub fn decide(policy: &RestartPolicy, failures: u32, uptime: Duration) -> Decision {
    let failures = if uptime >= policy.stable_after.max(MIN_STABLE_RUN) {
        0
    } else {
        failures
    };
    let attempt = failures + 1;
    if attempt > policy.attempts {
        Decision::GiveUp { failures: attempt }
    } else {
        Decision::Restart {
            attempt,
            delay: backoff_delay(policy, attempt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy::default()
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn backoff_table() {
        let p = policy();
        let table = [
            (1, 1),
            (2, 2),
            (3, 4),
            (4, 8),
            (5, 16),
            (6, 30),
            (7, 30),
            (40, 30),
        ];
        for (attempt, secs) in table {
            assert_eq!(backoff_delay(&p, attempt), S(secs), "attempt {attempt}");
        }
        let zero = RestartPolicy {
            base: Duration::ZERO,
            ..p
        };
        assert_eq!(backoff_delay(&zero, 3), Duration::ZERO);
    }

    #[test]
    fn decision_table() {
        let p = policy();
        let quick = Duration::from_millis(10);
        // (failures before, uptime, expected)
        let table = [
            (
                0,
                quick,
                Decision::Restart {
                    attempt: 1,
                    delay: S(1),
                },
            ),
            (
                1,
                quick,
                Decision::Restart {
                    attempt: 2,
                    delay: S(2),
                },
            ),
            (
                4,
                quick,
                Decision::Restart {
                    attempt: 5,
                    delay: S(16),
                },
            ),
            (5, quick, Decision::GiveUp { failures: 6 }),
            (
                5,
                S(60),
                Decision::Restart {
                    attempt: 1,
                    delay: S(1),
                },
            ),
            (
                3,
                S(59),
                Decision::Restart {
                    attempt: 4,
                    delay: S(8),
                },
            ),
        ];
        for (failures, uptime, expected) in table {
            assert_eq!(
                decide(&p, failures, uptime),
                expected,
                "{failures} after {uptime:?}"
            );
        }
    }

    #[test]
    fn crash_loop_runs_six_times_then_fails() {
        let p = policy();
        let (mut failures, mut runs, mut waits) = (0, 1, Vec::new());
        while let Decision::Restart { attempt, delay } = decide(&p, failures, Duration::ZERO) {
            failures = attempt;
            runs += 1;
            waits.push(delay.as_secs());
        }
        assert_eq!(runs, 6);
        assert_eq!(waits, [1, 2, 4, 8, 16]);
    }

    /// `stable-after = "0s"`: runs shorter than the floor still count as
    /// failures in a row, longer ones reset the count.
    #[test]
    fn stable_after_zero_has_a_floor() {
        let p = RestartPolicy {
            stable_after: Duration::ZERO,
            base: Duration::ZERO,
            ..policy()
        };
        let restart = |attempt| Decision::Restart {
            attempt,
            delay: Duration::ZERO,
        };
        let ms = Duration::from_millis;
        // (failures before, uptime, expected)
        let table = [
            (0, Duration::ZERO, restart(1)),
            (3, ms(2), restart(4)),
            (4, ms(249), restart(5)),
            (5, ms(2), Decision::GiveUp { failures: 6 }),
            (5, MIN_STABLE_RUN, restart(1)),
            (5, ms(400), restart(1)),
        ];
        for (failures, uptime, expected) in table {
            assert_eq!(
                decide(&p, failures, uptime),
                expected,
                "{failures} after {uptime:?}"
            );
        }
        // Above the floor, stable-after rules as before.
        let p = RestartPolicy {
            stable_after: ms(300),
            ..p
        };
        assert_eq!(decide(&p, 4, ms(299)), restart(5));
        assert_eq!(decide(&p, 4, ms(300)), restart(1));
    }

    #[test]
    fn zero_attempts_never_restarts() {
        let p = RestartPolicy {
            attempts: 0,
            ..policy()
        };
        assert_eq!(
            decide(&p, 0, Duration::ZERO),
            Decision::GiveUp { failures: 1 }
        );
    }
}
