//! The operators' dashboard: server-rendered HTML pages at `/`, for people rather than scripts.
//!
//! - `/sign-in`, `/sign-out`: the admin token in a form sets the [`session`] cookie (wrong
//!   tokens count towards the per-address limit of [`crate::guard`]); signing out clears it and
//!   revokes it on the server. Every other page sends a browser without one to `/sign-in`.
//! - `/` (Queues): counts per queue and state, refreshing itself, and a chart of jobs done and
//!   failed per minute over the last hour ([`chart`]).
//! - `/deliveries`: failed and dead first, filtered by status, channel and kind, with Retry
//!   buttons.
//! - `/timeline`: a booking found by id or by student, with its notifications and every
//!   attempt.
//! - `/confirmations`: the call list of unconfirmed lessons and a chart of what the reminders
//!   achieve (confirmed lessons and no-shows per day and first reminder channel) ([`confirmations`]).
//! - `/outbox`: the latest files of `OUTBOX_DIR`, emails rendered ([`outbox`]); only shown when
//!   a channel writes there.
//! - `/assets/*`: the stylesheet and the one small script, compiled into the binary.
//!
//! Reading goes through the JSON API's own handlers and queries ([`pages`]); changing goes
//! through the JSON API itself: the Retry buttons `fetch()` `POST /api/deliveries/...` with the
//! session cookie and `X-Requested-With: dashlight` (see [`crate::auth`]). The pages work
//! without JavaScript for reading; only the buttons need it. Every page is rendered by
//! handlebars from `admin-api/templates/dashboard/` through [`crate::page`], which escapes every
//! value (no template uses the triple-stash), and is served with a strict
//! Content-Security-Policy (every dashboard response carries the security headers).

pub mod chart;
pub mod confirmations;
pub mod outbox;
pub mod pages;
pub mod session;
pub mod view;

use std::sync::LazyLock;

use axum::{
    Form, Router,
    extract::{DefaultBodyLimit, FromRequestParts, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};

use crate::{
    AppState,
    auth::token_matches,
    error::ApiError,
    guard::ClientAddr,
    page::{Pages, Policy, asset},
};

/// Largest form body the dashboard accepts.
const FORM_LIMIT: usize = 16 * 1024;

/// Served with every page. Scripts only from this server; inline styles allowed for the emails
/// previewed in the outbox (the sandboxed frame inherits this policy, so their images and scripts
/// stay blocked).
const POLICY: Policy = Policy {
    csp: "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    referrer: "same-origin",
};

/// The dashboard's routes (mounted by [`crate::router`] next to the API, outside `ROUTES`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::queues))
        .route("/deliveries", get(pages::deliveries))
        .route("/timeline", get(pages::timeline))
        .route("/confirmations", get(confirmations::page))
        .route("/outbox", get(outbox::page))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-out", axum::routing::post(sign_out))
        .route("/assets/dashboard.css", get(stylesheet))
        .route("/assets/dashboard.js", get(script))
        .layer(DefaultBodyLimit::max(FORM_LIMIT))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Middleware: the security and caching headers of every dashboard response (redirects and
/// assets too).
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    POLICY.secure(res.headers_mut());
    res
}

/// The pages; `layout` is also the partial every other page is drawn in.
static PAGES: LazyLock<Pages> = LazyLock::new(|| {
    Pages::new(
        "dashboard",
        POLICY,
        &[
            ("layout", include_str!("../../templates/dashboard/layout.html.hbs")),
            ("sign_in", include_str!("../../templates/dashboard/sign_in.html.hbs")),
            ("queues", include_str!("../../templates/dashboard/queues.html.hbs")),
            ("deliveries", include_str!("../../templates/dashboard/deliveries.html.hbs")),
            ("timeline", include_str!("../../templates/dashboard/timeline.html.hbs")),
            ("outbox", include_str!("../../templates/dashboard/outbox.html.hbs")),
            ("error", include_str!("../../templates/dashboard/error.html.hbs")),
            ("confirmations", include_str!("../../templates/dashboard/confirmations.html.hbs")),
        ],
    )
    .with_partial("layout")
});

/// What the layout of every page shows.
#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    /// The page's title.
    pub title: String,
    /// Which navigation entry is current: `queues`, `deliveries`, `timeline`, `confirmations`,
    /// `outbox`.
    pub active: &'static str,
    /// Shows the navigation and the sign-out button.
    pub signed_in: bool,
    /// Shows the Outbox entry.
    pub outbox: bool,
    /// The school's name.
    pub school: String,
    /// The time zone times are shown in.
    pub timezone: String,
    /// Seconds after which the page reloads itself.
    pub refresh: Option<u32>,
}

