//! Dashlight's shared library: what the worker, the scheduler and the admin API all use.
//!
//! - [`config`]: the environment variables, validated once.
//! - [`db`]: connecting, creating the database, migrating ours and apalis's schema.
//! - [`clock`]: injected "now".
//! - [`kinds`]: notification kinds, channels, policies (PRODUCT.md's table).
//! - [`jobs`]: the queue contract and [`jobs::enqueue`], the one function that enqueues.
//! - [`notify`]: creating notifications (producers' side of the pipeline).
//! - [`bookings`]: create / cancel / reschedule with everything they imply, in one transaction.
//! - [`series`]: weekly recurring bookings and their expansion over the horizon (DST-correct).
//! - [`people`]: users with their student/instructor profile, preferences, devices, availability.
//! - [`cli`]: what every program does around its work (logging, config, database, signals).
//! - [`analytics`]: the system's own analytics events.
//! - [`error`]: the domain error the API maps to status codes.
//! - [`demo`]: `dashlight seed-demo`.

pub mod analytics;
pub mod bookings;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod demo;
pub mod error;
pub mod jobs;
pub mod kinds;
pub mod notify;
pub mod people;
pub mod series;

pub use clock::Clock;
pub use config::Config;
pub use error::DomainError;
