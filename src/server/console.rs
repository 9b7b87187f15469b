//! The operator API: delivery history, lanes (pause, resume, what waits), replays,
//! the queue's depth and dead letters. Every call takes a bearer token of
//! `[api] tokens`, or the page's session cookie (`ui.rs`) with its CSRF token on
//! anything that changes state.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};

use super::{ApiError, AppState, ClientAddress};
use crate::error::Chain;
use crate::journal::{DeliveryFilter, JobState, Journal, Lane, LaneJob};
use crate::operator::{
    Deliveries, JobRef, LaneChanged, LaneState, LaneView, Lanes, PauseView, QueueView, Redriven,
    Replayed, Replays, Skipped, Waiting,
};
use crate::source::SourceError;

/// The most deliveries one call lists.
const MAX_LIST: usize = 1000;

/// Lets a call through with a bearer token, or the page's session (and, for what
/// changes state, its CSRF token). Checked from the headers alone, before a byte of
/// the body is read.
pub(super) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
) -> Result<(), ApiError> {
    let runtime = state.runtime.load_full();
    let Some(source) = &runtime.manual else {
        return Err(ApiError::NotConfigured("api"));
    };
    if headers.contains_key("authorization") {
        return Ok(source.authenticate(headers)?);
    }
    let Some(session) = super::session::session(state, source, headers).await? else {
        return Err(SourceError::Unauthenticated(
            "a bearer token of api.tokens, or a session of the page, is needed".into(),
        )
        .into());
    };
    let offered = headers
        .get("x-csrf-token")
        .and_then(|value| value.to_str().ok());
    if method != Method::GET && !session.csrf_matches(offered) {
        return Err(SourceError::Forbidden(
            "the x-csrf-token header does not match this session".into(),
        )
        .into());
    }
    Ok(())
}

/// The listener's journal.
pub(super) fn journal(state: &AppState) -> Result<Arc<dyn Journal>, ApiError> {
    state
        .journal
        .clone()
        .ok_or_else(|| ApiError::Unavailable("this listener keeps no journal".into()))
}

/// [`authenticate`], then the journal.
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
) -> Result<Arc<dyn Journal>, ApiError> {
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
) -> Result<Vec<u8>, ApiError> {
    let mut held = state.bodies.claim(client);
    super::body::read_body(headers, body, super::body::OPERATOR_BODY_LIMIT, &mut held).await
}

/// Refuses a pipeline the running configuration does not have: `404` when it names
/// what the call is about (a lane), `422` when it is a field of the body.
fn known_pipeline(state: &AppState, pipeline: &str, field: Option<&str>) -> Result<(), ApiError> {
    let runtime = state.runtime.load_full();
    if runtime
        .planner
        .pipeline_names()
        .any(|name| name == pipeline)
    {
        return Ok(());
    }
    let missing = format!("no pipeline {pipeline:?} is configured");
    Err(match field {
        Some(field) => ApiError::Unprocessable(format!("{field}: {missing}")),
        None => ApiError::NotFound(missing),
    })
}

/// `GET /v1/deliveries[?repository=&since=RFC3339&limit=]`.
pub(super) async fn deliveries(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Json<Deliveries>, ApiError> {
    let journal = authorize(&state, &headers, &Method::GET).await?;
    let mut filter = DeliveryFilter {
        limit: 100,
        ..DeliveryFilter::default()
    };
    for (key, value) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "repository" => filter.repository = Some(value.into_owned()),
            "since" => filter.since_ms = Some(super::bodies::time("since", &value)?),
            "limit" => {
                let limit: usize = value.parse().map_err(|_| {
                    SourceError::Malformed(format!("limit: {value:?} is not a number"))
                })?;
                filter.limit = limit.min(MAX_LIST);
            }
            other => {
                return Err(SourceError::Malformed(format!(
                    "{other:?}: deliveries are filtered by repository, since and limit"
                ))
                .into());
            }
        }
    }
    Ok(Json(Deliveries {
        deliveries: journal.deliveries(&filter).await?,
    }))
}

/// `GET /v1/deliveries/{id}`: each source's delivery of that id.
pub(super) async fn delivery(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Deliveries>, ApiError> {
    let journal = authorize(&state, &headers, &Method::GET).await?;
    let deliveries = journal.delivery(&id).await?;
    if deliveries.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no delivery {id:?} is on record"
        )));
    }
    Ok(Json(Deliveries { deliveries }))
}

