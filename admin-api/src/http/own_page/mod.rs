//! A page of one's own (docs/own-page.md): every person's page at `/me/{token}`, for students and
//! instructors on their phones, and what it needs.
//!
//! - `POST /api/users/{id}/access-link` (`{send?}` → `{url}`; `send` emails it as kind
//!   `access_link`) and `POST /api/users/{id}/access-link/rotate` (bearer token).
//! - `GET /me/{token}`: upcoming lessons (times in the person's zone, instructor or student,
//!   pick-up, and a cancel request by email to the school for lessons at least
//!   [`access::CANCEL_NOTICE_HOURS`] away), the notification feed (newest first, unread marked,
//!   a Mark read button each), the preferences form (channels, quiet hours, per-kind email
//!   opt-outs), the calendar feed's address, the **Enable alerts on this device** button and the
//!   person's devices with Remove buttons.
//! - `POST /me/{token}/preferences`, `/notifications/{id}/read`, `/devices/{id}/remove`: HTML
//!   form posts answered `303 See Other` back to the page (422 with the page and the field at
//!   fault). `POST /me/{token}/devices`: JSON, `PushSubscription.toJSON()`, with the endpoint
//!   and key checks of `POST /api/users/{id}/devices`.
//! - `GET /push/vapid-public-key` and `GET /sw.js`, the service worker (root scope).
//! - Confirming a lesson ([`confirm`]): the reminder email's link (`/confirm/{token}`), the
//!   service worker's Confirm action and the page's own Confirm button on each upcoming lesson
//!   the student has not confirmed yet.
//!
//! The token in the path is the capability: a wrong, malformed or rotated one is a 404 page and
//! no route needs the admin token. Writes are also refused (403) from another site: a browser's
//! `Sec-Fetch-Site` must be `same-origin` (or `none`), and an `Origin`, when sent, must be this
//! server's ([`same_origin`]). Pages are handlebars templates (every value escaped, no
//! triple-stash) served with a strict Content-Security-Policy; the one script and the stylesheet
//! are files of this server ([`ASSET_ROUTES`]); the page is readable and its forms work without
//! JavaScript, which only the push button needs.

pub mod confirm;

use std::sync::LazyLock;

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::get,
};
use base64::Engine as _;
use chrono::{DateTime, Duration, NaiveTime, Utc};
use chrono_tz::Tz;
use dashlight_core::{
    access::{self, Owner},
    kinds::{Channel, Kind},
    notify::{self, NewNotification},
    people::{self, NewDevice, Preferences},
};
use handlebars::Handlebars;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiJson, ApiPath, OptionalJson, hhmm},
    http::people::{DeviceOut, check_endpoint, check_push_keys},
};

/// Served with the page: scripts, styles and service workers only from this server; fetches
/// and forms only to it.
pub const CSP: &str = "default-src 'none'; script-src 'self'; worker-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The service worker's content type.
pub const SW_CONTENT_TYPE: &str = "application/javascript; charset=utf-8";

/// The page's static files, served outside [`crate::ROUTES`] like the dashboard's.
pub const ASSET_ROUTES: &[&str] = &["/assets/me.css", "/assets/me.js"];

/// `/api` routes (bearer token).
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(access_link))
        .routes(routes!(rotate_access_link))
}

/// The open routes: the page, its writes, the VAPID key and the service worker.
pub(crate) fn open_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(page))
        .routes(routes!(post_preferences))
        .routes(routes!(add_device))
        .routes(routes!(remove_device))
        .routes(routes!(mark_read))
        .routes(routes!(vapid_public_key))
        .routes(routes!(service_worker))
        .routes(routes!(confirm::confirm_page, confirm::confirm_post))
        .routes(routes!(confirm::confirm_push))
        .routes(routes!(confirm::confirm_own))
        .route_layer(axum::middleware::from_fn(negotiate))
}

/// What an error page says, for clients that want JSON instead ([`negotiate`]).
#[derive(Debug, Clone)]
struct ErrorInfo {
    code: &'static str,
    message: String,
    field: Option<String>,
}

/// True when the client wants a page: it names `text/html` (browsers navigating and posting
/// forms do) and does not ask for JSON.
fn wants_html(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    accept.contains("text/html") && !accept.contains("application/json")
}

