//! Peer-address policy: a TURN relay run inside an organisation must not become a way into it. Every peer
//! address a client names (CreatePermission, ChannelBind, Send) is checked here; a refusal is answered with
//! 403 (Forbidden), never dropped silently.
//!
//! IPv6 forms that carry an IPv4 address (IPv4-mapped, SIIT-translated, NAT64 well-known prefix, 6to4) are
//! unwrapped and the IPv4 address is judged too; forms that are never a legitimate peer (IPv4-compatible,
//! Teredo and the rest of 2001::/23, local-use NAT64, anything outside global unicast 2000::/3) are refused
//! outright. Ranges an operator allows explicitly take precedence; cluster CIDRs are refused.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Why a peer address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// 0.0.0.0/8, `::`.
    Unspecified,
    /// 127.0.0.0/8, `::1`.
    Loopback,
    /// 169.254.0.0/16 (cloud metadata at 169.254.169.254), fe80::/10.
    LinkLocal,
    /// RFC 1918, unique local fc00::/7, site-local fec0::/10, local-use NAT64 64:ff9b:1::/48.
    Private,
    /// 100.64.0.0/10 (carrier-grade NAT).
    SharedAddressSpace,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// Everything else that is not a public unicast address (240/4, 198.18/15, 192.0.0/24, 2001::/23,
    /// IPv4-compatible IPv6, outside 2000::/3, ...).
    Reserved,
    /// One of the configured cluster CIDRs (pods, services).
    Cluster,
}

impl Refusal {
    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::LinkLocal => "link_local",
            Self::Private => "private",
            Self::SharedAddressSpace => "shared_address_space",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Documentation => "documentation",
            Self::Reserved => "reserved",
            Self::Cluster => "cluster",
        }
    }

    /// The STUN error code a refusal is answered with: 403 (Forbidden), RFC 8656.
    pub fn error_code(self) -> u16 {
        403
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An address range, `10.96.0.0/12` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A malformed range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a CIDR such as 10.96.0.0/12 or fd00::/8")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || CidrError(text.to_owned());
        let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is inside (an IPv4 range never contains an IPv6 address, and the reverse).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                in_prefix(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => in_prefix(u128::from(net), u128::from(ip), 128, self.prefix),
            _ => false,
        }
    }
}

fn in_prefix(net: u128, ip: u128, bits: u8, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (net >> shift) == (ip >> shift)
}

fn v4_in(ip: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    in_prefix(u32::from(Ipv4Addr::from(net)).into(), u32::from(ip).into(), 32, prefix)
}

fn v6_in(ip: Ipv6Addr, net: Ipv6Addr, prefix: u8) -> bool {
    in_prefix(u128::from(net), u128::from(ip), 128, prefix)
}

/// The class of an IPv4 address, `None` for public unicast.
fn classify_v4(ip: Ipv4Addr) -> Option<Refusal> {
    use Refusal::*;
    let table: [([u8; 4], u8, Refusal); 16] = [
        ([255, 255, 255, 255], 32, Broadcast),
        ([0, 0, 0, 0], 8, Unspecified),
        ([127, 0, 0, 0], 8, Loopback),
        ([169, 254, 0, 0], 16, LinkLocal),
        ([10, 0, 0, 0], 8, Private),
        ([172, 16, 0, 0], 12, Private),
        ([192, 168, 0, 0], 16, Private),
        ([100, 64, 0, 0], 10, SharedAddressSpace),
        ([224, 0, 0, 0], 4, Multicast),
        ([192, 0, 2, 0], 24, Documentation),
        ([198, 51, 100, 0], 24, Documentation),
        ([203, 0, 113, 0], 24, Documentation),
        ([192, 0, 0, 0], 24, Reserved),
        ([198, 18, 0, 0], 15, Reserved),
        ([192, 88, 99, 0], 24, Reserved),
        ([240, 0, 0, 0], 4, Reserved),
    ];
    table.iter().find(|(net, prefix, _)| v4_in(ip, *net, *prefix)).map(|(_, _, why)| *why)
}

