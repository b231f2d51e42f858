//! A Web Push service on loopback ([`PushService`]) that end-to-end tests subscribe "browsers"
//! to and point Dashlight's push sender at. It owns the push side of the tests: minting
//! subscriptions (fresh P-256 key pair and auth secret each), verifying every request the way a
//! browser vendor's push service does (RFC 8030 headers, RFC 8292 VAPID, RFC 8291 `aes128gcm`
//! decryption), recording what arrives, and scripting per-subscription responses
//! ([`PushResponse`]). [`generate_vapid_keys`] makes a sender key pair for tests.
//!
//! Note: the `aud` claim must be the endpoint's origin *including the port*
//! (`http://127.0.0.1:PORT`, see [`PushService::origin`]). web-push 0.11's default `aud` is
//! `scheme://host` without the port, so senders must set `aud` explicitly for this service.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64URL};
use p256::{
    SecretKey,
    ecdsa::{Signature, VerifyingKey, signature::Verifier},
    elliptic_curve::sec1::ToEncodedPoint,
};
use rand_core::{OsRng, RngCore};
use tokio::{sync::watch, task::JoinHandle};

use crate::wait::wait_for_count;

/// Largest encrypted body accepted (RFC 8291 §4: push services must accept at least 4096 bytes;
/// real services reject larger ones with `413`).
pub const MAX_PAYLOAD: usize = 4096;

/// Longest `exp` a VAPID JWT may have, from now (RFC 8292 §2).
pub const MAX_JWT_LIFETIME_SECS: i64 = 24 * 60 * 60;

/// What the service answers to a valid request for a subscription, until changed with
/// [`PushService::respond_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PushResponse {
    /// `201 Created` with a `Location` header: delivered.
    #[default]
    Created,
    /// `410 Gone`: the subscription has expired or was unsubscribed.
    Gone,
    /// `404 Not Found`: unknown subscription.
    NotFound,
    /// `429 Too Many Requests` with `Retry-After: retry_after_secs`.
    TooMany {
        /// Seconds sent in the `Retry-After` header.
        retry_after_secs: u64,
    },
    /// `500 Internal Server Error`.
    ServerError,
}

impl PushResponse {
    fn status(self) -> StatusCode {
        match self {
            PushResponse::Created => StatusCode::CREATED,
            PushResponse::Gone => StatusCode::GONE,
            PushResponse::NotFound => StatusCode::NOT_FOUND,
            PushResponse::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            PushResponse::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A browser-side push subscription, as `PushSubscription.toJSON()` would give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// `http://127.0.0.1:PORT/push/<name>`.
    pub endpoint: String,
    /// The subscription's public key: uncompressed 65-byte P-256 point, base64url without padding.
    pub p256dh: String,
    /// The 16-byte auth secret, base64url without padding.
    pub auth: String,
}

impl Subscription {
    /// The browser's `PushSubscription.toJSON()` shape:
    /// `{"endpoint": ..., "expirationTime": null, "keys": {"p256dh": ..., "auth": ...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "endpoint": self.endpoint,
            "expirationTime": null,
            "keys": { "p256dh": self.p256dh, "auth": self.auth },
        })
    }
}

/// A request that passed every check (VAPID, headers, decryption). Recorded whatever the
/// scripted [`PushResponse`]; `status` says what was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedPush {
    /// The subscription name (last path segment of the endpoint).
    pub subscription: String,
    /// The decrypted payload (empty for a push without payload).
    pub payload: Vec<u8>,
    /// The `TTL` header, seconds.
    pub ttl: u32,
    /// The `Urgency` header (`very-low`, `low`, `normal` or `high`), if sent.
    pub urgency: Option<String>,
    /// The `Topic` header, if sent.
    pub topic: Option<String>,
    /// The JWT's `sub` claim (`mailto:` or `https:` contact).
    pub vapid_sub: String,
    /// The `k=` VAPID public key as sent (base64url, uncompressed P-256 point).
    pub vapid_public_key: String,
    /// The HTTP status answered: 201 unless a [`PushResponse`] was scripted.
    pub status: u16,
}

