//! The brake on guessing the admin token: failed authentications are counted per client
//! address, and an address over the limit has its wrong credentials answered 429 with
//! `Retry-After`. The right credential is never refused by the brake (it is checked first): a
//! lockout caused by someone else behind the same address, or by a stranger guessing, never
//! shuts the operators or the mail server out. What makes guessing hopeless is the token itself
//! (at least 32 characters, 16 of them distinct, checked at start-up); the brake keeps guessing
//! slow and the logs short. Each credential has its own brake ([`crate::AppState`]): the admin
//! token's (`/api` and the dashboard's sign-in) and the inbound email hook's.
//!
//! Counting is governor's GCRA, keyed by address: `AUTH_FAILURE_LIMIT` failures (default 10) in
//! a burst, then one more per `60 / limit` seconds. Only failures count (a request without any
//! credential is a plain 401 and costs nothing; the right token never costs anything), which is
//! why this is not `tower_governor`: that layer counts every request. governor has no way to ask
//! "is this key over the limit?" without spending a cell, so the lockout an over-limit failure
//! starts is kept next to it, until governor would allow the next failure.
//!
//! The address is the TCP peer ([`ClientAddr`]), unless the peer is one of `TRUSTED_PROXIES`:
//! then `X-Forwarded-For` is read from its right end, skipping the trusted proxies, and the first
//! address that is not one is the client ([`client_ip`]). Without trusted proxies (the default)
//! the header is ignored, as anyone can send it. IPv6 clients are counted per /64, the block one
//! client usually holds.
//!
//! Also [`PerPerson`]: device registrations from a person's own page, per person.
//!
//! Used by [`crate::auth`] (bearer token and session cookie on `/api`) and by the dashboard's
//! sign-in form. Failures are logged with the client address, never with what was sent.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, request::Parts},
};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::AppState;

/// Entries kept before stale ones are dropped (bounds memory under a spread-out attack).
const PRUNE_ABOVE: usize = 10_000;

/// The client's address: the connection's peer, or what a trusted proxy says (unspecified
/// when the router runs without a connection, e.g. in unit tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(client_addr(
            &parts.extensions,
            &parts.headers,
            &state.config.http_server.trusted_proxies,
        ))
    }
}

/// The client of a request: the peer the server recorded (`ConnectInfo`), or, when that peer
/// is a trusted proxy, the address [`client_ip`] finds in `X-Forwarded-For`.
pub fn client_addr(extensions: &axum::http::Extensions, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> ClientAddr {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    ClientAddr(client_ip(peer, headers, trusted))
}

/// `ip` with an IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn is_trusted(ip: IpAddr, trusted: &[ipnet::IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|n| n.contains(&ip))
}

/// The client's address: `peer` unless it is a trusted proxy; then the `X-Forwarded-For`
/// entries are read right to left (each proxy appends the address it was reached from),
/// trusted proxies skipped, and the first other address is the client. An entry that is not an
/// address stops the walk at the last trusted hop (what comes before it cannot be believed).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        // `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:5678`.
        let parsed = entry
            .parse::<IpAddr>()
            .ok()
            .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()));
        let Some(ip) = parsed.map(canonical) else { break };
        client = ip;
        if !is_trusted(ip, trusted) {
            break;
        }
    }
    client
}

/// The key an address is counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Failed authentications per client address.
pub struct AuthFailures {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    locked: Mutex<HashMap<IpAddr, Instant>>,
}

impl std::fmt::Debug for AuthFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthFailures").field("tracked", &self.limiter.len()).finish()
    }
}

impl AuthFailures {
    /// `per_minute` failures per address and minute, all of them allowed at once.
    pub fn new(per_minute: u32) -> AuthFailures {
        let n = NonZeroU32::new(per_minute.max(1)).expect("at least one");
        AuthFailures {
            limiter: RateLimiter::keyed(Quota::per_minute(n).allow_burst(n)),
            locked: Mutex::new(HashMap::new()),
        }
    }

    /// How long `ip` must still wait, if it is locked out now. Call before checking a
    /// credential.
    pub fn locked_for(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut locked = self.locked.lock().unwrap_or_else(PoisonError::into_inner);
        match locked.get(&key(ip)) {
            Some(until) if *until > now => Some(*until - now),
            Some(_) => {
                locked.remove(&key(ip));
                None
            }
            None => None,
        }
    }

