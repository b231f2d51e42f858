//! SMS a person sends to the school's number (docs/hearing-back.md): the provider posts
//! each one to `/hooks/sms/inbound`, and [`handle`] decides what it means and does it in the
//! caller's transaction. The one writer of `sms_replies` (every inbound SMS is kept there, once
//! per provider message id, so a replayed post does nothing twice).
//!
//! | the text (trimmed, any case) | what happens | the answer |
//! |---|---|---|
//! | `STOP`, `STOPALL`, `UNSUBSCRIBE`, `CANCEL`, `END`, `QUIT`, `REVOKE`, `OPTOUT` | the sender's SMS turned off, the number suppressed (`opted_out`) | the opt-out confirmation |
//! | `START`, `UNSTOP` | SMS on again, the suppression lifted | the opt-in confirmation |
//! | `HELP` | nothing | the school's name and contact |
//! | `C`, `YES` | `bookings.student_confirmed_at` of the sender's next reminded lesson, the instructor alerted (`student_confirmed`) | which lesson was confirmed |
//! | `R` (alone or followed by words) | the instructor (`rearrange_request`) and the school (its email) alerted with the text | who will get in touch |
//! | anything else | kept on the lesson's timeline, forwarded to the school by email (`inbound_reply`) | none |
//!
//! The sender's "next reminded lesson" is the earliest confirmed booking, not yet ended, of a
//! student whose phone is the sender's number, for which a `lesson_reminder` was sent (or
//! delivered) on any channel.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use serde_json::json;
use sqlx::{FromRow, PgConnection};

use crate::{
    DomainError,
    bookings::{self, Party},
    kinds::{Channel, Kind},
    notify::{self, NewNotification},
    people,
    states::ConfirmedVia,
    suppressions::{self, Reason},
};

/// What an inbound SMS was taken as (`sms_replies.keyword`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Keyword {
    /// The STOP family: opt out.
    Stop,
    /// START / UNSTOP: opt back in.
    Start,
    /// HELP.
    Help,
    /// C / YES: confirm the next reminded lesson.
    Confirm,
    /// R: ask to rearrange it.
    Rearrange,
    /// Anything else.
    Other,
}

/// The STOP family carriers and Twilio honour.
pub const STOP_WORDS: [&str; 8] = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"];

/// What a text means. Keywords are the whole text (trimmed, any case, trailing punctuation
/// ignored), except `R`, which may be followed by the student's words.
pub fn classify(body: &str) -> Keyword {
    let text = body.trim().trim_end_matches(['.', '!', '?']).trim().to_uppercase();
    if STOP_WORDS.contains(&text.as_str()) {
        return Keyword::Stop;
    }
    match text.as_str() {
        "START" | "UNSTOP" => Keyword::Start,
        "HELP" => Keyword::Help,
        "C" | "YES" => Keyword::Confirm,
        _ if text == "R" || text.starts_with("R ") || text.starts_with("R,") || text.starts_with("R:") => Keyword::Rearrange,
        _ => Keyword::Other,
    }
}

/// The school, as answers and forwarded texts name it.
#[derive(Debug, Clone)]
pub struct School {
    /// `SCHOOL_NAME`.
    pub name: String,
    /// The school's address (the bare address of `MAIL_FROM`): its contact in `HELP` answers
    /// and where rearrange requests and other replies are forwarded.
    pub email: String,
    /// `SCHOOL_TIMEZONE`, for times in answers when the sender is unknown.
    pub timezone: Tz,
}

impl School {
    /// From the configuration.
    pub fn from_config(config: &crate::Config) -> School {
        let m = config.mail_from.as_str();
        let email = match (m.find('<'), m.rfind('>')) {
            (Some(a), Some(b)) if a < b => m[a + 1..b].trim(),
            _ => m.trim(),
        };
        School {
            name: config.school_name.clone(),
            email: email.to_owned(),
            timezone: config.school_timezone,
        }
    }
}

/// One inbound SMS as the provider posted it.
#[derive(Debug, Clone)]
pub struct Inbound<'a> {
    /// The sender (`From`).
    pub from: &'a str,
    /// The text (`Body`).
    pub body: &'a str,
    /// The provider's id of the message (`MessageSid`), when given.
    pub provider_message_id: Option<&'a str>,
}

