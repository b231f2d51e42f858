//! Mail that comes back (docs/hearing-back.md): what the inbound email hook
//! (`/hooks/email/inbound`) receives from an MTA pipe or an inbound-mail webhook, as raw RFC 5322
//! bytes. The one writer of `inbound_emails`; it acts only through the owners of what changes:
//! [`crate::receipts::report`] (the worker's recorder then moves the delivery),
//! [`crate::suppressions::suppress`] and [`crate::people::set_email_opt_out`].
//!
//! - [`analyse`] (no I/O): parses the message with `mail-parser`, finds a signed token in the
//!   addresses it was sent to (`Delivered-To`, `X-Original-To`, `Envelope-To`, `To`, `Cc`, and
//!   for a bounce the returned message's `Return-Path`), verifies it ([`crate::signing`]), reads
//!   an RFC 3464 `message/delivery-status` part ([`parse_delivery_status`]) and recognises
//!   auto-replies (`Auto-Submitted`, `X-Autoreply`, `X-Autorespond`, `Precedence: auto_reply`).
//! - [`receive`]: keeps a record of every message (verdict, size, SHA-256, first kilobyte) and
//!   acts on the ones that mean something, once per distinct message:
//!   - a DSN whose recipient `Action: failed` with a `5.x.x` status: the delivery is reported
//!     `undelivered` (source `email_dsn`, the status and the `Diagnostic-Code`) and its address
//!     suppressed (`bounced`);
//!   - `Action: failed` with a `4.x.x` status (the remote MTA gave up retrying): `undelivered`,
//!     not suppressed (the address itself may be fine);
//!   - `Action: delayed` (a `4.x.x` delay): a note on the delivery only;
//!   - a message to `unsubscribe+<token>@` (the `mailto:` of `List-Unsubscribe`): that kind's
//!     emails off for that user.
//!
//!   Auto-replies, unsigned or forged tokens, unparseable bytes and anything else are recorded
//!   and ignored.
//!
//!   A delivery gets **one bounce verdict** (`bounced` or `failed`): a later bounce for it, even
//!   one that differs by a byte (a replay edited to get past the identical-bytes check), is
//!   recorded as `duplicate` and changes nothing, so it cannot suppress again an address an
//!   operator lifted. A VERP token of a delivery sent more than [`VERP_MAX_AGE_DAYS`] days ago
//!   is ignored (`unknown_delivery`): real bounces come within days.

use mail_parser::{Message, MessageParser, MimeHeaders as _};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use sqlx::PgConnection;

use crate::{
    DomainError,
    kinds::{Channel, Kind},
    people::{self, OptOutSource},
    receipts::{self, ReceiptSource, ReceiptStatus, Report},
    signing::{Key, UNSUBSCRIBE_PREFIX, VERP_PREFIX},
    suppressions::{self, Reason},
};

/// How old (days since the delivery was sent, or created if never sent) a VERP token may be
/// for its bounce to count.
pub const VERP_MAX_AGE_DAYS: i32 = 30;

/// What was made of a message (`inbound_emails.verdict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A hard bounce (`5.x.x`): the delivery is undelivered, the address suppressed.
    Bounced,
    /// The remote MTA gave up with a `4.x.x` status: undelivered, not suppressed.
    Failed,
    /// A delay (`4.x.x`, `Action: delayed`): noted on the delivery.
    Delayed,
    /// A DSN with no failure or delay (a success notice): noted on the delivery.
    DsnOther,
    /// A message to the unsubscribe `mailto:`: that kind turned off on email.
    Unsubscribed,
    /// The same message again: nothing done twice.
    Duplicate,
    /// An auto-reply (out of office, vacation): ignored.
    AutoReply,
    /// No token that verifies (none, forged or for another installation): ignored.
    Unsigned,
    /// A signed token for a delivery or user that no longer exists (or is not an email): ignored.
    UnknownDelivery,
    /// Not a message `mail-parser` can read: ignored.
    Unparseable,
    /// Signed, but neither a DSN nor an unsubscribe (a person replying to the bounce address).
    Other,
}

