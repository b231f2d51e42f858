//! The channels: the only code that talks to providers. Each send returns [`Sent`] or a
//! [`SendError`] classified once, where the failure happens: transient (retry, maybe after a
//! `Retry-After`) or permanent (no retry; a `first` policy moves down its list). The delivery
//! module reads that classification and nothing else.

pub mod email;
pub mod outbox;
pub mod push;
pub mod sms;

use std::time::Duration;

/// A successful hand-over to the provider.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    /// The provider's id for the message (SMTP Message-ID, Twilio `sid`, push `Location`).
    pub provider_message_id: Option<String>,
}

/// A failed send, classified.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: connection refused/reset, timeouts, SMTP 4xx, HTTP 5xx and 429.
    #[error("{message}")]
    Transient {
        /// What happened, in plain words.
        message: String,
        /// The provider's `Retry-After`, when it gave one.
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help: SMTP 5xx, invalid or unsubscribed number, expired subscription,
    /// payload too large, unrenderable template.
    #[error("{message}")]
    Permanent {
        /// What happened, in plain words.
        message: String,
        /// The push subscription is gone for good (404/410): disable the device.
        subscription_gone: bool,
    },
}

impl SendError {
    /// A transient failure without `Retry-After`.
    pub fn transient(message: impl Into<String>) -> Self {
        SendError::Transient {
            message: message.into(),
            retry_after: None,
        }
    }

    /// A permanent failure.
    pub fn permanent(message: impl Into<String>) -> Self {
        SendError::Permanent {
            message: message.into(),
            subscription_gone: false,
        }
    }

    /// Classifies an HTTP failure the same way for every HTTP provider.
    pub fn from_http_status(status: u16, retry_after: Option<Duration>, detail: &str) -> Self {
        let message = format!("HTTP {status}: {detail}");
        match status {
            429 | 500..=599 | 408 => SendError::Transient { message, retry_after },
            // Credentials rejected: an operator must fix the configuration; keep retrying until
            // attempts run out so nothing is lost meanwhile.
            401 | 403 => SendError::Transient { message, retry_after },
            404 | 410 => SendError::Permanent {
                message,
                subscription_gone: true,
            },
            _ => SendError::Permanent {
                message,
                subscription_gone: false,
            },
        }
    }

    /// Classifies a transport error of reqwest (no HTTP answer): always transient.
    pub fn from_reqwest(e: &reqwest::Error) -> Self {
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else {
            "request failed"
        };
        SendError::transient(format!("{what}: {}", error_chain(e)))
    }

    /// The short label for metrics and attempt records.
    pub fn outcome(&self) -> &'static str {
        match self {
            SendError::Transient { .. } => "transient",
            SendError::Permanent { .. } => "permanent",
        }
    }
}

/// Parses a `Retry-After` header (seconds or an HTTP date).
pub fn parse_retry_after(value: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let v = value?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    (when.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok()
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

/// Is `s` an E.164 number (`+` and 7 to 15 digits, no leading zero)?
pub fn is_e164(s: &str) -> bool {
    let Some(d) = s.strip_prefix('+') else { return false };
    (7..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(matches!(SendError::from_http_status(429, None, ""), SendError::Transient { .. }));
        assert!(matches!(SendError::from_http_status(503, None, ""), SendError::Transient { .. }));
        assert!(matches!(
            SendError::from_http_status(410, None, ""),
            SendError::Permanent {
                subscription_gone: true,
                ..
            }
        ));
        assert!(matches!(
            SendError::from_http_status(413, None, ""),
            SendError::Permanent {
                subscription_gone: false,
                ..
            }
        ));
        assert!(is_e164("+447700900123"));
        assert!(!is_e164("07700900123"));
        assert!(!is_e164("+0123456789"));
    }
}
