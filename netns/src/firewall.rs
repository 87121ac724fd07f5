//! NAT egress and isolation between bridges, as one nftables table of our
//! own (family inet), replaced atomically.
//!
//! [`ruleset`] turns a [`Policy`] into rules (pure, unit-tested);
//! [`Firewall::apply`] sends them as one nf_tables batch that recreates the
//! table: add table, delete table, add table, chains, rules. The kernel
//! applies the batch as a single transaction, so the old rules stay in
//! force until the new ones replace them, and applying the same policy
//! twice gives the same table. Nothing outside our table is touched.
//!
//! Per bridge X of the policy:
//! - input (traffic from X to the host): accept established/related, ICMP
//!   echo requests to X's gateway address and the allowed (proto, port)
//!   pairs; drop the rest.
//! - forward: accept established/related from X, X to X, and X to each
//!   bridge in `allow_to`; drop X to any other Berth bridge.
//! - postrouting (with `uplink_masquerade`): masquerade X's subnet leaving
//!   through any interface that is not a Berth bridge.
//!
//! Port forwards ([`Forward`]: a host port to a jail's address and port):
//! - prerouting and output (nat chains at priority -100, present only
//!   while there is a forward): a new connection to the host port on one of
//!   the host's own addresses (`fib daddr type local`) is sent to the jail
//!   (DNAT). Loopback addresses (127.0.0.0/8) are not forwarded: a
//!   connection to 127.0.0.1 DNATed to a jail would need `route_localnet`,
//!   which opens other holes. So a forward is reached on the host's other
//!   addresses: its uplink addresses and the bridges' gateway addresses,
//!   from the network or from the host itself.
//! - forward, after the per-bridge rules: into bridge X, accept
//!   established/related and the DNATed connections (`ct status dnat`) to
//!   a forwarded jail address and port; drop every other new connection
//!   into X. These rules exist only while there is a forward: without
//!   one, new connections from a non-bridge interface into a bridge are
//!   left to the host's routing, as before forwards existed. A jail of
//!   another bridge that connects to a forwarded port is
//!   still dropped by its own bridge's isolation rule (unless `allow_to`
//!   lets it reach X): the vendor isolation holds through forwards too.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use crate::link::{check_subnet, mask_of, network_of};
use crate::name::{validate_ifname, validate_table_name};
use crate::nft::{
    self, BaseChain, Batch, CmpOp, Expr, CT_STATE_ESTABLISHED, CT_STATE_RELATED, IPS_DST_NAT,
    NFPROTO_IPV4, NFT_CT_STATE, NFT_CT_STATUS, NFT_META_IIFNAME, NFT_META_L4PROTO,
    NFT_META_NFPROTO, NFT_META_OIFNAME, NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER,
    NFT_REG_1, NFT_REG_2, NF_ACCEPT, NF_DROP, NF_INET_FORWARD, NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT,
    NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING, RTN_LOCAL,
};
use crate::Error;

/// A transport protocol for host port exceptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Everything our table enforces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub bridges: Vec<BridgePolicy>,
    /// Masquerade each bridge's subnet on its way out of the host.
    pub uplink_masquerade: bool,
}

/// A host port forwarded to a port of a jail on one of the bridges. Given
/// beside a [`Policy`] to [`Firewall::apply_with_forwards`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Forward {
    pub proto: Proto,
    pub host_port: u16,
    /// The jail's address: inside the subnet of a bridge of the policy.
    pub jail: Ipv4Addr,
    pub jail_port: u16,
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {}:{}",
            self.proto, self.host_port, self.jail, self.jail_port
        )
    }
}

/// The rules for one bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgePolicy {
    pub bridge: String,
    /// The subnet's address (host bits are ignored).
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// Host services reachable from the bridge (e.g. DNS on the gateway).
    pub host_ports: Vec<(Proto, u16)>,
    /// Other bridges of the policy this bridge may open connections to.
    pub allow_to: Vec<String>,
}

