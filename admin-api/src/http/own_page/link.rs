//! The personal link: given and rotated through the bearer-token API, resolved from a page's
//! path to its owner (or the 404 page), and the check that a write comes from this site.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use dashlight_core::{
    access::{self, Owner},
    kinds::Kind,
    notify::{self, NewNotification},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{message, page_error};
use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiPath, OptionalJson},
};

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

pub(super) fn not_found(state: &AppState) -> Response {
    message(
        state,
        StatusCode::NOT_FOUND,
        "Page not found",
        "There is no page at this address. Personal links are replaced when a new one is made: use the latest link the school sent you, or ask the school for a new one.",
    )
}

/// The owner of the token, or the 404 page.
pub(super) async fn owner_or_404(state: &AppState, token: &str) -> Result<Owner, Response> {
    let mut conn = state.pool.acquire().await.map_err(|e| page_error(state, e.into()))?;
    match access::owner(&mut conn, token).await {
        Ok(Some(o)) => Ok(o),
        Ok(None) => Err(not_found(state)),
        Err(e) => Err(page_error(state, e.into())),
    }
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

/// The owner of the token, when the write comes from this site: the 404 page for a token that
/// opens nothing, the 403 page for a write from another site ([`same_origin`]).
pub(super) async fn writer(state: &AppState, headers: &HeaderMap, token: &str) -> Result<Owner, Response> {
    let o = owner_or_404(state, token).await?;
    if !same_origin(headers, &state.config.public_base_url) {
        return Err(cross_site(state));
    }
    Ok(o)
}

pub(super) fn cross_site(state: &AppState) -> Response {
    tracing::warn!("own page: a write from another site refused");
    message(
        state,
        StatusCode::FORBIDDEN,
        "Not from this site",
        "This change did not come from your page, so it was not made. Open your page and try again there.",
    )
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn writes_from_other_sites_are_told_apart() {
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
}
