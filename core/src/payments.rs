//! Payments recorded by the school (card, cash, bank transfer): a `payments` row, and, when it
//! pays for a package, the purchase it buys (see [`crate::packages`]). A `succeeded` payment
//! gets its invoice from the scheduler's invoice job, which finds it by its missing `invoiced_at`;
//! nothing here issues invoices or talks to a payment provider. Owns inserts into `payments`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::{FromRow, PgConnection};

use crate::{analytics, error::DomainError, packages, states::PaymentStatus, validate};

/// The payment methods the schema allows.
pub const METHODS: [&str; 4] = ["card", "cash", "bank_transfer", "other"];

/// A payment to record.
#[derive(Debug, Clone)]
pub struct NewPayment {
    /// `students.id`.
    pub student_id: i64,
    /// The booking it pays for (the student's own).
    pub booking_id: Option<i64>,
    /// A `lesson_packages.id` it buys: a pending or succeeded payment creates the purchase.
    pub package_id: Option<i64>,
    /// Amount in minor units, more than 0.
    pub amount_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// One of [`METHODS`].
    pub method: String,
    /// A [`PaymentStatus`] name, as given (checked by [`record`]).
    pub status: String,
    /// The provider's reference, if any.
    pub provider_ref: Option<String>,
}

/// A `payments` row.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Payment {
    /// Id.
    pub id: i64,
    /// Student.
    pub student_id: i64,
    /// Booking paid for.
    pub booking_id: Option<i64>,
    /// Package purchase paid for.
    pub purchase_id: Option<i64>,
    /// Minor units.
    pub amount_minor: i64,
    /// ISO 4217.
    pub currency: String,
    /// card, cash, bank_transfer, other.
    pub method: String,
    /// Its state.
    pub status: PaymentStatus,
    /// Provider reference.
    pub provider_ref: Option<String>,
    /// When it succeeded.
    pub paid_at: Option<DateTime<Utc>>,
    /// Recorded.
    pub created_at: DateTime<Utc>,
}

/// Records a payment; with a `package_id` and a pending or succeeded status, buys the package
/// for the student in the same transaction and links the purchase. A succeeded payment is
/// `paid_at = now` and writes the `payment_succeeded` analytics event.
pub async fn record(conn: &mut PgConnection, np: NewPayment, now: DateTime<Utc>) -> Result<Payment, DomainError> {
    if np.amount_minor <= 0 {
        return Err(DomainError::invalid("amount", "must be more than 0 (minor units, e.g. pence)"));
    }
    validate::currency("currency", &np.currency)?;
    if !METHODS.contains(&np.method.as_str()) {
        return Err(DomainError::invalid("method", format!("expected one of {}", METHODS.join(", "))));
    }
    let Some(status) = PaymentStatus::parse(&np.status) else {
        return Err(DomainError::invalid(
            "status",
            format!("expected one of {}", PaymentStatus::NAMES.join(", ")),
        ));
    };
    if np.provider_ref.as_ref().is_some_and(|r| r.chars().count() > 200) {
        return Err(DomainError::invalid("provider_ref", "at most 200 characters"));
    }
    let student_user: Option<i64> = sqlx::query_scalar!("SELECT user_id FROM students WHERE id = $1", np.student_id)
        .fetch_optional(&mut *conn)
        .await?;
    let student_user = student_user.ok_or_else(|| DomainError::invalid("student_id", "no such student"))?;
    if let Some(b) = np.booking_id {
        let owner: Option<i64> = sqlx::query_scalar!("SELECT student_id FROM bookings WHERE id = $1", b)
            .fetch_optional(&mut *conn)
            .await?;
        match owner {
            None => return Err(DomainError::invalid("booking_id", "no such booking")),
            Some(s) if s != np.student_id => return Err(DomainError::invalid("booking_id", "the booking is another student's")),
            Some(_) => {}
        }
    }
    let purchase_id = match np.package_id {
        Some(p) if matches!(status, PaymentStatus::Pending | PaymentStatus::Succeeded) => {
            Some(packages::purchase(conn, np.student_id, p, now).await?.id)
        }
        Some(p) => {
            let exists: bool = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM lesson_packages WHERE id = $1) AS "exists!""#, p)
                .fetch_one(&mut *conn)
                .await?;
            if !exists {
                return Err(DomainError::invalid("package_id", "no such package"));
            }
            None // a failed or refunded payment buys nothing
        }
        None => None,
    };
    let paid_at = (status == PaymentStatus::Succeeded).then_some(now);
    let p: Payment = sqlx::query_as!(
        Payment,
        r#"INSERT INTO payments (booking_id, student_id, purchase_id, amount_minor, currency, method, status, provider_ref, paid_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         RETURNING id, student_id, booking_id, purchase_id, amount_minor, currency::text AS "currency!", method, status AS "status: PaymentStatus", provider_ref, paid_at, created_at"#,
        np.booking_id,
        np.student_id,
        purchase_id,
        np.amount_minor,
        np.currency,
        np.method,
        status as PaymentStatus,
        np.provider_ref,
        paid_at,
        now,
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    let event = match p.status {
        PaymentStatus::Succeeded => Some("payment_succeeded"),
        PaymentStatus::Failed => Some("payment_failed"),
        PaymentStatus::Pending | PaymentStatus::Refunded => None,
    };
    if let Some(event) = event {
        analytics::record(
            conn,
            Some(student_user),
            event,
            json!({"payment_id": p.id, "student_id": p.student_id, "booking_id": p.booking_id, "purchase_id": p.purchase_id,
                   "amount_minor": p.amount_minor, "currency": p.currency, "method": p.method}),
            now,
        )
        .await?;
    }
    Ok(p)
}

/// Erasure: the person's payments and invoices are kept as they are (the law requires them;
/// they name the person only through `student_id`, whose name is now the pseudonym), and their
/// invoice PDFs are marked to be drawn again with the pseudonym by the invoice task. Returns
/// how many invoices were marked.
pub async fn erase_person(conn: &mut PgConnection, e: &crate::privacy::Erasing) -> Result<u64, sqlx::Error> {
    let Some(student_id) = e.student_id else { return Ok(0) };
    Ok(sqlx::query!(
        "UPDATE invoices SET pdf_redraw_requested_at = $2
         WHERE payment_id IN (SELECT id FROM payments WHERE student_id = $1) AND pdf_path IS NOT NULL",
        student_id,
        e.now,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Retention: deletes at most `batch` payments created before `cutoff` that no longer have an
/// invoice (the invoice task deletes old invoices first) and are settled. Returns how many.
pub async fn purge_batch(conn: &mut PgConnection, cutoff: DateTime<Utc>, batch: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "DELETE FROM payments WHERE id IN (
             SELECT p.id FROM payments p
             WHERE p.created_at < $1 AND p.status <> 'pending'
               AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.payment_id = p.id)
             LIMIT $2 FOR UPDATE SKIP LOCKED)",
        cutoff,
        batch,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected())
}
