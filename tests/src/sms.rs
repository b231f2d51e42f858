//! A Twilio-compatible Messages API on loopback ([`SmsApi`]) that end-to-end tests point
//! Dashlight's SMS sender at (`SMS_API_BASE_URL` = [`SmsApi::base_url`]). It owns the SMS side of
//! the tests: `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` with form fields `To`,
//! `From`, `Body` and HTTP basic auth `AccountSid:AuthToken`, Twilio-shaped success and error
//! bodies, scripted failures ([`SmsResponse`]), and a record of every request ([`ReceivedSms`]).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use rand_core::{OsRng, RngCore};
use tokio::{sync::watch, task::JoinHandle};

use crate::wait::wait_for_count;

/// Account SID used by [`SmsApi::start`].
pub const DEFAULT_ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
/// Auth token used by [`SmsApi::start`].
pub const DEFAULT_AUTH_TOKEN: &str = "test-auth-token";

/// How the API answers authenticated, well-formed requests; switch at any time with
/// [`SmsApi::set_response`] (all recipients) or [`SmsApi::set_response_for`] (one recipient).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmsResponse {
    /// `201 Created` with a Twilio message resource (`status: "queued"`).
    #[default]
    Ok,
    /// `429` with Twilio error 20429 and `Retry-After: retry_after_secs`.
    RateLimited {
        /// Seconds sent in the `Retry-After` header.
        retry_after_secs: u64,
    },
    /// `500` with Twilio error 20500.
    ServerError,
    /// `400` with Twilio error 21211 (invalid `To` number).
    InvalidNumber,
    /// `400` with Twilio error 21610 (recipient replied STOP).
    Unsubscribed,
}

/// One request to the Messages endpoint, recorded whatever was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSms {
    /// The `{AccountSid}` path segment.
    pub account_sid: String,
    /// Form field `To` (empty if missing).
    pub to: String,
    /// Form field `From` (empty if missing).
    pub from: String,
    /// Form field `Body` (empty if missing).
    pub body: String,
    /// Form field `StatusCallback`: where Twilio would post the message's status (empty if
    /// missing).
    pub status_callback: String,
    /// The message SID (`SM` + 32 hex digits) answered with a `201`; `None` when refused.
    pub sid: Option<String>,
    /// Whether basic auth matched the configured SID and token and the path's SID.
    pub auth_ok: bool,
    /// The HTTP status answered.
    pub status: u16,
    /// When the request arrived.
    pub at: Instant,
}

struct Shared {
    account_sid: String,
    auth_token: String,
    response: Mutex<SmsResponse>,
    per_recipient: Mutex<HashMap<String, SmsResponse>>,
    received: Mutex<Vec<ReceivedSms>>,
    count: watch::Sender<usize>,
    /// The next this-many well-formed requests are answered 429 with `Retry-After` of the
    /// second value, before any scripted answer.
    limited: Mutex<(usize, u64)>,
}

/// A Twilio-compatible SMS API on `127.0.0.1`, stopped when dropped.
pub struct SmsApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl SmsApi {
    /// Starts with [`DEFAULT_ACCOUNT_SID`] / [`DEFAULT_AUTH_TOKEN`].
    pub async fn start() -> anyhow::Result<SmsApi> {
        Self::start_with(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN).await
    }

