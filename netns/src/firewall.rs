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

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use crate::link::{check_subnet, mask_of, network_of};
use crate::name::{validate_ifname, validate_table_name};
use crate::nft::{
    self, BaseChain, Batch, CmpOp, Expr, CT_STATE_ESTABLISHED, CT_STATE_RELATED, NFPROTO_IPV4,
    NFT_CT_STATE, NFT_META_IIFNAME, NFT_META_L4PROTO, NFT_META_NFPROTO, NFT_META_OIFNAME,
    NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER, NFT_REG_1, NF_ACCEPT, NF_DROP,
    NF_INET_FORWARD, NF_INET_LOCAL_IN, NF_INET_POST_ROUTING,
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
}

/// What a rule does when all its conditions hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Drop,
    Masquerade,
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
            }
        }
        f.write_str(match self.action {
            Action::Accept => " accept",
            Action::Drop => " drop",
            Action::Masquerade => " masquerade",
        })
    }
}

fn ifname_data(name: &str) -> Vec<u8> {
    // meta iifname/oifname load IFNAMSIZ (16) bytes, NUL padded.
    let mut v = name.as_bytes().to_vec();
    v.resize(16, 0);
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
            Match::Ipv4Saddr(net, prefix) => {
                let mut v = nfproto_ipv4().to_vec();
                v.push(Expr::Payload {
                    base: NFT_PAYLOAD_NETWORK_HEADER,
                    offset: 12,
                    len: 4,
                    dreg: NFT_REG_1,
                });
                v.push(Expr::Bitwise {
                    sreg: NFT_REG_1,
                    dreg: NFT_REG_1,
                    mask: mask_of(*prefix).to_be_bytes().to_vec(),
                    xor: vec![0; 4],
                });
                v.push(Expr::Cmp {
                    sreg: NFT_REG_1,
                    op: CmpOp::Eq,
                    data: network_of(*net, *prefix).octets().to_vec(),
                });
                v
            }
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
        }
    }
}

impl Rule {
    /// The expressions of the whole rule, verdict last.
    pub fn exprs(&self) -> Vec<Expr> {
        let mut v: Vec<Expr> = self.matches.iter().flat_map(Match::exprs).collect();
        v.push(match self.action {
            Action::Accept => Expr::Verdict(NF_ACCEPT),
            Action::Drop => Expr::Verdict(NF_DROP),
            Action::Masquerade => Expr::Masq,
        });
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
/// their subnets, `allow_to` naming bridges of the policy, nonzero ports.
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

/// The rules of a (validated) policy, in chain order.
pub fn ruleset(policy: &Policy) -> Vec<Rule> {
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
    if rules.iter().any(|r| r.chain == POSTROUTING.name) {
        batch.add_chain(table, &POSTROUTING);
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
        validate_table_name(&self.table)?;
        validate(&self.table, policy)?;
        let rules = ruleset(policy);
        tracing::debug!(
            table = self.table,
            rules = rules.len(),
            "applying nftables policy"
        );
        nft::send_batch(&self.table, replace_batch(&self.table, &rules))?;
        tracing::info!(
            table = self.table,
            bridges = policy.bridges.len(),
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

    #[test]
    fn bad_table_name_is_refused_before_any_syscall() {
        let err = Firewall::new("bad name")
            .apply(&Policy::default())
            .unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{err}");
        assert!(Firewall::new("").remove().is_err());
    }
}
