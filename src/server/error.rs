//! Why a request was refused: the one place errors become HTTP statuses.

use super::*;

/// Why a request was refused; the one place errors become HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("could not queue the jobs: {0}")]
    Queue(#[from] QueueError),
    #[error("body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("could not read the body: {0}")]
    BodyRead(String),
    #[error("address {0} is not allowed")]
    AddressNotAllowed(IpAddr),
    #[error("too many requests from {0}")]
    RateLimited(IpAddr, Duration),
    #[error("{0} has too many request bodies in flight")]
    AddressBudget(IpAddr),
    #[error("too many request bodies in flight; try again")]
    Busy,
    #[error("this daemon takes no {0} deliveries: its configuration has no [{0}] section")]
    NotConfigured(&'static str),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    /// An operator call about something there is none of (a pipeline, a delivery, an
    /// action).
    #[error("{0}")]
    NotFound(String),
    /// A well-formed operator call that cannot be done as asked.
    #[error("{0}")]
    Unprocessable(String),
    /// What the call needs (the journal, the executor, the queue) failed or is not here.
    #[error("{0}")]
    Unavailable(String),
}

impl From<crate::journal::JournalError> for ApiError {
    fn from(error: crate::journal::JournalError) -> ApiError {
        ApiError::Unavailable(crate::error::Chain(&error).to_string())
    }
}

impl From<super::bodies::Refusal> for ApiError {
    fn from(refusal: super::bodies::Refusal) -> ApiError {
        match refusal.status {
            422 => ApiError::Unprocessable(refusal.reason),
            _ => ApiError::Source(SourceError::Malformed(refusal.reason)),
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Source(SourceError::Unauthenticated(_)) => StatusCode::UNAUTHORIZED,
            ApiError::Source(SourceError::Forbidden(_)) | ApiError::AddressNotAllowed(_) => {
                StatusCode::FORBIDDEN
            }
            ApiError::Source(SourceError::UnsupportedMediaType(_)) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::Source(SourceError::Malformed(_)) | ApiError::BodyRead(_) => {
                StatusCode::BAD_REQUEST
            }
            // A job the queue can never take (over its size limit): sending the
            // delivery again cannot help.
            ApiError::Source(SourceError::Unusable(_))
            | ApiError::Plan(_)
            | ApiError::Queue(QueueError::Refused { .. }) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Queue(QueueError::Unavailable { .. })
            | ApiError::Busy
            | ApiError::Source(SourceError::Unavailable(_))
            | ApiError::Ledger(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotConfigured(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited(..) | ApiError::AddressBudget(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}
impl From<crate::admission::AdmissionError> for ApiError {
    fn from(error: crate::admission::AdmissionError) -> ApiError {
        match error {
            crate::admission::AdmissionError::Ledger(error) => ApiError::Ledger(error),
            crate::admission::AdmissionError::Queue(error) => ApiError::Queue(error),
            crate::admission::AdmissionError::Failed(reason) => {
                ApiError::Queue(QueueError::unavailable(reason))
            }
            crate::admission::AdmissionError::Journal(error) => {
                ApiError::Queue(QueueError::unavailable_from("the journal", error))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (
            status,
            axum::Json(crate::operator::Refusal {
                error: self.to_string(),
            }),
        )
            .into_response();
        if let ApiError::RateLimited(_, wait) = &self {
            let seconds = wait.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&seconds) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
