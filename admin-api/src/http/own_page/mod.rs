//! A page of one's own (docs/own-page.md): every person's page at `/me/{token}`, for students and
//! instructors on their phones, and what it needs.
//!
//! - [`link`]: the personal link: `POST /api/users/{id}/access-link` (`{send?}` → `{url}`;
//!   `send` emails it as kind `access_link`) and `POST /api/users/{id}/access-link/rotate`
//!   (bearer token); a path's token resolved to its owner (or the 404 page), and writes from
//!   another site told apart ([`same_origin`]).
//! - [`view`]: `GET /me/{token}`: upcoming lessons (times in the person's zone, instructor or
//!   student, pick-up, and a cancel request by email to the school for lessons at least
//!   [`dashlight_core::access::CANCEL_NOTICE_HOURS`] away), the notification feed (newest first,
//!   unread marked, a Mark read button each), the preferences form (channels, quiet hours,
//!   per-kind email opt-outs), the calendar feed's address, the **Enable alerts on this device**
//!   button and the person's devices with Remove buttons.
//! - [`forms`]: `POST /me/{token}/preferences` and `/notifications/{id}/read`: HTML form posts
//!   answered `303 See Other` back to the page (422 with the page and the field at fault).
//! - [`push`]: `POST /me/{token}/devices` (JSON, `PushSubscription.toJSON()`, with the endpoint
//!   and key checks of `POST /api/users/{id}/devices`), `POST /me/{token}/devices/{id}/remove`
//!   (a form post), `GET /push/vapid-public-key` and `GET /sw.js`, the service worker (root
//!   scope).
//! - [`confirm`]: confirming a lesson: the reminder email's link (`/confirm/{token}`), the
//!   service worker's Confirm action and the page's own Confirm button on each upcoming lesson
//!   the student has not confirmed yet.
//! - Here: the routes, the message pages every part answers with ([`PAGES`]), the stylesheet
//!   and the script.
//!
//! The token in the path is the capability: a wrong, malformed or rotated one is a 404 page and
//! no route needs the admin token. Writes are also refused (403) from another site: a browser's
//! `Sec-Fetch-Site` must be `same-origin` (or `none`), and an `Origin`, when sent, must be this
//! server's ([`same_origin`]). Pages are handlebars templates of [`crate::page`] (every value
//! escaped, no triple-stash) served with a strict Content-Security-Policy ([`CSP`]); error
//! pages are the API's JSON error body for clients that do not ask for a page
//! ([`crate::page::negotiate`]). The one script and the stylesheet are files of this server
//! ([`ASSET_ROUTES`]); the page is readable and its forms work without JavaScript, which only
//! the push button needs.

pub mod confirm;
pub mod forms;
pub mod link;
pub mod push;
pub mod view;

use std::sync::LazyLock;

use axum::{Router, http::StatusCode, response::Response, routing::get};
use serde::Serialize;
use utoipa_axum::{router::OpenApiRouter, routes};

pub use link::same_origin;
pub use push::public_key;

use crate::{
    AppState,
    error::ApiError,
    page::{self, Pages, Policy, asset, error_code, with_error},
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
        .routes(routes!(link::access_link))
        .routes(routes!(link::rotate_access_link))
}

/// The open routes: the page, its writes, the VAPID key and the service worker.
pub(crate) fn open_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(view::page))
        .routes(routes!(forms::post_preferences))
        .routes(routes!(push::add_device))
        .routes(routes!(push::remove_device))
        .routes(routes!(forms::mark_read))
        .routes(routes!(push::vapid_public_key))
        .routes(routes!(push::service_worker))
        .routes(routes!(confirm::confirm_page, confirm::confirm_post))
        .routes(routes!(confirm::confirm_push))
        .routes(routes!(confirm::confirm_own))
        .route_layer(axum::middleware::from_fn(page::negotiate))
}

/// The page's stylesheet and script (not in the OpenAPI document).
pub(crate) fn asset_routes() -> Router<AppState> {
    Router::new()
        .route(ASSET_ROUTES[0], get(stylesheet))
        .route(ASSET_ROUTES[1], get(script))
}

/// The own page's templates: the page, a message page, a lesson's confirmation page. The token
/// is in the address: the referrer never takes it to another site.
pub static PAGES: LazyLock<Pages> = LazyLock::new(|| {
    Pages::new(
        "own page",
        Policy {
            csp: CSP,
            referrer: "same-origin",
        },
        &[
            ("page", include_str!("../../../templates/me/page.html.hbs")),
            ("message", include_str!("../../../templates/me/message.html.hbs")),
            ("confirm", include_str!("../../../templates/me/confirm.html.hbs")),
        ],
    )
});

fn html(status: StatusCode, name: &str, data: &impl Serialize) -> Response {
    PAGES.render(status, name, data)
}

#[derive(Serialize)]
struct MessageView {
    school: String,
    title: String,
    message: String,
}

/// A page with a title and a message; an error page (status 4xx, 5xx) says the same in JSON to
/// clients that do not want a page.
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
    with_error(res, error_code(status), text, None)
}

fn page_error(state: &AppState, e: ApiError) -> Response {
    let (status, _) = e.status_and_code();
    if status.is_server_error() {
        tracing::error!(error = %e, "own page failed");
    }
    message(state, status, "Something went wrong", &e.body().message)
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
        PAGES.assert_templates_escape();
    }
}