/// A sender (application server) VAPID key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VapidKeyPair {
    /// The raw 32-byte private scalar, base64url without padding: the form
    /// `web-push generate-vapid-keys` prints and `VAPID_PRIVATE_KEY` expects.
    pub private_key: String,
    /// The public key, uncompressed 65-byte point, base64url without padding (the
    /// `applicationServerKey` a browser subscribes with; the `k=` a sender presents).
    pub public_key: String,
}

/// Generates a fresh VAPID key pair.
pub fn generate_vapid_keys() -> VapidKeyPair {
    let secret = SecretKey::random(&mut OsRng);
    VapidKeyPair {
        private_key: B64URL.encode(secret.to_bytes()),
        public_key: B64URL.encode(secret.public_key().to_encoded_point(false).as_bytes()),
    }
}

/// A fresh VAPID private key in `VAPID_PRIVATE_KEY` form (use [`generate_vapid_keys`] to also
/// get the public key).
pub fn vapid_private_key_b64url() -> String {
    generate_vapid_keys().private_key
}

/// The secrets the service keeps for one subscription.
struct SubscriptionKeys {
    private_key: Vec<u8>,
    public_key: Vec<u8>,
    auth: [u8; 16],
    /// RFC 8292 §4.2 restricted subscription: only this VAPID key may push.
    application_server_key: Option<Vec<u8>>,
}

struct Shared {
    origin: String,
    subscriptions: Mutex<HashMap<String, SubscriptionKeys>>,
    responses: Mutex<HashMap<String, PushResponse>>,
    received: Mutex<Vec<ReceivedPush>>,
    rejected: Mutex<Vec<String>>,
    count: watch::Sender<usize>,
}

/// A Web Push service on `127.0.0.1`, stopped when dropped.
pub struct PushService {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl PushService {
    /// Binds `127.0.0.1:0` and starts serving `POST /push/{name}` on the current tokio runtime.
    pub async fn start() -> anyhow::Result<PushService> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            origin: format!("http://{addr}"),
            subscriptions: Mutex::new(HashMap::new()),
            responses: Mutex::new(HashMap::new()),
            received: Mutex::new(Vec::new()),
            rejected: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
        });
        let app = Router::new().route("/push/{name}", post(push)).with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "test push service stopped");
            }
        });
        tracing::debug!(%addr, "test push service listening");
        Ok(PushService { addr, shared, task })
    }

    /// The address the service listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the endpoints' origin, which the VAPID `aud` claim must equal.
    pub fn origin(&self) -> String {
        self.shared.origin.clone()
    }

    /// Creates (or replaces) subscription `name` with a fresh key pair and auth secret and returns
    /// what a browser would hand the application server. Any VAPID key may push to it.
    /// `name` must be non-empty and use only `A-Z a-z 0-9 - . _ ~`.
    pub fn subscribe(&self, name: &str) -> Subscription {
        self.create(name, None)
    }

    /// Like [`subscribe`](Self::subscribe), but restricted to one sender as browsers do with
    /// `applicationServerKey` (RFC 8292 §4.2): pushes whose `k=` differs answer `403`.
    /// `application_server_key` is a base64url public key ([`VapidKeyPair::public_key`]).
    pub fn subscribe_restricted(&self, name: &str, application_server_key: &str) -> Subscription {
        let key = decode_b64url(application_server_key).expect("application_server_key must be base64url");
        assert!(
            key.len() == 65 && key[0] == 4,
            "application_server_key must be an uncompressed P-256 point"
        );
        self.create(name, Some(key))
    }

    fn create(&self, name: &str, application_server_key: Option<Vec<u8>>) -> Subscription {
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)),
            "subscription name {name:?} must be a plain URL path segment"
        );
        let secret = SecretKey::random(&mut OsRng);
        let public_key = secret.public_key().to_encoded_point(false).as_bytes().to_vec();
        let mut auth = [0u8; 16];
        OsRng.fill_bytes(&mut auth);
        let subscription = Subscription {
            endpoint: format!("{}/push/{name}", self.shared.origin),
            p256dh: B64URL.encode(&public_key),
            auth: B64URL.encode(auth),
        };
        let keys = SubscriptionKeys {
            private_key: secret.to_bytes().to_vec(),
            public_key,
            auth,
            application_server_key,
        };
        self.shared.subscriptions.lock().unwrap().insert(name.to_owned(), keys);
        subscription
    }

    /// Scripts the answer to valid requests for subscription `name` until changed (also before
    /// the subscription exists). Invalid requests are still refused with 400/401/403/413.
    pub fn respond_with(&self, name: &str, response: PushResponse) {
        self.shared.responses.lock().unwrap().insert(name.to_owned(), response);
    }

    /// Every valid request so far, in arrival order, whatever was answered.
    pub fn received(&self) -> Vec<ReceivedPush> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The valid requests answered `201 Created`.
    pub fn delivered(&self) -> Vec<ReceivedPush> {
        self.received().into_iter().filter(|p| p.status == 201).collect()
    }

    /// Why each invalid request was refused (`"<name>: <status> <reason>"`); assert it is empty.
    pub fn rejected(&self) -> Vec<String> {
        self.shared.rejected.lock().unwrap().clone()
    }

    /// Waits (woken on each valid request, no polling) until at least `n` valid requests arrived
    /// and returns [`received`](Self::received); errors after `timeout` listing rejections.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<ReceivedPush>> {
        match wait_for_count(self.shared.count.subscribe(), n, timeout).await {
            Ok(()) => Ok(self.received()),
            Err(got) => anyhow::bail!(
                "timed out after {timeout:?} waiting for {n} valid push request(s); got {got}; rejected: {:?}",
                self.rejected()
            ),
        }
    }
}

