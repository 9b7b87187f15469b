//! The manual trigger API: `POST /v1/executions` queues a run of a pipeline, as a
//! webhook would (planned, then answered `202` once its job is durable), and
//! `GET /v1/executions/{name}` says how it is doing, from the executor. Both take a
//! bearer token of `[api] tokens`. An `Idempotency-Key` makes a retry name the same
//! execution; the same key with another body is refused.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::body::read_body;
use super::{Answer, ApiError, AppState, ClientAddress, answer};
use crate::error::Chain;
use crate::execution::name::ExecutionName;
use crate::journal::JobState;
use crate::source::SourceError;
use crate::source::manual;

/// The longest `Idempotency-Key` taken.
const MAX_KEY: usize = 255;

pub(super) async fn trigger(
    State(state): State<Arc<AppState>>,
    Extension(ClientAddress(client)): Extension<ClientAddress>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = handle_trigger(&state, client, &headers, body).await;
    answer(&state, "manual", result)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, SourceError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(SourceError::Malformed(
            "the Idempotency-Key header is sent more than once".into(),
        ));
    }
    let key = value
        .to_str()
        .ok()
        .filter(|key| !key.is_empty() && key.len() <= MAX_KEY)
        .ok_or_else(|| {
            SourceError::Malformed(format!(
                "Idempotency-Key must be 1 to {MAX_KEY} printable characters"
            ))
        })?;
    Ok(Some(key.to_string()))
}

async fn handle_trigger(
    state: &AppState,
    client: IpAddr,
    headers: &HeaderMap,
    body: Body,
) -> Result<Answer, ApiError> {
    let runtime = state.runtime.load_full();
    let Some(source) = &runtime.manual else {
        return Err(ApiError::NotConfigured("api"));
    };
    source.authenticate(headers)?;
    let content_type = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return Err(SourceError::UnsupportedMediaType(format!(
            "a trigger is application/json, not {content_type:?}"
        ))
        .into());
    }
    let key = idempotency_key(headers)?;
    let mut held = state.bodies.claim(client);
    let body = read_body(headers, body, super::body::OPERATOR_BODY_LIMIT, &mut held).await?;
    let event = manual::decode(&body, key.as_deref())?;
    let span = tracing::info_span!("delivery", source = "manual", delivery = %event.delivery);
    async {
        let plan = runtime.planner.plan(&event)?;
        let request = plan
            .requests
            .first()
            .cloned()
            .expect("a manual trigger plans one execution or refuses");
        if let Some(key) = &key {
            // What the body asks for, not how it is spelled: the same fields in another
            // order, or spaced otherwise, are the same request.
            let digest = hex::encode(Sha256::digest(
                format!("{}\n{}", request.pipeline, request.input.as_str()).as_bytes(),
            ));
            // The ledger is opened at start whenever the API is on; a reload cannot
            // turn the API on without it (it is refused as restart-only).
            let ledger = state.admission.ledger().ok_or_else(|| {
                SourceError::Unavailable(
                    "idempotency keys need the ledger, which this process did not open: restart it"
                        .into(),
                )
            })?;
            if let Some(known) = ledger.remember(key, &digest).await?
                && known != digest
            {
                return Err(SourceError::Unusable(format!(
                    "Idempotency-Key {key:?} was used with another body"
                ))
                .into());
            }
        }
        let mut record =
            crate::journal::DeliveryRecord::received(event.delivery.as_str(), Some(&event));
        record.explanation = plan.trace;
        let intake = crate::admission::Intake::new(None)
            .starts([request.clone()])
            .delivery(record, String::new());
        state.admission.admit(intake).await?;
        Ok((
            StatusCode::ACCEPTED,
            "queued",
            serde_json::to_value(crate::operator::Queued {
                delivery: event.delivery.to_string(),
                status: "queued".into(),
                execution: request.name.to_string(),
                executions: vec![request.name.to_string()],
            })
            .expect("an answer renders"),
        ))
    }
    .instrument(span)
    .await
}

pub(super) async fn status(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    // A token, or the page's session (its links lead here).
    if let Err(error) = super::console::authenticate(&state, &headers, &Method::GET).await {
        return error.into_response();
    }
    match handle_status(&state, &name).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn handle_status(state: &AppState, name: &str) -> Result<Response, ApiError> {
    let runtime = state.runtime.load_full();
    let Some(executor) = &state.executor else {
        return Err(ApiError::NotConfigured("api"));
    };
    let name = ExecutionName::parse(name)
        .map_err(|error| SourceError::Malformed(format!("{name:?}: {error}")))?;
    // A name starts with its pipeline's: try the pipelines it could belong to.
    let mut unavailable = None;
    for pipeline in runtime.planner.pipeline_names() {
        if !name.as_str().starts_with(&format!("{pipeline}-")) {
            continue;
        }
        match executor.describe(pipeline, &name).await {
            Ok(execution) => {
                return Ok(Json(crate::operator::ExecutionView {
                    name: name.to_string(),
                    pipeline: pipeline.to_string(),
                    id: execution.id.clone(),
                    status: execution.status.as_str().to_string(),
                    finished: execution.status.is_finished(),
                    detail: execution.detail.clone(),
                })
                .into_response());
            }
            Err(crate::executor::ExecutorError::NotFound { .. }) => {}
            Err(error) => unavailable = Some(Chain(&error).to_string()),
        }
    }
    if let Some(text) = unavailable {
        tracing::warn!(execution = %name, error = %text, "Could not describe an execution for the API.");
        return Err(ApiError::Unavailable(
            "the executor cannot be asked now; try again".into(),
        ));
    }
    // A job that will never start says so: skipped for a newer one of its lane, or
    // dead-lettered.
    if let Some(journal) = &state.journal
        && let Some(job) = journal.job(name.as_str()).await?
        && matches!(job.state, JobState::Superseded | JobState::Rejected)
    {
        let detail = match job.state {
            JobState::Superseded => job
                .status
                .map(|carrier| format!("not run: {carrier} carries it")),
            _ => job.status.map(|reason| format!("not run: {reason}")),
        };
        return Ok(Json(crate::operator::ExecutionView {
            name: name.to_string(),
            pipeline: job.lane.pipeline,
            id: String::new(),
            status: job.state.as_str().to_ascii_uppercase(),
            finished: true,
            detail,
        })
        .into_response());
    }
    Err(ApiError::NotFound(format!(
        "no execution named {name} has started (it may still be queued)"
    )))
}

/// `POST /v1/reload`: the same reload as SIGHUP; `200` with what became of it, `422`
/// with every problem of a refused configuration (the running one goes on).
pub(super) async fn reload(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let runtime = state.runtime.load_full();
    let Some(source) = &runtime.manual else {
        return ApiError::NotConfigured("api").into_response();
    };
    if let Err(error) = source.authenticate(&headers) {
        return ApiError::from(error).into_response();
    }
    let Some(reloads) = &state.reloads else {
        return ApiError::NotFound("this process was not started from a configuration file".into())
            .into_response();
    };
    let (answer, outcome) = tokio::sync::oneshot::channel();
    if reloads.send(answer).await.is_err() {
        return ApiError::Busy.into_response();
    }
    match outcome.await {
        Ok(Ok(status)) => Json(crate::operator::Reloaded { status }).into_response(),
        Ok(Err(problems)) => ApiError::Unprocessable(problems).into_response(),
        Err(_) => ApiError::Busy.into_response(),
    }
}