    /// Records a failed authentication from `ip`; returns how long it is now locked out when
    /// this failure was over the limit.
    pub fn failed(&self, ip: IpAddr) -> Option<Duration> {
        let k = key(ip);
        let outcome = self.limiter.check_key(&k);
        if self.limiter.len() > PRUNE_ABOVE {
            self.limiter.retain_recent();
            let now = Instant::now();
            self.locked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|_, until| *until > now);
        }
        match outcome {
            Ok(()) => None,
            Err(not_until) => {
                let now = Instant::now();
                // At least a second, so `Retry-After` is never 0.
                let wait = not_until.wait_time_from(now).max(Duration::from_secs(1));
                self.locked.lock().unwrap_or_else(PoisonError::into_inner).insert(k, now + wait);
                Some(wait)
            }
        }
    }
}

/// Device registrations from a person's own page, per person: a burst of
/// [`PerPerson::DEVICE_BURST`], then one more per minute. Registering the same subscription
/// again (renewing it) counts too.
pub struct PerPerson {
    limiter: DefaultKeyedRateLimiter<i64>,
}

impl std::fmt::Debug for PerPerson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerPerson").field("tracked", &self.limiter.len()).finish()
    }
}

impl PerPerson {
    /// Registrations one person may make at once.
    pub const DEVICE_BURST: u32 = 20;

    /// The limiter of device registrations.
    pub fn device_registrations() -> PerPerson {
        let burst = NonZeroU32::new(Self::DEVICE_BURST).expect("non-zero");
        PerPerson {
            limiter: RateLimiter::keyed(Quota::per_minute(NonZeroU32::MIN).allow_burst(burst)),
        }
    }

    /// Takes one from `user_id`'s allowance; how long to wait when there is none left.
    pub fn check(&self, user_id: i64) -> Result<(), Duration> {
        let outcome = self.limiter.check_key(&user_id);
        if self.limiter.len() > PRUNE_ABOVE {
            self.limiter.retain_recent();
        }
        outcome.map_err(|not_until| not_until.wait_time_from(Instant::now()).max(Duration::from_secs(1)))
    }
}

/// Whole seconds for `Retry-After`, rounded up.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_over_the_limit_lock_the_address_out() {
        let g = AuthFailures::new(3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(g.locked_for(a), None);
        for _ in 0..3 {
            assert_eq!(g.failed(a), None);
        }
        let wait = g.failed(a).expect("the fourth failure is over the limit");
        assert!(wait <= Duration::from_secs(20) && wait >= Duration::from_secs(1), "{wait:?}");
        assert!(g.locked_for(a).is_some());
        assert_eq!(g.locked_for(b), None, "other addresses are not affected");
        // One IPv6 /64 is one client.
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        for _ in 0..3 {
            g.failed(v6a);
        }
        assert!(g.failed(v6b).is_some());
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = dashlight_core::config::parse_trusted_proxies("10.0.0.0/8, ::1").unwrap();
        let h = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert("x-forwarded-for", axum::http::HeaderValue::from_static(v));
            m
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Without trusted proxies (the default), the header is ignored.
        assert_eq!(client_ip(ip("10.0.0.2"), &h("203.0.113.9"), &[]), ip("10.0.0.2"));
        // A stranger cannot name another client.
        assert_eq!(client_ip(ip("198.51.100.7"), &h("203.0.113.9"), &trusted), ip("198.51.100.7"));
        // Through the proxy: the address the proxy saw, not what the client wrote before it.
        assert_eq!(client_ip(ip("10.0.0.2"), &h("1.1.1.1, 203.0.113.9"), &trusted), ip("203.0.113.9"));
        // Two trusted hops.
        assert_eq!(client_ip(ip("10.0.0.2"), &h("203.0.113.9, 10.0.0.3"), &trusted), ip("203.0.113.9"));
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.2"), &h("[2001:db8::5]:443"), &trusted),
            ip("2001:db8::5")
        );
        assert_eq!(client_ip(ip("::1"), &h("203.0.113.9:5000"), &trusted), ip("203.0.113.9"));
        // Garbage stops the walk at the last trusted hop; no header: the proxy itself.
        assert_eq!(client_ip(ip("10.0.0.2"), &h("203.0.113.9, nonsense"), &trusted), ip("10.0.0.2"));
        assert_eq!(client_ip(ip("10.0.0.2"), &HeaderMap::new(), &trusted), ip("10.0.0.2"));
    }

    #[test]
    fn device_registrations_are_limited_per_person() {
        let p = PerPerson::device_registrations();
        for _ in 0..PerPerson::DEVICE_BURST {
            p.check(1).unwrap();
        }
        let wait = p.check(1).unwrap_err();
        assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(60), "{wait:?}");
        assert!(p.check(2).is_ok(), "another person is not affected");
        assert_eq!(retry_after_secs(Duration::from_secs(6)), 6);
    }
}