impl Drop for PushService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a request was refused.
struct Refusal {
    status: StatusCode,
    reason: String,
}

fn refuse(status: StatusCode, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
    }
}

/// An autopush-style error body, which web-push's `parse_response` understands.
fn error_response(status: StatusCode, message: &str, extra: Option<(header::HeaderName, String)>) -> Response {
    let body = serde_json::json!({
        "code": status.as_u16(),
        "errno": 999,
        "error": status.canonical_reason().unwrap_or(""),
        "message": message,
    });
    let mut response = (status, axum::Json(body)).into_response();
    if let Some((name, value)) = extra {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_str(&value).expect("ASCII header"));
    }
    response
}

async fn push(State(shared): State<Arc<Shared>>, Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let checked = check(&shared, &name, &headers, &body);
    let mut push = match checked {
        Ok(push) => push,
        Err(refusal) => {
            tracing::info!(subscription = %name, status = %refusal.status, reason = %refusal.reason, "test push service refused a request");
            shared
                .rejected
                .lock()
                .unwrap()
                .push(format!("{name}: {} {}", refusal.status.as_u16(), refusal.reason));
            return error_response(refusal.status, &refusal.reason, None);
        }
    };
    let scripted = shared.responses.lock().unwrap().get(&name).copied().unwrap_or_default();
    push.status = scripted.status().as_u16();
    let id = {
        let mut received = shared.received.lock().unwrap();
        received.push(push);
        received.len()
    };
    shared.count.send_replace(id);
    match scripted {
        PushResponse::Created => (StatusCode::CREATED, [(header::LOCATION, format!("{}/message/{id}", shared.origin))]).into_response(),
        PushResponse::TooMany { retry_after_secs } => error_response(
            scripted.status(),
            "too many requests (scripted)",
            Some((header::RETRY_AFTER, retry_after_secs.to_string())),
        ),
        other => error_response(other.status(), "scripted response", None),
    }
}

