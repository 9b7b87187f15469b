//! Reading request bodies under a budget. A body is read before its signature can be
//! checked, so what an unauthenticated client can make the process hold is bounded: in
//! bytes held at once from one address, and in all. A body over `max_body_bytes` is
//! refused (by its declared length before any of it is read).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;

/// Bodies of the operator API (a trigger, a lane action, a replay) are JSON of a few
/// fields: none is read past this, and none before its caller is authenticated.
pub const OPERATOR_BODY_LIMIT: usize = 64 * 1024;

/// The budget counts in units of this many bytes.
const UNIT: usize = 1024;

/// How long a body waits for room in the total budget before it is refused (503).
const WAIT_FOR_ROOM: Duration = Duration::from_secs(2);

/// What bodies may hold at once, in all and per address.
pub struct BodyBudget {
    total: Arc<Semaphore>,
    per_address: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// Bytes of the budget held by one request; given back when dropped.
pub struct Held {
    budget: Arc<BodyBudget>,
    address: IpAddr,
    bytes: usize,
    permits: Vec<OwnedSemaphorePermit>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.permits.clear();
        let mut held = self.budget.held.lock().expect("body budget lock");
        if let Some(bytes) = held.get_mut(&self.address) {
            *bytes = bytes.saturating_sub(self.bytes);
            if *bytes == 0 {
                held.remove(&self.address);
            }
        }
    }
}

impl BodyBudget {
    pub fn new(total: usize, per_address: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            total: Arc::new(Semaphore::new(
                total.div_ceil(UNIT).min(Semaphore::MAX_PERMITS),
            )),
            per_address,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// An empty claim for a request from `address`.
    pub fn claim(self: &Arc<Self>, address: IpAddr) -> Held {
        Held {
            budget: self.clone(),
            address,
            bytes: 0,
            permits: Vec::new(),
        }
    }
}

impl Held {
    /// Adds `bytes` to what this request holds, or refuses: 429 when its address holds
    /// too much already, 503 when the whole budget stays full.
    async fn grow(&mut self, bytes: usize) -> Result<(), ApiError> {
        {
            let mut held = self.budget.held.lock().expect("body budget lock");
            let from_address = held.entry(self.address).or_insert(0);
            if *from_address + bytes > self.budget.per_address {
                return Err(ApiError::AddressBudget(self.address));
            }
            *from_address += bytes;
            self.bytes += bytes;
        }
        let units = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX);
        let acquire = self.budget.total.clone().acquire_many_owned(units);
        match tokio::time::timeout(WAIT_FOR_ROOM, acquire).await {
            Ok(Ok(permit)) => {
                self.permits.push(permit);
                Ok(())
            }
            _ => Err(ApiError::Busy),
        }
    }
}

/// Reads at most `limit` bytes of body under the budget; more is a 413.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    held: &mut Held,
) -> Result<Vec<u8>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::TooLarge(limit));
    }
    // A declared length is claimed at once, so that a body that cannot fit is refused
    // before any of it is read.
    if let Some(length) = declared {
        held.grow(length as usize).await?;
    }
    let mut collected = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| ApiError::BodyRead(error.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if collected.len() + data.len() > limit {
            return Err(ApiError::TooLarge(limit));
        }
        if declared.is_none() {
            held.grow(data.len()).await?;
        } else if collected.len() + data.len() > declared.unwrap_or(0) as usize {
            // More than declared: hyper refuses such a body itself; never hold more
            // than was claimed.
            return Err(ApiError::BodyRead(
                "the body is longer than its Content-Length".to_string(),
            ));
        }
        collected.extend_from_slice(&data);
    }
    Ok(collected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_address_cannot_hold_more_than_its_share_and_gets_it_back() {
        let budget = BodyBudget::new(10 * UNIT, 4 * UNIT);
        let address: IpAddr = "192.0.2.1".parse().unwrap();
        let mut first = budget.claim(address);
        first.grow(3 * UNIT).await.unwrap();
        let mut second = budget.claim(address);
        assert!(matches!(
            second.grow(2 * UNIT).await,
            Err(ApiError::AddressBudget(_))
        ));
        drop(first);
        second.grow(4 * UNIT).await.unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let mut third = budget.claim(other);
        third.grow(4 * UNIT).await.unwrap();
        assert_eq!(budget.total.available_permits(), 2);
    }
}
