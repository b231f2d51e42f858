//! The SMS provider's hooks: `POST /hooks/sms/status` (status callbacks: the delivery with that
//! provider message id becomes `delivered` or `undelivered` through
//! [`dashlight_core::receipts::report`]; the worker's recorder applies it) and
//! `POST /hooks/sms/inbound` (texts people send to the school's number, handled by
//! [`dashlight_core::replies`], answered in TwiML).
//!
//! Both verify `X-Twilio-Signature` as Twilio documents it: the base64 HMAC-SHA1, keyed with
//! `SMS_AUTH_TOKEN`, of the URL Twilio called (`PUBLIC_BASE_URL` + path, with the query string
//! if any) followed by every POST parameter sorted by name, each name immediately followed by
//! its value; compared in constant time. A missing or wrong signature (or no `SMS_AUTH_TOKEN`)
//! is a 403 that changes nothing. A replayed callback or text is harmless: reports are applied
//! once (a delivery never moves back) and a text's `MessageSid` is handled once.
//!
//! Twilio's signature covers names and values run together, so a captured request could be
//! re-cut (`MessageSid=SMcap0001` + `NumMedia=0` signs as `MessageSid=SMcap0001NumMedia0`) and
//! replayed under a new `MessageSid`. An inbound text must therefore carry `AccountSid` equal
//! to `SMS_ACCOUNT_SID` and a well-formed `MessageSid` (`SM` or `MM` and 32 hex digits, as
//! Twilio makes them); otherwise it is a 422 that changes nothing.

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use dashlight_core::{
    kinds::Channel,
    receipts::{self, ReceiptSource, ReceiptStatus, Report},
    replies::{self, Inbound, School},
};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(status)).routes(routes!(inbound))
}

/// A Twilio status callback (form fields; Twilio sends more, all of them signed).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(non_snake_case, dead_code)]
pub struct StatusCallback {
    /// The message's id, as the send answered it (`notification_deliveries.provider_message_id`).
    pub MessageSid: String,
    /// `queued`, `sent`, `delivered`, `undelivered`, `failed` (others are kept as notes).
    pub MessageStatus: String,
    /// Twilio's error code of an `undelivered` or `failed` message (30003–30008, 21610, ...).
    pub ErrorCode: Option<String>,
}

/// An inbound SMS (form fields; Twilio sends more, all of them signed).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(non_snake_case, dead_code)]
pub struct InboundSms {
    /// The sender's number (E.164).
    pub From: String,
    /// The text.
    pub Body: String,
    /// The inbound message's id, `SM`/`MM` and 32 hex digits (a replayed post is handled once).
    pub MessageSid: String,
    /// The account the text arrived on: must be `SMS_ACCOUNT_SID`.
    pub AccountSid: String,
}

/// Whether `sid` is a Twilio message id: `SM` or `MM` then 32 hex digits.
pub fn well_formed_message_sid(sid: &str) -> bool {
    sid.len() == 34 && (sid.starts_with("SM") || sid.starts_with("MM")) && sid.as_bytes()[2..].iter().all(u8::is_ascii_hexdigit)
}

/// The POST parameters, once the signature over them was verified.
struct Signed(Vec<(String, String)>);

impl Signed {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &str) -> Result<&str, ApiError> {
        match self.get(name).map(str::trim) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ApiError::Invalid {
                code: "missing_field",
                field: Some(name.to_owned()),
                message: format!("{name}: required"),
            }),
        }
    }
}

/// The signature Twilio puts in `X-Twilio-Signature` for a POST of `params` to `url`.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut data = url.to_owned();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    B64.encode(hmac_sha1_compact::HMAC::mac(data.as_bytes(), auth_token.as_bytes()))
}

