//! The notification kinds (docs/notifications.md): for each, who it goes to, the channel list and the
//! policy that reads it. The one place this table lives.

use serde::{Deserialize, Serialize};

/// A delivery channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Channel {
    /// SMTP email.
    Email,
    /// Twilio-compatible SMS.
    Sms,
    /// Web Push.
    Push,
}

impl Channel {
    /// The name stored in `notification_deliveries.channel`.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
        }
    }

    /// Parses a stored channel name.
    pub fn parse(s: &str) -> Option<Channel> {
        match s {
            "email" => Some(Channel::Email),
            "sms" => Some(Channel::Sms),
            "push" => Some(Channel::Push),
            _ => None,
        }
    }
}

/// How a channel list is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Every enabled, reachable channel of the list.
    All,
    /// The first channel that works, moving down on off/unreachable/permanent failure.
    First,
}

impl Policy {
    /// The name stored in `notifications.policy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::All => "all",
            Policy::First => "first",
        }
    }

    /// Parses a stored policy.
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "all" => Some(Policy::All),
            "first" => Some(Policy::First),
            _ => None,
        }
    }
}

/// The lowest queue priority of a time-critical kind ([`Kind::priority`]): reminders, alerts and
/// booking changes. Bulk kinds (reports, invoices, agendas, follow-ups) are below it; the drain
/// keeps part of its room for jobs at or above it.
pub const TIME_CRITICAL: i32 = 15;

/// Every notification kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// To the student: their booking is confirmed.
    BookingConfirmed,
    /// To the instructor: a booking was made, cancelled or moved.
    BookingAlert,
    /// To the student, one per reminder offset.
    LessonReminder,
    /// To the student: their booking was cancelled.
    BookingCancelled,
    /// To the student: their booking was moved.
    BookingRescheduled,
    /// To the student and the school: a series slot could not be booked.
    RecurringConflict,
    /// To the student, with the PDF.
    InvoiceIssued,
    /// To the instructor at 07:00 their time.
    DailyAgenda,
    /// To the student after a completed lesson.
    LessonReport,
    /// To the other participants of a message.
    NewMessage,
    /// To the student before a driving test.
    TestReminder,
    /// To the student: one lesson left in a package.
    PackageLow,
    /// To the school: a lead needs a follow-up.
    CrmFollowUp,
    /// To a waitlisted student: a freed slot is theirs if they accept first (with the link).
    SlotOffer,
    /// To a student who opened an offer: someone else accepted the slot first.
    SlotTaken,
    /// To a person: the link to their own page (`/me/{token}`), sent on request. Email only.
    AccessLink,
    /// To the instructor: the student replied C/YES to a lesson reminder.
    StudentConfirmed,
    /// To the instructor and the school: the student replied R to a lesson reminder.
    RearrangeRequest,
    /// To the school: any other SMS a person sent to the school's number, forwarded.
    InboundReply,
    /// To the student, `CONFIRM_NUDGE_BEFORE` the start of a lesson they have not confirmed:
    /// one SMS asking them to reply C (SMS only, even when the push reminder was delivered).
    ConfirmNudge,
    /// To the instructor, `CONFIRM_ALERT_BEFORE` the start of a lesson the student has not
    /// confirmed.
    UnconfirmedLesson,
}

impl Kind {
    /// All kinds.
    pub const ALL: [Kind; 21] = [
        Kind::BookingConfirmed,
        Kind::BookingAlert,
        Kind::LessonReminder,
        Kind::BookingCancelled,
        Kind::BookingRescheduled,
        Kind::RecurringConflict,
        Kind::InvoiceIssued,
        Kind::DailyAgenda,
        Kind::LessonReport,
        Kind::NewMessage,
        Kind::TestReminder,
        Kind::PackageLow,
        Kind::CrmFollowUp,
        Kind::SlotOffer,
        Kind::SlotTaken,
        Kind::AccessLink,
        Kind::StudentConfirmed,
        Kind::RearrangeRequest,
        Kind::InboundReply,
        Kind::ConfirmNudge,
        Kind::UnconfirmedLesson,
    ];

