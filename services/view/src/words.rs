//! Ages and durations in words, the same on the page and in the terminal.

use chrono::{DateTime, Utc};

/// A duration in its largest two units: `42 s`, `7 min`, `2 h 5 min`, `4 d 3 h`.
pub fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        s => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// How long before `now` `at` was: `7 min ago`.
pub fn ago(now: DateTime<Utc>, at: DateTime<Utc>) -> String {
    format!(
        "{} ago",
        duration(u64::try_from((now - at).num_seconds()).unwrap_or(0))
    )
}

/// How long after `now` `at` is: `in 3 h 0 min` (`now` when past).
pub fn until(now: DateTime<Utc>, at: DateTime<Utc>) -> String {
    match u64::try_from((at - now).num_seconds()) {
        Ok(secs) if secs > 0 => format!("in {}", duration(secs)),
        _ => "now".to_owned(),
    }
}

/// The snake-case name a serialized enum goes by (`suppressed`, `cooldown`).
pub fn name_of<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_their_two_largest_units() {
        assert_eq!(duration(42), "42 s");
        assert_eq!(duration(7 * 60 + 5), "7 min");
        assert_eq!(duration(2 * 3600 + 5 * 60), "2 h 5 min");
        assert_eq!(duration(4 * 86_400 + 3 * 3600 + 59), "4 d 3 h");
        let now = Utc::now();
        assert_eq!(ago(now, now - chrono::Duration::seconds(90)), "1 min ago");
        assert_eq!(until(now, now + chrono::Duration::hours(3)), "in 3 h 0 min");
        assert_eq!(until(now, now - chrono::Duration::hours(3)), "now");
    }
}
