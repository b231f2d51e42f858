//! Weekly recurring bookings (decision 5): creating a `booking_series` row and expanding it into
//! bookings over a rolling horizon. Each occurrence is booked through [`bookings::create`] in its
//! own savepoint, so one conflicting week never spoils the others; occurrences the instructor
//! cannot take are reported as skipped and [`notify_conflicts`] tells the student and the school.
//!
//! Expansion is idempotent: the series row is locked while it is expanded, `expanded_through`
//! remembers the last local date looked at, occurrences that already have a booking are left
//! alone, and the unique index `bookings_series_occurrence_key` makes a second booking of one
//! occurrence impossible. The admin API expands a new series at once; the scheduler's recurring
//! job calls [`expand`] for every active series. Owns writes to `booking_series`.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc, offset::LocalResult};
use chrono_tz::Tz;
use serde::Serialize;
use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::{
    bookings::{self, Booking, BookingSettings, NewBooking},
    error::DomainError,
    kinds::Kind,
    notify::{self, NewNotification},
    states::SeriesStatus,
    validate,
};

/// A weekly series to create.
#[derive(Debug, Clone)]
pub struct NewSeries {
    /// `students.id`.
    pub student_id: i64,
    /// `instructors.id`.
    pub instructor_id: i64,
    /// ISO weekdays, 1 = Monday … 7 = Sunday.
    pub weekdays: Vec<i16>,
    /// Wall-clock start in `timezone`, kept across DST changes.
    pub local_start_time: NaiveTime,
    /// Lesson length, 15 to 600 minutes.
    pub duration_minutes: i32,
    /// IANA time zone; `None` = the instructor's.
    pub timezone: Option<String>,
    /// Pickup location of every lesson.
    pub pickup_location: Option<String>,
    /// First local date.
    pub starts_on: NaiveDate,
    /// Last local date (inclusive).
    pub until_on: Option<NaiveDate>,
    /// How many occurrences (dates on the weekdays from `starts_on`, booked or not).
    pub occurrence_count: Option<i32>,
}

/// A `booking_series` row.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// Id.
    pub id: i64,
    /// Student.
    pub student_id: i64,
    /// Instructor.
    pub instructor_id: i64,
    /// ISO weekdays.
    pub weekdays: Vec<i16>,
    /// Local start time.
    pub local_start_time: NaiveTime,
    /// Length in minutes.
    pub duration_minutes: i32,
    /// IANA time zone of `local_start_time` and the dates.
    pub timezone: String,
    /// Pickup.
    pub pickup_location: Option<String>,
    /// First local date.
    pub starts_on: NaiveDate,
    /// Last local date.
    pub until_on: Option<NaiveDate>,
    /// Occurrence limit.
    pub occurrence_count: Option<i32>,
    /// Whether it still makes lessons.
    pub status: SeriesStatus,
    /// Last local date expansion has looked at.
    pub expanded_through: Option<NaiveDate>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// `sqlx::query_as!(Series, …)` over a statement given as string literals, `;`, then its
/// arguments; among the literals, `COLUMNS` stands for the columns of a [`Series`], so every
/// statement reads the same ones and each is still one literal the macro checks.
macro_rules! series_query {
    ([$($done:literal)*] COLUMNS $($rest:tt)*) => {
        series_query!([$($done)* "id, student_id, instructor_id, weekdays, local_start_time, duration_minutes, timezone, pickup_location, \
     starts_on, until_on, occurrence_count, status AS \"status: SeriesStatus\", expanded_through, created_at"] $($rest)*)
    };
    ([$($done:literal)*] $piece:literal $($rest:tt)*) => {
        series_query!([$($done)* $piece] $($rest)*)
    };
    ([$first:literal $($done:literal)*]; $($arg:expr),+ $(,)?) => {
        sqlx::query_as!(Series, $first $(+ $done)*, $($arg),+)
    };
    ($($rest:tt)+) => {
        series_query!([] $($rest)+)
    };
}

/// An occurrence that was not booked.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// Its local date in the series' time zone.
    pub date: NaiveDate,
    /// When it would have started.
    pub start_time: DateTime<Utc>,
    /// Why it was not booked.
    pub reason: String,
    /// True when the instructor could not take it (a clash or outside their hours): the people
    /// concerned are told by [`notify_conflicts`]. False when its time had already passed.
    pub conflict: bool,
}

