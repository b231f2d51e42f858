//! The Queues, Deliveries and Booking timeline pages. Each reads through the JSON API's own
//! handlers (`list_queues`, `list_deliveries`, `booking_timeline`), so filters, validation and
//! queries are the API's; the few extra reads here only add names and titles for people.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use dashlight_core::kinds::Kind;
use serde::{Deserialize, Serialize};

use super::{
    Layout, Operator, chart, error_page, render,
    view::{self, Explained, Time},
};
use crate::{
    AppState,
    error::ApiError,
    extract::{ApiPath, ApiQuery},
    http::{
        bookings::{Timeline, booking_timeline},
        deliveries::{DELIVERY_STATUSES, DeliveryOut, DeliveryQuery, RETRYABLE, list_deliveries},
        queues::list_queues,
    },
};

/// Seconds between the Queues page's reloads.
pub const QUEUES_REFRESH_SECONDS: u32 = 5;
/// Most deliveries one page shows.
pub const DELIVERIES_SHOWN: i64 = 200;
/// Channels, in the order the filter lists them.
const CHANNELS: [&str; 3] = ["email", "sms", "push"];

// ---------------------------------------------------------------------------------------------
// Queues

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

// ---------------------------------------------------------------------------------------------
// Deliveries

/// The Deliveries page's filter (a GET form); empty means any.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct DeliveryFilter {
    /// A delivery status.
    pub status: Option<String>,
    /// `email`, `sms` or `push`.
    pub channel: Option<String>,
    /// A notification kind.
    pub kind: Option<String>,
}

fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

impl DeliveryFilter {
    fn normalized(&self) -> DeliveryFilter {
        DeliveryFilter {
            status: nonempty(&self.status),
            channel: nonempty(&self.channel),
            kind: nonempty(&self.kind),
        }
    }
}

#[derive(Serialize)]
struct Choice {
    value: String,
    selected: bool,
}

fn choices<'a>(all: impl IntoIterator<Item = &'a str>, current: Option<&str>) -> Vec<Choice> {
    all.into_iter()
        .map(|v| Choice {
            value: v.to_owned(),
            selected: current == Some(v),
        })
        .collect()
}

#[derive(Serialize)]
struct DeliveryRow {
    id: i64,
    status: String,
    status_class: &'static str,
    kind: String,
    title: Option<String>,
    booking_id: Option<i64>,
    recipient: Option<String>,
    target: String,
    channel: String,
    attempts: i32,
    max_attempts: i32,
    explained: Option<Explained>,
    updated: Time,
    retryable: bool,
}

/// "Retry all shown (N)": the filter, and the ids of exactly the N retryable rows shown, which
/// are all the button retries (deliveries that failed after the page was drawn, or beyond the
/// rows shown, are not touched).
#[derive(Serialize)]
struct BulkRetry {
    status: String,
    channel: String,
    kind: String,
    count: usize,
    /// Comma-separated delivery ids.
    ids: String,
}

#[derive(Serialize)]
struct DeliveriesPage {
    statuses: Vec<Choice>,
    channels: Vec<Choice>,
    kinds: Vec<Choice>,
    filtered: bool,
    by_status: bool,
    rows: Vec<DeliveryRow>,
    limit: i64,
    truncated: bool,
    retry_all: Option<BulkRetry>,
    error: Option<String>,
    /// The newest suppressed addresses and numbers (sends to them are skipped).
    suppressions: Vec<SuppressionRow>,
}

/// A suppressed address or number, beside the failed deliveries.
#[derive(Serialize)]
struct SuppressionRow {
    id: i64,
    channel: String,
    target: String,
    reason: String,
    detail: Option<String>,
    created: view::Time,
}

/// Suppressions shown on the Deliveries page.
const SUPPRESSIONS_SHOWN: i64 = 20;

/// Names and titles for people: per notification id, `(title, booking, recipient)`.
async fn notification_labels(state: &AppState, ids: &[i64]) -> Result<HashMap<i64, (String, Option<i64>, Option<String>)>, ApiError> {
    let rows = sqlx::query!(
        r#"SELECT n.id AS "id!", n.title AS "title!", n.booking_id,
                COALESCE(NULLIF(trim(concat_ws(' ', u.first_name, u.last_name)), ''), n.recipient_email) AS "recipient?"
         FROM notifications n LEFT JOIN users u ON u.id = n.user_id
         WHERE n.id = ANY($1)"#,
        ids,
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, (r.title, r.booking_id, r.recipient))).collect())
}

