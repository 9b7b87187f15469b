//! Sources: where events come from. Each one authenticates a delivery over its raw
//! bytes and only then decodes it into an [`crate::event::Event`].
//!
//! Invariant: this is the only module that sees raw request bytes.

pub mod github;

/// Why a delivery was refused. `server` maps each variant to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// 401: no usable signature, or one that no configured secret produced.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: the secret that signed the delivery does not speak for its repository.
    #[error("{0}")]
    Forbidden(String),
    /// 415: a body type the source never sends.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 400: a missing header, or a body that is not what it claims to be.
    #[error("{0}")]
    Malformed(String),
    /// 422: well-formed, but not an event that can be acted on.
    #[error("{0}")]
    Unusable(String),
}
