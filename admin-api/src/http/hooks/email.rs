//! `POST /hooks/email/inbound` (docs/hearing-back.md): mail that comes back, posted raw
//! (RFC 5322, `Content-Type: message/rfc822`; `text/plain` and `application/octet-stream` are
//! accepted too) by an MTA pipe (postfix's `pipe` with curl, see docs/operating.md) or an inbound-mail
//! webhook. Authenticated by `Authorization: Bearer $INBOUND_EMAIL_TOKEN`, compared in constant
//! time: with no token configured the route answers 404; a missing or wrong one is a 403 that
//! changes nothing (and counts against the client's address like a wrong admin token).
//!
//! The message is handed to `dashlight_core::inbound_email::receive` in one transaction: a
//! bounce (RFC 3464) for a VERP address becomes a receipt on its delivery (and a suppression of a
//! hard-bounced address), a message to an unsubscribe `mailto:` turns that kind off. Everything
//! else (auto-replies, unsigned or forged addresses, unparseable bytes) is recorded and ignored:
//! the answer is 200 with the verdict whenever the caller authenticated, so an MTA never retries
//! or bounces a message we chose to ignore. Bodies over 1 MiB are refused with 413.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, header},
};
use dashlight_core::inbound_email::{self, Outcome};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    auth::token_matches,
    error::{ApiError, ErrorBody},
    guard::{client_addr, retry_after_secs},
};

/// The hook (its own bearer token, not the admin one).
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(inbound_email))
}

/// What was made of a posted message.
#[derive(Debug, Serialize, ToSchema)]
pub struct InboundOut {
    /// `inbound_emails.id`: the record kept of the message.
    pub id: i64,
    /// `bounced`, `failed`, `delayed`, `dsn_other`, `unsubscribed` (acted on); `duplicate`,
    /// `auto_reply`, `unsigned`, `unknown_delivery`, `unparseable`, `other` (ignored).
    #[schema(example = "bounced")]
    pub verdict: String,
    /// The delivery its VERP address named.
    pub delivery_id: Option<i64>,
    /// The user its unsubscribe address named.
    pub user_id: Option<i64>,
    /// The receipt stored for the delivery (the worker applies it).
    pub receipt_id: Option<i64>,
    /// Whether the address was newly suppressed.
    pub suppressed: bool,
    /// The DSN status (`5.1.1`), the kind turned off, or why it was ignored.
    pub detail: Option<String>,
}

impl From<Outcome> for InboundOut {
    fn from(o: Outcome) -> Self {
        InboundOut {
            id: o.id,
            verdict: o.verdict.as_str().to_owned(),
            delivery_id: o.delivery_id,
            user_id: o.user_id,
            receipt_id: o.receipt_id,
            suppressed: o.suppressed,
            detail: o.detail,
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The content types a raw message may come as (none given is accepted too).
fn raw_message_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or_default().trim();
    if matches!(
        essence,
        "message/rfc822" | "message/global" | "text/plain" | "application/octet-stream" | ""
    ) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "expected a raw message as message/rfc822 (or text/plain), got {essence:?}"
        )))
    }
}

/// Receives one raw message (an MTA pipe, an inbound-mail webhook).
#[utoipa::path(post, path = "/hooks/email/inbound", tag = "hooks",
    request_body(content = String, content_type = "message/rfc822",
        description = "The raw RFC 5322 message as received (text/plain and application/octet-stream accepted too)"),
    responses(
        (status = 200, description = "Recorded; acted on when it is a bounce for a VERP address or an unsubscribe, else ignored", body = InboundOut),
        (status = 403, description = "Missing or wrong `Authorization: Bearer $INBOUND_EMAIL_TOKEN`", body = ErrorBody),
        (status = 404, description = "INBOUND_EMAIL_TOKEN is not configured: the hook is off", body = ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = ErrorBody),
        (status = 415, description = "Not a raw message", body = ErrorBody),
        (status = 429, description = "Too many wrong tokens from this address", body = ErrorBody),
        (status = 503, description = "Database unavailable (the MTA retries later)", body = ErrorBody),
    ),
    security(("inbound_email_token" = [])))]
pub async fn inbound_email(
    State(state): State<AppState>,
    req_parts: axum::http::request::Parts,
    body: Bytes,
) -> Result<Json<InboundOut>, ApiError> {
    let headers = &req_parts.headers;
    let Some(expected) = state.config.inbound_email_token.as_deref() else {
        return Err(ApiError::NotFound(
            "the inbound email hook is off: INBOUND_EMAIL_TOKEN is not set".into(),
        ));
    };
    let client = client_addr(&req_parts.extensions, headers, &state.config.http_server.trusted_proxies).0;
    // The right token is never refused; wrong ones count on this hook's own brake.
    if !token_matches(Some(expected), bearer(headers)) {
        if let Some(wait) = state.email_hook_failures.locked_for(client) {
            return Err(ApiError::TooManyRequests(retry_after_secs(wait)));
        }
        let _ = state.email_hook_failures.failed(client);
        tracing::warn!(%client, "inbound email refused: missing or wrong INBOUND_EMAIL_TOKEN");
        metrics::counter!("dashlight_inbound_emails_total", "verdict" => "forbidden").increment(1);
        return Err(ApiError::Forbidden(
            "a valid `Authorization: Bearer <INBOUND_EMAIL_TOKEN>` header is required".into(),
        ));
    }
    raw_message_type(headers)?;

    // Two attempts: the same message posted twice at once may lose the race for the
    // "acted once" index; the second attempt then records it as a duplicate.
    let key = state.signing.get(&state.pool).await?.clone();
    let mut attempt = 0;
    let outcome = loop {
        attempt += 1;
        let mut tx = state.pool.begin().await?;
        match inbound_email::receive(&mut tx, &key, &body).await {
            Ok(o) => {
                tx.commit().await?;
                break o;
            }
            Err(e) if attempt < 2 && e.as_database_error().and_then(|d| d.code()).as_deref() == Some("23505") => continue,
            Err(e) => return Err(e.into()),
        }
    };
    metrics::counter!("dashlight_inbound_emails_total", "verdict" => outcome.verdict.as_str()).increment(1);
    tracing::info!(
        inbound_id = outcome.id,
        verdict = outcome.verdict.as_str(),
        delivery_id = outcome.delivery_id,
        user_id = outcome.user_id,
        receipt_id = outcome.receipt_id,
        suppressed = outcome.suppressed,
        detail = outcome.detail.as_deref().unwrap_or(""),
        size = body.len(),
        "inbound email"
    );
    Ok(Json(outcome.into()))
}