/// The base chains of our table.
pub const INPUT: BaseChain = BaseChain {
    name: "input",
    kind: "filter",
    hook: NF_INET_LOCAL_IN,
    priority: 0,
};
pub const FORWARD: BaseChain = BaseChain {
    name: "forward",
    kind: "filter",
    hook: NF_INET_FORWARD,
    priority: 0,
};
/// Source NAT priority (`NF_IP_PRI_NAT_SRC`).
pub const POSTROUTING: BaseChain = BaseChain {
    name: "postrouting",
    kind: "nat",
    hook: NF_INET_POST_ROUTING,
    priority: 100,
};

/// Destination NAT priority (`NF_IP_PRI_NAT_DST`), for connections that
/// arrive from the network.
pub const PREROUTING: BaseChain = BaseChain {
    name: "prerouting",
    kind: "nat",
    hook: NF_INET_PRE_ROUTING,
    priority: -100,
};
/// The same for connections the host itself opens.
pub const OUTPUT: BaseChain = BaseChain {
    name: "output",
    kind: "nat",
    hook: NF_INET_LOCAL_OUT,
    priority: -100,
};

/// One condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Iif(String),
    Oif(String),
    OifNot(String),
    CtEstablishedRelated,
    Ipv4Saddr(Ipv4Addr, u8),
    Ipv4Daddr(Ipv4Addr),
    IcmpEchoRequest,
    Dport(Proto, u16),
    /// The destination is an address of this host.
    FibDaddrLocal,
    /// IPv4, destination outside this network.
    Ipv4DaddrNotIn(Ipv4Addr, u8),
    /// The connection was DNATed.
    CtStatusDnat,
}

/// What a rule does when all its conditions hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Drop,
    Masquerade,
    /// Destination NAT to this address and port.
    Dnat(Ipv4Addr, u16),
}

/// One rule of our table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: &'static str,
    pub matches: Vec<Match>,
    pub action: Action,
}

impl fmt::Display for Rule {
    /// nft(8)-like text, for logs, errors and tests.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.chain)?;
        for m in &self.matches {
            match m {
                Match::Iif(n) => write!(f, " iifname \"{n}\"")?,
                Match::Oif(n) => write!(f, " oifname \"{n}\"")?,
                Match::OifNot(n) => write!(f, " oifname != \"{n}\"")?,
                Match::CtEstablishedRelated => write!(f, " ct state established,related")?,
                Match::Ipv4Saddr(a, p) => write!(f, " ip saddr {a}/{p}")?,
                Match::Ipv4Daddr(a) => write!(f, " ip daddr {a}")?,
                Match::IcmpEchoRequest => write!(f, " icmp type echo-request")?,
                Match::Dport(p, port) => write!(f, " {p} dport {port}")?,
                Match::FibDaddrLocal => write!(f, " fib daddr type local")?,
                Match::Ipv4DaddrNotIn(a, p) => write!(f, " ip daddr != {a}/{p}")?,
                Match::CtStatusDnat => write!(f, " ct status dnat")?,
            }
        }
        match self.action {
            Action::Accept => f.write_str(" accept"),
            Action::Drop => f.write_str(" drop"),
            Action::Masquerade => f.write_str(" masquerade"),
            Action::Dnat(a, p) => write!(f, " dnat ip to {a}:{p}"),
        }
    }
}

fn ifname_data(name: &str) -> Vec<u8> {
    // meta iifname/oifname load IFNAMSIZ (16) bytes, NUL padded.
    let mut v = name.as_bytes().to_vec();
    v.resize(16, 0);
    v
}

/// IPv4 packets whose address at header `offset` (12 source, 16
/// destination), masked to `prefix`, compares with `op` to `net`'s network.
fn ipv4_in_net(offset: u32, net: Ipv4Addr, prefix: u8, op: CmpOp) -> Vec<Expr> {
    let mut v = nfproto_ipv4().to_vec();
    v.push(Expr::Payload {
        base: NFT_PAYLOAD_NETWORK_HEADER,
        offset,
        len: 4,
        dreg: NFT_REG_1,
    });
    v.push(Expr::Bitwise {
        sreg: NFT_REG_1,
        dreg: NFT_REG_1,
        mask: mask_of(prefix).to_be_bytes().to_vec(),
        xor: vec![0; 4],
    });
    v.push(Expr::Cmp {
        sreg: NFT_REG_1,
        op,
        data: network_of(net, prefix).octets().to_vec(),
    });
    v
}

