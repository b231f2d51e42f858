//! The planner: what one job means for its notification, decided from loaded state and the
//! clock alone (no I/O, so every case is a unit test). `decide` covers the common case (a new
//! notification due now) and every uncommon one (an operator's retry, a quiet-hours hold, a
//! cancelled or expired notification, a retry, the next channel of a `first` policy, a job that
//! ran early); `plan` turns a policy, preferences, addresses, devices and quiet hours into
//! deliveries; `receipt` decides what a provider's report does to its delivery. What the
//! decisions write is `super::record::apply`'s business.

use std::time::Duration;

use chrono::{DateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use dashlight_core::{
    kinds::{Channel, Policy},
    receipts::{Receipt, ReceiptStatus},
    states::{DeliveryStatus, NotificationStatus},
};
use serde_json::Value;

use super::{DeliveryRow, Device, Loaded, NotificationRow, Recipient};

/// The gap below which a job that ran a moment early is held in memory rather than re-queued:
/// its run time and the notification's due time come from two clocks that may differ by a few
/// milliseconds.
pub(crate) const EARLY_GAP: Duration = Duration::from_secs(2);

/// A delivery to insert.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Planned {
    pub(crate) channel: Channel,
    pub(crate) target: String,
    pub(crate) device_id: Option<i64>,
    /// `Some(reason)` → recorded as skipped.
    pub(crate) skip: Option<String>,
    /// Held (quiet hours) until then.
    pub(crate) hold_until: Option<DateTime<Utc>>,
}

/// What a job means for its notification: a decision to apply now, or a moment to wait first.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Apply this now (`super::record::apply`).
    Apply(Applicable),
    /// Due within [`EARLY_GAP`] (or a report ahead of its send): hold the job this long, then
    /// decide again. Never applied.
    Wait(Duration),
}

impl From<Applicable> for Decision {
    fn from(a: Applicable) -> Self {
        Decision::Apply(a)
    }
}

impl PartialEq<Applicable> for Decision {
    fn eq(&self, other: &Applicable) -> bool {
        matches!(self, Decision::Apply(a) if a == other)
    }
}

/// A decision the recorder applies (every one but a wait).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Applicable {
    /// The job can never succeed (its notification is gone or of an unknown kind).
    Kill(String),
    /// Close the open deliveries as `cancelled`: the booking changed first.
    Cancel,
    /// An operator cancelled the notification's job: record the notification `cancelled` with
    /// this reason and close its open deliveries ([`withdraw`]).
    Withdraw(String),
    /// The notification expired (the lesson started) before it could be sent: close it `skipped`.
    Expire,
    /// Not due yet: another job at that time.
    Later(DateTime<Utc>),
    /// Deliver: reopen a failed delivery (operator retry), insert newly planned deliveries (those
    /// to send are claimed by their insert) and claim due ones. With nothing to insert or claim,
    /// the notification is only settled (done when nothing is open).
    Deliver {
        /// An operator's retry of this failed or dead delivery.
        reopen: Option<i64>,
        /// Deliveries of the next stage of the policy.
        insert: Vec<Planned>,
        /// Existing deliveries due now.
        claim: Vec<i64>,
    },
    /// A provider's report: the move it makes (see [`receipt`]), or `None` when it changes
    /// nothing (its job is acknowledged, nothing else is touched).
    Receipt(Option<ReceiptMove>),
}

/// What a provider's report does: its delivery, `sent` until now, becomes `delivered` or
/// `undelivered`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReceiptMove {
    /// `delivery_receipts.id`.
    pub(crate) receipt_id: i64,
    /// The delivery.
    pub(crate) delivery_id: i64,
    pub(crate) channel: Channel,
    /// `delivered` or `undelivered`.
    pub(crate) to: DeliveryStatus,
    /// The provider's words for `last_error` (`undelivered`).
    pub(crate) error: Option<String>,
    /// The provider's error code (`21610`: the number opted out).
    pub(crate) error_code: Option<String>,
    /// When the report arrived.
    pub(crate) at: DateTime<Utc>,
    /// Under `first`, the next channel is tried (as after a permanent failure).
    pub(crate) next_stage: bool,
}

