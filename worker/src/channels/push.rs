//! Web Push: VAPID (RFC 8292) signed, aes128gcm (RFC 8291) encrypted, sent with our own reqwest
//! client (web-push builds the request; we read status and `Retry-After` ourselves, since
//! web-push 0.11 hides 429s). 404/410 end a subscription for good.

use std::time::Duration;

use base64::Engine as _;
use dashlight_core::config::PushConfig;
use web_push::{ContentEncoding, PartialVapidSignatureBuilder, SubscriptionInfo, Urgency, VapidSignatureBuilder, WebPushMessageBuilder};

use super::{SendError, Sent, outbox::Outbox, parse_retry_after};

/// Largest plaintext web-push accepts (it refuses more than 3052 bytes).
pub const MAX_PAYLOAD: usize = 3052;

/// One push message.
#[derive(Debug, Clone)]
pub struct PushMessage<'a> {
    /// Subscription endpoint.
    pub endpoint: &'a str,
    /// base64url P-256 public key of the subscription.
    pub p256dh: &'a str,
    /// base64url auth secret.
    pub auth: &'a str,
    /// JSON payload `{title, body, url, tag}`.
    pub payload: Vec<u8>,
    /// Seconds the push service keeps it for an offline device.
    pub ttl: u32,
    /// `very-low`, `low`, `normal`, `high`.
    pub urgency: &'a str,
}

/// Where pushes go.
#[derive(Clone)]
pub enum PushSender {
    /// Real push services.
    Vapid {
        /// The parsed VAPID key (parsed once).
        key: Box<PartialVapidSignatureBuilder>,
        /// `sub` claim.
        subject: String,
        /// Shared HTTP client.
        client: reqwest::Client,
    },
    /// No VAPID key configured.
    Outbox(Outbox),
}

impl std::fmt::Debug for PushSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushSender::Vapid { subject, .. } => write!(f, "PushSender::Vapid({subject})"),
            PushSender::Outbox(o) => write!(f, "PushSender::Outbox({})", o.dir().display()),
        }
    }
}

impl PushSender {
    /// Builds the sender from configuration; a bad key fails here, at start-up.
    pub fn from_config(config: &PushConfig, client: reqwest::Client) -> Result<PushSender, String> {
        let key = VapidSignatureBuilder::from_base64_no_sub(&config.vapid_private_key)
            .map_err(|e| format!("VAPID_PRIVATE_KEY: not a usable P-256 key: {e}"))?;
        Ok(PushSender::Vapid {
            key: Box::new(key),
            subject: config.vapid_subject.clone(),
            client,
        })
    }

    /// The VAPID public key (base64url) browsers subscribe with, when configured.
    pub fn public_key(&self) -> Option<String> {
        match self {
            PushSender::Vapid { key, .. } => Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.get_public_key())),
            PushSender::Outbox(_) => None,
        }
    }

    /// Sends one push.
    pub async fn send(&self, delivery_id: i64, m: &PushMessage<'_>) -> Result<Sent, SendError> {
        if m.payload.len() > MAX_PAYLOAD {
            return Err(SendError::permanent(format!(
                "push payload is {} bytes, the limit is {MAX_PAYLOAD}",
                m.payload.len()
            )));
        }
        match self {
            PushSender::Outbox(o) => {
                let text = format!(
                    "To: {}\nUrgency: {}\nTTL: {}\n\n{}\n",
                    m.endpoint,
                    m.urgency,
                    m.ttl,
                    String::from_utf8_lossy(&m.payload)
                );
                o.write("push", delivery_id, "txt", text.as_bytes()).await
            }
            PushSender::Vapid { key, subject, client } => {
                let sub = SubscriptionInfo::new(m.endpoint, m.p256dh, m.auth);
                // web-push sets `aud` to scheme://host and drops a non-default port; push
                // services compare it with the endpoint's full origin.
                let origin = url::Url::parse(m.endpoint)
                    .map_err(|e| SendError::permanent(format!("push endpoint {:?} is not a URL: {e}", m.endpoint)))?
                    .origin()
                    .ascii_serialization();
                let mut sig = key.as_ref().clone().add_sub_info(&sub);
                sig.add_claim("sub", subject.as_str());
                sig.add_claim("aud", origin.as_str());
                let sig = sig
                    .build()
                    .map_err(|e| SendError::permanent(format!("cannot sign VAPID claims: {e}")))?;
                let mut b = WebPushMessageBuilder::new(&sub);
                b.set_payload(ContentEncoding::Aes128Gcm, &m.payload);
                b.set_ttl(m.ttl);
                b.set_urgency(match m.urgency {
                    "very-low" => Urgency::VeryLow,
                    "low" => Urgency::Low,
                    "high" => Urgency::High,
                    _ => Urgency::Normal,
                });
                b.set_vapid_signature(sig);
                let msg = b
                    .build()
                    .map_err(|e| SendError::permanent(format!("invalid subscription or payload: {e}")))?;
                let req = web_push::request_builder::build_request::<Vec<u8>>(msg);
                let mut rb = client.post(req.uri().to_string()).timeout(Duration::from_secs(15));
                for (name, value) in req.headers() {
                    rb = rb.header(name.as_str(), value.as_bytes());
                }
                let resp = rb.body(req.into_body()).send().await.map_err(|e| SendError::from_reqwest(&e))?;
                let status = resp.status().as_u16();
                let retry_after = parse_retry_after(resp.headers().get(reqwest::header::RETRY_AFTER));
                let location = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                if (200..300).contains(&status) {
                    return Ok(Sent {
                        provider_message_id: location,
                    });
                }
                let body = resp.text().await.unwrap_or_default();
                let detail = match status {
                    404 | 410 => "push subscription expired or unsubscribed".to_owned(),
                    413 => "payload too large for the push service".to_owned(),
                    _ => body.chars().take(200).collect(),
                };
                Err(SendError::from_http_status(status, retry_after, &detail))
            }
        }
    }
}