/// Checks the request's signature; returns its parameters, or `None` (answer [`forbidden`]).
fn verify(state: &AppState, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Option<Signed> {
    let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let url = format!("{}{path}", state.config.public_base_url.trim_end_matches('/'));
    let given = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let ok = match &state.config.sms {
        Some(sms) if !given.is_empty() => {
            let expected = twilio_signature(&sms.auth_token, &url, &params);
            bool::from(expected.as_bytes().ct_eq(given.trim().as_bytes()))
        }
        _ => false,
    };
    if ok {
        // Postgres text cannot hold NUL: a signed value with one is kept without it.
        let clean = params.into_iter().map(|(k, v)| (k, v.replace('\0', ""))).collect();
        return Some(Signed(clean));
    }
    tracing::warn!(
        path = uri.path(),
        signed = !given.is_empty(),
        "SMS hook refused: missing or wrong X-Twilio-Signature"
    );
    metrics::counter!("dashlight_hook_refusals_total", "hook" => "sms").increment(1);
    None
}

/// The 403 of a request whose signature is missing or wrong.
fn forbidden() -> Response {
    let body = ErrorBody {
        error: "forbidden".into(),
        message: "a valid X-Twilio-Signature is required".into(),
        field: None,
    };
    (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

/// A TwiML answer, with one `<Message>` when there is something to say.
fn twiml(message: Option<&str>) -> Response {
    let body = match message {
        Some(m) => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>{}</Message></Response>",
            escape_xml(m)
        ),
        None => "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>".to_owned(),
    };
    ([(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

fn escape_xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// What a Twilio `MessageStatus` means for the delivery.
fn receipt_status(message_status: &str) -> ReceiptStatus {
    match message_status.trim().to_ascii_lowercase().as_str() {
        "delivered" | "read" => ReceiptStatus::Delivered,
        "undelivered" | "failed" => ReceiptStatus::Undelivered,
        _ => ReceiptStatus::Note,
    }
}

/// `POST /hooks/sms/status`.
#[utoipa::path(post, path = "/hooks/sms/status", tag = "hooks",
    request_body(content = StatusCallback, content_type = "application/x-www-form-urlencoded",
        description = "Twilio's status callback (every SMS is sent with StatusCallback = PUBLIC_BASE_URL/hooks/sms/status)"),
    params(("X-Twilio-Signature" = String, Header, description = "base64 HMAC-SHA1 (SMS_AUTH_TOKEN) of PUBLIC_BASE_URL + path + the sorted parameters")),
    responses(
        (status = 200, description = "Kept (a message id not recorded yet is kept and applied once its send is recorded); empty TwiML", content_type = "application/xml", body = String),
        (status = 403, description = "Missing or wrong signature: nothing changed", body = ErrorBody),
        (status = 422, description = "MessageSid or MessageStatus missing", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn status(State(state): State<AppState>, uri: Uri, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let Some(p) = verify(&state, &uri, &headers, &body) else {
        return Ok(forbidden());
    };
    let sid = p.required("MessageSid")?;
    let message_status = p.get("MessageStatus").or(p.get("SmsStatus")).unwrap_or_default();
    if message_status.trim().is_empty() {
        return Err(ApiError::Invalid {
            code: "missing_field",
            field: Some("MessageStatus".into()),
            message: "MessageStatus: required".into(),
        });
    }
    let status = receipt_status(message_status);
    let error_code = p.get("ErrorCode").map(str::trim).filter(|c| !c.is_empty() && *c != "0");
    let mut tx = state.pool.begin().await?;
    let found = receipts::delivery_by_provider_id(&mut tx, Channel::Sms, sid).await?;
    let report = Report {
        delivery_id: found.unwrap_or_default(),
        source: ReceiptSource::SmsStatus,
        status,
        provider_status: Some(message_status),
        error_code,
        detail: p.get("ErrorMessage"),
    };
    let Some(delivery) = found else {
        // The callback overtook the recording of its send (or names no message of ours): kept,
        // and applied once a delivery with this message id is recorded.
        let early = receipts::keep_early(&mut tx, Channel::Sms, sid, &report).await?;
        tx.commit().await?;
        tracing::info!(
            early,
            message = sid,
            status = message_status,
            "SMS status callback before its send was recorded: kept for later"
        );
        return Ok(twiml(None));
    };
    let receipt = receipts::report(&mut tx, &report).await?;
    tx.commit().await?;
    tracing::info!(delivery, receipt = ?receipt, message = sid, status = message_status, error_code, "SMS status callback kept");
    metrics::counter!("dashlight_sms_status_callbacks_total", "status" => match status {
        ReceiptStatus::Delivered => "delivered",
        ReceiptStatus::Undelivered => "undelivered",
        ReceiptStatus::Note => "note",
    })
    .increment(1);
    Ok(twiml(None))
}

/// `POST /hooks/sms/inbound`.
#[utoipa::path(post, path = "/hooks/sms/inbound", tag = "hooks",
    request_body(content = InboundSms, content_type = "application/x-www-form-urlencoded",
        description = "A text to the school's number, as Twilio's messaging webhook posts it"),
    params(("X-Twilio-Signature" = String, Header, description = "base64 HMAC-SHA1 (SMS_AUTH_TOKEN) of PUBLIC_BASE_URL + path + the sorted parameters")),
    responses(
        (status = 200, description = "TwiML: <Response><Message>the answer</Message></Response> (empty for a text that is only forwarded)", content_type = "application/xml", body = String),
        (status = 403, description = "Missing or wrong signature: nothing changed", body = ErrorBody),
        (status = 422, description = "From missing, AccountSid not SMS_ACCOUNT_SID, or MessageSid missing or malformed (nothing changed)", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub async fn inbound(State(state): State<AppState>, uri: Uri, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let Some(p) = verify(&state, &uri, &headers, &body) else {
        return Ok(forbidden());
    };
    let from = p.required("From")?;
    let account = p.required("AccountSid")?;
    if state.config.sms.as_ref().is_none_or(|sms| sms.account_sid != account) {
        tracing::warn!("inbound SMS refused: AccountSid is not this server's SMS_ACCOUNT_SID");
        metrics::counter!("dashlight_hook_refusals_total", "hook" => "sms_account").increment(1);
        return Err(ApiError::invalid(
            "AccountSid",
            "not the account this server sends from (SMS_ACCOUNT_SID)",
        ));
    }
    let sid = p.required("MessageSid")?;
    if !well_formed_message_sid(sid) {
        tracing::warn!("inbound SMS refused: malformed MessageSid");
        metrics::counter!("dashlight_hook_refusals_total", "hook" => "sms_message_sid").increment(1);
        return Err(ApiError::invalid("MessageSid", "expected SM or MM and 32 hex digits"));
    }
    let msg = Inbound {
        from,
        body: p.get("Body").unwrap_or_default(),
        provider_message_id: Some(sid),
    };
    let school = School::from_config(&state.config);
    let mut tx = state.pool.begin().await?;
    let handled = replies::handle(&mut tx, &school, &msg, state.clock.now()).await?;
    tx.commit().await?;
    tracing::info!(number = from, keyword = handled.keyword.as_str(), user = ?handled.user_id, booking = ?handled.booking_id,
        replayed = handled.replayed, "inbound SMS handled");
    metrics::counter!("dashlight_inbound_sms_total", "keyword" => handled.keyword.as_str()).increment(1);
    Ok(twiml(handled.answer.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_twilios_published_examples() {
        let params = |phone: &str| -> Vec<(String, String)> {
            [
                ("CallSid", "CA1234567890ABCDE"),
                ("Caller", phone),
                ("Digits", "1234"),
                ("From", phone),
                ("To", "+18005551212"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
        };
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            twilio_signature("12345", url, &params("+12349013030")),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        assert_eq!(
            twilio_signature("12345", url, &params("+14158675309")),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
    }

    #[test]
    fn only_well_formed_message_sids_are_accepted() {
        assert!(well_formed_message_sid("SM0123456789abcdef0123456789abcdef"));
        assert!(well_formed_message_sid("MM0123456789ABCDEF0123456789abcdef"));
        for bad in [
            "SMcap0001",
            "SMcap0001NumMedia0",
            "XX0123456789abcdef0123456789abcdef",
            "SM0123456789abcdef0123456789abcdeg",
            "SM0123456789abcdef0123456789abcdef0",
            "",
        ] {
            assert!(!well_formed_message_sid(bad), "{bad}");
        }
    }

    #[test]
    fn twiml_is_escaped() {
        assert_eq!(escape_xml("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot;");
        assert_eq!(receipt_status("failed"), ReceiptStatus::Undelivered);
        assert_eq!(receipt_status("sent"), ReceiptStatus::Note);
    }
}