impl Applicable {
    /// Does it send anything?
    pub(crate) fn sends(&self) -> usize {
        match self {
            Applicable::Deliver { insert, claim, .. } => {
                insert.iter().filter(|p| p.skip.is_none() && p.hold_until.is_none()).count() + claim.len()
            }
            _ => 0,
        }
    }
}

/// Decides what a job for notification `n` (`None`: it no longer exists) does at `now`.
/// `retry_delivery_id` is an operator's retry; `system_clock` says whether `now` is real time
/// (an injected clock never waits in memory).
pub(crate) fn decide(loaded: Option<&Loaded>, retry_delivery_id: Option<i64>, now: DateTime<Utc>, system_clock: bool) -> Decision {
    let Some(l) = loaded else {
        return Applicable::Kill("the notification does not exist (deleted?)".into()).into();
    };
    let n = &l.n;
    match n.status {
        NotificationStatus::Cancelled => return Applicable::Cancel.into(),
        NotificationStatus::Done | NotificationStatus::Skipped if retry_delivery_id.is_none() => {
            return Applicable::Deliver {
                reopen: None,
                insert: vec![],
                claim: vec![],
            }
            .into();
        }
        _ => {}
    }
    if n.due_at > now {
        let wait = (n.due_at - now).to_std().unwrap_or_default();
        return if system_clock && wait <= EARLY_GAP {
            Decision::Wait(wait)
        } else {
            Applicable::Later(n.due_at).into()
        };
    }
    if n.expires_at.is_some_and(|e| e <= now) {
        return Applicable::Expire.into();
    }
    let reopen = retry_delivery_id.filter(|id| l.deliveries.iter().any(|d| d.id == *id && d.status.is_failure()));
    if l.deliveries.is_empty() {
        let insert = plan(n.policy, &n.channels, 0, &l.recipient, &l.devices, now, lesson_start(n));
        return Applicable::Deliver {
            reopen: None,
            insert,
            claim: vec![],
        }
        .into();
    }
    let due = |d: &DeliveryRow| {
        Some(d.id) == reopen
            || (matches!(d.status, DeliveryStatus::Pending | DeliveryStatus::Retrying) && d.next_attempt_at.is_none_or(|t| t <= now))
    };
    let claim: Vec<i64> = l.deliveries.iter().filter(|d| due(d)).map(|d| d.id).collect();
    if claim.is_empty() {
        // A retry's job can start a moment before the retry is due (see [`EARLY_GAP`]).
        if system_clock
            && let Some(next) = l
                .deliveries
                .iter()
                .filter(|d| d.status == DeliveryStatus::Retrying)
                .filter_map(|d| d.next_attempt_at)
                .min()
        {
            let wait = (next - now).to_std().unwrap_or_default();
            if wait <= EARLY_GAP {
                return Decision::Wait(wait);
            }
        }
        if n.policy == Policy::First
            && let Some(from) = next_stage(&n.channels, &l.deliveries)
        {
            let insert = plan(n.policy, &n.channels, from, &l.recipient, &l.devices, now, lesson_start(n));
            return Applicable::Deliver {
                reopen: None,
                insert,
                claim: vec![],
            }
            .into();
        }
    }
    Applicable::Deliver {
        reopen,
        insert: vec![],
        claim,
    }
    .into()
}

/// How long a report about a delivery still `sending` waits before it is decided again.
pub(crate) const RECEIPT_EARLY_WAIT: Duration = Duration::from_millis(250);

/// The decision on a provider's report. A report can overtake the send it is about: a fast
/// bounce or status callback arriving while the delivery is still `sending` (the provider has
/// answered, the recorder has not yet written `sent`). Such a report waits
/// ([`RECEIPT_EARLY_WAIT`]) and is decided again, instead of being dropped as "not `sent`"; the
/// wait ends once the send is recorded (or recorded `interrupted` by a rescue).
pub(crate) fn on_receipt(loaded: Option<&Loaded>, r: Option<&Receipt>) -> Decision {
    if let (Some(l), Some(r)) = (loaded, r)
        && l.deliveries
            .iter()
            .any(|d| d.id == r.delivery_id && d.status == DeliveryStatus::Sending)
    {
        return Decision::Wait(RECEIPT_EARLY_WAIT);
    }
    Applicable::Receipt(receipt(loaded, r)).into()
}

