//! The settings structs a [`super::Config`] is made of (SMTP, SMS, push, the HTTP server, the
//! providers' rate limits), each `Debug` redacting its secrets, and the defaults of the
//! worker's and the SMS channel's sizes.

use std::time::Duration;

/// SMTP settings: `SMTP_URL` in lettre's URL form.
#[derive(Clone)]
pub struct SmtpConfig {
    /// The URL, e.g. `smtp://user:pass@host:587?tls=required`. Holds a password: never log it.
    pub url: String,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SmtpConfig { url: <redacted> }")
    }
}

/// Twilio-compatible SMS API settings.
#[derive(Clone)]
pub struct SmsConfig {
    /// Base URL, e.g. `https://api.twilio.com`.
    pub api_base_url: String,
    /// Account SID (HTTP basic user).
    pub account_sid: String,
    /// Auth token (HTTP basic password). Never logged.
    pub auth_token: String,
    /// Sender number (E.164) or alphanumeric sender id.
    pub from: String,
    /// `SMS_MAX_SEGMENTS`: the most segments one SMS may use; longer bodies are cut with an
    /// ellipsis (SMS are billed per segment).
    pub max_segments: u32,
}

impl std::fmt::Debug for SmsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsConfig")
            .field("api_base_url", &self.api_base_url)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"<redacted>")
            .field("from", &self.from)
            .field("max_segments", &self.max_segments)
            .finish()
    }
}

/// Web Push (VAPID) settings.
#[derive(Clone)]
pub struct PushConfig {
    /// base64url raw P-256 private key. Never logged.
    pub vapid_private_key: String,
    /// `mailto:` or `https:` contact.
    pub vapid_subject: String,
}

impl std::fmt::Debug for PushConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConfig")
            .field("vapid_private_key", &"<redacted>")
            .field("vapid_subject", &self.vapid_subject)
            .finish()
    }
}

/// The admin API's HTTP server settings (docs/security.md).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpServer {
    /// `HTTP_HEADER_READ_TIMEOUT`: a client must send a request's whole header within this
    /// (from the connection's start or the end of the previous response); else it is closed.
    pub header_read_timeout: Duration,
    /// `HTTP_IDLE_TIMEOUT`: a connection on which nothing is read or written for this long is
    /// closed.
    pub idle_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS`: connections served at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// `TRUSTED_PROXIES`: the reverse proxies (CIDRs) whose `X-Forwarded-For` names the client;
    /// empty (the default): the TCP peer is the client and the header is ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for HttpServer {
    fn default() -> Self {
        HttpServer {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Providers' quotas: messages per second per channel across all workers; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateLimits {
    /// `EMAIL_RATE_LIMIT`.
    pub email: Option<f64>,
    /// `SMS_RATE_LIMIT`.
    pub sms: Option<f64>,
    /// `PUSH_RATE_LIMIT`.
    pub push: Option<f64>,
}

impl RateLimits {
    /// The limit of `channel`.
    pub fn of(&self, channel: crate::kinds::Channel) -> Option<f64> {
        match channel {
            crate::kinds::Channel::Email => self.email,
            crate::kinds::Channel::Sms => self.sms,
            crate::kinds::Channel::Push => self.push,
        }
    }
}

/// The default of `SMS_MAX_SEGMENTS`.
pub const DEFAULT_SMS_MAX_SEGMENTS: u32 = 3;

/// `WORKER_CONCURRENCY` when unset: sends in flight per worker process. A send's slot is taken
/// when its chunk is claimed and freed when the send ends, so slots × (claim + send time) bounds
/// a worker's rate: at 128, the burst left a third of the two cores idle (BENCHMARKS.md, session 5).
pub const DEFAULT_WORKER_CONCURRENCY: usize = 256;

/// `WORKER_BATCH_SIZE` when unset: notification jobs per fetch; a worker holds at most two
/// batches unacknowledged.
pub const DEFAULT_WORKER_BATCH_SIZE: usize = 2000;
