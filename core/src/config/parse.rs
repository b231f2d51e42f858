//! Parsing and checking configuration values: durations, retention periods, tokens, SMTP URLs,
//! mail domains, trusted proxies; and the typed readers of one variable (`var`, `parsed`,
//! `duration`, `boolean`, …) that name the variable in their [`ConfigError`].

use std::{str::FromStr, time::Duration};

use super::ConfigError;

/// Parses `TRUSTED_PROXIES`: comma-separated CIDRs or single addresses.
pub fn parse_trusted_proxies(v: &str) -> Result<Vec<ipnet::IpNet>, String> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let net = match part.parse::<ipnet::IpNet>() {
            Ok(n) => n.trunc(),
            Err(_) => match part.parse::<std::net::IpAddr>() {
                Ok(ip) => ipnet::IpNet::from(ip),
                Err(_) => {
                    return Err(format!(
                        "expected comma-separated addresses or CIDRs such as 10.0.0.5,192.168.0.0/24; {part:?} is neither"
                    ));
                }
            },
        };
        out.push(net);
    }
    Ok(out)
}

/// A messages-per-second limit: unset or a positive number (decimals allowed, e.g. `0.5`).
pub(super) fn rate_limit(name: &'static str) -> Result<Option<f64>, ConfigError> {
    match var(name) {
        None => Ok(None),
        Some(v) => match v.trim().parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 && r <= 1_000_000.0 => Ok(Some(r)),
            _ => Err(ConfigError::new(
                name,
                format!("expected messages per second, a positive number such as 4 or 0.5, got {v:?}"),
            )),
        },
    }
}

