//! Analytics rollup: the last three local days (school time zone) recomputed from scratch into
//! `daily_rollups`, one row per instructor with activity and one for the whole school
//! (`instructor_id` NULL), plus the CRM figures that follow from payments and bookings.
//!
//! Every figure is a range scan on the time it happened, over `[local midnight, next local
//! midnight)` (23 or 25 hours on the days the clocks change):
//!
//! | figure | counted from | attributed to the instructor of |
//! |---|---|---|
//! | `bookings_made` | `bookings.created_at` | the booking |
//! | `lessons_completed` | `lessons.completed_at` | the lesson |
//! | `cancellations` | `bookings.cancelled_at` | the booking |
//! | `no_shows` | `bookings.start_time` of `no_show` bookings | the booking |
//! | `revenue_minor` | `payments.paid_at` of succeeded payments | the paid booking (packages: school only) |
//! | `deliveries` | `sent_at` of sent (and later delivered or undelivered), `updated_at` of failed and dead deliveries | the notification's booking |
//! | `receipts` | `delivered_at` of delivered, `updated_at` of undelivered deliveries (what providers reported), with `delivered_rate` = delivered / (delivered + undelivered) per channel | the notification's booking |
//! | `due_to_sent_p50/p95_ms` | `sent_at − notifications.due_at` of the day's sent deliveries | the notification's booking |
//! | `events` | `analytics_events.timestamp`, plus the day's sent, failed and dead deliveries (the `notification_sent` / `notification_failed` events, view `delivery_events`, derived rather than stored) | `event_data.instructor_id` (delivery events: school only) |
//! | `slots_offered` | `slot_offers.created_at` (distinct freed slots) | the offer |
//! | `slots_filled` | `slot_offers.accepted_at` | the offer |
//! | `fill_minutes_p50` | `accepted_at − freed_at` of the day's fills, in minutes | the offer |
//!
//! Each day also gets its confirmation figures (reminded, confirmed, minutes to confirm,
//! no-shows among confirmed and unconfirmed lessons, per first reminder channel), computed and
//! stored by `dashlight_core::analytics::rollup_confirmations`.
//!
//! The school row counts everything, attributed or not. The run is an upsert on
//! `(day, instructor_id)`; an instructor row whose figures are all gone is deleted. Recomputing
//! gives identical rows except `computed_at`. Owns `daily_rollups` and the
//! `crm_contacts.lifetime_value_minor` / `lead_status` moves made here.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::{Map, Value, json};
use sqlx::PgConnection;

use super::{Context, PeriodicError, day_bounds};

/// Local days recomputed per run (today and the two before).
pub const DAYS: i64 = 3;

const CHANNELS: [&str; 3] = ["email", "sms", "push"];

/// One row of `daily_rollups` (without its id and `computed_at`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rollup {
    /// Bookings created that day.
    pub bookings_made: i64,
    /// Lessons completed that day.
    pub lessons_completed: i64,
    /// Bookings cancelled that day.
    pub cancellations: i64,
    /// No-shows of lessons that day.
    pub no_shows: i64,
    /// Succeeded payments paid that day.
    pub revenue_minor: i64,
    /// channel → (sent, failed, dead).
    pub deliveries: BTreeMap<String, (i64, i64, i64)>,
    /// channel → (delivered, undelivered): what providers reported that day.
    pub receipts: BTreeMap<String, (i64, i64)>,
    /// Median lateness of the day's sends, ms.
    pub p50_ms: Option<f64>,
    /// 95th percentile lateness of the day's sends, ms.
    pub p95_ms: Option<f64>,
    /// Analytics events.
    pub events: i64,
    /// Freed slots offered to waitlisted students that day.
    pub slots_offered: i64,
    /// Freed slots accepted that day.
    pub slots_filled: i64,
    /// Median minutes from the cancellation to the acceptance of the day's fills.
    pub fill_minutes_p50: Option<f64>,
}

impl Rollup {
    fn is_empty(&self) -> bool {
        *self == Rollup::default()
    }