/// The IPv4 address an IPv6 address carries, for the forms that can reach an IPv4 host.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    // ::ffff:a.b.c.d (mapped).
    if s[..5] == [0; 5] && s[5] == 0xffff {
        return Some(low);
    }
    // ::ffff:0:a.b.c.d (SIIT translated).
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        return Some(low);
    }
    // 64:ff9b::a.b.c.d, the NAT64 well-known prefix.
    if v6_in(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return Some(low);
    }
    // 2002:AABB:CCDD::/48, 6to4.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8));
    }
    None
}

/// The class of an IPv6 address, `None` for public unicast.
fn classify_v6(ip: Ipv6Addr) -> Option<Refusal> {
    use Refusal::*;
    if ip.is_unspecified() {
        return Some(Unspecified);
    }
    if ip.is_loopback() {
        return Some(Loopback);
    }
    if let Some(v4) = embedded_v4(ip) {
        // The carried address decides; a public IPv4 host behind NAT64 or 6to4 is a legitimate peer.
        return classify_v4(v4);
    }
    let table: [(Ipv6Addr, u8, Refusal); 10] = [
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, LinkLocal),
        (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, Private),
        (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, Private),
        (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48, Private),
        (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, Multicast),
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32, Documentation),
        (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20, Documentation),
        // IETF protocol assignments: Teredo (2001::/32), benchmarking, ORCHID, ...
        (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23, Reserved),
        (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64, Reserved),
        // IPv4-compatible ::a.b.c.d (deprecated) and the rest of ::/8.
        (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 8, Reserved),
    ];
    if let Some((_, _, why)) = table.iter().find(|(net, prefix, _)| v6_in(ip, *net, *prefix)) {
        return Some(*why);
    }
    // Only global unicast is a peer.
    if !v6_in(ip, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3) {
        return Some(Reserved);
    }
    None
}

/// The address to compare with configured ranges: IPv6 forms carrying an IPv4 address become that address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Which peers the relay may reach.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    cluster: Vec<Cidr>,
    allowed: Vec<Cidr>,
}

impl PeerPolicy {
    /// Refuses the special ranges and `cluster`; `allowed` ranges are let through even when special (an
    /// operator's explicit choice, e.g. a media server on a private network).
    pub fn new(cluster: Vec<Cidr>, allowed: Vec<Cidr>) -> Self {
        Self { cluster, allowed }
    }

    /// Whether the relay may send to `ip`, and if not, why.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let canonical = canonical(ip);
        if self.allowed.iter().any(|c| c.contains(canonical) || c.contains(ip)) {
            return Ok(());
        }
        if self.cluster.iter().any(|c| c.contains(canonical) || c.contains(ip)) {
            return Err(Refusal::Cluster);
        }
        let class = match ip {
            IpAddr::V4(v4) => classify_v4(v4),
            IpAddr::V6(v6) => classify_v6(v6),
        };
        class.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(policy: &PeerPolicy, text: &str) -> Result<(), Refusal> {
        policy.check(text.parse().unwrap())
    }