    /// The stored name (`notifications.type`) and template folder.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::BookingConfirmed => "booking_confirmed",
            Kind::BookingAlert => "booking_alert",
            Kind::LessonReminder => "lesson_reminder",
            Kind::BookingCancelled => "booking_cancelled",
            Kind::BookingRescheduled => "booking_rescheduled",
            Kind::RecurringConflict => "recurring_conflict",
            Kind::InvoiceIssued => "invoice_issued",
            Kind::DailyAgenda => "daily_agenda",
            Kind::LessonReport => "lesson_report",
            Kind::NewMessage => "new_message",
            Kind::TestReminder => "test_reminder",
            Kind::PackageLow => "package_low",
            Kind::CrmFollowUp => "crm_follow_up",
            Kind::SlotOffer => "slot_offer",
            Kind::SlotTaken => "slot_taken",
            Kind::AccessLink => "access_link",
            Kind::StudentConfirmed => "student_confirmed",
            Kind::RearrangeRequest => "rearrange_request",
            Kind::InboundReply => "inbound_reply",
            Kind::ConfirmNudge => "confirm_nudge",
            Kind::UnconfirmedLesson => "unconfirmed_lesson",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The policy and channel list of the kind.
    pub fn routing(self) -> (Policy, &'static [Channel]) {
        use Channel::*;
        match self {
            Kind::BookingConfirmed | Kind::BookingCancelled | Kind::BookingRescheduled => (Policy::All, &[Email, Push]),
            Kind::BookingAlert
            | Kind::LessonReminder
            | Kind::TestReminder
            | Kind::SlotOffer
            | Kind::RearrangeRequest
            | Kind::UnconfirmedLesson => (Policy::First, &[Push, Sms, Email]),
            // The one kind that is an SMS by design: it asks for a `C` reply.
            Kind::ConfirmNudge => (Policy::First, &[Sms]),
            // The school's copy of a rearrange request is sent to its address only (see
            // `dashlight_core::replies`); an inbound reply is forwarded by email.
            Kind::RecurringConflict
            | Kind::InvoiceIssued
            | Kind::LessonReport
            | Kind::PackageLow
            | Kind::CrmFollowUp
            | Kind::InboundReply
            | Kind::AccessLink => (Policy::All, &[Email]),
            // slot_taken only says an offer the student looked at has gone, student_confirmed
            // that nothing changes: not worth an SMS.
            Kind::DailyAgenda | Kind::NewMessage | Kind::SlotTaken | Kind::StudentConfirmed => (Policy::First, &[Push, Email]),
        }
    }

    /// Queue priority: higher runs first. Time-critical messages (at least [`TIME_CRITICAL`])
    /// outrank reports.
    pub fn priority(self) -> i32 {
        match self {
            Kind::LessonReminder
            | Kind::BookingAlert
            | Kind::TestReminder
            | Kind::SlotOffer
            | Kind::RearrangeRequest
            | Kind::ConfirmNudge
            | Kind::UnconfirmedLesson => 20,
            Kind::BookingConfirmed
            | Kind::BookingCancelled
            | Kind::BookingRescheduled
            | Kind::NewMessage
            | Kind::SlotTaken
            | Kind::StudentConfirmed
            | Kind::InboundReply => 15,
            _ => 10,
        }
    }

    /// Whether a person may turn this kind off on email (an unsubscribe link, their own page,
    /// the preferences API). The transactional kinds about their own bookings and money may not
    /// be turned off (docs/hearing-back.md): their emails carry no `List-Unsubscribe`.
    pub fn email_opt_out_allowed(self) -> bool {
        !matches!(
            self,
            Kind::BookingConfirmed | Kind::BookingCancelled | Kind::BookingRescheduled | Kind::InvoiceIssued | Kind::AccessLink
        )
    }

    /// Push urgency (RFC 8030): reminders and alerts are high.
    pub fn urgency(self) -> &'static str {
        match self {
            Kind::LessonReminder
            | Kind::BookingAlert
            | Kind::TestReminder
            | Kind::SlotOffer
            | Kind::RearrangeRequest
            | Kind::ConfirmNudge
            | Kind::UnconfirmedLesson => "high",
            Kind::NewMessage
            | Kind::BookingCancelled
            | Kind::BookingRescheduled
            | Kind::SlotTaken
            | Kind::StudentConfirmed
            | Kind::InboundReply => "normal",
            _ => "low",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_critical_kinds_are_at_or_above_the_reserve_and_bulk_kinds_below() {
        use Kind::*;
        for k in [LessonReminder, BookingAlert, SlotOffer, BookingCancelled, BookingRescheduled] {
            assert!(k.priority() >= TIME_CRITICAL, "{k:?}");
        }
        for k in [DailyAgenda, InvoiceIssued, LessonReport, CrmFollowUp, PackageLow] {
            assert!(k.priority() < TIME_CRITICAL, "{k:?}");
        }
    }

    #[test]
    fn sms_only_ever_falls_back() {
        // Except the confirmation nudge, which exists to ask for an SMS reply.
        assert_eq!(Kind::ConfirmNudge.routing(), (Policy::First, &[Channel::Sms][..]));
        for k in Kind::ALL {
            let (policy, channels) = k.routing();
            if channels.contains(&Channel::Sms) && k != Kind::ConfirmNudge {
                assert_eq!(policy, Policy::First, "{k:?}");
                assert_ne!(channels[0], Channel::Sms, "{k:?}");
            }
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
    }
}
