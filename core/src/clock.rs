//! The notion of "now" used by the scheduler, the producers and the worker's due-time checks.
//! Production uses the system clock; tests use a [`ManualClock`] they set and advance, so no
//! test waits for real time to pass.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

/// A source of the current time. Cheap to clone.
#[derive(Clone)]
pub struct Clock(Inner);

#[derive(Clone)]
enum Inner {
    System,
    Manual(Arc<Mutex<DateTime<Utc>>>),
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Inner::System => f.write_str("Clock::System"),
            Inner::Manual(t) => write!(f, "Clock::Manual({:?})", t.lock().map(|t| *t).ok()),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl Clock {
    /// The real time.
    pub fn system() -> Clock {
        Clock(Inner::System)
    }

    /// A clock standing at `at` until moved with the returned handle.
    pub fn manual(at: DateTime<Utc>) -> (Clock, ManualClock) {
        let t = Arc::new(Mutex::new(at));
        (Clock(Inner::Manual(t.clone())), ManualClock(t))
    }

    /// The current time of this clock.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.0 {
            Inner::System => Utc::now(),
            Inner::Manual(t) => *t.lock().expect("clock lock"),
        }
    }

    /// True for the real clock: only then may code wait for real time to pass.
    pub fn is_system(&self) -> bool {
        matches!(self.0, Inner::System)
    }
}

/// The handle that moves a manual [`Clock`].
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    /// Puts the clock at `t`.
    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().expect("clock lock") = t;
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: chrono::Duration) {
        *self.0.lock().expect("clock lock") += d;
    }
}