/// Everything a push service verifies, in the order it would.
fn check(shared: &Shared, name: &str, headers: &HeaderMap, body: &[u8]) -> Result<ReceivedPush, Refusal> {
    let subscriptions = shared.subscriptions.lock().unwrap();
    let keys = subscriptions
        .get(name)
        .ok_or_else(|| refuse(StatusCode::NOT_FOUND, "no such subscription (never subscribed)"))?;

    let (vapid_sub, vapid_public_key, k) = check_vapid(headers, &shared.origin)?;
    if let Some(required) = &keys.application_server_key
        && *required != k
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "VAPID key differs from the subscription's applicationServerKey",
        ));
    }

    let ttl = header_str(headers, "ttl")?
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "missing TTL header"))?
        .trim()
        .parse::<u32>()
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "TTL must be a non-negative integer"))?;
    let urgency = header_str(headers, "urgency")?.map(|u| u.trim().to_owned());
    if let Some(u) = &urgency
        && !matches!(u.as_str(), "very-low" | "low" | "normal" | "high")
    {
        return Err(refuse(StatusCode::BAD_REQUEST, format!("invalid Urgency {u:?}")));
    }
    let topic = header_str(headers, "topic")?.map(str::to_owned);
    if let Some(t) = &topic
        && (t.is_empty() || t.len() > 32 || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("invalid Topic {t:?} (1-32 base64url characters)"),
        ));
    }

    let payload = if body.is_empty() {
        Vec::new()
    } else {
        let encoding = header_str(headers, "content-encoding")?.unwrap_or("");
        if !encoding.trim().eq_ignore_ascii_case("aes128gcm") {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("Content-Encoding must be aes128gcm, got {encoding:?}"),
            ));
        }
        if body.len() > MAX_PAYLOAD {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body of {} bytes exceeds {MAX_PAYLOAD}", body.len()),
            ));
        }
        let components = ece::EcKeyComponents::new(keys.private_key.clone(), keys.public_key.clone());
        ece::decrypt(&components, &keys.auth, body)
            .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("cannot decrypt aes128gcm body: {e}")))?
    };

    Ok(ReceivedPush {
        subscription: name.to_owned(),
        payload,
        ttl,
        urgency,
        topic,
        vapid_sub,
        vapid_public_key,
        status: 0,
    })
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, Refusal> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| refuse(StatusCode::BAD_REQUEST, format!("{name} header is not ASCII")))
        })
        .transpose()
}

/// Checks `Authorization: vapid t=<JWT>, k=<key>` (RFC 8292); returns `(sub, k as sent, k bytes)`.
fn check_vapid(headers: &HeaderMap, origin: &str) -> Result<(String, String, Vec<u8>), Refusal> {
    let unauthorized = |reason: String| refuse(StatusCode::UNAUTHORIZED, reason);
    let value = header_str(headers, "authorization")?.ok_or_else(|| unauthorized("missing Authorization header".into()))?;
    let (scheme, params) = value.trim().split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("vapid") {
        return Err(unauthorized(format!("Authorization scheme must be vapid, got {scheme:?}")));
    }
    let (mut token, mut key) = (None, None);
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("t", v)) => token = Some(v.trim()),
            Some(("k", v)) => key = Some(v.trim()),
            _ => {}
        }
    }
    let token = token.ok_or_else(|| unauthorized("Authorization lacks t=<JWT>".into()))?;
    let key_text = key.ok_or_else(|| unauthorized("Authorization lacks k=<public key>".into()))?;
    let k = decode_b64url(key_text).ok_or_else(|| unauthorized("k is not base64url".into()))?;
    if k.len() != 65 || k[0] != 4 {
        return Err(unauthorized(format!(
            "k must be an uncompressed P-256 point (65 bytes), got {} bytes",
            k.len()
        )));
    }
    let verifying_key = VerifyingKey::from_sec1_bytes(&k).map_err(|_| unauthorized("k is not a P-256 point".into()))?;

    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(unauthorized("t is not a JWS compact token (three dot-separated parts)".into()));
    };
    let jose: serde_json::Value = decode_b64url(header_b64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| unauthorized("JWT header is not base64url JSON".into()))?;
    if jose["alg"] != "ES256" {
        return Err(unauthorized(format!("JWT alg must be ES256, got {}", jose["alg"])));
    }
    if let Some(typ) = jose.get("typ")
        && !typ.as_str().is_some_and(|t| t.eq_ignore_ascii_case("JWT"))
    {
        return Err(unauthorized(format!("JWT typ must be JWT, got {typ}")));
    }
    let signature = decode_b64url(signature_b64)
        .filter(|s| s.len() == 64)
        .and_then(|s| Signature::from_slice(&s).ok())
        .ok_or_else(|| unauthorized("JWT signature must be a 64-byte r||s ES256 signature".into()))?;
    verifying_key
        .verify(format!("{header_b64}.{claims_b64}").as_bytes(), &signature)
        .map_err(|_| unauthorized("JWT signature does not verify under k".into()))?;

    let claims: serde_json::Value = decode_b64url(claims_b64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| unauthorized("JWT claims are not base64url JSON".into()))?;
    let aud = claims["aud"].as_str().ok_or_else(|| unauthorized("JWT has no aud claim".into()))?;
    if aud != origin {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("JWT aud {aud:?} is not the endpoint origin {origin:?}"),
        ));
    }
    let exp = claims["exp"]
        .as_f64()
        .ok_or_else(|| unauthorized("JWT has no numeric exp claim".into()))?;
    let now = chrono::Utc::now().timestamp() as f64;
    if exp <= now {
        return Err(unauthorized(format!("JWT expired (exp {exp}, now {now})")));
    }
    if exp > now + MAX_JWT_LIFETIME_SECS as f64 {
        return Err(unauthorized(format!("JWT exp {exp} is more than 24h after now {now}")));
    }
    let sub = claims["sub"].as_str().unwrap_or("");
    if !(sub.starts_with("mailto:") || sub.starts_with("https:")) {
        return Err(unauthorized(format!(
            "JWT sub must be a mailto: or https: contact, got {:?}",
            claims["sub"]
        )));
    }
    Ok((sub.to_owned(), key_text.to_owned(), k))
}