impl Verdict {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Bounced => "bounced",
            Verdict::Failed => "failed",
            Verdict::Delayed => "delayed",
            Verdict::DsnOther => "dsn_other",
            Verdict::Unsubscribed => "unsubscribed",
            Verdict::Duplicate => "duplicate",
            Verdict::AutoReply => "auto_reply",
            Verdict::Unsigned => "unsigned",
            Verdict::UnknownDelivery => "unknown_delivery",
            Verdict::Unparseable => "unparseable",
            Verdict::Other => "other",
        }
    }

    /// Whether this verdict changes something (and so is done once per distinct message).
    pub fn acts(self) -> bool {
        matches!(
            self,
            Verdict::Bounced | Verdict::Failed | Verdict::Delayed | Verdict::DsnOther | Verdict::Unsubscribed
        )
    }
}

/// One per-recipient group of an RFC 3464 `message/delivery-status` body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DsnRecipient {
    /// `Final-Recipient`, without its address type (`rfc822;`).
    pub final_recipient: Option<String>,
    /// `Original-Recipient`, without its address type.
    pub original_recipient: Option<String>,
    /// `Action`, lower-cased: `failed`, `delayed`, `delivered`, `relayed`, `expanded`.
    pub action: Option<String>,
    /// `Status`, e.g. `5.1.1` (comments dropped).
    pub status: Option<String>,
    /// `Diagnostic-Code`, e.g. `smtp; 550 5.1.1 <a@b>: Recipient address rejected`.
    pub diagnostic_code: Option<String>,
    /// `Remote-MTA`, without its type.
    pub remote_mta: Option<String>,
}

impl DsnRecipient {
    /// The status class: `2`, `4` or `5`.
    pub fn class(&self) -> Option<char> {
        let c = self.status.as_deref()?.chars().next()?;
        matches!(c, '2' | '4' | '5').then_some(c)
    }

    /// The SMTP reply code of the diagnostic (`550`), if it has one.
    pub fn smtp_code(&self) -> Option<String> {
        let d = self.diagnostic_code.as_deref()?;
        let text = d.split_once(';').map(|(_, t)| t).unwrap_or(d).trim_start();
        let code: String = text.chars().take(3).collect();
        (code.len() == 3 && code.chars().all(|c| c.is_ascii_digit()) && !code.starts_with('0')).then_some(code)
    }
}

