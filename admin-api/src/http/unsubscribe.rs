//! The unsubscribe link of `List-Unsubscribe` (docs/hearing-back.md):
//! `PUBLIC_BASE_URL/u/{token}`, the token signed ([`dashlight_core::signing`]) and naming one
//! user and one kind. No bearer token: the signed address is the secret.
//!
//! - `GET /u/{token}` shows a small page saying which emails will stop, with a button. It
//!   changes **nothing**: mail scanners and link previews follow GET links.
//! - `POST /u/{token}` (the page's button, or an RFC 8058 one-click POST whose body is
//!   `List-Unsubscribe=One-Click`) turns that kind off on email for that user
//!   (`dashlight_core::people::set_email_opt_out`, source `unsubscribe_link`) and answers 200
//!   with a small page. Doing it twice is harmless.
//!
//! A token that does not verify, or names a user who no longer exists, is a 404: a page for
//! browsers (an `Accept` naming `text/html`), the usual JSON error body for anyone else. The pages
//! are [`crate::page`]'s, like the offer page: no script ([`crate::page::NO_SCRIPT`]), every
//! value escaped by handlebars, a strict Content-Security-Policy, no caching, no referrer.

use std::sync::LazyLock;

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use dashlight_core::{
    DomainError,
    kinds::Kind,
    people::{self, OptOutSource},
};
use serde::Serialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::ApiPath,
    page::{self, Pages},
};

/// The open routes of the unsubscribe link.
pub(crate) fn open_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(unsubscribe_page, unsubscribe))
}

/// The page: no script at all ([`page::NO_SCRIPT`]).
static PAGES: LazyLock<Pages> = LazyLock::new(|| {
    Pages::new(
        "unsubscribe page",
        page::NO_SCRIPT,
        &[("page", include_str!("../../templates/unsubscribe/page.html.hbs"))],
    )
});

/// A kind's emails in words, for people.
pub fn kind_in_words(kind: Kind) -> String {
    match kind {
        Kind::LessonReminder => "lesson reminders".into(),
        Kind::BookingAlert => "alerts about lessons booked, moved or cancelled with you".into(),
        Kind::RecurringConflict => "notices about weekly lessons that could not be booked".into(),
        Kind::DailyAgenda => "your daily agenda".into(),
        Kind::LessonReport => "lesson reports".into(),
        Kind::NewMessage => "new message notices".into(),
        Kind::TestReminder => "driving test reminders".into(),
        Kind::PackageLow => "notices that your lesson package is running low".into(),
        Kind::CrmFollowUp => "follow-up reminders".into(),
        Kind::SlotOffer => "offers of lessons that have come free".into(),
        Kind::SlotTaken => "notices that an offered lesson has gone".into(),
        #[allow(unreachable_patterns)]
        other => format!("{} emails", other.as_str().replace('_', " ")),
    }
}

#[derive(Serialize)]
struct PageView {
    school: String,
    title: String,
    message: String,
    state: &'static str,
    action: Option<String>,
}

fn page(status: StatusCode, view: PageView) -> Response {
    PAGES.render(status, "page", &view)
}

fn not_found(state: &AppState, headers: &HeaderMap) -> Response {
    if !page::wants_html(headers) {
        return ApiError::NotFound("no unsubscribe link at this address".into()).into_response();
    }
    page(
        StatusCode::NOT_FOUND,
        PageView {
            school: state.config.school_name.clone(),
            title: "Link not found".into(),
            message: "There is nothing to unsubscribe from at this address. Check you opened the whole link from your email.".into(),
            state: "gone",
            action: None,
        },
    )
}

/// The user and kind of a token, when it verifies and the user exists.
async fn target(state: &AppState, token: &str) -> Result<Option<(i64, Kind, bool)>, ApiError> {
    let Some((user_id, kind)) = state.signing.get(&state.pool).await?.unsubscribe_target(token) else {
        return Ok(None);
    };
    let mut conn = state.pool.acquire().await?;
    let exists: bool = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM users WHERE id = $1) AS "exists!""#, user_id)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(None);
    }
    let off = people::email_opt_outs(&mut conn, user_id).await?.contains(&kind);
    Ok(Some((user_id, kind, off)))
}

