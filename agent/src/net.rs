//! Vendor networks: the bridge name and the subnet of each vendor.
//!
//! A vendor's jails share one bridge, `berth-<vendor>`; a vendor name too
//! long for the 15 bytes of an interface name (netdevice(7)) is truncated
//! and tagged with a stable hash. Each bridge gets a /24 out of
//! [`POOL`]: the slot the vendor name hashes to, or the next free one. The
//! choice needs no state of its own: a bridge that exists keeps the subnet
//! its route shows in `/proc/net/route`, and a slot is free when no route
//! of another interface covers it, so berth processes with different state
//! dirs never hand two vendors the same subnet.

use std::net::Ipv4Addr;
use std::path::Path;

/// Prefix every vendor bridge starts with.
pub const BRIDGE_PREFIX: &str = "berth-";
/// Longest interface name (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// First address of the pool of vendor subnets (10.213.0.0/16).
pub const POOL: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 0);
/// Prefix length of one vendor subnet.
pub const PREFIX_LEN: u8 = 24;
/// Number of /24 slots in the pool.
pub const SLOTS: u32 = 256;

/// 32-bit FNV-1a: small, stable across versions and platforms.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The bridge of `vendor`: `berth-<vendor>` if it fits in 15 bytes, else
/// `berth-` + the first 4 bytes of the vendor + `-` + 4 hex digits of its
/// hash (vendor names are ASCII, checked by the parser).
pub fn bridge_name(vendor: &str) -> String {
    let plain = format!("{BRIDGE_PREFIX}{vendor}");
    if plain.len() <= IFNAME_MAX {
        return plain;
    }
    let head: String = vendor.chars().take(4).collect();
    format!(
        "{BRIDGE_PREFIX}{head}-{:04x}",
        fnv1a(vendor.as_bytes()) & 0xffff
    )
}

/// A vendor subnet: gateway `.1`, prefix /24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// Network address.
    pub network: Ipv4Addr,
    /// Gateway (the bridge's address).
    pub gateway: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
}

impl Subnet {
    fn slot(i: u32) -> Subnet {
        let base = u32::from(POOL) + ((i % SLOTS) << 8);
        Subnet {
            network: Ipv4Addr::from(base),
            gateway: Ipv4Addr::from(base + 1),
            prefix_len: PREFIX_LEN,
        }
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix_len))
    }
}

/// One IPv4 route of the main table: interface, destination, mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Interface.
    pub iface: String,
    /// Destination network.
    pub dest: Ipv4Addr,
    /// Network mask.
    pub mask: u32,
}

/// Parses `/proc/net/route` (addresses in host-order hex of the
/// network-order bytes, i.e. little-endian on the machines Berth runs on).
pub fn parse_routes(text: &str) -> Vec<Route> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let (Ok(dest), Ok(mask)) = (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16))
        else {
            continue;
        };
        out.push(Route {
            iface: f[0].to_string(),
            dest: Ipv4Addr::from(u32::from_be(dest.to_le())),
            mask: u32::from_be(mask.to_le()),
        });
    }
    out
}

/// Picks the subnet of `bridge` given the host's routes: the subnet of the
/// bridge's own route if it has one, else the first slot from the vendor's
/// hash that no other interface's route overlaps. `None` if the pool is
/// full.
pub fn pick_subnet(vendor: &str, bridge: &str, routes: &[Route]) -> Option<Subnet> {
    let pool_mask = u32::MAX << 16;
    if let Some(r) = routes.iter().find(|r| {
        r.iface == bridge
            && r.mask == u32::MAX << (32 - u32::from(PREFIX_LEN))
            && u32::from(r.dest) & pool_mask == u32::from(POOL)
    }) {
        return Some(Subnet {
            network: r.dest,
            gateway: Ipv4Addr::from(u32::from(r.dest) + 1),
            prefix_len: PREFIX_LEN,
        });
    }
    let start = fnv1a(vendor.as_bytes()) % SLOTS;
    (0..SLOTS).map(|k| Subnet::slot(start + k)).find(|s| {
        routes.iter().all(|r| {
            if r.mask == 0 {
                return true; // the default route overlaps everything
            }
            let m = r.mask & s.mask(); // the shorter of the two masks
            u32::from(r.dest) & m != u32::from(s.network) & m
        })
    })
}

/// Reads the host's routes.
pub fn host_routes() -> std::io::Result<Vec<Route>> {
    Ok(parse_routes(&std::fs::read_to_string(Path::new(
        "/proc/net/route",
    ))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_fit_and_are_stable() {
        assert_eq!(bridge_name("acme"), "berth-acme");
        assert_eq!(bridge_name("abcdefghi"), "berth-abcdefghi");
        let long = bridge_name("averylongvendorname");
        assert_eq!(long.len(), 15);
        assert!(long.starts_with("berth-aver-"));
        assert_eq!(long, bridge_name("averylongvendorname"));
        assert_ne!(long, bridge_name("averylongvendorname2"));
    }

    const ROUTES: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
berth-x\t0007D50A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

    #[test]
    fn parses_proc_net_route() {
        let r = parse_routes(ROUTES);
        assert_eq!(r.len(), 3);
        assert_eq!(r[1].dest, Ipv4Addr::new(10, 0, 0, 0));
        assert_eq!(r[1].mask, 0xffff_ff00);
        assert_eq!(r[2].dest, Ipv4Addr::new(10, 213, 7, 0));
    }

    #[test]
    fn existing_bridge_keeps_its_subnet() {
        let r = parse_routes(ROUTES);
        let s = pick_subnet("x", "berth-x", &r).unwrap();
        assert_eq!(s.network, Ipv4Addr::new(10, 213, 7, 0));
        assert_eq!(s.gateway, Ipv4Addr::new(10, 213, 7, 1));
    }

    #[test]
    fn taken_slots_are_skipped() {
        let mut r = parse_routes(ROUTES);
        let first = pick_subnet("y", "berth-y", &[]).unwrap();
        r.push(Route {
            iface: "berth-other".into(),
            dest: first.network,
            mask: 0xffff_ff00,
        });
        let second = pick_subnet("y", "berth-y", &r).unwrap();
        assert_ne!(first, second);
        // A wider route covering the whole pool leaves no slot.
        r.push(Route {
            iface: "wide".into(),
            dest: Ipv4Addr::new(10, 0, 0, 0),
            mask: 0xff00_0000,
        });
        assert_eq!(pick_subnet("y", "berth-y", &r), None);
    }
}