    /// `{"email": {"sent": n, "failed": n, "dead": n}, ...}`, every channel present.
    pub fn deliveries_json(&self) -> Value {
        let mut m = Map::new();
        for ch in CHANNELS {
            let (sent, failed, dead) = self.deliveries.get(ch).copied().unwrap_or_default();
            m.insert(ch.into(), json!({"sent": sent, "failed": failed, "dead": dead}));
        }
        Value::Object(m)
    }

    /// `{"sms": {"delivered": n, "undelivered": n, "delivered_rate": x | null}, ...}`, every
    /// channel present; the rate is delivered / (delivered + undelivered).
    pub fn receipts_json(&self) -> Value {
        let mut m = Map::new();
        for ch in CHANNELS {
            let (delivered, undelivered) = self.receipts.get(ch).copied().unwrap_or_default();
            let rate = (delivered + undelivered > 0).then(|| delivered as f64 / (delivered + undelivered) as f64);
            m.insert(
                ch.into(),
                json!({"delivered": delivered, "undelivered": undelivered, "delivered_rate": rate}),
            );
        }
        Value::Object(m)
    }

    /// sent / (sent + failed + dead) over every channel; `None` without any.
    pub fn success_rate(&self) -> Option<f64> {
        let (sent, all) = self
            .deliveries
            .values()
            .fold((0, 0), |(s, a), (sent, failed, dead)| (s + sent, a + sent + failed + dead));
        (all > 0).then(|| sent as f64 / all as f64)
    }
}

/// Key of a row: `None` is the school.
type Key = Option<i64>;

struct Count {
    instructor_id: Option<i64>,
    school: bool,
    n: i64,
}

/// Recomputes the last [`DAYS`] days and the CRM figures; returns the summary line.
pub async fn run(ctx: &Context, now: DateTime<Utc>) -> Result<String, PeriodicError> {
    let tz = ctx.config.school_timezone;
    let today = now.with_timezone(&tz).date_naive();
    let mut tx = ctx.pool.begin().await?;
    let mut rows = 0;
    for back in (0..DAYS).rev() {
        let day = today - Duration::days(back);
        let (start, end) = day_bounds(tz, day);
        let computed = compute_day(&mut tx, start, end).await?;
        rows += store_day(&mut tx, day, &computed, now).await?;
        // What the reminders achieved, per first reminder channel (`confirmation_rollups`).
        rows += dashlight_core::analytics::rollup_confirmations(&mut tx, tz, day, now).await?;
        let school = computed.get(&None).cloned().unwrap_or_default();
        tracing::info!(%day, instructors = computed.len() - 1, bookings = school.bookings_made, revenue_minor = school.revenue_minor, events = school.events, "daily rollup recomputed");
    }
    let (valued, activated) = crm(&mut tx).await?;
    tx.commit().await?;
    Ok(format!(
        "recomputed {DAYS} days ({} to {today}) into {rows} rollup rows; {valued} contacts revalued, {activated} leads became active",
        today - Duration::days(DAYS - 1)
    ))
}

fn add(map: &mut BTreeMap<Key, Rollup>, c: &Count, f: impl Fn(&mut Rollup, i64)) {
    let key = if c.school { None } else { c.instructor_id };
    // Unattributed rows (no instructor) only count towards the school's.
    if c.school || c.instructor_id.is_some() {
        f(map.entry(key).or_default(), c.n);
    }
}

