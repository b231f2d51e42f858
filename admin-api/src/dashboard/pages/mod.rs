//! The Queues, Deliveries and Booking timeline pages, a file each. Each reads through the JSON
//! API's own handlers (`list_queues`, `list_deliveries`, `booking_timeline`), so filters,
//! validation and queries are the API's; the few extra reads here only add names and titles for
//! people.
//!
//! - [`queues`](mod@queues): `GET /`, every queue's counts by state, the pauses and the last
//!   hour's chart.
//! - [`deliveries`](mod@deliveries): `GET /deliveries`, failed and dead first, filters, Retry
//!   buttons and the newest suppressions.
//! - [`timeline`](mod@timeline): `GET /timeline`, a booking found by id or student with its
//!   notifications, attempts, confirmation, offers and replies; the waitlist when no booking is
//!   asked for.

pub mod deliveries;
pub mod queues;
pub mod timeline;

pub use deliveries::{DELIVERIES_SHOWN, DeliveryFilter, deliveries};
pub use queues::{QUEUES_REFRESH_SECONDS, queues};
pub use timeline::{TimelineQuery, timeline};

/// Channels, in the order the Queues page and the Deliveries filter list them.
const CHANNELS: [&str; 3] = ["email", "sms", "push"];

/// A form field's value, trimmed; `None` when empty.
fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}
