//! The page itself, `GET /me/{token}`: what it shows, read for its owner and drawn in their
//! time zone.

use axum::{extract::State, http::StatusCode, response::Response};
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use dashlight_core::{
    access::{self, Owner},
    kinds::{Channel, Kind},
    people::{self, Preferences},
    validate,
};
use serde::{Deserialize, Serialize};

use super::{html, link::owner_or_404, page_error};
use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiPath, hhmm},
};

#[derive(Serialize)]
struct LessonView {
    booking_id: i64,
    start_iso: String,
    when: String,
    with_label: &'static str,
    with_name: String,
    pickup: Option<String>,
    cancel_mailto: Option<String>,
    too_late: bool,
    /// The Confirm button's form action (a student's unconfirmed lesson).
    confirm_action: Option<String>,
    /// "Confirmed Tue 3 Mar 2026, 17:30 by SMS", or for an instructor "Not confirmed yet".
    confirmation: Option<String>,
    confirmed: bool,
}

#[derive(Serialize)]
struct FeedView {
    id: i64,
    title: String,
    content: String,
    when_iso: String,
    when: String,
    unread: bool,
    booking_id: Option<i64>,
    read_action: String,
}

#[derive(Serialize)]
struct DeviceView {
    id: i64,
    name: String,
    since: String,
    remove_action: String,
}

#[derive(Serialize)]
struct OptOutView {
    kind: &'static str,
    label: &'static str,
    off: bool,
}

#[derive(Serialize)]
struct PrefsView {
    email: bool,
    sms: bool,
    push: bool,
    quiet_start: String,
    quiet_end: String,
    opt_outs: Vec<OptOutView>,
}

#[derive(Serialize)]
pub(super) struct PageView {
    school: String,
    first_name: String,
    full_name: String,
    role: String,
    timezone: String,
    base: String,
    lessons: Vec<LessonView>,
    feed: Vec<FeedView>,
    unread: usize,
    prefs: PrefsView,
    devices: Vec<DeviceView>,
    calendar_url: String,
    preferences_action: String,
    devices_action: String,
    notice: Option<&'static str>,
    error: Option<FieldError>,
    cancel_notice_hours: i64,
}

#[derive(Serialize)]
pub(super) struct FieldError {
    pub(super) field: String,
    pub(super) message: String,
}

/// What a person may call each kind whose emails they can turn off.
pub(super) fn kind_label(k: Kind) -> Option<&'static str> {
    if !k.email_opt_out_allowed() || !k.routing().1.contains(&Channel::Email) {
        return None;
    }
    Some(match k {
        Kind::BookingAlert => "Booking alerts (instructors)",
        Kind::LessonReminder => "Lesson reminders",
        Kind::RecurringConflict => "Weekly lessons that could not be booked",
        Kind::DailyAgenda => "Daily agenda (instructors)",
        Kind::LessonReport => "Lesson reports",
        Kind::NewMessage => "New messages",
        Kind::TestReminder => "Driving test reminders",
        Kind::PackageLow => "Lesson package running low",
        Kind::CrmFollowUp => "Follow-ups (school)",
        Kind::SlotOffer => "Free lesson slots from the waitlist",
        Kind::SlotTaken => "Offered slots taken by someone else",
        _ => return None,
    })
}

pub(super) fn in_zone(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%a %-d %b %Y, %H:%M").to_string()
}

fn mailbox_address(mail_from: &str) -> String {
    dashlight_core::calendar::parse_mailbox(mail_from)
        .map(|p| p.email)
        .unwrap_or_default()
}