impl Layout {
    /// The layout of a signed-in page.
    pub fn new(state: &AppState, title: impl Into<String>, active: &'static str) -> Layout {
        Layout {
            title: title.into(),
            active,
            signed_in: true,
            outbox: outbox::enabled(&state.config),
            school: state.config.school_name.clone(),
            timezone: state.config.school_timezone.name().to_owned(),
            refresh: None,
        }
    }
}

/// Renders the template `name` with `{layout, page}` as its data.
pub fn render(status: StatusCode, name: &str, layout: &Layout, page: &impl Serialize) -> Response {
    PAGES.render(status, name, &serde_json::json!({ "layout": layout, "page": page }))
}

/// An error page: the status and message of an API error, in the layout.
pub fn error_page(layout: Layout, e: ApiError) -> Response {
    let (status, _) = e.status_and_code();
    if status.is_server_error() {
        tracing::error!(error = %e, "dashboard page failed");
    }
    #[derive(Serialize)]
    struct Body {
        status: u16,
        message: String,
    }
    let body = Body {
        status: status.as_u16(),
        message: e.body().message,
    };
    render(status, "error", &layout, &body)
}

/// Proof that the request carries a valid session; a browser without one is sent to
/// `/sign-in`, which brings it back afterwards.
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if session::active(
            &state.pool,
            state.config.admin_api_token.as_deref(),
            &parts.headers,
            state.clock.now(),
        )
        .await
        {
            return Ok(Operator);
        }
        let here = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let next: String = form_urlencoded::byte_serialize(here.as_bytes()).collect();
        Err(Redirect::to(&format!("/sign-in?next={next}")).into_response())
    }
}

/// Where to go after signing in: a path on this server, `/` otherwise (never another site).
///
/// Accepted only as a path-absolute relative reference: it starts with one `/` (not `//`),
/// and neither it nor the percent-decoded form of its path holds a backslash, a control
/// character or whitespace (browsers drop tabs and newlines from URLs, so `/\t/evil.example` is
/// `//evil.example` to them). Resolved against this server, it must stay on this server; the
/// normalised path and query are what is used.
fn safe_next(next: Option<&str>) -> String {
    fn plain(s: &str) -> bool {
        s.starts_with('/') && !s.starts_with("//") && !s.chars().any(|c| c == '\\' || c.is_control() || c.is_whitespace())
    }
    let Some(n) = next else { return "/".to_owned() };
    // The path decides where a browser goes; an encoded space in the query is harmless.
    let path = n.split(['?', '#']).next().unwrap_or_default();
    if !plain(n) || !percent_decode(path).as_deref().is_some_and(plain) {
        return "/".to_owned();
    }
    const BASE: &str = "http://dashlight.invalid/";
    let Ok(base) = url::Url::parse(BASE) else { return "/".to_owned() };
    match base.join(n) {
        Ok(u) if u.origin() == base.origin() && !u.path().starts_with("/sign-") && !u.path().starts_with("//") => {
            let mut out = u.path().to_owned();
            if let Some(q) = u.query() {
                out.push('?');
                out.push_str(q);
            }
            out
        }
        _ => "/".to_owned(),
    }
}

/// `s` with every `%XX` decoded (repeatedly, so `%252F` is seen as `/` too); `None` when the
/// bytes are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut cur = s.to_owned();
    for _ in 0..4 {
        let next: Vec<u8> = percent_decode_once(cur.as_bytes());
        let next = String::from_utf8(next).ok()?;
        if next == cur {
            return Some(cur);
        }
        cur = next;
    }
    Some(cur)
}

