//! SMS through a Twilio-compatible Messages API:
//! `POST {base}/2010-04-01/Accounts/{sid}/Messages.json` with `To`, `From`, `Body`, HTTP basic
//! auth `SID:TOKEN`, and `StatusCallback` = `PUBLIC_BASE_URL/hooks/sms/status` so the provider
//! reports `delivered` / `undelivered` later (docs/hearing-back.md). The returned `sid`
//! is the provider message id. Error 21610 (the number texted STOP to the provider) is a
//! permanent failure that also suppresses the number ([`SendError::opted_out`]).
//!
//! SMS are billed per segment, so a body longer than `SMS_MAX_SEGMENTS` segments is cut, with
//! an ellipsis, before it is sent ([`limit_segments`]). Segments follow GSM 03.38: a body made
//! only of GSM-7 characters is 160 septets in one segment or 153 per segment when
//! concatenated, the extension characters (`^{}\[~]|€` and form feed) counting two; any other
//! character makes the whole body UCS-2: 70 UTF-16 units in one segment, 67 per segment
//! concatenated. An escape pair or a surrogate pair is never split across segments.

use dashlight_core::config::{DEFAULT_SMS_MAX_SEGMENTS, SmsConfig};
use serde::Deserialize;

use super::{MAX_ANSWER_BYTES, PROVIDER_TIMEOUT, SendError, Sent, is_e164, outbox::Outbox, parse_retry_after, read_capped};

/// Where SMS go.
#[derive(Debug, Clone)]
pub enum SmsSender {
    /// A Twilio-compatible API.
    Api {
        /// Settings (holds the token).
        config: SmsConfig,
        /// Shared HTTP client.
        client: reqwest::Client,
        /// `PUBLIC_BASE_URL/hooks/sms/status`: where the provider posts status callbacks.
        status_callback: String,
    },
    /// No provider configured.
    Outbox(Outbox),
}

#[derive(Deserialize)]
struct TwilioOk {
    sid: Option<String>,
}

#[derive(Deserialize)]
struct TwilioErr {
    code: Option<i64>,
    message: Option<String>,
}

/// Twilio error codes that no retry can fix: invalid number, unsubscribed, not SMS-capable, ...
const PERMANENT_CODES: [i64; 6] = [21211, 21610, 21614, 21612, 21408, 21606];

