//! The operator API: delivery history, lanes (pause, resume, what waits), replays,
//! the queue's depth and dead letters. Every call takes a bearer token of
//! `[api] tokens`, or the page's session cookie (`ui.rs`) with its CSRF token on
//! anything that changes state.

// A refusal is the whole response, built once per refused call and returned at once:
// boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, AppState, ClientAddress};
use crate::error::Chain;
use crate::journal::{DeliveryFilter, JobState, Journal, Lane, LaneJob};
use crate::source::SourceError;

/// The most deliveries one call lists.
const MAX_LIST: usize = 1000;

/// A failure of an operator call, as JSON with a one-line reason.
fn refuse(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, Json(json!({"error": reason.into()}))).into_response()
}

fn journal_error(error: crate::journal::JournalError) -> Response {
    refuse(StatusCode::SERVICE_UNAVAILABLE, Chain(&error).to_string())
}

/// Lets a call through with a bearer token, or the page's session (and, for what
/// changes state, its CSRF token). Checked from the headers alone, before a byte of
/// the body is read.
pub(super) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
) -> Result<(), Response> {
    let live = state.live.load_full();
    let Some(source) = &live.manual else {
        return Err(ApiError::NotConfigured("api").into_response());
    };
    if headers.contains_key("authorization") {
        return source
            .authenticate(headers)
            .map_err(|error| ApiError::Source(error).into_response());
    }
    let session = match super::ui::session(state, source, headers).await {
        Ok(Some(session)) => session,
        Ok(None) => {
            return Err(ApiError::Source(SourceError::Unauthenticated(
                "a bearer token of api.tokens, or a session of the page, is needed".into(),
            ))
            .into_response());
        }
        Err(error) => return Err(journal_error(error)),
    };
    let offered = headers
        .get("x-csrf-token")
        .and_then(|value| value.to_str().ok());
    if method != Method::GET && !session.csrf_matches(offered) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "the x-csrf-token header does not match this session",
        ));
    }
    Ok(())
}

/// The listener's journal.
pub(super) fn journal(state: &AppState) -> Result<Arc<dyn Journal>, Response> {
    state.journal.clone().ok_or_else(|| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this listener keeps no journal",
        )
    })
}

/// [`authenticate`], then the journal.
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
) -> Result<Arc<dyn Journal>, Response> {
    authenticate(state, headers, method).await?;
    journal(state)
}

/// Reads an operator call's body, once its caller is authenticated: under a small cap
/// of its own, and counted in the budget of body bytes held, as every body is.
async fn operator_body(
    state: &AppState,
    client: std::net::IpAddr,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Vec<u8>, Response> {
    let mut held = state.bodies.claim(client);
    super::body::read_body(headers, body, super::body::OPERATOR_BODY_LIMIT, &mut held)
        .await
        .map_err(IntoResponse::into_response)
}

/// Refuses a pipeline the running configuration does not have.
fn known_pipeline(
    state: &AppState,
    pipeline: &str,
    status: StatusCode,
    field: &str,
) -> Result<(), Response> {
    let live = state.live.load_full();
    if live.planner.pipeline_names().any(|name| name == pipeline) {
        Ok(())
    } else {
        Err(refuse(
            status,
            format!("{field}no pipeline {pipeline:?} is configured"),
        ))
    }
}

#[derive(Debug, Default)]
pub(super) struct DeliveriesQuery {
    repository: Option<String>,
    /// RFC 3339.
    since: Option<String>,
    limit: Option<usize>,
}

fn parse_time(field: &str, value: &str) -> Result<i64, Response> {
    super::bodies::time(field, value).map_err(refused)
}

/// A body's refusal, as the operator API answers it.
fn refused(refusal: super::bodies::Refusal) -> Response {
    refuse(
        StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST),
        refusal.reason,
    )
}