/// What [`handle`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Handled {
    /// `sms_replies.id`.
    pub reply_id: Option<i64>,
    /// What the text was taken as.
    pub keyword: Keyword,
    /// The sender, when a user has that number.
    pub user_id: Option<i64>,
    /// The lesson it was about.
    pub booking_id: Option<i64>,
    /// The SMS to answer with (TwiML `<Message>`), if any.
    pub answer: Option<String>,
    /// The same message id was handled before: nothing was done again.
    pub replayed: bool,
}

struct Sender {
    id: i64,
    first_name: String,
    last_name: String,
    timezone: String,
}

struct Lesson {
    id: i64,
    start_time: DateTime<Utc>,
}

/// Handles one inbound SMS at `now` in the caller's transaction (see the module's table).
pub async fn handle(conn: &mut PgConnection, school: &School, msg: &Inbound<'_>, now: DateTime<Utc>) -> Result<Handled, DomainError> {
    let from = msg.from.trim();
    let body: String = msg.body.chars().take(1600).collect();
    let keyword = classify(&body);
    // A student's number first: replies are mostly about lessons.
    let sender: Option<Sender> = sqlx::query_as!(
        Sender,
        "SELECT u.id, u.first_name, u.last_name, u.timezone FROM users u
         WHERE u.phone = $1 ORDER BY (u.role = 'student') DESC, u.id LIMIT 1",
        from,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let lesson = match keyword {
        Keyword::Confirm | Keyword::Rearrange | Keyword::Other => next_reminded_lesson(conn, from, now).await?,
        _ => None,
    };
    let reply_id: Option<i64> = sqlx::query_scalar!(
        "INSERT INTO sms_replies (from_number, user_id, booking_id, body, keyword, provider_message_id, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (provider_message_id) DO NOTHING RETURNING id",
        from.chars().take(40).collect::<String>(),
        sender.as_ref().map(|s| s.id),
        lesson.as_ref().map(|l| l.id),
        body,
        keyword as Keyword,
        msg.provider_message_id.map(|m| m.chars().take(100).collect::<String>()),
        now,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let replayed = reply_id.is_none();
    let tz: Tz = sender
        .as_ref()
        .map_or(school.timezone, |s| crate::validate::stored_timezone(&s.timezone));
    let when = |t: DateTime<Utc>| t.with_timezone(&tz).format("%a %-d %b %H:%M").to_string();
    let user_id = sender.as_ref().map(|s| s.id);
    let mut out = Handled {
        reply_id,
        keyword,
        user_id,
        booking_id: lesson.as_ref().map(|l| l.id),
        answer: None,
        replayed,
    };
    let name = &school.name;
    match keyword {
        Keyword::Stop => {
            if !replayed {
                if let Some(u) = user_id {
                    people::set_sms_notifications(conn, u, false).await?;
                }
                suppressions::suppress(conn, Channel::Sms, from, Reason::OptedOut, None, Some("the person texted STOP")).await?;
                tracing::info!(number = from, user = ?user_id, "opted out by SMS: SMS off, number suppressed");
            }
            out.answer = Some(format!(
                "You have been unsubscribed from {name} texts and will receive no further messages. Reply START to resubscribe."
            ));
        }
        Keyword::Start => {
            if !replayed {
                if let Some(u) = user_id {
                    people::set_sms_notifications(conn, u, true).await?;
                }
                suppressions::lift_target(conn, Channel::Sms, from).await?;
                tracing::info!(number = from, user = ?user_id, "opted back in by SMS: SMS on, suppression lifted");
            }
            out.answer = Some(format!(
                "You are subscribed to {name} texts again. Reply HELP for help, STOP to unsubscribe."
            ));
        }
        Keyword::Help => {
            out.answer = Some(format!(
                "{name}: lesson reminders and updates. Contact us at {}. Reply C to confirm or R to rearrange your next lesson, STOP to unsubscribe.",
                school.email
            ));
        }
        Keyword::Confirm => match &lesson {
            Some(l) => {
                if !replayed {
                    // The one confirmation operation of every path: the first wins, the
                    // instructor is told (`student_confirmed`), the escalations are withdrawn.
                    let done = bookings::confirm(conn, l.id, ConfirmedVia::Sms, now).await?;
                    if matches!(done, bookings::Confirmation::Confirmed(_)) {
                        tracing::info!(booking = l.id, user = ?user_id, "lesson confirmed by the student's SMS; instructor alerted");
                    }
                }
                out.answer = Some(format!("Thanks, your lesson on {} is confirmed. {name}", when(l.start_time)));
            }
            None => {
                out.answer = Some(format!(
                    "We could not find an upcoming lesson to confirm. Please contact {name} at {}.",
                    school.email
                ));
            }
        },
        Keyword::Rearrange => match &lesson {
            Some(l) => {
                let (ctx, instructor) = lesson_context(conn, l.id).await?;
                if let (false, Some(rid)) = (replayed, reply_id) {
                    let data = json!({ "booking": ctx, "reply": body, "from": from });
                    let mut to_instructor = NewNotification::to_user(
                        Kind::RearrangeRequest,
                        instructor,
                        format!("rearrange_request:{rid}:instructor"),
                        now,
                    );
                    to_instructor.booking_id = Some(l.id);
                    to_instructor.title = "A student asks to rearrange a lesson".into();
                    to_instructor.content = body.clone();
                    to_instructor.data = data.clone();
                    let mut to_school = to_instructor.clone();
                    to_school.user_id = None;
                    to_school.recipient_email = Some(school.email.clone());
                    to_school.dedupe_key = format!("rearrange_request:{rid}:school");
                    to_school.channels = Some(vec![Channel::Email]);
                    to_school.data["recipient_role"] = json!("school");
                    notify::create(conn, to_instructor).await?;
                    notify::create(conn, to_school).await?;
                    tracing::info!(booking = l.id, user = ?user_id, "rearrange requested by SMS; instructor and school alerted");
                }
                out.answer = Some(format!(
                    "Thanks, we have asked {} to get in touch to rearrange your lesson on {}. {name}",
                    ctx["instructor_name"].as_str().unwrap_or("your instructor"),
                    when(l.start_time)
                ));
            }
            None => {
                if let (false, Some(rid)) = (replayed, reply_id) {
                    forward(conn, school, rid, from, &body, sender.as_ref(), None, now).await?;
                }
                out.answer = Some(format!(
                    "We could not find an upcoming lesson; we have passed your message to {name}."
                ));
            }
        },
        Keyword::Other => {
            if let (false, Some(rid)) = (replayed, reply_id) {
                let ctx = match &lesson {
                    Some(l) => Some(lesson_context(conn, l.id).await?.0),
                    None => None,
                };
                forward(conn, school, rid, from, &body, sender.as_ref(), ctx, now).await?;
            }
        }
    }
    if replayed {
        tracing::info!(number = from, ?keyword, "inbound SMS replayed: nothing done again");
    }
    Ok(out)
}

impl Keyword {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Keyword::Stop => "stop",
            Keyword::Start => "start",
            Keyword::Help => "help",
            Keyword::Confirm => "confirm",
            Keyword::Rearrange => "rearrange",
            Keyword::Other => "other",
        }
    }
}