/// Unfolds header-style lines (continuations start with white space) and splits them into
/// groups at blank lines; each group is its `(lower-cased name, value)` fields.
fn field_groups(text: &str) -> Vec<Vec<(String, String)>> {
    let mut groups = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if !current.is_empty() {
                groups.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = current.last_mut() {
                v.push(' ');
                v.extend(line.trim().chars().filter(|c| !c.is_control()));
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            // Postgres text cannot hold NUL; other control characters are kept out of records.
            let value: String = value.trim().chars().filter(|c| !c.is_control() || *c == '\t').collect();
            current.push((name.trim().to_ascii_lowercase(), value));
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

fn without_type(v: &str) -> String {
    v.split_once(';')
        .map(|(_, a)| a)
        .unwrap_or(v)
        .trim()
        .trim_matches(['<', '>'])
        .to_owned()
}

/// Reads the per-recipient groups of an RFC 3464 `message/delivery-status` body (the
/// per-message group, with `Reporting-MTA`, is skipped: it has no `Action`).
pub fn parse_delivery_status(text: &str) -> Vec<DsnRecipient> {
    let mut out = Vec::new();
    for group in field_groups(text) {
        let mut r = DsnRecipient::default();
        for (name, value) in group {
            match name.as_str() {
                "final-recipient" => r.final_recipient = Some(without_type(&value)),
                "original-recipient" => r.original_recipient = Some(without_type(&value)),
                "action" => r.action = Some(value.split_whitespace().next().unwrap_or_default().to_ascii_lowercase()),
                "status" => r.status = value.split_whitespace().next().map(str::to_owned),
                "diagnostic-code" => r.diagnostic_code = Some(value),
                "remote-mta" => r.remote_mta = Some(without_type(&value)),
                _ => {}
            }
        }
        if r.action.is_some() || r.status.is_some() {
            out.push(r);
        }
    }
    out
}

/// What a signed token in the message's recipients names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A VERP address: the delivery whose email this is about.
    Delivery(i64),
    /// The unsubscribe `mailto:`: a user's emails of one kind.
    Unsubscribe(i64, Kind),
}

/// What [`analyse`] found, before any database is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// The first signed token that verifies, if any.
    pub target: Option<Target>,
    /// Whether a VERP or unsubscribe token was present at all (verified or not).
    pub token_seen: bool,
    /// The DSN's recipients, when the message carries a `message/delivery-status` part.
    pub dsn: Option<Vec<DsnRecipient>>,
    /// Whether it says it is an automatic reply.
    pub auto_reply: bool,
    /// Whether `mail-parser` could read it.
    pub parsed: bool,
}

/// Headers naming where a message was sent, most reliable first: what the MTA added on
/// delivery (postfix's `pipe` with `flags=DO`), then what the sender wrote.
const RECIPIENT_HEADERS: [&str; 6] = ["delivered-to", "x-original-to", "envelope-to", "x-envelope-to", "to", "cc"];

/// Every `bounces+<token>` / `unsubscribe+<token>` in a header value: (is VERP, token).
fn tokens_in(value: &str, out: &mut Vec<(bool, String)>) {
    let lower = value.to_ascii_lowercase();
    for (prefix, verp) in [(VERP_PREFIX, true), (UNSUBSCRIBE_PREFIX, false)] {
        let mut from = 0;
        while let Some(i) = lower[from..].find(prefix) {
            let start = from + i + prefix.len();
            let token: String = value[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .take(crate::signing::MAX_TOKEN_LEN + 1)
                .collect();
            // Only a local part: the token must be followed by `@`.
            if !token.is_empty() && value[start + token.len()..].starts_with('@') {
                out.push((verp, token));
            }
            from = start;
        }
    }
}

fn header_tokens(msg: &Message<'_>, names: &[&str], out: &mut Vec<(bool, String)>) {
    for name in names {
        for (n, v) in msg.headers_raw() {
            if n.eq_ignore_ascii_case(name) {
                tokens_in(v, out);
            }
        }
    }
}

fn is_auto_reply(msg: &Message<'_>) -> bool {
    msg.headers_raw().any(|(n, v)| {
        let v = v.trim().to_ascii_lowercase();
        match n.to_ascii_lowercase().as_str() {
            "auto-submitted" => !v.is_empty() && v != "no",
            "x-autoreply" | "x-autorespond" | "x-auto-response-suppress" => !v.is_empty(),
            "precedence" => v == "auto_reply",
            _ => false,
        }
    })
}

/// Parses a raw message and finds what it is about (see the module's documentation).
pub fn analyse(key: &Key, raw: &[u8]) -> Analysis {
    let Some(msg) = MessageParser::default()
        .parse(raw)
        .filter(|m| !m.parts.is_empty() && !m.headers().is_empty())
    else {
        return Analysis {
            target: None,
            token_seen: false,
            dsn: None,
            auto_reply: false,
            parsed: false,
        };
    };
    let mut tokens = Vec::new();
    header_tokens(&msg, &RECIPIENT_HEADERS, &mut tokens);
    let mut dsn = None;
    for part in &msg.parts {
        let Some(ct) = part.content_type() else { continue };
        let (ctype, sub) = (
            ct.ctype().to_ascii_lowercase(),
            ct.subtype().unwrap_or_default().to_ascii_lowercase(),
        );
        match (ctype.as_str(), sub.as_str()) {
            ("message", "delivery-status" | "global-delivery-status") => {
                let text = String::from_utf8_lossy(part.contents());
                dsn.get_or_insert_with(Vec::new).extend(parse_delivery_status(&text));
            }
            // The returned message (or its headers): its Return-Path is our VERP address.
            ("message", "rfc822" | "global") | ("text", "rfc822-headers") | ("message", "rfc822-headers") => {
                if let Some(returned) = MessageParser::default().parse_headers(part.contents()) {
                    header_tokens(&returned, &["return-path"], &mut tokens);
                }
            }
            _ => {}
        }
    }
    let target = tokens.iter().find_map(|(verp, t)| {
        if *verp {
            key.verp_delivery(t).map(Target::Delivery)
        } else {
            key.unsubscribe_target(t).map(|(u, k)| Target::Unsubscribe(u, k))
        }
    });
    Analysis {
        target,
        token_seen: !tokens.is_empty(),
        dsn,
        auto_reply: is_auto_reply(&msg),
        parsed: true,
    }
}

/// What [`receive`] did with a message.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `inbound_emails.id`.
    pub id: i64,
    /// What was made of it.
    pub verdict: Verdict,
    /// The delivery its VERP address named.
    pub delivery_id: Option<i64>,
    /// The user its unsubscribe address named.
    pub user_id: Option<i64>,
    /// The receipt stored for the delivery.
    pub receipt_id: Option<i64>,
    /// Whether the address was newly suppressed.
    pub suppressed: bool,
    /// The DSN status (`5.1.1`) or the kind turned off.
    pub detail: Option<String>,
}

/// The decision for a message, with what it names.
struct Decision {
    verdict: Verdict,
    delivery_id: Option<i64>,
    user_id: Option<i64>,
    kind: Option<Kind>,
    recipient: Option<DsnRecipient>,
    detail: Option<String>,
}

fn decide(a: &Analysis) -> Decision {
    let mut d = Decision {
        verdict: Verdict::Other,
        delivery_id: None,
        user_id: None,
        kind: None,
        recipient: None,
        detail: None,
    };
    if !a.parsed {
        d.verdict = Verdict::Unparseable;
        return d;
    }
    match (a.target, &a.dsn) {
        (Some(Target::Delivery(id)), Some(recipients)) => {
            d.delivery_id = Some(id);
            let failed = recipients.iter().find(|r| r.action.as_deref() == Some("failed"));
            let delayed = recipients
                .iter()
                .find(|r| r.action.as_deref() == Some("delayed") || (r.action.is_none() && r.class() == Some('4')));
            if let Some(r) = failed {
                d.verdict = if r.class() == Some('5') {
                    Verdict::Bounced
                } else {
                    Verdict::Failed
                };
                d.recipient = Some(r.clone());
            } else if let Some(r) = delayed {
                d.verdict = Verdict::Delayed;
                d.recipient = Some(r.clone());
            } else {
                d.verdict = Verdict::DsnOther;
                d.recipient = recipients.first().cloned();
            }
            d.detail = d.recipient.as_ref().and_then(|r| r.status.clone());
        }
        // A DSN carries `Auto-Submitted` too: one without a signed address is unsigned.
        _ if a.auto_reply && a.dsn.is_none() => d.verdict = Verdict::AutoReply,
        (Some(Target::Unsubscribe(user, kind)), None) => {
            d.verdict = Verdict::Unsubscribed;
            d.user_id = Some(user);
            d.kind = Some(kind);
            d.detail = Some(kind.as_str().to_owned());
        }
        (Some(Target::Delivery(id)), None) => {
            d.verdict = Verdict::Other;
            d.delivery_id = Some(id);
            d.detail = Some("signed, but not a delivery status notification".into());
        }
        (Some(Target::Unsubscribe(user, _)), Some(_)) => {
            d.verdict = Verdict::Other;
            d.user_id = Some(user);
            d.detail = Some("a delivery status notification sent to an unsubscribe address".into());
        }
        (None, _) => {
            d.verdict = Verdict::Unsigned;
            d.detail = Some(if a.token_seen {
                "a VERP or unsubscribe token that does not verify".into()
            } else {
                "no VERP or unsubscribe address among its recipients".into()
            });
        }
    }
    d
}

/// The first kilobyte of a message as text, for the record.
fn head(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(1024)]).replace('\0', "");
    text.chars().take(1024).collect()
}

