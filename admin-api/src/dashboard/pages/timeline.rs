//! The Booking timeline page (`GET /timeline`): a booking found by id or by student, with its
//! notifications and every attempt, its confirmation and escalation, the offers of the slot it
//! freed and the texts its student sent; the waitlist when no booking is asked for.

use axum::{
    Json,
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use serde::{Deserialize, Serialize};

use super::{
    super::{
        Layout, Operator, error_page, render,
        view::{self, Explained, Time},
    },
    nonempty,
};
use crate::{
    AppState,
    error::ApiError,
    extract::ApiPath,
    http::{
        bookings::{Timeline, booking_timeline},
        deliveries::RETRYABLE,
    },
};

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
}