    /// Binds `127.0.0.1:0` and serves the Messages API, requiring basic auth `sid:token`.
    pub async fn start_with(sid: &str, token: &str) -> anyhow::Result<SmsApi> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            account_sid: sid.to_owned(),
            auth_token: token.to_owned(),
            response: Mutex::new(SmsResponse::Ok),
            per_recipient: Mutex::new(HashMap::new()),
            received: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
            limited: Mutex::new((0, 0)),
        });
        let app = Router::new()
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(create_message))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "test SMS API stopped");
            }
        });
        tracing::debug!(%addr, "test SMS API listening");
        Ok(SmsApi { addr, shared, task })
    }

    /// The address the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash), the value for `SMS_API_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The full Messages URL for the configured account.
    pub fn messages_url(&self) -> String {
        format!("{}/2010-04-01/Accounts/{}/Messages.json", self.base_url(), self.shared.account_sid)
    }

    /// The account SID requests must use.
    pub fn account_sid(&self) -> &str {
        &self.shared.account_sid
    }

    /// The auth token requests must use.
    pub fn auth_token(&self) -> &str {
        &self.shared.auth_token
    }

    /// Scripts the answer for every recipient without a [`set_response_for`](Self::set_response_for)
    /// override, until changed.
    pub fn set_response(&self, response: SmsResponse) {
        *self.shared.response.lock().unwrap() = response;
    }

    /// Scripts the answer for messages to `to` (exact `To` value), until changed; overrides
    /// [`set_response`](Self::set_response).
    pub fn set_response_for(&self, to: &str, response: SmsResponse) {
        self.shared.per_recipient.lock().unwrap().insert(to.to_owned(), response);
    }

    /// Answers the next `n` well-formed requests (whoever sends them) `429` with
    /// `Retry-After: retry_after_secs`, then goes back to the scripted answers: a provider's quota
    /// hit once.
    pub fn rate_limit_next(&self, n: usize, retry_after_secs: u64) {
        *self.shared.limited.lock().unwrap() = (n, retry_after_secs);
    }

    /// Every request so far, in arrival order, including refused ones.
    pub fn received(&self) -> Vec<ReceivedSms> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The requests answered `201` (messages Twilio would have queued).
    pub fn accepted(&self) -> Vec<ReceivedSms> {
        self.received().into_iter().filter(|m| m.status == 201).collect()
    }

    /// Waits (woken on each request, no polling) until at least `n` requests arrived and returns
    /// [`received`](Self::received); errors after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<ReceivedSms>> {
        match wait_for_count(self.shared.count.subscribe(), n, timeout).await {
            Ok(()) => Ok(self.received()),
            Err(got) => anyhow::bail!(
                "timed out after {timeout:?} waiting for {n} SMS request(s); got {got}: {:?}",
                self.received()
            ),
        }
    }
}

impl Drop for SmsApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Twilio REST error body.
fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = serde_json::json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, axum::Json(body)).into_response()
}

fn authorized(shared: &Shared, path_sid: &str, headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((scheme, credentials)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Some(decoded) = B64.decode(credentials.trim()).ok().and_then(|b| String::from_utf8(b).ok()) else {
        return false;
    };
    decoded.split_once(':') == Some((shared.account_sid.as_str(), shared.auth_token.as_str())) && path_sid == shared.account_sid
}

async fn create_message(State(shared): State<Arc<Shared>>, Path(account_sid): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let at = Instant::now();
    let auth_ok = authorized(&shared, &account_sid, &headers);
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    let (to, from, text, status_callback) = (field("To"), field("From"), field("Body"), field("StatusCallback"));

    let mut sid = None;
    let response = if !auth_ok {
        twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate")
    } else if to.is_empty() {
        twilio_error(StatusCode::BAD_REQUEST, 21604, "A 'To' phone number is required.")
    } else if from.is_empty() && !form.contains_key("MessagingServiceSid") {
        twilio_error(StatusCode::BAD_REQUEST, 21603, "A 'From' phone number is required.")
    } else if text.is_empty() && !form.contains_key("MediaUrl") {
        twilio_error(StatusCode::BAD_REQUEST, 21602, "Message body is required.")
    } else {
        let limited = {
            let mut l = shared.limited.lock().unwrap();
            (l.0 > 0).then(|| {
                l.0 -= 1;
                SmsResponse::RateLimited { retry_after_secs: l.1 }
            })
        };
        let scripted = limited.unwrap_or_else(|| {
            shared
                .per_recipient
                .lock()
                .unwrap()
                .get(&to)
                .copied()
                .unwrap_or_else(|| *shared.response.lock().unwrap())
        });
        match scripted {
            SmsResponse::Ok => {
                let message_sid = new_message_sid();
                let response = created(&account_sid, &message_sid, &to, &from, &text);
                sid = Some(message_sid);
                response
            }
            SmsResponse::RateLimited { retry_after_secs } => {
                let mut response = twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
                response.headers_mut().insert(header::RETRY_AFTER, retry_after_secs.into());
                response
            }
            SmsResponse::ServerError => twilio_error(StatusCode::INTERNAL_SERVER_ERROR, 20500, "Internal Server Error"),
            SmsResponse::InvalidNumber => twilio_error(StatusCode::BAD_REQUEST, 21211, &format!("Invalid 'To' Phone Number: {to}")),
            SmsResponse::Unsubscribed => twilio_error(StatusCode::BAD_REQUEST, 21610, "Attempt to send to unsubscribed recipient"),
        }
    };

    let record = ReceivedSms {
        account_sid,
        to,
        from,
        body: text,
        status_callback,
        sid,
        auth_ok,
        status: response.status().as_u16(),
        at,
    };
    tracing::debug!(to = %record.to, status = record.status, "test SMS API request");
    let n = {
        let mut received = shared.received.lock().unwrap();
        received.push(record);
        received.len()
    };
    shared.count.send_replace(n);
    response
}

/// `X-Twilio-Signature` as Twilio's documentation ("Webhooks security") defines it: the
/// base64 HMAC-SHA1, keyed with the auth token, of the full URL Twilio calls followed by each
/// POST parameter, sorted by name, as its name immediately followed by its value.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut data = url.to_owned();
    for (name, value) in sorted {
        data.push_str(name);
        data.push_str(value);
    }
    B64.encode(hmac_sha1_compact::HMAC::mac(data.as_bytes(), auth_token.as_bytes()))
}