/// The figures of `[start, end)`: one entry per instructor with activity, and the school's.
pub async fn compute_day(conn: &mut PgConnection, start: DateTime<Utc>, end: DateTime<Utc>) -> Result<BTreeMap<Key, Rollup>, sqlx::Error> {
    let mut map: BTreeMap<Key, Rollup> = BTreeMap::new();
    map.insert(None, Rollup::default());

    // (rows, setter): every query groups by instructor and adds the school's total (grouping set ()).
    type Setter = fn(&mut Rollup, i64);
    macro_rules! count {
        ($sql:literal) => {
            sqlx::query_as!(Count, $sql, start, end).fetch_all(&mut *conn).await?
        };
    }
    let counts: [(Vec<Count>, Setter); 8] = [
        (
            count!(
                r#"SELECT instructor_id AS "instructor_id?", grouping(instructor_id) = 1 AS "school!", count(*) AS "n!" FROM bookings
             WHERE created_at >= $1 AND created_at < $2 GROUP BY GROUPING SETS ((instructor_id), ())"#
            ),
            |r, n| r.bookings_made = n,
        ),
        (
            count!(
                r#"SELECT instructor_id AS "instructor_id?", grouping(instructor_id) = 1 AS "school!", count(*) AS "n!" FROM lessons
             WHERE completed_at >= $1 AND completed_at < $2 GROUP BY GROUPING SETS ((instructor_id), ())"#
            ),
            |r, n| r.lessons_completed = n,
        ),
        (
            count!(
                r#"SELECT instructor_id AS "instructor_id?", grouping(instructor_id) = 1 AS "school!", count(*) AS "n!" FROM bookings
             WHERE cancelled_at >= $1 AND cancelled_at < $2 GROUP BY GROUPING SETS ((instructor_id), ())"#
            ),
            |r, n| r.cancellations = n,
        ),
        (
            count!(
                r#"SELECT instructor_id AS "instructor_id?", grouping(instructor_id) = 1 AS "school!", count(*) AS "n!" FROM bookings
             WHERE status = 'no_show' AND start_time >= $1 AND start_time < $2 GROUP BY GROUPING SETS ((instructor_id), ())"#
            ),
            |r, n| r.no_shows = n,
        ),
        (
            count!(
                r#"SELECT b.instructor_id AS "instructor_id?", grouping(b.instructor_id) = 1 AS "school!", coalesce(sum(p.amount_minor), 0)::bigint AS "n!"
             FROM payments p LEFT JOIN bookings b ON b.id = p.booking_id
             WHERE p.status = 'succeeded' AND p.paid_at >= $1 AND p.paid_at < $2 GROUP BY GROUPING SETS ((b.instructor_id), ())"#
            ),
            |r, n| r.revenue_minor = n,
        ),
        (
            count!(
                r#"SELECT instructor_id AS "instructor_id?", grouping(instructor_id) = 1 AS "school!", count(*) AS "n!"
               FROM (SELECT CASE WHEN event_data->>'instructor_id' ~ '^[0-9]{1,18}$' THEN (event_data->>'instructor_id')::bigint END AS instructor_id
                     FROM analytics_events WHERE "timestamp" >= $1 AND "timestamp" < $2) e
               GROUP BY GROUPING SETS ((instructor_id), ())"#
            ),
            |r, n| r.events = n,
        ),
        (
            count!(
                r#"SELECT instructor_id AS "instructor_id?", grouping(instructor_id) = 1 AS "school!", count(DISTINCT (booking_id, booking_version)) AS "n!" FROM slot_offers
             WHERE created_at >= $1 AND created_at < $2 GROUP BY GROUPING SETS ((instructor_id), ())"#
            ),
            |r, n| r.slots_offered = n,
        ),
        (
            count!(
                r#"SELECT instructor_id AS "instructor_id?", grouping(instructor_id) = 1 AS "school!", count(*) AS "n!" FROM slot_offers
             WHERE accepted_at >= $1 AND accepted_at < $2 GROUP BY GROUPING SETS ((instructor_id), ())"#
            ),
            |r, n| r.slots_filled = n,
        ),
    ];
    for (rows, set) in counts {
        for c in &rows {
            add(&mut map, c, set);
        }
    }

    // Deliveries of the day by channel and outcome, and how late the sends were. Both statements
    // start from `day_deliveries` (the day's sent and failed deliveries with their instructor):
    // a macro, so that each stays one literal the compiler checks.
    macro_rules! with_day_deliveries {
        ($select:literal) => {
            sqlx::query!(
                "WITH day_deliveries AS (
                     SELECT d.channel, d.status, d.sent_at, n.due_at, b.instructor_id
                     FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id LEFT JOIN bookings b ON b.id = n.booking_id
                     WHERE d.status IN ('sent', 'delivered', 'undelivered') AND d.sent_at >= $1 AND d.sent_at < $2
                     UNION ALL
                     SELECT d.channel, d.status, d.sent_at, n.due_at, b.instructor_id
                     FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id LEFT JOIN bookings b ON b.id = n.booking_id
                     WHERE d.status IN ('failed', 'dead') AND d.updated_at >= $1 AND d.updated_at < $2)
                 " + $select,
                start,
                end
            )
            .fetch_all(&mut *conn)
            .await?
        };
    }
    let by_channel = with_day_deliveries!(
        r#"SELECT instructor_id AS "instructor_id?", grouping(instructor_id) = 1 AS "school!", channel AS "channel!",
                  count(*) FILTER (WHERE status IN ('sent', 'delivered', 'undelivered')) AS "sent!",
                  count(*) FILTER (WHERE status = 'failed') AS "failed!", count(*) FILTER (WHERE status = 'dead') AS "dead!"
           FROM day_deliveries GROUP BY GROUPING SETS ((instructor_id, channel), (channel))"#
    );
    for r in by_channel {
        let (instructor_id, school, channel, sent, failed, dead) = (r.instructor_id, r.school, r.channel, r.sent, r.failed, r.dead);
        if school {
            // The deliveries' own events (`delivery_events`): they name no instructor.
            map.entry(None).or_default().events += sent + failed + dead;
        }
        if school || instructor_id.is_some() {
            let key = if school { None } else { instructor_id };
            map.entry(key).or_default().deliveries.insert(channel, (sent, failed, dead));
        }
    }
    // What providers reported that day, by channel.
    let reported = sqlx::query!(
        r#"SELECT b.instructor_id AS "instructor_id?", grouping(b.instructor_id) = 1 AS "school!", d.channel AS "channel!",
                count(*) FILTER (WHERE d.status = 'delivered') AS "delivered!", count(*) FILTER (WHERE d.status = 'undelivered') AS "undelivered!"
         FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id LEFT JOIN bookings b ON b.id = n.booking_id
         WHERE (d.status = 'delivered' AND d.delivered_at >= $1 AND d.delivered_at < $2)
            OR (d.status = 'undelivered' AND d.updated_at >= $1 AND d.updated_at < $2)
         GROUP BY GROUPING SETS ((b.instructor_id, d.channel), (d.channel))"#,
        start,
        end,
    )
    .fetch_all(&mut *conn)
    .await?;
    for r in reported {
        let (instructor_id, school, channel, delivered, undelivered) = (r.instructor_id, r.school, r.channel, r.delivered, r.undelivered);
        if school || instructor_id.is_some() {
            let key = if school { None } else { instructor_id };
            map.entry(key).or_default().receipts.insert(channel, (delivered, undelivered));
        }
    }
    let lateness = with_day_deliveries!(
        r#"SELECT instructor_id AS "instructor_id?", grouping(instructor_id) = 1 AS "school!",
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY (extract(epoch FROM sent_at - due_at) * 1000)::float8) AS p50,
                  percentile_cont(0.95) WITHIN GROUP (ORDER BY (extract(epoch FROM sent_at - due_at) * 1000)::float8) AS p95
           FROM day_deliveries WHERE status IN ('sent', 'delivered', 'undelivered') GROUP BY GROUPING SETS ((instructor_id), ())"#
    );
    for l in lateness {
        if l.school || l.instructor_id.is_some() {
            let r = map.entry(if l.school { None } else { l.instructor_id }).or_default();
            r.p50_ms = l.p50;
            r.p95_ms = l.p95;
        }
    }
    let fills = sqlx::query!(
        r#"SELECT instructor_id AS "instructor_id?", grouping(instructor_id) = 1 AS "school!",
                percentile_cont(0.5) WITHIN GROUP (ORDER BY (extract(epoch FROM accepted_at - freed_at) / 60)::float8) AS p50
         FROM slot_offers WHERE accepted_at >= $1 AND accepted_at < $2 GROUP BY GROUPING SETS ((instructor_id), ())"#,
        start,
        end,
    )
    .fetch_all(&mut *conn)
    .await?;
    for r in fills {
        let (instructor_id, school, p50) = (r.instructor_id, r.school, r.p50);
        if school || instructor_id.is_some() {
            map.entry(if school { None } else { instructor_id }).or_default().fill_minutes_p50 = p50;
        }
    }
    // An instructor may appear through a grouping with nothing counted (a NULL sum).
    map.retain(|k, r| k.is_none() || !r.is_empty());
    Ok(map)
}

