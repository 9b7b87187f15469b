//! How long to wait before trying again: exponential backoff with jitter, shared by
//! everything that retries (jobs, SQS batches, records of an end).

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter: `initial × 2^(attempt-1)`, capped at `max`, of
/// which a random half is kept so that retries of many jobs spread out.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let full = initial.saturating_mul(1u32 << exponent).min(max);
    let half = full / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let initial = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        for attempt in 1..=12 {
            let full = (initial * 2u32.pow(attempt - 1)).min(max);
            for _ in 0..50 {
                let delay = backoff(attempt, initial, max);
                assert!(
                    delay >= full / 2 && delay <= full,
                    "attempt {attempt}: {delay:?}"
                );
            }
        }
        assert!(backoff(u32::MAX, initial, max) <= max);
    }
}
