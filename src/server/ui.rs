//! The operator page, `GET /ui`: server-rendered HTML with its little script embedded,
//! no external assets. Signed in with a token of `[api] tokens`: the sign-in form
//! carries a CSRF token of its own (a cookie and a field that must match), and sets a
//! `Secure; HttpOnly; SameSite=Strict` session cookie holding a random id. The session
//! is kept in the journal (under the id's digest, with the token's digest and the
//! session's CSRF token), so that signing out ends it for every listener, and a token
//! removed by a reload ends its sessions. Every action the page offers is a call of the
//! operator API, sent with the session's CSRF token; no page may be framed.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use rand::Rng;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::body::read_body;
use super::console::{journal, lanes_view, queue_view};
use super::{AppState, ClientAddress};
use crate::clock::now_secs;
use crate::journal::{DeliveryFilter, JournalError, SessionRecord};
use crate::source::manual::ManualSource;

const COOKIE: &str = "gitdispatch_session";
/// The sign-in form's own CSRF cookie.
const LOGIN_COOKIE: &str = "gitdispatch_login";
/// How long a sign-in form may be filled in.
const LOGIN_FORM_SECS: i64 = 600;
/// A sign-in or sign-out form's body at most: a token and a CSRF token.
const FORM_BODY_LIMIT: usize = 4 * 1024;

/// A digest, hex, of what must not be kept as it is (a session id, a token).
pub(super) fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// 256 random bits, hex: a session id, a CSRF token.
fn random_token() -> String {
    hex::encode(rand::rng().random::<[u8; 32]>())
}

/// Whether two secrets are equal, compared in constant time.
fn same(expected: &str, offered: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), offered.as_bytes())
        .is_ok()
}

/// A signed-in session of the page.
pub(super) struct Session {
    record: SessionRecord,
}

