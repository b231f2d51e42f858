//! The bearer-token check of every `/api` route: `Authorization: Bearer <ADMIN_API_TOKEN>`,
//! compared in constant time. A missing, malformed or wrong header is a 401 with the JSON error
//! body. The token is never logged, and with no token configured every request is refused.
//!
//! The dashboard's session cookie (see [`crate::dashboard::session`]) is accepted instead of the
//! header, so the dashboard's buttons go through the very same routes. For anything but
//! `GET`/`HEAD` it counts only together with [`CSRF_HEADER`]`: dashlight`, a header a
//! cross-site form cannot send (the cookie's `SameSite=Strict` is the first line of defence).
//!
//! Wrong credentials are counted per client address ([`crate::guard`]): over the limit, the
//! address's wrong credentials are answered 429 with `Retry-After`. The right credential is
//! checked first and always let through, so nobody can lock the operators out. Each failure is
//! logged with the client address, never with what was presented.

use axum::{
    extract::{Request, State},
    http::{HeaderMap, Method, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use subtle::ConstantTimeEq;

use crate::{
    AppState,
    error::ApiError,
    guard::{client_addr, retry_after_secs},
};

/// The token of an `Authorization` header value, if it uses the Bearer scheme.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// True when `given` is the configured token.
pub fn token_matches(expected: Option<&str>, given: Option<&str>) -> bool {
    match (expected.map(str::trim).filter(|t| !t.is_empty()), given) {
        (Some(expected), Some(given)) => bool::from(expected.as_bytes().ct_eq(given.as_bytes())),
        _ => false,
    }
}

/// The header that must come with a cookie-authenticated `/api` request that changes anything.
pub const CSRF_HEADER: &str = "x-requested-with";

/// True when the request carries an active (not signed out) dashboard session cookie and,
/// unless it only reads, `X-Requested-With: dashlight`.
async fn session_allows(state: &AppState, method: &Method, headers: &HeaderMap) -> bool {
    let reads = matches!(*method, Method::GET | Method::HEAD);
    let marked = headers
        .get(CSRF_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"dashlight"));
    (reads || marked)
        && crate::dashboard::session::active(&state.pool, state.config.admin_api_token.as_deref(), headers, state.clock.now()).await
}

/// True when the request presents any credential (an `Authorization` header or a session
/// cookie): only those can be guesses, and only those count as failures.
fn presents_credential(req: &Request) -> bool {
    req.headers().contains_key(header::AUTHORIZATION)
        || crate::dashboard::session::cookies(req.headers(), crate::dashboard::session::COOKIE_NAME)
            .next()
            .is_some()
}

/// Middleware: lets the request through only with the right bearer token (or a dashboard
/// session, see the module's documentation); counts wrong ones per client address.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let client = client_addr(req.extensions(), req.headers(), &state.config.http_server.trusted_proxies).0;
    let presented = presents_credential(&req);
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    let ok = token_matches(state.config.admin_api_token.as_deref(), given) || {
        let (method, headers) = (req.method().clone(), req.headers().clone());
        session_allows(&state, &method, &headers).await
    };
    if ok {
        return next.run(req).await;
    }
    if !presented {
        return ApiError::Unauthorized.into_response();
    }
    if let Some(wait) = state.auth_failures.locked_for(client) {
        return ApiError::TooManyRequests(retry_after_secs(wait)).into_response();
    }
    let path = crate::telemetry::loggable_path(req.uri().path()).into_owned();
    match state.auth_failures.failed(client) {
        None => {
            tracing::warn!(%client, %path, "authentication failed: wrong bearer token or session");
            ApiError::Unauthorized.into_response()
        }
        Some(wait) => {
            tracing::warn!(%client, %path, retry_after_s = retry_after_secs(wait), "authentication failed: too many failures from this address, answering 429");
            ApiError::TooManyRequests(retry_after_secs(wait)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_and_compared_whole() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("abc"), None);
        assert!(token_matches(Some("abc"), Some("abc")));
        assert!(!token_matches(Some("abc"), Some("abd")));
        assert!(!token_matches(Some("abc"), Some("ab")));
        assert!(!token_matches(Some("abc"), None));
        assert!(!token_matches(None, Some("")));
        assert!(!token_matches(Some(""), Some("")));
    }
}
