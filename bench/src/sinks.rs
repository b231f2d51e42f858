//! Fast loopback sinks the worker processes send to, so that the sink is never what is measured:
//!
//! - an SMTP sink on plain tokio that accepts every message, answers pipelined commands in one
//!   write, and serves any number of connections;
//! - one HTTP server (axum on the bench's multi-threaded runtime) for the Twilio-compatible SMS
//!   API (`201 {"sid": ...}`) and for Web Push (`201` with a `Location`; the payload is not
//!   decrypted).
//!
//! Each sink counts what it accepted.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::IntoResponse,
    routing::post,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter},
    net::{TcpListener, TcpStream},
};

/// Messages accepted by the sinks.
#[derive(Debug, Default)]
pub struct Counts {
    /// Emails (SMTP `DATA` completed).
    pub email: AtomicU64,
    /// SMS API calls.
    pub sms: AtomicU64,
    /// Push messages.
    pub push: AtomicU64,
}

impl Counts {
    /// (email, sms, push).
    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.email.load(Ordering::Relaxed),
            self.sms.load(Ordering::Relaxed),
            self.push.load(Ordering::Relaxed),
        )
    }

    /// Sets every count back to zero.
    pub fn reset(&self) {
        self.email.store(0, Ordering::Relaxed);
        self.sms.store(0, Ordering::Relaxed);
        self.push.store(0, Ordering::Relaxed);
    }
}

/// The running sinks.
pub struct Sinks {
    /// SMTP address.
    pub smtp: SocketAddr,
    /// HTTP address (SMS API and push service).
    pub http: SocketAddr,
    /// What they accepted.
    pub counts: Arc<Counts>,
}

impl Sinks {
    /// Binds both sinks on `127.0.0.1` and serves them on the current runtime until the process
    /// ends.
    pub async fn start() -> anyhow::Result<Sinks> {
        let counts = Arc::new(Counts::default());
        let smtp_listener = TcpListener::bind("127.0.0.1:0").await?;
        let smtp = smtp_listener.local_addr()?;
        let c = counts.clone();
        tokio::spawn(async move {
            loop {
                match smtp_listener.accept().await {
                    Ok((stream, _)) => {
                        let c = c.clone();
                        tokio::spawn(async move {
                            if let Err(e) = smtp_session(stream, c).await {
                                tracing::debug!(error = %e, "smtp sink session ended");
                            }
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "smtp sink accept failed"),
                }
            }
        });

        let http_listener = TcpListener::bind("127.0.0.1:0").await?;
        let http = http_listener.local_addr()?;
        let app = Router::new()
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(sms))
            .route("/push/{name}", post(push))
            .with_state(counts.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(http_listener, app).await {
                tracing::warn!(error = %e, "http sink stopped");
            }
        });
        Ok(Sinks { smtp, http, counts })
    }

    /// `smtp://127.0.0.1:PORT` (plain, no authentication).
    pub fn smtp_url(&self) -> String {
        format!("smtp://{}", self.smtp)
    }

    /// `http://127.0.0.1:PORT`: base of the SMS API and origin of the push endpoints.
    pub fn http_base(&self) -> String {
        format!("http://{}", self.http)
    }
}

async fn sms(State(counts): State<Arc<Counts>>, Path(_sid): Path<String>, _body: Bytes) -> impl IntoResponse {
    let n = counts.sms.fetch_add(1, Ordering::Relaxed) + 1;
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        format!(r#"{{"sid":"SM{n:032x}","status":"queued"}}"#),
    )
}

async fn push(State(counts): State<Arc<Counts>>, Path(name): Path<String>, _body: Bytes) -> impl IntoResponse {
    let n = counts.push.fetch_add(1, Ordering::Relaxed) + 1;
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/message/{name}/{n}")) {
        headers.insert(header::LOCATION, v);
    }
    (StatusCode::CREATED, headers)
}

/// One SMTP session: every command is accepted. Replies are buffered and written when the
/// client has nothing more in flight, so pipelined commands get one write.
async fn smtp_session(stream: TcpStream, counts: Arc<Counts>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, r);
    let mut writer = BufWriter::with_capacity(16 * 1024, w);
    writer.write_all(b"220 bench-sink ESMTP ready\r\n").await?;
    writer.flush().await?;
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let verb: String = line.iter().take(4).map(|b| b.to_ascii_uppercase() as char).collect();
        match verb.as_str() {
            "EHLO" => {
                writer
                    .write_all(b"250-bench-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 52428800\r\n")
                    .await?
            }
            "HELO" => writer.write_all(b"250 bench-sink\r\n").await?,
            "MAIL" | "RCPT" | "RSET" | "NOOP" => writer.write_all(b"250 OK\r\n").await?,
            "DATA" => {
                writer.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                writer.flush().await?;
                loop {
                    line.clear();
                    if reader.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                }
                let n = counts.email.fetch_add(1, Ordering::Relaxed) + 1;
                writer.write_all(format!("250 OK queued as B{n}\r\n").as_bytes()).await?;
            }
            "QUIT" => {
                writer.write_all(b"221 bye\r\n").await?;
                writer.flush().await?;
                return Ok(());
            }
            _ => writer.write_all(b"502 command not implemented\r\n").await?,
        }
        if reader.buffer().is_empty() {
            writer.flush().await?;
        }
    }
}
