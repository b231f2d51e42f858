//! Which push endpoints Dashlight will talk to (the SSRF guard). A device's `push_endpoint` is
//! chosen by whoever registers the device, and the worker POSTs to it, so an endpoint could
//! otherwise point the worker at the database, a cloud metadata service or anything else on the
//! private network.
//!
//! Always: the endpoint is at most [`MAX_ENDPOINT_LEN`] bytes (a real push service's is a few
//! hundred; a longer one cannot be stored in a delivery's unique key and is refused). The rules,
//! unless `PUSH_ALLOW_PRIVATE_ENDPOINTS=true` (local runs and tests with loopback push
//! services):
//!
//! - the scheme is `https`;
//! - the host is a name, or an IP address that [`is_public`] accepts; `localhost` and names
//!   under `.localhost` are refused by name;
//! - at connect time, every address the name resolves to must be public (checked by the
//!   worker's DNS resolver, so a name that resolves differently later — DNS rebinding — is still
//!   refused).
//!
//! This module only decides; the admin API applies [`check_push_endpoint`] at registration and
//! the worker's push channel applies it, and [`is_public`] to resolved addresses, before sending.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The longest push endpoint accepted, in bytes.
pub const MAX_ENDPOINT_LEN: usize = 1024;

/// Why `endpoint` may not be used as a push endpoint, or `None` when it may.
pub fn check_push_endpoint(endpoint: &str, allow_private: bool) -> Option<String> {
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Some(format!("expected at most {MAX_ENDPOINT_LEN} bytes, got {}", endpoint.len()));
    }
    let url = match url::Url::parse(endpoint) {
        Ok(u) => u,
        Err(e) => return Some(format!("expected an https URL, could not parse it: {e}")),
    };
    match (url.scheme(), allow_private) {
        ("https", _) | ("http", true) => {}
        _ => {
            return Some(if allow_private {
                "expected an http(s) URL".to_owned()
            } else {
                "expected an https URL".to_owned()
            });
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Some("a push endpoint carries no credentials".to_owned());
    }
    let Some(host) = url.host() else {
        return Some("expected a URL with a host".to_owned());
    };
    if allow_private {
        return None;
    }
    match host {
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                return Some("a push endpoint may not point at this machine".to_owned());
            }
            None
        }
        url::Host::Ipv4(ip) => (!is_public(IpAddr::V4(ip))).then(|| format!("{ip} is not a public address")),
        url::Host::Ipv6(ip) => (!is_public(IpAddr::V6(ip))).then(|| format!("{ip} is not a public address")),
    }
}

