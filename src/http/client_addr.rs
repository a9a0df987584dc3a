//! Who the client is, as far as per-address budgets and the audit trail are concerned: the
//! socket peer, or the address a trusted proxy reports in `X-Forwarded-For`, in canonical form;
//! and the key under which a client is counted ([`budget_key`]: one IPv6 /64, one IPv4 address).
//!
//! It must not trust anything a client can write: `X-Forwarded-For` is read only when the peer is
//! a configured proxy, and only as far as the chain of trusted proxies reaches.

use axum::http::HeaderMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// An address range in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`), or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                prefix_bits(u128::from(u32::from(ip)), 32, self.prefix)
                    == prefix_bits(u128::from(u32::from(network)), 32, self.prefix)
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                prefix_bits(u128::from(ip), 128, self.prefix) == prefix_bits(u128::from(network), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The first `prefix` bits of a `width`-bit number.
fn prefix_bits(value: u128, width: u8, prefix: u8) -> u128 {
    if prefix == 0 { 0 } else { value >> (width - prefix) }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network = canonical(
            address
                .parse::<IpAddr>()
                .map_err(|_| format!("`{text}` is not an IP address or CIDR range"))?,
        );
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= width)
                .ok_or_else(|| format!("`{text}` has a prefix length outside 0..={width}"))?,
        };
        Ok(Self { network, prefix })
    }
}

impl TryFrom<String> for IpRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, what a dual-stack socket reports for an
/// IPv4 client) as the IPv4 address it is, so one client has one form everywhere.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The key a client is counted under in every per-address budget: an IPv4 address, or the /64
/// network of an IPv6 address. One IPv6 subscriber usually holds a whole /64 (often far more),
/// so counting single IPv6 addresses would give each client 2^64 budgets.
pub fn budget_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

fn is_trusted(ip: IpAddr, trusted_proxies: &[IpRange]) -> bool {
    trusted_proxies.iter().any(|range| range.contains(ip))
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`) as some proxies write it.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    entry
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|address| canonical(address.ip()))
}

/// The client's address: the socket peer; or, when the peer is a trusted proxy, the entries of
/// `X-Forwarded-For` walked from the right (each was appended by the hop to its right), the
/// first one that is not a trusted proxy. Entries further left were written by the client and are
/// never read. An entry that is not an address ends the walk at the trusted hop that wrote it:
/// that is the last address known to be true.
pub fn client_ip(headers: &HeaderMap, peer: Option<IpAddr>, trusted_proxies: &[IpRange]) -> Option<IpAddr> {
    let mut client = canonical(peer?);
    if !is_trusted(client, trusted_proxies) {
        return Some(client);
    }
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|value| value.to_str().unwrap_or_default())
        .collect();
    for entry in values.iter().rev().flat_map(|value| value.rsplit(',')) {
        match parse_forwarded(entry) {
            Some(ip) if is_trusted(ip, trusted_proxies) => client = ip,
            Some(ip) => return Some(ip),
            None => return Some(client),
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn ranges(texts: &[&str]) -> Vec<IpRange> {
        texts.iter().map(|text| text.parse().unwrap()).collect()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let h = forwarded(&["203.0.113.9"]);
        assert_eq!(client_ip(&h, Some(ip("10.0.0.5")), &[]), Some(ip("10.0.0.5")));
        assert_eq!(
            client_ip(&h, Some(ip("10.0.0.5")), &ranges(&["10.0.0.5"])),
            Some(ip("203.0.113.9"))
        );
    }

    #[test]
    fn the_walk_from_the_right_stops_at_the_first_untrusted_address() {
        let trusted = ranges(&["10.0.0.0/8"]);
        let h = forwarded(&["1.1.1.1, 203.0.113.9, 10.0.0.6"]);
        assert_eq!(client_ip(&h, Some(ip("10.0.0.5")), &trusted), Some(ip("203.0.113.9")));
        // Split over several header lines, in order.
        let h = forwarded(&["1.1.1.1, 203.0.113.9", "10.0.0.6"]);
        assert_eq!(client_ip(&h, Some(ip("10.0.0.5")), &trusted), Some(ip("203.0.113.9")));
        // Only trusted hops: the left-most of them is as far as anyone can tell.
        let h = forwarded(&["10.1.1.1, 10.0.0.6"]);
        assert_eq!(client_ip(&h, Some(ip("10.0.0.5")), &trusted), Some(ip("10.1.1.1")));
    }

    #[test]
    fn garbage_left_of_the_client_does_not_discard_the_list() {
        let trusted = ranges(&["10.0.0.5"]);
        let h = forwarded(&["not-an-ip, 203.0.113.9"]);
        assert_eq!(client_ip(&h, Some(ip("10.0.0.5")), &trusted), Some(ip("203.0.113.9")));
        let h = forwarded(&["unknown, , 198.51.100.7:4711"]);
        assert_eq!(client_ip(&h, Some(ip("10.0.0.5")), &trusted), Some(ip("198.51.100.7")));
        // Garbage where the client should be: the proxy that wrote it is the last known truth.
        let h = forwarded(&["203.0.113.9, unknown"]);
        assert_eq!(client_ip(&h, Some(ip("10.0.0.5")), &trusted), Some(ip("10.0.0.5")));
    }

    #[test]
    fn ipv4_mapped_peers_and_entries_are_plain_ipv4() {
        let trusted = ranges(&["10.0.0.0/8"]);
        let mapped = ip("::ffff:10.0.0.5");
        assert_eq!(client_ip(&HeaderMap::new(), Some(mapped), &[]), Some(ip("10.0.0.5")));
        let h = forwarded(&["::ffff:203.0.113.9"]);
        assert_eq!(client_ip(&h, Some(mapped), &trusted), Some(ip("203.0.113.9")));
    }

    #[test]
    fn ranges_parse_cidr_and_single_addresses() {
        let range: IpRange = "10.0.0.0/8".parse().unwrap();
        assert!(range.contains(ip("10.255.0.1")));
        assert!(!range.contains(ip("11.0.0.1")));
        assert!(range.contains(ip("::ffff:10.0.0.1")));
        let single: IpRange = "192.0.2.1".parse().unwrap();
        assert!(single.contains(ip("192.0.2.1")) && !single.contains(ip("192.0.2.2")));
        let v6: IpRange = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!("0.0.0.0/0".parse::<IpRange>().unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "2001:db8::/129", "example.com", "10.0.0.0/x", ""] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
        assert_eq!(range.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        assert_eq!(budget_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            budget_key(ip("2001:db8:1:2:ffff::9")),
            budget_key(ip("2001:db8:1:2::1"))
        );
        assert_ne!(budget_key(ip("2001:db8:1:3::1")), budget_key(ip("2001:db8:1:2::1")));
        assert_eq!(budget_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(budget_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }
}