/// Upserts the day's rows and deletes instructor rows of the day that no longer have figures.
/// Returns how many rows were written.
async fn store_day(
    conn: &mut PgConnection,
    day: NaiveDate,
    rows: &BTreeMap<Key, Rollup>,
    now: DateTime<Utc>,
) -> Result<usize, sqlx::Error> {
    for (instructor, r) in rows {
        sqlx::query!(
            "INSERT INTO daily_rollups (day, instructor_id, bookings_made, lessons_completed, cancellations, no_shows, revenue_minor,
                                        deliveries, delivery_success_rate, due_to_sent_p50_ms, due_to_sent_p95_ms, events, computed_at,
                                        slots_offered, slots_filled, fill_minutes_p50, receipts)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
             ON CONFLICT (day, instructor_id) DO UPDATE SET
                bookings_made = EXCLUDED.bookings_made, lessons_completed = EXCLUDED.lessons_completed,
                cancellations = EXCLUDED.cancellations, no_shows = EXCLUDED.no_shows, revenue_minor = EXCLUDED.revenue_minor,
                deliveries = EXCLUDED.deliveries, delivery_success_rate = EXCLUDED.delivery_success_rate,
                due_to_sent_p50_ms = EXCLUDED.due_to_sent_p50_ms, due_to_sent_p95_ms = EXCLUDED.due_to_sent_p95_ms,
                events = EXCLUDED.events, computed_at = EXCLUDED.computed_at,
                slots_offered = EXCLUDED.slots_offered, slots_filled = EXCLUDED.slots_filled,
                fill_minutes_p50 = EXCLUDED.fill_minutes_p50, receipts = EXCLUDED.receipts",
            day,
            *instructor,
            r.bookings_made as i32,
            r.lessons_completed as i32,
            r.cancellations as i32,
            r.no_shows as i32,
            r.revenue_minor,
            r.deliveries_json(),
            r.success_rate(),
            r.p50_ms,
            r.p95_ms,
            r.events as i32,
            now,
            r.slots_offered as i32,
            r.slots_filled as i32,
            r.fill_minutes_p50,
            r.receipts_json(),
        )
        .execute(&mut *conn)
        .await?;
    }
    let keep: Vec<i64> = rows.keys().flatten().copied().collect();
    sqlx::query!(
        "DELETE FROM daily_rollups WHERE day = $1 AND instructor_id IS NOT NULL AND instructor_id <> ALL($2)",
        day,
        &keep,
    )
    .execute(&mut *conn)
    .await?;
    Ok(rows.len())
}

