//! The wall clock, as the stores record it: milliseconds and seconds since the Unix
//! epoch (0 before it). What must be steered in tests (the worker's and the embedded
//! queue's own clocks) is not read from here.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

pub fn now_secs() -> i64 {
    now_ms() / 1000
}
