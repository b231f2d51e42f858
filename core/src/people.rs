//! People: users with their student or instructor profile and default preferences, notification
//! preferences, Web Push devices and instructors' weekly availability. Each function runs on the
//! caller's connection (use a transaction: creating a user writes three rows, a student's a
//! fourth, their CRM contact, through [`crate::crm`]). Owns writes to `users` (but for the
//! calendar feed's secret, [`crate::calendar`]'s), `students`, `instructors`, `user_preferences`,
//! `user_devices` (the worker deactivates a device whose push service ended it),
//! `email_opt_outs` (per-kind email opt-outs) and `instructor_availability`. The checks of emails, phone numbers and time zones are
//! [`crate::validate`]'s; it does not check Web Push key cryptography (the API does) and never
//! touches bookings.

use chrono::{DateTime, NaiveTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};

use crate::{crm, error::DomainError, kinds::Kind, validate};

/// The role of a user created with a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Has a `students` row.
    Student,
    /// Has an `instructors` row.
    Instructor,
}

impl Role {
    /// The stored name (`users.role`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Student => "student",
            Role::Instructor => "instructor",
        }
    }

    /// Parses `student` or `instructor`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "student" => Some(Role::Student),
            "instructor" => Some(Role::Instructor),
            _ => None,
        }
    }
}

/// The student profile of a new student.
#[derive(Debug, Clone, Default)]
pub struct NewStudent {
    /// Licence category, default `B`.
    pub license_type: Option<String>,
    /// The usual instructor (`instructors.id`).
    pub current_instructor_id: Option<i64>,
    /// Booked driving tests.
    pub test_dates: Vec<DateTime<Utc>>,
}

/// The instructor profile of a new instructor.
#[derive(Debug, Clone, Default)]
pub struct NewInstructor {
    /// Instructor licence number (unique).
    pub license_number: String,
    /// Hourly rate in minor units, default 0.
    pub hourly_rate_minor: Option<i64>,
    /// ISO 4217 currency, default `GBP`.
    pub currency: Option<String>,
    /// Free text.
    pub bio: Option<String>,
}

/// A user to create, with the profile of their role.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Student or instructor.
    pub role: Role,
    /// Email address (unique, case-insensitive).
    pub email: String,
    /// E.164 phone number.
    pub phone: Option<String>,
    /// Given name.
    pub first_name: String,
    /// Family name.
    pub last_name: String,
    /// IANA time zone.
    pub timezone: String,
    /// Profile when `role` is student (defaults when `None`).
    pub student: Option<NewStudent>,
    /// Profile when `role` is instructor (required then).
    pub instructor: Option<NewInstructor>,
}

/// What [`create_user`] created.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedUser {
    /// `users.id`.
    pub id: i64,
    /// The role.
    pub role: Role,
    /// `students.id` for a student.
    pub student_id: Option<i64>,
    /// `instructors.id` for an instructor.
    pub instructor_id: Option<i64>,
    /// Secret of the user's calendar feed.
    pub calendar_token: String,
    /// Created.
    pub created_at: DateTime<Utc>,
}

fn validate_name(field: &str, name: &str) -> Result<(), DomainError> {
    let n = name.trim().chars().count();
    if (1..=100).contains(&n) {
        Ok(())
    } else {
        Err(DomainError::invalid(field, "expected 1 to 100 characters"))
    }
}

