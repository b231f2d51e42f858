//! Signed tokens for addresses and links that must not be forged: the VERP envelope sender of
//! each email (`bounces+<token>@MAIL_BOUNCE_DOMAIN`, naming the delivery) and the unsubscribe
//! link of `List-Unsubscribe` (`PUBLIC_BASE_URL/u/<token>`, naming the user and the kind), and
//! the confirmation link of a lesson reminder (`PUBLIC_BASE_URL/confirm/<token>`, naming the
//! booking and its student: single-purpose, it confirms that one lesson and opens nothing else).
//!
//! **The key.** HMAC-SHA256 keyed by a random secret that the migration
//! `20261202000500_signing_key_inbound_emails.sql` creates once in the database (`signing_keys`,
//! row `links`, 64 bytes from `gen_random_uuid()`, which Postgres has built in; pgcrypto is not
//! needed). Every program loads it at start-up with [`load`]. Chosen over an environment
//! variable because every program already shares the database and nothing else: there is no new
//! configuration to set, to keep equal across the worker and the admin API, or to leave at an
//! unsafe default, and each installation gets its own secret. Rotating it is an `UPDATE` of that
//! row (then restart the programs); links and bounces signed with the old one stop verifying.
//!
//! **The tokens.** `base64url(payload ‖ tag)` without padding, where `tag` is the first 16
//! bytes (128 bits) of `HMAC-SHA256(key, purpose ‖ 0x00 ‖ payload)`. The purpose
//! ([`Purpose`]) names what is signed, so a token made for one use never verifies for another.
//! Tags are compared in constant time (the `hmac` crate's `verify_truncated_left`). Tokens use
//! only `A–Z a–z 0–9 - _`, safe in a URL path and in the local part of an address.

use std::sync::Arc;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::PgConnection;

use crate::kinds::Kind;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the HMAC kept in a token.
const TAG_LEN: usize = 16;

/// The longest token [`Key::verify`] looks at (anything longer is refused unread).
pub const MAX_TOKEN_LEN: usize = 200;

/// What a token signs; part of the signed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The VERP envelope sender of one email: the payload is the delivery id.
    Verp,
    /// An unsubscribe link: the payload is the user id and the kind.
    Unsubscribe,
    /// A lesson's confirmation link: the payload is the booking id and the student id.
    Confirm,
    /// The keyed hash an erased person's address or number is kept as in the suppression list
    /// (never a token: see [`Key::keyed_hash`]).
    Suppression,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Verp => b"dashlight/verp/v1",
            Purpose::Unsubscribe => b"dashlight/unsubscribe/v1",
            Purpose::Confirm => b"dashlight/confirm/v1",
            Purpose::Suppression => SUPPRESSION_LABEL.as_bytes(),
        }
    }
}

/// The label of [`Purpose::Suppression`]; the SQL of [`crate::suppressions::among`] computes the
/// same HMAC in the database and must use the same bytes.
pub const SUPPRESSION_LABEL: &str = "dashlight/suppression/v1";

/// The signing key. Cheap to clone; its `Debug` does not show it.
#[derive(Clone)]
pub struct Key(Arc<Vec<u8>>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("signing::Key(<redacted>)")
    }
}

impl Key {
    /// A key from raw bytes (at least 32).
    pub fn from_bytes(bytes: &[u8]) -> Option<Key> {
        (bytes.len() >= 32).then(|| Key(Arc::new(bytes.to_vec())))
    }

    fn mac(&self, purpose: Purpose, payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(purpose.label());
        mac.update(&[0]);
        mac.update(payload);
        mac
    }