/// What one [`expand`] did.
#[derive(Debug, Clone, Serialize)]
pub struct ExpandReport {
    /// The series.
    pub series_id: i64,
    /// Bookings created by this run.
    pub created: Vec<Booking>,
    /// Occurrences of this run that were not booked.
    pub skipped: Vec<Skipped>,
    /// The last local date looked at so far.
    pub expanded_through: Option<NaiveDate>,
    /// True when the series has no occurrences left (now `ended`).
    pub ended: bool,
}

/// The UTC instant of wall-clock `time` on `date` in `tz`. An ambiguous time (clocks going back)
/// is its first instance; a time in a gap (clocks going forward) is read with the offset before
/// the gap, so 01:30 on the spring-forward night in London is 02:30 BST.
pub fn local_instant(tz: Tz, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
    let naive = date.and_time(time);
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            use chrono::Offset;
            let before = tz.offset_from_utc_datetime(&(naive - Duration::hours(12))).fix();
            Utc.from_utc_datetime(&(naive - Duration::seconds(before.local_minus_utc() as i64)))
        }
    }
}

/// Validates and inserts a series (active, not yet expanded). The time zone defaults to the
/// instructor's.
pub async fn create(conn: &mut PgConnection, ns: NewSeries) -> Result<Series, DomainError> {
    let mut weekdays = ns.weekdays.clone();
    weekdays.sort_unstable();
    weekdays.dedup();
    if weekdays.is_empty() {
        return Err(DomainError::invalid(
            "weekdays",
            "expected at least one ISO weekday (1 = Monday … 7 = Sunday)",
        ));
    }
    if weekdays.iter().any(|d| !(1..=7).contains(d)) {
        return Err(DomainError::invalid("weekdays", "expected ISO weekdays, 1 = Monday … 7 = Sunday"));
    }
    if !(15..=600).contains(&ns.duration_minutes) {
        return Err(DomainError::invalid("duration_minutes", "expected 15 to 600 minutes"));
    }
    if ns.until_on.is_some_and(|u| u < ns.starts_on) {
        return Err(DomainError::invalid("until_on", "must not be before starts_on"));
    }
    if ns.occurrence_count.is_some_and(|c| c <= 0) {
        return Err(DomainError::invalid("occurrence_count", "must be positive"));
    }
    if ns.pickup_location.as_ref().is_some_and(|p| p.chars().count() > 500) {
        return Err(DomainError::invalid("pickup_location", "at most 500 characters"));
    }
    let student: bool = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM students WHERE id = $1) AS "exists!""#,
        ns.student_id
    )
    .fetch_one(&mut *conn)
    .await?;
    if !student {
        return Err(DomainError::invalid("student_id", "no such student"));
    }
    let instructor_tz: Option<String> = sqlx::query_scalar!(
        "SELECT u.timezone FROM instructors i JOIN users u ON u.id = i.user_id WHERE i.id = $1 AND i.active",
        ns.instructor_id,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(instructor_tz) = instructor_tz else {
        return Err(DomainError::invalid("instructor_id", "no such instructor"));
    };
    let timezone = ns.timezone.clone().unwrap_or(instructor_tz);
    validate::timezone("timezone", &timezone)?;
    let series: Series = series_query!(
        "INSERT INTO booking_series (student_id, instructor_id, weekdays, local_start_time, duration_minutes, timezone,
                                     pickup_location, starts_on, until_on, occurrence_count)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING " COLUMNS;
        ns.student_id,
        ns.instructor_id,
        &weekdays,
        ns.local_start_time,
        ns.duration_minutes,
        &timezone,
        ns.pickup_location.as_deref(),
        ns.starts_on,
        ns.until_on,
        ns.occurrence_count,
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    Ok(series)
}

/// Reads a series.
pub async fn get(conn: &mut PgConnection, id: i64) -> Result<Series, DomainError> {
    series_query!("SELECT " COLUMNS " FROM booking_series WHERE id = $1"; id)
        .fetch_optional(conn)
        .await?
        .ok_or(DomainError::NotFound("booking series"))
}