async fn record(conn: &mut PgConnection, raw: &[u8], sha: &[u8], d: &Decision) -> Result<Option<i64>, sqlx::Error> {
    let size = i32::try_from(raw.len()).unwrap_or(i32::MAX);
    let first_kb = head(raw);
    let detail = d.detail.as_deref().map(|s| s.chars().take(2000).collect::<String>());
    // Only messages that act are unique by their bytes (the partial index): for the others the
    // conflict clause never applies, and every copy is kept.
    sqlx::query_scalar!(
        "INSERT INTO inbound_emails (verdict, size_bytes, sha256, head, delivery_id, user_id, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (sha256) WHERE verdict IN ('bounced', 'failed', 'delayed', 'dsn_other', 'unsubscribed') DO NOTHING
         RETURNING id",
        d.verdict as Verdict,
        size,
        sha,
        first_kb,
        d.delivery_id,
        d.user_id,
        detail,
    )
    .fetch_optional(&mut *conn)
    .await
}

/// Keeps a record of a received message and acts on it (see the module's documentation). Run
/// it in a transaction: the record and what it does commit together. A message that acted
/// before (the same bytes) is recorded as [`Verdict::Duplicate`] and does nothing.
pub async fn receive(conn: &mut PgConnection, key: &Key, raw: &[u8]) -> Result<Outcome, sqlx::Error> {
    let analysis = analyse(key, raw);
    let mut d = decide(&analysis);
    let sha = Sha256::digest(raw).to_vec();

    // What the token names must exist (and be an email) for anything to happen, and to be
    // referred to by the record.
    let mut target_address = None;
    if let Some(id) = d.delivery_id {
        let row: Option<(Channel, String, bool, bool)> = sqlx::query!(
            r#"SELECT channel AS "channel: Channel", target,
                      coalesce(sent_at, created_at) < now() - make_interval(days => $2) AS "expired!",
                      EXISTS (SELECT 1 FROM inbound_emails e WHERE e.delivery_id = d.id AND e.verdict IN ('bounced', 'failed')) AS "bounced!"
               FROM notification_deliveries d WHERE id = $1"#,
            id,
            VERP_MAX_AGE_DAYS,
        )
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| (r.channel, r.target, r.expired, r.bounced));
        match row {
            Some((Channel::Email, _, true, _)) if d.verdict.acts() => {
                d.verdict = Verdict::UnknownDelivery;
                d.detail = Some(format!("the VERP token is older than {VERP_MAX_AGE_DAYS} days: ignored"));
            }
            Some((Channel::Email, _, _, true)) if matches!(d.verdict, Verdict::Bounced | Verdict::Failed) => {
                d.verdict = Verdict::Duplicate;
                d.detail = Some("this delivery's bounce was applied before: not again".into());
            }
            Some((Channel::Email, target, _, _)) => target_address = Some(target),
            _ => {
                d.delivery_id = None;
                if d.verdict.acts() {
                    d.verdict = Verdict::UnknownDelivery;
                    d.detail = Some(format!("delivery {id} does not exist or is not an email"));
                }
            }
        }
    }
    if let Some(user) = d.user_id {
        let exists: bool = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM users WHERE id = $1) AS "exists!""#, user)
            .fetch_one(&mut *conn)
            .await?;
        if !exists {
            d.user_id = None;
            if d.verdict.acts() {
                d.verdict = Verdict::UnknownDelivery;
                d.detail = Some(format!("user {user} does not exist"));
            }
        }
    }

    let id = match record(conn, raw, &sha, &d).await? {
        Some(id) => id,
        None => {
            // The same message acted before.
            let first = d.verdict;
            d.verdict = Verdict::Duplicate;
            d.detail = Some(format!("the same message was received before ({})", first.as_str()));
            let id = record(conn, raw, &sha, &d).await?.expect("a non-acting verdict always inserts");
            return Ok(Outcome {
                id,
                verdict: d.verdict,
                delivery_id: d.delivery_id,
                user_id: d.user_id,
                receipt_id: None,
                suppressed: false,
                detail: d.detail,
            });
        }
    };

    let mut out = Outcome {
        id,
        verdict: d.verdict,
        delivery_id: d.delivery_id,
        user_id: d.user_id,
        receipt_id: None,
        suppressed: false,
        detail: d.detail.clone(),
    };
    match d.verdict {
        Verdict::Bounced | Verdict::Failed | Verdict::Delayed | Verdict::DsnOther => {
            let delivery_id = d.delivery_id.expect("a DSN verdict names its delivery");
            let r = d.recipient.clone().unwrap_or_default();
            let status = match d.verdict {
                Verdict::Bounced | Verdict::Failed => ReceiptStatus::Undelivered,
                _ => ReceiptStatus::Note,
            };
            let fallback = format!(
                "Action: {}, Status: {}",
                r.action.as_deref().unwrap_or("?"),
                r.status.as_deref().unwrap_or("?")
            );
            let detail = r.diagnostic_code.clone().unwrap_or(fallback);
            let smtp_code = r.smtp_code();
            out.receipt_id = receipts::report(
                conn,
                &Report {
                    delivery_id,
                    source: ReceiptSource::EmailDsn,
                    status,
                    provider_status: r.status.as_deref(),
                    error_code: smtp_code.as_deref(),
                    detail: Some(&detail),
                },
            )
            .await?;
            if d.verdict == Verdict::Bounced
                && let Some(address) = &target_address
            {
                out.suppressed =
                    suppressions::suppress(conn, Channel::Email, address, Reason::Bounced, Some(delivery_id), Some(&detail)).await?;
            }
        }
        Verdict::Unsubscribed => {
            let (user, kind) = (d.user_id.expect("named"), d.kind.expect("named"));
            match people::set_email_opt_out(conn, user, kind, true, OptOutSource::UnsubscribeLink).await {
                Ok(_) => {}
                Err(DomainError::Db(e)) => return Err(e),
                Err(e) => {
                    // A kind that cannot be turned off (never signed by us), a vanished user.
                    sqlx::query!(
                        "UPDATE inbound_emails SET verdict = 'other', detail = $2 WHERE id = $1",
                        id,
                        e.to_string(),
                    )
                    .execute(&mut *conn)
                    .await?;
                    out.verdict = Verdict::Other;
                    out.detail = Some(e.to_string());
                }
            }
        }
        _ => {}
    }
    Ok(out)
}