/// What a provider's report does to its delivery. Only a `sent` delivery moves: to `delivered`
/// or to `undelivered`, both final. So a report arriving twice, a `delivered` after an
/// `undelivered` (or the reverse), or a report about a delivery an operator has since put back
/// on its way changes nothing, and delivered stays delivered. An `undelivered` under `first`
/// goes on to the next channel exactly as a permanent failure at send time does
/// ([`next_stage`]). `None`: nothing to do (the job is acknowledged).
pub(crate) fn receipt(loaded: Option<&Loaded>, r: Option<&Receipt>) -> Option<ReceiptMove> {
    let (l, r) = (loaded?, r?);
    let d = l.deliveries.iter().find(|d| d.id == r.delivery_id)?;
    let to = match r.status {
        ReceiptStatus::Delivered => DeliveryStatus::Delivered,
        ReceiptStatus::Undelivered => DeliveryStatus::Undelivered,
        ReceiptStatus::Note => return None,
    };
    if d.status != DeliveryStatus::Sent {
        return None;
    }
    let next_stage = to == DeliveryStatus::Undelivered
        && l.n.policy == Policy::First
        && l.n.status != NotificationStatus::Cancelled
        && l.n.expires_at.is_none_or(|e| e > r.received_at)
        && {
            let after: Vec<DeliveryRow> = l
                .deliveries
                .iter()
                .map(|x| DeliveryRow {
                    status: if x.id == d.id { to } else { x.status },
                    ..x.clone()
                })
                .collect();
            next_stage(&l.n.channels, &after).is_some()
        };
    let error = (to == DeliveryStatus::Undelivered).then(|| {
        let mut e = format!(
            "undelivered: {}",
            r.provider_status.as_deref().unwrap_or("reported by the provider")
        );
        if let Some(code) = &r.error_code {
            e.push_str(&format!(" (error {code})"));
        }
        if let Some(detail) = &r.detail {
            e.push_str(&format!(": {detail}"));
        }
        e
    });
    Some(ReceiptMove {
        receipt_id: r.id,
        delivery_id: d.id,
        channel: d.channel,
        to,
        error,
        error_code: r.error_code.clone(),
        at: r.received_at,
        next_stage,
    })
}

/// What an operator's cancel of a notification's job (`DeliverJob::cancel`) means: the
/// notification is recorded `cancelled` unless it has already ended.
pub(crate) fn withdraw(loaded: Option<&Loaded>, reason: &str) -> Applicable {
    match loaded.map(|l| l.n.status) {
        None => Applicable::Kill("the notification does not exist (deleted?)".into()),
        Some(NotificationStatus::Pending | NotificationStatus::Processing) => Applicable::Withdraw(reason.to_owned()),
        Some(_) => Applicable::Deliver {
            reopen: None,
            insert: vec![],
            claim: vec![],
        },
    }
}

/// Under `first`: the index of the next channel to try, when every delivery of the channel
/// tried last has ended without reaching anyone (failed, dead, undelivered, skipped) and none
/// was sent or delivered.
pub(crate) fn next_stage(channels: &[Channel], deliveries: &[DeliveryRow]) -> Option<usize> {
    if deliveries.iter().any(|d| {
        matches!(
            d.status,
            DeliveryStatus::Sent | DeliveryStatus::Delivered | DeliveryStatus::Cancelled
        ) || d.status.is_open()
    }) {
        return None;
    }
    let last = channels.iter().rposition(|c| deliveries.iter().any(|d| d.channel == *c))?;
    (last + 1 < channels.len()).then_some(last + 1)
}

