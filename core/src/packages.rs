//! Lesson packages (decision 2): defining a package, a student buying one, a booking consuming a
//! lesson of the student's oldest active purchase (through `booking_packages`) and a cancelled
//! booking giving it back. When a booking leaves exactly one lesson, the student is told
//! (`package_low`, once per purchase). Owns writes to `lesson_packages`, `package_purchases` and
//! `booking_packages`; [`consume`] and [`give_back`] run inside the booking's own transaction
//! (see [`crate::bookings`]).

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::{FromRow, PgConnection};

use crate::{
    analytics,
    error::DomainError,
    kinds::Kind,
    notify::{self, NewNotification},
    states::PackageStatus,
    validate,
};

/// A `lesson_packages` row.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Package {
    /// Id.
    pub id: i64,
    /// Unique name, e.g. "10-lesson bundle".
    pub name: String,
    /// Lessons a purchase gives.
    pub lessons_included: i32,
    /// Price in minor units.
    pub price_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// Days a purchase stays valid.
    pub validity_days: i32,
    /// Can still be bought.
    pub active: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// A package to define.
#[derive(Debug, Clone)]
pub struct NewPackage {
    /// Unique name, 1 to 200 characters.
    pub name: String,
    /// Lessons a purchase gives, 1 to 500.
    pub lessons_included: i32,
    /// Price in minor units, not negative.
    pub price_minor: i64,
    /// ISO 4217 currency, default GBP.
    pub currency: Option<String>,
    /// Days a purchase stays valid, 1 to 3660.
    pub validity_days: i32,
}

/// Defines a package. A name already taken is a conflict.
pub async fn define(conn: &mut PgConnection, np: NewPackage) -> Result<Package, DomainError> {
    let name = np.name.trim();
    if !(1..=200).contains(&name.chars().count()) {
        return Err(DomainError::invalid("name", "expected 1 to 200 characters"));
    }
    if !(1..=500).contains(&np.lessons_included) {
        return Err(DomainError::invalid("lessons_included", "expected 1 to 500"));
    }
    if np.price_minor < 0 {
        return Err(DomainError::invalid("price", "must not be negative (minor units, e.g. pence)"));
    }
    if let Some(c) = &np.currency {
        validate::currency("currency", c)?;
    }
    if !(1..=3660).contains(&np.validity_days) {
        return Err(DomainError::invalid("validity_days", "expected 1 to 3660 days"));
    }
    sqlx::query_as!(
        Package,
        r#"INSERT INTO lesson_packages (name, lessons_included, price_minor, currency, validity_days)
         VALUES ($1, $2, $3, coalesce($4, 'GBP'), $5)
         RETURNING id, name, lessons_included, price_minor, currency::text AS "currency!", validity_days, active, created_at"#,
        name,
        np.lessons_included,
        np.price_minor,
        np.currency,
        np.validity_days,
    )
    .fetch_one(conn)
    .await
    .map_err(|e| match DomainError::from_db(e) {
        DomainError::Conflict(_) => DomainError::Conflict(format!("a package named {name:?} already exists")),
        other => other,
    })
}

/// A `package_purchases` row with its package's name.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Purchase {
    /// Id.
    pub id: i64,
    /// The student (`students.id`).
    pub student_id: i64,
    /// The package bought.
    pub package_id: i64,
    /// Its name.
    pub package_name: String,
    /// Lessons bought.
    pub lessons_total: i32,
    /// Lessons not yet booked.
    pub lessons_remaining: i32,
    /// Bought.
    pub purchased_at: DateTime<Utc>,
    /// Valid until.
    pub expires_at: DateTime<Utc>,
    /// Its state.
    pub status: PackageStatus,
}

/// Buys a package for a student: a purchase with the package's lessons, valid for its
/// `validity_days` from `now`. An unknown student is `NotFound("student")`; an unknown or retired
/// package is an invalid `package_id`.
pub async fn purchase(conn: &mut PgConnection, student_id: i64, package_id: i64, now: DateTime<Utc>) -> Result<Purchase, DomainError> {
    let student_user: Option<i64> = sqlx::query_scalar!("SELECT user_id FROM students WHERE id = $1", student_id)
        .fetch_optional(&mut *conn)
        .await?;
    let student_user = student_user.ok_or(DomainError::NotFound("student"))?;
    let package: Option<(String, i32, i32)> = sqlx::query!(
        "SELECT name, lessons_included, validity_days FROM lesson_packages WHERE id = $1 AND active",
        package_id,
    )
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| (r.name, r.lessons_included, r.validity_days));
    let (name, lessons, days) = package.ok_or_else(|| DomainError::invalid("package_id", "no such package on sale"))?;
    let inserted = sqlx::query!(
        r#"INSERT INTO package_purchases (student_id, package_id, lessons_total, lessons_remaining, purchased_at, expires_at)
         VALUES ($1, $2, $3, $3, $4, $5) RETURNING id, status AS "status: PackageStatus""#,
        student_id,
        package_id,
        lessons,
        now,
        now + Duration::days(days as i64),
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    let (id, status) = (inserted.id, inserted.status);
    analytics::record(
        conn,
        Some(student_user),
        "package_purchased",
        json!({"purchase_id": id, "package_id": package_id, "student_id": student_id, "lessons": lessons}),
        now,
    )
    .await?;
    Ok(Purchase {
        id,
        student_id,
        package_id,
        package_name: name,
        lessons_total: lessons,
        lessons_remaining: lessons,
        purchased_at: now,
        expires_at: now + Duration::days(days as i64),
        status,
    })
}

