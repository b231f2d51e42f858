//! The handlers, one module per area; each owns its `routes()` with the OpenAPI documentation of
//! every route.
//!
//! - [`people`]: users, preferences, devices, instructors' availability.
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

pub mod bookings;
pub mod calendar;
pub mod controls;
pub mod crm;
pub mod deliveries;
pub mod gaps;
pub mod health;
pub mod lessons;
pub mod messages;
pub mod payments;
pub mod people;
pub mod queues;