fn nfproto_ipv4() -> [Expr; 2] {
    [
        Expr::Meta {
            key: NFT_META_NFPROTO,
            dreg: NFT_REG_1,
        },
        Expr::Cmp {
            sreg: NFT_REG_1,
            op: CmpOp::Eq,
            data: vec![NFPROTO_IPV4],
        },
    ]
}

fn l4proto(proto: u8) -> [Expr; 2] {
    [
        Expr::Meta {
            key: NFT_META_L4PROTO,
            dreg: NFT_REG_1,
        },
        Expr::Cmp {
            sreg: NFT_REG_1,
            op: CmpOp::Eq,
            data: vec![proto],
        },
    ]
}

impl Match {
    /// The expressions that implement this condition.
    pub fn exprs(&self) -> Vec<Expr> {
        let ifname = |key, op, name: &str| {
            vec![
                Expr::Meta {
                    key,
                    dreg: NFT_REG_1,
                },
                Expr::Cmp {
                    sreg: NFT_REG_1,
                    op,
                    data: ifname_data(name),
                },
            ]
        };
        match self {
            Match::Iif(n) => ifname(NFT_META_IIFNAME, CmpOp::Eq, n),
            Match::Oif(n) => ifname(NFT_META_OIFNAME, CmpOp::Eq, n),
            Match::OifNot(n) => ifname(NFT_META_OIFNAME, CmpOp::Neq, n),
            Match::CtEstablishedRelated => {
                let bits = CT_STATE_ESTABLISHED | CT_STATE_RELATED;
                vec![
                    Expr::Ct {
                        key: NFT_CT_STATE,
                        dreg: NFT_REG_1,
                    },
                    // The ct state is a host-endian u32 bit set.
                    Expr::Bitwise {
                        sreg: NFT_REG_1,
                        dreg: NFT_REG_1,
                        mask: bits.to_ne_bytes().to_vec(),
                        xor: vec![0; 4],
                    },
                    Expr::Cmp {
                        sreg: NFT_REG_1,
                        op: CmpOp::Neq,
                        data: vec![0; 4],
                    },
                ]
            }
            // Source address at offset 12 of the IPv4 header.
            Match::Ipv4Saddr(net, prefix) => ipv4_in_net(12, *net, *prefix, CmpOp::Eq),
            Match::Ipv4Daddr(a) => {
                let mut v = nfproto_ipv4().to_vec();
                v.push(Expr::Payload {
                    base: NFT_PAYLOAD_NETWORK_HEADER,
                    offset: 16,
                    len: 4,
                    dreg: NFT_REG_1,
                });
                v.push(Expr::Cmp {
                    sreg: NFT_REG_1,
                    op: CmpOp::Eq,
                    data: a.octets().to_vec(),
                });
                v
            }
            Match::IcmpEchoRequest => {
                let mut v = l4proto(1).to_vec();
                v.push(Expr::Payload {
                    base: NFT_PAYLOAD_TRANSPORT_HEADER,
                    offset: 0,
                    len: 1,
                    dreg: NFT_REG_1,
                });
                v.push(Expr::Cmp {
                    sreg: NFT_REG_1,
                    op: CmpOp::Eq,
                    data: vec![8],
                });
                v
            }
            Match::Dport(proto, port) => {
                let mut v = l4proto(proto.number()).to_vec();
                v.push(Expr::Payload {
                    base: NFT_PAYLOAD_TRANSPORT_HEADER,
                    offset: 2,
                    len: 2,
                    dreg: NFT_REG_1,
                });
                v.push(Expr::Cmp {
                    sreg: NFT_REG_1,
                    op: CmpOp::Eq,
                    data: port.to_be_bytes().to_vec(),
                });
                v
            }
            Match::FibDaddrLocal => vec![
                Expr::FibDaddrType { dreg: NFT_REG_1 },
                // The address type is a host-endian u32.
                Expr::Cmp {
                    sreg: NFT_REG_1,
                    op: CmpOp::Eq,
                    data: RTN_LOCAL.to_ne_bytes().to_vec(),
                },
            ],
            // Destination address at offset 16.
            Match::Ipv4DaddrNotIn(net, prefix) => ipv4_in_net(16, *net, *prefix, CmpOp::Neq),
            Match::CtStatusDnat => vec![
                Expr::Ct {
                    key: NFT_CT_STATUS,
                    dreg: NFT_REG_1,
                },
                // The ct status is a host-endian u32 bit set.
                Expr::Bitwise {
                    sreg: NFT_REG_1,
                    dreg: NFT_REG_1,
                    mask: IPS_DST_NAT.to_ne_bytes().to_vec(),
                    xor: vec![0; 4],
                },
                Expr::Cmp {
                    sreg: NFT_REG_1,
                    op: CmpOp::Neq,
                    data: vec![0; 4],
                },
            ],
        }
    }
}