/// Every lane on record: its hold, what runs, what waits, and its latest jobs.
pub(super) async fn lanes_view(
    journal: &dyn Journal,
) -> Result<Lanes, crate::journal::JournalError> {
    let holds = journal.holds().await?;
    let jobs = journal.lane_jobs(None).await?;
    let mut lanes: std::collections::BTreeMap<Lane, Vec<&LaneJob>> = Default::default();
    for job in &jobs {
        lanes.entry(job.lane.clone()).or_default().push(job);
    }
    for hold in &holds {
        lanes.entry(hold.lane.clone()).or_default();
    }
    let count =
        |jobs: &[&LaneJob], state: JobState| jobs.iter().filter(|job| job.state == state).count();
    let lanes = lanes
        .iter()
        .map(|(lane, jobs)| {
            let hold = holds.iter().find(|hold| hold.lane == *lane);
            let pause = hold.and_then(|hold| hold.pause.as_ref());
            let busy = hold.and_then(|hold| hold.busy.clone());
            let waiting: Vec<&LaneJob> = jobs
                .iter()
                .copied()
                .filter(|job| job.state == JobState::Waiting)
                .collect();
            let job_ref = |job: &&LaneJob| JobRef {
                name: job.name.clone(),
                commit: job.commit.clone(),
            };
            LaneView {
                pipeline: lane.pipeline.clone(),
                environment: lane.environment.clone(),
                state: match (hold, pause, &busy) {
                    (_, Some(_), _) => LaneState::Paused,
                    (_, None, Some(_)) => LaneState::Busy,
                    (Some(_), None, None) => LaneState::Releasing,
                    (None, None, None) => LaneState::Running,
                },
                paused: pause.map(|pause| PauseView {
                    reason: pause.reason.clone(),
                    at_ms: pause.at_ms,
                }),
                busy,
                running: jobs
                    .iter()
                    .filter(|job| job.state == JobState::Started)
                    .map(|job| job.name.clone())
                    .collect(),
                waiting: Waiting {
                    count: waiting.len(),
                    parked: waiting.iter().filter(|job| job.parked).count(),
                    oldest: waiting.first().map(job_ref),
                    newest: waiting.last().map(job_ref),
                },
                superseded: count(jobs, JobState::Superseded),
                rejected: count(jobs, JobState::Rejected),
                recent: jobs
                    .iter()
                    .rev()
                    .take(20)
                    .map(|job| (*job).clone())
                    .collect(),
            }
        })
        .collect();
    Ok(Lanes { lanes })
}

