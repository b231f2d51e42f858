//! Everything held about a person, as one JSON document written row by row: the object
//! `{"format": …, "user_id": …, "exported_at": …, "<section>": [rows…], …}`, one section per kind
//! of data ([`SECTIONS`]). Each row is made to JSON by Postgres (`to_jsonb`) and read with a
//! `fetch` stream, so a person with ten thousand notifications is never held in memory: the
//! caller gets each piece as it is read ([`write()`] hands them to a sink, e.g. a channel feeding
//! an HTTP body). All sections are read in one `REPEATABLE READ` transaction, so the document is
//! one consistent snapshot.
//!
//! Secrets are left out: devices without their keys (`p256dh`, `auth`), the user without their
//! link secrets (`access_token`, `calendar_token`), offers without their token digest.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::{Connection, PgConnection};

/// The document's `format` value.
pub const FORMAT: &str = "dashlight.person-export.v1";

/// The sections, in the order they appear.
pub const SECTIONS: [&str; 19] = [
    "profile",
    "student",
    "instructor",
    "preferences",
    "email_opt_outs",
    "devices",
    "crm_contacts",
    "bookings",
    "waitlist",
    "slot_offers",
    "lessons",
    "progress",
    "package_purchases",
    "payments",
    "invoices",
    "messages",
    "notifications",
    "sms_replies",
    "suppressions",
];

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// No such user.
    #[error("user not found")]
    NotFound,
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The receiver went away (the client hung up).
    #[error("the export's reader went away")]
    Closed,
}

/// Where the pieces of the document go, in order. Returns `false` when nobody reads any more.
pub trait Sink {
    /// Takes one piece of the document.
    fn put(&mut self, piece: String) -> impl std::future::Future<Output = bool> + Send;
}

impl Sink for tokio::sync::mpsc::Sender<Result<String, ExportError>> {
    async fn put(&mut self, piece: String) -> bool {
        self.send(Ok(piece)).await.is_ok()
    }
}

impl Sink for Vec<String> {
    async fn put(&mut self, piece: String) -> bool {
        self.push(piece);
        true
    }
}

/// Whether the user exists (checked before a response starts, so a missing one is a 404).
pub async fn exists(conn: &mut PgConnection, user_id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM users WHERE id = $1) AS "e!""#, user_id)
        .fetch_one(&mut *conn)
        .await
}

/// Writes the whole document of `user_id` to `sink`, section by section, row by row.
pub async fn write(conn: &mut PgConnection, user_id: i64, now: DateTime<Utc>, sink: &mut impl Sink) -> Result<(), ExportError> {
    let mut tx = conn.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    if !exists(&mut tx, user_id).await? {
        return Err(ExportError::NotFound);
    }
    let head = serde_json::json!({"format": FORMAT, "user_id": user_id, "exported_at": now}).to_string();
    // Open the object, keep its last `}` for the end.
    put(sink, head[..head.len() - 1].to_owned()).await?;
    for section in SECTIONS {
        put(sink, format!(",{}:[", serde_json::Value::from(section))).await?;
        let mut rows = section_rows(&mut tx, section, user_id);
        let mut first = true;
        while let Some(row) = rows.try_next().await? {
            let piece = if first { row } else { format!(",{row}") };
            first = false;
            put(sink, piece).await?;
        }
        drop(rows);
        put(sink, "]".to_owned()).await?;
    }
    put(sink, "}".to_owned()).await?;
    tx.commit().await?;
    Ok(())
}

async fn put(sink: &mut impl Sink, piece: String) -> Result<(), ExportError> {
    if sink.put(piece).await { Ok(()) } else { Err(ExportError::Closed) }
}

type Rows<'c> = futures::stream::BoxStream<'c, Result<String, sqlx::Error>>;

