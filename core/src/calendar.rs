//! iCalendar (RFC 5545) for lessons: the invitations that ride along with the booking emails
//! (`METHOD:REQUEST` on booking and on every move, `METHOD:CANCEL` on cancellation, one stable
//! `UID` per booking and its `SEQUENCE` raised on every change, RFC 5546), the subscribable feed
//! of a person's lessons (`GET /calendar/{token}.ics`) and the rotation of the feed's secret.
//!
//! Text is written by hand: CRLF line ends, lines folded at 75 octets (never inside a UTF-8
//! character), TEXT values escaped, times in UTC (`Z`) so no `VTIMEZONE` is needed. The
//! `calendar_events` rows themselves are written by [`crate::bookings`]; this module reads them
//! and owns `users.calendar_token` changes.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use sqlx::PgConnection;

use crate::{analytics, error::DomainError, states::CalendarStatus};

/// `PRODID` of everything Dashlight writes.
pub const PRODID: &str = "-//Dashlight//Dashlight driving lessons//EN";

/// How far back the feed reaches: lessons that ended longer ago than this are left out.
pub const FEED_HISTORY_DAYS: i64 = 365;

/// The iTIP method of an invitation (RFC 5546).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A new or changed event.
    Request,
    /// The event is cancelled.
    Cancel,
}

impl Method {
    /// `REQUEST` or `CANCEL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Request => "REQUEST",
            Method::Cancel => "CANCEL",
        }
    }
}

/// Someone named in an event: organizer or attendee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalPerson {
    /// Display name (`CN`), if any.
    pub name: Option<String>,
    /// Email address (written as a `mailto:` URI).
    pub email: String,
}

/// One `VEVENT`.
#[derive(Debug, Clone)]
pub struct Event {
    /// `UID`, stable for the event's life.
    pub uid: String,
    /// `SEQUENCE`, raised on every change.
    pub sequence: i32,
    /// `DTSTART`.
    pub start: DateTime<Utc>,
    /// `DTEND`.
    pub end: DateTime<Utc>,
    /// `SUMMARY`.
    pub summary: String,
    /// `LOCATION`.
    pub location: Option<String>,
    /// `STATUS:CANCELLED` rather than `CONFIRMED`.
    pub cancelled: bool,
    /// `ORGANIZER`.
    pub organizer: Option<CalPerson>,
    /// `ATTENDEE`s.
    pub attendees: Vec<CalPerson>,
}

/// Parses a mailbox as `MAIL_FROM` holds it: `Name <addr@host>`, `"Name" <addr>` or `addr`.
pub fn parse_mailbox(s: &str) -> Option<CalPerson> {
    let s = s.trim();
    let (name, addr) = match (s.rfind('<'), s.ends_with('>')) {
        (Some(i), true) => (Some(s[..i].trim().trim_matches('"').trim()), &s[i + 1..s.len() - 1]),
        _ => (None, s),
    };
    let addr = addr.trim();
    if !addr.contains('@') || addr.chars().any(|c| c.is_whitespace() || c == '<' || c == '>') {
        return None;
    }
    Some(CalPerson {
        name: name.filter(|n| !n.is_empty()).map(str::to_owned),
        email: addr.to_owned(),
    })
}

/// Escapes a TEXT value (RFC 5545 §3.3.11): backslash, semicolon, comma and line breaks;
/// other control characters are dropped.
pub fn escape_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("\\n");
            }
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A parameter value (`CN=...`): quoted when it holds `:`, `;` or `,`; double quotes and control
/// characters, which no parameter value may hold, are dropped.
fn param_value(s: &str) -> String {
    let clean: String = s.chars().filter(|c| *c != '"' && !c.is_control()).collect();
    if clean.contains([':', ';', ',']) {
        format!("\"{clean}\"")
    } else {
        clean
    }
}

/// Folds one content line (without its line end) at 75 octets and ends every physical line
/// with CRLF. Continuation lines start with one space, which counts towards their 75.
pub fn fold(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + line.len() / 70 * 3 + 2);
    let mut width = 0usize;
    for c in line.chars() {
        let len = c.len_utf8();
        if width + len > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += len;
    }
    out.push_str("\r\n");
    out
}