/// Creates the user, their student or instructor profile and a default preferences row; a
/// student also gets their CRM contact ([`crate::crm::create_for_student`]).
pub async fn create_user(conn: &mut PgConnection, nu: NewUser) -> Result<CreatedUser, DomainError> {
    validate::email("email", &nu.email)?;
    if let Some(p) = &nu.phone {
        validate::phone("phone", p)?;
    }
    validate_name("first_name", &nu.first_name)?;
    validate_name("last_name", &nu.last_name)?;
    validate::timezone("timezone", &nu.timezone)?;
    match nu.role {
        Role::Student if nu.instructor.is_some() => {
            return Err(DomainError::invalid("instructor", "only an instructor has an instructor profile"));
        }
        Role::Instructor if nu.student.is_some() => return Err(DomainError::invalid("student", "only a student has a student profile")),
        _ => {}
    }
    let student = match nu.role {
        Role::Student => Some(nu.student.clone().unwrap_or_default()),
        Role::Instructor => None,
    };
    let instructor = match nu.role {
        Role::Instructor => Some(
            nu.instructor
                .clone()
                .ok_or_else(|| DomainError::invalid("instructor", "an instructor needs an instructor profile with a license_number"))?,
        ),
        Role::Student => None,
    };
    if let Some(i) = &instructor {
        if i.license_number.trim().is_empty() || i.license_number.len() > 100 {
            return Err(DomainError::invalid("instructor.license_number", "expected 1 to 100 characters"));
        }
        if i.hourly_rate_minor.is_some_and(|r| r < 0) {
            return Err(DomainError::invalid("instructor.hourly_rate_minor", "must not be negative"));
        }
        if let Some(c) = &i.currency {
            validate::currency("instructor.currency", c)?;
        }
    }
    if let Some(s) = &student {
        if let Some(l) = &s.license_type
            && (l.trim().is_empty() || l.len() > 20)
        {
            return Err(DomainError::invalid("student.license_type", "expected 1 to 20 characters"));
        }
        if let Some(iid) = s.current_instructor_id {
            let exists: bool = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM instructors WHERE id = $1) AS "exists!""#, iid)
                .fetch_one(&mut *conn)
                .await?;
            if !exists {
                return Err(DomainError::invalid("student.current_instructor_id", "no such instructor"));
            }
        }
    }

    let user = sqlx::query!(
        "INSERT INTO users (email, role, first_name, last_name, phone, timezone) VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, calendar_token, created_at",
        nu.email.trim(),
        nu.role.as_str(),
        nu.first_name.trim(),
        nu.last_name.trim(),
        nu.phone.as_deref(),
        &nu.timezone,
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    let (id, calendar_token, created_at) = (user.id, user.calendar_token, user.created_at);
    sqlx::query!("INSERT INTO user_preferences (user_id) VALUES ($1)", id)
        .execute(&mut *conn)
        .await?;

    let mut out = CreatedUser {
        id,
        role: nu.role,
        student_id: None,
        instructor_id: None,
        calendar_token,
        created_at,
    };
    if let Some(s) = student {
        let sid: i64 = sqlx::query_scalar!(
            "INSERT INTO students (user_id, license_type, current_instructor_id, test_dates) VALUES ($1, coalesce($2, 'B'), $3, $4) RETURNING id",
            id,
            s.license_type.as_deref(),
            s.current_instructor_id,
            &s.test_dates,
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(DomainError::from_db)?;
        out.student_id = Some(sid);
        crm::create_for_student(conn, id).await?;
    }
    if let Some(i) = instructor {
        let iid: i64 = sqlx::query_scalar!(
            "INSERT INTO instructors (user_id, license_number, hourly_rate_minor, currency, bio)
             VALUES ($1, $2, coalesce($3::bigint, 0), coalesce($4, 'GBP'), $5) RETURNING id",
            id,
            i.license_number.trim(),
            i.hourly_rate_minor,
            i.currency.as_deref(),
            i.bio.as_deref(),
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(DomainError::from_db)?;
        out.instructor_id = Some(iid);
    }
    Ok(out)
}

/// A user's notification preferences.
#[derive(Debug, Clone, PartialEq, Eq, FromRow, Serialize)]
pub struct Preferences {
    /// `users.id`.
    pub user_id: i64,
    /// Email on or off.
    pub email_notifications: bool,
    /// SMS on or off.
    pub sms_notifications: bool,
    /// Push on or off.
    pub push_notifications: bool,
    /// Start of quiet hours in the user's time zone.
    pub quiet_hours_start: Option<NaiveTime>,
    /// End of quiet hours (may be before the start: wraps midnight).
    pub quiet_hours_end: Option<NaiveTime>,
}

/// Replaces a user's preferences (creating the row if it is missing). Quiet hours are both set
/// or both `None`, and not empty.
pub async fn set_preferences(conn: &mut PgConnection, p: &Preferences) -> Result<Preferences, DomainError> {
    match (p.quiet_hours_start, p.quiet_hours_end) {
        (Some(s), Some(e)) if s == e => return Err(DomainError::invalid("quiet_hours.end", "must differ from quiet_hours.start")),
        (Some(_), None) => return Err(DomainError::invalid("quiet_hours.end", "required with quiet_hours.start")),
        (None, Some(_)) => return Err(DomainError::invalid("quiet_hours.start", "required with quiet_hours.end")),
        _ => {}
    }
    user_exists(conn, p.user_id).await?;
    let saved: Preferences = sqlx::query_as!(
        Preferences,
        "INSERT INTO user_preferences (user_id, email_notifications, sms_notifications, push_notifications, quiet_hours_start, quiet_hours_end)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (user_id) DO UPDATE SET email_notifications = EXCLUDED.email_notifications,
             sms_notifications = EXCLUDED.sms_notifications, push_notifications = EXCLUDED.push_notifications,
             quiet_hours_start = EXCLUDED.quiet_hours_start, quiet_hours_end = EXCLUDED.quiet_hours_end
         RETURNING user_id, email_notifications, sms_notifications, push_notifications, quiet_hours_start, quiet_hours_end",
        p.user_id,
        p.email_notifications,
        p.sms_notifications,
        p.push_notifications,
        p.quiet_hours_start,
        p.quiet_hours_end,
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    Ok(saved)
}

/// A user's preferences (the defaults when the row is missing); 404 for an unknown user.
pub async fn preferences(conn: &mut PgConnection, user_id: i64) -> Result<Preferences, DomainError> {
    user_exists(conn, user_id).await?;
    let row: Option<Preferences> = sqlx::query_as!(
        Preferences,
        "SELECT user_id, email_notifications, sms_notifications, push_notifications, quiet_hours_start, quiet_hours_end
         FROM user_preferences WHERE user_id = $1",
        user_id,
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.unwrap_or(Preferences {
        user_id,
        email_notifications: true,
        sms_notifications: true,
        push_notifications: true,
        quiet_hours_start: None,
        quiet_hours_end: None,
    }))
}

/// Turns a user's SMS on or off, leaving their other preferences as they are (an SMS `STOP` or
/// `START`; docs/hearing-back.md). Returns whether it changed.
pub async fn set_sms_notifications(conn: &mut PgConnection, user_id: i64, on: bool) -> Result<bool, DomainError> {
    let changed: Option<bool> = sqlx::query_scalar!(
        r#"INSERT INTO user_preferences (user_id, sms_notifications) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET sms_notifications = EXCLUDED.sms_notifications
             WHERE user_preferences.sms_notifications IS DISTINCT FROM EXCLUDED.sms_notifications
         RETURNING true AS "changed!""#,
        user_id,
        on,
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    Ok(changed.unwrap_or(false))
}

/// Where a per-kind email opt-out was made (`email_opt_outs.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum OptOutSource {
    /// An email's `List-Unsubscribe` link (RFC 8058 one-click or its confirmation page).
    UnsubscribeLink,
    /// The person's own page.
    OwnPage,
    /// The admin API's preferences route.
    Api,
}

/// The kinds whose emails a user turned off, in kind order.
pub async fn email_opt_outs(conn: &mut PgConnection, user_id: i64) -> Result<Vec<Kind>, DomainError> {
    let names: Vec<String> = sqlx::query_scalar!("SELECT kind FROM email_opt_outs WHERE user_id = $1", user_id)
        .fetch_all(&mut *conn)
        .await?;
    Ok(Kind::ALL.into_iter().filter(|k| names.iter().any(|n| n == k.as_str())).collect())
}

/// Turns one kind's emails off (`off`) or back on for a user. Returns whether anything changed
/// (a second identical call changes nothing). A kind that cannot be turned off
/// ([`Kind::email_opt_out_allowed`]) is refused naming `kind`.
pub async fn set_email_opt_out(
    conn: &mut PgConnection,
    user_id: i64,
    kind: Kind,
    off: bool,
    source: OptOutSource,
) -> Result<bool, DomainError> {
    if off && !kind.email_opt_out_allowed() {
        return Err(DomainError::invalid(
            "kind",
            format!("{} emails cannot be turned off", kind.as_str()),
        ));
    }
    user_exists(conn, user_id).await?;
    let changed = if off {
        sqlx::query!(
            "INSERT INTO email_opt_outs (user_id, kind, source) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            user_id,
            kind.as_str(),
            source as OptOutSource,
        )
        .execute(&mut *conn)
        .await?
    } else {
        sqlx::query!(
            "DELETE FROM email_opt_outs WHERE user_id = $1 AND kind = $2",
            user_id,
            kind.as_str()
        )
        .execute(&mut *conn)
        .await?
    };
    Ok(changed.rows_affected() > 0)
}

async fn user_exists(conn: &mut PgConnection, user_id: i64) -> Result<(), DomainError> {
    let exists: bool = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM users WHERE id = $1) AS "exists!""#, user_id)
        .fetch_one(&mut *conn)
        .await?;
    if exists { Ok(()) } else { Err(DomainError::NotFound("user")) }
}

/// A Web Push subscription to register. Keys are base64url as the browser gives them; their
/// cryptographic validity is the caller's to check.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// The client's own name for the device (unique per user).
    pub device_id: String,
    /// The push service URL (http or https).
    pub push_endpoint: String,
    /// base64url uncompressed P-256 public key.
    pub p256dh: String,
    /// base64url 16-byte auth secret.
    pub auth: String,
}

/// A registered device (without its keys).
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    /// `user_devices.id`.
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// The client's name for it.
    pub device_id: String,
    /// Push service URL.
    pub push_endpoint: String,
    /// False once the push service ended the subscription.
    pub active: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// The most active devices one person keeps: registering one more switches off the one
/// registered (or renewed) longest ago, so each notification fans out to at most this many
/// push services.
pub const MAX_ACTIVE_DEVICES: i64 = 10;

/// Registers a device, or renews the subscription of the user's device with the same
/// `device_id` (browsers rotate subscriptions) and makes it active again. Returns the device and
/// whether it was new. A person keeps at most [`MAX_ACTIVE_DEVICES`] active devices: beyond, the
/// least recently registered ones are switched off (`disabled_reason` says why).
pub async fn register_device(conn: &mut PgConnection, user_id: i64, nd: &NewDevice) -> Result<(Device, bool), DomainError> {
    let n = nd.device_id.chars().count();
    if !(1..=200).contains(&n) {
        return Err(DomainError::invalid("device_id", "expected 1 to 200 characters"));
    }
    if !(nd.push_endpoint.starts_with("https://") || nd.push_endpoint.starts_with("http://")) {
        return Err(DomainError::invalid("push_endpoint", "expected an http(s) URL"));
    }
    if nd.push_endpoint.len() > crate::endpoints::MAX_ENDPOINT_LEN {
        return Err(DomainError::invalid(
            "push_endpoint",
            format!("expected at most {} bytes", crate::endpoints::MAX_ENDPOINT_LEN),
        ));
    }
    // Locking the user serialises registrations of one person, so the cap holds.
    let locked: Option<i64> = sqlx::query_scalar!("SELECT id FROM users WHERE id = $1 FOR UPDATE", user_id)
        .fetch_optional(&mut *conn)
        .await?;
    if locked.is_none() {
        return Err(DomainError::NotFound("user"));
    }
    let (device, inserted): (Device, bool) = {
        let row = sqlx::query!(
            r#"INSERT INTO user_devices (user_id, device_id, push_endpoint, p256dh, auth) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id, device_id) DO UPDATE SET push_endpoint = EXCLUDED.push_endpoint, p256dh = EXCLUDED.p256dh,
                 auth = EXCLUDED.auth, active = true, disabled_reason = NULL
             RETURNING id, user_id, device_id, push_endpoint, active, created_at, updated_at, (xmax = 0) AS "inserted!""#,
            user_id,
            &nd.device_id,
            &nd.push_endpoint,
            &nd.p256dh,
            &nd.auth,
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(DomainError::from_db)?;
        (
            Device {
                id: row.id,
                user_id: row.user_id,
                device_id: row.device_id,
                push_endpoint: row.push_endpoint,
                active: row.active,
                created_at: row.created_at,
                updated_at: row.updated_at,
            },
            row.inserted,
        )
    };
    let replaced = sqlx::query_scalar!(
        "UPDATE user_devices SET active = false, disabled_reason = 'replaced by a newer device (at most 10 per person)'
         WHERE id IN (SELECT id FROM user_devices WHERE user_id = $1 AND active AND id <> $2
                      ORDER BY updated_at DESC, id DESC OFFSET $3)
         RETURNING id",
        user_id,
        device.id,
        MAX_ACTIVE_DEVICES - 1,
    )
    .fetch_all(&mut *conn)
    .await?;
    if !replaced.is_empty() {
        tracing::info!(user_id, device = device.id, replaced = ?replaced, "older devices switched off: at most {MAX_ACTIVE_DEVICES} per person");
    }
    Ok((device, inserted))
}

/// The user's active devices (without their keys), newest first.
pub async fn active_devices(conn: &mut PgConnection, user_id: i64) -> Result<Vec<Device>, DomainError> {
    Ok(sqlx::query_as!(
        Device,
        "SELECT id, user_id, device_id, push_endpoint, active, created_at, updated_at FROM user_devices
         WHERE user_id = $1 AND active ORDER BY created_at DESC, id DESC",
        user_id,
    )
    .fetch_all(conn)
    .await?)
}

/// Switches one of the user's devices off at its owner's request (it gets no more pushes; a new
/// subscription from the same browser makes it active again). `NotFound` when the device is not
/// this user's.
pub async fn remove_device(conn: &mut PgConnection, user_id: i64, device_row_id: i64) -> Result<(), DomainError> {
    let r = sqlx::query!(
        "UPDATE user_devices SET active = false, disabled_reason = 'removed by its owner' WHERE id = $1 AND user_id = $2",
        device_row_id,
        user_id,
    )
    .execute(conn)
    .await?;
    if r.rows_affected() == 0 {
        return Err(DomainError::NotFound("device"));
    }
    Ok(())
}

/// A weekly availability window in the instructor's time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Window {
    /// ISO weekday: 1 = Monday … 7 = Sunday.
    pub day_of_week: i16,
    /// Local start.
    pub start_time: NaiveTime,
    /// Local end, after the start.
    pub end_time: NaiveTime,
}

/// Replaces an instructor's weekly windows. Windows of one day must not overlap. An empty list
/// removes every window (the instructor is then taken as available any time).
pub async fn set_availability(conn: &mut PgConnection, instructor_id: i64, windows: &[Window]) -> Result<Vec<Window>, DomainError> {
    for (i, w) in windows.iter().enumerate() {
        if !(1..=7).contains(&w.day_of_week) {
            return Err(DomainError::invalid(
                format!("[{i}].day_of_week"),
                "expected 1 (Monday) to 7 (Sunday)",
            ));
        }
        if w.end_time <= w.start_time {
            return Err(DomainError::invalid(format!("[{i}].end_time"), "must be after start_time"));
        }
        for (j, o) in windows.iter().enumerate().take(i) {
            if o.day_of_week == w.day_of_week && o.start_time < w.end_time && w.start_time < o.end_time {
                return Err(DomainError::invalid(
                    format!("[{i}]"),
                    format!("overlaps window [{j}] on the same day"),
                ));
            }
        }
    }
    // Locking the instructor serialises concurrent replacements of the same week.
    let locked: Option<i64> = sqlx::query_scalar!("SELECT id FROM instructors WHERE id = $1 FOR UPDATE", instructor_id)
        .fetch_optional(&mut *conn)
        .await?;
    if locked.is_none() {
        return Err(DomainError::NotFound("instructor"));
    }
    sqlx::query!("DELETE FROM instructor_availability WHERE instructor_id = $1", instructor_id)
        .execute(&mut *conn)
        .await?;
    let days: Vec<i16> = windows.iter().map(|w| w.day_of_week).collect();
    let starts: Vec<NaiveTime> = windows.iter().map(|w| w.start_time).collect();
    let ends: Vec<NaiveTime> = windows.iter().map(|w| w.end_time).collect();
    let saved: Vec<Window> = sqlx::query_as!(
        Window,
        r#"WITH ins AS (
             INSERT INTO instructor_availability (instructor_id, day_of_week, start_time, end_time)
             SELECT $1, d, s, e FROM unnest($2::smallint[], $3::time[], $4::time[]) AS t(d, s, e)
             RETURNING day_of_week, start_time, end_time)
         SELECT day_of_week AS "day_of_week!", start_time AS "start_time!", end_time AS "end_time!" FROM ins ORDER BY day_of_week, start_time"#,
        instructor_id,
        &days,
        &starts,
        &ends,
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    Ok(saved)
}

/// Who a person is, read (and their `users` row locked) at the start of an erasure.
#[derive(Debug, Clone)]
pub struct ErasureSubject {
    /// `users.id`.
    pub user_id: i64,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Account address.
    pub email: String,
    /// Phone, if any.
    pub phone: Option<String>,
    /// Own-page secret.
    pub access_token: String,
    /// Calendar feed secret.
    pub calendar_token: String,
    /// `students.id`.
    pub student_id: Option<i64>,
    /// `instructors.id`.
    pub instructor_id: Option<i64>,
    /// The instructor's licence number.
    pub license_number: Option<String>,
}

/// Locks the person's `users` row for an erasure and reads who they are; `None` when there is
/// no such user.
pub async fn lock_for_erasure(conn: &mut PgConnection, user_id: i64) -> Result<Option<ErasureSubject>, sqlx::Error> {
    sqlx::query_as!(
        ErasureSubject,
        r#"SELECT u.id AS user_id, u.first_name, u.last_name, u.email, u.phone, u.access_token, u.calendar_token,
                  s.id AS "student_id?", i.id AS "instructor_id?", i.license_number AS "license_number?"
           FROM users u LEFT JOIN students s ON s.user_id = u.id LEFT JOIN instructors i ON i.user_id = u.id
           WHERE u.id = $1 FOR UPDATE OF u"#,
        user_id,
    )
    .fetch_optional(&mut *conn)
    .await
}

/// Erasure, the person's own rows: name replaced by the pseudonym, address by one that cannot
/// be delivered (`erased-<id>@erased.invalid`), phone gone, both link secrets replaced by new
/// random ones nobody knows and the account disabled (own page and calendar feed answer 404),
/// devices deleted (with their keys), an instructor's bio and licence number gone. Preferences,
/// opt-outs and the student profile stay (they hold nothing that names the person). Returns the
/// rows changed.
pub async fn erase_person(conn: &mut PgConnection, e: &crate::privacy::Erasing) -> Result<u64, sqlx::Error> {
    let mut n = sqlx::query!(
        "UPDATE users SET first_name = 'Erased', last_name = $2, email = 'erased-' || id || '@erased.invalid', phone = NULL,
                          status = 'disabled',
                          calendar_token = replace(gen_random_uuid()::text, '-', ''),
                          access_token = replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '')
         WHERE id = $1",
        e.user_id,
        e.pseudonym_suffix,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    n += sqlx::query!("DELETE FROM user_devices WHERE user_id = $1", e.user_id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    n += sqlx::query!(
        "UPDATE instructors SET bio = NULL, license_number = 'ERASED-' || id WHERE user_id = $1",
        e.user_id
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n)
}