/// Middleware: error pages go to browsers; every other client gets the API's JSON error body
/// (same status, the field at fault named).
async fn negotiate(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let html = wants_html(req.headers());
    let mut res = next.run(req).await;
    let info = res.extensions_mut().remove::<ErrorInfo>();
    match info {
        Some(info) if !html => {
            let mut out = (
                res.status(),
                Json(ErrorBody {
                    error: info.code.to_owned(),
                    message: info.message,
                    field: info.field,
                }),
            )
                .into_response();
            out.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            out
        }
        _ => res,
    }
}

fn with_info(mut res: Response, code: &'static str, message: &str, field: Option<String>) -> Response {
    res.extensions_mut().insert(ErrorInfo {
        code,
        message: message.to_owned(),
        field,
    });
    res
}

fn code_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        403 => "forbidden",
        404 => "not_found",
        422 => "invalid_value",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "bad_request",
    }
}

/// The page's stylesheet and script (not in the OpenAPI document).
pub(crate) fn asset_routes() -> Router<AppState> {
    Router::new()
        .route(ASSET_ROUTES[0], get(stylesheet))
        .route(ASSET_ROUTES[1], get(script))
}

// ---------------------------------------------------------------------------------------------
// The personal link (bearer token)
// ---------------------------------------------------------------------------------------------

/// `POST /api/users/{id}/access-link`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLinkIn {
    /// Also email the link to the person (kind `access_link`).
    #[serde(default)]
    pub send: bool,
}

/// A person's page link.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccessLinkOut {
    /// `users.id`.
    pub user_id: i64,
    /// `PUBLIC_BASE_URL/me/{token}`.
    #[schema(example = "https://school.example/me/3f2a9c0e5b7d4e1f8a6c2b9d0e4f7a1c3f2a9c0e5b7d4e1f8a6c2b9d0e4f7a1c")]
    pub url: String,
    /// The `access_link` notification that emails it, when `send` was asked for.
    pub notification_id: Option<i64>,
}

/// The person's page link; with `{"send": true}` it is also emailed to them (kind
/// `access_link`, email only).
#[utoipa::path(post, path = "/api/users/{id}/access-link", tag = "own page",
    request_body(content = Option<AccessLinkIn>, description = "Optional: the body may be left out"),
    params(("id" = i64, Path, description = "users.id")),
    responses(
        (status = 200, description = "The link", body = AccessLinkOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid value", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn access_link(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    OptionalJson(body): OptionalJson<AccessLinkIn>,
) -> Result<Json<AccessLinkOut>, ApiError> {
    let now = state.clock.now();
    let mut tx = state.pool.begin().await?;
    let url = access::page_url(&state.config.public_base_url, &access::token_of(&mut tx, id).await?);
    let mut notification_id = None;
    if body.send {
        let mut n = NewNotification::to_user(Kind::AccessLink, id, format!("access_link:{id}:{}", uuid::Uuid::new_v4()), now);
        n.title = "Your page".into();
        n.content = "The link to your own page was sent to you.".into();
        n.data = serde_json::json!({ "page_url": url });
        notification_id = notify::create(&mut tx, n).await?;
    }
    tx.commit().await?;
    tracing::info!(user_id = id, sent = body.send, "access link given");
    Ok(Json(AccessLinkOut {
        user_id: id,
        url,
        notification_id,
    }))
}

/// Gives the person a new page link and shuts out whoever held the old one: the old link
/// answers 404 from now on, the devices registered from the page are switched off (alerts are
/// enabled again from the new link), and the calendar feed's address (shown on the page) is
/// replaced too.
#[utoipa::path(post, path = "/api/users/{id}/access-link/rotate", tag = "own page",
    params(("id" = i64, Path, description = "users.id")),
    responses(
        (status = 200, description = "Rotated: the new link", body = AccessLinkOut),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn rotate_access_link(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<AccessLinkOut>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let token = access::rotate(&mut tx, id, state.clock.now()).await?;
    tx.commit().await?;
    tracing::info!(user_id = id, "access link rotated");
    Ok(Json(AccessLinkOut {
        user_id: id,
        url: access::page_url(&state.config.public_base_url, &token),
        notification_id: None,
    }))
}

// ---------------------------------------------------------------------------------------------
// The page
// ---------------------------------------------------------------------------------------------

static TEMPLATES: LazyLock<Handlebars<'static>> = LazyLock::new(|| {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(false);
    for (name, text) in TEMPLATE_SOURCES {
        hb.register_template_string(name, *text)
            .unwrap_or_else(|e| panic!("own page template {name}: {e}"));
    }
    hb
});