/// Consumes one lesson for a new booking from the student's oldest active, unexpired purchase
/// with lessons left (the student's row is locked until the booking's transaction ends): the
/// `booking_packages` link, one lesson fewer, `used_up` at zero, and `package_low` to the student
/// when exactly one lesson is left. Returns the purchase used, or `None` when the student has
/// none (the lesson is then paid otherwise).
pub async fn consume(
    conn: &mut PgConnection,
    booking_id: i64,
    student_id: i64,
    student_user_id: i64,
    now: DateTime<Utc>,
) -> Result<Option<i64>, DomainError> {
    // One consumption per student at a time: a concurrent booking of the same student waits here
    // and then sees the purchase as this one left it (oldest first stays true under load).
    sqlx::query!("SELECT id FROM students WHERE id = $1 FOR NO KEY UPDATE", student_id)
        .fetch_optional(&mut *conn)
        .await?;
    let found: Option<(i64, String, i32)> = sqlx::query!(
        "SELECT pp.id, lp.name, pp.lessons_total FROM package_purchases pp JOIN lesson_packages lp ON lp.id = pp.package_id
         WHERE pp.student_id = $1 AND pp.status = 'active' AND pp.lessons_remaining > 0 AND pp.expires_at > $2
         ORDER BY pp.purchased_at, pp.id LIMIT 1
         FOR UPDATE OF pp",
        student_id,
        now,
    )
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| (r.id, r.name, r.lessons_total));
    let Some((purchase_id, name, total)) = found else { return Ok(None) };
    sqlx::query!(
        "INSERT INTO booking_packages (booking_id, purchase_id, package_type, lessons_included) VALUES ($1, $2, $3, $4)",
        booking_id,
        purchase_id,
        name,
        total,
    )
    .execute(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    let left = sqlx::query!(
        "UPDATE package_purchases SET lessons_remaining = lessons_remaining - 1,
                status = CASE WHEN lessons_remaining - 1 = 0 THEN 'used_up' ELSE status END
         WHERE id = $1 RETURNING lessons_remaining, expires_at",
        purchase_id,
    )
    .fetch_one(&mut *conn)
    .await?;
    let (remaining, expires_at): (i32, DateTime<Utc>) = (left.lessons_remaining, left.expires_at);
    if remaining == 1 {
        let mut n = NewNotification::to_user(Kind::PackageLow, student_user_id, format!("package_low:{purchase_id}"), now);
        n.title = "One lesson left".into();
        n.content = format!("One lesson left in your {name}.");
        n.data = json!({
            "package": {"name": name, "lessons_remaining": remaining, "expires_at": expires_at.to_rfc3339(), "purchase_id": purchase_id},
        });
        n.booking_id = Some(booking_id);
        notify::create(conn, n).await?;
    }
    Ok(Some(purchase_id))
}

/// Gives a cancelled booking's lesson back to its purchase (`returned_at` set, one lesson more,
/// `used_up` back to `active`). Returns the purchase, or `None` when the booking used none or
/// already gave it back.
pub async fn give_back(conn: &mut PgConnection, booking_id: i64, now: DateTime<Utc>) -> Result<Option<i64>, DomainError> {
    let purchase: Option<i64> = sqlx::query_scalar!(
        "UPDATE booking_packages SET returned_at = $2 WHERE booking_id = $1 AND returned_at IS NULL RETURNING purchase_id",
        booking_id,
        now,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(purchase_id) = purchase else { return Ok(None) };
    sqlx::query!(
        "UPDATE package_purchases SET lessons_remaining = lessons_remaining + 1,
                status = CASE WHEN status = 'used_up' THEN 'active' ELSE status END
         WHERE id = $1",
        purchase_id,
    )
    .execute(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    Ok(Some(purchase_id))
}

/// Reads a purchase.
pub async fn get_purchase(conn: &mut PgConnection, id: i64) -> Result<Purchase, DomainError> {
    sqlx::query_as!(
        Purchase,
        r#"SELECT pp.id, pp.student_id, pp.package_id, lp.name AS package_name, pp.lessons_total, pp.lessons_remaining,
                pp.purchased_at, pp.expires_at, pp.status AS "status: PackageStatus"
         FROM package_purchases pp JOIN lesson_packages lp ON lp.id = pp.package_id WHERE pp.id = $1"#,
        id,
    )
    .fetch_optional(conn)
    .await?
    .ok_or(DomainError::NotFound("purchase"))
}
