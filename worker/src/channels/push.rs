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

use super::{
    MAX_ANSWER_BYTES, PROVIDER_TIMEOUT, SendError, Sent, error_chain, outbox::Outbox, parse_retry_after, push_encrypt, read_capped,
};

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

    /// Sends one push. A `url` in the payload that opens a person's page (`/me/{token}…`) is
    /// sent without the token (`/me#booking-7`): a push service, or a device that was registered
    /// through a link later rotated, never learns the page's secret. The service worker opens
    /// the page it was last given by the page itself (`sw.js`).
    pub async fn send(&self, delivery_id: i64, m: &PushMessage<'_>) -> Result<Sent, SendError> {
        let payload = without_page_token(&m.payload);
        let m = &PushMessage { payload, ..m.clone() };
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
                // Registration refuses these; a row from before (or written another way) fails
                // this one delivery for good.
                check_subscription(m)?;
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
                    .timeout(PROVIDER_TIMEOUT)
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
                    // The body of a success is not needed and not read.
                    return Ok(Sent {
                        provider_message_id: location,
                    });
                }
                // At most a few KB of an error's body; a body that does not come in time leaves
                // the status to classify the failure.
                let (body, cut) = read_capped(resp, MAX_ANSWER_BYTES).await.unwrap_or_default();
                let body = String::from_utf8_lossy(&body);
                let detail = match status {
                    404 | 410 => "push subscription expired or unsubscribed".to_owned(),
                    413 => "payload too large for the push service".to_owned(),
                    300..=399 => "the push service answered with a redirect, which is not followed".to_owned(),
                    _ => {
                        let text: String = body.chars().filter(|c| !c.is_control()).take(200).collect();
                        if cut {
                            format!("{text}… (answer longer than {MAX_ANSWER_BYTES} bytes, not read further)")
                        } else {
                            text
                        }
                    }
                };
                Err(SendError::from_http_status(status, retry_after, &detail))
            }
        }
    }
}

/// `payload` with the page token taken out of its `url` (`/me/{token}#x` → `/me#x`); any
/// other payload as it is.
pub fn without_page_token(payload: &[u8]) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return payload.to_vec();
    };
    let Some(url) = v.get("url").and_then(|u| u.as_str()) else {
        return payload.to_vec();
    };
    let Some(after) = url.strip_prefix("/me/") else {
        return payload.to_vec();
    };
    let rest = after.find(['/', '#', '?']).map_or("", |i| &after[i..]);
    v["url"] = serde_json::Value::String(format!("/me{rest}"));
    serde_json::to_vec(&v).unwrap_or_else(|_| payload.to_vec())
}

