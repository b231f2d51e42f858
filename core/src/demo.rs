//! `dashlight seed-demo`: a small school to look at — instructors with weekly availability,
//! students with preferences and devices, bookings over the coming days (made through the real
//! booking operation, so their notifications flow), a weekly series and some payments. Running it
//! again adds nothing.

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use sqlx::{Acquire, PgPool};

use crate::{
    bookings::{self, BookingSettings, NewBooking},
    error::DomainError,
};

/// What the seeding created.
#[derive(Debug, Default)]
pub struct DemoSummary {
    /// Instructors created.
    pub instructors: usize,
    /// Students created.
    pub students: usize,
    /// Bookings created.
    pub bookings: usize,
    /// Payments recorded.
    pub payments: usize,
    /// True when the demo data was already there.
    pub already_present: bool,
}

const INSTRUCTORS: [(&str, &str, &str, &str); 3] = [
    ("Priya", "Shah", "priya.shah@demo.dashlight.test", "+447700900101"),
    ("Tom", "Okafor", "tom.okafor@demo.dashlight.test", "+447700900102"),
    ("Ellen", "Marsh", "ellen.marsh@demo.dashlight.test", "+447700900103"),
];

const STUDENTS: [(&str, &str, &str); 8] = [
    ("Amelia", "Hart", "+447700900201"),
    ("Noah", "Brennan", "+447700900202"),
    ("Isla", "Moreno", "+447700900203"),
    ("Leo", "Fitzgerald", "+447700900204"),
    ("Maya", "Castell", "+447700900205"),
    ("Oscar", "Lindqvist", "+447700900206"),
    ("Zara", "Quinn", "+447700900207"),
    ("Felix", "Ambrose", "+447700900208"),
];

/// A valid Web Push subscription key pair (from the web-push crate's docs): demo devices only.
const DEMO_P256DH: &str = "BLMbF9ffKBiWQLCKvTHb6LO8Nb6dcUh6TItC455vu2kElga6PQvUmaFyCdykxY2nOSSL3yKgfbmFLRTUaGv4yV8";
const DEMO_AUTH: &str = "xS03Fi5ErfTNH_l9WHE9Ig";

