//! The channels: the only code that talks to providers. Each send returns [`Sent`] or a
//! [`SendError`] classified once, where the failure happens: transient (retry, maybe after a
//! `Retry-After`) or permanent (no retry; a `first` policy moves down its list). The delivery
//! module reads that classification and nothing else.
//!
//! A provider's answer is untrusted input (a push endpoint is chosen by whoever registered the
//! device): every HTTP exchange is time-limited as a whole ([`PROVIDER_TIMEOUT`], connecting to
//! the last byte read) and at most [`MAX_ANSWER_BYTES`] of any answer body are read
//! ([`read_capped`]), success bodies included.

pub mod email;
pub mod outbox;
pub mod push;
pub mod push_encrypt;
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

/// How [`SendError::opted_out`] messages start.
const OPTED_OUT: &str = "the recipient opted out (Twilio 21610)";

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

    /// The provider refused because the recipient opted out (Twilio's 21610): the recorder
    /// suppresses the number as well as failing the delivery.
    pub fn opted_out(message: impl std::fmt::Display) -> Self {
        SendError::permanent(format!("{OPTED_OUT}: {message}"))
    }

    /// Whether this is [`SendError::opted_out`].
    pub fn is_opted_out(&self) -> bool {
        matches!(self, SendError::Permanent { message, .. } if message.starts_with(OPTED_OUT))
    }

    /// The short label for metrics and attempt records.
    pub fn outcome(&self) -> &'static str {
        match self {
            SendError::Transient { .. } => "transient",
            SendError::Permanent { .. } => "permanent",
        }
    }
}

/// The longest `Retry-After` a provider may ask for: one hour, the default `RETRY_MAX_DELAY`.
/// A provider's answer is untrusted input; an absurd value (`Retry-After: 100000000000000`)
/// must not park a delivery for ever nor overflow the time arithmetic that schedules the retry.
/// The delivery module still caps the delay it schedules at the configured `RETRY_MAX_DELAY`;
/// this cap, applied where the header is parsed, is the bound the channels guarantee whatever
/// that setting is.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Parses a `Retry-After` header (seconds or an HTTP date), capped at [`MAX_RETRY_AFTER`].
/// Anything unparsable is ignored (the normal backoff applies).
pub fn parse_retry_after(value: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let v = value?.to_str().ok()?.trim();
    let asked = if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() {
        // More digits than a u64 holds is still "very long": saturate, then cap.
        Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let when = chrono::DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&chrono::Utc);
        // A date in the past means "now"; `signed_duration_since` cannot overflow for the
        // dates chrono parses.
        when.signed_duration_since(chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO)
    };
    Some(asked.min(MAX_RETRY_AFTER))
}

/// The longest a whole exchange with an HTTP provider may take: connecting, sending, the
/// answer's head and the part of its body that is read. Past it the send is a transient
/// failure ("timed out").
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(15);

/// The most of a provider's answer body that is read; the rest is never received (the
/// connection is dropped).
pub const MAX_ANSWER_BYTES: usize = 8 * 1024;

/// Reads at most `max` bytes of `resp`'s body (chunk by chunk, never more than one chunk past
/// the cap in memory), then drops the response. Returns the bytes read and whether the body
/// was longer. The request's own timeout still bounds the time this takes.
pub async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = max - out.len();
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, true));
        }
        out.extend_from_slice(&chunk);
        if out.len() == max {
            // Exactly full: longer only if anything else comes.
            let more = resp.chunk().await?.is_some_and(|c| !c.is_empty());
            return Ok((out, more));
        }
    }
    Ok((out, false))
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
    fn http_statuses_classify_as_transient_or_permanent_and_numbers_must_be_e164() {
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

    #[test]
    fn retry_after_is_capped() {
        use reqwest::header::HeaderValue;
        let p = |v: &'static str| parse_retry_after(Some(&HeaderValue::from_static(v)));
        assert_eq!(p("30"), Some(Duration::from_secs(30)));
        assert_eq!(p("100000000000000"), Some(MAX_RETRY_AFTER));
        assert_eq!(p("99999999999999999999999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(p("Fri, 31 Dec 9999 23:59:59 GMT"), Some(MAX_RETRY_AFTER));
        assert_eq!(p("Mon, 01 Jan 2001 00:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(p("-5"), None);
        assert_eq!(p("soon"), None);
        assert_eq!(parse_retry_after(None), None);
    }
}
