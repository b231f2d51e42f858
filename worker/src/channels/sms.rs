//! SMS through a Twilio-compatible Messages API:
//! `POST {base}/2010-04-01/Accounts/{sid}/Messages.json` with `To`, `From`, `Body`, HTTP basic
//! auth `SID:TOKEN`. The returned `sid` is the provider message id.

use std::time::Duration;

use dashlight_core::config::SmsConfig;
use serde::Deserialize;

use super::{SendError, Sent, is_e164, outbox::Outbox, parse_retry_after};

/// Where SMS go.
#[derive(Debug, Clone)]
pub enum SmsSender {
    /// A Twilio-compatible API.
    Api {
        /// Settings (holds the token).
        config: SmsConfig,
        /// Shared HTTP client.
        client: reqwest::Client,
    },
    /// No provider configured.
    Outbox(Outbox),
}

#[derive(Deserialize)]
struct TwilioOk {
    sid: Option<String>,
}

#[derive(Deserialize)]
struct TwilioErr {
    code: Option<i64>,
    message: Option<String>,
}

/// Twilio error codes that no retry can fix: invalid number, unsubscribed, not SMS-capable, ...
const PERMANENT_CODES: [i64; 6] = [21211, 21610, 21614, 21612, 21408, 21606];

impl SmsSender {
    /// Sends `body` to `to` (E.164).
    pub async fn send(&self, delivery_id: i64, to: &str, body: &str) -> Result<Sent, SendError> {
        if !is_e164(to) {
            return Err(SendError::permanent(format!("{to:?} is not an E.164 phone number")));
        }
        match self {
            SmsSender::Outbox(o) => o.write("sms", delivery_id, "txt", format!("To: {to}\n\n{body}\n").as_bytes()).await,
            SmsSender::Api { config, client } => {
                let url = format!("{}/2010-04-01/Accounts/{}/Messages.json", config.api_base_url, config.account_sid);
                let resp = client
                    .post(&url)
                    .basic_auth(&config.account_sid, Some(&config.auth_token))
                    .form(&[("To", to), ("From", config.from.as_str()), ("Body", body)])
                    .timeout(Duration::from_secs(15))
                    .send()
                    .await
                    .map_err(|e| SendError::from_reqwest(&e))?;
                let status = resp.status().as_u16();
                let retry_after = parse_retry_after(resp.headers().get(reqwest::header::RETRY_AFTER));
                let bytes = resp.bytes().await.map_err(|e| SendError::from_reqwest(&e))?;
                if (200..300).contains(&status) {
                    let ok: TwilioOk = serde_json::from_slice(&bytes).unwrap_or(TwilioOk { sid: None });
                    return Ok(Sent {
                        provider_message_id: ok.sid,
                    });
                }
                let err: Option<TwilioErr> = serde_json::from_slice(&bytes).ok();
                let code = err.as_ref().and_then(|e| e.code);
                let detail = match &err {
                    Some(TwilioErr {
                        code: Some(c),
                        message: Some(m),
                    }) => format!("SMS provider error {c}: {m}"),
                    _ => String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                };
                if code.is_some_and(|c| PERMANENT_CODES.contains(&c)) {
                    return Err(SendError::permanent(format!("HTTP {status}: {detail}")));
                }
                if code == Some(20429) {
                    return Err(SendError::Transient {
                        message: format!("HTTP {status}: {detail}"),
                        retry_after,
                    });
                }
                Err(SendError::from_http_status(status, retry_after, &detail))
            }
        }
    }
}
