//! The dashboard's session cookie: what signing in with the admin token sets, and what
//! [`crate::auth`] accepts on `/api` routes as an alternative to the bearer header.
//!
//! The cookie never holds the token itself. Its value is `v1.<expiry>.<mac>`, where `<expiry>`
//! is a Unix time [`SESSION_LIFETIME`] after signing in and `<mac>` is the base64url
//! HMAC-SHA256 of `dashlight-session:v1:<expiry>` keyed with `ADMIN_API_TOKEN`, so it proves the
//! token was known, expires on its own, and stops working the moment the token changes. It is
//! checked in constant time. Signing out clears the cookie in the browser and revokes it on the
//! server: the SHA-256 of its value goes into `dashboard_revoked_sessions` until it would have
//! expired, and [`active`] refuses it from then on (changing the token ends every session).
//!
//! This module does not decide which requests need a session; `auth` (for `/api`) and the
//! dashboard's page guard do.

use axum::http::{HeaderMap, HeaderValue, header};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;

/// The cookie's name.
pub const COOKIE_NAME: &str = "dashlight_session";

/// How long a sign-in lasts.
pub const SESSION_LIFETIME: chrono::Duration = chrono::Duration::hours(12);

type HmacSha256 = Hmac<Sha256>;

/// The configured token, when there is a usable one.
fn key(token: Option<&str>) -> Option<&str> {
    token.map(str::trim).filter(|t| !t.is_empty())
}

fn mac(token: &str, expiry: i64) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("dashlight-session:v1:{expiry}").as_bytes());
    mac
}

/// A fresh session value for `token`, valid until `now + SESSION_LIFETIME`; `None` when no
/// token is configured.
pub fn issue(token: Option<&str>, now: DateTime<Utc>) -> Option<String> {
    let token = key(token)?;
    let expiry = (now + SESSION_LIFETIME).timestamp();
    let tag = mac(token, expiry).finalize().into_bytes();
    Some(format!("v1.{expiry}.{}", URL_SAFE_NO_PAD.encode(tag)))
}

/// The expiry of a session value written exactly as [`issue`] writes it: `v1.`, the Unix time
/// in plain decimal digits (no sign, no leading zero), `.`, the tag in unpadded base64url.
/// Anything else (`v1.0<expiry>…`, `v1.+<expiry>…`, padding, another alphabet) is refused:
/// one session has exactly one spelling, so revoking that spelling revokes the session.
fn parse(value: &str) -> Option<(i64, Vec<u8>)> {
    let mut parts = value.splitn(3, '.');
    let (Some("v1"), Some(expiry), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let canonical_number = !expiry.is_empty()
        && expiry.len() <= 18
        && expiry.bytes().all(|b| b.is_ascii_digit())
        && !(expiry.len() > 1 && expiry.starts_with('0'));
    if !canonical_number {
        return None;
    }
    let expiry = expiry.parse::<i64>().ok()?;
    let tag_bytes = URL_SAFE_NO_PAD.decode(tag).ok()?;
    // The decoder ignores nothing, but compare anyway: one tag, one spelling.
    (URL_SAFE_NO_PAD.encode(&tag_bytes) == tag).then_some((expiry, tag_bytes))
}

/// True when `value` is a session issued for `token` that has not expired at `now`.
pub fn verify(token: Option<&str>, value: &str, now: DateTime<Utc>) -> bool {
    let Some(token) = key(token) else { return false };
    let Some((expiry, tag)) = parse(value) else { return false };
    // `verify_slice` compares in constant time.
    expiry > now.timestamp() && mac(token, expiry).verify_slice(&tag).is_ok()
}

/// The values of every cookie named `name` in the request's `Cookie` headers.
pub fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// True when the request carries a session cookie whose MAC and expiry are right (revocation
/// not checked: see [`active`]).
pub fn from_headers(token: Option<&str>, headers: &HeaderMap, now: DateTime<Utc>) -> bool {
    cookies(headers, COOKIE_NAME).any(|v| verify(token, v, now))
}

fn digest(value: &str) -> Vec<u8> {
    Sha256::digest(value.as_bytes()).to_vec()
}

fn expiry_of(value: &str) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(value.split('.').nth(1)?.parse().ok()?, 0)
}