/// Erasure: mail that came back from or about the person (by user, by one of their deliveries,
/// or naming one of their addresses) keeps its verdict, size and digest; its head and detail go.
pub async fn erase_person(conn: &mut PgConnection, e: &crate::privacy::Erasing, delivery_ids: &[i64]) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE inbound_emails SET head = '', detail = NULL
         WHERE (user_id = $1 OR delivery_id = ANY($2)
                OR EXISTS (SELECT 1 FROM unnest($3::text[]) AS s
                           WHERE strpos(lower(head || ' ' || coalesce(detail, '')), lower(s)) > 0))
           AND (head <> '' OR detail IS NOT NULL)",
        e.user_id,
        delivery_ids,
        &e.strong,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Retention: deletes at most `batch` inbound emails received before `cutoff`.
pub async fn purge_batch(conn: &mut PgConnection, cutoff: chrono::DateTime<chrono::Utc>, batch: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "DELETE FROM inbound_emails WHERE id IN (SELECT id FROM inbound_emails WHERE received_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        cutoff,
        batch,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_status_fields() {
        let text = "Reporting-MTA: dns; mx.school.example\r\nX-Postfix-Queue-ID: 4ABC\r\nArrival-Date: Wed, 2 Dec 2026 05:00:00 +0000\r\n\r\nFinal-Recipient: rfc822; amelia@example.org\r\nOriginal-Recipient: rfc822;amelia@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.example.org\r\nDiagnostic-Code: smtp; 550 5.1.1 <amelia@example.org>: Recipient address\r\n    rejected: User unknown\r\n";
        let r = parse_delivery_status(text);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].final_recipient.as_deref(), Some("amelia@example.org"));
        assert_eq!(r[0].action.as_deref(), Some("failed"));
        assert_eq!(r[0].status.as_deref(), Some("5.1.1"));
        assert_eq!(r[0].class(), Some('5'));
        assert_eq!(r[0].smtp_code().as_deref(), Some("550"));
        assert_eq!(
            r[0].diagnostic_code.as_deref(),
            Some("smtp; 550 5.1.1 <amelia@example.org>: Recipient address rejected: User unknown")
        );
        assert!(parse_delivery_status("").is_empty());
        assert!(parse_delivery_status("garbage\n\n\n:::\n").is_empty());
    }

    #[test]
    fn tokens_are_found_only_as_local_parts() {
        let mut out = Vec::new();
        tokens_in("Amelia <BOUNCES+abc_-9@school.example>, unsubscribe+xyz@school.example", &mut out);
        tokens_in("bounces+nothing-after", &mut out);
        assert_eq!(out, vec![(true, "abc_-9".to_owned()), (false, "xyz".to_owned())]);
    }

    #[test]
    fn garbage_is_unparseable_or_unsigned_never_a_panic() {
        let key = Key::from_bytes(&[1u8; 32]).unwrap();
        for raw in [&b""[..], b"\0\0\0", b"no headers at all", b"To: bounces+AAAA@x\r\n\r\nhi", b"Content-Type: multipart/report; boundary=\"x\"\r\n\r\n--x\r\nContent-Type: message/delivery-status\r\n\r\nAction: failed\r\n--x--"] {
            let a = analyse(&key, raw);
            let d = decide(&a);
            assert!(matches!(d.verdict, Verdict::Unparseable | Verdict::Unsigned | Verdict::Other), "{raw:?}: {:?}", d.verdict);
        }
    }
}
