//! The wall clock, as the stores record it: milliseconds and seconds since the Unix
//! epoch (0 before it); and [`Clock`], the same clock read through tokio's, for what
//! tests steer with paused time (the worker's due times, the embedded queue's
//! visibility).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

pub fn now_secs() -> i64 {
    now_ms() / 1000
}

/// Wall-clock milliseconds read from tokio's clock after a wall-clock start, so that
/// tests with paused time see them move with it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_base_ms: i64,
    instant_base: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            wall_base_ms: now_ms(),
            instant_base: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.wall_base_ms + self.instant_base.elapsed().as_millis() as i64
    }

    /// The instant of tokio's clock at wall-clock `ms` (now, for one already past).
    pub fn instant_at(&self, ms: i64) -> tokio::time::Instant {
        let offset = (ms - self.wall_base_ms).max(0) as u64;
        self.instant_base + Duration::from_millis(offset)
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}
