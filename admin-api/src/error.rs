//! The API's one error type, [`ApiError`], and the one place it becomes an HTTP status and the
//! JSON body `{"error": "<code>", "message": "<human text>", "field": "<optional>"}`. Domain
//! errors and database errors are classified here; handlers only use `?`. Also the
//! [`json_errors`] middleware, which gives the same body to errors produced outside the
//! handlers (unknown routes, wrong methods, the body-size limit).

use axum::{
    Json,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use dashlight_core::DomainError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `not_found`, `conflict`, `missing_field`.
    #[schema(example = "invalid_value")]
    pub error: String,
    /// What went wrong, for people.
    #[schema(example = "timezone: expected an IANA time zone such as Europe/London")]
    pub message: String,
    /// The offending request field (a path such as `student.current_instructor_id` or
    /// `[2].end_time`), when one is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Everything a request can fail with; each variant documents its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `malformed_json`: the body is not JSON.
    #[error("{0}")]
    MalformedJson(String),
    /// 400 `bad_request`: the request cannot be read for another reason.
    #[error("{0}")]
    BadRequest(String),
    /// 401 `unauthorized`: no or wrong bearer token.
    #[error("a valid `Authorization: Bearer <token>` header is required")]
    Unauthorized,
    /// 403 `forbidden`: a hook's caller did not authenticate (wrong or missing credential), or
    /// a write to a person's own page came from another site.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `not_found`: no such id (or a malformed one) or no such route.
    #[error("{0}")]
    NotFound(String),
    /// 405 `method_not_allowed`.
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    /// 409 `conflict`: the write contradicts the current state.
    #[error("{0}")]
    Conflict(String),
    /// 413 `payload_too_large`: the body exceeds [`crate::BODY_LIMIT`].
    #[error("the request body is larger than 1 MiB")]
    PayloadTooLarge,
    /// 415 `unsupported_media_type`: a body that is not `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: a value is missing, of the wrong type or not acceptable. `code` is
    /// `missing_field`, `invalid_type`, `unknown_field` or `invalid_value`.
    #[error("{message}")]
    Invalid {
        /// The error code.
        code: &'static str,
        /// The offending field.
        field: Option<String>,
        /// What is expected.
        message: String,
    },
    /// 429 `too_many_requests`: too many wrong tokens from this client address; `Retry-After`
    /// says when to try again (seconds).
    #[error("too many failed authentications from this address; try again in {0} s")]
    TooManyRequests(u64),
    /// 429 `too_many_requests`: too many requests of one kind (the message says which);
    /// `Retry-After` says when to try again (seconds).
    #[error("{0}; try again in {1} s")]
    SlowDown(String, u64),
    /// 503 `unavailable`: the database cannot be reached (or is not ready).
    #[error("{0}")]
    Unavailable(String),
    /// 500 `internal`: a bug. Logged; the client sees no details.
    #[error("internal error: {0:#}")]
    Internal(anyhow::Error),
}

impl ApiError {
    /// A 422 `invalid_value` for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            code: "invalid_value",
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// The status and the code of the body: the one table of this API.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::Invalid { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ApiError::TooManyRequests(_) | ApiError::SlowDown(..) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The body of this error.
    pub fn body(&self) -> ErrorBody {
        let (_, code) = self.status_and_code();
        let message = match self {
            ApiError::Internal(_) => "an internal error occurred; it has been logged".to_owned(),
            other => other.to_string(),
        };
        let field = match self {
            ApiError::Invalid { field, .. } => field.clone(),
            _ => None,
        };
        ErrorBody {
            error: code.to_owned(),
            message,
            field,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        match &self {
            ApiError::Internal(e) => tracing::error!(error = format!("{e:#}"), "request failed"),
            ApiError::Unavailable(m) => tracing::warn!(error = %m, "database unavailable"),
            _ => {}
        }
        let mut res = (status, Json(self.body())).into_response();
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::TooManyRequests(secs) | ApiError::SlowDown(_, secs) = &self {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*secs));
        }
        res
    }
}

/// True for errors that mean the database is unreachable or refusing connections.
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // Connection exceptions, shutdowns, "too many connections", "database is not
            // currently accepting connections" (55000), "the database system is starting up".
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300" | "55000")
        }),
        _ => false,
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            ApiError::Unavailable(format!("the database is unavailable: {e}"))
        } else {
            ApiError::Internal(anyhow::Error::new(e).context("database error"))
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            DomainError::Conflict(m) => ApiError::Conflict(m),
            DomainError::Invalid { field, message } => ApiError::Invalid {
                code: "invalid_value",
                field: Some(field),
                message: message.clone(),
            },
            DomainError::Db(e) => e.into(),
        }
    }
}

/// Gives errors produced outside the handlers (axum's 404 and 405, tower-http's 413, ...) the
/// JSON error body, so no client ever sees a plain-text rejection.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    // Pages made for people (the offer link's) keep their HTML.
    let is_page = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/html"));
    if is_json || is_page {
        return res;
    }
    let err = match status {
        StatusCode::NOT_FOUND => ApiError::NotFound("no such route".into()),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNAUTHORIZED => ApiError::Unauthorized,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType("expected Content-Type: application/json".into()),
        StatusCode::SERVICE_UNAVAILABLE => ApiError::Unavailable("the service is unavailable".into()),
        s if s.is_client_error() => ApiError::BadRequest(s.canonical_reason().unwrap_or("bad request").to_lowercase()),
        _ => ApiError::Internal(anyhow::anyhow!("unexpected {status} response")),
    };
    let allow = res.headers().get(header::ALLOW).cloned();
    let mut out = (status, Json(err.body())).into_response();
    if let Some(allow) = allow {
        out.headers_mut().insert(header::ALLOW, allow);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_map_to_statuses() {
        let s = |e: DomainError| ApiError::from(e).status_and_code();
        assert_eq!(s(DomainError::NotFound("booking")).0, StatusCode::NOT_FOUND);
        assert_eq!(s(DomainError::Conflict("x".into())).0, StatusCode::CONFLICT);
        assert_eq!(
            s(DomainError::invalid("f", "m")),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value")
        );
        assert_eq!(s(DomainError::Db(sqlx::Error::PoolTimedOut)).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(s(DomainError::Db(sqlx::Error::RowNotFound)).0, StatusCode::INTERNAL_SERVER_ERROR);
        let body = ApiError::invalid("phone", "bad").body();
        assert_eq!(body.field.as_deref(), Some("phone"));
    }
}
