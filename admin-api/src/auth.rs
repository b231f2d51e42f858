//! The bearer-token check of every `/api` route: `Authorization: Bearer <ADMIN_API_TOKEN>`,
//! compared in constant time. A missing, malformed or wrong header is a 401 with the JSON error
//! body. The token is never logged, and with no token configured every request is refused.
//!
//! The dashboard's session cookie (see [`crate::dashboard::session`]) is accepted instead of the
//! header, so the dashboard's buttons go through the very same routes. For anything but
//! `GET`/`HEAD` it counts only together with [`CSRF_HEADER`]`: dashlight`, a header a
//! cross-site form cannot send (the cookie's `SameSite=Strict` is the first line of defence).

use axum::{
    extract::{Request, State},
    http::{Method, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use subtle::ConstantTimeEq;

use crate::{AppState, error::ApiError};

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

/// True when the request carries the dashboard's session cookie and, unless it only reads,
/// `X-Requested-With: dashlight`.
fn session_allows(state: &AppState, req: &Request) -> bool {
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    let marked = req
        .headers()
        .get(CSRF_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"dashlight"));
    (reads || marked) && crate::dashboard::session::from_headers(state.config.admin_api_token.as_deref(), req.headers(), state.clock.now())
}

/// Middleware: lets the request through only with the right bearer token (or a dashboard
/// session, see the module's documentation).
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    if token_matches(state.config.admin_api_token.as_deref(), given) || session_allows(&state, &req) {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
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