impl Rule {
    /// The expressions of the whole rule, verdict last.
    pub fn exprs(&self) -> Vec<Expr> {
        let mut v: Vec<Expr> = self.matches.iter().flat_map(Match::exprs).collect();
        match self.action {
            Action::Accept => v.push(Expr::Verdict(NF_ACCEPT)),
            Action::Drop => v.push(Expr::Verdict(NF_DROP)),
            Action::Masquerade => v.push(Expr::Masq),
            Action::Dnat(addr, port) => {
                v.push(Expr::Immediate {
                    dreg: NFT_REG_1,
                    data: addr.octets().to_vec(),
                });
                v.push(Expr::Immediate {
                    dreg: NFT_REG_2,
                    data: port.to_be_bytes().to_vec(),
                });
                v.push(Expr::Dnat {
                    addr_reg: NFT_REG_1,
                    port_reg: NFT_REG_2,
                });
            }
        }
        v
    }
}

fn rule(chain: &'static str, matches: Vec<Match>, action: Action) -> Rule {
    Rule {
        chain,
        matches,
        action,
    }
}

/// Checks a policy: valid unique bridge names, sane subnets, gateways inside
/// their subnets, `allow_to` naming bridges of the policy, nonzero ports,
/// forwards to an address on a bridge of the policy and no host port
/// forwarded twice (per protocol).
pub fn validate(table: &str, policy: &Policy) -> Result<(), Error> {
    let bad = |reason: String| Error::InvalidPolicy {
        table: table.to_string(),
        reason,
    };
    let mut names = BTreeSet::new();
    for b in &policy.bridges {
        validate_ifname(&b.bridge)?;
        if !names.insert(b.bridge.as_str()) {
            return Err(bad(format!("bridge {} appears twice", b.bridge)));
        }
        check_subnet(&format!("bridge {}", b.bridge), b.gateway, b.prefix_len)?;
        if network_of(b.subnet, b.prefix_len) != network_of(b.gateway, b.prefix_len) {
            return Err(bad(format!(
                "gateway {} of bridge {} is outside its subnet {}/{}",
                b.gateway, b.bridge, b.subnet, b.prefix_len
            )));
        }
        if let Some((p, _)) = b.host_ports.iter().find(|(_, port)| *port == 0) {
            return Err(bad(format!(
                "bridge {}: {p} port 0 cannot be allowed",
                b.bridge
            )));
        }
    }
    for b in &policy.bridges {
        if let Some(other) = b.allow_to.iter().find(|o| !names.contains(o.as_str())) {
            return Err(bad(format!(
                "bridge {} allows traffic to {other}, which is not a bridge of this policy",
                b.bridge
            )));
        }
    }
    Ok(())
}

/// Checks port forwards against a (valid) policy: nonzero ports, the jail's
/// address on a bridge of the policy (not its gateway or network address),
/// no host port forwarded twice per protocol.
pub fn validate_forwards(table: &str, policy: &Policy, forwards: &[Forward]) -> Result<(), Error> {
    let bad = |reason: String| Error::InvalidPolicy {
        table: table.to_string(),
        reason,
    };
    let mut host_ports = BTreeSet::new();
    for f in forwards {
        if f.host_port == 0 || f.jail_port == 0 {
            return Err(bad(format!("forward {f}: port 0 cannot be forwarded")));
        }
        match bridge_of(policy, f.jail) {
            None => {
                return Err(bad(format!(
                    "forward {f}: {} is on no bridge of this policy",
                    f.jail
                )))
            }
            Some(b) if f.jail == b.gateway || f.jail == network_of(b.subnet, b.prefix_len) => {
                return Err(bad(format!(
                    "forward {f}: {} is not a jail address of bridge {}",
                    f.jail, b.bridge
                )))
            }
            Some(_) => {}
        }
        if !host_ports.insert((f.proto, f.host_port)) {
            return Err(bad(format!(
                "{} host port {} is forwarded twice",
                f.proto, f.host_port
            )));
        }
    }
    Ok(())
}