pub(super) async fn page_view(
    state: &AppState,
    o: &Owner,
    token: &str,
    notice: Option<&'static str>,
    error: Option<FieldError>,
) -> Result<PageView, ApiError> {
    let now = state.clock.now();
    let tz: Tz = validate::stored_timezone(&o.timezone);
    let mut conn = state.pool.acquire().await?;
    let lessons = access::upcoming_lessons(&mut conn, o.user_id, now).await?;
    let feed = access::feed(&mut conn, o.user_id, now).await?;
    let prefs: Option<Preferences> = sqlx::query_as!(
        Preferences,
        "SELECT user_id, email_notifications, sms_notifications, push_notifications, quiet_hours_start, quiet_hours_end
         FROM user_preferences WHERE user_id = $1",
        o.user_id,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let opted_out = people::email_opt_outs(&mut conn, o.user_id).await?;
    let devices = people::active_devices(&mut conn, o.user_id).await?;
    let base = state.config.public_base_url.trim_end_matches('/').to_owned();
    let me = format!("/me/{token}");
    let school_email = mailbox_address(&state.config.mail_from);
    let is_instructor = o.role == "instructor";
    let lessons = lessons
        .into_iter()
        .map(|l| {
            let e = l.end_time.with_timezone(&tz).format("%H:%M");
            let in_time = l.start_time - now >= Duration::hours(access::CANCEL_NOTICE_HOURS);
            let cancel_mailto = (!is_instructor && !school_email.is_empty() && in_time).then(|| {
                let subject = format!("Please cancel my lesson {} ({})", l.booking_id, in_zone(l.start_time, tz));
                let body = format!(
                    "Hello,\n\nplease cancel my driving lesson with {} on {}.\n\n{}",
                    l.instructor_name,
                    in_zone(l.start_time, tz),
                    o.first_name
                );
                let q: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("subject", &subject)
                    .append_pair("body", &body)
                    .finish()
                    .replace('+', "%20");
                format!("mailto:{school_email}?{q}")
            });
            let confirmation = match (l.student_confirmed_at, l.student_confirmed_via) {
                (Some(at), Some(via)) => Some(format!("Confirmed {} {}", in_zone(at, tz), via.phrase())),
                _ if is_instructor => Some("Not confirmed by the student yet".to_owned()),
                _ => None,
            };
            LessonView {
                confirm_action: (!is_instructor && l.student_confirmed_at.is_none())
                    .then(|| format!("{me}/lessons/{}/confirm", l.booking_id)),
                confirmed: l.student_confirmed_at.is_some(),
                confirmation,
                booking_id: l.booking_id,
                start_iso: l.start_time.to_rfc3339(),
                when: format!("{}–{e}", in_zone(l.start_time, tz)),
                with_label: if is_instructor { "Student" } else { "Instructor" },
                with_name: if is_instructor { l.student_name } else { l.instructor_name },
                pickup: l.pickup_location,
                too_late: !is_instructor && !in_time,
                cancel_mailto,
            }
        })
        .collect();
    let feed: Vec<FeedView> = feed
        .into_iter()
        .map(|f| FeedView {
            id: f.id,
            title: if f.title.trim().is_empty() {
                f.kind.replace('_', " ")
            } else {
                f.title
            },
            content: f.content,
            when_iso: f.due_at.to_rfc3339(),
            when: in_zone(f.due_at, tz),
            unread: f.read_at.is_none(),
            booking_id: f.booking_id,
            read_action: format!("{me}/notifications/{}/read", f.id),
        })
        .collect();
    let p = prefs.unwrap_or(Preferences {
        user_id: o.user_id,
        email_notifications: true,
        sms_notifications: true,
        push_notifications: true,
        quiet_hours_start: None,
        quiet_hours_end: None,
    });
    Ok(PageView {
        school: state.config.school_name.clone(),
        first_name: o.first_name.clone(),
        full_name: format!("{} {}", o.first_name, o.last_name),
        role: o.role.clone(),
        timezone: tz.name().to_owned(),
        unread: feed.iter().filter(|f| f.unread).count(),
        lessons,
        feed,
        prefs: PrefsView {
            email: p.email_notifications,
            sms: p.sms_notifications,
            push: p.push_notifications,
            quiet_start: p.quiet_hours_start.as_ref().map(hhmm::format).unwrap_or_default(),
            quiet_end: p.quiet_hours_end.as_ref().map(hhmm::format).unwrap_or_default(),
            opt_outs: Kind::ALL
                .into_iter()
                .filter_map(|k| {
                    kind_label(k).map(|label| OptOutView {
                        kind: k.as_str(),
                        label,
                        off: opted_out.contains(&k),
                    })
                })
                .collect(),
        },
        devices: devices
            .into_iter()
            .map(|d| DeviceView {
                remove_action: format!("{me}/devices/{}/remove", d.id),
                name: d.device_id,
                since: in_zone(d.created_at, tz),
                id: d.id,
            })
            .collect(),
        calendar_url: format!("{base}/calendar/{}.ics", o.calendar_token),
        preferences_action: format!("{me}/preferences"),
        devices_action: format!("{me}/devices"),
        base,
        notice,
        error,
        cancel_notice_hours: access::CANCEL_NOTICE_HOURS,
    })
}

/// `?done=` after a form post.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    /// What was just done: `preferences`, `read`, `removed`.
    pub done: Option<String>,
}

/// The person's page (HTML): upcoming lessons, notification feed, preferences, calendar feed,
/// enable-alerts button, devices. A wrong or rotated token is a 404 page.
#[utoipa::path(get, path = "/me/{token}", tag = "own page",
    params(("token" = String, Path, description = "the person's access token (POST /api/users/{id}/access-link)")),
    responses(
        (status = 200, description = "The page", content_type = "text/html", body = String),
        (status = 404, description = "No page at this address (unknown or rotated token) (a page for browsers asking for text/html)", body = ErrorBody),
        (status = 503, description = "Database unavailable (a page for browsers asking for text/html)", body = ErrorBody),
    ))]
pub async fn page(
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
    axum::extract::Query(q): axum::extract::Query<PageQuery>,
) -> Response {
    let o = match owner_or_404(&state, &token).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let notice = match q.done.as_deref() {
        Some("preferences") => Some("Your preferences are saved."),
        Some("read") => Some("Marked as read."),
        Some("removed") => Some("The device was removed: it gets no more alerts."),
        Some("confirmed") => Some("Thanks: your lesson is confirmed and your instructor knows."),
        _ => None,
    };
    match page_view(&state, &o, &token, notice, None).await {
        Ok(v) => html(StatusCode::OK, "page", &v),
        Err(e) => page_error(&state, e),
    }
}