/// `YYYYMMDDTHHMMSSZ`.
pub fn format_utc(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

fn person_line(property: &str, p: &CalPerson, extra: &str) -> String {
    let cn = p.name.as_deref().map(|n| format!(";CN={}", param_value(n))).unwrap_or_default();
    format!("{property}{cn}{extra}:mailto:{}", p.email)
}

fn vevent(out: &mut String, e: &Event, dtstamp: DateTime<Utc>, with_people: bool) {
    let mut lines = vec![
        "BEGIN:VEVENT".to_owned(),
        format!("UID:{}", e.uid),
        format!("SEQUENCE:{}", e.sequence),
        format!("DTSTAMP:{}", format_utc(dtstamp)),
        format!("DTSTART:{}", format_utc(e.start)),
        format!("DTEND:{}", format_utc(e.end)),
        format!("SUMMARY:{}", escape_text(&e.summary)),
    ];
    if let Some(l) = e.location.as_deref().filter(|l| !l.trim().is_empty()) {
        lines.push(format!("LOCATION:{}", escape_text(l)));
    }
    if with_people {
        if let Some(o) = &e.organizer {
            lines.push(person_line("ORGANIZER", o, ""));
        }
        for a in &e.attendees {
            lines.push(person_line("ATTENDEE", a, ";ROLE=REQ-PARTICIPANT;PARTSTAT=ACCEPTED;RSVP=FALSE"));
        }
    }
    lines.push(format!("STATUS:{}", if e.cancelled { "CANCELLED" } else { "CONFIRMED" }));
    lines.push("TRANSP:OPAQUE".to_owned());
    lines.push("END:VEVENT".to_owned());
    for l in lines {
        out.push_str(&fold(&l));
    }
}

/// An invitation: a `VCALENDAR` with `METHOD` and one `VEVENT` with its organizer and attendees.
/// A `CANCEL` marks the event `STATUS:CANCELLED` whatever `event.cancelled` says.
pub fn invitation(method: Method, event: &Event, dtstamp: DateTime<Utc>) -> String {
    let mut out = String::new();
    for l in [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        &format!("PRODID:{PRODID}"),
        "CALSCALE:GREGORIAN",
        &format!("METHOD:{}", method.as_str()),
    ] {
        out.push_str(&fold(l));
    }
    let mut e = event.clone();
    e.cancelled = e.cancelled || method == Method::Cancel;
    vevent(&mut out, &e, dtstamp, true);
    out.push_str(&fold("END:VCALENDAR"));
    out
}

/// A subscribable feed: a `VCALENDAR` without `METHOD`, one `VEVENT` per event (no organizer or
/// attendees: calendar apps would otherwise offer to answer them), refreshed hourly.
pub fn feed(name: &str, events: &[Event], dtstamp: DateTime<Utc>) -> String {
    let mut out = String::new();
    for l in [
        "BEGIN:VCALENDAR".to_owned(),
        "VERSION:2.0".to_owned(),
        format!("PRODID:{PRODID}"),
        "CALSCALE:GREGORIAN".to_owned(),
        format!("X-WR-CALNAME:{}", escape_text(name)),
        format!("NAME:{}", escape_text(name)),
        "REFRESH-INTERVAL;VALUE=DURATION:PT1H".to_owned(),
        "X-PUBLISHED-TTL:PT1H".to_owned(),
    ] {
        out.push_str(&fold(&l));
    }
    for e in events {
        vevent(&mut out, e, dtstamp, false);
    }
    out.push_str(&fold("END:VCALENDAR"));
    out
}

#[derive(Debug)]
struct EventRow {
    uid: String,
    sequence: i32,
    start_time: DateTime<Utc>,
    end_time: DateTime<Utc>,
    title: String,
    location: Option<String>,
    status: CalendarStatus,
    organizer: Option<String>,
    student_name: String,
    student_email: String,
}

#[derive(Debug)]
struct FeedRow {
    uid: String,
    sequence: i32,
    start_time: DateTime<Utc>,
    end_time: DateTime<Utc>,
    title: String,
    location: Option<String>,
}

/// The invitation of a booking's calendar event as the notification data expects it:
/// `{"method": "REQUEST"|"CANCEL", "ics": "..."}`, or `None` when the booking has no event.
/// Run it after the event row was changed, in the same transaction.
pub async fn booking_invitation(
    conn: &mut PgConnection,
    booking_id: i64,
    method: Method,
    now: DateTime<Utc>,
) -> Result<Option<Value>, sqlx::Error> {
    let row: Option<EventRow> = sqlx::query_as!(
        EventRow,
        r#"SELECT e.uid, e.sequence, e.start_time, e.end_time, e.title, e.location, e.status AS "status: CalendarStatus", e.organizer,
                su.first_name || ' ' || su.last_name AS "student_name!", su.email AS student_email
         FROM calendar_events e
         JOIN bookings b ON b.id = e.booking_id
         JOIN students s ON s.id = b.student_id
         JOIN users su ON su.id = s.user_id
         WHERE e.booking_id = $1"#,
        booking_id,
    )
    .fetch_optional(conn)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let event = Event {
        uid: r.uid,
        sequence: r.sequence,
        start: r.start_time,
        end: r.end_time,
        summary: r.title,
        location: r.location,
        cancelled: r.status == CalendarStatus::Cancelled,
        organizer: r.organizer.as_deref().and_then(parse_mailbox),
        attendees: vec![CalPerson {
            name: Some(r.student_name),
            email: r.student_email,
        }],
    };
    Ok(Some(json!({ "method": method.as_str(), "ics": invitation(method, &event, now) })))
}

/// Whether `token` has a calendar token's form: 1 to 200 ASCII letters, digits, `-` or `_`
/// (tokens are made as 32 hex digits).
pub fn token_well_formed(token: &str) -> bool {
    (1..=200).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The feed behind a `calendar_token`: the person's live lessons (booking confirmed or
/// completed, event not cancelled) that ended within [`FEED_HISTORY_DAYS`] or are still to
/// come, oldest first. `None` for an unknown token or a disabled user.
pub async fn feed_for_token(conn: &mut PgConnection, token: &str, now: DateTime<Utc>) -> Result<Option<String>, sqlx::Error> {
    // A malformed token (a NUL, which Postgres refuses in text, or anything a token never
    // holds) names no feed: no query for it.
    if !token_well_formed(token) {
        return Ok(None);
    }
    let user = sqlx::query!(
        r#"SELECT id, first_name || ' ' || last_name AS "name!" FROM users WHERE calendar_token = $1 AND status = 'active'"#,
        token,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some((user_id, name)) = user.map(|u| (u.id, u.name)) else {
        return Ok(None);
    };
    let rows: Vec<FeedRow> = sqlx::query_as!(
        FeedRow,
        "SELECT e.uid, e.sequence, e.start_time, e.end_time, e.title, e.location
         FROM event_participants p
         JOIN calendar_events e ON e.id = p.event_id
         JOIN bookings b ON b.id = e.booking_id
         WHERE p.user_id = $1 AND e.status = 'confirmed' AND b.status IN ('confirmed', 'completed') AND e.end_time > $2
         ORDER BY e.start_time, e.id",
        user_id,
        now - Duration::days(FEED_HISTORY_DAYS),
    )
    .fetch_all(&mut *conn)
    .await?;
    let events: Vec<Event> = rows
        .into_iter()
        .map(|r| Event {
            uid: r.uid,
            sequence: r.sequence,
            start: r.start_time,
            end: r.end_time,
            summary: r.title,
            location: r.location,
            cancelled: false,
            organizer: None,
            attendees: vec![],
        })
        .collect();
    Ok(Some(feed(&format!("Driving lessons: {name}"), &events, now)))
}

/// Gives the user a new feed secret; the old feed address stops working at once. Returns the
/// new token.
pub async fn rotate_token(conn: &mut PgConnection, user_id: i64, now: DateTime<Utc>) -> Result<String, DomainError> {
    let token: Option<String> = sqlx::query_scalar!(
        "UPDATE users SET calendar_token = replace(gen_random_uuid()::text, '-', '') WHERE id = $1 RETURNING calendar_token",
        user_id,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let token = token.ok_or(DomainError::NotFound("user"))?;
    analytics::record(conn, Some(user_id), "calendar_token_rotated", json!({"user_id": user_id}), now).await?;
    Ok(token)
}

/// Erasure: calendar events of the person, of their lessons, or naming them keep their times
/// and UIDs; their name becomes the pseudonym in titles and organisers, and the place of the
/// person's own events and of a student's lessons goes. (Attendees are kept as user ids, which
/// now name the pseudonym.)
pub async fn erase_person(conn: &mut PgConnection, e: &crate::privacy::Erasing) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE calendar_events
         SET title = erase_needles(title, $3, $4),
             organizer = erase_needles(organizer, $3, $4),
             location = CASE WHEN owner_id = $1 OR (booking_id = ANY($2) AND $6::bigint IS NOT NULL) THEN NULL
                             ELSE erase_needles(location, $3, $4) END
         WHERE owner_id = $1 OR booking_id = ANY($2)
            OR EXISTS (SELECT 1 FROM unnest($5::text[]) AS s
                       WHERE strpos(lower(title || ' ' || coalesce(organizer, '') || ' ' || coalesce(location, '')), lower(s)) > 0)",
        e.user_id,
        &e.booking_ids,
        &e.needles,
        e.pseudonym,
        &e.strong,
        e.student_id,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn event() -> Event {
        Event {
            uid: "booking-7@dashlight".into(),
            sequence: 2,
            start: Utc.with_ymd_and_hms(2030, 3, 4, 9, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2030, 3, 4, 10, 0, 0).unwrap(),
            summary: "Driving lesson: Amélie, O'Neil; with Priya".into(),
            location: Some("Station Road\ncar park".into()),
            cancelled: false,
            organizer: parse_mailbox("Greenway Driving School <office@greenway.test>"),
            attendees: vec![CalPerson {
                name: Some("O'Neil, Amélie".into()),
                email: "amelie@example.com".into(),
            }],
        }
    }

    #[test]
    fn lines_are_crlf_and_folded_at_75_octets() {
        let long = format!("SUMMARY:{}", "é".repeat(100));
        let folded = fold(&long);
        for l in folded.split_terminator("\r\n") {
            assert!(l.len() <= 75, "{} octets: {l:?}", l.len());
        }
        let unfolded = folded.trim_end_matches("\r\n").replace("\r\n ", "");
        assert_eq!(unfolded, long);
        assert_eq!(fold("SHORT:x"), "SHORT:x\r\n");
    }

    #[test]
    fn invitation_has_the_properties_a_calendar_needs() {
        let ics = invitation(Method::Request, &event(), Utc.with_ymd_and_hms(2030, 3, 1, 12, 0, 0).unwrap());
        assert!(ics.ends_with("END:VCALENDAR\r\n"));
        assert!(!ics.replace("\r\n", "").contains('\n'), "only CRLF line ends");
        let unfolded = ics.replace("\r\n ", "");
        for want in [
            "METHOD:REQUEST\r\n",
            "UID:booking-7@dashlight\r\n",
            "SEQUENCE:2\r\n",
            "DTSTAMP:20300301T120000Z\r\n",
            "DTSTART:20300304T090000Z\r\n",
            "DTEND:20300304T100000Z\r\n",
            "SUMMARY:Driving lesson: Amélie\\, O'Neil\\; with Priya\r\n",
            "LOCATION:Station Road\\ncar park\r\n",
            "ORGANIZER;CN=Greenway Driving School:mailto:office@greenway.test\r\n",
            "ATTENDEE;CN=\"O'Neil, Amélie\";ROLE=REQ-PARTICIPANT;PARTSTAT=ACCEPTED;RSVP=FALSE:mailto:amelie@example.com\r\n",
            "STATUS:CONFIRMED\r\n",
        ] {
            assert!(unfolded.contains(want), "{want:?} in\n{ics}");
        }
        let cancel = invitation(Method::Cancel, &event(), Utc::now());
        assert!(cancel.contains("METHOD:CANCEL\r\n") && cancel.contains("STATUS:CANCELLED\r\n"));
    }

    #[test]
    fn feed_has_no_method_and_no_people() {
        let f = feed("Driving lessons: Amelia", &[event(), event()], Utc::now());
        assert!(!f.contains("METHOD:"));
        assert!(!f.contains("ORGANIZER") && !f.contains("ATTENDEE"));
        assert_eq!(f.matches("BEGIN:VEVENT\r\n").count(), 2);
    }

    #[test]
    fn a_mailbox_parses_with_or_without_a_quoted_display_name() {
        assert_eq!(
            parse_mailbox("Dashlight <no-reply@localhost>"),
            Some(CalPerson {
                name: Some("Dashlight".into()),
                email: "no-reply@localhost".into()
            })
        );
        assert_eq!(parse_mailbox("\"A, B\" <a@b.c>").unwrap().name.as_deref(), Some("A, B"));
        assert_eq!(parse_mailbox("a@b.c").unwrap().name, None);
        assert_eq!(parse_mailbox("nobody"), None);
    }
}