const TEMPLATE_SOURCES: &[(&str, &str)] = &[
    ("page", include_str!("../../../templates/me/page.html.hbs")),
    ("message", include_str!("../../../templates/me/message.html.hbs")),
    ("confirm", include_str!("../../../templates/me/confirm.html.hbs")),
];

fn html(status: StatusCode, name: &str, data: &impl Serialize) -> Response {
    let body = TEMPLATES.render(name, data).unwrap_or_else(|e| {
        tracing::error!(template = name, error = %e, "own page template failed");
        "<!DOCTYPE html><title>Error</title><p>Something went wrong.</p>".to_owned()
    });
    let mut res = (status, Html(body)).into_response();
    secure(res.headers_mut());
    res
}

fn secure(h: &mut HeaderMap) {
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The token is in the address: never send it on to another site.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

#[derive(Serialize)]
struct MessageView {
    school: String,
    title: String,
    message: String,
}

fn message(state: &AppState, status: StatusCode, title: &str, text: &str) -> Response {
    let res = html(
        status,
        "message",
        &MessageView {
            school: state.config.school_name.clone(),
            title: title.to_owned(),
            message: text.to_owned(),
        },
    );
    with_info(res, code_of(status), text, None)
}

fn not_found(state: &AppState) -> Response {
    message(
        state,
        StatusCode::NOT_FOUND,
        "Page not found",
        "There is no page at this address. Personal links are replaced when a new one is made: use the latest link the school sent you, or ask the school for a new one.",
    )
}

/// The owner of the token, or the 404 page.
async fn owner_or_404(state: &AppState, token: &str) -> Result<Owner, Response> {
    let mut conn = state.pool.acquire().await.map_err(|e| page_error(state, e.into()))?;
    match access::owner(&mut conn, token).await {
        Ok(Some(o)) => Ok(o),
        Ok(None) => Err(not_found(state)),
        Err(e) => Err(page_error(state, e.into())),
    }
}

fn page_error(state: &AppState, e: ApiError) -> Response {
    let (status, _) = e.status_and_code();
    if status.is_server_error() {
        tracing::error!(error = %e, "own page failed");
    }
    message(state, status, "Something went wrong", &e.body().message)
}

/// Whether a write comes from this server's own pages (or from no browser at all): a
/// `Sec-Fetch-Site` other than `same-origin`/`none` is refused; without one (older browsers),
/// an `Origin` that is neither the request's own host nor `PUBLIC_BASE_URL`'s origin is.
pub fn same_origin(headers: &HeaderMap, public_base_url: &str) -> bool {
    let get = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    // Browsers set Sec-Fetch-Site themselves (pages cannot): when present it decides. A page
    // with a strict referrer policy sends `Origin: null` on form posts, so it cannot.
    if let Some(site) = get(header::HeaderName::from_static("sec-fetch-site")) {
        return matches!(site, "same-origin" | "none");
    }
    let Some(origin) = get(header::ORIGIN) else { return true };
    let Ok(o) = url::Url::parse(origin) else { return false };
    let base_origin = url::Url::parse(public_base_url).ok().map(|u| u.origin());
    if base_origin.as_ref() == Some(&o.origin()) {
        return true;
    }
    let host = get(header::HOST).unwrap_or_default();
    let origin_host = match (o.host_str(), o.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => return false,
    };
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

fn cross_site(state: &AppState) -> Response {
    tracing::warn!("own page: a write from another site refused");
    message(
        state,
        StatusCode::FORBIDDEN,
        "Not from this site",
        "This change did not come from your page, so it was not made. Open your page and try again there.",
    )
}

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
struct PageView {
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
struct FieldError {
    field: String,
    message: String,
}

/// What a person may call each kind whose emails they can turn off.
fn kind_label(k: Kind) -> Option<&'static str> {
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

fn in_zone(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%a %-d %b %Y, %H:%M").to_string()
}

fn mailbox_address(mail_from: &str) -> String {
    dashlight_core::calendar::parse_mailbox(mail_from)
        .map(|p| p.email)
        .unwrap_or_default()
}

async fn page_view(
    state: &AppState,
    o: &Owner,
    token: &str,
    notice: Option<&'static str>,
    error: Option<FieldError>,
) -> Result<PageView, ApiError> {
    let now = state.clock.now();
    let tz: Tz = o.timezone.parse().unwrap_or(state.config.school_timezone);
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

/// The preferences form's fields, read by hand: checkboxes are absent when off and
/// `email_opt_out` repeats.
#[derive(Debug, Default)]
struct PrefsForm {
    email: bool,
    sms: bool,
    push: bool,
    quiet_start: Option<String>,
    quiet_end: Option<String>,
    opt_outs: Vec<String>,
}

fn parse_prefs_form(body: &[u8]) -> Result<PrefsForm, ApiError> {
    let mut f = PrefsForm::default();
    for (k, v) in form_urlencoded::parse(body) {
        match k.as_ref() {
            "email_notifications" => f.email = true,
            "sms_notifications" => f.sms = true,
            "push_notifications" => f.push = true,
            "quiet_hours_start" => f.quiet_start = Some(v.trim().to_owned()).filter(|s| !s.is_empty()),
            "quiet_hours_end" => f.quiet_end = Some(v.trim().to_owned()).filter(|s| !s.is_empty()),
            "email_opt_out" => f.opt_outs.push(v.into_owned()),
            other => return Err(ApiError::invalid(other, "unknown field")),
        }
    }
    Ok(f)
}

fn parse_time(field: &str, v: Option<&str>) -> Result<Option<NaiveTime>, ApiError> {
    v.map(|s| hhmm::parse(s).map_err(|m| ApiError::invalid(field, m))).transpose()
}

async fn save_prefs(state: &AppState, o: &Owner, body: &[u8]) -> Result<(), ApiError> {
    let f = parse_prefs_form(body)?;
    let start = parse_time("quiet_hours_start", f.quiet_start.as_deref())?;
    let end = parse_time("quiet_hours_end", f.quiet_end.as_deref())?;
    let mut off = Vec::new();
    for name in &f.opt_outs {
        let k = Kind::parse(name)
            .filter(|k| kind_label(*k).is_some())
            .ok_or_else(|| ApiError::invalid("email_opt_out", format!("{name:?} is not a kind whose emails can be turned off")))?;
        off.push(k);
    }
    let mut tx = state.pool.begin().await?;
    people::set_preferences(
        &mut tx,
        &Preferences {
            user_id: o.user_id,
            email_notifications: f.email,
            sms_notifications: f.sms,
            push_notifications: f.push,
            quiet_hours_start: start,
            quiet_hours_end: end,
        },
    )
    .await
    .map_err(|e| match ApiError::from(e) {
        ApiError::Invalid { code, field, message } => ApiError::Invalid {
            code,
            field: field.map(|f| f.replace('.', "_")),
            message,
        },
        other => other,
    })?;
    for k in Kind::ALL.into_iter().filter(|k| kind_label(*k).is_some()) {
        people::set_email_opt_out(&mut tx, o.user_id, k, off.contains(&k), people::OptOutSource::OwnPage).await?;
    }
    tx.commit().await?;
    tracing::info!(
        user_id = o.user_id,
        email = f.email,
        sms = f.sms,
        push = f.push,
        quiet_hours = ?start.zip(end),
        email_opt_outs = ?off.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        "preferences saved from the own page"
    );
    Ok(())
}

/// Saves the preferences form (`application/x-www-form-urlencoded`): checkboxes
/// `email_notifications`, `sms_notifications`, `push_notifications` (present = on),
/// `quiet_hours_start`/`quiet_hours_end` (`HH:MM` in the person's zone, both or neither) and
/// `email_opt_out` (repeated: the kinds whose emails are off; the others are on). `303` back to
/// the page; `422` shows the page with the field at fault.
#[utoipa::path(post, path = "/me/{token}/preferences", tag = "own page",
    params(("token" = String, Path, description = "the person's access token")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "email_notifications=on&sms_notifications=on&push_notifications=on&quiet_hours_start=22:00&quiet_hours_end=07:00&email_opt_out=lesson_report"),
    responses(
        (status = 303, description = "Saved: back to the page"),
        (status = 403, description = "Sent from another site (a page for browsers asking for text/html)", body = ErrorBody),
        (status = 404, description = "No page at this address (a page for browsers asking for text/html)", body = ErrorBody),
        (status = 422, description = "A field is not acceptable: the page, naming it (a page for browsers asking for text/html)", body = ErrorBody),
    ))]
pub async fn post_preferences(State(state): State<AppState>, headers: HeaderMap, ApiPath(token): ApiPath<String>, body: Bytes) -> Response {
    let o = match owner_or_404(&state, &token).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    if !same_origin(&headers, &state.config.public_base_url) {
        return cross_site(&state);
    }
    match save_prefs(&state, &o, &body).await {
        Ok(()) => Redirect::to(&format!("/me/{token}?done=preferences#preferences")).into_response(),
        Err(ApiError::Invalid { field, message, .. }) => {
            let field = field.unwrap_or_default();
            tracing::info!(user_id = o.user_id, %field, %message, "own page preferences refused");
            let info = (message.clone(), field.clone());
            let error = FieldError { field, message };
            match page_view(&state, &o, &token, None, Some(error)).await {
                Ok(v) => with_info(
                    html(StatusCode::UNPROCESSABLE_ENTITY, "page", &v),
                    "invalid_value",
                    &info.0,
                    Some(info.1),
                ),
                Err(e) => page_error(&state, e),
            }
        }
        Err(e) => page_error(&state, e),
    }
}

/// Marks one of the person's notifications read; `303` back to the page. Another person's
/// notification is a 404, like one that does not exist.
#[utoipa::path(post, path = "/me/{token}/notifications/{id}/read", tag = "own page",
    params(("token" = String, Path, description = "the person's access token"), ("id" = i64, Path, description = "notifications.id")),
    responses(
        (status = 303, description = "Marked read: back to the page"),
        (status = 403, description = "Sent from another site (a page for browsers asking for text/html)", body = ErrorBody),
        (status = 404, description = "No page at this address, or not one of this person's notifications (a page for browsers asking for text/html)", body = ErrorBody),
    ))]