pub(super) async fn deliveries(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let journal = match authorize(&state, &headers, &Method::GET).await {
        Ok(journal) => journal,
        Err(response) => return response,
    };
    let mut query = DeliveriesQuery::default();
    for (key, value) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "repository" => query.repository = Some(value.into_owned()),
            "since" => query.since = Some(value.into_owned()),
            "limit" => match value.parse() {
                Ok(limit) => query.limit = Some(limit),
                Err(_) => {
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        format!("limit: {value:?} is not a number"),
                    );
                }
            },
            other => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("{other:?}: deliveries are filtered by repository, since and limit"),
                );
            }
        }
    }
    let since_ms = match query
        .since
        .as_deref()
        .map(|since| parse_time("since", since))
    {
        Some(Err(response)) => return response,
        Some(Ok(ms)) => Some(ms),
        None => None,
    };
    let filter = DeliveryFilter {
        repository: query.repository,
        since_ms,
        limit: query.limit.unwrap_or(100).min(MAX_LIST),
    };
    match journal.deliveries(&filter).await {
        Ok(records) => Json(json!({"deliveries": records})).into_response(),
        Err(error) => journal_error(error),
    }
}

pub(super) async fn delivery(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let journal = match authorize(&state, &headers, &Method::GET).await {
        Ok(journal) => journal,
        Err(response) => return response,
    };
    match journal.delivery(&id).await {
        Ok(records) if records.is_empty() => refuse(
            StatusCode::NOT_FOUND,
            format!("no delivery {id:?} is on record"),
        ),
        Ok(records) => Json(json!({"deliveries": records})).into_response(),
        Err(error) => journal_error(error),
    }
}

