//! Web Push: VAPID (RFC 8292) signed with web-push, aes128gcm (RFC 8291) encrypted by
//! [`super::push_encrypt`], sent with our own reqwest client (we build the request
//! and read status and `Retry-After` ourselves, since web-push 0.11 hides 429s). 404/410 end a subscription for good.
//!
//! The endpoint comes from whoever registered the device, so the push client is guarded
//! against server-side request forgery ([`dashlight_core::endpoints`]): unless
//! `PUSH_ALLOW_PRIVATE_ENDPOINTS` is on, only `https` endpoints are used, an IP-literal host must
//! be public, and a [`GuardedResolver`] refuses names that resolve to any loopback, private,
//! link-local or otherwise non-public address at connect time (so DNS rebinding does not help).
//! Redirects are never followed and no proxy from the environment is used.
//!
//! Signing the VAPID JWT (ES256) is the expensive part of a push, and the JWT depends only on
//! the push service's origin (`aud`), our `sub` and the expiry, so one signature per origin is
//! made and reused until shortly before it expires.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use dashlight_core::config::PushConfig;
use web_push::{PartialVapidSignatureBuilder, SubscriptionInfo, VapidSignature, VapidSignatureBuilder};

use super::{SendError, Sent, error_chain, outbox::Outbox, parse_retry_after, push_encrypt};

/// Largest plaintext web-push accepts (it refuses more than 3052 bytes).
pub const MAX_PAYLOAD: usize = 3052;

/// Longest provider message id (`Location`) kept; a push service's is well under this.
const MAX_LOCATION_LEN: usize = 512;

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
        /// The push HTTP client: guarded resolver, no redirects, no proxy.
        client: reqwest::Client,
        /// `PUSH_ALLOW_PRIVATE_ENDPOINTS`.
        allow_private: bool,
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
    /// Builds the sender from configuration with its own guarded HTTP client ([`http_client`]);
    /// a bad key fails here, at start-up.
    pub fn from_config(config: &PushConfig, allow_private: bool) -> Result<PushSender, String> {
        let key = VapidSignatureBuilder::from_base64_no_sub(&config.vapid_private_key)
            .map_err(|e| format!("VAPID_PRIVATE_KEY: not a usable P-256 key: {e}"))?;
        let client = http_client(allow_private).map_err(|e| format!("building the push HTTP client: {e}"))?;
        Ok(PushSender::Vapid {
            signer: Arc::new(VapidSigner::new(key, config.vapid_subject.clone())),
            client,
            allow_private,
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
            PushSender::Vapid {
                signer,
                client,
                allow_private,
            } => {
                // Registration checked the endpoint too, but rows may predate the check or the
                // setting may have changed since.
                if let Some(why) = dashlight_core::endpoints::check_push_endpoint(m.endpoint, *allow_private) {
                    return Err(SendError::permanent(format!("push endpoint refused: {why}")));
                }
                let sub = SubscriptionInfo::new(m.endpoint, m.p256dh, m.auth);
                // web-push sets `aud` to scheme://host and drops a non-default port; push
                // services compare it with the endpoint's full origin.
                let origin = url::Url::parse(m.endpoint)
                    .map_err(|e| SendError::permanent(format!("push endpoint {:?} is not a URL: {e}", m.endpoint)))?
                    .origin()
                    .ascii_serialization();
                let sig = signer.signature_for(&sub, &origin)?;
                let invalid = |e: String| SendError::permanent(format!("invalid subscription or payload: {e}"));
                let body = push_encrypt::encrypt(
                    &decode_key(m.p256dh).map_err(|e| invalid(format!("p256dh: {e}")))?,
                    &decode_key(m.auth).map_err(|e| invalid(format!("auth: {e}")))?,
                    &m.payload,
                )
                .map_err(|e| invalid(e.to_string()))?;
                let urgency = match m.urgency {
                    "very-low" | "low" | "high" => m.urgency,
                    _ => "normal",
                };
                let authorization = format!(
                    "vapid t={}, k={}",
                    sig.auth_t,
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&sig.auth_k)
                );
                let rb = client
                    .post(m.endpoint)
                    .timeout(Duration::from_secs(15))
                    .header("TTL", m.ttl.to_string())
                    .header("Urgency", urgency)
                    .header(reqwest::header::CONTENT_ENCODING, "aes128gcm")
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .header(reqwest::header::AUTHORIZATION, authorization);
                let resp = rb.body(body).send().await.map_err(|e| {
                    if let Some(f) = forbidden_in(&e) {
                        SendError::permanent(format!("push endpoint refused: {f}"))
                    } else {
                        SendError::from_reqwest(&e)
                    }
                })?;
                let status = resp.status().as_u16();
                let retry_after = parse_retry_after(resp.headers().get(reqwest::header::RETRY_AFTER));
                let location = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(|l| l.chars().take(MAX_LOCATION_LEN).collect::<String>());
                if (200..300).contains(&status) {
                    return Ok(Sent {
                        provider_message_id: location,
                    });
                }
                let body = resp.text().await.unwrap_or_default();
                let detail = match status {
                    404 | 410 => "push subscription expired or unsubscribed".to_owned(),
                    413 => "payload too large for the push service".to_owned(),
                    300..=399 => "the push service answered with a redirect, which is not followed".to_owned(),
                    _ => body.chars().filter(|c| !c.is_control()).take(200).collect(),
                };
                Err(SendError::from_http_status(status, retry_after, &detail))
            }
        }
    }
}

/// A subscription key as browsers give it: base64url, padded or not (the standard alphabet
/// accepted too, as web-push accepts it).
fn decode_key(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let text = text.trim().trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(text)
        .or_else(|e| STANDARD_NO_PAD.decode(text).map_err(|_| e))
}

/// The push HTTP client: [`GuardedResolver`] (unless `allow_private`), no redirects, no proxy
/// from the environment, a user agent naming Dashlight.
pub fn http_client(allow_private: bool) -> reqwest::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("dashlight/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if !allow_private {
        b = b.dns_resolver(Arc::new(GuardedResolver));
    }
    b.build()
}

/// A resolved name that leads to a non-public address.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to {addr}, which is not a public address")]
pub struct ForbiddenAddress {
    /// The name looked up.
    pub host: String,
    /// The first non-public address it gave.
    pub addr: std::net::IpAddr,
}

/// A DNS resolver for the push client: the system's lookup, then every address must be public
/// ([`dashlight_core::endpoints::is_public`]), or the connection is refused. Checked on every
/// connect, so a name that later resolves to a private address (DNS rebinding) is refused then.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(bad) = addrs.iter().find(|a| !dashlight_core::endpoints::is_public(a.ip())) {
                return Err(Box::new(ForbiddenAddress { host, addr: bad.ip() }) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The [`ForbiddenAddress`] behind a reqwest error, if that is why it failed.
fn forbidden_in(e: &reqwest::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(f) = c.downcast_ref::<ForbiddenAddress>() {
            return Some(f.to_string());
        }
        cur = c.source();
    }
    // Some layers only keep the message.
    let chain = error_chain(e);
    chain.contains("which is not a public address").then_some(chain)
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
        let exp = now.saturating_add(JWT_LIFETIME_SECS);
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
    now.saturating_add(JWT_REFRESH_MARGIN_SECS) < exp && exp <= now.saturating_add(JWT_LIFETIME_SECS)
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
