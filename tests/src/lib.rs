//! Loopback protocol peers for Dashlight's end-to-end tests: each module runs a real server on
//! `127.0.0.1:0` that receives what Dashlight sends, verifies it like the real service would,
//! records it, and can be scripted to fail.
//!
//! - [`smtp`]: an SMTP server (lettre URL `smtp://127.0.0.1:PORT`).
//! - [`push`]: a Web Push service (VAPID verification, `aes128gcm` decryption).
//! - [`sms`]: a Twilio-compatible Messages API.
//! - [`wait`]: bounded waiting for conditions.

pub mod bins;
pub mod db;
pub mod proc;
pub mod push;
pub mod sms;
pub mod smtp;
pub mod wait;
pub mod world;