impl SmsSender {
    /// Sends `body` to `to` (E.164).
    pub async fn send(&self, delivery_id: i64, to: &str, body: &str) -> Result<Sent, SendError> {
        if !is_e164(to) {
            return Err(SendError::permanent(format!("{to:?} is not an E.164 phone number")));
        }
        match self {
            SmsSender::Outbox(o) => {
                // No provider settings: the default limit, so the outbox shows what would be sent.
                let body = limit_segments(body, DEFAULT_SMS_MAX_SEGMENTS);
                o.write("sms", delivery_id, "txt", format!("To: {to}\n\n{body}\n").as_bytes()).await
            }
            SmsSender::Api {
                config,
                client,
                status_callback,
            } => {
                let body = limit_segments(body, config.max_segments).into_owned();
                let body = body.as_str();
                let url = format!("{}/2010-04-01/Accounts/{}/Messages.json", config.api_base_url, config.account_sid);
                let resp = client
                    .post(&url)
                    .basic_auth(&config.account_sid, Some(&config.auth_token))
                    .form(&[
                        ("To", to),
                        ("From", config.from.as_str()),
                        ("Body", body),
                        ("StatusCallback", status_callback.as_str()),
                    ])
                    .timeout(PROVIDER_TIMEOUT)
                    .send()
                    .await
                    .map_err(|e| SendError::from_reqwest(&e))?;
                let status = resp.status().as_u16();
                let retry_after = parse_retry_after(resp.headers().get(reqwest::header::RETRY_AFTER));
                // At most a few KB of the answer: Twilio's is well under; anything longer is not
                // a Twilio answer and is not read further.
                let (bytes, cut) = match read_capped(resp, MAX_ANSWER_BYTES).await {
                    Ok(read) => read,
                    // The provider accepted the message but its answer did not arrive in time:
                    // retrying could send it twice, but not retrying could lose it; the answer's
                    // status decides, as for any answer without a readable body.
                    Err(e) if (200..300).contains(&status) => {
                        tracing::warn!(error = %super::error_chain(&e), "SMS provider's answer body could not be read; the message was accepted");
                        (Vec::new(), false)
                    }
                    Err(e) => return Err(SendError::from_reqwest(&e)),
                };
                if (200..300).contains(&status) {
                    let ok: TwilioOk = serde_json::from_slice(&bytes).unwrap_or(TwilioOk { sid: None });
                    return Ok(Sent {
                        provider_message_id: ok.sid.filter(|s| s.len() <= 64),
                    });
                }
                let err: Option<TwilioErr> = serde_json::from_slice(&bytes).ok();
                let code = err.as_ref().and_then(|e| e.code);
                let detail = match &err {
                    Some(TwilioErr {
                        code: Some(c),
                        message: Some(m),
                    }) => format!("SMS provider error {c}: {m}"),
                    _ => {
                        let text: String = String::from_utf8_lossy(&bytes)
                            .chars()
                            .filter(|c| !c.is_control())
                            .take(200)
                            .collect();
                        if cut {
                            format!("{text}… (answer longer than {MAX_ANSWER_BYTES} bytes, not read further)")
                        } else {
                            text
                        }
                    }
                };
                if code == Some(21610) {
                    return Err(SendError::opted_out(format!("HTTP {status}: {detail}")));
                }
                if code.is_some_and(|c| PERMANENT_CODES.contains(&c)) {
                    return Err(SendError::permanent(format!("HTTP {status}: {detail}")));
                }
                if code == Some(20429) {
                    return Err(SendError::Transient {
                        message: format!("HTTP {status}: {detail}"),
                        retry_after,
                    });
                }
                Err(SendError::from_http_status(status, retry_after, &detail))
            }
        }
    }
}

/// GSM 03.38 basic character set (one septet each).
const GSM7_BASIC: &str =
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// GSM 03.38 extension table (an escape and the character: two septets each).
const GSM7_EXTENSION: &str = "^{}\\[~]|€\u{c}";

/// Septets of `c` in GSM-7, or `None` when it has no GSM-7 form.
fn gsm7_septets(c: char) -> Option<usize> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// The encoding of an SMS body and the number of segments it takes.
pub fn segments(text: &str) -> (&'static str, u32) {
    let gsm: Option<Vec<usize>> = text.chars().map(gsm7_septets).collect();
    let (name, units, single, multi): (&'static str, Vec<usize>, usize, usize) = match gsm {
        Some(units) => ("GSM-7", units, 160, 153),
        None => ("UCS-2", text.chars().map(char::len_utf16).collect(), 70, 67),
    };
    let total: usize = units.iter().sum();
    if total <= single {
        return (name, 1);
    }
    // Greedy packing: a character whose units do not fit starts the next segment.
    let (mut count, mut used) = (1u32, 0usize);
    for u in units {
        if used + u > multi {
            count += 1;
            used = 0;
        }
        used += u;
    }
    (name, count)
}