    /// Signs `payload` for `purpose`.
    pub fn sign(&self, purpose: Purpose, payload: &[u8]) -> String {
        let tag = self.mac(purpose, payload).finalize().into_bytes();
        let mut bytes = payload.to_vec();
        bytes.extend_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The payload of a token made by [`sign`](Self::sign) for `purpose`, or `None` when the
    /// token is malformed or its tag does not verify (compared in constant time).
    pub fn verify(&self, purpose: Purpose, token: &str) -> Option<Vec<u8>> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(token.as_bytes()).ok()?;
        if bytes.len() < TAG_LEN {
            return None;
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        self.mac(purpose, payload).verify_truncated_left(tag).ok()?;
        Some(payload.to_vec())
    }

    /// The full HMAC-SHA256 of `purpose ‖ 0x00 ‖ payload`: a keyed hash that cannot be
    /// reversed or recomputed without the key (an erased person's address in the suppression
    /// list).
    pub fn keyed_hash(&self, purpose: Purpose, payload: &[u8]) -> [u8; 32] {
        self.mac(purpose, payload).finalize().into_bytes().into()
    }

    /// The VERP token of a delivery.
    pub fn verp_token(&self, delivery_id: i64) -> String {
        self.sign(Purpose::Verp, &delivery_id.to_be_bytes())
    }

    /// The delivery a VERP token names, if it verifies.
    pub fn verp_delivery(&self, token: &str) -> Option<i64> {
        let payload = self.verify(Purpose::Verp, token)?;
        Some(i64::from_be_bytes(payload.try_into().ok()?))
    }

    /// The unsubscribe token of a user's emails of one kind.
    pub fn unsubscribe_token(&self, user_id: i64, kind: Kind) -> String {
        let mut payload = user_id.to_be_bytes().to_vec();
        payload.extend_from_slice(kind.as_str().as_bytes());
        self.sign(Purpose::Unsubscribe, &payload)
    }

    /// The user and kind an unsubscribe token names, if it verifies.
    pub fn unsubscribe_target(&self, token: &str) -> Option<(i64, Kind)> {
        let payload = self.verify(Purpose::Unsubscribe, token)?;
        if payload.len() <= 8 {
            return None;
        }
        let (id, kind) = payload.split_at(8);
        let user_id = i64::from_be_bytes(id.try_into().ok()?);
        let kind = Kind::parse(std::str::from_utf8(kind).ok()?)?;
        Some((user_id, kind))
    }
}

impl Key {
    /// The confirmation token of a booking for its student.
    pub fn confirm_token(&self, booking_id: i64, student_id: i64) -> String {
        let mut payload = booking_id.to_be_bytes().to_vec();
        payload.extend_from_slice(&student_id.to_be_bytes());
        self.sign(Purpose::Confirm, &payload)
    }

    /// The booking and student a confirmation token names, if it verifies.
    pub fn confirm_target(&self, token: &str) -> Option<(i64, i64)> {
        let payload = self.verify(Purpose::Confirm, token)?;
        if payload.len() != 16 {
            return None;
        }
        let (b, s) = payload.split_at(8);
        Some((i64::from_be_bytes(b.try_into().ok()?), i64::from_be_bytes(s.try_into().ok()?)))
    }
}

/// The path of a booking's confirmation page (`/confirm/<token>`).
pub fn confirm_path(key: &Key, booking_id: i64, student_id: i64) -> String {
    format!("/confirm/{}", key.confirm_token(booking_id, student_id))
}

/// The local part prefix of VERP addresses (`bounces+<token>@domain`).
pub const VERP_PREFIX: &str = "bounces+";
/// The local part prefix of the unsubscribe `mailto:` (`unsubscribe+<token>@domain`).
pub const UNSUBSCRIBE_PREFIX: &str = "unsubscribe+";

/// `bounces+<token>@<domain>`: the envelope sender of a delivery's email.
pub fn verp_address(key: &Key, delivery_id: i64, domain: &str) -> String {
    format!("{VERP_PREFIX}{}@{domain}", key.verp_token(delivery_id))
}

/// `unsubscribe+<token>@<domain>`: the `mailto:` of a user's unsubscribe from a kind.
pub fn unsubscribe_address(key: &Key, user_id: i64, kind: Kind, domain: &str) -> String {
    format!("{UNSUBSCRIBE_PREFIX}{}@{domain}", key.unsubscribe_token(user_id, kind))
}

/// Loads the key (`signing_keys`, row `links`) at start-up. Fails when the migrations have not
/// been applied.
pub async fn load(conn: &mut PgConnection) -> anyhow::Result<Key> {
    let secret: Option<Vec<u8>> = sqlx::query_scalar!("SELECT secret FROM signing_keys WHERE name = 'links'")
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| anyhow::anyhow!("reading the signing key (are the migrations applied?): {e}"))?;
    let secret = secret.ok_or_else(|| anyhow::anyhow!("the signing key `links` is missing from signing_keys"))?;
    Key::from_bytes(&secret).ok_or_else(|| anyhow::anyhow!("the signing key `links` is shorter than 32 bytes"))
}