impl Session {
    /// Whether `offered` is this session's CSRF token, which every change the page asks
    /// for must carry.
    pub(super) fn csrf_matches(&self, offered: Option<&str>) -> bool {
        offered.is_some_and(|offered| same(&self.record.csrf, offered))
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
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

/// What no page of ours may be: framed (clickjacking), or kept in a cache.
fn unframed(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn set_cookie(response: &mut Response, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}.paused{color:#b00;font-weight:bold}.running{color:#070}code{font-size:12px}\
details summary{cursor:pointer}input[type=text]{width:14em}";

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

fn page(title: &str, head: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title>{head}<style>{STYLE}</style></head><body>{body}</body></html>"
    ))
}

pub(super) async fn login_form() -> Response {
    let csrf = random_token();
    let mut response = unframed(
        page(
            "gitdispatch — sign in",
            "",
            &format!(
                "<h1>gitdispatch</h1><form method=post action=/ui/login>\
                 <input type=hidden name=csrf value={csrf}>\
                 <label>API token <input id=token name=token type=password autocomplete=current-password required></label> \
                 <button id=sign-in type=submit>Sign in</button></form>"
            ),
        )
        .into_response(),
    );
    set_cookie(
        &mut response,
        &format!(
            "{LOGIN_COOKIE}={csrf}; Path=/ui/login; Max-Age={LOGIN_FORM_SECS}; Secure; HttpOnly; SameSite=Strict"
        ),
    );
    response
}

/// A short page saying why a form was refused.
fn refused_page(status: StatusCode, words: &str) -> Response {
    unframed(
        (
            status,
            page(
                "gitdispatch — sign in",
                "",
                &format!("<p>{}</p><a href=/ui/login>Sign in</a>", escape(words)),
            ),
        )
            .into_response(),
    )
}

/// A form's fields (`application/x-www-form-urlencoded`), read under the budget of
/// unverified bytes and a small cap of its own.
async fn form(
    state: &AppState,
    client: std::net::IpAddr,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<(String, String)>, Response> {
    let mut held = state.bodies.claim(client);
    let body = read_body(headers, body, FORM_BODY_LIMIT, &mut held)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(form_urlencoded::parse(&body).into_owned().collect())
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

pub(super) async fn login(
    State(state): State<Arc<AppState>>,
    Extension(ClientAddress(client)): Extension<ClientAddress>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let live = state.live.load_full();
    let Some(source) = &live.manual else {
        return (StatusCode::NOT_FOUND, "the page needs [api] tokens").into_response();
    };
    let fields = match form(&state, client, &headers, body).await {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    let form_csrf = field(&fields, "csrf").unwrap_or_default();
    let cookie_csrf = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if form_csrf.is_empty() || !same(&cookie_csrf, form_csrf) {
        return refused_page(
            StatusCode::FORBIDDEN,
            "The sign-in form expired, or did not come from this page: sign in again.",
        );
    }
    let offered = field(&fields, "token").unwrap_or_default();
    let Some(token) = source.matching(offered) else {
        tracing::warn!("A sign-in to the page with a token that is not one of api.tokens.");
        return refused_page(
            StatusCode::UNAUTHORIZED,
            "That token is not one of api.tokens.",
        );
    };
    let journal = match journal(&state) {
        Ok(journal) => journal,
        Err(response) => return response,
    };
    let id = random_token();
    let lifetime = source.session_lifetime().as_secs() as i64;
    let record = SessionRecord {
        id_digest: digest(&id),
        token_digest: digest(secrecy::ExposeSecret::expose_secret(token)),
        csrf: random_token(),
        expires_at: now_secs() + lifetime,
    };
    if let Err(error) = journal.open_session(&record).await {
        tracing::warn!(error = %crate::error::Chain(&error), "Could not keep a session of the page.");
        return refused_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The session could not be kept (the journal is unavailable): try again.",
        );
    }
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui")]).into_response();
    set_cookie(
        &mut response,
        &format!("{COOKIE}={id}; Path=/; Max-Age={lifetime}; Secure; HttpOnly; SameSite=Strict"),
    );
    set_cookie(
        &mut response,
        &format!("{LOGIN_COOKIE}=; Path=/ui/login; Max-Age=0; Secure; HttpOnly; SameSite=Strict"),
    );
    response
}

/// Signs out: the session ends in the journal (for every listener), with its CSRF
/// token checked first, and the cookie is cleared.
pub(super) async fn logout(
    State(state): State<Arc<AppState>>,
    Extension(ClientAddress(client)): Extension<ClientAddress>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let live = state.live.load_full();
    if let Some(source) = &live.manual {
        match session(&state, source, &headers).await {
            Ok(Some(session)) => {
                let fields = match form(&state, client, &headers, body).await {
                    Ok(fields) => fields,
                    Err(response) => return response,
                };
                let offered = field(&fields, "csrf")
                    .or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()));
                if !session.csrf_matches(offered) {
                    return refused_page(
                        StatusCode::FORBIDDEN,
                        "The sign-out did not come from this page.",
                    );
                }
                if let Some(journal) = &state.journal
                    && let Err(error) = journal.end_session(&session.record.id_digest).await
                {
                    tracing::warn!(error = %crate::error::Chain(&error), "Could not end a session of the page.");
                    return refused_page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "The session could not be ended (the journal is unavailable): try again.",
                    );
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(error = %crate::error::Chain(&error), "Could not read a session of the page.");
                return refused_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The session could not be read (the journal is unavailable): try again.",
                );
            }
        }
    }
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui/login")]).into_response();
    set_cookie(
        &mut response,
        &format!("{COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict"),
    );
    response
}

const SCRIPT: &str = r#"
const csrf = document.querySelector('meta[name=csrf-token]').content;
async function call(path, body) {
  // No refresh while the call is under way: its answer reloads the page.
  clearTimeout(refresh);
  const response = await fetch(path, {method: 'POST', credentials: 'same-origin',
    headers: {'content-type': 'application/json', 'x-csrf-token': csrf},
    body: body === undefined ? '' : JSON.stringify(body)});
  if (!response.ok) {
    const answer = await response.json().catch(() => ({}));
    alert((answer.error || response.statusText));
  }
  location.reload();
}
document.addEventListener('click', (event) => {
  const button = event.target.closest('button[data-action]');
  if (!button) return;
  const lane = '/v1/lanes/' + encodeURIComponent(button.dataset.pipeline) + '/' + encodeURIComponent(button.dataset.environment);
  if (button.dataset.action === 'pause') {
    const reason = document.getElementById('reason-' + button.dataset.key).value;
    call(lane + '/pause', {reason});
  } else if (button.dataset.action === 'resume') {
    call(lane + '/resume');
  } else if (button.dataset.action === 'redrive') {
    call('/v1/dead-letters/redrive');
  }
});
let refresh = setTimeout(() => location.reload(), 5000);
document.addEventListener('input', () => { clearTimeout(refresh); refresh = setTimeout(() => location.reload(), 30000); });
"#;

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => escape(text),
        Value::Null => String::new(),
        other => escape(&other.to_string()),
    }
}