/// The confirmation page: which emails stop, and a button. Changes nothing.
#[utoipa::path(get, path = "/u/{token}", tag = "unsubscribe",
    params(("token" = String, Path, description = "the signed token of the email's List-Unsubscribe link")),
    responses(
        (status = 200, description = "An HTML page naming the emails that will stop, with a button that POSTs to the same address", content_type = "text/html", body = String),
        (status = 404, description = "No such link: an HTML page for browsers, else the JSON error body", body = ErrorBody),
    ))]
pub async fn unsubscribe_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(token): ApiPath<String>,
) -> Result<Response, ApiError> {
    let Some((_, kind, off)) = target(&state, &token).await? else {
        return Ok(not_found(&state, &headers));
    };
    let words = kind_in_words(kind);
    let view = if off {
        PageView {
            school: state.config.school_name.clone(),
            title: "You are unsubscribed".into(),
            message: format!("You no longer get {words} by email."),
            state: "done",
            action: None,
        }
    } else {
        PageView {
            school: state.config.school_name.clone(),
            title: "Unsubscribe?".into(),
            message: format!("Stop getting {words} by email? Other messages, and {words} on other channels you have turned on, carry on."),
            state: "ask",
            action: Some(format!("/u/{token}")),
        }
    };
    Ok(page(StatusCode::OK, view))
}

/// Turns the link's kind off on email for its user: the page's button or an RFC 8058 one-click
/// POST (`List-Unsubscribe=One-Click`). Idempotent.
#[utoipa::path(post, path = "/u/{token}", tag = "unsubscribe",
    params(("token" = String, Path, description = "the signed token of the email's List-Unsubscribe link")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "`List-Unsubscribe=One-Click` (RFC 8058) or the confirmation page's form; the body is not needed"),
    responses(
        (status = 200, description = "Unsubscribed (an HTML page)", content_type = "text/html", body = String),
        (status = 404, description = "No such link: an HTML page for browsers, else the JSON error body", body = ErrorBody),
    ))]
pub async fn unsubscribe(State(state): State<AppState>, headers: HeaderMap, ApiPath(token): ApiPath<String>) -> Result<Response, ApiError> {
    let Some((user_id, kind)) = state.signing.get(&state.pool).await?.unsubscribe_target(&token) else {
        return Ok(not_found(&state, &headers));
    };
    let mut tx = state.pool.begin().await?;
    let changed = match people::set_email_opt_out(&mut tx, user_id, kind, true, OptOutSource::UnsubscribeLink).await {
        Ok(changed) => changed,
        Err(DomainError::NotFound(_) | DomainError::Invalid { .. }) => return Ok(not_found(&state, &headers)),
        Err(e) => return Err(e.into()),
    };
    tx.commit().await?;
    if changed {
        tracing::info!(user_id, kind = kind.as_str(), "unsubscribed by link");
        metrics::counter!("dashlight_email_unsubscribes_total", "kind" => kind.as_str(), "source" => "link").increment(1);
    }
    Ok(page(
        StatusCode::OK,
        PageView {
            school: state.config.school_name.clone(),
            title: "You are unsubscribed".into(),
            message: format!("You will no longer get {} by email.", kind_in_words(kind)),
            state: "done",
            action: None,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_compiles_and_escapes_what_it_shows() {
        PAGES.assert_templates_escape();
        let view = PageView {
            school: "S".into(),
            title: "Unsubscribe?".into(),
            message: "Stop getting <b>lesson reminders</b>?".into(),
            state: "ask",
            action: Some("/u/abc".into()),
        };
        let out = PAGES.render_to_string("page", &view).unwrap();
        assert!(
            out.contains("&lt;b&gt;lesson reminders&lt;/b&gt;") && out.contains("/u/abc"),
            "{out}"
        );
    }
}
