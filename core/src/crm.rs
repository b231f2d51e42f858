//! CRM: one `crm_contacts` row per student (created with the user) and per lead without a user,
//! the `lead_status` moves that bookings and lessons imply (lead → active), and the staff's
//! interactions. Owns writes to `crm_contacts` and `crm_interactions`, except the periodic jobs'
//! own: the follow-up of silent leads and the rollup's `lifetime_value_minor` and later status
//! moves (passed, lapsed) live in the worker's periodic jobs.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::{FromRow, PgConnection};

use crate::{analytics, error::DomainError, states::LeadStatus, validate};

/// The interaction kinds the schema allows.
pub const INTERACTION_TYPES: [&str; 5] = ["call", "email", "sms", "meeting", "note"];

/// A `crm_contacts` row.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Contact {
    /// Id.
    pub id: i64,
    /// The user, for a student; `None` for a lead.
    pub user_id: Option<i64>,
    /// Full name.
    pub name: String,
    /// Email address.
    pub email: Option<String>,
    /// E.164 phone number.
    pub phone: Option<String>,
    /// lead, student or partner.
    pub contact_type: String,
    /// Where the contact stands.
    pub lead_status: LeadStatus,
    /// Succeeded payments so far, minor units (kept by the rollup job).
    pub lifetime_value_minor: i64,
    /// Currency of the lifetime value.
    pub currency: String,
    /// Where the lead came from.
    pub source: Option<String>,
    /// The latest interaction.
    pub last_interaction_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// Creates the contact of a new student user (`contact_type` student, `lead_status` lead until
/// they book). Does nothing when the user already has one. Returns its id, if created.
pub async fn create_for_student(conn: &mut PgConnection, user_id: i64) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        "INSERT INTO crm_contacts (user_id, name, email, phone, contact_type, lead_status, source)
         SELECT id, first_name || ' ' || last_name, email, phone, 'student', 'lead', 'signup' FROM users WHERE id = $1
         ON CONFLICT (user_id) DO NOTHING
         RETURNING id",
        user_id,
    )
    .fetch_optional(conn)
    .await
}

/// A booking or a completed lesson makes the user's contact `active` (from `lead`, or back from
/// `lapsed`). Contacts that passed or were lost stay as they are.
pub async fn mark_active(conn: &mut PgConnection, user_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE crm_contacts SET lead_status = 'active' WHERE user_id = $1 AND lead_status IN ('lead', 'lapsed')",
        user_id,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A lead to record (no user).
#[derive(Debug, Clone, Default)]
pub struct NewContact {
    /// Full name, 1 to 200 characters.
    pub name: String,
    /// Email address.
    pub email: Option<String>,
    /// E.164 phone number.
    pub phone: Option<String>,
    /// Where they came from (website, referral, ...), at most 200 characters.
    pub source: Option<String>,
}

/// Records a lead: `contact_type` and `lead_status` lead, no interaction yet (the follow-up
/// clock runs from its creation).
pub async fn create_lead(conn: &mut PgConnection, nc: NewContact, now: DateTime<Utc>) -> Result<Contact, DomainError> {
    let name = nc.name.trim();
    if !(1..=200).contains(&name.chars().count()) {
        return Err(DomainError::invalid("name", "expected 1 to 200 characters"));
    }
    if let Some(e) = &nc.email {
        validate::email("email", e.trim())?;
    }
    if let Some(p) = &nc.phone {
        validate::phone("phone", p)?;
    }
    if nc.source.as_ref().is_some_and(|s| s.chars().count() > 200) {
        return Err(DomainError::invalid("source", "at most 200 characters"));
    }
    let c: Contact = sqlx::query_as!(
        Contact,
        r#"INSERT INTO crm_contacts (name, email, phone, contact_type, lead_status, source, created_at)
         VALUES ($1, $2, $3, 'lead', 'lead', $4, $5)
         RETURNING id, user_id, name, email, phone, contact_type, lead_status AS "lead_status: LeadStatus", lifetime_value_minor,
                   currency::text AS "currency!", source, last_interaction_at, created_at"#,
        name,
        nc.email.as_deref().map(str::trim),
        nc.phone.as_deref(),
        nc.source.as_deref(),
        now,
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    analytics::record(
        conn,
        None,
        "crm_contact_created",
        json!({"contact_id": c.id, "source": c.source}),
        now,
    )
    .await?;
    Ok(c)
}

/// An interaction to record.
#[derive(Debug, Clone)]
pub struct NewInteraction {
    /// `crm_contacts.id`.
    pub contact_id: i64,
    /// The staff member (`users.id`).
    pub staff_user_id: Option<i64>,
    /// One of [`INTERACTION_TYPES`].
    pub interaction_type: String,
    /// Free text, at most 10 000 characters.
    pub notes: Option<String>,
    /// When it happened; default now.
    pub interaction_date: Option<DateTime<Utc>>,
}

/// A `crm_interactions` row.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Interaction {
    /// Id.
    pub id: i64,
    /// The contact.
    pub contact_id: i64,
    /// The staff member.
    pub staff_user_id: Option<i64>,
    /// call, email, sms, meeting or note.
    pub interaction_type: String,
    /// When it happened.
    pub interaction_date: DateTime<Utc>,
    /// Free text.
    pub notes: Option<String>,
    /// Recorded.
    pub created_at: DateTime<Utc>,
}

/// Records a staff interaction and moves the contact's `last_interaction_at` forward to it
/// (an interaction back-dated before the latest one leaves it alone).
pub async fn record_interaction(conn: &mut PgConnection, ni: NewInteraction, now: DateTime<Utc>) -> Result<Interaction, DomainError> {
    if !INTERACTION_TYPES.contains(&ni.interaction_type.as_str()) {
        return Err(DomainError::invalid(
            "interaction_type",
            format!("expected one of {}", INTERACTION_TYPES.join(", ")),
        ));
    }
    if ni.notes.as_ref().is_some_and(|n| n.chars().count() > 10_000) {
        return Err(DomainError::invalid("notes", "at most 10000 characters"));
    }
    let when = ni.interaction_date.unwrap_or(now);
    if when > now + chrono::Duration::minutes(5) {
        return Err(DomainError::invalid("interaction_date", "must not be in the future"));
    }
    // Locks the contact: concurrent interactions move last_interaction_at one at a time.
    let exists: Option<i64> = sqlx::query_scalar!("SELECT id FROM crm_contacts WHERE id = $1 FOR UPDATE", ni.contact_id)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        return Err(DomainError::invalid("contact_id", "no such contact"));
    }
    if let Some(staff) = ni.staff_user_id {
        let ok: bool = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM users WHERE id = $1) AS "exists!""#, staff)
            .fetch_one(&mut *conn)
            .await?;
        if !ok {
            return Err(DomainError::invalid("staff_user_id", "no such user"));
        }
    }
    let i: Interaction = sqlx::query_as!(
        Interaction,
        "INSERT INTO crm_interactions (contact_id, staff_user_id, interaction_type, interaction_date, notes, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, contact_id, staff_user_id, interaction_type, interaction_date, notes, created_at",
        ni.contact_id,
        ni.staff_user_id,
        ni.interaction_type,
        when,
        ni.notes,
        now,
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    sqlx::query!(
        "UPDATE crm_contacts SET last_interaction_at = GREATEST(last_interaction_at, $2) WHERE id = $1",
        ni.contact_id,
        when,
    )
    .execute(&mut *conn)
    .await?;
    analytics::record(
        conn,
        ni.staff_user_id,
        "crm_interaction_recorded",
        json!({"contact_id": ni.contact_id, "interaction_id": i.id, "interaction_type": i.interaction_type}),
        now,
    )
    .await?;
    Ok(i)
}

