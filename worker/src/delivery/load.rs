//! Reading what the planner needs for a batch of jobs: notifications with their recipients,
//! preferences (with the per-kind email opt-out of the notification's kind), push devices and
//! existing deliveries, in three statements whatever the batch size, plus one per channel for
//! the suppressed addresses and numbers among the recipients ([`dashlight_core::suppressions::among`])
//! and one for the provider reports that receipt jobs name (`receipts`). Every lookup is an index probe per notification (`LATERAL … OFFSET 0` keeps the planner
//! from hashing whole tables when its statistics are stale, as they are right after a burst of
//! inserts), so the cost follows the batch, not the tables.

use std::collections::HashMap;

use chrono::{DateTime, NaiveTime, Utc};
use dashlight_core::{
    kinds::{Channel, Kind, Policy},
    receipts::{Receipt, ReceiptSource, ReceiptStatus},
    states::{DeliveryStatus, NotificationStatus},
    suppressions,
};
use sqlx::PgPool;

use super::{DeliveryRow, Device, Loaded, NotificationRow, Recipient, Settings};

struct Row {
    id: i64,
    user_id: Option<i64>,
    recipient_email: Option<String>,
    kind: String,
    channels: Vec<String>,
    policy: String,
    data: serde_json::Value,
    booking_id: Option<i64>,
    due_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    status: NotificationStatus,
    priority: i16,
    u_email: Option<String>,
    u_phone: Option<String>,
    u_first_name: Option<String>,
    u_last_name: Option<String>,
    u_timezone: Option<String>,
    email_on: bool,
    sms_on: bool,
    push_on: bool,
    quiet_start: Option<NaiveTime>,
    quiet_end: Option<NaiveTime>,
    email_opted_out: bool,
}

struct DeviceRow {
    user_id: i64,
    id: i64,
    push_endpoint: String,
    p256dh: String,
    auth: String,
}

struct ExistingRow {
    notification_id: i64,
    id: i64,
    channel: Channel,
    status: DeliveryStatus,
    next_attempt_at: Option<DateTime<Utc>>,
}

/// A notification that cannot be planned at all, with the reason (its job is killed).
pub(crate) type Unplannable = HashMap<i64, String>;

