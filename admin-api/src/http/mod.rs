//! The handlers, one module per area; each owns its `routes()` with the OpenAPI documentation of
//! every route.
//!
//! - [`people`]: users, preferences, devices, instructors' availability.
//! - [`bookings`]: bookings, their cancel/reschedule and timeline, weekly series.
//! - [`queues`]: queue counts, jobs and job retries (apalis's table).
//! - [`deliveries`]: notifications, delivery records and delivery retries.
//! - [`health`]: liveness, readiness and metrics (no token).

pub mod bookings;
pub mod deliveries;
pub mod health;
pub mod people;
pub mod queues;
