//! The webhook endpoints: GitHub's and CodeCommit's deliveries verified, decoded,
//! planned and admitted; the answer says what was queued.

use super::*;

pub(super) fn count_refusal(state: &AppState, source: &str, error: &ApiError) {
    state
        .metrics
        .deliveries
        .get_or_create(&labels(&[
            ("source", source),
            ("outcome", &format!("refused_{}", error.status().as_u16())),
        ]))
        .inc();
}

/// Counts a delivery's outcome and logs a refusal: the same for every source.
pub(super) fn answer(
    state: &AppState,
    source: &'static str,
    result: Result<Answer, ApiError>,
) -> Response {
    let outcome = match &result {
        Ok((_, outcome, _)) => outcome.to_string(),
        Err(error) => format!("refused_{}", error.status().as_u16()),
    };
    state
        .metrics
        .deliveries
        .get_or_create(&labels(&[("source", source), ("outcome", &outcome)]))
        .inc();
    let budget = match &result {
        Err(ApiError::AddressBudget(_)) => Some("per_address"),
        Err(ApiError::Busy) => Some("total"),
        _ => None,
    };
    if let Some(reason) = budget {
        state
            .metrics
            .bodies_refused
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    }
    match result {
        Ok((status, _, body)) => (status, axum::Json(body)).into_response(),
        Err(error) => {
            tracing::info!(source, status = error.status().as_u16(), error = %Chain(&error), "Refused a delivery.");
            error.into_response()
        }
    }
}

pub(super) async fn github_webhook(
    State(state): State<Arc<AppState>>,
    Extension(ClientAddress(client)): Extension<ClientAddress>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = handle_github(&state, client, &headers, body).await;
    answer(&state, "github", result)
}

pub(super) async fn codecommit_webhook(
    State(state): State<Arc<AppState>>,
    Extension(ClientAddress(client)): Extension<ClientAddress>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = handle_codecommit(&state, client, &headers, body).await;
    answer(&state, "codecommit", result)
}