/// Books the series' occurrences from the day after `expanded_through` (or `starts_on`, but
/// never before today in the series' time zone) up to `horizon_days` after today, honouring
/// `until_on` and `occurrence_count`. Each occurrence is booked with
/// [`bookings::create`] in a savepoint; a clash or an occurrence outside the instructor's hours
/// is skipped and reported, as is one whose start has already passed. Occurrences that already
/// have a booking are left alone. A series with nothing left is marked `ended`.
///
/// Run it in a transaction and call [`notify_conflicts`] with the report in the same one.
pub async fn expand(
    conn: &mut PgConnection,
    settings: &BookingSettings,
    series_id: i64,
    now: DateTime<Utc>,
    horizon_days: u32,
) -> Result<ExpandReport, DomainError> {
    let series: Series = series_query!("SELECT " COLUMNS " FROM booking_series WHERE id = $1 FOR UPDATE"; series_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(DomainError::NotFound("booking series"))?;
    let mut report = ExpandReport {
        series_id,
        created: Vec::new(),
        skipped: Vec::new(),
        expanded_through: series.expanded_through,
        ended: series.status == SeriesStatus::Ended,
    };
    if report.ended {
        return Ok(report);
    }
    let tz = validate::timezone("timezone", &series.timezone)?;
    let today = now.with_timezone(&tz).date_naive();
    let horizon_end = today + Duration::days(horizon_days as i64);
    let last = series.until_on.map_or(horizon_end, |u| u.min(horizon_end));
    let mut from = series.starts_on.max(today);
    if let Some(done) = series.expanded_through {
        from = from.max(done + Duration::days(1));
    }
    // Occurrences are counted from starts_on; without a count the walk can start at `from`.
    let mut day = if series.occurrence_count.is_some() {
        series.starts_on
    } else {
        from
    };
    let mut index = 0i32;
    let mut exhausted = false;
    let duration = Duration::minutes(series.duration_minutes as i64);
    while day <= last {
        let weekday = day.weekday().number_from_monday() as i16;
        if series.weekdays.contains(&weekday) {
            index += 1;
            if series.occurrence_count.is_some_and(|c| index > c) {
                exhausted = true;
                break;
            }
            if day >= from {
                book_occurrence(conn, settings, &series, tz, day, duration, now, &mut report).await?;
            }
            if series.occurrence_count == Some(index) {
                exhausted = true;
                break;
            }
        }
        day += Duration::days(1);
    }
    if series.until_on.is_some_and(|u| u <= horizon_end) {
        exhausted = true;
    }
    let through = series.expanded_through.map_or(last, |d| d.max(last));
    sqlx::query!(
        "UPDATE booking_series SET expanded_through = $2,
             status = CASE WHEN $3 THEN 'ended' ELSE status END,
             ended_at = CASE WHEN $3 THEN $4 ELSE ended_at END
         WHERE id = $1",
        series_id,
        through,
        exhausted,
        now,
    )
    .execute(&mut *conn)
    .await?;
    report.expanded_through = Some(through);
    report.ended = exhausted;
    Ok(report)
}

async fn occurrence_booked(conn: &mut PgConnection, series_id: i64, date: NaiveDate) -> Result<bool, DomainError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM bookings WHERE series_id = $1 AND series_occurrence = $2) AS "booked!""#,
        series_id,
        date,
    )
    .fetch_one(&mut *conn)
    .await?)
}