pub(super) fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Parses a duration like `24h`, `90m`, `30s`, `250ms`, `2d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => return Some(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// Formats a reminder offset for people and for dedupe keys: `24h`, `2h`, `90m`.
pub fn format_offset(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86_400) && s >= 86_400 * 2 {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

pub(super) fn parsed<T: FromStr>(name: &'static str, default: T, expected: &str) -> Result<T, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| ConfigError::new(name, format!("expected {expected}, got {v:?}"))),
    }
}

pub(super) fn duration(name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => {
            parse_duration(&v).ok_or_else(|| ConfigError::new(name, format!("expected a duration such as 30s, 5m or 2h, got {v:?}")))
        }
    }
}

/// An escalation offset: unset → `default`, set but empty → off (`None`), else a duration.
pub(super) fn escalation(name: &'static str, default: Duration) -> Result<Option<Duration>, ConfigError> {
    match std::env::var(name) {
        Err(_) => Ok(Some(default)),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => parse_duration(&v).filter(|d| !d.is_zero()).map(Some).ok_or_else(|| {
            ConfigError::new(
                name,
                format!("expected a duration such as 12h or 90m (empty turns it off), got {v:?}"),
            )
        }),
    }
}

/// `RETENTION_DELIVERIES` when unset.
pub const DEFAULT_RETENTION_DELIVERIES: Duration = Duration::from_secs(400 * 86_400);
/// `RETENTION_INVOICES` when unset (seven years of 365 days).
pub const DEFAULT_RETENTION_INVOICES: Duration = Duration::from_secs(7 * 365 * 86_400);
/// The shortest `RETENTION_DELIVERIES`: longer than the days the analytics rollup recomputes
/// (the last three), so a day whose deliveries were purged is never recomputed to zero.
pub const MIN_RETENTION_DELIVERIES: Duration = Duration::from_secs(7 * 86_400);

/// A retention period: [`parse_duration`]'s units plus `w` (weeks) and `y` (365 days).
pub fn parse_retention(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    match unit {
        "w" => n.checked_mul(7 * 86_400).map(Duration::from_secs),
        "y" => n.checked_mul(365 * 86_400).map(Duration::from_secs),
        _ => parse_duration(s),
    }
}

pub(super) fn retention_deliveries() -> Result<Duration, ConfigError> {
    let name = "RETENTION_DELIVERIES";
    let Some(v) = var(name) else {
        return Ok(DEFAULT_RETENTION_DELIVERIES);
    };
    let d = parse_retention(&v).ok_or_else(|| ConfigError::new(name, format!("expected a duration such as 400d, 60w or 2y, got {v:?}")))?;
    if d < MIN_RETENTION_DELIVERIES {
        return Err(ConfigError::new(
            name,
            format!("expected at least 7d (the analytics rollup recomputes recent days from these rows), got {v:?}"),
        ));
    }
    Ok(d)
}

pub(super) fn retention_invoices() -> Result<Option<Duration>, ConfigError> {
    let name = "RETENTION_INVOICES";
    match std::env::var(name) {
        Err(_) => Ok(Some(DEFAULT_RETENTION_INVOICES)),
        Ok(v) if v.trim().is_empty() || v.trim().eq_ignore_ascii_case("never") => Ok(None),
        Ok(v) => match parse_retention(&v) {
            Some(d) if d >= Duration::from_secs(365 * 86_400) => Ok(Some(d)),
            Some(_) => Err(ConfigError::new(name, format!("expected at least 1y (tax records), got {v:?}"))),
            None => Err(ConfigError::new(
                name,
                format!("expected a duration such as 7y or 2555d, or empty for never, got {v:?}"),
            )),
        },
    }
}

pub(super) fn boolean(name: &'static str, default: bool) -> Result<bool, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::new(name, format!("expected true or false, got {v:?}"))),
        },
    }
}

/// The shortest `ADMIN_API_TOKEN` accepted: 32 characters, so that guessing it is hopeless
/// (`dashlight up` generates 43 characters of base64url, 256 bits).
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// The fewest distinct characters a secret token may hold: 32 characters of one repeated letter
/// (or of a short pattern) are long but guessable.
pub const MIN_TOKEN_DISTINCT_CHARS: usize = 16;

/// Checks the admin token's length and variety; the message names the variable.
pub fn check_admin_token(token: &str) -> Result<(), ConfigError> {
    check_secret_token("ADMIN_API_TOKEN", token)
}

/// Checks a secret token (`ADMIN_API_TOKEN`, `INBOUND_EMAIL_TOKEN`): at least
/// [`MIN_ADMIN_TOKEN_LEN`] characters, of which at least [`MIN_TOKEN_DISTINCT_CHARS`] distinct.
pub fn check_secret_token(name: &'static str, token: &str) -> Result<(), ConfigError> {
    let token = token.trim();
    let n = token.chars().count();
    if n < MIN_ADMIN_TOKEN_LEN {
        return Err(ConfigError::new(
            name,
            format!(
                "too short ({n} characters): use at least {MIN_ADMIN_TOKEN_LEN} random characters, e.g. the output of `openssl rand -base64 32`"
            ),
        ));
    }
    let distinct = token.chars().collect::<std::collections::BTreeSet<char>>().len();
    if distinct < MIN_TOKEN_DISTINCT_CHARS {
        return Err(ConfigError::new(
            name,
            format!(
                "too little variety ({distinct} distinct characters, at least {MIN_TOKEN_DISTINCT_CHARS} needed): a long token made of few characters is easy to guess; use random characters, e.g. the output of `openssl rand -base64 32`"
            ),
        ));
    }
    Ok(())
}

/// or `tls=required` (STARTTLS that cannot be stripped), unless the server is on this machine.
pub(super) fn check_smtp_tls(url: &url::Url) -> Result<(), ConfigError> {
    if url.username().is_empty() && url.password().is_none() {
        return Ok(());
    }
    if url.scheme() == "smtps" {
        return Ok(());
    }
    let tls = url.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v.to_ascii_lowercase());
    if tls.as_deref() == Some("required") {
        return Ok(());
    }
    let loopback = match url.host() {
        // `smtp:` is not a special scheme to the URL parser, so an IPv4 host comes as a name.
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost") || d.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if loopback {
        return Ok(());
    }
    Err(ConfigError::new(
        "SMTP_URL",
        "has credentials but no TLS: use smtps://… or add ?tls=required (a password is never sent in clear text to another machine)",
    ))
}

/// The domain of an address given as `addr@host` or `Name <addr@host>`, lower-cased.
pub fn domain_of(mailbox: &str) -> Option<String> {
    let addr = match (mailbox.rfind('<'), mailbox.rfind('>')) {
        (Some(a), Some(b)) if a < b => &mailbox[a + 1..b],
        _ => mailbox,
    };
    let (_, domain) = addr.trim().rsplit_once('@')?;
    let d = domain.trim().to_ascii_lowercase();
    valid_domain(&d).then_some(d)
}

/// A plausible mail domain: dot-separated labels of letters, digits and hyphens.
pub(super) fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

#[cfg(test)]
mod tests {
    use super::super::TEST_ADMIN_TOKEN;
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(format_offset(Duration::from_secs(86_400)), "24h");
        assert_eq!(format_offset(Duration::from_secs(5400)), "90m");
        assert_eq!(parse_retention("400d"), Some(DEFAULT_RETENTION_DELIVERIES));
        assert_eq!(parse_retention("7y"), Some(DEFAULT_RETENTION_INVOICES));
        assert_eq!(parse_retention("2w"), Some(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_retention("y"), None);
        assert_eq!(parse_retention("99999999999999999y"), None);
    }

    #[test]
    fn tokens_and_smtp_urls() {
        assert!(check_admin_token("short").is_err());
        assert!(check_admin_token(&"x".repeat(31)).is_err());
        assert!(check_admin_token(TEST_ADMIN_TOKEN).is_ok());
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert!(check_smtp_tls(&url("smtp://u:p@mail.example.com:587")).is_err());
        assert!(check_smtp_tls(&url("smtp://u:p@mail.example.com:587?tls=opportunistic")).is_err());
        assert!(check_smtp_tls(&url("smtp://u:p@mail.example.com:587?tls=required")).is_ok());
        assert!(check_smtp_tls(&url("smtps://u:p@mail.example.com")).is_ok());
        assert!(check_smtp_tls(&url("smtp://u:p@127.0.0.1:2525")).is_ok());
        assert!(check_smtp_tls(&url("smtp://u:p@localhost:2525")).is_ok());
        assert!(check_smtp_tls(&url("smtp://mail.example.com:25")).is_ok());
    }

    #[test]
    fn tokens_with_too_little_variety_are_refused() {
        let one_letter = "a".repeat(32);
        let e = check_admin_token(&one_letter).unwrap_err();
        assert_eq!(e.var, "ADMIN_API_TOKEN");
        assert!(e.message.contains("1 distinct"), "{}", e.message);
        // Long, but a pattern of 15 characters.
        let pattern = "abcdefghijklmno".repeat(4);
        assert!(check_admin_token(&pattern).is_err());
        assert!(check_admin_token(&"abcdefghijklmnop".repeat(2)).is_ok());
        let e = check_secret_token("INBOUND_EMAIL_TOKEN", &"ab".repeat(30)).unwrap_err();
        assert_eq!(e.var, "INBOUND_EMAIL_TOKEN");
        assert!(e.message.contains("variety"), "{}", e.message);
    }

    #[test]
    fn trusted_proxies_parse() {
        let p = parse_trusted_proxies("10.0.0.5, 192.168.1.7/24,::1,2001:db8::/32").unwrap();
        let s: Vec<String> = p.iter().map(|n| n.to_string()).collect();
        assert_eq!(s, ["10.0.0.5/32", "192.168.1.0/24", "::1/128", "2001:db8::/32"]);
        assert!(parse_trusted_proxies("10.0.0.0/33").is_err());
        assert!(parse_trusted_proxies("proxy.local").is_err());
        assert!(parse_trusted_proxies("").unwrap().is_empty());
    }

    #[test]
    fn bounce_domains() {
        assert_eq!(domain_of("Dashlight <no-reply@School.Example>").as_deref(), Some("school.example"));
        assert_eq!(domain_of("a@localhost").as_deref(), Some("localhost"));
        assert_eq!(domain_of("nobody").as_deref(), None);
        assert_eq!(domain_of("x@bad domain").as_deref(), None);
    }
}