pub(super) type Answer = (StatusCode, &'static str, serde_json::Value);

async fn handle_github(
    state: &AppState,
    client: IpAddr,
    headers: &HeaderMap,
    body: Body,
) -> Result<Answer, ApiError> {
    // The body's bytes count against its client's budget until the request ends.
    let mut held = state.bodies.claim(client);
    let body = read_body(headers, body, state.max_body_bytes, &mut held).await?;
    let runtime = state.runtime.load();
    let verified = github::verify(&runtime.github, headers, &body)?;
    let delivery = verified.delivery().clone();
    let span = tracing::info_span!("delivery", source = "github", delivery = %delivery, event = verified.event_name());
    let decoded = span.in_scope(|| github::decode(verified))?;
    // The event holds what planning needs: the body (up to 25 MB) goes now, not when
    // the delivery is answered.
    drop(body);
    drop(held);
    async move {
        match decoded {
            Decoded::Ping => Ok((
                StatusCode::OK,
                "ping",
                json!({"delivery": delivery.as_str(), "status": "pong"}),
            )),
            Decoded::Ignored(name) => Ok(ignored(
                delivery.as_str(),
                format!("{name} events are not acted on"),
            )),
            Decoded::Event(event) => accept_events(state, delivery.as_str(), vec![*event]).await,
        }
    }
    .instrument(span)
    .await
}

async fn handle_codecommit(
    state: &AppState,
    client: IpAddr,
    headers: &HeaderMap,
    body: Body,
) -> Result<Answer, ApiError> {
    let runtime = state.runtime.load_full();
    let Some(source) = &runtime.codecommit else {
        return Err(ApiError::NotConfigured("codecommit"));
    };
    let mut held = state.bodies.claim(client);
    let body = read_body(headers, body, state.max_body_bytes, &mut held).await?;
    let verified = source.verify(headers, &body).await?;
    match &verified {
        codecommit::Verified::SubscriptionConfirmation(message) => {
            let confirmed = source.confirm(message).await?;
            if confirmed {
                tracing::info!(topic = %message.topic_arn, "Confirmed an SNS subscription.");
            } else {
                tracing::warn!(topic = %message.topic_arn, "An SNS subscription asks to be confirmed; codecommit.confirm_subscriptions is off, so it was not.");
            }
            let status = if confirmed {
                "subscription_confirmed"
            } else {
                "subscription_not_confirmed"
            };
            return Ok((
                StatusCode::OK,
                status,
                json!({"delivery": message.message_id, "status": status}),
            ));
        }
        codecommit::Verified::UnsubscribeConfirmation(message) => {
            tracing::warn!(topic = %message.topic_arn, "An SNS topic unsubscribed this endpoint: its notifications no longer arrive.");
            return Ok((
                StatusCode::OK,
                "unsubscribed",
                json!({"delivery": message.message_id, "status": "unsubscribed"}),
            ));
        }
        _ => {}
    }
    match codecommit::decode(&verified)? {
        codecommit::Decoded::Ignored(reason) => Ok(ignored("", reason)),
        codecommit::Decoded::Events(events) => {
            let delivery = events
                .first()
                .map(|event| event.delivery.to_string())
                .unwrap_or_default();
            let span = tracing::info_span!("delivery", source = "codecommit", delivery = %delivery);
            accept_events(state, &delivery, events)
                .instrument(span)
                .await
        }
    }
}

fn ignored(delivery: &str, reason: String) -> Answer {
    tracing::info!(reason = %reason, "Ignored an event gitdispatch does not act on.");
    (
        StatusCode::ACCEPTED,
        "ignored",
        json!({"delivery": delivery, "status": "ignored", "reason": reason}),
    )
}

/// Plans a delivery's events and has their jobs admitted (one send for the whole
/// delivery, so that a retried delivery finds either all or, by their ids, the rest);
/// answers only when all of them are durable. The journal keeps the delivery as it was
/// answered.
async fn accept_events(
    state: &AppState,
    delivery: &str,
    events: Vec<Event>,
) -> Result<Answer, ApiError> {
    let record = crate::journal::DeliveryRecord::received(delivery, events.first());
    match plan_events(state, events, record.clone()) {
        Ok(intake) => {
            let admitted = state.admission.admit(intake).await?;
            Ok(answer_admitted(delivery, &admitted))
        }
        Err(error) => {
            let mut record = record;
            record.status = error.status().as_u16();
            record.outcome = "error".to_string();
            record.reason = Some(Chain(&error).to_string());
            state.admission.refused(&record).await;
            Err(error)
        }
    }
}

/// Plans a delivery's events into what the admission step takes, noting in `record`
/// what was planned and why.
fn plan_events(
    state: &AppState,
    events: Vec<Event>,
    mut record: crate::journal::DeliveryRecord,
) -> Result<crate::admission::Intake, ApiError> {
    let mut intake = crate::admission::Intake::new(Some(ledger::Claimant::Delivery));
    let mut skipped = Vec::new();
    let mut matched = 0;
    let planner = state.runtime.load().planner.clone();
    for event in &events {
        let plan = planner.plan(event)?;
        record_plan(state, event, &plan);
        record.explanation.extend(plan.trace.iter().cloned());
        matched += plan.matched_routes;
        skipped.extend(plan.skipped.iter().map(|skip| skip.reason.as_str()));
        if let EventKind::Push(push) = &event.kind
            && plan.matched_routes > 0
            && !push.deleted
            && push.git_ref.as_str().starts_with("refs/heads/")
        {
            intake = intake.heads([crate::admission::Head {
                repository: event.repository.clone(),
                git_ref: push.git_ref.clone(),
                commit: push.after.clone(),
            }]);
        }
        if let Some(expansion) = &plan.expansion {
            tracing::info!(
                repository = %expansion.repository,
                git_ref = %expansion.git_ref,
                before = %expansion.before,
                after = %expansion.after,
                "Queueing the push's commits to be fetched and planned."
            );
        }
        intake = intake
            .starts(plan.requests)
            .jobs(plan.expansion.into_iter().map(Job::expand))
            .reports(plan.reports);
    }
    let nothing_because = if matched == 0 {
        "no route matched the event".to_string()
    } else {
        format!(
            "matching routes planned nothing (skipped: {})",
            skipped.join(", ")
        )
    };
    Ok(intake.delivery(record, nothing_because))
}

/// The answer to a delivery whose jobs were admitted.
fn answer_admitted(delivery: &str, admitted: &crate::admission::Admitted) -> Answer {
    if admitted.is_empty() {
        return (
            StatusCode::OK,
            "no_executions",
            json!({"delivery": delivery, "status": "no_executions", "reason": admitted.nothing_because}),
        );
    }
    let mut body = json!({"delivery": delivery, "status": "queued", "executions": admitted.queued});
    if admitted.expansions > 0 {
        body["expansions"] = json!(admitted.expansions);
    }
    (StatusCode::ACCEPTED, "queued", body)
}

/// Logs and counts what planning one event decided.
fn record_plan(state: &AppState, event: &Event, plan: &crate::plan::Plan) {
    let source = event.source.as_str();
    for line in &plan.trace {
        tracing::debug!(repository = %event.repository, "{line}");
    }
    for skip in &plan.skipped {
        tracing::info!(
            route = %skip.route,
            commit = skip.commit.as_ref().map(|sha| sha.as_str()),
            reason = skip.reason.as_str(),
            "Skipped a commit on purpose."
        );
        state
            .metrics
            .commits_skipped
            .get_or_create(&labels(&[("reason", skip.reason.as_str())]))
            .inc();
    }
    if plan.commits_may_be_truncated {
        tracing::warn!(
            repository = %event.repository,
            "The push's commit list may be incomplete (it lists GitHub's maximum of {}, or more than github.max_commits_per_push): commits beyond what was planned were not.",
            github::MAX_LISTED_COMMITS
        );
        state.metrics.commit_lists_truncated.inc();
    }
    if plan.matched_routes == 0 {
        tracing::info!(repository = %event.repository, kind = event.kind.name(), "No route matched the event.");
        state
            .metrics
            .events_unrouted
            .get_or_create(&labels(&[("source", source)]))
            .inc();
    }
}
