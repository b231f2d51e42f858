//! The handlers, one module per area; each owns its `routes()` with the OpenAPI documentation of
//! every route.
//!
//! - [`people`]: users, preferences, devices, instructors' availability.
//! - [`privacy`]: a person's export (streamed) and erasure.
//! - [`bookings`]: bookings, their cancel/reschedule and timeline, weekly series.
//! - [`queues`]: queue counts, jobs and job retries (apalis's table).
//! - [`controls`]: pausing and resuming queues and channels, cancelling jobs.
//! - [`deliveries`]: notifications, delivery records and delivery retries.
//! - [`health`]: liveness, readiness and metrics (no token).
//! - [`lessons`]: completing a booking's lesson (skills, progress, report) and no-shows.
//! - [`payments`]: payments, lesson packages and their purchase.
//! - [`messages`]: messages, read receipts and a user's threads.
//! - [`crm`]: leads and staff interactions.
//! - [`gaps`]: the waitlist, a freed slot's offers, the offer link (no token) and accepting it.
//! - [`calendar`]: the per-person iCalendar feed (no token) and its secret's rotation.
//! - [`unsubscribe`]: the `List-Unsubscribe` link (no token: the signed address is the secret);
//!   GET shows what stops, POST (also RFC 8058 one-click) stops it.
//! - [`own_page`]: a person's own page `/me/{token}` (no token: the link is the secret), its
//!   form posts and push subscription, the personal link's API, the VAPID key, `/sw.js`.
//! - [`hooks`]: routes providers and mail servers call: SMS status callbacks and inbound SMS
//!   (Twilio's signature), and mail that comes back (its own bearer token).
//! - [`suppressions`]: suppressed addresses and numbers, listed and lifted by operators.
//! - [`analytics`]: what the reminders achieve (confirmations and no-shows per day and channel).

pub mod analytics;
pub mod bookings;
pub mod calendar;
pub mod controls;
pub mod crm;
pub mod deliveries;
pub mod gaps;
pub mod health;
pub mod hooks;
pub mod lessons;
pub mod messages;
pub mod own_page;
pub mod payments;
pub mod people;
pub mod privacy;
pub mod queues;
pub mod suppressions;
pub mod unsubscribe;
