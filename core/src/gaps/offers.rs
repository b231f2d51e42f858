//! The offers of a freed slot ([`offer_freed_slot`]), reading them ([`find`], [`open`],
//! [`for_booking`]), accepting one ([`accept`]) and the expiry sweep ([`expire_due`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgConnection;

use super::{GapFill, new_token, token_hash, within_windows};
use crate::{
    analytics,
    bookings::{self, Booking, BookingSettings, NewBooking, Party},
    error::DomainError,
    kinds::Kind,
    notify::{self, NewNotification},
    people::Window,
    states::OfferStatus,
};

/// A slot a cancellation or a move has just freed.
#[derive(Debug, Clone)]
pub struct FreedSlot<'a> {
    /// The booking that held it.
    pub booking_id: i64,
    /// Its version while it held the slot.
    pub booking_version: i32,
    /// The student who held it (never offered their own slot back).
    pub student_id: i64,
    /// The instructor.
    pub instructor: &'a Party,
    /// Start.
    pub start_time: DateTime<Utc>,
    /// End.
    pub end_time: DateTime<Utc>,
}

struct Candidate {
    entry_id: i64,
    student_id: i64,
    user_id: i64,
    timezone: String,
    pickup_location: Option<String>,
}

/// Offers a freed slot (see the module header). Returns the ids of the offers made; none when
/// the notice is too short, the instructor is no longer free then, or nobody matches.
pub async fn offer_freed_slot(
    conn: &mut PgConnection,
    s: &GapFill,
    slot: &FreedSlot<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<i64>, DomainError> {
    if s.max_offers == 0 {
        return Ok(Vec::new());
    }
    let expires_at = slot.start_time - s.notice();
    if expires_at < now {
        return Ok(Vec::new());
    }
    if !bookings::check_availability(conn, slot.instructor, slot.start_time, slot.end_time).await? {
        return Ok(Vec::new());
    }
    let taken: bool = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM bookings WHERE instructor_id = $1 AND status IN ('pending', 'confirmed', 'completed')
                        AND tstzrange(start_time, end_time, '[)') && tstzrange($2, $3, '[)')) AS "taken!""#,
        slot.instructor.id,
        slot.start_time,
        slot.end_time,
    )
    .fetch_one(&mut *conn)
    .await?;
    if taken {
        return Ok(Vec::new());
    }
    let candidates: Vec<Candidate> = sqlx::query_as!(
        Candidate,
        "SELECT e.id AS entry_id, e.student_id, u.id AS user_id, u.timezone,
                (SELECT b.pickup_location FROM bookings b WHERE b.student_id = e.student_id AND b.pickup_location IS NOT NULL
                 ORDER BY b.start_time DESC LIMIT 1) AS pickup_location
         FROM waitlist_entries e JOIN students s ON s.id = e.student_id JOIN users u ON u.id = s.user_id
         WHERE e.active AND u.status = 'active' AND e.student_id <> $1
           AND (cardinality(e.instructor_ids) = 0 OR $2 = ANY(e.instructor_ids))
           AND NOT EXISTS (SELECT 1 FROM bookings b WHERE b.student_id = e.student_id AND b.status IN ('pending', 'confirmed')
                           AND b.start_time < $4 AND b.end_time > $3)
         ORDER BY e.joined_at, e.id",
        slot.student_id,
        slot.instructor.id,
        slot.start_time,
        slot.end_time,
    )
    .fetch_all(&mut *conn)
    .await?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let entry_ids: Vec<i64> = candidates.iter().map(|c| c.entry_id).collect();
    let windows = sqlx::query!(
        "SELECT entry_id, day_of_week, start_time, end_time FROM waitlist_windows WHERE entry_id = ANY($1)",
        &entry_ids,
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut offered = Vec::new();
    for c in candidates {
        if offered.len() >= s.max_offers as usize {
            break;
        }
        let own: Vec<Window> = windows
            .iter()
            .filter(|w| w.entry_id == c.entry_id)
            .map(|w| Window {
                day_of_week: w.day_of_week,
                start_time: w.start_time,
                end_time: w.end_time,
            })
            .collect();
        let tz = crate::validate::stored_timezone(&c.timezone);
        if !within_windows(&own, tz, slot.start_time, slot.end_time) {
            continue;
        }
        let token = new_token();
        let offer_id: Option<i64> = sqlx::query_scalar!(
            "INSERT INTO slot_offers (booking_id, booking_version, instructor_id, student_id, waitlist_entry_id, start_time, end_time,
                                      pickup_location, token_sha256, freed_at, expires_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $10)
             ON CONFLICT (booking_id, booking_version, student_id) DO NOTHING
             RETURNING id",
            slot.booking_id,
            slot.booking_version,
            slot.instructor.id,
            c.student_id,
            c.entry_id,
            slot.start_time,
            slot.end_time,
            c.pickup_location.as_deref(),
            token_hash(&token),
            now,
            expires_at,
        )
        .fetch_optional(&mut *conn)
        .await
        .map_err(DomainError::from_db)?;
        let Some(offer_id) = offer_id else { continue };
        let url = format!("{}/offers/{token}", s.public_base_url);
        let mut n = NewNotification::to_user(Kind::SlotOffer, c.user_id, format!("slot_offer:{offer_id}"), now);
        n.title = "Lesson slot offered".into();
        n.content = format!("A lesson with {} has come free; the first to accept gets it.", slot.instructor.name);
        n.data = json!({
            "offer": {
                "id": offer_id,
                "start_time": slot.start_time.to_rfc3339(),
                "end_time": slot.end_time.to_rfc3339(),
                "instructor_name": slot.instructor.name,
                "pickup_location": c.pickup_location,
                "expires_at": expires_at.to_rfc3339(),
                "url": url,
            }
        });
        n.booking_id = Some(slot.booking_id);
        n.expires_at = Some(expires_at);
        notify::create(conn, n).await?;
        offered.push(offer_id);
    }
    if !offered.is_empty() {
        analytics::record(
            conn,
            None,
            "slot_offered",
            json!({"booking_id": slot.booking_id, "version": slot.booking_version, "instructor_id": slot.instructor.id, "offers": offered.len()}),
            now,
        )
        .await?;
        tracing::info!(
            booking_id = slot.booking_id,
            offers = offered.len(),
            "freed slot offered to waitlisted students"
        );
    }
    Ok(offered)
}

