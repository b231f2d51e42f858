//! Filling gaps (docs/gap-filling.md): the waitlist, the offers of a freed slot, and
//! accepting one.
//!
//! - [`set_waitlist`] / [`get_waitlist`]: a student's entry: preferred instructors (none = any),
//!   weekly windows in the student's own time zone (none = any), active or not. The entry's
//!   `joined_at` is its place in the queue: set when it becomes active, kept while it stays
//!   active. **Rule:** accepting an offer closes the entry; booking a lesson any other way
//!   leaves it open (the student may still want an earlier or extra one); leaving is
//!   `active: false`.
//! - [`offer_freed_slot`]: called by [`crate::bookings::cancel`] and
//!   [`crate::bookings::reschedule`] in their transaction. A slot freed at least
//!   `GAP_FILL_MIN_NOTICE` before its start, that the instructor's availability still covers and
//!   no other live booking of the instructor overlaps, is offered to up to `GAP_FILL_MAX_OFFERS`
//!   active entries, oldest first, whose instructors and windows match and whose student has no
//!   lesson then. Each offer is a `slot_offer` notification carrying a single-person link
//!   `PUBLIC_BASE_URL/offers/{token}`; the token is 32 random bytes, stored only as its SHA-256
//!   (the message carrying the link keeps it, as any sent message does).
//! - [`open`], [`find`]: the link's page; opening marks the offer `opened_at`.
//! - [`accept`]: books the slot through [`crate::bookings::create`] (confirmation, alert,
//!   reminders, invitation, package). Acceptances queue on the instructor's row lock, the one
//!   every booking of that instructor takes, and read their offer again once through; the
//!   exclusion constraint has the last word against any other booking. The winner's transaction
//!   withdraws the slot's other open offers, tells those who had opened theirs (`slot_taken`),
//!   and closes the winner's waitlist entry.
//! - [`expire_due`]: the sweep's net that marks offers past their expiry `expired` (the state is
//!   also computed at every read, so nothing waits for it).
//!
//! Owns `waitlist_entries`, `waitlist_windows` and `slot_offers`.
//!
//! Files: this one holds the settings ([`GapFill`]), the offer tokens and the erasure;
//! `waitlist.rs` the entries; `offers.rs` the offers and their acceptance.

use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::Config;

mod offers;
mod waitlist;

pub use offers::{Accepted, FreedSlot, Offer, accept, expire_due, find, for_booking, offer_freed_slot, open};
pub use waitlist::{MAX_PREFERENCES, SetWaitlist, Waitlist, get_waitlist, set_waitlist, within_windows};

/// The gap-filling settings.
#[derive(Debug, Clone)]
pub struct GapFill {
    /// `GAP_FILL_MIN_NOTICE`.
    pub min_notice: Duration,
    /// `GAP_FILL_MAX_OFFERS` (0: no offers).
    pub max_offers: u32,
    /// `PUBLIC_BASE_URL`, no trailing slash.
    pub public_base_url: String,
}

impl GapFill {
    /// The settings of a configuration.
    pub fn from_config(config: &Config) -> GapFill {
        GapFill {
            min_notice: config.gap_fill_min_notice,
            max_offers: config.gap_fill_max_offers,
            public_base_url: config.public_base_url.trim_end_matches('/').to_owned(),
        }
    }

    fn notice(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.min_notice).unwrap_or(chrono::Duration::MAX)
    }
}

/// SHA-256 of an offer token.
fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Erasure: a student leaves the waitlist; their slot offers lose the pick-up place, open ones
/// are withdrawn, and every offer's token digest is replaced by a random one (the links in the
/// offers sent stop working).
pub async fn erase_person(conn: &mut PgConnection, e: &crate::privacy::Erasing) -> Result<u64, sqlx::Error> {
    let mut n = sqlx::query!(
        "UPDATE waitlist_entries SET active = false, closed_at = coalesce(closed_at, $2), closed_reason = 'erased'
         WHERE student_id = $1",
        e.student_id,
        e.now,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    n += sqlx::query!(
        "UPDATE slot_offers
         SET pickup_location = NULL,
             token_sha256 = sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')),
             status = CASE WHEN status = 'open' THEN 'withdrawn' ELSE status END,
             withdrawn_at = CASE WHEN status = 'open' THEN $2 ELSE withdrawn_at END
         WHERE student_id = $1",
        e.student_id,
        e.now,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n)
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, NaiveTime};

    use super::*;
    use crate::people::Window;

    fn w(d: i16, s: &str, e: &str) -> Window {
        Window {
            day_of_week: d,
            start_time: NaiveTime::parse_from_str(s, "%H:%M").unwrap(),
            end_time: NaiveTime::parse_from_str(e, "%H:%M").unwrap(),
        }
    }

    #[test]
    fn windows_are_read_in_the_students_zone() {
        // Tuesday 3 March 2026, 17:00-18:00 UTC.
        let s = DateTime::parse_from_rfc3339("2026-03-03T17:00:00Z").unwrap().to_utc();
        let e = s + chrono::Duration::hours(1);
        let london = chrono_tz::Europe::London;
        let ny = chrono_tz::America::New_York;
        assert!(within_windows(&[], london, s, e));
        assert!(within_windows(&[w(2, "16:00", "19:00")], london, s, e));
        assert!(!within_windows(&[w(2, "17:30", "19:00")], london, s, e));
        assert!(!within_windows(&[w(3, "16:00", "19:00")], london, s, e));
        // 12:00-13:00 in New York.
        assert!(within_windows(&[w(2, "12:00", "13:00")], ny, s, e));
        assert!(!within_windows(&[w(2, "16:00", "19:00")], ny, s, e));
    }

    #[test]
    fn tokens_are_long_and_hashed() {
        let t = new_token();
        assert_eq!(t.len(), 43);
        assert_ne!(new_token(), t);
        assert_eq!(token_hash(&t).len(), 32);
    }
}
