//! Web Push: VAPID (RFC 8292) signed, aes128gcm (RFC 8291) encrypted, sent with our own reqwest
//! client (web-push builds the request; we read status and `Retry-After` ourselves, since
//! web-push 0.11 hides 429s). 404/410 end a subscription for good.
//!
//! Signing the VAPID JWT (ES256) is the expensive part of a push, and the JWT depends only on
//! the push service's origin (`aud`), our `sub` and the expiry, so one signature per origin is
//! made and reused until shortly before it expires.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use dashlight_core::config::PushConfig;
use web_push::{
    ContentEncoding, PartialVapidSignatureBuilder, SubscriptionInfo, Urgency, VapidSignature, VapidSignatureBuilder, WebPushMessageBuilder,
};

use super::{SendError, Sent, outbox::Outbox, parse_retry_after};

/// Largest plaintext web-push accepts (it refuses more than 3052 bytes).
pub const MAX_PAYLOAD: usize = 3052;

/// Lifetime (`exp` − now) of the VAPID JWTs we sign; RFC 8292 allows at most 24 h.
const JWT_LIFETIME_SECS: u64 = 12 * 3600;

/// A cached JWT is replaced once less than this is left before its `exp`.
const JWT_REFRESH_MARGIN_SECS: u64 = 3600;

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
        /// The VAPID key and the signatures made with it, shared by every clone.
        signer: Arc<VapidSigner>,
        /// Shared HTTP client.
        client: reqwest::Client,
    },
    /// No VAPID key configured.
    Outbox(Outbox),
}

impl std::fmt::Debug for PushSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushSender::Vapid { signer, .. } => write!(f, "PushSender::Vapid({})", signer.subject),
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
            signer: Arc::new(VapidSigner::new(key, config.vapid_subject.clone())),
            client,
        })
    }

    /// The VAPID public key (base64url) browsers subscribe with, when configured.
    pub fn public_key(&self) -> Option<String> {
        match self {
            PushSender::Vapid { signer, .. } => Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signer.key.get_public_key())),
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
            PushSender::Vapid { signer, client } => {
                let sub = SubscriptionInfo::new(m.endpoint, m.p256dh, m.auth);
                // web-push sets `aud` to scheme://host and drops a non-default port; push
                // services compare it with the endpoint's full origin.
                let origin = url::Url::parse(m.endpoint)
                    .map_err(|e| SendError::permanent(format!("push endpoint {:?} is not a URL: {e}", m.endpoint)))?
                    .origin()
                    .ascii_serialization();
                let sig = signer.signature_for(&sub, &origin)?;
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

/// The VAPID key, the `sub` claim, and the signed JWTs per push-service origin.
pub struct VapidSigner {
    /// The parsed VAPID key (parsed once).
    key: PartialVapidSignatureBuilder,
    /// `sub` claim.
    subject: String,
    /// Origin (`aud`) → signature and its `exp` (Unix seconds).
    signatures: Mutex<HashMap<String, (VapidSignature, u64)>>,
}

impl VapidSigner {
    fn new(key: PartialVapidSignatureBuilder, subject: String) -> VapidSigner {
        VapidSigner {
            key,
            subject,
            signatures: Mutex::new(HashMap::new()),
        }
    }

    /// The signature for pushes to `origin` (the `aud` claim); `sub` is any subscription of
    /// that origin. Signs only when no cached signature has at least an hour left.
    fn signature_for(&self, sub: &SubscriptionInfo, origin: &str) -> Result<VapidSignature, SendError> {
        let now = unix_now();
        if let Some((sig, exp)) = self.signatures.lock().unwrap_or_else(PoisonError::into_inner).get(origin)
            && is_fresh(*exp, now)
        {
            return Ok(sig.clone());
        }
        // Signed without the lock held: a race only signs twice.
        let exp = now + JWT_LIFETIME_SECS;
        let mut builder = self.key.clone().add_sub_info(sub);
        builder.add_claim("sub", self.subject.as_str());
        builder.add_claim("aud", origin);
        builder.add_claim("exp", exp);
        let sig = builder
            .build()
            .map_err(|e| SendError::permanent(format!("cannot sign VAPID claims: {e}")))?;
        let mut cache = self.signatures.lock().unwrap_or_else(PoisonError::into_inner);
        cache.retain(|_, (_, exp)| is_fresh(*exp, now));
        cache.insert(origin.to_owned(), (sig.clone(), exp));
        Ok(sig)
    }
}

/// Whether a JWT expiring at `exp` may still be sent at `now`: at least the refresh margin
/// left, and not further ahead than we sign for (the clock went back; push services refuse
/// an `exp` more than 24 h away).
fn is_fresh(exp: u64, now: u64) -> bool {
    now + JWT_REFRESH_MARGIN_SECS < exp && exp <= now + JWT_LIFETIME_SECS
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signer with a freshly generated P-256 key (a random scalar is a valid key but for
    /// a 2^-32 chance).
    fn signer() -> VapidSigner {
        loop {
            let scalar = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
            if let Ok(key) = VapidSignatureBuilder::from_base64_no_sub(&scalar) {
                return VapidSigner::new(key, "mailto:ops@example.test".to_owned());
            }
        }
    }

    fn claims(sig: &VapidSignature) -> serde_json::Value {
        let payload = sig.auth_t.split('.').nth(1).unwrap();
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    fn sign(signer: &VapidSigner, endpoint: &str) -> VapidSignature {
        let origin = url::Url::parse(endpoint).unwrap().origin().ascii_serialization();
        signer
            .signature_for(&SubscriptionInfo::new(endpoint, "p256dh", "auth"), &origin)
            .unwrap()
    }

    #[test]
    fn signatures_are_cached_per_origin() {
        let signer = signer();
        let a = sign(&signer, "https://push.example.test/wpush/v2/one");
        assert_eq!(a, sign(&signer, "https://push.example.test/wpush/v2/two"), "same origin, same JWT");
        assert_eq!(a.auth_k, signer.key.get_public_key());
        let c = claims(&a);
        assert_eq!(c["aud"], "https://push.example.test");
        assert_eq!(c["sub"], "mailto:ops@example.test");
        let left = c["exp"].as_u64().unwrap() - unix_now();
        assert!((JWT_LIFETIME_SECS - 60..=JWT_LIFETIME_SECS).contains(&left), "exp {left}s away");

        let b = sign(&signer, "http://127.0.0.1:8443/push/one");
        assert_ne!(a.auth_t, b.auth_t);
        assert_eq!(claims(&b)["aud"], "http://127.0.0.1:8443");

        // Less than the margin left: signed anew.
        signer.signatures.lock().unwrap().get_mut("https://push.example.test").unwrap().1 = unix_now() + 60;
        assert_ne!(a.auth_t, sign(&signer, "https://push.example.test/wpush/v2/one").auth_t);
    }
}