/// An offer as people and operators see it. `status` is computed at read time: an open offer
/// past `expires_at` reads `expired`.
#[derive(Debug, Clone, Serialize)]
pub struct Offer {
    /// `slot_offers.id`.
    pub id: i64,
    /// The booking that freed the slot.
    pub booking_id: i64,
    /// Its version then.
    pub booking_version: i32,
    /// Instructor.
    pub instructor_id: i64,
    /// Instructor's name.
    pub instructor_name: String,
    /// The student offered it.
    pub student_id: i64,
    /// Their name.
    pub student_name: String,
    /// Their time zone.
    pub student_timezone: String,
    /// Start of the slot.
    pub start_time: DateTime<Utc>,
    /// End of the slot.
    pub end_time: DateTime<Utc>,
    /// The student's pickup.
    pub pickup_location: Option<String>,
    /// Its state (`expired` as soon as its time ran out, even before the expiry job has run).
    pub status: OfferStatus,
    /// When the slot was freed.
    pub freed_at: DateTime<Utc>,
    /// Accept before this.
    pub expires_at: DateTime<Utc>,
    /// First opened.
    pub opened_at: Option<DateTime<Utc>>,
    /// Accepted.
    pub accepted_at: Option<DateTime<Utc>>,
    /// The booking the acceptance made.
    pub accepted_booking_id: Option<i64>,
    /// Withdrawn (another student accepted).
    pub withdrawn_at: Option<DateTime<Utc>>,
    /// Made.
    pub created_at: DateTime<Utc>,
}