/// Every lane on record: its pause, what runs, what waits, and its latest jobs.
pub(super) async fn lanes_view(
    journal: &dyn Journal,
) -> Result<Value, crate::journal::JournalError> {
    let holds = journal.holds().await?;
    let jobs = journal.lane_jobs(None).await?;
    let mut lanes: std::collections::BTreeMap<Lane, Vec<&LaneJob>> = Default::default();
    for job in &jobs {
        lanes.entry(job.lane.clone()).or_default().push(job);
    }
    for hold in &holds {
        lanes.entry(hold.lane.clone()).or_default();
    }
    let view: Vec<Value> = lanes
        .iter()
        .map(|(lane, jobs)| {
            let hold = holds.iter().find(|hold| hold.lane == *lane);
            let pause = hold.and_then(|hold| hold.pause.as_ref());
            let busy = hold.and_then(|hold| hold.busy.as_ref());
            let waiting: Vec<&&LaneJob> = jobs
                .iter()
                .filter(|job| job.state == JobState::Waiting)
                .collect();
            let running: Vec<&str> = jobs
                .iter()
                .filter(|job| job.state == JobState::Started)
                .map(|job| job.name.as_str())
                .collect();
            let state = match (hold, pause, busy) {
                (_, Some(_), _) => "paused",
                (_, None, Some(_)) => "busy",
                // Its parked jobs are going back on the queue.
                (Some(_), None, None) => "releasing",
                (None, None, None) => "running",
            };
            json!({
                "pipeline": lane.pipeline,
                "environment": lane.environment,
                "state": state,
                "paused": pause.map(|pause| json!({"reason": pause.reason, "at_ms": pause.at_ms})),
                "busy": busy,
                "running": running,
                "waiting": {
                    "count": waiting.len(),
                    "parked": waiting.iter().filter(|job| job.parked).count(),
                    "oldest": waiting.first().map(|job| json!({"name": job.name, "commit": job.commit})),
                    "newest": waiting.last().map(|job| json!({"name": job.name, "commit": job.commit})),
                },
                "superseded": jobs.iter().filter(|job| job.state == JobState::Superseded).count(),
                "rejected": jobs.iter().filter(|job| job.state == JobState::Rejected).count(),
                "recent": jobs.iter().rev().take(20).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json!({"lanes": view}))
}

pub(super) async fn lanes(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let journal = match authorize(&state, &headers, &Method::GET).await {
        Ok(journal) => journal,
        Err(response) => return response,
    };
    match lanes_view(journal.as_ref()).await {
        Ok(view) => Json(view).into_response(),
        Err(error) => journal_error(error),
    }
}

pub(super) async fn lane_action(
    State(state): State<Arc<AppState>>,
    Extension(ClientAddress(client)): Extension<ClientAddress>,
    Path((pipeline, environment, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let journal = match authorize(&state, &headers, &Method::POST).await {
        Ok(journal) => journal,
        Err(response) => return response,
    };
    let body = match operator_body(&state, client, &headers, body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    if let Err(response) = known_pipeline(&state, &pipeline, StatusCode::NOT_FOUND, "") {
        return response;
    }
    let lane = Lane {
        pipeline,
        environment,
    };
    match action.as_str() {
        "pause" => {
            let reason = match super::bodies::pause_reason(&body) {
                Ok(reason) => reason,
                Err(refusal) => return refused(refusal),
            };
            match journal.pause(&lane, &reason).await {
                Ok(pause) => {
                    tracing::warn!(pipeline = %lane.pipeline, environment = %lane.environment, reason = %pause.reason, "Paused a lane: it starts nothing until resumed.");
                    Json(json!({"pipeline": lane.pipeline, "environment": lane.environment, "state": "paused", "reason": pause.reason})).into_response()
                }
                Err(error) => journal_error(error),
            }
        }
        "resume" => {
            let was_paused = match journal.resume(&lane).await {
                Ok(was_paused) => was_paused,
                Err(error) => return journal_error(error),
            };
            // Its parked jobs go back on the queue, in order (unless a long execution
            // still holds the lane: its end puts them back). A resume that fails half
            // way is asked again: it puts back the rest.
            let released = match state.admission.release(&lane).await {
                Ok(released) => released,
                Err(error) => return ApiError::from(error).into_response(),
            };
            tracing::info!(pipeline = %lane.pipeline, environment = %lane.environment, was_paused, released, "Resumed a lane.");
            Json(json!({"pipeline": lane.pipeline, "environment": lane.environment, "state": "running", "was_paused": was_paused, "released": released})).into_response()
        }
        other => refuse(
            StatusCode::NOT_FOUND,
            format!("a lane can be paused or resumed, not {other:?}"),
        ),
    }
}

pub(super) async fn replays(
    State(state): State<Arc<AppState>>,
    Extension(ClientAddress(client)): Extension<ClientAddress>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let journal = match authorize(&state, &headers, &Method::POST).await {
        Ok(journal) => journal,
        Err(response) => return response,
    };
    let body = match operator_body(&state, client, &headers, body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let body = match super::bodies::replay(&body) {
        Ok(body) => body,
        Err(refusal) => return refused(refusal),
    };
    let (since, until) = (body.since_ms, body.until_ms);
    if let Err(response) = known_pipeline(
        &state,
        &body.pipeline,
        StatusCode::UNPROCESSABLE_ENTITY,
        "pipeline: ",
    ) {
        return response;
    }
    let jobs = match journal.lane_jobs(None).await {
        Ok(jobs) => jobs,
        Err(error) => return journal_error(error),
    };
    let mut chosen = Vec::new();
    for job in &jobs {
        let ran = matches!(job.state, JobState::Started | JobState::Ended);
        let in_window = job.lane.pipeline == body.pipeline
            && body
                .environment
                .as_ref()
                .is_none_or(|environment| *environment == job.lane.environment)
            && (since..=until).contains(&job.queued_at_ms);
        if !ran || !in_window {
            continue;
        }
        if body.failed_only {
            match ended_badly(&state, job).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(response) => return response,
            }
        }
        chosen.push(job);
    }
    // One replay per original: an earlier replay of it in the window is the same
    // commit (the latest attempt stands for them).
    let original_of = |job: &LaneJob| job.replay_of.clone().unwrap_or_else(|| job.name.clone());
    let mut latest: std::collections::HashMap<String, &LaneJob> = std::collections::HashMap::new();
    for job in chosen {
        let entry = latest.entry(original_of(job)).or_insert(job);
        if job.seq > entry.seq {
            *entry = job;
        }
    }
    let mut chosen: Vec<&LaneJob> = latest.into_values().collect();
    chosen.sort_by_key(|job| job.seq);
    // A serial lane's deploy is not replayed over a newer deploy of the same projects
    // from the same ref, queued since and not replayed with it: the lane would end on
    // the older commit.
    let mut skipped = Vec::new();
    let mut kept = Vec::new();
    for job in &chosen {
        match overtaken(
            state.admission.lanes().map(|lanes| lanes.as_ref()),
            journal.as_ref(),
            &jobs,
            &chosen,
            job,
        )
        .await
        {
            Ok(Some(newer)) => skipped.push(json!({"original": original_of(job), "commit": job.commit, "deployed_since_by": newer})),
            Ok(None) => kept.push(*job),
            Err(error) => return journal_error(error),
        }
    }
    let chosen = kept;
    // Replays are numbered per original (those on record, then those made now) for
    // people to read; their names are unique to this request whatever the count says.
    let mut replays_of: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    for job in &jobs {
        if let Some(original) = &job.replay_of {
            *replays_of.entry(original).or_default() += 1;
        }
    }
    let replay_id = uuid::Uuid::new_v4().to_string();
    let mut planned = Vec::new();
    let mut starts = Vec::new();
    for job in chosen {
        let original = job.replay_of.as_deref().unwrap_or(&job.name);
        // Listings leave the job's body out: read it whole.
        let whole = match journal.job(&job.name).await {
            Ok(whole) => whole,
            Err(error) => return journal_error(error),
        };
        let (Some(mut request), Ok(original_name)) = (
            whole.and_then(|whole| whole.request()),
            crate::execution::name::ExecutionName::parse(original),
        ) else {
            tracing::warn!(execution = %job.name, "A job of the window cannot be read back (written by another release?): it is not replayed.");
            continue;
        };
        let replay = replays_of.entry(original).or_default();
        *replay += 1;
        request.name = original_name.replay(*replay, &replay_id);
        planned.push(json!({"original": original, "replays": job.name, "name": request.name.as_str(), "replay": *replay, "commit": job.commit}));
        starts.push((request, original.to_string()));
    }
    if body.dry_run {
        return (
            StatusCode::OK,
            Json(json!({"dry_run": true, "replays": planned, "skipped": skipped})),
        )
            .into_response();
    }
    if starts.is_empty() {
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "nothing to replay: no execution of {} {}ran in that window",
                body.pipeline,
                if body.failed_only { "that failed " } else { "" }
            ),
        );
    }
    let count = starts.len();
    let intake = crate::admission::Intake::new(None).replays(starts);
    if let Err(error) = state.admission.admit(intake).await {
        return ApiError::from(error).into_response();
    }
    tracing::info!(pipeline = %body.pipeline, replays = count, "Queued replays.");
    (
        StatusCode::ACCEPTED,
        Json(json!({"dry_run": false, "replays": planned, "skipped": skipped})),
    )
        .into_response()
}

/// The newer deploy, queued since and not among those replayed, that a replay of
/// `job` would undo (it ran, or runs first): same serial lane, source, repository and
/// ref, deploying every project `job` deploys.
async fn overtaken(
    lanes: Option<&crate::lanes::Lanes>,
    journal: &dyn Journal,
    jobs: &[LaneJob],
    chosen: &[&LaneJob],
    job: &LaneJob,
) -> Result<Option<String>, crate::journal::JournalError> {
    let Some(request) = journal
        .job(&job.name)
        .await?
        .and_then(|whole| whole.request())
    else {
        return Ok(None);
    };
    if request.group.is_none() {
        return Ok(None);
    }
    for newer in jobs.iter().filter(|newer| {
        crate::lanes::overwrites(newer, job)
            && !chosen.iter().any(|replayed| {
                replayed.name == newer.name || replayed.replay_of.as_deref() == Some(&newer.name)
            })
    }) {
        let covers = journal
            .job(&newer.name)
            .await?
            .and_then(|whole| whole.request())
            .is_some_and(|carrier| {
                lanes.is_none_or(|lanes| lanes.deploys_all_of(&carrier, &request))
            });
        if covers {
            return Ok(Some(newer.name.clone()));
        }
    }
    Ok(None)
}

/// Whether a job's execution failed, timed out or was aborted: as recorded when a
/// serial lane saw it end, or else as the executor describes it now.
async fn ended_badly(state: &AppState, job: &LaneJob) -> Result<bool, Response> {
    let status = match (job.state, &job.status, &state.executor) {
        (JobState::Ended, Some(status), _) => status.clone(),
        (_, _, Some(executor)) => {
            let Ok(name) = crate::execution::name::ExecutionName::parse(&job.name) else {
                return Ok(false);
            };
            match executor.describe(&job.lane.pipeline, &name).await {
                Ok(execution) => execution.status.as_str().to_string(),
                Err(error) => {
                    return Err(refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("could not tell how {} ended: {}", job.name, Chain(&error)),
                    ));
                }
            }
        }
        _ => return Ok(false),
    };
    Ok(matches!(
        status.as_str(),
        "failed" | "timed_out" | "aborted"
    ))
}

/// The queue's depth and dead letters (the embedded queue; SQS's are in its console).
pub(super) async fn queue(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(response) = authenticate(&state, &headers, &Method::GET).await {
        return response;
    }
    match queue_view(&state).await {
        Ok(view) => Json(view).into_response(),
        Err(response) => response,
    }
}

pub(super) async fn queue_view(state: &AppState) -> Result<Value, Response> {
    let unavailable = |error: crate::queue::QueueError| {
        refuse(StatusCode::SERVICE_UNAVAILABLE, Chain(&error).to_string())
    };
    let depth = |depth: crate::queue::Depth| json!({"visible": depth.visible, "in_flight": depth.in_flight, "dead": depth.dead});
    if let Some(sqs) = &state.sqs {
        let facts = sqs.facts();
        // SQS's dead letters are read off the dead-letter queue by taking them; they
        // are counted here, listed and redriven in SQS's console.
        return Ok(json!({
            "type": "sqs",
            "url": facts.url,
            "depth": depth(sqs.depth().await.map_err(unavailable)?),
            "dead_letter_queue": facts.dead_letter.as_ref().map(|(url, _)| url),
            "max_receives": facts.dead_letter.as_ref().map(|(_, max)| max),
            "dead_letters": [],
        }));
    }
    let Some(embedded) = &state.embedded else {
        return Ok(json!({"type": null, "depth": null, "dead_letters": []}));
    };
    let dead = embedded.dead_letters().await.map_err(unavailable)?;
    Ok(json!({
        "type": "embedded",
        "depth": depth(embedded.depth().await.map_err(unavailable)?),
        "dead_letters": dead.iter().map(|dead| json!({
            "seq": dead.seq, "id": dead.message.id, "reason": dead.reason,
            "receive_count": dead.receive_count, "dead_at_ms": dead.dead_at_ms,
        })).collect::<Vec<_>>(),
    }))
}

pub(super) async fn redrive(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(response) = authenticate(&state, &headers, &Method::POST).await {
        return response;
    }
    let Some(embedded) = &state.embedded else {
        return refuse(
            StatusCode::NOT_FOUND,
            "redrive an SQS dead-letter queue from its own console (StartMessageMoveTask)",
        );
    };
    match embedded.redrive(None).await {
        Ok(moved) => Json(json!({"redriven": moved})).into_response(),
        Err(error) => refuse(StatusCode::SERVICE_UNAVAILABLE, Chain(&error).to_string()),
    }
}