/// The key, or `None` when the row is missing (for operations that can do without it).
pub async fn current(conn: &mut PgConnection) -> Result<Option<Key>, sqlx::Error> {
    let secret: Option<Vec<u8>> = sqlx::query_scalar!("SELECT secret FROM signing_keys WHERE name = 'links'")
        .fetch_optional(&mut *conn)
        .await?;
    Ok(secret.and_then(|s| Key::from_bytes(&s)))
}

/// [`load`] from a pool.
pub async fn load_from(pool: &sqlx::PgPool) -> anyhow::Result<Key> {
    let mut conn = pool.acquire().await?;
    load(&mut conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::from_bytes(&[7u8; 64]).unwrap()
    }

    #[test]
    fn tokens_round_trip_and_name_their_purpose() {
        let k = key();
        let t = k.verp_token(12345);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{t}");
        assert_eq!(k.verp_delivery(&t), Some(12345));
        // A VERP token is not an unsubscribe token, and the other way round.
        assert_eq!(k.verify(Purpose::Unsubscribe, &t), None);
        let u = k.unsubscribe_token(42, Kind::LessonReminder);
        assert_eq!(k.unsubscribe_target(&u), Some((42, Kind::LessonReminder)));
        assert_eq!(k.verp_delivery(&u), None);
        // Another key does not verify.
        let other = Key::from_bytes(&[8u8; 64]).unwrap();
        assert_eq!(other.verp_delivery(&t), None);
        assert!(verp_address(&k, 1, "school.test").starts_with("bounces+"));
        assert!(verp_address(&k, i64::MAX, "school.test").split('@').next().unwrap().len() <= 64);
    }

    #[test]
    fn tampering_is_refused() {
        let k = key();
        let t = k.verp_token(7);
        let mut bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        bytes[7] = 8; // the delivery id
        assert_eq!(k.verp_delivery(&URL_SAFE_NO_PAD.encode(&bytes)), None);
        let mut bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1; // the tag
        assert_eq!(k.verp_delivery(&URL_SAFE_NO_PAD.encode(&bytes)), None);
        for bad in ["", "x", "!!!!", &"A".repeat(500), "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
            assert_eq!(k.verp_delivery(bad), None, "{bad}");
            assert_eq!(k.unsubscribe_target(bad), None, "{bad}");
        }
        assert!(Key::from_bytes(&[1u8; 31]).is_none());
    }

    #[test]
    fn confirmation_tokens_name_one_lesson_of_one_student() {
        let k = key();
        let t = k.confirm_token(41, 7);
        assert_eq!(k.confirm_target(&t), Some((41, 7)));
        // Not a VERP or unsubscribe token, and those are not confirmation tokens.
        assert_eq!(k.verp_delivery(&t), None);
        assert_eq!(k.unsubscribe_target(&t), None);
        assert_eq!(k.confirm_target(&k.verp_token(41)), None);
        assert_eq!(k.confirm_target(&k.unsubscribe_token(7, Kind::LessonReminder)), None);
        // Another lesson's id in the payload does not verify.
        let mut bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        bytes[7] = 42;
        assert_eq!(k.confirm_target(&URL_SAFE_NO_PAD.encode(&bytes)), None);
        assert!(confirm_path(&k, 41, 7).starts_with("/confirm/"));
    }
}