/// Posts `params` to `base + path` as Twilio does: form-encoded, signed for
/// `public_base + path` with `auth_token` (the admin API checks against `PUBLIC_BASE_URL`).
pub async fn post_signed(
    http: &reqwest::Client,
    base: &str,
    public_base: &str,
    path: &str,
    auth_token: &str,
    params: &[(&str, &str)],
) -> reqwest::Response {
    let signature = twilio_signature(auth_token, &format!("{public_base}{path}"), params);
    http.post(format!("{base}{path}"))
        .header("X-Twilio-Signature", signature)
        .form(params)
        .send()
        .await
        .expect("request")
}

fn new_message_sid() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("SM{hex}")
}

/// A Twilio Message resource as returned by `POST .../Messages.json`.
fn created(account_sid: &str, sid: &str, to: &str, from: &str, body: &str) -> Response {
    let now = chrono::Utc::now().to_rfc2822();
    let json = serde_json::json!({
        "account_sid": account_sid,
        "api_version": "2010-04-01",
        "body": body,
        "date_created": now,
        "date_sent": null,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": from,
        "messaging_service_sid": null,
        "num_media": "0",
        "num_segments": "1",
        "price": null,
        "price_unit": "USD",
        "sid": sid,
        "status": "queued",
        "subresource_uris": { "media": format!("/2010-04-01/Accounts/{account_sid}/Messages/{sid}/Media.json") },
        "to": to,
        "uri": format!("/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json"),
    });
    (StatusCode::CREATED, axum::Json(json)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    async fn post(api: &SmsApi, user: &str, pass: &str, form: &[(&str, &str)]) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/2010-04-01/Accounts/{user}/Messages.json", api.base_url()))
            .basic_auth(user, Some(pass))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    fn message<'a>(to: &'a str, body: &'a str) -> [(&'a str, &'a str); 3] {
        [("To", to), ("From", "+15005550006"), ("Body", body)]
    }

    #[tokio::test]
    async fn accepts_a_message_like_twilio() {
        let api = SmsApi::start_with("ACtest", "tok").await.unwrap();
        let response = post(&api, "ACtest", "tok", &message("+491701234567", "Lesson at 10:00 — see you")).await;
        assert_eq!(response.status(), 201);
        let json: serde_json::Value = response.json().await.unwrap();
        let sid = json["sid"].as_str().unwrap().to_owned();
        assert!(
            sid.starts_with("SM") && sid.len() == 34 && sid[2..].bytes().all(|b| b.is_ascii_hexdigit()),
            "{sid}"
        );
        assert_eq!(json["status"], "queued");
        assert_eq!(json["to"], "+491701234567");
        assert_eq!(json["from"], "+15005550006");
        assert_eq!(json["body"], "Lesson at 10:00 — see you");
        assert_eq!(json["account_sid"], "ACtest");

        let got = api.wait_for(1, WAIT).await.unwrap();
        assert_eq!(got[0].to, "+491701234567");
        assert_eq!(got[0].body, "Lesson at 10:00 — see you");
        assert_eq!(got[0].sid.as_deref(), Some(sid.as_str()));
        assert!(got[0].auth_ok);
        assert_eq!(got[0].status, 201);
        assert_eq!(api.accepted().len(), 1);
    }

    #[tokio::test]
    async fn refuses_bad_credentials_and_records_them() {
        let api = SmsApi::start().await.unwrap();
        let sid = api.account_sid().to_owned();
        let response = post(&api, &sid, "wrong", &message("+491701234567", "x")).await;
        assert_eq!(response.status(), 401);
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["code"], 20003);
        // Right credentials, wrong account in the path.
        let response = reqwest::Client::new()
            .post(format!("{}/2010-04-01/Accounts/ACother/Messages.json", api.base_url()))
            .basic_auth(&sid, Some(api.auth_token()))
            .form(&message("+491701234567", "x"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        // No auth at all.
        let response = reqwest::Client::new()
            .post(api.messages_url())
            .form(&message("+49", "x"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);

        let got = api.wait_for(3, WAIT).await.unwrap();
        assert!(got.iter().all(|m| !m.auth_ok && m.status == 401 && m.sid.is_none()));
        assert!(api.accepted().is_empty());
    }

    #[tokio::test]
    async fn scripted_errors_match_twilio_and_can_be_switched() {
        let api = SmsApi::start().await.unwrap();
        let (sid, token) = (api.account_sid().to_owned(), api.auth_token().to_owned());
        let send = |to: &'static str| {
            let (api, sid, token) = (&api, sid.clone(), token.clone());
            async move { post(api, &sid, &token, &message(to, "x")).await }
        };

        api.set_response(SmsResponse::RateLimited { retry_after_secs: 3 });
        let response = send("+4917000001").await;
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "3");
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            json,
            serde_json::json!({"code":20429,"message":"Too Many Requests","more_info":"https://www.twilio.com/docs/errors/20429","status":429})
        );

        api.set_response(SmsResponse::ServerError);
        assert_eq!(send("+4917000001").await.status(), 500);

        api.set_response(SmsResponse::InvalidNumber);
        let response = send("+4917000001").await;
        assert_eq!(response.status(), 400);
        assert_eq!(response.json::<serde_json::Value>().await.unwrap()["code"], 21211);

        api.set_response(SmsResponse::Ok);
        api.set_response_for("+4917000002", SmsResponse::Unsubscribed);
        let response = send("+4917000002").await;
        assert_eq!(response.status(), 400);
        assert_eq!(response.json::<serde_json::Value>().await.unwrap()["code"], 21610);
        assert_eq!(send("+4917000001").await.status(), 201);

        let got = api.wait_for(5, WAIT).await.unwrap();
        let statuses: Vec<u16> = got.iter().map(|m| m.status).collect();
        assert_eq!(statuses, [429, 500, 400, 400, 201]);
        assert!(got.iter().all(|m| m.auth_ok));
        assert!(got.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[tokio::test]
    async fn missing_fields_are_refused_with_twilio_codes() {
        let api = SmsApi::start().await.unwrap();
        let (sid, token) = (api.account_sid().to_owned(), api.auth_token().to_owned());
        let response = post(&api, &sid, &token, &[("From", "+1"), ("Body", "x")]).await;
        assert_eq!(response.json::<serde_json::Value>().await.unwrap()["code"], 21604);
        let response = post(&api, &sid, &token, &[("To", "+1"), ("Body", "x")]).await;
        assert_eq!(response.json::<serde_json::Value>().await.unwrap()["code"], 21603);
        let response = post(&api, &sid, &token, &[("To", "+1"), ("From", "+2")]).await;
        assert_eq!(response.json::<serde_json::Value>().await.unwrap()["code"], 21602);
        assert_eq!(api.received().len(), 3);
    }

    #[tokio::test]
    async fn wait_for_times_out() {
        let api = SmsApi::start().await.unwrap();
        let err = api.wait_for(1, Duration::from_millis(50)).await.unwrap_err();
        assert!(err.to_string().contains("waiting for 1 SMS"), "{err}");
    }
}
