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
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::body::read_body;
use super::console::{journal, lanes_view, queue_view};
use super::session::{
    COOKIE, FORM_BODY_LIMIT, LOGIN_COOKIE, LOGIN_FORM_SECS, cookie, digest, random_token, same,
    session,
};
use super::{ApiError, AppState, ClientAddress};
use crate::clock::now_secs;
use crate::journal::{DeliveryFilter, DeliveryRecord, SessionRecord};
use crate::operator::{LaneState, LaneView, QueueView};
use crate::source::SourceError;

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

/// A whole page: its title, what goes in its head, its body; every value escaped by
/// the template.
fn page(title: &str, head: Markup, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { (title) }
                    (head)
                    style { (PreEscaped(STYLE)) }
                }
                body { (body) }
            }
        }
        .into_string(),
    )
}

pub(super) async fn login_form() -> Response {
    let csrf = random_token();
    let body = html! {
        h1 { "gitdispatch" }
        form method="post" action="/ui/login" {
            input type="hidden" name="csrf" value=(csrf);
            label { "API token " input id="token" name="token" type="password" autocomplete="current-password" required; }
            " "
            button id="sign-in" type="submit" { "Sign in" }
        }
    };
    let mut response = unframed(page("gitdispatch — sign in", html! {}, body).into_response());
    set_cookie(
        &mut response,
        &format!(
            "{LOGIN_COOKIE}={csrf}; Path=/ui/login; Max-Age={LOGIN_FORM_SECS}; Secure; HttpOnly; SameSite=Strict"
        ),
    );
    response
}