/// One call of the JSON API's `GET /api/deliveries`.
async fn api_deliveries(state: &AppState, status: Option<String>, f: &DeliveryFilter, limit: i64) -> Result<Vec<DeliveryOut>, ApiError> {
    let q = DeliveryQuery {
        status,
        channel: f.channel.clone(),
        user_id: None,
        kind: f.kind.clone(),
        since: None,
        limit: Some(limit),
        cursor: None,
    };
    let Json(page) = list_deliveries(State(state.clone()), ApiQuery(q)).await?;
    Ok(page.items)
}

/// The deliveries to show, failed and dead first (newest first within each part).
async fn deliveries_shown(state: &AppState, f: &DeliveryFilter) -> Result<(Vec<DeliveryOut>, bool), ApiError> {
    let limit = DELIVERIES_SHOWN;
    if f.status.is_some() {
        let mut rows = api_deliveries(state, f.status.clone(), f, limit + 1).await?;
        let truncated = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        return Ok((rows, truncated));
    }
    let mut first = Vec::new();
    for status in RETRYABLE {
        first.extend(api_deliveries(state, Some(status.to_owned()), f, limit + 1).await?);
    }
    first.sort_by_key(|d| std::cmp::Reverse(d.id));
    let rest = api_deliveries(state, None, f, limit + 1).await?;
    let rest_count = rest.len();
    let mut truncated = first.len() as i64 > limit || rest_count as i64 > limit;
    first.extend(rest.into_iter().filter(|d| !RETRYABLE.contains(&d.status.as_str())));
    truncated |= first.len() as i64 > limit;
    first.truncate(limit as usize);
    Ok((first, truncated))
}

/// `GET /deliveries`: failed and dead first; filters by status, channel and kind; Retry buttons.
pub async fn deliveries(State(state): State<AppState>, _: Operator, Query(filter): Query<DeliveryFilter>) -> Response {
    let layout = Layout::new(&state, "Deliveries", "deliveries");
    let f = filter.normalized();
    let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    let mut page = DeliveriesPage {
        statuses: choices(DELIVERY_STATUSES.iter().copied(), f.status.as_deref()),
        channels: choices(CHANNELS, f.channel.as_deref()),
        kinds: choices(kinds, f.kind.as_deref()),
        filtered: f.status.is_some() || f.channel.is_some() || f.kind.is_some(),
        by_status: f.status.is_some(),
        rows: Vec::new(),
        limit: DELIVERIES_SHOWN,
        truncated: false,
        retry_all: None,
        error: None,
        suppressions: Vec::new(),
    };
    let (rows, truncated) = match deliveries_shown(&state, &f).await {
        Ok(r) => r,
        Err(e @ ApiError::Invalid { .. }) => {
            // A filter the API refuses: say so next to the form.
            page.error = Some(e.body().message);
            return render(StatusCode::UNPROCESSABLE_ENTITY, "deliveries", &layout, &page);
        }
        Err(e) => return error_page(layout, e),
    };
    let ids: Vec<i64> = rows.iter().map(|d| d.notification_id).collect();
    let labels = match notification_labels(&state, &ids).await {
        Ok(l) => l,
        Err(e) => return error_page(layout, e),
    };
    let tz = state.config.school_timezone;
    page.truncated = truncated;
    page.rows = rows
        .iter()
        .map(|d| {
            let (title, booking_id, recipient) = labels.get(&d.notification_id).cloned().unwrap_or_default();
            let target = view::target(d);
            let recipient = recipient.filter(|r| *r != target);
            DeliveryRow {
                id: d.id,
                status: d.status.clone(),
                status_class: view::status_class(&d.status),
                kind: d.kind.clone(),
                title: Some(title).filter(|t| !t.is_empty()),
                booking_id,
                recipient,
                target,
                channel: d.channel.clone(),
                attempts: d.attempts,
                max_attempts: d.max_attempts,
                explained: view::explain(d, tz),
                updated: view::time(d.updated_at, tz),
                retryable: RETRYABLE.contains(&d.status.as_str()),
            }
        })
        .collect();
    let bulk_allowed = f.status.as_deref().is_none_or(|s| RETRYABLE.contains(&s));
    let shown: Vec<String> = page.rows.iter().filter(|r| r.retryable).map(|r| r.id.to_string()).collect();
    if bulk_allowed && !shown.is_empty() {
        page.retry_all = Some(BulkRetry {
            status: f.status.clone().unwrap_or_default(),
            channel: f.channel.clone().unwrap_or_default(),
            kind: f.kind.clone().unwrap_or_default(),
            count: shown.len(),
            ids: shown.join(","),
        });
    }
    let suppressed = match state.pool.acquire().await {
        Ok(mut conn) => dashlight_core::suppressions::page(&mut conn, None, None, None, SUPPRESSIONS_SHOWN).await,
        Err(e) => Err(e),
    };
    match suppressed {
        Ok(list) => {
            page.suppressions = list
                .into_iter()
                .map(|s| SuppressionRow {
                    id: s.id,
                    channel: s.channel.as_str().to_owned(),
                    target: s.target,
                    reason: s.reason.skip_reason().to_owned(),
                    detail: s.detail,
                    created: view::time(s.created_at, tz),
                })
                .collect();
        }
        Err(e) => return error_page(layout, e.into()),
    }
    render(StatusCode::OK, "deliveries", &layout, &page)
}

