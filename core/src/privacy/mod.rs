//! A person's data over time: what the school holds about one person, handed over on request
//! ([`export`]), erased on request ([`erase`]), and not kept longer than needed ([`retention`]).
//! See `docs/data-retention.md` for what is kept, for how long and why.
//!
//! - [`erase`]: the one orchestrating function of an erasure. It reads who the person is
//!   ([`Erasing`]: their names, addresses, numbers, link secrets, profiles and bookings), then
//!   calls each owning module's `erase_person` in one transaction, and records the erasure in
//!   `person_erasures` (the one writer of that table). Nothing here writes another module's table,
//!   except the delivery rows' end of life below.
//! - [`deliveries`]: the end of a delivery row's life: its target and errors scrubbed on erasure
//!   and the purge of old deliveries and attempts. (The worker's delivery module writes these
//!   rows while they are live; the core cannot call the worker, so their erasure and purge live
//!   here, in the one module that ends them.)
//! - [`export`]: everything held about a person, as one JSON document written row by row.
//! - [`retention`]: the periodic purge of old deliveries, attempts, receipts and inbound emails
//!   (`RETENTION_DELIVERIES`) and of old invoices and payments (`RETENTION_INVOICES`).

pub mod deliveries;
pub mod export;
pub mod retention;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgConnection;

use crate::{
    DomainError, analytics, bookings, calendar, crm, gaps, inbound_email, kinds::Channel, lessons, messages, notify, payments, people,
    receipts, replies, series, signing, suppressions,
};

/// Who is being erased and every string that identifies them, handed to each owning module.
#[derive(Debug, Clone)]
pub struct Erasing {
    /// `users.id`.
    pub user_id: i64,
    /// `students.id`, when they are a student.
    pub student_id: Option<i64>,
    /// `instructors.id`, when they are an instructor.
    pub instructor_id: Option<i64>,
    /// What replaces their name everywhere (`Erased 3fa9c2d1`).
    pub pseudonym: String,
    /// The last name of the pseudonym (the first is `Erased`).
    pub pseudonym_suffix: String,
    /// Every email address known for them (account, CRM contact, addresses sent to), lower-cased.
    pub emails: Vec<String>,
    /// Every phone number known for them (E.164).
    pub phones: Vec<String>,
    /// Strings that identify them on their own: full name, addresses, numbers, link secrets,
    /// licence number. Rows of other people that contain one of these are about them.
    pub strong: Vec<String>,
    /// `strong` plus the first and last name on their own: what is replaced by the pseudonym in
    /// free text written about them.
    pub needles: Vec<String>,
    /// Bookings they took part in (as student or instructor).
    pub booking_ids: Vec<i64>,
    /// When.
    pub now: DateTime<Utc>,
}

/// The record of an erasure (`person_erasures`).
#[derive(Debug, Clone, Serialize)]
pub struct Erasure {
    /// `users.id`.
    pub user_id: i64,
    /// The pseudonym shown instead of them.
    pub pseudonym: String,
    /// Why (as given, with their own name taken out).
    pub reason: String,
    /// Who asked for it.
    pub erased_by: String,
    /// When.
    pub erased_at: DateTime<Utc>,
    /// Rows changed per table.
    pub summary: serde_json::Value,
}

/// What [`erase`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// False when the person had already been erased (nothing was done this time).
    pub erased_now: bool,
    /// The record.
    pub erasure: Erasure,
}

/// The record of a person's erasure, if they were erased.
pub async fn erasure_of(conn: &mut PgConnection, user_id: i64) -> Result<Option<Erasure>, sqlx::Error> {
    sqlx::query_as!(
        Erasure,
        "SELECT user_id, pseudonym, reason, erased_by, erased_at, summary FROM person_erasures WHERE user_id = $1",
        user_id,
    )
    .fetch_optional(&mut *conn)
    .await
}