/// A short page saying why a form was refused, with the refusal's status.
fn refused_page(refusal: ApiError) -> Response {
    let body = html! {
        p { (refusal.to_string()) }
        a href="/ui/login" { "Sign in" }
    };
    unframed(
        (
            refusal.status(),
            page("gitdispatch — sign in", html! {}, body),
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
    let runtime = state.runtime.load_full();
    let Some(source) = &runtime.manual else {
        return refused_page(ApiError::NotConfigured("api"));
    };
    let fields = match form(&state, client, &headers, body).await {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    let form_csrf = field(&fields, "csrf").unwrap_or_default();
    let cookie_csrf = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if form_csrf.is_empty() || !same(&cookie_csrf, form_csrf) {
        return refused_page(
            SourceError::Forbidden(
                "The sign-in form expired, or did not come from this page: sign in again.".into(),
            )
            .into(),
        );
    }
    let offered = field(&fields, "token").unwrap_or_default();
    let Some(token) = source.matching(offered) else {
        tracing::warn!("A sign-in to the page with a token that is not one of api.tokens.");
        return refused_page(
            SourceError::Unauthenticated("That token is not one of api.tokens.".into()).into(),
        );
    };
    let journal = match journal(&state) {
        Ok(journal) => journal,
        Err(refusal) => return refused_page(refusal),
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
        return refused_page(ApiError::Unavailable(
            "The session could not be kept (the journal is unavailable): try again.".into(),
        ));
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
    let runtime = state.runtime.load_full();
    if let Some(source) = &runtime.manual {
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
                        SourceError::Forbidden("The sign-out did not come from this page.".into())
                            .into(),
                    );
                }
                if let Some(journal) = &state.journal
                    && let Err(error) = journal.end_session(&session.record.id_digest).await
                {
                    tracing::warn!(error = %crate::error::Chain(&error), "Could not end a session of the page.");
                    return refused_page(ApiError::Unavailable(
                        "The session could not be ended (the journal is unavailable): try again."
                            .into(),
                    ));
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(error = %crate::error::Chain(&error), "Could not read a session of the page.");
                return refused_page(ApiError::Unavailable(
                    "The session could not be read (the journal is unavailable): try again.".into(),
                ));
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

/// The first seven characters of a commit.
fn short(commit: &str) -> &str {
    &commit[..commit.len().min(7)]
}

pub(super) async fn index(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let runtime = state.runtime.load_full();
    let Some(source) = &runtime.manual else {
        return refused_page(ApiError::NotConfigured("api"));
    };
    let session = match session(&state, source, &headers).await {
        Ok(Some(session)) => session,
        Ok(None) => {
            return (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui/login")]).into_response();
        }
        Err(error) => return ApiError::from(error).into_response(),
    };
    let journal = match journal(&state) {
        Ok(journal) => journal,
        Err(refusal) => return refusal.into_response(),
    };
    let deliveries = journal
        .deliveries(&DeliveryFilter {
            limit: 50,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap_or_default();
    let lanes = lanes_view(journal.as_ref())
        .await
        .map(|view| view.lanes)
        .unwrap_or_default();
    let queue = queue_view(&state).await.unwrap_or_default();
    let csrf = &session.record.csrf;
    let head = html! {
        meta name="csrf-token" content=(csrf);
        // A module script runs once the page is parsed.
        script type="module" { (PreEscaped(SCRIPT)) }
    };
    let body = html! {
        h1 { "gitdispatch" }
        form method="post" action="/ui/logout" style="float:right" {
            input type="hidden" name="csrf" value=(csrf);
            button { "Sign out" }
        }
        h2 { "Lanes" }
        (lanes_table(&lanes))
        h2 { "Recent executions" }
        (executions_table(&lanes))
        h2 { "Deliveries" }
        (deliveries_table(&deliveries))
        h2 { "Queue" }
        (queue_section(&queue))
    };
    unframed(page("gitdispatch", head, body).into_response())
}

fn lanes_table(lanes: &[LaneView]) -> Markup {
    html! {
        table id="lanes" {
            tr { th { "Pipeline" } th { "Environment" } th { "State" } th { "Running" } th { "Waiting" } th { "Superseded" } th { "Action" } }
            @for (index, lane) in lanes.iter().enumerate() {
                tr data-lane=(format!("{}/{}", lane.pipeline, lane.environment)) {
                    td { (lane.pipeline) }
                    td { (lane.environment) }
                    td class="lane-state" {
                        @match lane.state {
                            LaneState::Paused => {
                                span class="paused" { "paused" }
                                ": " (lane.paused.as_ref().map(|pause| pause.reason.as_str()).unwrap_or_default())
                            }
                            LaneState::Running => span class="running" { "running" },
                            other => span { (other.as_str()) },
                        }
                    }
                    td {
                        @for (n, name) in lane.running.iter().enumerate() {
                            @if n > 0 { br; }
                            (name)
                        }
                    }
                    td {
                        @if lane.waiting.count == 0 {
                            "none"
                        } @else {
                            (lane.waiting.count) " (oldest "
                            (lane.waiting.oldest.as_ref().map(|job| short(&job.commit)).unwrap_or_default())
                            ", newest "
                            (lane.waiting.newest.as_ref().map(|job| short(&job.commit)).unwrap_or_default())
                            ")"
                        }
                    }
                    td { (lane.superseded) }
                    td {
                        @if lane.state == LaneState::Paused {
                            button data-action="resume" data-pipeline=(lane.pipeline) data-environment=(lane.environment) { "Resume" }
                        } @else {
                            input type="text" id=(format!("reason-{index}")) placeholder="why (required)";
                            " "
                            button data-action="pause" data-key=(index) data-pipeline=(lane.pipeline) data-environment=(lane.environment) { "Pause" }
                        }
                    }
                }
            }
        }
    }
}

fn executions_table(lanes: &[LaneView]) -> Markup {
    let mut recent: Vec<&crate::journal::LaneJob> =
        lanes.iter().flat_map(|lane| lane.recent.iter()).collect();
    recent.sort_by_key(|job| std::cmp::Reverse(job.seq));
    html! {
        table id="executions" {
            tr { th { "Execution" } th { "Lane" } th { "Commit" } th { "State" } th { "Status" } }
            @for job in recent.iter().take(30) {
                tr {
                    td { a href=(format!("/v1/executions/{}", job.name)) { code { (job.name) } } }
                    td { (job.lane.pipeline) "/" (job.lane.environment) }
                    td { code { (short(&job.commit)) } }
                    td { (job.state.as_str()) }
                    td { (job.status.as_deref().unwrap_or_default()) }
                }
            }
        }
    }
}

fn deliveries_table(deliveries: &[DeliveryRecord]) -> Markup {
    html! {
        table id="deliveries" {
            tr { th { "Delivery" } th { "Event" } th { "Repository" } th { "Ref" } th { "Answer" } th { "Executions planned" } th { "Explanation" } }
            @for delivery in deliveries {
                tr class="delivery" data-id=(delivery.id) {
                    td { code { (delivery.id) } br; (delivery.source) }
                    td { (delivery.event) }
                    td { (delivery.repository) }
                    td { (delivery.git_ref) }
                    td { (delivery.status) " " (delivery.outcome) br; (delivery.reason.as_deref().unwrap_or_default()) }
                    td { @for name in &delivery.executions { code { (name) } br; } }
                    td { details open { summary { "plan --explain" } @for line in &delivery.explanation { (line) br; } } }
                }
            }
        }
    }
}

fn queue_section(queue: &QueueView) -> Markup {
    let depth = queue.depth.unwrap_or(crate::operator::DepthView {
        visible: 0,
        in_flight: 0,
        dead: 0,
    });
    html! {
        @match queue.kind.as_deref() {
            Some("embedded") => {
                p id="depth" { (depth.visible) " waiting, " (depth.in_flight) " in flight, " (depth.dead) " dead-lettered" }
                table id="dead-letters" {
                    tr { th { "#" } th { "Job" } th { "Receives" } th { "Reason" } }
                    @for dead in &queue.dead_letters {
                        tr { td { (dead.seq) } td { code { (dead.id) } } td { (dead.receive_count) } td { (dead.reason) } }
                    }
                }
                button data-action="redrive" data-pipeline="" data-environment="" { "Redrive every dead letter" }
            }
            Some("sqs") => {
                p id="depth" {
                    "SQS " code { (queue.url.as_deref().unwrap_or_default()) } ": about "
                    (depth.visible) " waiting, " (depth.in_flight) " in flight, " (depth.dead) " dead-lettered (dead-letter queue "
                    code { (queue.dead_letter_queue.as_deref().unwrap_or_default()) }
                    ", after " (queue.max_receives.map(|max| max.to_string()).unwrap_or_default())
                    " receives). Its dead letters are listed and redriven in SQS's console (StartMessageMoveTask)."
                }
            }
            _ => {}
        }
    }
}
