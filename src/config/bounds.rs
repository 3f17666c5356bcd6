//! The bounds table: the allowed range of every numeric and duration key of
//! `psm.toml`, in one place, so validation, the README's config reference and
//! the tests cannot drift apart (a test checks the README against [`Key::ALL`]).
//!
//! A bound is where a value outside it makes psm misbehave rather than merely
//! act oddly: a `health-interval` of 1ns makes the coordinator spin and grow
//! without limit; a `keep` of 4 billion makes every rotation loop for hours;
//! "99999999999d" overflows the deadlines computed from it. Minimums keep the
//! daemon from spinning; maximums keep deadlines representable and make a unit
//! typo ("15d" for "15s") an error instead of a service that never restarts.
//!
//! Zero stays allowed where it means something: `base = "0s"` restarts at
//! once (the benchmarks use it), `attempts = 0` never restarts, and
//! `stable-after = "0s"` cannot spin because a run shorter than the
//! supervisor's floor (`supervisor::policy`) never counts as stable, so an
//! instant-exit loop still ends `failed` after `attempts`.

use std::fmt;
use std::time::Duration;

/// Every bounded key. The TOML name is [`Key::name`], the range [`Key::range`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    HealthInterval,
    RestartBase,
    RestartMax,
    RestartAttempts,
    StableAfter,
    LogMaxSize,
    LogKeep,
    StartPeriod,
    StopTimeout,
    HealthPort,
    HealthMaxAge,
    ControlIdleTimeout,
    ControlMaxConnections,
}

/// An inclusive range of allowed values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    Duration { min: Duration, max: Duration },
    Count { min: i64, max: i64 },
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const HOUR: Duration = secs(3600);
const DAY: Duration = secs(24 * 3600);
const GIB: i64 = 1024 * 1024 * 1024;

impl Key {
    pub const ALL: [Key; 13] = [
        Key::HealthInterval,
        Key::RestartBase,
        Key::RestartMax,
        Key::RestartAttempts,
        Key::StableAfter,
        Key::LogMaxSize,
        Key::LogKeep,
        Key::StartPeriod,
        Key::StopTimeout,
        Key::HealthPort,
        Key::HealthMaxAge,
        Key::ControlIdleTimeout,
        Key::ControlMaxConnections,
    ];

    /// The key as written in `psm.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Key::HealthInterval => "health-interval",
            Key::RestartBase => "base",
            Key::RestartMax => "max",
            Key::RestartAttempts => "attempts",
            Key::StableAfter => "stable-after",
            Key::LogMaxSize => "max-size",
            Key::LogKeep => "keep",
            Key::StartPeriod => "start-period",
            Key::StopTimeout => "stop-timeout",
            Key::HealthPort => "port",
            Key::HealthMaxAge => "max-age",
            Key::ControlIdleTimeout => "idle-timeout",
            Key::ControlMaxConnections => "max-connections",
        }
    }

    /// The table: why each bound sits where it does is in the README's
    /// config reference, next to the same numbers.
    pub fn range(self) -> Range {
        let duration = |min, max| Range::Duration { min, max };
        let count = |min, max| Range::Count { min, max };
        match self {
            // Each round probes every service and writes the registry.
            Key::HealthInterval => duration(ms(10), HOUR),
            Key::RestartBase => duration(Duration::ZERO, HOUR),
            Key::RestartMax => duration(Duration::ZERO, DAY),
            Key::RestartAttempts => count(0, 10_000),
            Key::StableAfter => duration(Duration::ZERO, DAY),
            // Below a few hundred bytes rotation would run on every write.
            Key::LogMaxSize => count(512, 64 * GIB),
            Key::LogKeep => count(0, 100),
            Key::StartPeriod => duration(Duration::ZERO, HOUR),
            // `down` waits at most an hour for everything together.
            Key::StopTimeout => duration(Duration::ZERO, secs(600)),
            Key::HealthPort => count(1, 65_535),
            // An mtime is only as fine as the file system's clock.
            Key::HealthMaxAge => duration(ms(10), DAY),
            Key::ControlIdleTimeout => duration(ms(10), DAY),
            Key::ControlMaxConnections => count(1, 1024),
        }
    }

    /// `Err` with the allowed range when `value` lies outside it.
    pub fn check_duration(self, value: Duration) -> Result<(), Range> {
        match self.range() {
            Range::Duration { min, max } if (min..=max).contains(&value) => Ok(()),
            range => Err(range),
        }
    }

    /// `Err` with the allowed range when `value` lies outside it.
    pub fn check_count(self, value: i64) -> Result<(), Range> {
        match self.range() {
            Range::Count { min, max } if (min..=max).contains(&value) => Ok(()),
            range => Err(range),
        }
    }
}