pub async fn mark_read(State(state): State<AppState>, headers: HeaderMap, ApiPath((token, id)): ApiPath<(String, i64)>) -> Response {
    let o = match owner_or_404(&state, &token).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    if !same_origin(&headers, &state.config.public_base_url) {
        return cross_site(&state);
    }
    let done = async {
        let mut conn = state.pool.acquire().await?;
        access::mark_read(&mut conn, o.user_id, id, state.clock.now()).await?;
        Ok::<_, ApiError>(())
    }
    .await;
    match done {
        Ok(()) => {
            tracing::info!(user_id = o.user_id, notification_id = id, "notification marked read");
            Redirect::to(&format!("/me/{token}?done=read#notification-{id}")).into_response()
        }
        Err(ApiError::NotFound(_)) => message(
            &state,
            StatusCode::NOT_FOUND,
            "Notification not found",
            "There is no such notification on your page.",
        ),
        Err(e) => page_error(&state, e),
    }
}

/// Switches one of the person's devices off (no more alerts to it); `303` back to the page.
#[utoipa::path(post, path = "/me/{token}/devices/{id}/remove", tag = "own page",
    params(("token" = String, Path, description = "the person's access token"), ("id" = i64, Path, description = "user_devices.id")),
    responses(
        (status = 303, description = "Removed: back to the page"),
        (status = 403, description = "Sent from another site (a page for browsers asking for text/html)", body = ErrorBody),
        (status = 404, description = "No page at this address, or not one of this person's devices (a page for browsers asking for text/html)", body = ErrorBody),
    ))]
