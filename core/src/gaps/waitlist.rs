//! A student's waitlist entry ([`set_waitlist`], [`get_waitlist`]) and whether a slot falls in
//! its weekly windows ([`within_windows`]).

use chrono::{DateTime, Datelike, NaiveTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use serde_json::json;
use sqlx::PgConnection;

use crate::{analytics, error::DomainError, people::Window};

/// Most instructors and windows one entry may name.
pub const MAX_PREFERENCES: usize = 50;

/// A student's waitlist entry.
#[derive(Debug, Clone, Serialize)]
pub struct Waitlist {
    /// `students.id`.
    pub student_id: i64,
    /// Preferred instructors; empty = any.
    pub instructor_ids: Vec<i64>,
    /// Weekly windows in `timezone`; empty = any time.
    pub windows: Vec<Window>,
    /// On the waitlist now.
    pub active: bool,
    /// The place in the queue (older first); `None` when the student never joined.
    pub joined_at: Option<DateTime<Utc>>,
    /// When the entry was closed (left, or an offer accepted).
    pub closed_at: Option<DateTime<Utc>>,
    /// Why it was closed.
    pub closed_reason: Option<String>,
    /// The student's time zone, that of the windows.
    pub timezone: String,
}

/// What `PUT /api/students/{id}/waitlist` sets.
#[derive(Debug, Clone)]
pub struct SetWaitlist {
    /// Preferred instructors; empty = any.
    pub instructor_ids: Vec<i64>,
    /// Weekly windows in the student's time zone; empty = any time.
    pub windows: Vec<Window>,
    /// Join (or stay) / leave.
    pub active: bool,
}

fn validate(w: &SetWaitlist) -> Result<(), DomainError> {
    if w.instructor_ids.len() > MAX_PREFERENCES {
        return Err(DomainError::invalid(
            "instructor_ids",
            format!("at most {MAX_PREFERENCES} instructors"),
        ));
    }
    if w.windows.len() > MAX_PREFERENCES {
        return Err(DomainError::invalid("windows", format!("at most {MAX_PREFERENCES} windows")));
    }
    for (i, win) in w.windows.iter().enumerate() {
        if !(1..=7).contains(&win.day_of_week) {
            return Err(DomainError::invalid(
                format!("windows[{i}].day_of_week"),
                "expected 1 (Monday) to 7 (Sunday)",
            ));
        }
        if win.end_time <= win.start_time {
            return Err(DomainError::invalid(format!("windows[{i}].end_time"), "must be after start_time"));
        }
        for (j, o) in w.windows.iter().enumerate().take(i) {
            if o.day_of_week == win.day_of_week && o.start_time == win.start_time {
                return Err(DomainError::invalid(
                    format!("windows[{i}]"),
                    format!("starts at the same time as windows[{j}] on the same day"),
                ));
            }
        }
    }
    Ok(())
}

/// Replaces a student's waitlist entry (creating it on first use) and returns it.
pub async fn set_waitlist(conn: &mut PgConnection, student_id: i64, w: SetWaitlist, now: DateTime<Utc>) -> Result<Waitlist, DomainError> {
    validate(&w)?;
    let mut ids = w.instructor_ids.clone();
    ids.sort_unstable();
    ids.dedup();
    if !ids.is_empty() {
        let found: Vec<i64> = sqlx::query_scalar!("SELECT id FROM instructors WHERE id = ANY($1)", &ids)
            .fetch_all(&mut *conn)
            .await?;
        if let Some(missing) = ids.iter().find(|id| !found.contains(id)) {
            return Err(DomainError::invalid("instructor_ids", format!("no such instructor: {missing}")));
        }
    }
    // Locking the student serialises concurrent replacements of one entry.
    let locked: Option<i64> = sqlx::query_scalar!("SELECT id FROM students WHERE id = $1 FOR UPDATE", student_id)
        .fetch_optional(&mut *conn)
        .await?;
    if locked.is_none() {
        return Err(DomainError::NotFound("student"));
    }
    let entry_id: i64 = sqlx::query_scalar!(
        "INSERT INTO waitlist_entries (student_id, instructor_ids, active, joined_at, closed_at, closed_reason)
         VALUES ($1, $2, $3, $4, CASE WHEN $3 THEN NULL ELSE $4::timestamptz END, CASE WHEN $3 THEN NULL ELSE 'left the waitlist' END)
         ON CONFLICT (student_id) DO UPDATE SET
            instructor_ids = EXCLUDED.instructor_ids,
            active = EXCLUDED.active,
            joined_at = CASE WHEN EXCLUDED.active AND NOT waitlist_entries.active THEN EXCLUDED.joined_at ELSE waitlist_entries.joined_at END,
            closed_at = CASE WHEN EXCLUDED.active THEN NULL WHEN waitlist_entries.active THEN EXCLUDED.closed_at ELSE waitlist_entries.closed_at END,
            closed_reason = CASE WHEN EXCLUDED.active THEN NULL WHEN waitlist_entries.active THEN EXCLUDED.closed_reason ELSE waitlist_entries.closed_reason END
         RETURNING id",
        student_id,
        &ids,
        w.active,
        now,
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    sqlx::query!("DELETE FROM waitlist_windows WHERE entry_id = $1", entry_id)
        .execute(&mut *conn)
        .await?;
    let days: Vec<i16> = w.windows.iter().map(|x| x.day_of_week).collect();
    let starts: Vec<NaiveTime> = w.windows.iter().map(|x| x.start_time).collect();
    let ends: Vec<NaiveTime> = w.windows.iter().map(|x| x.end_time).collect();
    sqlx::query!(
        "INSERT INTO waitlist_windows (entry_id, day_of_week, start_time, end_time)
         SELECT $1, d, s, e FROM unnest($2::smallint[], $3::time[], $4::time[]) AS t(d, s, e)",
        entry_id,
        &days,
        &starts,
        &ends,
    )
    .execute(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    analytics::record(
        conn,
        None,
        if w.active { "waitlist_joined" } else { "waitlist_left" },
        json!({"student_id": student_id, "instructor_ids": ids, "windows": w.windows.len()}),
        now,
    )
    .await?;
    get_waitlist(conn, student_id).await
}

/// A student's waitlist entry; an inactive, empty one when they never joined.
pub async fn get_waitlist(conn: &mut PgConnection, student_id: i64) -> Result<Waitlist, DomainError> {
    // The entry's columns come through a left join: null when the student never joined.
    let row = sqlx::query!(
        r#"SELECT u.timezone, e.id AS "id?", e.instructor_ids AS "instructor_ids?", e.active AS "active?",
                  e.joined_at AS "joined_at?", e.closed_at, e.closed_reason
           FROM students s JOIN users u ON u.id = s.user_id LEFT JOIN waitlist_entries e ON e.student_id = s.id
           WHERE s.id = $1"#,
        student_id,
    )
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(DomainError::NotFound("student"))?;
    let windows: Vec<Window> = match row.id {
        Some(id) => {
            sqlx::query_as!(
                Window,
                "SELECT day_of_week, start_time, end_time FROM waitlist_windows WHERE entry_id = $1 ORDER BY day_of_week, start_time",
                id,
            )
            .fetch_all(&mut *conn)
            .await?
        }
        None => Vec::new(),
    };
    Ok(Waitlist {
        student_id,
        instructor_ids: row.instructor_ids.unwrap_or_default(),
        windows,
        active: row.active.unwrap_or(false),
        joined_at: row.id.and(row.joined_at),
        closed_at: row.closed_at,
        closed_reason: row.closed_reason,
        timezone: row.timezone,
    })
}

/// Whether `[start, end)` lies within one of `windows` in `tz` (no windows: any time). A slot
/// running over local midnight fits no window.
pub fn within_windows(windows: &[Window], tz: Tz, start: DateTime<Utc>, end: DateTime<Utc>) -> bool {
    if windows.is_empty() {
        return true;
    }
    let (ls, le) = (start.with_timezone(&tz), end.with_timezone(&tz));
    let end_t = if le.date_naive() == ls.date_naive() {
        le.time()
    } else if le.date_naive() == ls.date_naive().succ_opt().unwrap_or(ls.date_naive()) && le.time() == NaiveTime::MIN {
        NaiveTime::from_hms_opt(23, 59, 59).expect("valid time")
    } else {
        return false;
    };
    let dow = ls.weekday().number_from_monday() as i16;
    windows
        .iter()
        .any(|w| w.day_of_week == dow && w.start_time <= ls.time() && end_t <= w.end_time)
}
