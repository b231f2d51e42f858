//! The admin API as every suite runs it: [`spawn_api`] serves it on `127.0.0.1:0` until
//! [`RunningApi::stop`], which checks that it ended cleanly; [`RunningApi`] sends requests with
//! the test configuration's bearer token ([`TOKEN`]) and reads each answer as a [`Reply`], whose
//! `expect*` methods assert it. Also the lesson times the suites book ([`lesson_start`]).
//!
//! It owns neither a database nor the protocol peers: a suite pairs it with a
//! [`TestDb`](crate::db::TestDb) or a [`World`](crate::world::World), whose configuration
//! ([`TestDb::config`](crate::db::TestDb::config)) carries [`TOKEN`].

use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use dashlight_core::{Clock, Config};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::{sync::oneshot, task::JoinHandle};

/// The bearer token of the test configuration (at least 32 characters, as the admin API asks of
/// a real one).
pub const TOKEN: &str = dashlight_core::config::TEST_ADMIN_TOKEN;

/// A response: status, content type, the JSON body (`Null` when not JSON) and the raw text.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Content type (empty when none).
    pub content_type: String,
    /// The JSON body, `Null` when not JSON.
    pub body: Value,
    /// The raw body (lossy UTF-8).
    pub text: String,
}

impl Reply {
    /// Reads a response.
    pub async fn read(res: reqwest::Response) -> Reply {
        let status = res.status();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = res.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            content_type,
            body,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// Asserts the status, returning the JSON body.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.text);
        self.body
    }

    /// Asserts an error response: the status, a JSON body with the error `code`, a non-empty
    /// message and, if given, the `field`. Returns the body.
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str, field: Option<&str>) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.text);
        assert!(
            self.content_type.starts_with("application/json"),
            "error bodies are JSON, got {:?}",
            self.content_type
        );
        assert_eq!(self.body["error"], code, "error code; body: {}", self.body);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "a message; body: {}",
            self.body
        );
        if let Some(f) = field {
            assert_eq!(self.body["field"], f, "field; body: {}", self.body);
        }
        self.body
    }
}

/// The admin API serving on `127.0.0.1:0`, with a client for it. Stop it with
/// [`RunningApi::stop`]; dropped without, it stops when its runtime ends.
pub struct RunningApi {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client (30 s timeout).
    pub http: reqwest::Client,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Serves the admin API (`dashlight_admin_api::serve`) with `config`, `pool` and `clock` on a
/// free loopback port.
pub async fn spawn_api(config: &Config, pool: sqlx::PgPool, clock: Clock) -> RunningApi {
    // The server's logs show with a failing test (RUST_LOG to see more).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = oneshot::channel::<()>();
    let config = config.clone();
    let task = tokio::spawn(async move {
        dashlight_admin_api::serve(&config, pool, clock, listener, async move {
            let _ = rx.await;
        })
        .await
    });
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    RunningApi {
        base,
        http,
        stop: tx,
        task,
    }
}

impl RunningApi {
    /// Sends a request with the token and an optional JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        Reply::read(req.send().await.expect("request")).await
    }

    /// GET with the token.
    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    /// GET without any token (the calendar feed, the health checks).
    pub async fn get_open(&self, path: &str) -> Reply {
        Reply::read(self.http.get(format!("{}{path}", self.base)).send().await.expect("request")).await
    }

    /// POST JSON with the token.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }

    /// PUT JSON with the token.
    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(body)).await
    }

    /// POST a raw body with the token and, if given, a content type.
    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: impl Into<reqwest::Body>) -> Reply {
        let mut req = self.http.post(format!("{}{path}", self.base)).bearer_auth(TOKEN).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        Reply::read(req.send().await.expect("request")).await
    }

    /// Stops the server and checks that it ended within 10 s, without a panic or an error.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the API stops within 10 s")
            .expect("the API task did not panic")
            .expect("the API ended without error");
    }
}

/// A whole hour `days` ahead: no reminder falls due during a test.
pub fn lesson_start(days: i64) -> DateTime<Utc> {
    (Utc::now() + chrono::Duration::days(days))
        .duration_trunc(chrono::Duration::hours(1))
        .expect("trunc")
}