/// Lifetime values from the succeeded payments of each contact's user (in the contact's
/// currency), and leads whose user has booked become `active`. Only rows that change are
/// written. Returns (revalued, activated).
async fn crm(conn: &mut PgConnection) -> Result<(u64, u64), sqlx::Error> {
    let rows = sqlx::query!(
        r#"WITH v AS (
            SELECT c.id, c.lead_status AS old_status,
                   coalesce((SELECT sum(p.amount_minor) FROM students s JOIN payments p ON p.student_id = s.id
                             WHERE s.user_id = c.user_id AND p.status = 'succeeded' AND p.currency = c.currency), 0)::bigint AS ltv,
                   EXISTS (SELECT 1 FROM students s JOIN bookings b ON b.student_id = s.id WHERE s.user_id = c.user_id) AS booked
            FROM crm_contacts c WHERE c.user_id IS NOT NULL)
         UPDATE crm_contacts c
         SET lifetime_value_minor = v.ltv,
             lead_status = CASE WHEN c.lead_status = 'lead' AND v.booked THEN 'active' ELSE c.lead_status END
         FROM v
         WHERE v.id = c.id AND (c.lifetime_value_minor <> v.ltv OR (c.lead_status = 'lead' AND v.booked))
         RETURNING c.id, (v.old_status = 'lead' AND v.booked) AS "activated!""#
    )
    .fetch_all(&mut *conn)
    .await?;
    let activated = rows.iter().filter(|r| r.activated).count() as u64;
    for r in &rows {
        tracing::info!(contact = r.id, activated = r.activated, "crm contact figures updated");
    }
    Ok((rows.len() as u64, activated))
}