/// The bridge of the policy whose subnet holds `addr`.
fn bridge_of(policy: &Policy, addr: Ipv4Addr) -> Option<&BridgePolicy> {
    policy
        .bridges
        .iter()
        .find(|b| network_of(addr, b.prefix_len) == network_of(b.subnet, b.prefix_len))
}

/// The rules of a (validated) policy, in chain order.
pub fn ruleset(policy: &Policy) -> Vec<Rule> {
    ruleset_with_forwards(policy, &[])
}

/// The rules of a (validated) policy and its (validated) port forwards, in
/// chain order.
pub fn ruleset_with_forwards(policy: &Policy, forwards: &[Forward]) -> Vec<Rule> {
    use Action::*;
    use Match::*;
    let mut rules = Vec::new();
    for b in &policy.bridges {
        let x = || Iif(b.bridge.clone());
        rules.push(rule("input", vec![x(), CtEstablishedRelated], Accept));
        rules.push(rule(
            "input",
            vec![x(), Ipv4Daddr(b.gateway), IcmpEchoRequest],
            Accept,
        ));
        for (proto, port) in &b.host_ports {
            rules.push(rule("input", vec![x(), Dport(*proto, *port)], Accept));
        }
        rules.push(rule("input", vec![x()], Drop));
    }
    for b in &policy.bridges {
        let x = || Iif(b.bridge.clone());
        rules.push(rule("forward", vec![x(), CtEstablishedRelated], Accept));
        rules.push(rule("forward", vec![x(), Oif(b.bridge.clone())], Accept));
        for other in &policy.bridges {
            if other.bridge == b.bridge {
                continue;
            }
            let action = if b.allow_to.contains(&other.bridge) {
                Accept
            } else {
                Drop
            };
            rules.push(rule(
                "forward",
                vec![x(), Oif(other.bridge.clone())],
                action,
            ));
        }
    }
    if !forwards.is_empty() {
        // Into each bridge from elsewhere (the per-bridge rules above
        // decided traffic from bridges): replies and forwarded connections
        // only.
        for b in &policy.bridges {
            let x = || Oif(b.bridge.clone());
            rules.push(rule("forward", vec![x(), CtEstablishedRelated], Accept));
            for f in forwards {
                if bridge_of(policy, f.jail).map(|o| &o.bridge) != Some(&b.bridge) {
                    continue;
                }
                rules.push(rule(
                    "forward",
                    vec![
                        x(),
                        CtStatusDnat,
                        Ipv4Daddr(f.jail),
                        Dport(f.proto, f.jail_port),
                    ],
                    Accept,
                ));
            }
            rules.push(rule("forward", vec![x()], Drop));
        }
        let lo = Ipv4Addr::new(127, 0, 0, 0);
        for chain in [PREROUTING.name, OUTPUT.name] {
            for f in forwards {
                rules.push(rule(
                    chain,
                    vec![
                        Ipv4DaddrNotIn(lo, 8),
                        FibDaddrLocal,
                        Dport(f.proto, f.host_port),
                    ],
                    Dnat(f.jail, f.jail_port),
                ));
            }
        }
    }
    if policy.uplink_masquerade {
        for b in &policy.bridges {
            let mut m = vec![Ipv4Saddr(b.subnet, b.prefix_len)];
            m.extend(policy.bridges.iter().map(|o| OifNot(o.bridge.clone())));
            rules.push(rule("postrouting", m, Masquerade));
        }
    }
    rules
}