/// The rows of one section, each as a JSON text, streamed.
fn section_rows<'c>(conn: &'c mut PgConnection, section: &str, user_id: i64) -> Rows<'c> {
    macro_rules! rows {
        ($sql:literal) => {
            Box::pin(
                sqlx::query_scalar!($sql, user_id)
                    .fetch(conn)
                    .map_ok(|j: Option<String>| j.unwrap_or_default()),
            )
        };
    }
    match section {
        "profile" => rows!(
            "SELECT (to_jsonb(u) - 'access_token' - 'calendar_token'
                     || jsonb_build_object('erasure', (SELECT to_jsonb(e) - 'user_id' FROM person_erasures e WHERE e.user_id = u.id)))::text
             FROM users u WHERE u.id = $1"
        ),
        "student" => rows!("SELECT to_jsonb(s)::text FROM students s WHERE s.user_id = $1"),
        "instructor" => rows!(
            "SELECT (to_jsonb(i) || jsonb_build_object('availability',
                        (SELECT coalesce(jsonb_agg(to_jsonb(a) ORDER BY a.day_of_week, a.start_time), '[]')
                         FROM instructor_availability a WHERE a.instructor_id = i.id)))::text
             FROM instructors i WHERE i.user_id = $1"
        ),
        "preferences" => rows!("SELECT to_jsonb(p)::text FROM user_preferences p WHERE p.user_id = $1"),
        "email_opt_outs" => rows!("SELECT to_jsonb(o)::text FROM email_opt_outs o WHERE o.user_id = $1 ORDER BY o.kind"),
        "devices" => rows!("SELECT (to_jsonb(d) - 'p256dh' - 'auth')::text FROM user_devices d WHERE d.user_id = $1 ORDER BY d.id"),
        "crm_contacts" => rows!(
            "SELECT (to_jsonb(c) || jsonb_build_object('interactions',
                        (SELECT coalesce(jsonb_agg(to_jsonb(i) ORDER BY i.interaction_date, i.id), '[]')
                         FROM crm_interactions i WHERE i.contact_id = c.id)))::text
             FROM crm_contacts c WHERE c.user_id = $1 ORDER BY c.id"
        ),
        "bookings" => rows!(
            "SELECT (to_jsonb(b) || jsonb_build_object(
                        'series', (SELECT to_jsonb(s) FROM booking_series s WHERE s.id = b.series_id),
                        'package', (SELECT to_jsonb(bp) FROM booking_packages bp WHERE bp.booking_id = b.id),
                        'calendar_events', (SELECT coalesce(jsonb_agg(to_jsonb(ce) ORDER BY ce.id), '[]') FROM calendar_events ce
                                            WHERE ce.booking_id = b.id)))::text
             FROM bookings b
             WHERE b.student_id IN (SELECT id FROM students WHERE user_id = $1)
                OR b.instructor_id IN (SELECT id FROM instructors WHERE user_id = $1)
             ORDER BY b.start_time, b.id"
        ),
        "waitlist" => rows!(
            "SELECT (to_jsonb(w) || jsonb_build_object('windows',
                        (SELECT coalesce(jsonb_agg(to_jsonb(x) - 'entry_id' ORDER BY x.day_of_week, x.start_time), '[]')
                         FROM waitlist_windows x WHERE x.entry_id = w.id)))::text
             FROM waitlist_entries w WHERE w.student_id IN (SELECT id FROM students WHERE user_id = $1)"
        ),
        "slot_offers" => rows!(
            "SELECT (to_jsonb(o) - 'token_sha256')::text FROM slot_offers o
             WHERE o.student_id IN (SELECT id FROM students WHERE user_id = $1) ORDER BY o.id"
        ),
        "lessons" => rows!(
            "SELECT (to_jsonb(l) || jsonb_build_object(
                        'progress', (SELECT coalesce(jsonb_agg(to_jsonb(p) ORDER BY p.id), '[]') FROM lesson_progress p WHERE p.lesson_id = l.id),
                        'skills', (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.id), '[]') FROM lesson_skill_progress s WHERE s.lesson_id = l.id)))::text
             FROM lessons l
             WHERE l.student_id IN (SELECT id FROM students WHERE user_id = $1)
                OR l.instructor_id IN (SELECT id FROM instructors WHERE user_id = $1)
             ORDER BY l.completed_at, l.id"
        ),
        "progress" => rows!(
            "SELECT (to_jsonb(p) || jsonb_build_object('skill', c.category_name))::text
             FROM student_progress p JOIN skill_categories c ON c.id = p.skill_category_id
             WHERE p.student_id IN (SELECT id FROM students WHERE user_id = $1) ORDER BY c.skill_order"
        ),
        "package_purchases" => rows!(
            "SELECT (to_jsonb(pp) || jsonb_build_object('package', lp.name))::text
             FROM package_purchases pp JOIN lesson_packages lp ON lp.id = pp.package_id
             WHERE pp.student_id IN (SELECT id FROM students WHERE user_id = $1) ORDER BY pp.id"
        ),
        "payments" => rows!(
            "SELECT to_jsonb(p)::text FROM payments p WHERE p.student_id IN (SELECT id FROM students WHERE user_id = $1) ORDER BY p.id"
        ),
        "invoices" => rows!(
            "SELECT to_jsonb(i)::text FROM invoices i JOIN payments p ON p.id = i.payment_id
             WHERE p.student_id IN (SELECT id FROM students WHERE user_id = $1) ORDER BY i.id"
        ),
        "messages" => rows!(
            "SELECT (to_jsonb(m) || jsonb_build_object('participants',
                        (SELECT coalesce(jsonb_agg(to_jsonb(mp) - 'message_id' ORDER BY mp.user_id), '[]')
                         FROM message_participants mp WHERE mp.message_id = m.id)))::text
             FROM messages m
             WHERE m.sender_id = $1 OR m.id IN (SELECT message_id FROM message_participants WHERE user_id = $1)
             ORDER BY m.created_at, m.id"
        ),
        // Deliveries and their attempts and receipts nested in each notification; one row
        // (one notification) in memory at a time.
        "notifications" => rows!(
            "SELECT (to_jsonb(n) || jsonb_build_object('deliveries',
                        (SELECT coalesce(jsonb_agg(to_jsonb(d) || jsonb_build_object(
                                    'attempts', (SELECT coalesce(jsonb_agg(to_jsonb(a) ORDER BY a.attempt), '[]')
                                                 FROM delivery_attempts a WHERE a.delivery_id = d.id),
                                    'receipts', (SELECT coalesce(jsonb_agg(to_jsonb(r) ORDER BY r.received_at, r.id), '[]')
                                                 FROM delivery_receipts r WHERE r.delivery_id = d.id),
                                    'inbound_emails', (SELECT coalesce(jsonb_agg(to_jsonb(ie) ORDER BY ie.id), '[]')
                                                       FROM inbound_emails ie WHERE ie.delivery_id = d.id))
                                ORDER BY d.id), '[]')
                         FROM notification_deliveries d WHERE d.notification_id = n.id)))::text
             FROM notifications n WHERE n.user_id = $1 ORDER BY n.created_at, n.id"
        ),
        "sms_replies" => rows!(
            "SELECT to_jsonb(r)::text FROM sms_replies r
             WHERE r.user_id = $1 OR r.from_number = (SELECT phone FROM users WHERE id = $1) ORDER BY r.received_at, r.id"
        ),
        "suppressions" => rows!(
            "SELECT to_jsonb(s)::text FROM suppressions s
             WHERE (s.channel = 'email' AND s.target = (SELECT lower(email) FROM users WHERE id = $1))
                OR (s.channel = 'sms' AND s.target = (SELECT phone FROM users WHERE id = $1))
             ORDER BY s.id"
        ),
        other => unreachable!("export section {other} is listed in SECTIONS but has no query"),
    }
}