/// Loads the demo school. `now` anchors the bookings ("the coming days").
pub async fn seed(pool: &PgPool, settings: &BookingSettings, now: DateTime<Utc>) -> Result<DemoSummary, DomainError> {
    let mut summary = DemoSummary::default();
    let present: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE email LIKE '%@demo.dashlight.test')")
        .fetch_one(pool)
        .await?;
    if present {
        summary.already_present = true;
        return Ok(summary);
    }
    let mut tx = pool.begin().await?;
    let mut instructor_ids = Vec::new();
    for (i, (first, last, email, phone)) in INSTRUCTORS.iter().enumerate() {
        let uid: i64 = sqlx::query_scalar(
            "INSERT INTO users (email, role, first_name, last_name, phone, timezone) VALUES ($1, 'instructor', $2, $3, $4, 'Europe/London') RETURNING id",
        )
        .bind(email)
        .bind(first)
        .bind(last)
        .bind(phone)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO user_preferences (user_id) VALUES ($1)")
            .bind(uid)
            .execute(&mut *tx)
            .await?;
        let iid: i64 =
            sqlx::query_scalar("INSERT INTO instructors (user_id, license_number, hourly_rate_minor) VALUES ($1, $2, $3) RETURNING id")
                .bind(uid)
                .bind(format!("ADI-{:06}", 482_100 + i))
                .bind(4_200 + 300 * i as i64)
                .fetch_one(&mut *tx)
                .await?;
        for dow in 1..=6i16 {
            sqlx::query(
                "INSERT INTO instructor_availability (instructor_id, day_of_week, start_time, end_time) VALUES ($1, $2, '08:00', '19:00')",
            )
            .bind(iid)
            .bind(dow)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("INSERT INTO user_devices (user_id, device_id, push_endpoint, p256dh, auth) VALUES ($1, 'phone', $2, $3, $4)")
            .bind(uid)
            .bind(format!("https://push.demo.dashlight.test/instructor-{iid}"))
            .bind(DEMO_P256DH)
            .bind(DEMO_AUTH)
            .execute(&mut *tx)
            .await?;
        instructor_ids.push(iid);
        summary.instructors += 1;
    }
    let mut student_ids = Vec::new();
    for (i, (first, last, phone)) in STUDENTS.iter().enumerate() {
        let email = format!("{}.{}@demo.dashlight.test", first.to_lowercase(), last.to_lowercase());
        let uid: i64 = sqlx::query_scalar(
            "INSERT INTO users (email, role, first_name, last_name, phone, timezone) VALUES ($1, 'student', $2, $3, $4, 'Europe/London') RETURNING id",
        )
        .bind(&email)
        .bind(first)
        .bind(last)
        .bind(phone)
        .fetch_one(&mut *tx)
        .await?;
        // A mix of preferences: some without push devices, one with SMS off, one with quiet hours.
        sqlx::query(
            "INSERT INTO user_preferences (user_id, sms_notifications, quiet_hours_start, quiet_hours_end) VALUES ($1, $2, $3, $4)",
        )
        .bind(uid)
        .bind(i != 3)
        .bind(if i == 2 {
            Some(NaiveTime::from_hms_opt(22, 0, 0).unwrap())
        } else {
            None
        })
        .bind(if i == 2 {
            Some(NaiveTime::from_hms_opt(7, 0, 0).unwrap())
        } else {
            None
        })
        .execute(&mut *tx)
        .await?;
        let test_date = if i == 0 { vec![now + Duration::days(8)] } else { vec![] };
        let sid: i64 = sqlx::query_scalar(
            "INSERT INTO students (user_id, license_type, current_instructor_id, test_dates) VALUES ($1, 'B', $2, $3) RETURNING id",
        )
        .bind(uid)
        .bind(instructor_ids[i % instructor_ids.len()])
        .bind(&test_date)
        .fetch_one(&mut *tx)
        .await?;
        if i % 2 == 0 {
            sqlx::query("INSERT INTO user_devices (user_id, device_id, push_endpoint, p256dh, auth) VALUES ($1, 'phone', $2, $3, $4)")
                .bind(uid)
                .bind(format!("https://push.demo.dashlight.test/student-{sid}"))
                .bind(DEMO_P256DH)
                .bind(DEMO_AUTH)
                .execute(&mut *tx)
                .await?;
        }
        student_ids.push(sid);
        summary.students += 1;
    }

    // Bookings over the coming five days at 10:00, 13:00 and 16:00 school time, one per
    // instructor and slot; the first ones start soon, so reminders fall due while you watch.
    let tz: Tz = settings.school_tz;
    let mut k = 0usize;
    let soon = now + Duration::minutes(150);
    let mut sp = tx.begin().await?;
    let b = bookings::create(
        &mut sp,
        settings,
        NewBooking {
            student_id: student_ids[0],
            instructor_id: instructor_ids[0],
            start_time: soon,
            end_time: soon + Duration::hours(1),
            pickup_location: Some("Station Road car park".into()),
            dropoff_location: None,
            series: None,
        },
        now,
    )
    .await;
    if b.is_ok() {
        sp.commit().await?;
        summary.bookings += 1;
    } else {
        sp.rollback().await?; // outside the instructor's hours right now: fine
    }
    for day in 1..=5i64 {
        let date = (now.with_timezone(&tz) + Duration::days(day)).date_naive();
        if date.weekday().number_from_monday() == 7 {
            continue;
        }
        for hour in [10u32, 13, 16] {
            for iid in &instructor_ids {
                let local = date.and_hms_opt(hour, 0, 0).expect("valid time");
                let Some(start) = tz.from_local_datetime(&local).earliest() else {
                    continue;
                };
                let start = start.with_timezone(&Utc);
                let sid = student_ids[k % student_ids.len()];
                k += 1;
                if k.is_multiple_of(3) {
                    continue; // leave gaps in the diary
                }
                let nb = NewBooking {
                    student_id: sid,
                    instructor_id: *iid,
                    start_time: start,
                    end_time: start + Duration::hours(1),
                    pickup_location: Some(["High Street, outside the library", "Home address", "Riverside College gates"][k % 3].into()),
                    dropoff_location: None,
                    series: None,
                };
                // A savepoint per booking: a conflict must not abort the whole seeding.
                let mut sp = tx.begin().await?;
                match bookings::create(&mut sp, settings, nb, now).await {
                    Ok(_) => {
                        sp.commit().await?;
                        summary.bookings += 1;
                    }
                    Err(DomainError::Conflict(_) | DomainError::Invalid { .. }) => sp.rollback().await?,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    // Payments: a few lessons paid by card.
    let paid: Vec<(i64, i64)> = sqlx::query_as("SELECT id, student_id FROM bookings ORDER BY id LIMIT 4")
        .fetch_all(&mut *tx)
        .await?;
    for (bid, sid) in paid {
        sqlx::query("INSERT INTO payments (booking_id, student_id, amount_minor, currency, method, status, paid_at) VALUES ($1, $2, 4500, 'GBP', 'card', 'succeeded', $3)")
            .bind(bid)
            .bind(sid)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        summary.payments += 1;
    }
    tx.commit().await?;
    Ok(summary)
}