// ---------------------------------------------------------------------------------------------
// Booking timeline

/// The timeline page's search: a booking id, or part of a student's name or email.
#[derive(Debug, Default, Deserialize)]
pub struct TimelineQuery {
    /// What was typed.
    pub q: Option<String>,
    /// A booking chosen from the results.
    pub booking: Option<String>,
}

#[derive(Serialize)]
struct Found {
    id: i64,
    status: String,
    /// Filled in for the page.
    status_class: &'static str,
    /// Filled in for the page.
    start: Option<Time>,
    start_time: chrono::DateTime<chrono::Utc>,
    student: String,
    email: String,
    instructor: String,
}

#[derive(Serialize)]
struct AttemptView {
    attempt: i32,
    started: Time,
    finished: Option<Time>,
    outcome: String,
    outcome_class: &'static str,
    error: Option<String>,
    hint: Option<&'static str>,
    worker: Option<String>,
}

#[derive(Serialize)]
struct DeliveryView {
    id: i64,
    channel: String,
    target: String,
    status: String,
    status_class: &'static str,
    attempts: i32,
    max_attempts: i32,
    explained: Option<Explained>,
    retryable: bool,
    log: Vec<AttemptView>,
}

#[derive(Serialize)]
struct NotificationView {
    id: i64,
    kind: String,
    title: String,
    content: String,
    status: String,
    status_class: &'static str,
    status_reason: Option<String>,
    channels: String,
    policy: String,
    created: Time,
    due: Time,
    deliveries: Vec<DeliveryView>,
}

#[derive(Serialize)]
struct BookingView {
    id: i64,
    status: String,
    status_class: &'static str,
    start: Time,
    end: Time,
    student: Option<String>,
    instructor: Option<String>,
    pickup: Option<String>,
    cancel_reason: Option<String>,
    version: i32,
}

#[derive(Serialize, Default)]
struct TimelinePage {
    q: String,
    searched: bool,
    found: Vec<Found>,
    booking: Option<BookingView>,
    notifications: Vec<NotificationView>,
    /// The offers of the slot the booking freed (gap filling).
    offers: Vec<OfferView>,
    /// Students on the waitlist, oldest first (shown when no booking is).
    waitlist: Vec<WaitingView>,
    /// When the student confirmed the lesson.
    student_confirmed: Option<Time>,
    /// How: "by SMS", "from the push notification", ...
    confirmed_via: Option<&'static str>,
    /// While unconfirmed: the next escalation and when it is due.
    next_escalation: Option<EscalationView>,
    /// What the student texted about it, oldest first.
    replies: Vec<ReplyView>,
    error: Option<String>,
}

/// The next escalation of an unconfirmed lesson.
#[derive(Serialize)]
struct EscalationView {
    what: &'static str,
    at: Time,
}

/// A text the student sent about the booking.
#[derive(Serialize)]
struct ReplyView {
    keyword: String,
    body: String,
    from: String,
    received: Time,
}

/// One offer of a freed slot.
#[derive(Serialize)]
struct OfferView {
    id: i64,
    student: String,
    status: String,
    status_class: &'static str,
    version: i32,
    offered: Time,
    opened: Option<Time>,
    accepted: Option<Time>,
    accepted_booking_id: Option<i64>,
    expires: Time,
}

/// One student on the waitlist.
#[derive(Serialize)]
struct WaitingView {
    student_id: i64,
    student: String,
    instructors: String,
    windows: String,
    timezone: String,
    joined: Option<Time>,
    joined_at: chrono::DateTime<chrono::Utc>,
}