/// Forwards a text to the school by email (`inbound_reply`).
#[allow(clippy::too_many_arguments)]
async fn forward(
    conn: &mut PgConnection,
    school: &School,
    reply_id: i64,
    from: &str,
    body: &str,
    sender: Option<&Sender>,
    booking: Option<serde_json::Value>,
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    let sender_name = sender.map(|s| format!("{} {}", s.first_name, s.last_name));
    let booking_id = booking.as_ref().and_then(|b| b["id"].as_i64());
    let n = NewNotification {
        user_id: None,
        recipient_email: Some(school.email.clone()),
        kind: Kind::InboundReply,
        title: "A text to the school".into(),
        content: body.to_owned(),
        data: json!({ "reply": body, "from": from, "sender_name": sender_name, "booking": booking }),
        booking_id,
        payment_id: None,
        message_id: None,
        dedupe_key: format!("inbound_reply:{reply_id}"),
        due_at: now,
        expires_at: None,
        produced_at: now,
        skip_reason: None,
        channels: None,
    };
    notify::create(conn, n).await?;
    tracing::info!(reply = reply_id, number = from, booking = ?booking_id, "inbound SMS forwarded to the school");
    Ok(())
}

/// An inbound SMS as kept.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Reply {
    /// `sms_replies.id`.
    pub id: i64,
    /// The sender's number.
    pub from_number: String,
    /// The sender, when known.
    pub user_id: Option<i64>,
    /// The lesson it was about.
    pub booking_id: Option<i64>,
    /// The text.
    pub body: String,
    /// What it was taken as.
    pub keyword: Keyword,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
}