/// Loads the notifications `ids`. Those missing from both maps no longer exist.
pub(crate) async fn load(pool: &PgPool, settings: &Settings, ids: &[i64]) -> Result<(HashMap<i64, Loaded>, Unplannable), sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as!(
        Row,
        r#"SELECT n.id, n.user_id, n.recipient_email, n.type AS kind, n.channels, n.policy, n.data, n.booking_id, n.due_at, n.expires_at,
                n.status AS "status: NotificationStatus", n.priority,
                u.email AS "u_email?", u.phone AS "u_phone?", u.first_name AS "u_first_name?", u.last_name AS "u_last_name?", u.timezone AS "u_timezone?",
                coalesce(p.email_notifications, true) AS "email_on!", coalesce(p.sms_notifications, true) AS "sms_on!",
                coalesce(p.push_notifications, true) AS "push_on!", p.quiet_hours_start AS "quiet_start?", p.quiet_hours_end AS "quiet_end?",
                EXISTS (SELECT 1 FROM email_opt_outs o WHERE o.user_id = n.user_id AND o.kind = n.type) AS "email_opted_out!"
         FROM notifications n
         LEFT JOIN LATERAL (SELECT email, phone, first_name, last_name, timezone FROM users WHERE id = n.user_id OFFSET 0) u ON true
         LEFT JOIN LATERAL (SELECT email_notifications, sms_notifications, push_notifications, quiet_hours_start, quiet_hours_end
                            FROM user_preferences WHERE user_id = n.user_id OFFSET 0) p ON true
         WHERE n.id = ANY($1)"#,
        ids,
    )
    .fetch_all(pool)
    .await?;
    let users: Vec<i64> = rows.iter().filter_map(|r| r.user_id).collect();
    let mut devices: HashMap<i64, Vec<Device>> = HashMap::new();
    if !users.is_empty() {
        let found: Vec<DeviceRow> = sqlx::query_as!(
            DeviceRow,
            "SELECT user_id, id, push_endpoint, p256dh, auth FROM user_devices WHERE user_id = ANY($1) AND active ORDER BY user_id, id",
            &users,
        )
        .fetch_all(pool)
        .await?;
        for d in found {
            devices.entry(d.user_id).or_default().push(Device {
                id: d.id,
                push_endpoint: d.push_endpoint,
                p256dh: d.p256dh,
                auth: d.auth,
            });
        }
    }
    let existing: Vec<ExistingRow> = sqlx::query_as!(
        ExistingRow,
        r#"SELECT d.notification_id AS "notification_id!", d.id AS "id!", d.channel AS "channel!: Channel",
                  d.status AS "status!: DeliveryStatus", d.next_attempt_at AS "next_attempt_at?"
         FROM unnest($1::bigint[]) AS t(nid), LATERAL (
             SELECT notification_id, id, channel, status, next_attempt_at
             FROM notification_deliveries WHERE notification_id = t.nid OFFSET 0) d
         ORDER BY d.id"#,
        ids,
    )
    .fetch_all(pool)
    .await?;
    let mut deliveries: HashMap<i64, Vec<DeliveryRow>> = HashMap::new();
    for d in existing {
        deliveries.entry(d.notification_id).or_default().push(DeliveryRow {
            id: d.id,
            channel: d.channel,
            status: d.status,
            next_attempt_at: d.next_attempt_at,
        });
    }

    let mut out = HashMap::with_capacity(rows.len());
    let mut unplannable = HashMap::new();
    for r in rows {
        let (Some(kind), Some(policy)) = (Kind::parse(&r.kind), Policy::parse(&r.policy)) else {
            unplannable.insert(
                r.id,
                format!("notification {} has unknown kind {} or policy {}", r.id, r.kind, r.policy),
            );
            continue;
        };
        let n = NotificationRow {
            id: r.id,
            user_id: r.user_id,
            recipient_email: r.recipient_email,
            kind,
            channels: r.channels.iter().filter_map(|c| Channel::parse(c)).collect(),
            policy,
            data: r.data,
            booking_id: r.booking_id,
            due_at: r.due_at,
            expires_at: r.expires_at,
            status: r.status,
            priority: r.priority,
        };
        let recipient = match n.user_id {
            None => settings.school_recipient(&n),
            Some(uid) => {
                let (Some(email), Some(first_name), Some(last_name), Some(timezone)) =
                    (r.u_email, r.u_first_name, r.u_last_name, r.u_timezone)
                else {
                    unplannable.insert(n.id, format!("recipient user {uid} of notification {} does not exist", n.id));
                    continue;
                };
                Recipient {
                    email,
                    phone: r.u_phone,
                    first_name,
                    last_name,
                    timezone,
                    email_on: r.email_on,
                    sms_on: r.sms_on,
                    push_on: r.push_on,
                    quiet_start: r.quiet_start,
                    quiet_end: r.quiet_end,
                    email_opted_out: r.email_opted_out,
                    email_suppressed: None,
                    sms_suppressed: None,
                }
            }
        };
        let devices = n.user_id.and_then(|u| devices.get(&u).cloned()).unwrap_or_default();
        let deliveries = deliveries.remove(&n.id).unwrap_or_default();
        out.insert(
            n.id,
            Loaded {
                n,
                recipient,
                devices,
                deliveries,
            },
        );
    }
    mark_suppressed(pool, &mut out).await?;
    Ok((out, unplannable))
}

/// Marks the recipients whose address or number is suppressed: one statement per channel.
async fn mark_suppressed(pool: &PgPool, out: &mut HashMap<i64, Loaded>) -> Result<(), sqlx::Error> {
    let emails: Vec<String> = out.values().map(|l| l.recipient.email.clone()).filter(|e| !e.is_empty()).collect();
    let phones: Vec<String> = out.values().filter_map(|l| l.recipient.phone.clone()).collect();
    if emails.is_empty() && phones.is_empty() {
        return Ok(());
    }
    let mut conn = pool.acquire().await?;
    let email: HashMap<String, suppressions::Reason> = if emails.is_empty() {
        HashMap::new()
    } else {
        suppressions::among(&mut conn, Channel::Email, &emails).await?.into_iter().collect()
    };
    let sms: HashMap<String, suppressions::Reason> = if phones.is_empty() {
        HashMap::new()
    } else {
        suppressions::among(&mut conn, Channel::Sms, &phones).await?.into_iter().collect()
    };
    for l in out.values_mut() {
        let r = &mut l.recipient;
        r.email_suppressed = email.get(&suppressions::normalise(Channel::Email, &r.email)).copied();
        r.sms_suppressed = r
            .phone
            .as_deref()
            .and_then(|p| sms.get(&suppressions::normalise(Channel::Sms, p)).copied());
    }
    Ok(())
}

/// The provider reports `ids` (`delivery_receipts.id`) that receipt jobs name, by id. A report
/// missing from the map no longer exists (its delivery was deleted).
pub(crate) async fn receipts(pool: &PgPool, ids: &[i64]) -> Result<HashMap<i64, Receipt>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<Receipt> = sqlx::query_as!(
        Receipt,
        r#"SELECT id, delivery_id, source AS "source: ReceiptSource", status AS "status: ReceiptStatus", provider_status,
                  error_code, detail, received_at
         FROM delivery_receipts WHERE id = ANY($1)"#,
        ids,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r)).collect())
}