fn percent_decode_once(b: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// `?next=` of the sign-in page.
#[derive(Debug, Default, Deserialize)]
pub struct SignInQuery {
    /// Where to go afterwards.
    pub next: Option<String>,
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub struct SignInForm {
    /// The admin token.
    #[serde(default)]
    pub token: String,
    /// Where to go afterwards.
    pub next: Option<String>,
}

#[derive(Serialize)]
struct SignInPage {
    next: String,
    error: Option<&'static str>,
}

fn sign_in_layout(state: &AppState) -> Layout {
    Layout {
        signed_in: false,
        ..Layout::new(state, "Sign in", "")
    }
}

/// `GET /sign-in`: the form (or straight on, when already signed in).
pub async fn sign_in_page(State(state): State<AppState>, headers: HeaderMap, Query(q): Query<SignInQuery>) -> Response {
    let next = safe_next(q.next.as_deref());
    if session::active(&state.pool, state.config.admin_api_token.as_deref(), &headers, state.clock.now()).await {
        return Redirect::to(&next).into_response();
    }
    render(
        StatusCode::OK,
        "sign_in",
        &sign_in_layout(&state),
        &SignInPage { next, error: None },
    )
}

/// `POST /sign-in`: the right token sets the session cookie (always: the brake never refuses
/// it); a wrong one shows the form again with an error (401) and nothing else. Too many wrong
/// ones from one address: 429 with `Retry-After`.
pub async fn sign_in(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    let token = state.config.admin_api_token.as_deref();
    let given = form.token.trim();
    // The right token is never refused by the brake; wrong ones from a locked-out address are.
    let session = if token_matches(token, Some(given)) {
        session::issue(token, state.clock.now())
    } else {
        if let Some(wait) = state.auth_failures.locked_for(client) {
            return too_many_sign_ins(&state, next, wait);
        }
        None
    };
    match session {
        Some(value) => {
            tracing::info!("dashboard sign-in");
            let mut res = Redirect::to(&next).into_response();
            res.headers_mut().insert(header::SET_COOKIE, session::set_cookie(&value, &headers));
            res
        }
        None => {
            if let Some(wait) = state.auth_failures.failed(client) {
                tracing::warn!(%client, "dashboard sign-in with a wrong token: too many failures from this address, answering 429");
                return too_many_sign_ins(&state, next, wait);
            }
            tracing::warn!(%client, "dashboard sign-in with a wrong token");
            let page = SignInPage {
                next,
                error: Some("That token is not right. Use the ADMIN_API_TOKEN this server was started with."),
            };
            let mut res = render(StatusCode::UNAUTHORIZED, "sign_in", &sign_in_layout(&state), &page);
            res.headers_mut().insert(header::SET_COOKIE, session::clear_cookie(&headers));
            res
        }
    }
}

/// The sign-in form again, with 429 and `Retry-After`.
fn too_many_sign_ins(state: &AppState, next: String, wait: std::time::Duration) -> Response {
    let page = SignInPage {
        next,
        error: Some("Too many wrong tokens from this address. Wait a minute, then try again."),
    };
    let mut res = render(StatusCode::TOO_MANY_REQUESTS, "sign_in", &sign_in_layout(state), &page);
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(crate::guard::retry_after_secs(wait)));
    res
}

/// `POST /sign-out`: revokes the session on the server, clears the cookie and shows the
/// sign-in page.
pub async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = session::revoke(&state.pool, state.config.admin_api_token.as_deref(), &headers, state.clock.now()).await {
        tracing::error!(error = %e, "cannot revoke the dashboard session");
        return error_page(sign_in_layout(&state), e.into());
    }
    tracing::info!("dashboard sign-out");
    let mut res = Redirect::to("/sign-in").into_response();
    res.headers_mut().insert(header::SET_COOKIE, session::clear_cookie(&headers));
    res
}

/// `GET /assets/dashboard.css`.
pub async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/dashboard.css"))
}

/// `GET /assets/dashboard.js`.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("assets/dashboard.js"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_compile_and_none_uses_the_triple_stash() {
        PAGES.assert_templates_escape();
    }

    #[test]
    fn next_stays_on_this_server() {
        assert_eq!(safe_next(Some("/deliveries?status=failed")), "/deliveries?status=failed");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(Some("/sign-out")), "/");
        assert_eq!(safe_next(None), "/");
        // A tab (raw or encoded) between the slashes is dropped by browsers.
        for evil in [
            "/%09/evil.example",
            "/\t/evil.example",
            "/%0a/evil.example",
            "/%2F/evil.example",
            "/%2f%2fevil.example",
            "/%5Cevil.example",
            "/%252F/evil.example",
            "/ /evil.example",
            "/%E2%80%A8/x",
            "/\u{85}/evil.example",
            "http:/evil.example",
        ] {
            assert_eq!(safe_next(Some(evil)), "/", "{evil:?}");
        }
        assert_eq!(safe_next(Some("/timeline?booking=5&x=%20y")), "/timeline?booking=5&x=%20y");
        assert_eq!(safe_next(Some("/a/../deliveries")), "/deliveries");
    }
}