/// `body` cut to at most `max_segments` segments, ending with an ellipsis when cut (`...` for a
/// GSM-7 body, which a `…` would turn into UCS-2; `…` for a UCS-2 one).
pub fn limit_segments(body: &str, max_segments: u32) -> std::borrow::Cow<'_, str> {
    let max_segments = max_segments.max(1);
    let (encoding, n) = segments(body);
    if n <= max_segments {
        return std::borrow::Cow::Borrowed(body);
    }
    let ellipsis = if encoding == "GSM-7" { "..." } else { "\u{2026}" };
    // No segment holds more than 160 characters: start from a prefix that long, then shorten.
    let mut chars: Vec<char> = body.chars().take(160 * max_segments as usize).collect();
    loop {
        let mut candidate: String = chars.iter().collect::<String>().trim_end().to_owned();
        candidate.push_str(ellipsis);
        if segments(&candidate).1 <= max_segments || chars.is_empty() {
            return std::borrow::Cow::Owned(candidate);
        }
        chars.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_counts() {
        assert_eq!(segments(&"a".repeat(160)), ("GSM-7", 1));
        assert_eq!(segments(&"a".repeat(161)), ("GSM-7", 2));
        assert_eq!(segments(&"a".repeat(306)), ("GSM-7", 2));
        assert_eq!(segments(&"a".repeat(307)), ("GSM-7", 3));
        // Extension characters count two septets.
        assert_eq!(segments(&"€".repeat(80)), ("GSM-7", 1));
        assert_eq!(segments(&"€".repeat(81)), ("GSM-7", 2));
        // One non-GSM character makes it UCS-2.
        assert_eq!(segments(&format!("ł{}", "a".repeat(69))), ("UCS-2", 1));
        assert_eq!(segments(&format!("ł{}", "a".repeat(70))), ("UCS-2", 2));
        assert_eq!(segments(&"ł".repeat(134)), ("UCS-2", 2));
        assert_eq!(segments(&"ł".repeat(135)), ("UCS-2", 3));
    }

    #[test]
    fn long_bodies_are_cut_with_an_ellipsis() {
        let short = "Your lesson is at 09:00.";
        assert_eq!(limit_segments(short, 1), short);
        let long = "word ".repeat(200);
        let cut = limit_segments(&long, 3);
        assert!(cut.ends_with("..."), "{cut}");
        assert_eq!(segments(&cut), ("GSM-7", 3));
        assert!(cut.len() > 400, "uses the room it has: {}", cut.len());
        let one = limit_segments(&long, 1);
        assert!(one.chars().count() <= 160 && one.ends_with("..."));
        let polish = "zażółć gęślą jaźń ".repeat(30);
        let cut = limit_segments(&polish, 2);
        assert!(cut.ends_with('\u{2026}'), "{cut}");
        assert_eq!(segments(&cut), ("UCS-2", 2));
        let emoji = "😀".repeat(200);
        let cut = limit_segments(&emoji, 1);
        assert_eq!(segments(&cut), ("UCS-2", 1));
    }

    #[tokio::test]
    async fn a_huge_provider_answer_is_read_only_in_part() {
        use std::sync::atomic::{AtomicU64, Ordering};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = std::sync::Arc::new(AtomicU64::new(0));
        let counter = written.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let _ = tokio::time::timeout(std::time::Duration::from_millis(300), conn.read(&mut buf)).await;
                    let len: u64 = 4 << 30;
                    let head = format!("HTTP/1.1 503 Busy\r\ncontent-length: {len}\r\n\r\n{{\"code\": 20500, \"message\": \"");
                    if conn.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'x'; 64 * 1024];
                    while conn.write_all(&chunk).await.is_ok() {
                        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        let sender = SmsSender::Api {
            config: SmsConfig {
                api_base_url: format!("http://{addr}"),
                account_sid: "ACtest".into(),
                auth_token: "token".into(),
                from: "+447700900000".into(),
                max_segments: 3,
            },
            client: reqwest::Client::new(),
            status_callback: "http://127.0.0.1/hooks/sms/status".into(),
        };
        let started = std::time::Instant::now();
        let e = sender.send(1, "+447700900123", "hello").await.unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
        assert!(matches!(e, SendError::Transient { .. }), "{e:?}");
        assert!(
            e.to_string().contains("HTTP 503") && e.to_string().contains("not read further"),
            "{e}"
        );
        let sent = written.load(Ordering::Relaxed);
        assert!(sent < 64 << 20, "{sent} bytes were taken from the provider");
    }
}