/// The batch that replaces `table`'s content with `rules`.
pub fn replace_batch(table: &str, rules: &[Rule]) -> Batch {
    let mut batch = Batch::new();
    // Adding first makes the delete succeed whether or not the table exists.
    batch.add_table(table);
    batch.del_table(table);
    batch.add_table(table);
    batch.add_chain(table, &INPUT);
    batch.add_chain(table, &FORWARD);
    for chain in [&PREROUTING, &OUTPUT, &POSTROUTING] {
        if rules.iter().any(|r| r.chain == chain.name) {
            batch.add_chain(table, chain);
        }
    }
    for r in rules {
        batch.add_rule(table, r.chain, &r.exprs(), format!("rule {r}"));
    }
    batch
}

/// Our nftables table.
#[derive(Debug, Clone)]
pub struct Firewall {
    table: String,
}

impl Firewall {
    /// A handle on table `table` (family inet); nothing is sent yet. The
    /// name is checked by [`Firewall::apply`] and [`Firewall::remove`].
    pub fn new(table: &str) -> Firewall {
        Firewall {
            table: table.to_string(),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Replaces the table's content with `policy`'s rules, atomically (one
    /// netlink batch). Idempotent. Blocking (a netlink round trip).
    pub fn apply(&self, policy: &Policy) -> Result<(), Error> {
        self.apply_with_forwards(policy, &[])
    }

    /// [`Firewall::apply`] with port forwards into the policy's bridges:
    /// the nat chains exist only while `forwards` is not empty.
    pub fn apply_with_forwards(&self, policy: &Policy, forwards: &[Forward]) -> Result<(), Error> {
        validate_table_name(&self.table)?;
        validate(&self.table, policy)?;
        validate_forwards(&self.table, policy, forwards)?;
        let rules = ruleset_with_forwards(policy, forwards);
        tracing::debug!(
            table = self.table,
            rules = rules.len(),
            "applying nftables policy"
        );
        nft::send_batch(&self.table, replace_batch(&self.table, &rules))?;
        tracing::info!(
            table = self.table,
            bridges = policy.bridges.len(),
            forwards = forwards.len(),
            "applied nftables policy"
        );
        Ok(())
    }

    /// Deletes the table and everything in it; `Ok` if it is absent.
    pub fn remove(&self) -> Result<(), Error> {
        validate_table_name(&self.table)?;
        let mut batch = Batch::new();
        batch.add_table(&self.table);
        batch.del_table(&self.table);
        nft::send_batch(&self.table, batch)?;
        tracing::info!(table = self.table, "removed nftables table");
        Ok(())
    }

    /// Whether the table exists.
    pub fn exists(&self) -> Result<bool, Error> {
        validate_table_name(&self.table)?;
        nft::table_exists(&self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bp(name: &str, third: u8, allow_to: &[&str], ports: &[(Proto, u16)]) -> BridgePolicy {
        BridgePolicy {
            bridge: name.into(),
            subnet: Ipv4Addr::new(10, 88, third, 0),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 88, third, 1),
            host_ports: ports.to_vec(),
            allow_to: allow_to.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn text(p: &Policy) -> Vec<String> {
        ruleset(p).iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn two_bridges_isolated_with_dns_and_nat() {
        let p = Policy {
            bridges: vec![
                bp("br-a", 1, &[], &[(Proto::Udp, 53), (Proto::Tcp, 53)]),
                bp("br-b", 2, &["br-a"], &[]),
            ],
            uplink_masquerade: true,
        };
        validate("berth", &p).unwrap();
        assert_eq!(
            text(&p),
            vec![
                r#"input: iifname "br-a" ct state established,related accept"#,
                r#"input: iifname "br-a" ip daddr 10.88.1.1 icmp type echo-request accept"#,
                r#"input: iifname "br-a" udp dport 53 accept"#,
                r#"input: iifname "br-a" tcp dport 53 accept"#,
                r#"input: iifname "br-a" drop"#,
                r#"input: iifname "br-b" ct state established,related accept"#,
                r#"input: iifname "br-b" ip daddr 10.88.2.1 icmp type echo-request accept"#,
                r#"input: iifname "br-b" drop"#,
                r#"forward: iifname "br-a" ct state established,related accept"#,
                r#"forward: iifname "br-a" oifname "br-a" accept"#,
                r#"forward: iifname "br-a" oifname "br-b" drop"#,
                r#"forward: iifname "br-b" ct state established,related accept"#,
                r#"forward: iifname "br-b" oifname "br-b" accept"#,
                r#"forward: iifname "br-b" oifname "br-a" accept"#,
                r#"postrouting: ip saddr 10.88.1.0/24 oifname != "br-a" oifname != "br-b" masquerade"#,
                r#"postrouting: ip saddr 10.88.2.0/24 oifname != "br-a" oifname != "br-b" masquerade"#,
            ]
        );
    }

    #[test]
    fn no_masquerade_means_no_nat_chain() {
        let p = Policy {
            bridges: vec![bp("br-a", 1, &[], &[])],
            uplink_masquerade: false,
        };
        let rules = ruleset(&p);
        assert!(rules.iter().all(|r| r.chain != "postrouting"));
        let b = replace_batch("t", &rules);
        // add, del, add table; input and forward chains; the rules.
        assert_eq!(b.len(), 3 + 2 + rules.len());
        let with_nat = Policy {
            uplink_masquerade: true,
            ..p
        };
        let rules = ruleset(&with_nat);
        assert_eq!(replace_batch("t", &rules).len(), 3 + 3 + rules.len());
    }

    #[test]
    fn invalid_policies_are_refused() {
        let cases = [
            (vec![bp("br-a", 1, &["br-x"], &[])], "br-x"),
            (
                vec![bp("br-a", 1, &[], &[]), bp("br-a", 2, &[], &[])],
                "twice",
            ),
            (vec![bp("br-a", 1, &[], &[(Proto::Tcp, 0)])], "port 0"),
            (
                vec![bp("this-name-is-too-long", 1, &[], &[])],
                "longer than 15",
            ),
        ];
        for (bridges, needle) in cases {
            let p = Policy {
                bridges,
                uplink_masquerade: true,
            };
            let err = validate("berth", &p).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
        let mut b = bp("br-a", 1, &[], &[]);
        b.gateway = Ipv4Addr::new(10, 99, 0, 1);
        let err = validate(
            "berth",
            &Policy {
                bridges: vec![b],
                uplink_masquerade: false,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("outside its subnet"), "{err}");
    }

    #[test]
    fn match_expressions() {
        let e = Match::Dport(Proto::Tcp, 8080).exprs();
        assert_eq!(
            e,
            vec![
                Expr::Meta {
                    key: NFT_META_L4PROTO,
                    dreg: NFT_REG_1
                },
                Expr::Cmp {
                    sreg: NFT_REG_1,
                    op: CmpOp::Eq,
                    data: vec![6]
                },
                Expr::Payload {
                    base: NFT_PAYLOAD_TRANSPORT_HEADER,
                    offset: 2,
                    len: 2,
                    dreg: NFT_REG_1
                },
                Expr::Cmp {
                    sreg: NFT_REG_1,
                    op: CmpOp::Eq,
                    data: vec![0x1f, 0x90]
                },
            ]
        );
        let e = Match::Ipv4Saddr(Ipv4Addr::new(10, 88, 1, 77), 24).exprs();
        assert_eq!(
            e[3],
            Expr::Bitwise {
                sreg: NFT_REG_1,
                dreg: NFT_REG_1,
                mask: vec![255, 255, 255, 0],
                xor: vec![0; 4]
            }
        );
        assert_eq!(
            e[4],
            Expr::Cmp {
                sreg: NFT_REG_1,
                op: CmpOp::Eq,
                data: vec![10, 88, 1, 0]
            }
        );
        let e = Match::OifNot("br-a".into()).exprs();
        assert_eq!(
            e[1],
            Expr::Cmp {
                sreg: NFT_REG_1,
                op: CmpOp::Neq,
                data: b"br-a\0\0\0\0\0\0\0\0\0\0\0\0".to_vec()
            }
        );
        let r = rule("input", vec![Match::Iif("x".into())], Action::Drop);
        assert_eq!(r.exprs().last(), Some(&Expr::Verdict(NF_DROP)));
    }

    fn fwd(proto: Proto, host_port: u16, jail: [u8; 4], jail_port: u16) -> Forward {
        Forward {
            proto,
            host_port,
            jail: Ipv4Addr::from(jail),
            jail_port,
        }
    }

    #[test]
    fn forwards_dnat_on_local_addresses_and_open_only_their_port() {
        let p = Policy {
            bridges: vec![bp("br-a", 1, &[], &[]), bp("br-b", 2, &[], &[])],
            uplink_masquerade: false,
        };
        let f = [fwd(Proto::Tcp, 8080, [10, 88, 1, 5], 80)];
        validate_forwards("berth", &p, &f).unwrap();
        let all = ruleset_with_forwards(&p, &f);
        let text: Vec<String> = all.iter().map(|r| r.to_string()).collect();
        // The per-bridge rules stay first and unchanged: br-b's jails are
        // dropped on their way to br-a before any forward rule is seen.
        assert_eq!(text[..8], super::tests::text(&p)[..8]);
        assert_eq!(text.len(), super::tests::text(&p).len() + 7);
        assert!(text.contains(&r#"forward: iifname "br-b" oifname "br-a" drop"#.to_string()));
        assert_eq!(
            text[text.len() - 7..],
            [
                r#"forward: oifname "br-a" ct state established,related accept"#,
                r#"forward: oifname "br-a" ct status dnat ip daddr 10.88.1.5 tcp dport 80 accept"#,
                r#"forward: oifname "br-a" drop"#,
                r#"forward: oifname "br-b" ct state established,related accept"#,
                r#"forward: oifname "br-b" drop"#,
                "prerouting: ip daddr != 127.0.0.0/8 fib daddr type local tcp dport 8080 dnat ip to 10.88.1.5:80",
                "output: ip daddr != 127.0.0.0/8 fib daddr type local tcp dport 8080 dnat ip to 10.88.1.5:80",
            ]
        );
        // The DNAT puts the address and the port in two registers.
        let dnat = all.last().unwrap().exprs();
        assert_eq!(
            dnat[dnat.len() - 3..],
            [
                Expr::Immediate {
                    dreg: NFT_REG_1,
                    data: vec![10, 88, 1, 5]
                },
                Expr::Immediate {
                    dreg: NFT_REG_2,
                    data: vec![0, 80]
                },
                Expr::Dnat {
                    addr_reg: NFT_REG_1,
                    port_reg: NFT_REG_2
                },
            ]
        );
        // nat chains only with forwards.
        assert_eq!(
            replace_batch("t", &all).len(),
            3 + 2 + 2 + all.len(),
            "input, forward, prerouting, output"
        );
        assert!(ruleset(&p).iter().all(|r| r.chain != "prerouting"));
    }

    #[test]
    fn invalid_forwards_are_refused() {
        let p = Policy {
            bridges: vec![bp("br-a", 1, &[], &[])],
            uplink_masquerade: true,
        };
        let cases = [
            (
                vec![
                    fwd(Proto::Tcp, 8080, [10, 88, 1, 5], 80),
                    fwd(Proto::Tcp, 8080, [10, 88, 1, 6], 81),
                ],
                "tcp host port 8080 is forwarded twice",
            ),
            (vec![fwd(Proto::Udp, 0, [10, 88, 1, 5], 80)], "port 0"),
            (vec![fwd(Proto::Udp, 53, [10, 88, 1, 5], 0)], "port 0"),
            (
                vec![fwd(Proto::Tcp, 80, [10, 99, 1, 5], 80)],
                "on no bridge",
            ),
            (
                vec![fwd(Proto::Tcp, 80, [10, 88, 1, 1], 80)],
                "not a jail address",
            ),
        ];
        for (f, needle) in cases {
            let err = validate_forwards("berth", &p, &f).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
        // The same port over two protocols is two forwards.
        validate_forwards(
            "berth",
            &p,
            &[
                fwd(Proto::Tcp, 53, [10, 88, 1, 5], 53),
                fwd(Proto::Udp, 53, [10, 88, 1, 5], 53),
            ],
        )
        .unwrap();
    }

    #[test]
    fn bad_table_name_is_refused_before_any_syscall() {
        let err = Firewall::new("bad name")
            .apply(&Policy::default())
            .unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{err}");
        assert!(Firewall::new("").remove().is_err());
    }
}
