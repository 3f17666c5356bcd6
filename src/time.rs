//! Wall-clock helpers. The registry stores milliseconds since the epoch, as the seed does.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Time since a millisecond timestamp; zero for timestamps in the future or unset.
pub fn since_millis(then: u64) -> Duration {
    Duration::from_millis(now_millis().saturating_sub(then))
}

/// Time until the wall clock next reaches a whole multiple of `interval`
/// (counted from the epoch): timers started at different moments with the
/// same interval then fire together. Zero for a zero interval.
pub fn until_next_multiple(interval: Duration) -> Duration {
    let step = interval.as_millis() as u64;
    if step == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(step - now_millis() % step)
}

/// A compact humantime rendering, rounded to what a person reads in a table:
/// whole seconds, and only the two largest units ("3h 12m", "45s").
pub fn short_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let full = humantime::format_duration(Duration::from_secs(secs)).to_string();
    full.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_multiple_is_within_one_interval() {
        let i = Duration::from_millis(250);
        let d = until_next_multiple(i);
        assert!(d > Duration::ZERO && d <= i, "{d:?}");
        assert_eq!(until_next_multiple(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn short_durations() {
        assert_eq!(short_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(short_duration(Duration::from_secs(45)), "45s");
        assert_eq!(
            short_duration(Duration::from_secs(3 * 3600 + 12 * 60 + 5)),
            "3h 12m"
        );
    }
}
