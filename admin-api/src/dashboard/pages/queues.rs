//! The Queues page (`GET /`): every queue's counts by state, what is paused (queues and
//! channels, with the latest pause events and providers' holds) and the last hour's chart;
//! it reloads itself.

use axum::{Json, extract::State, http::StatusCode, response::Response};
use serde::Serialize;

use super::{
    super::{
        Layout, Operator, chart, error_page, render,
        view::{self, Time},
    },
    CHANNELS,
};
use crate::{AppState, error::ApiError, http::queues::list_queues};

/// Seconds between the Queues page's reloads.
pub const QUEUES_REFRESH_SECONDS: u32 = 5;

#[derive(Serialize)]
struct QueueRow {
    queue: String,
    pending: i64,
    scheduled: i64,
    running: i64,
    done: i64,
    failed: i64,
    dead: i64,
    attention: bool,
}

/// A queue or channel that can be paused, with its pause if any.
#[derive(Serialize)]
struct ControlRow {
    scope: &'static str,
    name: String,
    paused: bool,
    paused_by: Option<String>,
    paused_at: Option<String>,
    reason: Option<String>,
    /// A provider's hold in force (a 429's `Retry-After`).
    held: Option<String>,
    pause_path: String,
    resume_path: String,
}

#[derive(Serialize)]
struct ControlEventRow {
    at: String,
    actor: String,
    action: String,
    scope: String,
    name: String,
    reason: Option<String>,
}

#[derive(Serialize)]
struct QueuesPage {
    queues: Vec<QueueRow>,
    controls: Vec<ControlRow>,
    control_events: Vec<ControlEventRow>,
    chart: chart::Chart,
    updated: Time,
    refresh: u32,
}

/// `GET /`: every queue's counts by state and the last hour's chart; reloads itself.
pub async fn queues(State(state): State<AppState>, _: Operator) -> Response {
    let mut layout = Layout::new(&state, "Queues", "queues");
    layout.refresh = Some(QUEUES_REFRESH_SECONDS);
    match queues_page(&state).await {
        Ok(page) => render(StatusCode::OK, "queues", &layout, &page),
        Err(e) => error_page(layout, e),
    }
}

async fn queues_page(state: &AppState) -> Result<QueuesPage, ApiError> {
    let Json(stats) = list_queues(State(state.clone())).await?;
    let now = state.clock.now();
    let tz = state.config.school_timezone;
    let minutes = chart::per_minute(&state.pool, now).await?;
    let pauses = dashlight_core::controls::pauses(&state.pool).await?;
    let holds = dashlight_core::controls::provider_holds(&state.pool).await?;
    let targets = dashlight_core::jobs::QUEUES
        .iter()
        .map(|q| (dashlight_core::controls::Scope::Queue, q.to_string()))
        .chain(CHANNELS.iter().map(|c| (dashlight_core::controls::Scope::Channel, c.to_string())));
    let controls = targets
        .map(|(scope, name)| {
            let p = pauses.iter().find(|p| p.scope == scope && p.name == name);
            let base = match scope {
                dashlight_core::controls::Scope::Queue => format!("/api/queues/{name}"),
                dashlight_core::controls::Scope::Channel => format!("/api/channels/{name}"),
            };
            let held = holds
                .iter()
                .find(|(c, _, _)| scope == dashlight_core::controls::Scope::Channel && c.as_str() == name)
                .map(|(_, until, why)| {
                    format!(
                        "provider asked to wait until {}: {}",
                        view::time(*until, tz).full,
                        why.as_deref().unwrap_or("")
                    )
                });
            ControlRow {
                scope: scope.as_str(),
                paused: p.is_some(),
                paused_by: p.map(|p| p.paused_by.clone()),
                paused_at: p.map(|p| view::time(p.paused_at, tz).full),
                reason: p.and_then(|p| p.reason.clone()),
                held,
                pause_path: format!("{base}/pause"),
                resume_path: format!("{base}/resume"),
                name,
            }
        })
        .collect();
    let control_events = dashlight_core::controls::events(&state.pool, 10)
        .await?
        .into_iter()
        .map(|e| ControlEventRow {
            at: view::time(e.at, tz).full,
            actor: e.actor,
            action: e.action,
            scope: e.scope.as_str().to_owned(),
            name: e.name,
            reason: e.reason,
        })
        .collect();
    Ok(QueuesPage {
        controls,
        control_events,
        queues: stats
            .into_iter()
            .map(|s| QueueRow {
                attention: s.failed + s.dead > 0,
                queue: s.queue,
                pending: s.pending,
                scheduled: s.scheduled,
                running: s.running,
                done: s.done,
                failed: s.failed,
                dead: s.dead,
            })
            .collect(),
        chart: chart::layout(&minutes, now, tz),
        updated: view::time(now, tz),
        refresh: QUEUES_REFRESH_SECONDS,
    })
}