/// The start of the lesson a notification is about, if any (quiet hours divert such messages
/// to email when the lesson starts before they end).
pub(crate) fn lesson_start(n: &NotificationRow) -> Option<DateTime<Utc>> {
    n.data
        .pointer("/booking/start_time")
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Decides the deliveries of a notification from `channels[from..]`.
pub(crate) fn plan(
    policy: Policy,
    channels: &[Channel],
    from: usize,
    r: &Recipient,
    devices: &[Device],
    now: DateTime<Utc>,
    lesson_start: Option<DateTime<Utc>>,
) -> Vec<Planned> {
    let mut out = Vec::new();
    let tz = dashlight_core::validate::stored_timezone(&r.timezone);
    let quiet_until = quiet_end(r.quiet_start, r.quiet_end, now, tz);
    for &channel in &channels[from.min(channels.len())..] {
        let skip = |reason: String| Planned {
            channel,
            target: String::new(),
            device_id: None,
            skip: Some(reason),
            hold_until: None,
        };
        let enabled = match channel {
            Channel::Email => r.email_on,
            Channel::Sms => r.sms_on,
            Channel::Push => r.push_on,
        };
        // A suppressed address or number goes before the preference: STOP turns both off, and
        // the operator should see why.
        if let Some(reason) = r.blocked(channel) {
            out.push(skip(reason.into()));
            continue;
        }
        if !enabled {
            out.push(skip(format!("{} notifications are switched off", channel.as_str())));
            continue;
        }
        let mut hold_until = None;
        if matches!(channel, Channel::Sms | Channel::Push)
            && let Some(until) = quiet_until
        {
            if lesson_start.is_some_and(|s| s <= until) {
                out.push(skip(format!(
                    "quiet hours until {}; the lesson starts before then",
                    until.with_timezone(&tz).format("%H:%M")
                )));
                continue;
            }
            hold_until = Some(until);
        }
        let usable: Vec<Planned> = match channel {
            Channel::Email if r.email.contains('@') => {
                vec![Planned {
                    channel,
                    target: r.email.clone(),
                    device_id: None,
                    skip: None,
                    hold_until,
                }]
            }
            Channel::Sms => match &r.phone {
                Some(p) => vec![Planned {
                    channel,
                    target: p.clone(),
                    device_id: None,
                    skip: None,
                    hold_until,
                }],
                None => vec![],
            },
            Channel::Push => devices
                .iter()
                .map(|d| Planned {
                    channel,
                    target: d.push_endpoint.clone(),
                    device_id: Some(d.id),
                    skip: None,
                    hold_until,
                })
                .collect(),
            Channel::Email => vec![],
        };
        if usable.is_empty() {
            out.push(skip(match channel {
                Channel::Email => "no email address".into(),
                Channel::Sms => "no phone number".into(),
                Channel::Push => "no active push device".into(),
            }));
            continue;
        }
        out.extend(usable);
        if policy == Policy::First {
            break;
        }
    }
    out
}

/// When quiet hours are on at `now`, the moment they end.
fn quiet_end(start: Option<NaiveTime>, end: Option<NaiveTime>, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
    let (start, end) = (start?, end?);
    let local = now.with_timezone(&tz);
    let t = local.time();
    let quiet = if start < end {
        t >= start && t < end
    } else {
        t >= start || t < end
    };
    if !quiet {
        return None;
    }
    let mut day = local.date_naive();
    if t >= end && start > end {
        day = day.succ_opt()?;
    }
    // The first instant at or after `end` on that day (DST gaps move it forward).
    let naive = day.and_time(end);
    let at = tz
        .from_local_datetime(&naive)
        .earliest()
        .or_else(|| tz.from_local_datetime(&(naive + chrono::Duration::hours(1))).earliest())?;
    Some(at.with_timezone(&Utc))
}

#[cfg(test)]
pub(crate) mod tests {
    use dashlight_core::kinds::Kind;

    use super::*;

    /// The decision, which must be one to apply now.
    fn applicable(d: Decision) -> Applicable {
        match d {
            Decision::Apply(a) => a,
            Decision::Wait(w) => panic!("waits {w:?}"),
        }
    }

    pub(crate) fn recipient() -> Recipient {
        Recipient {
            email: "s@example.com".into(),
            phone: Some("+447700900123".into()),
            first_name: "Sam".into(),
            last_name: "Student".into(),
            timezone: "Europe/London".into(),
            email_on: true,
            sms_on: true,
            push_on: true,
            quiet_start: None,
            quiet_end: None,
            email_opted_out: false,
            email_suppressed: None,
            sms_suppressed: None,
        }
    }

    pub(crate) fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    pub(crate) fn device(id: i64) -> Device {
        Device {
            id,
            push_endpoint: format!("https://p/{id}"),
            p256dh: String::new(),
            auth: String::new(),
        }
    }

    pub(crate) fn loaded(status: NotificationStatus, deliveries: Vec<DeliveryRow>) -> Loaded {
        Loaded {
            n: NotificationRow {
                id: 1,
                user_id: Some(1),
                recipient_email: None,
                kind: Kind::LessonReminder,
                channels: vec![Channel::Push, Channel::Sms, Channel::Email],
                policy: Policy::First,
                data: serde_json::json!({}),
                booking_id: None,
                due_at: t("2026-03-03T12:00:00Z"),
                expires_at: Some(t("2026-03-03T14:00:00Z")),
                status,
                priority: 20,
            },
            recipient: recipient(),
            devices: vec![device(7)],
            deliveries,
        }
    }

    pub(crate) fn delivery(id: i64, channel: Channel, status: DeliveryStatus, next: Option<&str>) -> DeliveryRow {
        DeliveryRow {
            id,
            channel,
            status,
            next_attempt_at: next.map(t),
        }
    }

    fn report(delivery_id: i64, status: ReceiptStatus) -> Receipt {
        Receipt {
            id: 1,
            delivery_id,
            source: dashlight_core::receipts::ReceiptSource::SmsStatus,
            status,
            provider_status: None,
            error_code: None,
            detail: None,
            received_at: t("2026-03-03T12:00:05Z"),
        }
    }

    #[test]
    fn a_report_that_overtakes_its_send_waits_for_it() {
        let r = report(5, ReceiptStatus::Delivered);
        let sending = loaded(
            NotificationStatus::Pending,
            vec![delivery(5, Channel::Sms, DeliveryStatus::Sending, None)],
        );
        assert_eq!(on_receipt(Some(&sending), Some(&r)), Decision::Wait(RECEIPT_EARLY_WAIT));
        let sent = loaded(
            NotificationStatus::Done,
            vec![delivery(5, Channel::Sms, DeliveryStatus::Sent, None)],
        );
        assert!(
            matches!(on_receipt(Some(&sent), Some(&r)), Decision::Apply(Applicable::Receipt(Some(m))) if m.to == DeliveryStatus::Delivered)
        );
        let delivered = loaded(
            NotificationStatus::Done,
            vec![delivery(5, Channel::Sms, DeliveryStatus::Delivered, None)],
        );
        assert_eq!(on_receipt(Some(&delivered), Some(&r)), Applicable::Receipt(None));
    }

    #[test]
    fn first_policy_falls_to_sms_without_devices() {
        let p = plan(
            Policy::First,
            &[Channel::Push, Channel::Sms, Channel::Email],
            0,
            &recipient(),
            &[],
            t("2026-03-03T12:00:00Z"),
            None,
        );
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].skip.as_deref(), Some("no active push device"));
        assert_eq!(p[1].channel, Channel::Sms);
        assert!(p[1].skip.is_none());
    }

    #[test]
    fn quiet_hours_hold_or_divert() {
        let mut r = recipient();
        r.quiet_start = NaiveTime::from_hms_opt(22, 0, 0);
        r.quiet_end = NaiveTime::from_hms_opt(7, 0, 0);
        let now = t("2026-03-03T23:00:00Z");
        let held = plan(
            Policy::First,
            &[Channel::Push, Channel::Sms, Channel::Email],
            0,
            &r,
            &[device(1)],
            now,
            Some(t("2026-03-04T12:00:00Z")),
        );
        assert_eq!(held[0].hold_until, Some(t("2026-03-04T07:00:00Z")));
        let diverted = plan(
            Policy::First,
            &[Channel::Push, Channel::Sms, Channel::Email],
            0,
            &r,
            &[device(1)],
            now,
            Some(t("2026-03-04T06:30:00Z")),
        );
        assert_eq!(diverted.last().unwrap().channel, Channel::Email);
        assert!(diverted[..diverted.len() - 1].iter().all(|p| p.skip.is_some()));
    }

    #[test]
    fn a_new_notification_due_now_plans_its_first_stage() {
        let l = loaded(NotificationStatus::Pending, vec![]);
        let d = applicable(decide(Some(&l), None, t("2026-03-03T12:00:00Z"), false));
        let Applicable::Deliver { insert, claim, reopen } = &d else {
            panic!("{d:?}")
        };
        assert!(claim.is_empty() && reopen.is_none());
        assert_eq!(insert.len(), 1);
        assert_eq!(insert[0].channel, Channel::Push);
        assert_eq!(d.sends(), 1);
    }

    #[test]
    fn missing_cancelled_expired_and_early_notifications() {
        let now = t("2026-03-03T12:00:00Z");
        assert!(matches!(decide(None, None, now, false), Decision::Apply(Applicable::Kill(_))));
        let l = loaded(NotificationStatus::Cancelled, vec![]);
        assert_eq!(decide(Some(&l), None, now, false), Applicable::Cancel);
        let l = loaded(NotificationStatus::Pending, vec![]);
        assert_eq!(decide(Some(&l), None, t("2026-03-03T14:00:00Z"), false), Applicable::Expire);
        assert_eq!(
            decide(Some(&l), None, t("2026-03-03T11:00:00Z"), false),
            Applicable::Later(t("2026-03-03T12:00:00Z"))
        );
        assert_eq!(
            decide(Some(&l), None, t("2026-03-03T11:59:59.5Z"), true),
            Decision::Wait(Duration::from_millis(500))
        );
        // An injected clock never waits in memory.
        assert!(matches!(
            decide(Some(&l), None, t("2026-03-03T11:59:59.5Z"), false),
            Decision::Apply(Applicable::Later(_))
        ));
    }

    #[test]
    fn retries_claim_what_is_due_and_first_moves_on_after_a_failure() {
        let now = t("2026-03-03T12:05:00Z");
        let l = loaded(
            NotificationStatus::Pending,
            vec![delivery(5, Channel::Push, DeliveryStatus::Retrying, Some("2026-03-03T12:04:00Z"))],
        );
        assert_eq!(
            decide(Some(&l), None, now, false),
            Applicable::Deliver {
                reopen: None,
                insert: vec![],
                claim: vec![5]
            }
        );
        let l = loaded(
            NotificationStatus::Pending,
            vec![delivery(5, Channel::Push, DeliveryStatus::Retrying, Some("2026-03-03T12:06:00Z"))],
        );
        assert_eq!(applicable(decide(Some(&l), None, now, false)).sends(), 0);
        // Push failed for good: SMS next.
        let l = loaded(
            NotificationStatus::Pending,
            vec![delivery(5, Channel::Push, DeliveryStatus::Failed, None)],
        );
        let d = applicable(decide(Some(&l), None, now, false));
        let Applicable::Deliver { insert, .. } = &d else { panic!("{d:?}") };
        assert_eq!(insert[0].channel, Channel::Sms);
    }

    #[test]
    fn an_operator_retry_reopens_only_a_failed_delivery() {
        let now = t("2026-03-03T12:05:00Z");
        let l = loaded(
            NotificationStatus::Done,
            vec![delivery(5, Channel::Push, DeliveryStatus::Dead, None)],
        );
        assert_eq!(
            decide(Some(&l), Some(5), now, false),
            Applicable::Deliver {
                reopen: Some(5),
                insert: vec![],
                claim: vec![5]
            }
        );
        let l = loaded(
            NotificationStatus::Done,
            vec![delivery(5, Channel::Push, DeliveryStatus::Sent, None)],
        );
        assert_eq!(applicable(decide(Some(&l), Some(5), now, false)).sends(), 0);
    }
}