pub async fn remove_device(State(state): State<AppState>, headers: HeaderMap, ApiPath((token, id)): ApiPath<(String, i64)>) -> Response {
    let o = match owner_or_404(&state, &token).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    if !same_origin(&headers, &state.config.public_base_url) {
        return cross_site(&state);
    }
    let done = async {
        let mut conn = state.pool.acquire().await?;
        people::remove_device(&mut conn, o.user_id, id).await?;
        Ok::<_, ApiError>(())
    }
    .await;
    match done {
        Ok(()) => {
            tracing::info!(user_id = o.user_id, device = id, "device removed by its owner");
            Redirect::to(&format!("/me/{token}?done=removed#devices")).into_response()
        }
        Err(ApiError::NotFound(_)) => message(
            &state,
            StatusCode::NOT_FOUND,
            "Device not found",
            "There is no such device on your page.",
        ),
        Err(e) => page_error(&state, e),
    }
}

/// `PushSubscription.toJSON()`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SubscriptionIn {
    /// The push service URL.
    pub endpoint: String,
    /// When the subscription ends, if the browser knows (ignored).
    #[serde(default, rename = "expirationTime")]
    pub expiration_time: Option<f64>,
    /// The subscription's keys.
    pub keys: SubscriptionKeys,
}

/// The keys of a subscription (base64url).
#[derive(Debug, Deserialize, ToSchema)]
pub struct SubscriptionKeys {
    /// Uncompressed P-256 public key.
    pub p256dh: String,
    /// 16-byte auth secret.
    pub auth: String,
}