/// Reads a contact.
pub async fn get(conn: &mut PgConnection, id: i64) -> Result<Contact, DomainError> {
    sqlx::query_as!(
        Contact,
        r#"SELECT id, user_id, name, email, phone, contact_type, lead_status AS "lead_status: LeadStatus", lifetime_value_minor,
                  currency::text AS "currency!", source, last_interaction_at, created_at
           FROM crm_contacts WHERE id = $1"#,
        id,
    )
    .fetch_optional(conn)
    .await?
    .ok_or(DomainError::NotFound("contact"))
}

/// The addresses and numbers of a person's CRM contacts (theirs, and leads with their address).
pub async fn addresses_of(conn: &mut PgConnection, user_id: i64, email: &str) -> Result<crate::privacy::Addresses, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT email, phone FROM crm_contacts WHERE user_id = $1 OR lower(email) = lower($2)",
        user_id,
        email,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(crate::privacy::Addresses {
        emails: rows.iter().filter_map(|r| r.email.clone()).collect(),
        phones: rows.iter().filter_map(|r| r.phone.clone()).collect(),
    })
}

/// Erasure: the person's contacts (theirs, and leads with one of their addresses or numbers)
/// keep their status and value under the pseudonym, without address or number; the notes of
/// staff interactions with them are gone. Returns the rows changed.
pub async fn erase_person(conn: &mut PgConnection, e: &crate::privacy::Erasing) -> Result<u64, sqlx::Error> {
    let ids: Vec<i64> = sqlx::query_scalar!(
        "UPDATE crm_contacts SET name = $4, email = NULL, phone = NULL, source = erase_needles(source, $5, $4)
         WHERE user_id = $1 OR lower(email) = ANY($2) OR phone = ANY($3) RETURNING id",
        e.user_id,
        &e.emails,
        &e.phones,
        e.pseudonym,
        &e.needles,
    )
    .fetch_all(&mut *conn)
    .await?;
    let notes = sqlx::query!(
        "UPDATE crm_interactions SET notes = NULL WHERE contact_id = ANY($1) AND notes IS NOT NULL",
        &ids
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(ids.len() as u64 + notes)
}