/// `sqlx::query_as!(Offer, …)` selecting offers, the statement's own end (`WHERE …`) appended to
/// the one select list; `$1` is now, the statement's parameters follow.
macro_rules! select_offers {
    ($rest:literal, $($arg:expr),+ $(,)?) => {
        sqlx::query_as!(
            Offer,
            r#"
    SELECT o.id, o.booking_id, o.booking_version, o.instructor_id, iu.first_name || ' ' || iu.last_name AS "instructor_name!",
           o.student_id, su.first_name || ' ' || su.last_name AS "student_name!", su.timezone AS student_timezone,
           o.start_time, o.end_time, o.pickup_location,
           CASE WHEN o.status = 'open' AND o.expires_at <= $1 THEN 'expired' ELSE o.status END AS "status!: OfferStatus",
           o.freed_at, o.expires_at, o.opened_at, o.accepted_at, o.accepted_booking_id, o.withdrawn_at, o.created_at
    FROM slot_offers o
    JOIN instructors i ON i.id = o.instructor_id JOIN users iu ON iu.id = i.user_id
    JOIN students s ON s.id = o.student_id JOIN users su ON su.id = s.user_id"# + $rest,
            $($arg),+
        )
    };
}

/// The offer a token names, if any.
pub async fn find(conn: &mut PgConnection, token: &str, now: DateTime<Utc>) -> Result<Option<Offer>, sqlx::Error> {
    if token.is_empty() || token.len() > 100 {
        return Ok(None);
    }
    select_offers!(" WHERE o.token_sha256 = $2", now, token_hash(token))
        .fetch_optional(conn)
        .await
}

/// The offer a token names, marked opened (the first time, while it is open).
pub async fn open(conn: &mut PgConnection, token: &str, now: DateTime<Utc>) -> Result<Option<Offer>, sqlx::Error> {
    if token.is_empty() || token.len() > 100 {
        return Ok(None);
    }
    sqlx::query!(
        "UPDATE slot_offers SET opened_at = $2 WHERE token_sha256 = $1 AND opened_at IS NULL AND status = 'open' AND expires_at > $2",
        token_hash(token),
        now,
    )
    .execute(&mut *conn)
    .await?;
    find(conn, token, now).await
}

/// The offers made for the slots a booking freed, oldest first.
pub async fn for_booking(conn: &mut PgConnection, booking_id: i64, now: DateTime<Utc>) -> Result<Vec<Offer>, sqlx::Error> {
    select_offers!(" WHERE o.booking_id = $2 ORDER BY o.booking_version, o.id", now, booking_id)
        .fetch_all(conn)
        .await
}

/// What accepting an offer gave.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The offer (status `accepted`).
    pub offer: Offer,
    /// The new booking.
    pub booking: Booking,
    /// False when this offer had already been accepted (a second click): nothing new was written.
    pub fresh: bool,
}