/// Registers this browser's push subscription for the person, with the endpoint (SSRF, at most
/// 1024 bytes) and key checks of `POST /api/users/{id}/devices`. The device's name is
/// `browser-` and a hash of the endpoint, so posting the same subscription again renews it
/// (200). A person keeps at most 10 active devices (the oldest is switched off), and may
/// register 20 at once, then one a minute (429).
#[utoipa::path(post, path = "/me/{token}/devices", tag = "own page", request_body = SubscriptionIn,
    params(("token" = String, Path, description = "the person's access token")),
    responses(
        (status = 201, description = "Registered", body = DeviceOut),
        (status = 200, description = "The same subscription again: renewed", body = DeviceOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 403, description = "Sent from another site", body = ErrorBody),
        (status = 404, description = "No page at this address", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid endpoint (over 1024 bytes, not https, not public) or keys", body = ErrorBody),
        (status = 429, description = "Too many registrations from this page (a burst of 20, then one a minute)", body = ErrorBody),
    ))]
pub async fn add_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(token): ApiPath<String>,
    ApiJson(body): ApiJson<SubscriptionIn>,
) -> Result<(StatusCode, Json<DeviceOut>), ApiError> {
    let mut conn = state.pool.acquire().await?;
    let o = access::owner(&mut conn, &token)
        .await?
        .ok_or_else(|| ApiError::NotFound("no page at this address".into()))?;
    drop(conn);
    if !same_origin(&headers, &state.config.public_base_url) {
        tracing::warn!(user_id = o.user_id, "own page: a device from another site refused");
        return Err(forbidden());
    }
    if let Err(wait) = state.device_registrations.check(o.user_id) {
        tracing::warn!(user_id = o.user_id, "own page: too many device registrations");
        return Err(ApiError::SlowDown(
            "too many devices registered from this page".into(),
            crate::guard::retry_after_secs(wait),
        ));
    }
    check_endpoint(&body.endpoint, state.config.push_allow_private_endpoints).map_err(|e| rename_field(e, "endpoint"))?;
    let (p256dh, auth) = check_push_keys(&body.keys.p256dh, &body.keys.auth).map_err(|e| match e {
        ApiError::Invalid { code, field, message } => ApiError::Invalid {
            code,
            field: field.map(|f| format!("keys.{f}")),
            message,
        },
        other => other,
    })?;
    let hash = Sha256::digest(body.endpoint.as_bytes());
    let device_id = format!(
        "{}{}",
        access::PAGE_DEVICE_PREFIX,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash)[..16]
    );
    let nd = NewDevice {
        device_id,
        push_endpoint: body.endpoint,
        p256dh,
        auth,
    };
    let mut tx = state.pool.begin().await?;
    let (d, created) = people::register_device(&mut tx, o.user_id, &nd).await?;
    tx.commit().await?;
    tracing::info!(
        user_id = o.user_id,
        device = d.id,
        created,
        "push subscription registered from the own page"
    );
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((
        status,
        Json(DeviceOut {
            id: d.id,
            user_id: d.user_id,
            device_id: d.device_id,
            push_endpoint: d.push_endpoint,
            active: d.active,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }),
    ))
}

