//! The page's sessions: a random id in a `Secure; HttpOnly; SameSite=Strict` cookie,
//! kept in the journal under its digest with the token's digest and a CSRF token, so
//! that every listener sees a sign-out, and a token removed ends its sessions.

use axum::http::{HeaderMap, header};
use rand::Rng;
use sha2::{Digest, Sha256};

use super::AppState;
use crate::clock::now_secs;
use crate::journal::{JournalError, SessionRecord};
use crate::source::manual::ManualSource;

pub(super) const COOKIE: &str = "gitdispatch_session";
/// The sign-in form's own CSRF cookie.
pub(super) const LOGIN_COOKIE: &str = "gitdispatch_login";
/// How long a sign-in form may be filled in.
pub(super) const LOGIN_FORM_SECS: i64 = 600;
/// A sign-in or sign-out form's body at most: a token and a CSRF token.
pub(super) const FORM_BODY_LIMIT: usize = 4 * 1024;

/// A digest, hex, of what must not be kept as it is (a session id, a token).
pub(super) fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// 256 random bits, hex: a session id, a CSRF token.
pub(super) fn random_token() -> String {
    hex::encode(rand::rng().random::<[u8; 32]>())
}

/// Whether two secrets are equal, compared in constant time.
pub(super) fn same(expected: &str, offered: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), offered.as_bytes())
        .is_ok()
}

/// A signed-in session of the page.
pub(super) struct Session {
    pub(super) record: SessionRecord,
}

impl Session {
    /// Whether `offered` is this session's CSRF token, which every change the page asks
    /// for must carry.
    pub(super) fn csrf_matches(&self, offered: Option<&str>) -> bool {
        offered.is_some_and(|offered| same(&self.record.csrf, offered))
    }
}

pub(super) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

/// The session the request's cookie names: open (not signed out), not expired, and
/// opened with a token that is still one of `api.tokens`.
pub(super) async fn session(
    state: &AppState,
    source: &ManualSource,
    headers: &HeaderMap,
) -> Result<Option<Session>, JournalError> {
    let Some(id) = cookie(headers, COOKIE).filter(|id| !id.is_empty()) else {
        return Ok(None);
    };
    let Some(journal) = state.journal.as_ref() else {
        return Ok(None);
    };
    let Some(record) = journal.session(&digest(&id)).await? else {
        return Ok(None);
    };
    let current = record.expires_at > now_secs() && source.holds_digest(&record.token_digest);
    Ok(current.then_some(Session { record }))
}