#[allow(clippy::too_many_arguments)]
async fn book_occurrence(
    conn: &mut PgConnection,
    settings: &BookingSettings,
    series: &Series,
    tz: Tz,
    date: NaiveDate,
    duration: Duration,
    now: DateTime<Utc>,
    report: &mut ExpandReport,
) -> Result<(), DomainError> {
    if occurrence_booked(conn, series.id, date).await? {
        return Ok(());
    }
    let start = local_instant(tz, date, series.local_start_time);
    if start <= now {
        report.skipped.push(Skipped {
            date,
            start_time: start,
            reason: "its start time had already passed".into(),
            conflict: false,
        });
        return Ok(());
    }
    let nb = NewBooking {
        student_id: series.student_id,
        instructor_id: series.instructor_id,
        start_time: start,
        end_time: start + duration,
        pickup_location: series.pickup_location.clone(),
        dropoff_location: None,
        series: Some((series.id, date)),
    };
    let mut sp = conn.begin().await?;
    match bookings::create(&mut sp, settings, nb, now).await {
        Ok(b) => {
            sp.commit().await?;
            report.created.push(b);
        }
        Err(DomainError::Conflict(reason)) => {
            sp.rollback().await?;
            // A concurrent expansion may have booked this very occurrence: that is no conflict.
            if !occurrence_booked(conn, series.id, date).await? {
                report.skipped.push(Skipped {
                    date,
                    start_time: start,
                    reason,
                    conflict: true,
                });
            }
        }
        Err(DomainError::Invalid { message, .. }) => {
            sp.rollback().await?;
            report.skipped.push(Skipped {
                date,
                start_time: start,
                reason: message,
                conflict: true,
            });
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The bare address of a `Name <addr>` mailbox.
fn bare_address(mailbox: &str) -> &str {
    match (mailbox.find('<'), mailbox.rfind('>')) {
        (Some(a), Some(b)) if a < b => mailbox[a + 1..b].trim(),
        _ => mailbox.trim(),
    }
}

/// Creates a `recurring_conflict` notification for every conflicting skipped occurrence of the
/// report: to the student, and to `school_email` (the school's `MAIL_FROM`) when given. Keyed by
/// series and date, so reporting the same conflict twice notifies once. Returns how many
/// notifications were created.
pub async fn notify_conflicts(
    conn: &mut PgConnection,
    report: &ExpandReport,
    school_email: Option<&str>,
    now: DateTime<Utc>,
) -> Result<usize, DomainError> {
    let conflicts: Vec<&Skipped> = report.skipped.iter().filter(|s| s.conflict).collect();
    if conflicts.is_empty() {
        return Ok(0);
    }
    let people = sqlx::query!(
        r#"SELECT su.id, su.first_name || ' ' || su.last_name AS "student_name!", iu.first_name || ' ' || iu.last_name AS "instructor_name!"
         FROM booking_series bs
         JOIN students s ON s.id = bs.student_id JOIN users su ON su.id = s.user_id
         JOIN instructors i ON i.id = bs.instructor_id JOIN users iu ON iu.id = i.user_id
         WHERE bs.id = $1"#,
        report.series_id,
    )
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(DomainError::NotFound("booking series"))?;
    let (student_user, student_name, instructor_name) = (people.id, people.student_name, people.instructor_name);
    let mut created = 0;
    for s in conflicts {
        let data = json!({
            "series": { "id": report.series_id, "student_name": student_name, "instructor_name": instructor_name },
            "date": s.start_time.to_rfc3339(),
            "reason": s.reason,
        });
        let key = format!("recurring_conflict:{}:{}", report.series_id, s.date);
        let mut n = NewNotification::to_user(Kind::RecurringConflict, student_user, key.clone(), now);
        n.title = "Weekly lesson not booked".into();
        n.content = format!(
            "The lesson of {} with {} could not be booked: {}.",
            s.date, instructor_name, s.reason
        );
        n.data = data.clone();
        if notify::create(conn, n.clone()).await?.is_some() {
            created += 1;
        }
        if let Some(addr) = school_email.map(bare_address).filter(|a| !a.is_empty()) {
            n.user_id = None;
            n.recipient_email = Some(addr.to_owned());
            n.dedupe_key = format!("{key}:school");
            if notify::create(conn, n).await?.is_some() {
                created += 1;
            }
        }
    }
    Ok(created)
}

/// Erasure: a student's weekly series lose their pick-up place.
pub async fn erase_person(conn: &mut PgConnection, e: &crate::privacy::Erasing) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE booking_series SET pickup_location = NULL WHERE student_id = $1 AND pickup_location IS NOT NULL",
        e.student_id,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_instants_follow_dst() {
        let london = chrono_tz::Europe::London;
        let t = NaiveTime::from_hms_opt(9, 0, 0).unwrap();
        let winter = local_instant(london, NaiveDate::from_ymd_opt(2026, 1, 12).unwrap(), t);
        let summer = local_instant(london, NaiveDate::from_ymd_opt(2026, 7, 13).unwrap(), t);
        assert_eq!(winter.to_rfc3339(), "2026-01-12T09:00:00+00:00");
        assert_eq!(summer.to_rfc3339(), "2026-07-13T08:00:00+00:00");
        // 2026-03-29 01:30 does not exist in London: read as 01:30 GMT = 02:30 BST.
        let gap = local_instant(
            london,
            NaiveDate::from_ymd_opt(2026, 3, 29).unwrap(),
            NaiveTime::from_hms_opt(1, 30, 0).unwrap(),
        );
        assert_eq!(gap.to_rfc3339(), "2026-03-29T01:30:00+00:00");
        // 2026-10-25 01:30 happens twice: the first (BST) one.
        let twice = local_instant(
            london,
            NaiveDate::from_ymd_opt(2026, 10, 25).unwrap(),
            NaiveTime::from_hms_opt(1, 30, 0).unwrap(),
        );
        assert_eq!(twice.to_rfc3339(), "2026-10-25T00:30:00+00:00");
        assert_eq!(bare_address("Dashlight <no-reply@localhost>"), "no-reply@localhost");
        assert_eq!(bare_address("a@b.c"), "a@b.c");
    }
}