/// True when the request carries a valid session cookie that was not signed out. A database
/// error counts as "no session" (fails closed).
pub async fn active(pool: &PgPool, token: Option<&str>, headers: &HeaderMap, now: DateTime<Utc>) -> bool {
    let valid: Vec<Vec<u8>> = cookies(headers, COOKIE_NAME)
        .filter(|v| verify(token, v, now))
        .map(digest)
        .collect();
    if valid.is_empty() {
        return false;
    }
    match sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM dashboard_revoked_sessions WHERE session_digest = ANY($1)"#,
        &valid,
    )
    .fetch_one(pool)
    .await
    {
        Ok(revoked) => (revoked as usize) < valid.len(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check dashboard session revocations; treating the session as signed out");
            false
        }
    }
}

/// Revokes every valid session cookie the request carries (signing out), and forgets
/// revocations of sessions that have expired anyway.
pub async fn revoke(pool: &PgPool, token: Option<&str>, headers: &HeaderMap, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for value in cookies(headers, COOKIE_NAME).filter(|v| verify(token, v, now)) {
        let Some(expires) = expiry_of(value) else { continue };
        sqlx::query!(
            "INSERT INTO dashboard_revoked_sessions (session_digest, expires_at, revoked_at) VALUES ($1, $2, $3)
             ON CONFLICT (session_digest) DO NOTHING",
            digest(value),
            expires,
            now,
        )
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query!("DELETE FROM dashboard_revoked_sessions WHERE expires_at < $1", now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// True when the request came over HTTPS through a proxy that says so; the cookie is then
/// marked `Secure`.
fn behind_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value that signs a browser in with `value`.
pub fn set_cookie(value: &str, request: &HeaderMap) -> HeaderValue {
    let secure = if behind_https(request) { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE_NAME}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_LIFETIME.num_seconds()
    );
    HeaderValue::from_str(&cookie).expect("the session value is base64url and digits")
}

/// The `Set-Cookie` value that signs a browser out.
pub fn clear_cookie(request: &HeaderMap) -> HeaderValue {
    let secure = if behind_https(request) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")).expect("ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_prove_the_token_and_expire() {
        let now = Utc::now();
        let v = issue(Some("secret"), now).unwrap();
        assert!(!v.contains("secret"));
        assert!(verify(Some("secret"), &v, now));
        assert!(verify(Some(" secret "), &v, now + chrono::Duration::hours(11)));
        assert!(!verify(Some("secret"), &v, now + SESSION_LIFETIME + chrono::Duration::seconds(1)));
        assert!(!verify(Some("other"), &v, now), "a new token ends every session");
        assert!(!verify(None, &v, now));
        assert!(issue(None, now).is_none());
        assert!(issue(Some("  "), now).is_none());
        // Moving the expiry breaks the MAC.
        let (_, rest) = v.split_once('.').unwrap();
        let (_, tag) = rest.split_once('.').unwrap();
        let later = format!("v1.{}.{tag}", (now + chrono::Duration::days(30)).timestamp());
        assert!(!verify(Some("secret"), &later, now));
        for bad in ["", "v1", "v1.x.y", "v2.1.AAAA", "secret"] {
            assert!(!verify(Some("secret"), bad, now), "{bad}");
        }
    }

    #[test]
    fn other_spellings_of_a_session_do_not_verify() {
        let now = Utc::now();
        let v = issue(Some("secret"), now).unwrap();
        assert!(verify(Some("secret"), &v, now));
        let rest = v.strip_prefix("v1.").unwrap();
        let (expiry, tag) = rest.split_once('.').unwrap();
        for variant in [
            format!("v1.0{expiry}.{tag}"),
            format!("v1.00{expiry}.{tag}"),
            format!("v1.+{expiry}.{tag}"),
            format!("v1.-0{expiry}.{tag}"),
            format!("v1. {expiry}.{tag}"),
            format!("v1.{expiry}.{tag}="),
            format!("v1.{expiry}.{tag}.x"),
            format!("v1.{expiry}.{}", tag.replace('-', "+").replace('_', "/")),
        ] {
            if variant == v {
                continue;
            }
            assert!(!verify(Some("secret"), &variant, now), "{variant} must not verify");
        }
    }

    #[test]
    fn the_session_cookie_is_found_among_others_and_set_strict() {
        let now = Utc::now();
        let v = issue(Some("t"), now).unwrap();
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        assert!(!from_headers(Some("t"), &h, now));
        h.append(header::COOKIE, HeaderValue::from_str(&format!("x=y; {COOKIE_NAME}={v}")).unwrap());
        assert!(from_headers(Some("t"), &h, now));
        let set = set_cookie(&v, &h);
        let set = set.to_str().unwrap();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"),
            "{set}"
        );
        assert!(!set.contains("Secure"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(clear_cookie(&h).to_str().unwrap().contains("Max-Age=0; Secure"));
    }
}