/// base64url, tolerating trailing `=` padding.
fn decode_b64url(text: &str) -> Option<Vec<u8>> {
    B64URL.decode(text.trim_end_matches('=')).ok()
}

#[cfg(test)]
mod tests {
    use web_push::{
        ContentEncoding, SubscriptionInfo, Urgency, VapidSignatureBuilder, WebPushMessageBuilder, request_builder::build_request,
    };

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// Status, headers and body of a push service answer.
    type Reply = (StatusCode, HeaderMap, Vec<u8>);

    /// What a sender does with web-push 0.11, with the claims it chooses.
    fn web_push_request(
        subscription: &Subscription,
        vapid_private_key: &str,
        claims: &[(&'static str, serde_json::Value)],
        payload: &[u8],
    ) -> web_push::WebPushMessage {
        let info = SubscriptionInfo::new(&subscription.endpoint, &subscription.p256dh, &subscription.auth);
        let mut signature = VapidSignatureBuilder::from_base64(vapid_private_key, &info).unwrap();
        for (k, v) in claims {
            signature.add_claim(k, v.clone());
        }
        let mut builder = WebPushMessageBuilder::new(&info);
        builder.set_payload(ContentEncoding::Aes128Gcm, payload);
        builder.set_ttl(3600);
        builder.set_urgency(Urgency::High);
        builder.set_topic("lesson-42".into());
        builder.set_vapid_signature(signature.build().unwrap());
        builder.build().unwrap()
    }

    /// Sends web-push's http 0.2 request with reqwest, optionally editing headers first.
    async fn send(message: web_push::WebPushMessage, edit: impl FnOnce(&mut Vec<(String, String)>)) -> Reply {
        let request = build_request::<Vec<u8>>(message);
        let url = request.uri().to_string();
        let mut headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        edit(&mut headers);
        let mut req = reqwest::Client::new().post(url).body(request.body().clone());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let response = req.send().await.unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let mut out = HeaderMap::new();
        for (k, v) in response.headers() {
            out.insert(
                header::HeaderName::from_bytes(k.as_str().as_bytes()).unwrap(),
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        (status, out, response.bytes().await.unwrap().to_vec())
    }

    fn claims(service: &PushService) -> Vec<(&'static str, serde_json::Value)> {
        vec![("sub", "mailto:ops@school.test".into()), ("aud", service.origin().into())]
    }

    #[tokio::test]
    async fn web_push_message_is_verified_and_decrypted() {
        let service = PushService::start().await.unwrap();
        let sub = service.subscribe("alice");
        assert!(sub.endpoint.starts_with("http://127.0.0.1:") && sub.endpoint.ends_with("/push/alice"));
        assert_eq!(decode_b64url(&sub.p256dh).unwrap().len(), 65);
        assert_eq!(decode_b64url(&sub.auth).unwrap().len(), 16);
        let vapid = generate_vapid_keys();

        let payload = br#"{"title":"Lesson tomorrow","body":"10:00 with Jorg"}"#;
        let (status, headers, _) = send(web_push_request(&sub, &vapid.private_key, &claims(&service), payload), |_| {}).await;
        assert_eq!(status, StatusCode::CREATED, "rejected: {:?}", service.rejected());
        assert!(headers.contains_key(header::LOCATION));

        let got = service.wait_for(1, WAIT).await.unwrap();
        assert_eq!(got.len(), 1);
        let push = &got[0];
        assert_eq!(push.subscription, "alice");
        assert_eq!(push.payload, payload);
        assert_eq!(push.ttl, 3600);
        assert_eq!(push.urgency.as_deref(), Some("high"));
        assert_eq!(push.topic.as_deref(), Some("lesson-42"));
        assert_eq!(push.vapid_sub, "mailto:ops@school.test");
        assert_eq!(push.vapid_public_key, vapid.public_key);
        assert_eq!(push.status, 201);
        assert!(service.rejected().is_empty());
        assert_eq!(service.delivered().len(), 1);
    }

    #[tokio::test]
    async fn generated_vapid_keys_are_a_matching_pair() {
        let keys = generate_vapid_keys();
        assert_eq!(decode_b64url(&keys.private_key).unwrap().len(), 32);
        let public = web_push::VapidSignatureBuilder::from_base64_no_sub(&keys.private_key)
            .unwrap()
            .get_public_key();
        assert_eq!(B64URL.encode(public), keys.public_key);
        assert_eq!(decode_b64url(&vapid_private_key_b64url()).unwrap().len(), 32);
    }

    #[tokio::test]
    async fn web_push_default_audience_lacks_the_port_and_is_refused() {
        let service = PushService::start().await.unwrap();
        let sub = service.subscribe("bob");
        let vapid = generate_vapid_keys();
        let only_sub = vec![("sub", "mailto:ops@school.test".into())];
        let (status, _, _) = send(web_push_request(&sub, &vapid.private_key, &only_sub, b"x"), |_| {}).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let rejected = service.rejected();
        assert_eq!(rejected.len(), 1);
        assert!(rejected[0].contains("aud \"http://127.0.0.1\""), "{rejected:?}");
        assert!(service.received().is_empty());
    }

    #[tokio::test]
    async fn invalid_requests_are_refused_with_reasons() {
        let service = PushService::start().await.unwrap();
        let sub = service.subscribe("carol");
        let vapid = generate_vapid_keys();
        let other = generate_vapid_keys();
        let now = chrono::Utc::now().timestamp();
        let good = || web_push_request(&sub, &vapid.private_key, &claims(&service), b"hello");
        let with_claims = |extra: Vec<(&'static str, serde_json::Value)>| {
            let mut c = claims(&service);
            c.extend(extra);
            web_push_request(&sub, &vapid.private_key, &c, b"hello")
        };
        let set = |name: &'static str, value: String| {
            move |h: &mut Vec<(String, String)>| {
                h.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
                h.push((name.to_owned(), value));
            }
        };

        // Signature by one key presented with another key.
        let auth = {
            let request = build_request::<Vec<u8>>(good());
            request.headers()["authorization"].to_str().unwrap().to_owned()
        };
        let swapped = auth.replace(&vapid.public_key, &other.public_key);
        let cases: Vec<(StatusCode, &str, Reply)> = vec![
            (
                StatusCode::UNAUTHORIZED,
                "does not verify",
                send(good(), set("authorization", swapped)).await,
            ),
            (
                StatusCode::UNAUTHORIZED,
                "missing Authorization",
                send(good(), |h| h.retain(|(k, _)| k != "authorization")).await,
            ),
            (
                StatusCode::UNAUTHORIZED,
                "scheme",
                send(good(), set("authorization", auth.replacen("vapid", "WebPush", 1))).await,
            ),
            (
                StatusCode::UNAUTHORIZED,
                "expired",
                send(with_claims(vec![("exp", (now - 5).into())]), |_| {}).await,
            ),
            (
                StatusCode::UNAUTHORIZED,
                "24h",
                send(with_claims(vec![("exp", (now + 25 * 3600).into())]), |_| {}).await,
            ),
            (
                StatusCode::UNAUTHORIZED,
                "sub",
                send(with_claims(vec![("sub", "ops@school.test".into())]), |_| {}).await,
            ),
            (
                StatusCode::FORBIDDEN,
                "aud",
                send(with_claims(vec![("aud", "https://127.0.0.1".into())]), |_| {}).await,
            ),
            (
                StatusCode::BAD_REQUEST,
                "missing TTL",
                send(good(), |h| h.retain(|(k, _)| k != "ttl")).await,
            ),
            (
                StatusCode::BAD_REQUEST,
                "Urgency",
                send(good(), set("urgency", "urgent".into())).await,
            ),
            (
                StatusCode::BAD_REQUEST,
                "Content-Encoding",
                send(good(), set("content-encoding", "aesgcm".into())).await,
            ),
        ];
        for (want, reason, (status, _, body)) in &cases {
            assert_eq!(status, want, "case {reason}: {}", String::from_utf8_lossy(body));
            let json: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert!(json["message"].as_str().unwrap().contains(reason), "case {reason}: {json}");
        }

        // Encrypted for another subscription's keys: undecryptable here.
        let dave = service.subscribe("dave");
        let mut for_dave = web_push_request(&dave, &vapid.private_key, &claims(&service), b"hello");
        for_dave.endpoint = sub.endpoint.parse().unwrap();
        let (status, _, body) = send(for_dave, |_| {}).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(String::from_utf8_lossy(&body).contains("decrypt"));

        // Unknown subscription.
        let mut unknown = good();
        unknown.endpoint = format!("{}/push/nobody", service.origin()).parse().unwrap();
        assert_eq!(send(unknown, |_| {}).await.0, StatusCode::NOT_FOUND);

        assert_eq!(service.rejected().len(), cases.len() + 2, "{:?}", service.rejected());
        assert!(service.received().is_empty());
        // The valid request still goes through.
        assert_eq!(send(good(), |_| {}).await.0, StatusCode::CREATED);
    }

    #[tokio::test]
    async fn restricted_subscription_accepts_only_its_application_server_key() {
        let service = PushService::start().await.unwrap();
        let vapid = generate_vapid_keys();
        let sub = service.subscribe_restricted("erin", &vapid.public_key);
        let other = generate_vapid_keys();
        let (status, _, _) = send(web_push_request(&sub, &other.private_key, &claims(&service), b"x"), |_| {}).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _, _) = send(web_push_request(&sub, &vapid.private_key, &claims(&service), b"x"), |_| {}).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(service.rejected().len(), 1);
    }

    #[tokio::test]
    async fn scripted_responses_persist_until_changed() {
        let service = PushService::start().await.unwrap();
        let sub = service.subscribe("frank");
        let vapid = generate_vapid_keys();
        let msg = || web_push_request(&sub, &vapid.private_key, &claims(&service), b"x");

        service.respond_with("frank", PushResponse::Gone);
        for _ in 0..2 {
            let (status, _, body) = send(msg(), |_| {}).await;
            assert_eq!(status, StatusCode::GONE);
            // The autopush-style body web-push's `parse_response` decodes into `ErrorInfo`.
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["code"], 410);
            assert!(json["errno"].is_u64() && json["error"].is_string() && json["message"].is_string());
        }
        service.respond_with("frank", PushResponse::NotFound);
        assert_eq!(send(msg(), |_| {}).await.0, StatusCode::NOT_FOUND);
        service.respond_with("frank", PushResponse::TooMany { retry_after_secs: 7 });
        let (status, headers, _) = send(msg(), |_| {}).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::RETRY_AFTER], "7");
        service.respond_with("frank", PushResponse::ServerError);
        assert_eq!(send(msg(), |_| {}).await.0, StatusCode::INTERNAL_SERVER_ERROR);
        service.respond_with("frank", PushResponse::Created);
        assert_eq!(send(msg(), |_| {}).await.0, StatusCode::CREATED);

        let got = service.wait_for(6, WAIT).await.unwrap();
        let statuses: Vec<u16> = got.iter().map(|p| p.status).collect();
        assert_eq!(statuses, [410, 410, 404, 429, 500, 201]);
        assert_eq!(service.delivered().len(), 1);
        assert!(service.rejected().is_empty());
    }

    #[tokio::test]
    async fn wait_for_times_out_listing_rejections() {
        let service = PushService::start().await.unwrap();
        let err = service.wait_for(1, Duration::from_millis(50)).await.unwrap_err();
        assert!(err.to_string().contains("waiting for 1 valid push"), "{err}");
    }
}