fn short(commit: &Value) -> String {
    let commit = commit.as_str().unwrap_or_default();
    escape(&commit[..commit.len().min(7)])
}

pub(super) async fn index(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let live = state.live.load_full();
    let Some(source) = &live.manual else {
        return (StatusCode::NOT_FOUND, "the page needs [api] tokens").into_response();
    };
    let session = match session(&state, source, &headers).await {
        Ok(Some(session)) => session,
        Ok(None) => {
            return (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui/login")]).into_response();
        }
        Err(error) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the journal is unavailable: {}",
                    crate::error::Chain(&error)
                ),
            )
                .into_response();
        }
    };
    let journal = match journal(&state) {
        Ok(journal) => journal,
        Err(response) => return response,
    };
    let deliveries = journal
        .deliveries(&DeliveryFilter {
            limit: 50,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap_or_default();
    let lanes = lanes_view(journal.as_ref()).await.unwrap_or_default();
    let queue = queue_view(&state).await.unwrap_or_default();

    let mut body = format!(
        "<h1>gitdispatch</h1><form method=post action=/ui/logout style=float:right><input type=hidden name=csrf value=\"{}\"><button>Sign out</button></form>",
        escape(&session.record.csrf)
    );
    body.push_str("<h2>Lanes</h2><table id=lanes><tr><th>Pipeline</th><th>Environment</th><th>State</th><th>Running</th><th>Waiting</th><th>Superseded</th><th>Action</th></tr>");
    let empty = Vec::new();
    for (index, lane) in lanes["lanes"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .enumerate()
    {
        let paused = lane["state"] == "paused";
        let state_cell = if paused {
            format!(
                "<span class=paused>paused</span>: {}",
                text(&lane["paused"]["reason"])
            )
        } else {
            "<span class=running>running</span>".to_string()
        };
        let waiting = &lane["waiting"];
        let waiting_cell = if waiting["count"].as_u64().unwrap_or(0) == 0 {
            "none".to_string()
        } else {
            format!(
                "{} (oldest {}, newest {})",
                waiting["count"],
                short(&waiting["oldest"]["commit"]),
                short(&waiting["newest"]["commit"])
            )
        };
        let running: Vec<String> = lane["running"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(text)
            .collect();
        let pipeline = text(&lane["pipeline"]);
        let environment = text(&lane["environment"]);
        let action = if paused {
            format!(
                "<button data-action=resume data-pipeline=\"{pipeline}\" data-environment=\"{environment}\">Resume</button>"
            )
        } else {
            format!(
                "<input type=text id=reason-{index} placeholder=\"why (required)\"> <button data-action=pause data-key={index} data-pipeline=\"{pipeline}\" data-environment=\"{environment}\">Pause</button>"
            )
        };
        body.push_str(&format!(
            "<tr data-lane=\"{pipeline}/{environment}\"><td>{pipeline}</td><td>{environment}</td><td class=lane-state>{state_cell}</td><td>{}</td><td>{waiting_cell}</td><td>{}</td><td>{action}</td></tr>",
            running.join("<br>"),
            lane["superseded"],
        ));
    }
    body.push_str("</table>");

    body.push_str("<h2>Recent executions</h2><table id=executions><tr><th>Execution</th><th>Lane</th><th>Commit</th><th>State</th><th>Status</th></tr>");
    let mut recent: Vec<&Value> = lanes["lanes"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .flat_map(|lane| lane["recent"].as_array().unwrap_or(&empty).iter())
        .collect();
    recent.sort_by_key(|job| std::cmp::Reverse(job["seq"].as_i64().unwrap_or(0)));
    for job in recent.iter().take(30) {
        let name = text(&job["name"]);
        body.push_str(&format!(
            "<tr><td><a href=\"/v1/executions/{name}\"><code>{name}</code></a></td><td>{}/{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            text(&job["pipeline"]),
            text(&job["environment"]),
            short(&job["commit"]),
            text(&job["state"]),
            text(&job["status"]),
        ));
    }
    body.push_str("</table>");

    body.push_str("<h2>Deliveries</h2><table id=deliveries><tr><th>Delivery</th><th>Event</th><th>Repository</th><th>Ref</th><th>Answer</th><th>Executions planned</th><th>Explanation</th></tr>");
    for delivery in &deliveries {
        let explanation: String = delivery
            .explanation
            .iter()
            .map(|line| format!("{}<br>", escape(line)))
            .collect();
        let executions: String = delivery
            .executions
            .iter()
            .map(|name| format!("<code>{}</code><br>", escape(name)))
            .collect();
        body.push_str(&format!(
            "<tr class=delivery data-id=\"{id}\"><td><code>{id}</code><br>{source}</td><td>{event}</td><td>{repository}</td><td>{git_ref}</td><td>{status} {outcome}<br>{reason}</td><td>{executions}</td><td><details open><summary>plan --explain</summary>{explanation}</details></td></tr>",
            id = escape(&delivery.id),
            source = escape(&delivery.source),
            event = escape(&delivery.event),
            repository = escape(&delivery.repository),
            git_ref = escape(&delivery.git_ref),
            status = delivery.status,
            outcome = escape(&delivery.outcome),
            reason = escape(delivery.reason.as_deref().unwrap_or_default()),
        ));
    }
    body.push_str("</table>");

    body.push_str("<h2>Queue</h2>");
    if queue["type"] == "embedded" {
        body.push_str(&format!(
            "<p id=depth>{} waiting, {} in flight, {} dead-lettered</p>",
            queue["depth"]["visible"], queue["depth"]["in_flight"], queue["depth"]["dead"]
        ));
        body.push_str("<table id=dead-letters><tr><th>#</th><th>Job</th><th>Receives</th><th>Reason</th></tr>");
        for dead in queue["dead_letters"].as_array().unwrap_or(&empty) {
            body.push_str(&format!(
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                dead["seq"],
                text(&dead["id"]),
                dead["receive_count"],
                text(&dead["reason"])
            ));
        }
        body.push_str("</table><button data-action=redrive data-pipeline='' data-environment=''>Redrive every dead letter</button>");
    } else if queue["type"] == "sqs" {
        body.push_str(&format!(
            "<p id=depth>SQS <code>{}</code>: about {} waiting, {} in flight, {} dead-lettered (dead-letter queue <code>{}</code>, after {} receives). Its dead letters are listed and redriven in SQS's console (StartMessageMoveTask).</p>",
            text(&queue["url"]),
            queue["depth"]["visible"],
            queue["depth"]["in_flight"],
            queue["depth"]["dead"],
            text(&queue["dead_letter_queue"]),
            text(&queue["max_receives"]),
        ));
    }
    let head = format!(
        // A module script runs once the page is parsed.
        "<meta name=csrf-token content=\"{}\"><script type=module>{SCRIPT}</script>",
        escape(&session.record.csrf)
    );
    unframed(page("gitdispatch", &head, &body).into_response())
}
