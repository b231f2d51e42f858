//! The harness of Dashlight's end-to-end tests: a database per test, loopback protocol peers
//! (each a real server on `127.0.0.1:0` that receives what Dashlight sends, verifies it like the
//! real service would, records it, and can be scripted to fail), and the programs run the way
//! the tests need them.
//!
//! - [`db`]: a fresh migrated database per test, cloned from a template.
//! - [`world`]: a database, the three peers and a configuration pointing at them; people to
//!   send to; workers to start and stop.
//! - [`api`]: the admin API on port 0 ([`api::spawn_api`]), its token, replies and their
//!   assertions, lesson times.
//! - [`smtp`]: an SMTP server (lettre URL `smtp://127.0.0.1:PORT`).
//! - [`push`]: a Web Push service (VAPID verification, `aes128gcm` decryption).
//! - [`sms`]: a Twilio-compatible Messages API.
//! - [`browser`]: Debian's headless Chromium over chromedriver (the browser tests).
//! - [`bins`]: the workspace's programs, built once per run and started by path.
//! - [`pgcluster`]: a private PostgreSQL cluster to stop and start (restart tests).
//! - [`pooler`]: PgBouncer in transaction mode in front of a server, killed on drop.
//! - [`postfix`]: Debian's Postfix on loopback, configured by the docs' bounce recipe.
//! - [`proc`]: the worker as a real process (crash and shutdown tests), its output captured.
//! - [`wait`]: bounded waiting for conditions.

pub mod api;
pub mod bins;
pub mod browser;
pub mod db;
pub mod pgcluster;
pub mod pooler;
pub mod postfix;
pub mod proc;
pub mod push;
pub mod sms;
pub mod smtp;
pub mod wait;
pub mod world;