/// Erases a person: their personal data is erased or pseudonymised in every table that holds it,
/// their invoices and payments are kept with the pseudonym, their devices and link secrets are
/// gone, their pending notifications cancelled, their addresses and numbers kept only as keyed
/// hashes in the suppression list, their lesson attachments' files requested for deletion from
/// disk, and the erasure recorded. Run it in one transaction (the caller commits, then calls
/// [`crate::files::delete_requested`]: files are not deleted before the erasure is). A second
/// erase of the same person changes nothing and returns the first record with
/// `erased_now = false`.
pub async fn erase(
    conn: &mut PgConnection,
    key: &signing::Key,
    user_id: i64,
    reason: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Outcome, DomainError> {
    let Some(p) = people::lock_for_erasure(conn, user_id).await? else {
        return Err(DomainError::NotFound("user"));
    };
    if let Some(erasure) = erasure_of(conn, user_id).await? {
        return Ok(Outcome {
            erased_now: false,
            erasure,
        });
    }
    let e = who(conn, p, now).await?;

    let mut summary = serde_json::Map::new();
    let mut note = |table: &str, n: u64| {
        summary.insert(table.to_owned(), json!(n));
    };
    // Pending sends stop first, before their targets are scrubbed.
    note(
        "notifications_cancelled",
        notify::cancel_for_user(conn, user_id, "the person was erased").await?,
    );
    note("notifications", notify::erase_person(conn, &e).await?);
    let delivery_ids = deliveries::of_person(conn, &e).await?;
    note("notification_deliveries", deliveries::erase_person(conn, &e, &delivery_ids).await?);
    note("delivery_receipts", receipts::erase_person(conn, &delivery_ids).await?);
    note("inbound_emails", inbound_email::erase_person(conn, &e, &delivery_ids).await?);
    note("sms_replies", replies::erase_person(conn, &e).await?);
    let mut suppressed = suppressions::erase_targets(conn, key, Channel::Email, &e.emails).await?;
    suppressed += suppressions::erase_targets(conn, key, Channel::Sms, &e.phones).await?;
    note("suppressions", suppressed);
    note("crm", crm::erase_person(conn, &e).await?);
    note("calendar_events", calendar::erase_person(conn, &e).await?);
    note("bookings", bookings::erase_person(conn, &e).await?);
    note("booking_series", series::erase_person(conn, &e).await?);
    note("gaps", gaps::erase_person(conn, &e).await?);
    let lessons = lessons::erase_person(conn, &e).await?;
    note("lessons", lessons.rows);
    note("lesson_attachment_files", lessons.attachment_files);
    note("messages", messages::erase_person(conn, &e).await?);
    note("analytics_events", analytics::erase_person(conn, &e).await?);
    note("invoices_redrawn", payments::erase_person(conn, &e).await?);
    // Last: the person's own rows, which the statements above found them by.
    note("people", people::erase_person(conn, &e).await?);

    let erasure = sqlx::query_as!(
        Erasure,
        "INSERT INTO person_erasures (user_id, pseudonym, reason, erased_by, erased_at, summary)
         VALUES ($1, $2, left(erase_needles($3, $4, $2), 500), erase_needles($5, $4, $2), $6, $7)
         RETURNING user_id, pseudonym, reason, erased_by, erased_at, summary",
        user_id,
        e.pseudonym,
        reason,
        &e.needles,
        by,
        now,
        serde_json::Value::Object(summary),
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(Outcome { erased_now: true, erasure })
}

/// Gathers every identifying string of the person.
async fn who(conn: &mut PgConnection, p: people::ErasureSubject, now: DateTime<Utc>) -> Result<Erasing, sqlx::Error> {
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let pseudonym = format!("Erased {suffix}");
    let ids = sqlx::query!(
        r#"SELECT coalesce(array_agg(id ORDER BY id), '{}') AS "ids!" FROM bookings
           WHERE student_id = $1 OR instructor_id = $2"#,
        p.student_id,
        p.instructor_id,
    )
    .fetch_one(&mut *conn)
    .await?;
    let contacts = crm::addresses_of(conn, p.user_id, &p.email).await?;
    let sent_to = deliveries::addresses_sent_to(conn, p.user_id).await?;
    let sms_from = replies::numbers_of(conn, p.user_id).await?;

    let mut emails: Vec<String> = std::iter::once(p.email.clone())
        .chain(contacts.emails)
        .chain(sent_to.emails)
        .map(|e| suppressions::normalise(Channel::Email, &e))
        .filter(|e| !e.is_empty())
        .collect();
    emails.sort();
    emails.dedup();
    let mut phones: Vec<String> = p
        .phone
        .clone()
        .into_iter()
        .chain(contacts.phones)
        .chain(sent_to.phones)
        .chain(sms_from)
        .map(|n| suppressions::normalise(Channel::Sms, &n))
        .filter(|n| !n.is_empty())
        .collect();
    phones.sort();
    phones.dedup();

    let mut strong = vec![format!("{} {}", p.first_name, p.last_name)];
    strong.extend(emails.iter().cloned());
    strong.extend(phones.iter().cloned());
    strong.push(p.access_token.clone());
    strong.push(p.calendar_token.clone());
    strong.extend(p.license_number.clone());
    strong.retain(|s| !s.trim().is_empty());
    let mut needles = strong.clone();
    needles.push(p.first_name.clone());
    needles.push(p.last_name.clone());
    needles.retain(|s| !s.trim().is_empty());
    // Longest first, so a full name is replaced whole before its parts.
    needles.sort_by_key(|s| std::cmp::Reverse(s.len()));
    needles.dedup();

    Ok(Erasing {
        user_id: p.user_id,
        student_id: p.student_id,
        instructor_id: p.instructor_id,
        pseudonym,
        pseudonym_suffix: suffix,
        emails,
        phones,
        strong,
        needles,
        booking_ids: ids.ids,
        now,
    })
}

/// The addresses and numbers found for a person in one place.
#[derive(Debug, Default)]
pub struct Addresses {
    /// Email addresses.
    pub emails: Vec<String>,
    /// Phone numbers.
    pub phones: Vec<String>,
}