impl fmt::Display for Range {
    /// "10ms to 1h", "0 to 100".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Range::Duration { min, max } => write!(
                f,
                "{} to {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
            Range::Count { min, max } => write!(f, "{min} to {max}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each key's edges: the bounds themselves pass, one step outside fails.
    #[test]
    fn edges_of_every_range() {
        for key in Key::ALL {
            match key.range() {
                Range::Duration { min, max } => {
                    assert!(min <= max, "{key:?}");
                    assert_eq!(key.check_duration(min), Ok(()), "{key:?}");
                    assert_eq!(key.check_duration(max), Ok(()), "{key:?}");
                    assert!(key.check_duration(max + ms(1)).is_err(), "{key:?}");
                    if let Some(below) = min.checked_sub(Duration::from_nanos(1)) {
                        assert!(key.check_duration(below).is_err(), "{key:?}");
                    }
                    assert!(key.check_count(0).is_err(), "{key:?} is no count");
                }
                Range::Count { min, max } => {
                    assert!(min <= max, "{key:?}");
                    assert_eq!(key.check_count(min), Ok(()), "{key:?}");
                    assert_eq!(key.check_count(max), Ok(()), "{key:?}");
                    assert!(key.check_count(max + 1).is_err(), "{key:?}");
                    assert!(key.check_count(min - 1).is_err(), "{key:?}");
                    assert!(key.check_duration(ms(1)).is_err(), "{key:?} is no duration");
                }
            }
        }
    }

    /// The values the issue names, and the defaults, against the table.
    #[test]
    fn named_values() {
        let day = |n: u64| secs(n * 24 * 3600);
        let table: &[(Key, Result<Duration, i64>, bool)] = &[
            (Key::HealthInterval, Ok(Duration::from_nanos(1)), false),
            (Key::HealthInterval, Ok(Duration::ZERO), false),
            (Key::HealthInterval, Ok(day(99_999_999_999)), false),
            (Key::HealthInterval, Ok(secs(15)), true),
            (Key::HealthInterval, Ok(ms(50)), true),
            (Key::LogKeep, Err(4_294_967_295), false),
            (Key::LogKeep, Err(3), true),
            (Key::LogKeep, Err(-1), false),
            (Key::RestartAttempts, Err(3000), true),
            (Key::RestartAttempts, Err(-1), false),
            (Key::RestartBase, Ok(Duration::ZERO), true),
            (Key::StableAfter, Ok(Duration::ZERO), true),
            (Key::LogMaxSize, Err(10 * 1024 * 1024), true),
            (Key::LogMaxSize, Err(0), false),
            (Key::HealthPort, Err(0), false),
            (Key::HealthPort, Err(65_536), false),
            (Key::StopTimeout, Ok(day(1)), false),
        ];
        for (key, value, ok) in table {
            let got = match value {
                Ok(d) => key.check_duration(*d),
                Err(n) => key.check_count(*n),
            };
            assert_eq!(got.is_ok(), *ok, "{key:?} {value:?}");
        }
    }

    #[test]
    fn ranges_read_as_words() {
        assert_eq!(Key::HealthInterval.range().to_string(), "10ms to 1h");
        assert_eq!(Key::LogKeep.range().to_string(), "0 to 100");
        assert_eq!(Key::StableAfter.range().to_string(), "0s to 1day");
    }
}
