//! The operator page, `GET /ui`: server-rendered HTML with its little script embedded,
//! no external assets. Signed in with a token of `[api] tokens` (a form that sets a
//! `Secure; HttpOnly; SameSite=Strict` session cookie, good for 12 hours and keyed by
//! the token: removing the token from the file and reloading ends its sessions). Every
//! action it offers is a call of the operator API, sent with the session's CSRF token.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::Sha256;

use super::AppState;
use super::console::{journal, lanes_view, queue_view};
use crate::clock::now_secs;
use crate::journal::DeliveryFilter;
use crate::source::manual::ManualSource;

const COOKIE: &str = "gitdispatch_session";
const SESSION_SECS: i64 = 12 * 3600;

fn mac(token: &SecretString, purpose: &str, expires: i64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.expose_secret().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(format!("gitdispatch-{purpose}|{expires}").as_bytes());
    mac
}

fn sign(token: &SecretString, purpose: &str, expires: i64) -> String {
    hex::encode(mac(token, purpose, expires).finalize().into_bytes())
}

/// Whether `signature` (hex) is the token's for `purpose` and `expires`, compared in
/// constant time (HMAC's own check).
fn signed(token: &SecretString, purpose: &str, expires: i64, signature: &str) -> bool {
    hex::decode(signature)
        .is_ok_and(|bytes| mac(token, purpose, expires).verify_slice(&bytes).is_ok())
}

/// A signed-in session of the page: the token it was signed with, and until when.
pub(super) struct Session<'a> {
    token: &'a SecretString,
    expires: i64,
}

impl Session<'_> {
    /// The CSRF token every change the page asks for must carry.
    fn csrf(&self) -> String {
        sign(self.token, "csrf", self.expires)
    }

    /// Whether the request carries this session's CSRF token.
    pub(super) fn csrf_matches(&self, headers: &HeaderMap) -> bool {
        headers
            .get("x-csrf-token")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|offered| signed(self.token, "csrf", self.expires, offered))
    }
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The session the request's cookie proves, if it is valid and not expired.
pub(super) fn session<'a>(source: &'a ManualSource, headers: &HeaderMap) -> Option<Session<'a>> {
    let value = cookie(headers)?;
    let (expires, signature) = value.split_once('.')?;
    let expires: i64 = expires.parse().ok()?;
    if expires <= now_secs() {
        return None;
    }
    source
        .tokens()
        .iter()
        .find(|token| signed(token, "session", expires, signature))
        .map(|token| Session { token, expires })
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

pub(super) async fn login_form() -> Html<String> {
    page(
        "gitdispatch — sign in",
        "",
        "<h1>gitdispatch</h1><form method=post action=/ui/login>\
         <label>API token <input id=token name=token type=password autocomplete=current-password required></label> \
         <button id=sign-in type=submit>Sign in</button></form>",
    )
}

pub(super) async fn login(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let live = state.live.load_full();
    let Some(source) = &live.manual else {
        return (StatusCode::NOT_FOUND, "the page needs [api] tokens").into_response();
    };
    let offered = form_urlencoded::parse(&body)
        .find(|(key, _)| key == "token")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    let Some(token) = source.matching(&offered) else {
        tracing::warn!("A sign-in to the page with a token that is not one of api.tokens.");
        return (
            StatusCode::UNAUTHORIZED,
            page(
                "gitdispatch — sign in",
                "",
                "<p>That token is not one of api.tokens.</p><a href=/ui/login>Try again</a>",
            ),
        )
            .into_response();
    };
    let expires = now_secs() + SESSION_SECS;
    let value = format!(
        "{COOKIE}={expires}.{}; Path=/; Max-Age={SESSION_SECS}; Secure; HttpOnly; SameSite=Strict",
        sign(token, "session", expires)
    );
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui")]).into_response();
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

pub(super) async fn logout() -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui/login")]).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "gitdispatch_session=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict",
        ),
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
    let Some(session) = session(source, &headers) else {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui/login")]).into_response();
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

    let mut body = String::from(
        "<h1>gitdispatch</h1><form method=post action=/ui/logout style=float:right><button>Sign out</button></form>",
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
        session.csrf()
    );
    let mut response = page("gitdispatch", &head, &body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    response
}