/// True for addresses on the public internet: not loopback, private (RFC 1918), link-local
/// (which holds the cloud metadata service 169.254.169.254), shared (CGNAT, 100.64/10),
/// unique-local (fc00::/7), multicast, unspecified, broadcast, documentation, benchmarking or
/// reserved ranges. IPv4-mapped and IPv4-compatible IPv6 addresses are judged as the IPv4
/// address they carry, NAT64 (64:ff9b::/96) and SIIT (::ffff:0:0:0/96) likewise. The
/// transition ranges that lead to an IPv4 host are judged by it: 6to4 (2002::/16) by the IPv4
/// address in bits 16–47, Teredo (2001::/32) by both its server and its (obfuscated) client
/// address. The local-use NAT64 prefix 64:ff9b:1::/48 (RFC 8215) is never public.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            let v4_at = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
            // Local-use NAT64, 64:ff9b:1::/48: translated inside one network only.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
                return false;
            }
            // 6to4, 2002::/16: the IPv4 address is in bits 16-47.
            if s[0] == 0x2002 {
                return is_public_v4(v4_at(s[1], s[2]));
            }
            // Teredo, 2001::/32: the server's IPv4 in bits 32-63, the client's inverted in 96-127.
            if s[0] == 0x2001 && s[1] == 0 {
                return is_public_v4(v4_at(s[2], s[3])) && is_public_v4(v4_at(!s[6], !s[7]));
            }
            is_public_v6(v6)
        }
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    // IPv4-compatible (::a.b.c.d, deprecated), NAT64 well-known prefix 64:ff9b::/96 and SIIT
    // IPv4-translated ::ffff:0:a.b.c.d.
    if (s[..6] == [0, 0, 0, 0, 0, 0] && !(s[6] == 0 && s[7] <= 1))
        || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
        || s[..6] == [0, 0, 0, 0, 0xffff, 0]
    {
        return Some(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8));
    }
    None
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || o[0] == 0
        // Shared address space (CGNAT), 100.64.0.0/10.
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        // IETF protocol assignments, 192.0.0.0/24.
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        // Benchmarking, 198.18.0.0/15.
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
        // Reserved, 240.0.0.0/4.
        || o[0] >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local, fc00::/7.
        || (s[0] & 0xfe00) == 0xfc00
        // Link-local, fe80::/10, and the deprecated site-local fec0::/10.
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        // Documentation, 2001:db8::/32.
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        // Discard-only, 100::/64.
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_private_link_local_and_mapped_addresses_are_not_public() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(bad.parse().unwrap()), "{bad}");
        }
        for good in ["8.8.8.8", "142.250.74.46", "2607:f8b0:4004:c07::64", "::ffff:8.8.8.8"] {
            assert!(is_public(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn transition_ranges_count_as_their_ipv4_address() {
        for bad in [
            // 6to4 of 127.0.0.1, 10.0.0.1, 169.254.169.254.
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2002:a9fe:a9fe::1",
            // Teredo with a private server or a loopback client (client inverted: 127.0.0.1).
            "2001:0:a00:1::1",
            "2001:0:808:808:0:0:80ff:fffe",
            // Local-use NAT64, whatever it carries.
            "64:ff9b:1::808:808",
            "64:ff9b:1:ffff::a00:1",
            // NAT64 and SIIT with private IPv4.
            "64:ff9b::7f00:1",
            "::ffff:0:a00:1",
        ] {
            assert!(!is_public(bad.parse().unwrap()), "{bad}");
        }
        for good in [
            "2002:808:808::1",
            // Teredo: server 8.8.8.8, client 8.8.4.4 (inverted f7f7:fbfb).
            "2001:0:808:808:0:0:f7f7:fbfb",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn over_long_endpoints_are_refused() {
        let long = format!("https://push.example.com/{}", "a".repeat(MAX_ENDPOINT_LEN));
        assert!(check_push_endpoint(&long, false).unwrap().contains("at most 1024 bytes"));
        assert!(check_push_endpoint(&long, true).is_some(), "also with private endpoints allowed");
        let fits = format!("https://push.example.com/{}", "a".repeat(MAX_ENDPOINT_LEN - 25));
        assert_eq!(fits.len(), MAX_ENDPOINT_LEN);
        assert_eq!(check_push_endpoint(&fits, false), None);
    }

    #[test]
    fn a_push_endpoint_must_be_https_on_a_public_host_without_credentials_unless_loopback_is_allowed() {
        for bad in [
            "http://169.254.169.254/latest/meta-data",
            "https://127.0.0.1:5432/x",
            "https://10.1.2.3/x",
            "http://push.example.com/x",
            "https://[::ffff:7f00:1]/x",
            "https://localhost/x",
            "https://a.localhost./x",
            "https://user:pw@push.example.com/x",
            "ftp://push.example.com/x",
            "not a url",
        ] {
            assert!(check_push_endpoint(bad, false).is_some(), "{bad}");
        }
        assert_eq!(check_push_endpoint("https://fcm.googleapis.com/fcm/send/abc", false), None);
        assert_eq!(check_push_endpoint("http://127.0.0.1:9/x", true), None);
        assert!(check_push_endpoint("ftp://127.0.0.1/x", true).is_some());
    }
}