/// The active waitlist, oldest first (at most 50).
async fn waitlist(state: &AppState) -> Result<Vec<WaitingView>, ApiError> {
    let tz = state.config.school_timezone;
    let rows = sqlx::query!(
        r#"SELECT e.student_id, concat_ws(' ', u.first_name, u.last_name) AS "student!", u.timezone, e.joined_at,
                coalesce((SELECT string_agg(concat_ws(' ', iu.first_name, iu.last_name), ', ' ORDER BY iu.last_name)
                          FROM instructors i JOIN users iu ON iu.id = i.user_id WHERE i.id = ANY(e.instructor_ids)), 'any') AS "instructors!",
                coalesce((SELECT string_agg((ARRAY['Mon','Tue','Wed','Thu','Fri','Sat','Sun'])[w.day_of_week] || ' '
                                            || to_char(w.start_time, 'HH24:MI') || '–' || to_char(w.end_time, 'HH24:MI'), ', '
                                            ORDER BY w.day_of_week, w.start_time)
                          FROM waitlist_windows w WHERE w.entry_id = e.id), 'any time') AS "windows!"
         FROM waitlist_entries e JOIN students s ON s.id = e.student_id JOIN users u ON u.id = s.user_id
         WHERE e.active ORDER BY e.joined_at, e.id LIMIT 50"#
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| WaitingView {
            student_id: r.student_id,
            student: r.student,
            instructors: r.instructors,
            windows: r.windows,
            timezone: r.timezone,
            joined: Some(view::time(r.joined_at, tz)),
            joined_at: r.joined_at,
        })
        .collect())
}