/// The subscription's own checks, as at registration: the endpoint at most
/// [`dashlight_core::endpoints::MAX_ENDPOINT_LEN`] bytes, `p256dh` 65 bytes and `auth` 16 once
/// decoded. A failure is permanent.
fn check_subscription(m: &PushMessage<'_>) -> Result<(), SendError> {
    let max = dashlight_core::endpoints::MAX_ENDPOINT_LEN;
    if m.endpoint.len() > max {
        return Err(SendError::permanent(format!(
            "push endpoint refused: {} bytes, at most {max}",
            m.endpoint.len()
        )));
    }
    for (name, text, len) in [("p256dh", m.p256dh, 65), ("auth", m.auth, 16)] {
        match decode_key(text) {
            Ok(k) if k.len() == len => {}
            Ok(k) => {
                return Err(SendError::permanent(format!(
                    "invalid subscription: {name} is {} bytes, expected {len}",
                    k.len()
                )));
            }
            Err(e) => return Err(SendError::permanent(format!("invalid subscription: {name}: {e}"))),
        }
    }
    Ok(())
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

    /// A browser's subscription keys (base64url): a fresh P-256 point and auth secret.
    fn keys() -> (String, String) {
        use openssl::{
            bn::BigNumContext,
            ec::{EcGroup, EcKey, PointConversionForm},
            nid::Nid,
        };
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = EcKey::generate(&group).unwrap();
        let mut ctx = BigNumContext::new().unwrap();
        let public = key
            .public_key()
            .to_bytes(&group, PointConversionForm::UNCOMPRESSED, &mut ctx)
            .unwrap();
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        (enc.encode(public), enc.encode(rand::random::<[u8; 16]>()))
    }

    fn sender() -> PushSender {
        PushSender::Vapid {
            signer: Arc::new(signer()),
            client: http_client(true).unwrap(),
            allow_private: true,
        }
    }

    /// A loopback push service that answers every request with `status` and a body of
    /// `body_len` bytes (streamed, never held), counting the bytes it managed to write.
    async fn huge_answer(status: u16, body_len: u64) -> (String, Arc<std::sync::atomic::AtomicU64>) {
        use std::sync::atomic::{AtomicU64, Ordering};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let counter = written.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    // Read the request's head and body (the encrypted payload is small).
                    let mut buf = vec![0u8; 64 * 1024];
                    let _ = tokio::time::timeout(Duration::from_millis(300), conn.read(&mut buf)).await;
                    let head = format!("HTTP/1.1 {status} Whatever\r\ncontent-type: text/plain\r\ncontent-length: {body_len}\r\n\r\n");
                    if conn.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut left = body_len;
                    while left > 0 {
                        let n = left.min(chunk.len() as u64) as usize;
                        if conn.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                        left -= n as u64;
                    }
                });
            }
        });
        (format!("http://{addr}/push/1"), written)
    }

    #[tokio::test]
    async fn a_huge_answer_is_read_only_in_part_and_classified() {
        let (p256dh, auth) = keys();
        let sender = sender();
        // 4 GiB: reading it whole would take the worker's memory; the cap reads 8 KiB.
        const HUGE: u64 = 4 << 30;
        for (status, transient) in [(500u16, true), (400, false), (201, false)] {
            let (endpoint, written) = huge_answer(status, HUGE).await;
            let m = PushMessage {
                endpoint: &endpoint,
                p256dh: &p256dh,
                auth: &auth,
                payload: br#"{"title":"t"}"#.to_vec(),
                ttl: 60,
                urgency: "normal",
            };
            let started = std::time::Instant::now();
            let result = sender.send(1, &m).await;
            let took = started.elapsed();
            assert!(took < Duration::from_secs(10), "{status}: took {took:?}");
            match (status, result) {
                (201, Ok(_)) => {}
                (_, Err(e @ SendError::Transient { .. })) if transient => {
                    assert!(e.to_string().contains("not read further"), "{e}");
                }
                (_, Err(e @ SendError::Permanent { .. })) if !transient => {
                    assert!(e.to_string().contains("HTTP 400"), "{e}");
                }
                (s, other) => panic!("{s}: unexpected {other:?}"),
            }
            // What the service could push before the client stopped reading: socket buffers,
            // not the body.
            let sent = written.load(std::sync::atomic::Ordering::Relaxed);
            assert!(sent < 64 << 20, "{status}: {sent} bytes were taken from the service");
        }
    }

    #[tokio::test]
    async fn a_slow_answer_is_cut_by_the_exchange_timeout() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        // A service that sends its head, then one byte a second, for ever.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    let _ = conn.write_all(b"HTTP/1.1 500 Slow\r\ncontent-length: 100000\r\n\r\n").await;
                    loop {
                        if conn.write_all(b"x").await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
            }
        });
        let client = http_client(true).unwrap();
        let started = std::time::Instant::now();
        let resp = client
            .post(format!("http://{addr}/"))
            .timeout(Duration::from_millis(800))
            .send()
            .await
            .unwrap();
        let err = read_capped(resp, MAX_ANSWER_BYTES).await.unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(matches!(SendError::from_reqwest(&err), SendError::Transient { .. }));
    }

    #[tokio::test]
    async fn an_old_bad_subscription_fails_its_delivery_for_good() {
        let (p256dh, auth) = keys();
        let sender = sender();
        let long = format!("http://127.0.0.1:9/{}", "a".repeat(dashlight_core::endpoints::MAX_ENDPOINT_LEN));
        let short_key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([4u8; 33]);
        let short_auth = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([1u8; 8]);
        for (endpoint, key, secret, what) in [
            (long.as_str(), p256dh.as_str(), auth.as_str(), "1024"),
            ("http://127.0.0.1:9/x", short_key.as_str(), auth.as_str(), "p256dh is 33 bytes"),
            ("http://127.0.0.1:9/x", p256dh.as_str(), short_auth.as_str(), "auth is 8 bytes"),
            ("http://127.0.0.1:9/x", "k", auth.as_str(), "p256dh"),
        ] {
            let m = PushMessage {
                endpoint,
                p256dh: key,
                auth: secret,
                payload: b"{}".to_vec(),
                ttl: 60,
                urgency: "normal",
            };
            match sender.send(1, &m).await {
                Err(e @ SendError::Permanent { .. }) => assert!(e.to_string().contains(what), "{e}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn push_urls_carry_no_page_token() {
        let token = "0123456789abcdef".repeat(4);
        let strip = |url: &str| {
            let out = without_page_token(&serde_json::to_vec(&serde_json::json!({"title": "t", "url": url})).unwrap());
            serde_json::from_slice::<serde_json::Value>(&out).unwrap()["url"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(strip(&format!("/me/{token}#booking-7")), "/me#booking-7");
        assert_eq!(strip(&format!("/me/{token}")), "/me");
        assert_eq!(strip("/offers/abc"), "/offers/abc");
        assert_eq!(without_page_token(b"not json"), b"not json");
    }
}
