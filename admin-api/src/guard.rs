//! The brake on guessing the admin token: failed authentications are counted per client
//! address, and an address over the limit is answered 429 with `Retry-After` — before its
//! credential is even looked at, so a right guess made while locked out does not tell itself
//! apart from a wrong one.
//!
//! Counting is governor's GCRA, keyed by address: `AUTH_FAILURE_LIMIT` failures (default 10) in
//! a burst, then one more per `60 / limit` seconds. Only failures count (a request without any
//! credential is a plain 401 and costs nothing; the right token never costs anything), which is
//! why this is not `tower_governor`: that layer counts every request. governor has no way to ask
//! "is this key over the limit?" without spending a cell, so the lockout an over-limit failure
//! starts is kept next to it, until governor would allow the next failure.
//!
//! The address is the TCP peer ([`ClientAddr`]); IPv6 clients are counted per /64, the block
//! one client usually holds. Behind a reverse proxy every client shares the proxy's address:
//! `X-Forwarded-For` is not trusted, as anyone can send it.
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
    http::request::Parts,
};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Entries kept before stale ones are dropped (bounds memory under a spread-out attack).
const PRUNE_ABOVE: usize = 10_000;

/// The client's address, from the connection (unspecified when the router runs without one,
/// e.g. in unit tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(client_addr(&parts.extensions))
    }
}

/// The peer address recorded by `into_make_service_with_connect_info`.
pub fn client_addr(extensions: &axum::http::Extensions) -> ClientAddr {
    ClientAddr(
        extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    )
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
        assert_eq!(retry_after_secs(Duration::from_secs(6)), 6);
    }
}
