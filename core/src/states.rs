//! The constrained states of the schema as Rust enums, mapped to the text values the
//! `CHECK` constraints allow (`sqlx::Type`), so code compares and binds states, never strings.
//! apalis's job states are [`crate::queue::JobState`]. The schema tests read each state column's
//! `CHECK` constraint back from the database and compare it with its enum's `ALL`.

use serde::{Deserialize, Serialize};

macro_rules! text_state {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
        #[sqlx(type_name = "text", rename_all = "snake_case")]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vm])* $variant),+
        }

        impl $name {
            /// Every value, in the schema's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Every stored value, in the schema's order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The stored value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Parses a stored value.
            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_state! {
    /// `notification_deliveries.status` (docs/notifications.md, "Delivery statuses").
    DeliveryStatus {
        /// Planned, not yet attempted (or held by quiet hours until `next_attempt_at`).
        Pending => "pending",
        /// Claimed by a worker; the provider call is in flight.
        Sending => "sending",
        /// The provider accepted it.
        Sent => "sent",
        /// A transient failure; next attempt at `next_attempt_at`.
        Retrying => "retrying",
        /// A permanent failure.
        Failed => "failed",
        /// Attempts exhausted.
        Dead => "dead",
        /// Not sent, on purpose (`skip_reason` says why).
        Skipped => "skipped",
        /// The booking changed first.
        Cancelled => "cancelled",
        /// The provider confirmed it reached the handset or mailbox (a receipt after `sent`).
        Delivered => "delivered",
        /// Accepted, then not delivered (a carrier failure or a bounce); retried like `failed`.
        Undelivered => "undelivered",
    }
}

impl DeliveryStatus {
    /// Still on its way: a worker will act on it.
    pub fn is_open(self) -> bool {
        matches!(self, DeliveryStatus::Pending | DeliveryStatus::Retrying | DeliveryStatus::Sending)
    }

    /// The failures an operator may retry.
    pub const RETRYABLE: [DeliveryStatus; 3] = [DeliveryStatus::Failed, DeliveryStatus::Dead, DeliveryStatus::Undelivered];

    /// Ended without reaching anyone through a fault (an operator may retry it).
    pub fn is_failure(self) -> bool {
        matches!(self, DeliveryStatus::Failed | DeliveryStatus::Dead | DeliveryStatus::Undelivered)
    }
}

text_state! {
    /// `notifications.status`.
    NotificationStatus {
        /// Waiting for its due time or its first run.
        Pending => "pending",
        /// Reopened by an operator's retry.
        Processing => "processing",
        /// Nothing open any more.
        Done => "done",
        /// Not sent (expired before it could be).
        Skipped => "skipped",
        /// Withdrawn: the booking changed first, or a person or an operator cancelled it.
        Cancelled => "cancelled",
        /// The worker could not plan, claim or record it (`status_reason` says why); it failed
        /// alone, nothing else in its job or batch was held back.
        Failed => "failed",
    }
}

impl NotificationStatus {
    /// A worker still has to act on it.
    pub fn is_open(self) -> bool {
        matches!(self, NotificationStatus::Pending | NotificationStatus::Processing)
    }
}

text_state! {
    /// `delivery_attempts.outcome`.
    AttemptOutcome {
        /// The provider accepted it.
        Sent => "sent",
        /// A failure worth retrying.
        Transient => "transient",
        /// A failure retrying cannot help.
        Permanent => "permanent",
        /// The worker stopped mid-send; the provider may have accepted it.
        Interrupted => "interrupted",
    }
}

text_state! {
    /// `bookings.status`.
    BookingStatus {
        /// Requested, not yet confirmed.
        Pending => "pending",
        /// Booked: reminders and alerts follow it.
        Confirmed => "confirmed",
        /// Cancelled by the student, the instructor or the school.
        Cancelled => "cancelled",
        /// The lesson took place.
        Completed => "completed",
        /// The student did not turn up.
        NoShow => "no_show",
    }
}

impl BookingStatus {
    /// Still ahead: it may be cancelled.
    pub fn is_cancellable(self) -> bool {
        matches!(self, BookingStatus::Pending | BookingStatus::Confirmed)
    }
}

text_state! {
    /// `bookings.student_confirmed_via`: how the student confirmed a lesson.
    ConfirmedVia {
        /// Replied C or YES to an SMS.
        Sms => "sms",
        /// The Confirm action of the push reminder.
        Push => "push",
        /// The confirm link of the reminder email (its page's button).
        Email => "email",
        /// The Confirm button on their own page.
        OwnPage => "own_page",
    }
}

impl ConfirmedVia {
    /// How people read it: "by SMS", "from the push notification".
    pub fn phrase(self) -> &'static str {
        match self {
            ConfirmedVia::Sms => "by SMS",
            ConfirmedVia::Push => "from the push notification",
            ConfirmedVia::Email => "from the reminder email",
            ConfirmedVia::OwnPage => "on their own page",
        }
    }
}

text_state! {
    /// `slot_offers.status`: a freed slot offered to a waitlisted student ([`crate::gaps`]).
    OfferStatus {
        /// Sent, not yet accepted, withdrawn or expired.
        Open => "open",
        /// This student accepted it: the slot is booked for them.
        Accepted => "accepted",
        /// Another student accepted the slot first (or the student was erased).
        Withdrawn => "withdrawn",
        /// Its time to accept ran out.
        Expired => "expired",
    }
}

text_state! {
    /// `payments.status`.
    PaymentStatus {
        /// Recorded, not yet settled.
        Pending => "pending",
        /// Paid.
        Succeeded => "succeeded",
        /// The payment did not go through.
        Failed => "failed",
        /// Paid, then given back.
        Refunded => "refunded",
    }
}

text_state! {
    /// `package_purchases.status`: a student's bought package of lessons ([`crate::packages`]).
    PackageStatus {
        /// Lessons left and not expired: bookings draw on it.
        Active => "active",
        /// Every lesson used.
        UsedUp => "used_up",
        /// Its validity ran out.
        Expired => "expired",
        /// Given back.
        Refunded => "refunded",
    }
}

text_state! {
    /// `booking_series.status`: a recurring booking ([`crate::series`]).
    SeriesStatus {
        /// Still making its lessons.
        Active => "active",
        /// Ended: makes no more lessons.
        Ended => "ended",
    }
}

text_state! {
    /// `crm_contacts.lead_status` ([`crate::crm`]).
    LeadStatus {
        /// A prospect, not yet learning.
        Lead => "lead",
        /// Learning with the school.
        Active => "active",
        /// Passed their test.
        Passed => "passed",
        /// Stopped booking.
        Lapsed => "lapsed",
        /// Gone elsewhere or not interested.
        Lost => "lost",
    }
}

text_state! {
    /// `calendar_events.status`: a lesson's calendar event ([`crate::calendar`]).
    CalendarStatus {
        /// On the calendars.
        Confirmed => "confirmed",
        /// Taken off the calendars (its booking was cancelled).
        Cancelled => "cancelled",
    }
}