fn rename_field(e: ApiError, to: &str) -> ApiError {
    match e {
        ApiError::Invalid { code, message, .. } => ApiError::Invalid {
            code,
            field: Some(to.to_owned()),
            message,
        },
        other => other,
    }
}

/// 403 with the JSON error body (the API's error enum has no 403: only these routes refuse a
/// request for where it came from).
fn forbidden() -> ApiError {
    ApiError::Forbidden("this request did not come from this site's own page".into())
}

/// The VAPID public key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VapidKey {
    /// base64url (no padding) uncompressed P-256 public key: `applicationServerKey`.
    pub key: String,
}

/// The public key of `VAPID_PRIVATE_KEY`, as `pushManager.subscribe` wants it.
pub fn public_key(private_b64url: &str) -> Option<String> {
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let raw = enc.decode(private_b64url.trim().trim_end_matches('=')).ok()?;
    let secret = p256::SecretKey::from_slice(&raw).ok()?;
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
    Some(enc.encode(secret.public_key().to_encoded_point(false).as_bytes()))
}

/// The key browsers subscribe with (`applicationServerKey`); 404 when push is not configured.
#[utoipa::path(get, path = "/push/vapid-public-key", tag = "own page",
    responses(
        (status = 200, description = "The key", body = VapidKey),
        (status = 404, description = "Push is not configured (no VAPID_PRIVATE_KEY)", body = ErrorBody),
    ))]
pub async fn vapid_public_key(State(state): State<AppState>) -> Result<Json<VapidKey>, ApiError> {
    state
        .config
        .push
        .as_ref()
        .and_then(|p| public_key(&p.vapid_private_key))
        .map(|key| Json(VapidKey { key }))
        .ok_or_else(|| ApiError::NotFound("push is not configured on this server (VAPID_PRIVATE_KEY)".into()))
}

/// The service worker, for the root scope: shows each push (`title`, `body`, `tag`, `url`) and
/// opens its `url` (on this site) when the notification is clicked.
#[utoipa::path(get, path = "/sw.js", tag = "own page",
    responses((status = 200, description = "The script", content_type = "application/javascript", body = String)))]
pub async fn service_worker() -> Response {
    let mut res = (
        [
            (header::CONTENT_TYPE, SW_CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("service-worker-allowed"), "/"),
        ],
        include_str!("sw.js"),
    )
        .into_response();
    res.headers_mut()
        .insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    res
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut res = ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response();
    res.headers_mut()
        .insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    res
}

/// `GET /assets/me.css`.
pub async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", include_str!("me.css"))
}

/// `GET /assets/me.js`.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("me.js"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_compile_and_escape() {
        LazyLock::force(&TEMPLATES);
        for (name, text) in TEMPLATE_SOURCES {
            assert!(TEMPLATES.has_template(name));
            assert!(!text.contains("{{{"), "unescaped output in {name}");
        }
    }

    #[test]
    fn origins() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(header::HeaderName::from_static(k), HeaderValue::from_static(v));
            }
            m
        };
        let base = "https://school.example";
        assert!(same_origin(&h(&[]), base));
        assert!(same_origin(&h(&[("sec-fetch-site", "same-origin")]), base));
        assert!(!same_origin(&h(&[("sec-fetch-site", "cross-site")]), base));
        assert!(!same_origin(&h(&[("sec-fetch-site", "same-site")]), base));
        assert!(same_origin(&h(&[("origin", "https://school.example")]), base));
        assert!(same_origin(
            &h(&[("origin", "http://127.0.0.1:5000"), ("host", "127.0.0.1:5000")]),
            base
        ));
        assert!(!same_origin(
            &h(&[("origin", "https://evil.example"), ("host", "127.0.0.1:5000")]),
            base
        ));
        assert!(!same_origin(&h(&[("origin", "null")]), base));
    }

    #[test]
    fn vapid_public_key_is_65_bytes() {
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let key = public_key(&enc.encode([7u8; 32])).unwrap();
        let raw = enc.decode(key).unwrap();
        assert_eq!((raw.len(), raw[0]), (65, 4));
        assert_eq!(public_key("nope"), None);
    }
}
