//! Dashlight's shared library: what the worker, the scheduler and the admin API all use.
//!
//! - [`access`]: a page of one's own: the per-user link secret, the page's lessons and feed,
//!   notifications marked read.
//! - [`config`]: the environment variables, validated once.
//! - [`endpoints`]: which push endpoints the worker may talk to (the SSRF guard).
//! - [`db`]: connecting, creating the database, migrating ours and apalis's schema, and
//!   [`db::retry_deadlock`], a write's transaction run again when it loses a deadlock.
//! - [`clock`]: injected "now".
//! - [`kinds`]: notification kinds, channels, policies (docs/notifications.md's table).
//! - [`jobs`]: the queue contract: queue names, job payloads, [`jobs::NewJob`].
//! - [`queue`]: the queue driver, the one owner of apalis's tables: enqueueing, the notification
//!   queue's fetch/ack/heartbeat, the periodic queue's pausable apalis storage, operators' views
//!   and levers, pruning.
//! - [`controls`]: operators' levers: pausing and resuming a queue or a channel, on record.
//! - [`receipts`]: what providers report after accepting a message (status callbacks,
//!   bounces), kept and handed to the worker's recorder.
//! - [`suppressions`]: addresses and numbers nothing is sent to (bounces, STOP).
//! - [`signing`]: the installation's signing key (created by a migration, loaded at start-up)
//!   and the tokens it signs: VERP envelope senders, unsubscribe links.
//! - [`inbound_email`]: mail that comes back (bounces, auto-replies, unsubscribe `mailto:`),
//!   recorded in `inbound_emails` and acted on through receipts, suppressions and opt-outs.
//! - [`replies`]: SMS people send to the school's number: STOP/START/HELP, C to confirm a
//!   lesson, R to rearrange it, anything else kept and forwarded to the school.
//! - [`notify`]: creating notifications (producers' side of the pipeline).
//! - [`bookings`]: create / cancel / reschedule with everything they imply, in one transaction.
//! - [`gaps`]: the waitlist, freed slots offered to waiting students, accepting an offer.
//! - [`series`]: weekly recurring bookings and their expansion over the horizon (DST-correct).
//! - [`lessons`]: completing a lesson (progress rows, skill levels, the report) and no-shows.
//! - [`files`]: files to delete from disk (an erased student's lesson attachments), requested in
//!   a transaction and deleted after it, inside `ATTACHMENTS_DIR` only.
//! - [`payments`]: recording payments (a package payment buys the package).
//! - [`packages`]: lesson packages, purchases, the lessons bookings consume and give back.
//! - [`calendar`]: iCalendar invitations of lessons, the per-person feed and its secret.
//! - [`messages`]: messages, their participants and `new_message` (push now, email if unread).
//! - [`crm`]: contacts (students and leads), their status moves, staff interactions.
//! - [`people`]: users with their student/instructor profile, preferences (with per-kind email
//!   opt-outs), devices, availability.
//! - [`privacy`]: a person's data over time: export, erasure (calling each owner's
//!   `erase_person` in one transaction) and the retention purge.
//! - [`states`]: the schema's constrained states (deliveries, notifications, attempts) as enums.
//! - [`validate`]: checks of emails, phone numbers, time zones and currencies.
//! - [`cli`]: what every program does around its work (logging, config, database, signals).
//! - [`analytics`]: the system's own analytics events.
//! - [`error`]: the domain error the API maps to status codes.
//! - [`demo`]: `dashlight seed-demo`, a demo school written through the operations above.

pub mod access;
pub mod analytics;
pub mod bookings;
pub mod calendar;
pub mod cli;
pub mod clock;
pub mod config;
pub mod controls;
pub mod crm;
pub mod db;
pub mod demo;
pub mod endpoints;
pub mod error;
pub mod files;
pub mod gaps;
pub mod inbound_email;
pub mod jobs;
pub mod kinds;
pub mod lessons;
pub mod messages;
pub mod notify;
pub mod packages;
pub mod payments;
pub mod people;
pub mod privacy;
pub mod queue;
pub mod receipts;
pub mod replies;
pub mod series;
pub mod signing;
pub mod states;
pub mod suppressions;
pub mod validate;

pub use clock::Clock;
pub use config::Config;
pub use error::DomainError;
