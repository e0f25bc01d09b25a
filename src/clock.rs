//! Wall-clock time as numbers: seconds (the exposition's timestamps) and milliseconds (DAS's).

use std::time::SystemTime;

/// Seconds since the Unix epoch, with fractions; 0 for a time before it.
pub fn unix_seconds(t: SystemTime) -> f64 {
    since_epoch(t).as_secs_f64()
}

/// Whole milliseconds since the Unix epoch (the unit of DAS's `Timestamp`); 0 before it.
pub fn unix_millis(t: SystemTime) -> i64 {
    i64::try_from(since_epoch(t).as_millis()).unwrap_or(i64::MAX)
}

fn since_epoch(t: SystemTime) -> std::time::Duration {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn seconds_since_the_epoch() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_704_067_200_500);
        assert_eq!(unix_seconds(t), 1_704_067_200.5);
        assert_eq!(unix_millis(t), 1_704_067_200_500);
        assert_eq!(
            unix_seconds(SystemTime::UNIX_EPOCH - Duration::from_secs(1)),
            0.0
        );
    }
}