fn like_pattern(q: &str) -> String {
    let mut p = String::from("%");
    for c in q.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Bookings with their people's names ([`Found`]), those the `WHERE …` literal `$where` picks
/// with its one parameter `$arg`: the search and the booking page share the select, and each
/// statement stays one literal the compiler checks.
macro_rules! found {
    ($where:literal, $arg:expr) => {
        sqlx::query!(
            r#"SELECT b.id, b.status, b.start_time, concat_ws(' ', su.first_name, su.last_name) AS "student!", su.email,
                      concat_ws(' ', iu.first_name, iu.last_name) AS "instructor!"
               FROM bookings b
               JOIN students s ON s.id = b.student_id JOIN users su ON su.id = s.user_id
               JOIN instructors i ON i.id = b.instructor_id JOIN users iu ON iu.id = i.user_id
               "#
                + $where,
            $arg
        )
        .map(|r| Found {
            id: r.id,
            status: r.status,
            status_class: "",
            start: None,
            start_time: r.start_time,
            student: r.student,
            email: r.email,
            instructor: r.instructor,
        })
    };
}

async fn search(state: &AppState, q: &str) -> Result<Vec<Found>, ApiError> {
    let rows: Vec<Found> = found!(
        r"WHERE su.email ILIKE $1 ESCAPE '\' OR concat_ws(' ', su.first_name, su.last_name) ILIKE $1 ESCAPE '\'
          ORDER BY b.start_time DESC, b.id DESC LIMIT 50",
        like_pattern(q)
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(rows)
}

fn offers_view(t: &Timeline, tz: chrono_tz::Tz) -> Vec<OfferView> {
    t.offers
        .iter()
        .map(|o| OfferView {
            id: o.id,
            student: o.student_name.clone(),
            status_class: match o.status.as_str() {
                "accepted" => "ok",
                "open" => "wait",
                _ => "warn",
            },
            status: o.status.clone(),
            version: o.booking_version,
            offered: view::time(o.created_at, tz),
            opened: view::time_opt(o.opened_at, tz),
            accepted: view::time_opt(o.accepted_at, tz),
            accepted_booking_id: o.accepted_booking_id,
            expires: view::time(o.expires_at, tz),
        })
        .collect()
}

fn timeline_view(t: Timeline, names: Option<&Found>, state: &AppState) -> (BookingView, Vec<NotificationView>) {
    let tz = state.config.school_timezone;
    let b = t.booking;
    let booking = BookingView {
        id: b.id,
        status_class: view::status_class(&b.status),
        status: b.status,
        start: view::time(b.start_time, tz),
        end: view::time(b.end_time, tz),
        student: names.map(|n| format!("{} <{}>", n.student, n.email)),
        instructor: names.map(|n| n.instructor.clone()),
        pickup: b.pickup_location,
        cancel_reason: b.cancel_reason,
        version: b.version,
    };
    let notifications = t
        .notifications
        .into_iter()
        .map(|n| NotificationView {
            id: n.id,
            kind: n.kind,
            title: n.title,
            content: n.content,
            status_class: view::status_class(&n.status),
            status: n.status,
            status_reason: n.status_reason,
            channels: n.channels.join(" → "),
            policy: n.policy,
            created: view::time(n.created_at, tz),
            due: view::time(n.due_at, tz),
            deliveries: n
                .deliveries
                .into_iter()
                .map(|dw| {
                    let d = dw.delivery;
                    DeliveryView {
                        id: d.id,
                        channel: d.channel.clone(),
                        target: view::target(&d),
                        status_class: view::status_class(&d.status),
                        status: d.status.clone(),
                        attempts: d.attempts,
                        max_attempts: d.max_attempts,
                        explained: view::explain(&d, tz),
                        retryable: RETRYABLE.contains(&d.status.as_str()),
                        log: dw
                            .attempts_log
                            .into_iter()
                            .map(|a| {
                                let outcome = a.outcome.unwrap_or_else(|| "in flight".to_owned());
                                AttemptView {
                                    attempt: a.attempt,
                                    started: view::time(a.started_at, tz),
                                    finished: view::time_opt(a.finished_at, tz),
                                    outcome_class: match outcome.as_str() {
                                        "sent" => "ok",
                                        "permanent" => "bad",
                                        "in flight" => "wait",
                                        _ => "warn",
                                    },
                                    outcome,
                                    hint: a.error.as_deref().and_then(view::hint),
                                    error: a.error,
                                    worker: a.worker,
                                }
                            })
                            .collect(),
                    }
                })
                .collect(),
        })
        .collect();
    (booking, notifications)
}

/// `GET /timeline`: find a booking by id or student; show its notifications and every attempt,
/// oldest first.
pub async fn timeline(State(state): State<AppState>, _: Operator, Query(query): Query<TimelineQuery>) -> Response {
    let layout = Layout::new(&state, "Booking timeline", "timeline");
    let q = query.q.as_deref().map(str::trim).unwrap_or_default().to_owned();
    let booking_id = nonempty(&query.booking)
        .or_else(|| Some(q.clone()).filter(|q| !q.is_empty() && q.trim_start_matches('#').chars().all(|c| c.is_ascii_digit())))
        .map(|s| s.trim_start_matches('#').to_owned());
    let mut page = TimelinePage {
        q: q.clone(),
        ..Default::default()
    };
    let tz = state.config.school_timezone;
    let result: Result<StatusCode, ApiError> = async {
        if let Some(id) = booking_id {
            let Ok(id) = id.parse::<i64>() else {
                page.error = Some(format!("No booking #{id}."));
                return Ok(StatusCode::NOT_FOUND);
            };
            let t = match booking_timeline(State(state.clone()), ApiPath(id)).await {
                Ok(Json(t)) => t,
                Err(ApiError::NotFound(_)) => {
                    page.error = Some(format!("No booking #{id}."));
                    return Ok(StatusCode::NOT_FOUND);
                }
                Err(e) => return Err(e),
            };
            let names: Option<Found> = found!("WHERE b.id = $1", id).fetch_optional(&state.pool).await?;
            page.offers = offers_view(&t, tz);
            page.student_confirmed = view::time_opt(t.student_confirmed_at, tz);
            page.confirmed_via = t
                .student_confirmed_via
                .as_deref()
                .and_then(dashlight_core::states::ConfirmedVia::parse)
                .map(|v| v.phrase());
            page.next_escalation = t.next_escalation.as_ref().map(|e| {
                let what = if e.kind == "confirm_nudge" {
                    "SMS nudge to the student"
                } else {
                    "alert to the instructor"
                };
                EscalationView {
                    what,
                    at: view::time(e.due_at, tz),
                }
            });
            page.replies = t
                .replies
                .iter()
                .map(|r| ReplyView {
                    keyword: r.keyword.clone(),
                    body: r.body.clone(),
                    from: r.from_number.clone(),
                    received: view::time(r.received_at, tz),
                })
                .collect();
            let (booking, notifications) = timeline_view(t, names.as_ref(), &state);
            page.booking = Some(booking);
            page.notifications = notifications;
        } else if !q.is_empty() {
            page.searched = true;
            page.found = search(&state, &q).await?;
            for f in &mut page.found {
                f.status_class = view::status_class(&f.status);
                f.start = Some(view::time(f.start_time, tz));
            }
        } else {
            page.waitlist = waitlist(&state).await?;
        }
        Ok(StatusCode::OK)
    }
    .await;
    match result {
        Ok(status) => render(status, "timeline", &layout, &page),
        Err(e) => error_page(layout, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_patterns_match_literally() {
        assert_eq!(like_pattern("ann"), "%ann%");
        assert_eq!(like_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }

    #[test]
    fn empty_filters_mean_any() {
        let f = DeliveryFilter {
            status: Some(" ".into()),
            channel: Some("email".into()),
            kind: None,
        }
        .normalized();
        assert_eq!((f.status, f.channel.as_deref(), f.kind), (None, Some("email"), None));
    }
}