/// What the student said by SMS about a booking: when they confirmed it (C/YES), and every text
/// kept against it, oldest first (the booking's timeline).
pub async fn for_booking(conn: &mut PgConnection, booking_id: i64) -> Result<(Option<DateTime<Utc>>, Vec<Reply>), DomainError> {
    let confirmed: Option<DateTime<Utc>> = sqlx::query_scalar!("SELECT student_confirmed_at FROM bookings WHERE id = $1", booking_id)
        .fetch_optional(&mut *conn)
        .await?
        .flatten();
    let replies = sqlx::query_as!(
        Reply,
        r#"SELECT id, from_number, user_id, booking_id, body, keyword AS "keyword: Keyword", received_at FROM sms_replies
         WHERE booking_id = $1 ORDER BY received_at, id"#,
        booking_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok((confirmed, replies))
}

/// The sender's next reminded lesson (see the module's documentation).
async fn next_reminded_lesson(conn: &mut PgConnection, from: &str, now: DateTime<Utc>) -> Result<Option<Lesson>, DomainError> {
    Ok(sqlx::query_as!(
        Lesson,
        "SELECT b.id, b.start_time FROM bookings b
         JOIN students s ON s.id = b.student_id JOIN users u ON u.id = s.user_id
         WHERE u.phone = $1 AND b.status = 'confirmed' AND b.end_time > $2
           AND EXISTS (SELECT 1 FROM notifications n JOIN notification_deliveries d ON d.notification_id = n.id
                       WHERE n.booking_id = b.id AND n.type = 'lesson_reminder' AND d.status IN ('sent', 'delivered'))
         ORDER BY b.start_time, b.id LIMIT 1",
        from,
        now,
    )
    .fetch_optional(&mut *conn)
    .await?)
}

/// A booking's template context and its instructor's user id.
async fn lesson_context(conn: &mut PgConnection, booking_id: i64) -> Result<(serde_json::Value, i64), DomainError> {
    let b = bookings::get(conn, booking_id).await?;
    let student = bookings::student(conn, b.student_id).await?;
    let instructor: Party = sqlx::query_as!(
        Party,
        r#"SELECT x.id, u.id AS user_id, u.first_name || ' ' || u.last_name AS "name!", u.timezone
             FROM instructors x JOIN users u ON u.id = x.user_id WHERE x.id = $1"#,
        b.instructor_id,
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok((bookings::booking_context(&b, &student, &instructor), instructor.user_id))
}

/// The numbers a person texted the school from.
pub async fn numbers_of(conn: &mut PgConnection, user_id: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!("SELECT DISTINCT from_number FROM sms_replies WHERE user_id = $1", user_id)
        .fetch_all(&mut *conn)
        .await
}

/// Erasure: the texts the person sent keep their keyword and time; the number and the body go.
pub async fn erase_person(conn: &mut PgConnection, e: &crate::privacy::Erasing) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE sms_replies SET from_number = 'erased', body = '' WHERE user_id = $1 OR from_number = ANY($2)",
        e.user_id,
        &e.phones,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_classify_as_stop_start_help_confirm_rearrange_or_other_whatever_their_case() {
        for w in STOP_WORDS {
            assert_eq!(classify(w), Keyword::Stop);
            assert_eq!(classify(&format!("  {}. ", w.to_lowercase())), Keyword::Stop);
        }
        assert_eq!(classify("Stop texting me about lessons"), Keyword::Other);
        assert_eq!(classify("unstop"), Keyword::Start);
        assert_eq!(classify("START"), Keyword::Start);
        assert_eq!(classify("help"), Keyword::Help);
        assert_eq!(classify("c"), Keyword::Confirm);
        assert_eq!(classify("Yes!"), Keyword::Confirm);
        assert_eq!(classify("r"), Keyword::Rearrange);
        assert_eq!(classify("R can we do Thursday?"), Keyword::Rearrange);
        assert_eq!(classify("Running late"), Keyword::Other);
        assert_eq!(classify(""), Keyword::Other);
    }
}