/// `GET /v1/lanes`.
pub(super) async fn lanes(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Lanes>, ApiError> {
    let journal = authorize(&state, &headers, &Method::GET).await?;
    Ok(Json(lanes_view(journal.as_ref()).await?))
}

/// `POST /v1/lanes/{pipeline}/{environment}/{pause|resume}`.
pub(super) async fn lane_action(
    State(state): State<Arc<AppState>>,
    Extension(ClientAddress(client)): Extension<ClientAddress>,
    Path((pipeline, environment, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<LaneChanged>, ApiError> {
    let journal = authorize(&state, &headers, &Method::POST).await?;
    let body = operator_body(&state, client, &headers, body).await?;
    known_pipeline(&state, &pipeline, None)?;
    let lane = Lane {
        pipeline,
        environment,
    };
    let changed = match action.as_str() {
        "pause" => {
            let reason = super::bodies::pause_reason(&body)?;
            let pause = journal.pause(&lane, &reason).await?;
            tracing::warn!(pipeline = %lane.pipeline, environment = %lane.environment, reason = %pause.reason, "Paused a lane: it starts nothing until resumed.");
            LaneChanged {
                pipeline: lane.pipeline,
                environment: lane.environment,
                state: LaneState::Paused,
                reason: Some(pause.reason),
                was_paused: None,
                released: None,
            }
        }
        "resume" => {
            let was_paused = journal.resume(&lane).await?;
            // Its parked jobs go back on the queue, in order (unless a long execution
            // still holds the lane: its end puts them back). A resume that fails half
            // way is asked again: it puts back the rest.
            let released = state.admission.release(&lane).await?;
            tracing::info!(pipeline = %lane.pipeline, environment = %lane.environment, was_paused, released, "Resumed a lane.");
            LaneChanged {
                pipeline: lane.pipeline,
                environment: lane.environment,
                state: LaneState::Running,
                reason: None,
                was_paused: Some(was_paused),
                released: Some(released),
            }
        }
        other => {
            return Err(ApiError::NotFound(format!(
                "a lane can be paused or resumed, not {other:?}"
            )));
        }
    };
    Ok(Json(changed))
}

/// `POST /v1/replays`: the executions of a window that ran, queued again under new
/// names (see docs/operating.md).
pub(super) async fn replays(
    State(state): State<Arc<AppState>>,
    Extension(ClientAddress(client)): Extension<ClientAddress>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Replays>), ApiError> {
    let journal = authorize(&state, &headers, &Method::POST).await?;
    let body = operator_body(&state, client, &headers, body).await?;
    let body = super::bodies::replay(&body)?;
    known_pipeline(&state, &body.pipeline, Some("pipeline"))?;
    let jobs = journal.lane_jobs(None).await?;
    let mut chosen = Vec::new();
    for job in &jobs {
        let ran = matches!(job.state, JobState::Started | JobState::Ended);
        let in_window = job.lane.pipeline == body.pipeline
            && body
                .environment
                .as_ref()
                .is_none_or(|environment| *environment == job.lane.environment)
            && (body.since_ms..=body.until_ms).contains(&job.queued_at_ms);
        if ran && in_window && (!body.failed_only || ended_badly(&state, job).await?) {
            chosen.push(job);
        }
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
    let runtime = state.runtime.load_full();
    let mut skipped = Vec::new();
    let mut kept = Vec::new();
    for job in &chosen {
        match overtaken(&runtime.lane_rules, journal.as_ref(), &jobs, &chosen, job).await? {
            Some(newer) => skipped.push(Skipped {
                original: original_of(job),
                commit: job.commit.clone(),
                deployed_since_by: newer,
            }),
            None => kept.push(*job),
        }
    }
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
    for job in kept {
        let original = job.replay_of.as_deref().unwrap_or(&job.name);
        // Listings leave the job's body out: read it whole.
        let whole = journal.job(&job.name).await?;
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
        planned.push(Replayed {
            original: original.to_string(),
            replays: job.name.clone(),
            name: request.name.to_string(),
            replay: *replay,
            commit: job.commit.clone(),
        });
        starts.push((request, original.to_string()));
    }
    if body.dry_run {
        return Ok((
            StatusCode::OK,
            Json(Replays {
                dry_run: true,
                replays: planned,
                skipped,
            }),
        ));
    }
    if starts.is_empty() {
        return Err(ApiError::Unprocessable(format!(
            "nothing to replay: no execution of {} {}ran in that window",
            body.pipeline,
            if body.failed_only { "that failed " } else { "" }
        )));
    }
    let count = starts.len();
    let intake = crate::admission::Intake::new(None).replays(starts);
    state.admission.admit(intake).await?;
    tracing::info!(pipeline = %body.pipeline, replays = count, "Queued replays.");
    Ok((
        StatusCode::ACCEPTED,
        Json(Replays {
            dry_run: false,
            replays: planned,
            skipped,
        }),
    ))
}

/// The newer deploy, queued since and not among those replayed, that a replay of
/// `job` would undo (it ran, or runs first): same serial lane, source, repository and
/// ref, deploying every project `job` deploys.
async fn overtaken(
    rules: &crate::lanes::LaneRules,
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
            .is_some_and(|carrier| rules.deploys_all_of(&carrier, &request));
        if covers {
            return Ok(Some(newer.name.clone()));
        }
    }
    Ok(None)
}

/// Whether a job's execution failed, timed out or was aborted: as recorded when a
/// serial lane saw it end, or else as the executor describes it now.
async fn ended_badly(state: &AppState, job: &LaneJob) -> Result<bool, ApiError> {
    let status = match (job.state, &job.status, &state.executor) {
        (JobState::Ended, Some(status), _) => status.clone(),
        (_, _, Some(executor)) => {
            let Ok(name) = crate::execution::name::ExecutionName::parse(&job.name) else {
                return Ok(false);
            };
            let execution =
                executor
                    .describe(&job.lane.pipeline, &name)
                    .await
                    .map_err(|error| {
                        ApiError::Unavailable(format!(
                            "could not tell how {} ended: {}",
                            job.name,
                            Chain(&error)
                        ))
                    })?;
            execution.status.as_str().to_string()
        }
        _ => return Ok(false),
    };
    Ok(matches!(
        status.as_str(),
        "failed" | "timed_out" | "aborted"
    ))
}

/// `GET /v1/queue`: the queue's depth and dead letters (the embedded queue; SQS's are
/// in its console).
pub(super) async fn queue(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<QueueView>, ApiError> {
    authenticate(&state, &headers, &Method::GET).await?;
    Ok(Json(queue_view(&state).await?))
}

pub(super) async fn queue_view(state: &AppState) -> Result<QueueView, ApiError> {
    match &state.queue_admin {
        Some(admin) => admin
            .view()
            .await
            .map_err(|error| ApiError::Unavailable(Chain(&error).to_string())),
        None => Ok(QueueView::default()),
    }
}

/// `POST /v1/dead-letters/redrive`.
pub(super) async fn redrive(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Redriven>, ApiError> {
    authenticate(&state, &headers, &Method::POST).await?;
    let redriven = match &state.queue_admin {
        Some(admin) => admin
            .redrive_all()
            .await
            .map_err(|error| ApiError::Unavailable(Chain(&error).to_string()))?,
        None => None,
    };
    let redriven = redriven.ok_or_else(|| {
        ApiError::NotFound(
            "redrive an SQS dead-letter queue from its own console (StartMessageMoveTask)".into(),
        )
    })?;
    Ok(Json(Redriven { redriven }))
}
