//! Turning API rows into what a person reads: times in the school's zone, statuses as
//! colours, delivery errors in plain words. Pure functions; the templates escape what these
//! return.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::http::deliveries::DeliveryOut;

/// A time as shown and as machine-readable (`<time datetime=...>`).
#[derive(Debug, Clone, Serialize)]
pub struct Time {
    /// RFC 3339 in UTC.
    pub iso: String,
    /// `Tue 3 Mar 09:00:05`, in the school's zone (the footer names the zone).
    pub text: String,
    /// With the year and the zone's abbreviation, for tooltips.
    pub full: String,
}

/// `t` in `tz`, for people.
pub fn time(t: DateTime<Utc>, tz: Tz) -> Time {
    Time {
        iso: t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        text: t.with_timezone(&tz).format("%a %-d %b %H:%M:%S").to_string(),
        full: t.with_timezone(&tz).format("%a %-d %b %Y %H:%M:%S %Z").to_string(),
    }
}

/// An optional time, for people.
pub fn time_opt(t: Option<DateTime<Utc>>, tz: Tz) -> Option<Time> {
    t.map(|t| time(t, tz))
}

/// The CSS class of a status badge: `bad` (needs an operator), `ok` (done), `wait` (on its way)
/// or `muted` (nothing will happen).
pub fn status_class(status: &str) -> &'static str {
    match status {
        "failed" | "dead" | "undelivered" => "bad",
        "sent" | "delivered" | "done" | "completed" | "confirmed" => "ok",
        "pending" | "sending" | "retrying" | "processing" | "scheduled" | "running" => "wait",
        _ => "muted",
    }
}

/// What a provider error means, in a sentence; `None` when the raw error says it best.
pub fn hint(error: &str) -> Option<&'static str> {
    let e = error.to_ascii_lowercase();
    let rules: [(&[&str], &str); 12] = [
        (&["smtp server refused"], "The mail server refused this message."),
        (&["smtp server deferred"], "The mail server asked us to try again later."),
        (&["is not a valid address"], "The email address is not valid."),
        (&["not an e.164 phone number", "21211"], "The phone number is not valid."),
        (&["21610"], "The recipient has opted out of SMS (replied STOP)."),
        (&["21614"], "This number cannot receive SMS."),
        (
            &["push device no longer active", "http 404", "http 410"],
            "The device's push subscription has expired or was removed.",
        ),
        (&["push payload is"], "The push message is too large."),
        (&["template:"], "The message could not be written from its template."),
        (&["timed out", "timeout"], "The provider did not answer in time."),
        (
            &["connection refused", "connection reset", "dns", "unreachable"],
            "The provider could not be reached.",
        ),
        (
            &["the worker stopped mid-send"],
            "The worker stopped while sending; the provider may have accepted it.",
        ),
    ];
    rules
        .iter()
        .find(|(needles, _)| needles.iter().any(|n| e.contains(n)))
        .map(|(_, said)| *said)
}

/// The last error of a delivery in plain words: a headline and the provider's own text.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Explained {
    /// What happened, for people.
    pub headline: String,
    /// The recorded error, when there is one.
    pub detail: Option<String>,
}

/// Explains a delivery's state and last error.
pub fn explain(d: &DeliveryOut, tz: Tz) -> Option<Explained> {
    let error = d.last_error.clone().filter(|e| !e.trim().is_empty());
    // What the error means (or `otherwise`), then what happens next.
    let said = |otherwise: &str, next: &str| {
        let what = error.as_deref().and_then(hint).unwrap_or(otherwise);
        format!("{what} {next}")
    };
    let headline = match d.status.as_str() {
        "failed" => said("A permanent failure.", "Not retried on its own."),
        "dead" => said("It kept failing.", &format!("Gave up after {} attempts.", d.attempts)),
        "retrying" => {
            let when = d.next_attempt_at.map(|t| format!(" at {}", time(t, tz).text)).unwrap_or_default();
            said("A temporary failure.", &format!("Trying again{when}."))
        }
        "skipped" => {
            return Some(Explained {
                headline: format!("Not sent: {}.", d.skip_reason.as_deref().unwrap_or("no reason recorded")),
                detail: error,
            });
        }
        "cancelled" => "Not sent: the booking changed first.".to_owned(),
        "pending" => match d.next_attempt_at {
            Some(t) if t > Utc::now() => format!("Held until {} (quiet hours or not yet due).", time(t, tz).text),
            _ => "Waiting for a worker.".to_owned(),
        },
        _ => match &error {
            Some(_) => said("An earlier attempt failed.", "").trim_end().to_owned(),
            None => return None,
        },
    };
    Some(Explained { headline, detail: error })
}

/// Where a delivery went, briefly: the address or number, or the push service's host.
pub fn target(d: &DeliveryOut) -> String {
    if d.channel == "push" {
        let host = url::Url::parse(&d.target).ok().and_then(|u| u.host_str().map(str::to_owned));
        match (d.device_id, host) {
            (Some(id), Some(h)) => format!("device #{id} via {h}"),
            (Some(id), None) => format!("device #{id}"),
            (None, Some(h)) => format!("push via {h}"),
            (None, None) => "no device".to_owned(),
        }
    } else {
        d.target.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(status: &str, error: Option<&str>) -> DeliveryOut {
        let now = Utc::now();
        DeliveryOut {
            id: 1,
            notification_id: 1,
            kind: "booking_confirmed".into(),
            user_id: Some(1),
            channel: "email".into(),
            target: "a@b.test".into(),
            device_id: None,
            status: status.into(),
            attempts: 3,
            max_attempts: 8,
            last_error: error.map(str::to_owned),
            skip_reason: Some("quiet hours".into()),
            provider_message_id: None,
            next_attempt_at: None,
            sent_at: None,
            delivered_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn errors_in_plain_words() {
        let tz = chrono_tz::Europe::London;
        let e = explain(&delivery("failed", Some("SMTP server refused the message (550): no such user")), tz).unwrap();
        assert_eq!(e.headline, "The mail server refused this message. Not retried on its own.");
        assert_eq!(e.detail.as_deref(), Some("SMTP server refused the message (550): no such user"));
        assert_eq!(
            explain(&delivery("dead", Some("connection refused")), tz).unwrap().headline,
            "The provider could not be reached. Gave up after 3 attempts."
        );
        assert_eq!(
            explain(&delivery("failed", Some("odd")), tz).unwrap().headline,
            "A permanent failure. Not retried on its own."
        );
        assert_eq!(explain(&delivery("skipped", None), tz).unwrap().headline, "Not sent: quiet hours.");
        assert_eq!(explain(&delivery("sent", None), tz), None);
        assert!(explain(&delivery("sent", Some("HTTP 503: busy")), tz).is_some());
        assert_eq!(
            hint("HTTP 400: code 21610"),
            Some("The recipient has opted out of SMS (replied STOP).")
        );
        assert_eq!(hint("something new"), None);
    }

    #[test]
    fn push_targets_are_short() {
        let mut d = delivery("sent", None);
        d.channel = "push".into();
        d.target = "https://fcm.googleapis.com/fcm/send/abc".into();
        d.device_id = Some(4);
        assert_eq!(target(&d), "device #4 via fcm.googleapis.com");
    }
}
