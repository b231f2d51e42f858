//! `dashlight seed-demo`: a small school to look at — instructors with weekly availability,
//! students with preferences, devices and CRM contacts, bookings over the coming days (made
//! through the real booking operation, so their notifications flow), some payments, and one of
//! every other flow so the outbox shows each kind: a completed lesson with its report, a package
//! running low, a message thread, a driving test coming up and a lead waiting for a follow-up;
//! two students wait on the waitlist, so a cancellation shows `slot_offer` in the outbox.
//! Two weeks of past lessons (`history`) were reminded, confirmed or not and ended completed
//! or as no-shows, so the dashboard's Confirmations chart has something to show at once.
//! Every row is written through the core operations the admin API uses ([`people`],
//! [`bookings`], [`payments`], [`packages`], [`lessons`], [`messages`], [`crm`],
//! [`crate::series`], [`crate::gaps`]), in one transaction; the demo itself only reads (whether
//! it ran already, which bookings to pay for, the syllabus). Running it again adds nothing.

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use sqlx::{Acquire, PgConnection, PgPool};

use crate::{
    bookings::{self, BookingSettings, NewBooking},
    crm::{self, NewContact, NewInteraction},
    error::DomainError,
    lessons::{self, CompleteLesson, SkillRating},
    messages::{self, NewMessage},
    packages::{self, NewPackage},
    payments::{self, NewPayment},
    people::{self, NewDevice, NewInstructor, NewStudent, NewUser, Preferences, Role, Window},
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
    /// Lessons completed (with a report).
    pub lessons: usize,
    /// Messages sent.
    pub messages: usize,
    /// Leads without a user.
    pub leads: usize,
    /// Past reminded lessons (the confirmations chart's history).
    pub history: usize,
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

/// A demo phone's push subscription at `endpoint`.
fn demo_phone(endpoint: String) -> NewDevice {
    NewDevice {
        device_id: "phone".into(),
        push_endpoint: endpoint,
        p256dh: DEMO_P256DH.into(),
        auth: DEMO_AUTH.into(),
    }
}

/// `h`:00.
fn hour(h: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(h, 0, 0).expect("valid time")
}

/// One student's and one instructor's page link (the first of each role, by id), as
/// `(role, full name, PUBLIC_BASE_URL/me/{token})`: what `dashlight up` prints.
pub async fn page_links(pool: &PgPool, public_base_url: &str) -> Result<Vec<(String, String, String)>, DomainError> {
    let rows = sqlx::query!(
        r#"SELECT DISTINCT ON (role) role, first_name || ' ' || last_name AS "name!", access_token FROM users
         WHERE role IN ('student', 'instructor') AND status = 'active' ORDER BY role DESC, id"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.role, r.name, crate::access::page_url(public_base_url, &r.access_token)))
        .collect())
}

/// Loads the demo school. `now` anchors the bookings ("the coming days").
pub async fn seed(pool: &PgPool, settings: &BookingSettings, now: DateTime<Utc>) -> Result<DemoSummary, DomainError> {
    let mut summary = DemoSummary::default();
    let present: bool = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM users WHERE email LIKE '%@demo.dashlight.test') AS "exists!""#)
        .fetch_one(pool)
        .await?;
    if present {
        summary.already_present = true;
        return Ok(summary);
    }
    let mut tx = pool.begin().await?;
    let mut instructor_ids = Vec::new();
    for (i, (first, last, email, phone)) in INSTRUCTORS.iter().enumerate() {
        let user = people::create_user(
            &mut tx,
            NewUser {
                role: Role::Instructor,
                email: (*email).into(),
                phone: Some((*phone).into()),
                first_name: (*first).into(),
                last_name: (*last).into(),
                timezone: "Europe/London".into(),
                student: None,
                instructor: Some(NewInstructor {
                    license_number: format!("ADI-{:06}", 482_100 + i),
                    hourly_rate_minor: Some(4_200 + 300 * i as i64),
                    currency: None,
                    bio: None,
                }),
            },
        )
        .await?;
        let iid = user.instructor_id.expect("an instructor has an instructor profile");
        // Monday to Saturday, 08:00 to 19:00.
        let week: Vec<Window> = (1..=6i16)
            .map(|day_of_week| Window {
                day_of_week,
                start_time: hour(8),
                end_time: hour(19),
            })
            .collect();
        people::set_availability(&mut tx, iid, &week).await?;
        people::register_device(
            &mut tx,
            user.id,
            &demo_phone(format!("https://push.demo.dashlight.test/instructor-{iid}")),
        )
        .await?;
        instructor_ids.push(iid);
        summary.instructors += 1;
    }
    let mut student_ids = Vec::new();
    for (i, (first, last, phone)) in STUDENTS.iter().enumerate() {
        let test_dates = if i == 0 { vec![now + Duration::days(8)] } else { vec![] };
        // Their CRM contact comes with them.
        let user = people::create_user(
            &mut tx,
            NewUser {
                role: Role::Student,
                email: format!("{}.{}@demo.dashlight.test", first.to_lowercase(), last.to_lowercase()),
                phone: Some((*phone).into()),
                first_name: (*first).into(),
                last_name: (*last).into(),
                timezone: "Europe/London".into(),
                student: Some(NewStudent {
                    license_type: Some("B".into()),
                    current_instructor_id: Some(instructor_ids[i % instructor_ids.len()]),
                    test_dates,
                }),
                instructor: None,
            },
        )
        .await?;
        let sid = user.student_id.expect("a student has a student profile");
        // A mix of preferences: some without push devices, one with SMS off, one with quiet hours.
        if i == 2 || i == 3 {
            people::set_preferences(
                &mut tx,
                &Preferences {
                    user_id: user.id,
                    email_notifications: true,
                    sms_notifications: i != 3,
                    push_notifications: true,
                    quiet_hours_start: (i == 2).then(|| hour(22)),
                    quiet_hours_end: (i == 2).then(|| hour(7)),
                },
            )
            .await?;
        }
        if i % 2 == 0 {
            people::register_device(
                &mut tx,
                user.id,
                &demo_phone(format!("https://push.demo.dashlight.test/student-{sid}")),
            )
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
    let paid = sqlx::query!("SELECT id, student_id FROM bookings ORDER BY id LIMIT 4")
        .fetch_all(&mut *tx)
        .await?;
    for (bid, sid) in paid.into_iter().map(|r| (r.id, r.student_id)) {
        payments::record(
            &mut tx,
            NewPayment {
                student_id: sid,
                booking_id: Some(bid),
                package_id: None,
                amount_minor: 4500,
                currency: "GBP".into(),
                method: "card".into(),
                status: "succeeded".into(),
                provider_ref: None,
            },
            now,
        )
        .await?;
        summary.payments += 1;
    }
    flows(&mut tx, settings, now, &instructor_ids, &student_ids, &mut summary).await?;
    // A weekly series (Tuesdays and Thursdays, 18:00 school time, eight lessons): the scheduler's
    // recurring-bookings job books it on its own over the horizon.
    crate::series::create(
        &mut tx,
        crate::series::NewSeries {
            student_id: student_ids[1],
            instructor_id: instructor_ids[1],
            weekdays: vec![2, 4],
            local_start_time: hour(18),
            duration_minutes: 60,
            timezone: Some(settings.school_tz.name().to_owned()),
            pickup_location: Some("Riverside College gates".into()),
            starts_on: (now.with_timezone(&tz) + Duration::days(6)).date_naive(),
            until_on: None,
            occurrence_count: Some(8),
        },
    )
    .await?;
    waitlist(&mut tx, &instructor_ids, &student_ids, now).await?;
    summary.history = history(&mut tx, settings.school_tz, now, &instructor_ids, &student_ids).await?;
    tx.commit().await?;
    Ok(summary)
}

/// The latest Monday-to-Saturday date before today (school time): the instructors work then.
fn last_working_day(now: DateTime<Utc>, tz: Tz) -> chrono::NaiveDate {
    let mut d = now.with_timezone(&tz).date_naive();
    loop {
        d = d.pred_opt().expect("a date before");
        if d.weekday().number_from_monday() != 7 {
            return d;
        }
    }
}

/// A working day at least `days` ahead (school time).
fn working_day_ahead(now: DateTime<Utc>, tz: Tz, days: i64) -> chrono::NaiveDate {
    let mut d = (now.with_timezone(&tz) + Duration::days(days)).date_naive();
    while d.weekday().number_from_monday() == 7 {
        d = d.succ_opt().expect("a date after");
    }
    d
}

fn at(tz: Tz, date: chrono::NaiveDate, hour: u32) -> DateTime<Utc> {
    let local = date.and_hms_opt(hour, 0, 0).expect("valid time");
    tz.from_local_datetime(&local)
        .earliest()
        .expect("a working hour exists")
        .with_timezone(&Utc)
}

/// Defines a package (in a savepoint), or finds the school's package of that name when it has
/// one already; returns its id.
async fn package(conn: &mut PgConnection, np: NewPackage) -> Result<i64, DomainError> {
    let name = np.name.clone();
    let mut sp = Acquire::begin(&mut *conn).await?;
    match packages::define(&mut sp, np).await {
        Ok(p) => {
            sp.commit().await?;
            Ok(p.id)
        }
        Err(DomainError::Conflict(_)) => {
            sp.rollback().await?;
            Ok(sqlx::query_scalar!("SELECT id FROM lesson_packages WHERE name = $1", name)
                .fetch_one(&mut *conn)
                .await?)
        }
        Err(e) => Err(e),
    }
}

/// One of each flow: a completed lesson with its report, a package running low, a message
/// thread and a lead to follow up (the driving test is the first student's `test_dates`).
async fn flows(
    conn: &mut PgConnection,
    settings: &BookingSettings,
    now: DateTime<Utc>,
    instructors: &[i64],
    students: &[i64],
    summary: &mut DemoSummary,
) -> Result<(), DomainError> {
    let tz = settings.school_tz;
    // A lesson yesterday (or the last working day), completed with three skills rated.
    let day = last_working_day(now, tz);
    let start = at(tz, day, 9);
    let past = NewBooking {
        student_id: students[0],
        instructor_id: instructors[0],
        start_time: start,
        end_time: start + Duration::hours(1),
        pickup_location: Some("Station Road car park".into()),
        dropoff_location: None,
        series: None,
    };
    let booking = bookings::create(conn, settings, past, now).await?;
    summary.bookings += 1;
    let skills: Vec<i64> = sqlx::query_scalar!("SELECT id FROM skill_categories WHERE active ORDER BY skill_order LIMIT 3")
        .fetch_all(&mut *conn)
        .await?;
    let ratings = [4i16, 3, 2];
    let notes = [
        Some("Smooth and confident."),
        None,
        Some("Check the mirrors before signalling, every time."),
    ];
    let lesson = CompleteLesson {
        notes: Some("Good progress today: moving off is much smoother. Next time we'll start on junctions.".into()),
        skills: skills
            .iter()
            .zip(ratings.iter().zip(notes))
            .map(|(id, (rating, note))| SkillRating {
                skill_category_id: *id,
                rating: *rating,
                notes: note.map(str::to_owned),
            })
            .collect(),
    };
    lessons::complete(conn, booking.id, lesson, start + Duration::hours(1)).await?;
    summary.lessons += 1;

    // A two-lesson taster, paid by card, then a booking that leaves one lesson: package_low.
    let taster = package(
        conn,
        NewPackage {
            name: "2-lesson taster".into(),
            lessons_included: 2,
            price_minor: 9000,
            currency: Some("GBP".into()),
            validity_days: 60,
        },
    )
    .await?;
    package(
        conn,
        NewPackage {
            name: "10-lesson bundle".into(),
            lessons_included: 10,
            price_minor: 40000,
            currency: Some("GBP".into()),
            validity_days: 180,
        },
    )
    .await?;
    let buyer = students[1];
    payments::record(
        conn,
        NewPayment {
            student_id: buyer,
            booking_id: None,
            package_id: Some(taster),
            amount_minor: 9000,
            currency: "GBP".into(),
            method: "card".into(),
            status: "succeeded".into(),
            provider_ref: Some("demo-taster".into()),
        },
        now,
    )
    .await?;
    summary.payments += 1;
    let start = at(tz, working_day_ahead(now, tz, 6), 11);
    let nb = NewBooking {
        student_id: buyer,
        instructor_id: instructors[1],
        start_time: start,
        end_time: start + Duration::hours(1),
        pickup_location: Some("Riverside College gates".into()),
        dropoff_location: None,
        series: None,
    };
    let mut sp = Acquire::begin(&mut *conn).await?;
    match bookings::create(&mut sp, settings, nb, now).await {
        Ok(_) => {
            sp.commit().await?;
            summary.bookings += 1;
        }
        Err(DomainError::Conflict(_) | DomainError::Invalid { .. }) => sp.rollback().await?,
        Err(e) => return Err(e),
    }

    // A thread between the first instructor and the first student: the student read the
    // instructor's message; the instructor has not read the reply yet (its email is pending).
    let instructor_user = sqlx::query_scalar!("SELECT user_id FROM instructors WHERE id = $1", instructors[0])
        .fetch_one(&mut *conn)
        .await?;
    let student_user = sqlx::query_scalar!("SELECT user_id FROM students WHERE id = $1", students[0])
        .fetch_one(&mut *conn)
        .await?;
    let first = messages::send(
        conn,
        NewMessage {
            sender_id: instructor_user,
            participant_ids: vec![student_user],
            thread_id: None,
            content: "Hi Amelia, great lesson yesterday! Could we start ten minutes earlier next time? I'll pick you up at Station Road."
                .into(),
        },
        now - Duration::hours(2),
    )
    .await?;
    messages::mark_read(conn, first.id, student_user, now - Duration::hours(2) + Duration::minutes(5)).await?;
    messages::send(
        conn,
        NewMessage {
            sender_id: student_user,
            participant_ids: vec![instructor_user],
            thread_id: Some(first.thread_id),
            content: "Yes, that works for me. See you then!".into(),
        },
        now,
    )
    .await?;
    summary.messages += 2;

    // A lead who enquired eight days ago and has not been contacted since.
    let since = now - Duration::days(8);
    let lead = crm::create_lead(
        conn,
        NewContact {
            name: "Oliver Bennett".into(),
            email: Some("oliver.bennett@demo-lead.dashlight.test".into()),
            phone: Some("+447700900301".into()),
            source: Some("website".into()),
        },
        since,
    )
    .await?;
    crm::record_interaction(
        conn,
        NewInteraction {
            contact_id: lead.id,
            staff_user_id: None,
            interaction_type: "email".into(),
            notes: Some("Asked about intensive courses; sent the price list.".into()),
            interaction_date: Some(since),
        },
        since,
    )
    .await?;
    summary.leads += 1;
    Ok(())
}

/// Two students on the waitlist (gap filling): one takes any instructor at any time, one wants
/// the first instructor on weekdays 08:00–20:00. Cancelling a demo booking a few hours or more
/// ahead then offers its slot to them (`slot_offer` in the outbox).
async fn waitlist(conn: &mut sqlx::PgConnection, instructors: &[i64], students: &[i64], now: DateTime<Utc>) -> Result<(), DomainError> {
    use crate::gaps::{self, SetWaitlist};
    use crate::people::Window;
    let (Some(first), [.., a, b]) = (instructors.first(), students) else {
        return Ok(());
    };
    let any = SetWaitlist {
        instructor_ids: Vec::new(),
        windows: Vec::new(),
        active: true,
    };
    gaps::set_waitlist(conn, *a, any, now).await?;
    let weekdays = (1..=5)
        .map(|d| Window {
            day_of_week: d,
            start_time: NaiveTime::from_hms_opt(8, 0, 0).expect("valid time"),
            end_time: NaiveTime::from_hms_opt(20, 0, 0).expect("valid time"),
        })
        .collect();
    let picky = SetWaitlist {
        instructor_ids: vec![*first],
        windows: weekdays,
        active: true,
    };
    gaps::set_waitlist(conn, *b, picky, now + Duration::seconds(1)).await?;
    Ok(())
}

/// Two weeks of past lessons as the system would have recorded them: each was booked, reminded
/// 24 hours ahead (by push for students with a phone registered, by SMS or email for the
/// others), confirmed by most students (from the notification, by an SMS reply or from the
/// email's link, a few minutes to a few hours after the reminder) and ended `completed` or
/// `no_show` (more often when unconfirmed). History cannot be made by the live operations
/// (their messages would all go out now), so these rows are written directly, then the
/// confirmation figures of those days are computed ([`crate::analytics::rollup_confirmations`]).
/// Returns how many lessons were added.
async fn history(conn: &mut PgConnection, tz: Tz, now: DateTime<Utc>, instructors: &[i64], students: &[i64]) -> Result<usize, DomainError> {
    // Each student's reminder channel and how they confirm: push ones from the notification,
    // SMS ones by reply, the one with SMS off (the fourth) by the email's link.
    let kind_of = |i: usize| -> (&'static str, &'static str) {
        if i.is_multiple_of(2) {
            ("push", "push")
        } else if i == 3 {
            ("email", "email")
        } else {
            ("sms", "sms")
        }
    };
    let today = now.with_timezone(&tz).date_naive();
    let mut added = 0usize;
    let mut days = Vec::new();
    let mut k = 0usize;
    for back in (1..=14i64).rev() {
        let day = today - Duration::days(back);
        if day.weekday().number_from_monday() == 7 {
            continue;
        }
        // Late afternoon slots, clear of the other demo lessons.
        for hour in [15u32, 17] {
            for iid in instructors {
                k += 1;
                if (k + back as usize).is_multiple_of(4) {
                    continue; // a free slot now and then
                }
                let si = (k + back as usize) % students.len();
                let (channel, via) = kind_of(si);
                let start = at(tz, day, hour);
                // Confirmation rates by channel: push 85%, SMS 65%, email 45%.
                let roll = (k * 37 + back as usize * 11) % 100;
                let confirmed = roll
                    < match channel {
                        "push" => 85,
                        "sms" => 65,
                        _ => 45,
                    };
                // No-shows: about 1 in 25 confirmed lessons, 1 in 3 unconfirmed.
                let no_show = if confirmed {
                    (k * 13).is_multiple_of(25)
                } else {
                    (k * 7).is_multiple_of(3)
                };
                let reminded_at = start - Duration::hours(24) + Duration::seconds(2);
                let minutes = [4i64, 9, 15, 26, 41, 70, 130, 220][k % 8];
                let confirmed_at = confirmed.then(|| reminded_at + Duration::minutes(minutes));
                let booking_id: i64 = sqlx::query_scalar!(
                    "INSERT INTO bookings (student_id, instructor_id, booking_date, start_time, end_time, status, pickup_location,
                                           created_at, student_confirmed_at, student_confirmed_via)
                     VALUES ($1, $2, $3, $4, $5, $6, 'Home address', $7, $8, $9) RETURNING id",
                    students[si],
                    *iid,
                    day,
                    start,
                    start + Duration::hours(1),
                    if no_show { "no_show" } else { "completed" },
                    start - Duration::days(5),
                    confirmed_at,
                    confirmed.then_some(via),
                )
                .fetch_one(&mut *conn)
                .await?;
                let target: String = sqlx::query_scalar!(
                    r#"SELECT CASE $2 WHEN 'push' THEN 'https://push.demo.dashlight.test/student-' || s.id
                                      WHEN 'sms' THEN coalesce(u.phone, '') ELSE u.email END AS "target!"
                       FROM students s JOIN users u ON u.id = s.user_id WHERE s.id = $1"#,
                    students[si],
                    channel,
                )
                .fetch_one(&mut *conn)
                .await?;
                sqlx::query!(
                    "WITH n AS (
                        INSERT INTO notifications (user_id, type, title, content, channels, policy, booking_id, dedupe_key, due_at,
                                                   expires_at, status, priority, next_check_at)
                        SELECT s.user_id, 'lesson_reminder', 'Lesson reminder', 'Your lesson starts in 24 hours.', ARRAY['push', 'sms', 'email'],
                               'first', $1::bigint, 'lesson_reminder:' || $1::bigint::text || ':24h:v1', $2, $3, 'done', 20, $2
                        FROM students s WHERE s.id = $4
                        RETURNING id)
                     INSERT INTO notification_deliveries (notification_id, channel, target, status, attempts, sent_at, delivered_at)
                     SELECT n.id, $5, $6, 'delivered', 1, $7, $7 FROM n",
                    booking_id,
                    start - Duration::hours(24),
                    start,
                    students[si],
                    channel,
                    target,
                    reminded_at,
                )
                .execute(&mut *conn)
                .await?;
                added += 1;
            }
        }
        days.push(day);
    }
    for day in days {
        crate::analytics::rollup_confirmations(conn, tz, day, now).await?;
    }
    Ok(added)
}