    #[test]
    fn each_class_is_refused_and_public_addresses_pass() {
        let policy = PeerPolicy::default();
        let cases = [
            ("0.0.0.0", Refusal::Unspecified),
            ("0.1.2.3", Refusal::Unspecified),
            ("::", Refusal::Unspecified),
            ("127.0.0.1", Refusal::Loopback),
            ("127.255.255.254", Refusal::Loopback),
            ("::1", Refusal::Loopback),
            ("169.254.169.254", Refusal::LinkLocal),
            ("fe80::1", Refusal::LinkLocal),
            ("10.1.2.3", Refusal::Private),
            ("172.31.255.255", Refusal::Private),
            ("192.168.1.1", Refusal::Private),
            ("fd12:3456::1", Refusal::Private),
            ("fec0::1", Refusal::Private),
            ("100.64.0.1", Refusal::SharedAddressSpace),
            ("100.127.255.255", Refusal::SharedAddressSpace),
            ("224.0.0.251", Refusal::Multicast),
            ("239.255.255.250", Refusal::Multicast),
            ("ff02::1", Refusal::Multicast),
            ("255.255.255.255", Refusal::Broadcast),
            ("192.0.2.10", Refusal::Documentation),
            ("198.51.100.1", Refusal::Documentation),
            ("203.0.113.7", Refusal::Documentation),
            ("2001:db8::1", Refusal::Documentation),
            ("3fff::1", Refusal::Documentation),
            ("240.0.0.1", Refusal::Reserved),
            ("198.18.0.1", Refusal::Reserved),
            ("192.0.0.8", Refusal::Reserved),
            ("100::1", Refusal::Reserved),
            ("4000::1", Refusal::Reserved),
        ];
        for (address, why) in cases {
            assert_eq!(check(&policy, address), Err(why), "{address}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2a00:1450:4007:80e::200e", "2606:4700::1111"]
        {
            assert_eq!(check(&policy, public), Ok(()), "{public}");
        }
    }

    #[test]
    fn disguised_loopback_and_metadata_addresses_are_refused() {
        let policy = PeerPolicy::default();
        let cases = [
            ("::ffff:127.0.0.1", Refusal::Loopback),
            ("::ffff:7f00:1", Refusal::Loopback),
            ("::ffff:169.254.169.254", Refusal::LinkLocal),
            ("::ffff:0:127.0.0.1", Refusal::Loopback),
            ("::127.0.0.1", Refusal::Reserved),
            ("::169.254.169.254", Refusal::Reserved),
            ("64:ff9b::127.0.0.1", Refusal::Loopback),
            ("64:ff9b::a9fe:a9fe", Refusal::LinkLocal),
            ("64:ff9b::10.0.0.1", Refusal::Private),
            ("64:ff9b:1::a00:1", Refusal::Private),
            ("2002:7f00:1::", Refusal::Loopback),
            ("2002:a9fe:a9fe::1", Refusal::LinkLocal),
            ("2002:c0a8:101::1", Refusal::Private),
            // Teredo carries an obfuscated client address; the whole prefix is refused.
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", Refusal::Reserved),
        ];
        for (address, why) in cases {
            assert_eq!(check(&policy, address), Err(why), "{address}");
        }
        // The same forms carrying a public address are legitimate peers.
        for public in ["::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"] {
            assert_eq!(check(&policy, public), Ok(()), "{public}");
        }
    }

    #[test]
    fn cluster_ranges_are_refused_and_allowed_ranges_win() {
        let cluster =
            vec!["10.96.0.0/12".parse().unwrap(), "fd00:10::/64".parse().unwrap(), "34.0.0.0/8".parse().unwrap()];
        let allowed = vec!["192.168.50.0/24".parse().unwrap()];
        let policy = PeerPolicy::new(cluster, allowed);
        assert_eq!(check(&policy, "34.1.2.3"), Err(Refusal::Cluster));
        assert_eq!(check(&policy, "::ffff:34.1.2.3"), Err(Refusal::Cluster), "a mapped form of a cluster address");
        assert_eq!(check(&policy, "fd00:10::5"), Err(Refusal::Cluster));
        assert_eq!(check(&policy, "192.168.50.7"), Ok(()), "explicitly allowed");
        assert_eq!(check(&policy, "::ffff:192.168.50.7"), Ok(()));
        assert_eq!(check(&policy, "192.168.51.7"), Err(Refusal::Private));
    }

    #[test]
    fn cidrs_parse_strictly() {
        assert!("10.0.0.0/8".parse::<Cidr>().is_ok());
        assert!("::/0".parse::<Cidr>().unwrap().contains("2001:db8::1".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(!"0.0.0.0/0".parse::<Cidr>().unwrap().contains("::1".parse().unwrap()));
        for bad in ["10.0.0.0", "10.0.0.0/33", "::/129", "ten/8", "10.0.0.0/-1", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(Refusal::LinkLocal.error_code(), 403);
        assert_eq!(Refusal::SharedAddressSpace.to_string(), "shared_address_space");
    }
}