/// Accepts the offer a token names (see the module header). `NotFound("offer")` for an unknown
/// token; `Conflict` when the offer expired, was withdrawn, or the slot has gone.
pub async fn accept(conn: &mut PgConnection, s: &BookingSettings, token: &str, now: DateTime<Utc>) -> Result<Accepted, DomainError> {
    let offer = find(conn, token, now).await?.ok_or(DomainError::NotFound("offer"))?;
    // The instructor's row lock, which every booking of theirs takes first (see
    // `bookings::create`), taken before anything else: acceptances of one instructor's slots
    // queue here, in one lock order, and each reads its offer again once through (a second click
    // of the same link then finds it accepted; a slower acceptor finds it withdrawn). Whatever
    // else books the instructor meanwhile, the exclusion constraint still has the last word.
    sqlx::query_scalar!("SELECT id FROM instructors WHERE id = $1 FOR NO KEY UPDATE", offer.instructor_id)
        .fetch_optional(&mut *conn)
        .await?;
    let offer = find(conn, token, now).await?.ok_or(DomainError::NotFound("offer"))?;
    match offer.status {
        OfferStatus::Open => {}
        OfferStatus::Accepted => {
            let booking = bookings::get(conn, offer.accepted_booking_id.ok_or(DomainError::NotFound("booking"))?).await?;
            return Ok(Accepted {
                offer,
                booking,
                fresh: false,
            });
        }
        OfferStatus::Expired => {
            return Err(DomainError::Conflict(
                "this offer has expired: the slot can no longer be booked through it".into(),
            ));
        }
        OfferStatus::Withdrawn => return Err(DomainError::Conflict("the slot has gone: another student accepted it first".into())),
    }
    // The student may have booked something else at that time since the offer was made.
    let busy: bool = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM bookings WHERE student_id = $1 AND status IN ('pending', 'confirmed')
                        AND start_time < $3 AND end_time > $2) AS "busy!""#,
        offer.student_id,
        offer.start_time,
        offer.end_time,
    )
    .fetch_one(&mut *conn)
    .await?;
    if busy {
        return Err(DomainError::Conflict("you already have a lesson at that time".into()));
    }
    let nb = NewBooking {
        student_id: offer.student_id,
        instructor_id: offer.instructor_id,
        start_time: offer.start_time,
        end_time: offer.end_time,
        pickup_location: offer.pickup_location.clone(),
        dropoff_location: None,
        series: None,
    };
    let booking = match bookings::create(conn, s, nb, now).await {
        Ok(b) => b,
        Err(DomainError::Conflict(_)) => return Err(DomainError::Conflict("the slot has gone: another student accepted it first".into())),
        Err(DomainError::Invalid { .. }) | Err(DomainError::NotFound(_)) => {
            return Err(DomainError::Conflict("the slot has gone: it is no longer available".into()));
        }
        Err(e) => return Err(e),
    };
    let done = sqlx::query!(
        "UPDATE slot_offers SET status = 'accepted', accepted_at = $2, accepted_booking_id = $3 WHERE id = $1 AND status = 'open'",
        offer.id,
        now,
        booking.id,
    )
    .execute(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    if done.rows_affected() != 1 {
        return Err(DomainError::Conflict("the slot has gone: another student accepted it first".into()));
    }
    // The others: withdrawn; those who had looked are told.
    let withdrawn = sqlx::query!(
        r#"WITH w AS (
             UPDATE slot_offers SET status = 'withdrawn', withdrawn_at = $3
             WHERE booking_id = $1 AND booking_version = $2 AND status = 'open'
             RETURNING id, opened_at, student_id)
         SELECT w.id AS "id!", w.opened_at IS NOT NULL AS "opened!", s.user_id FROM w JOIN students s ON s.id = w.student_id ORDER BY w.id"#,
        offer.booking_id,
        offer.booking_version,
        now,
    )
    .fetch_all(&mut *conn)
    .await?;
    for r in &withdrawn {
        notify::cancel_by_key(conn, &format!("slot_offer:{}", r.id), "another student accepted the slot").await?;
        if r.opened {
            let mut n = NewNotification::to_user(Kind::SlotTaken, r.user_id, format!("slot_taken:{}", r.id), now);
            n.title = "Lesson slot taken".into();
            n.content = format!(
                "The lesson with {} you were offered went to another student.",
                offer.instructor_name
            );
            n.data = json!({
                "offer": {
                    "id": r.id,
                    "start_time": offer.start_time.to_rfc3339(),
                    "end_time": offer.end_time.to_rfc3339(),
                    "instructor_name": offer.instructor_name,
                }
            });
            n.booking_id = Some(offer.booking_id);
            notify::create(conn, n).await?;
        }
    }
    sqlx::query!(
        "UPDATE waitlist_entries SET active = false, closed_at = $2, closed_reason = 'accepted an offer' WHERE student_id = $1 AND active",
        offer.student_id,
        now,
    )
    .execute(&mut *conn)
    .await?;
    analytics::record(
        conn,
        None,
        "slot_filled",
        json!({
            "booking_id": offer.booking_id,
            "new_booking_id": booking.id,
            "instructor_id": offer.instructor_id,
            "offer_id": offer.id,
            "minutes_to_fill": (now - offer.freed_at).num_seconds() as f64 / 60.0,
            "withdrawn": withdrawn.len(),
        }),
        now,
    )
    .await?;
    let offer = find(conn, token, now).await?.ok_or(DomainError::NotFound("offer"))?;
    Ok(Accepted {
        offer,
        booking,
        fresh: true,
    })
}

/// Marks open offers past their expiry `expired`; returns how many.
pub async fn expire_due(conn: &mut PgConnection, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let r = sqlx::query!(
        "UPDATE slot_offers SET status = 'expired' WHERE status = 'open' AND expires_at <= $1",
        now
    )
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}
