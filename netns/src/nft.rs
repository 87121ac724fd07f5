//! The nf_tables netlink wire format and socket, for the few messages Berth
//! needs: tables, base chains and rules built from a handful of expressions.
//!
//! Message layout (include/uapi/linux/netfilter/nf_tables.h and
//! nfnetlink.h): every message is an `nlmsghdr`, an `nfgenmsg` (family,
//! version, resource id) and attributes (`nlattr`: length, type, value padded
//! to 4 bytes; integers big-endian). Changes travel in one batch framed by
//! `NFNL_MSG_BATCH_BEGIN`/`END`: the kernel applies all of it or nothing
//! (one transaction). It reports an error for every member that failed; we
//! ask an ack (`NLM_F_ACK`) of the last member only, and the kernel delivers
//! all answers in member order once the batch is processed, so that ack (or
//! error) closes the exchange. Acking every member would flood the socket's
//! receive buffer on large batches (lost acks, ENOBUFS).
//!
//! Built here rather than taken from the `rustables` crate (pure-Rust
//! nftables over netlink) because that crate is GPL-3.0-or-later, which
//! Berth's Apache-2.0 license cannot take in; the few messages we need are
//! small.
//!
//! Encoding is pure and unit-tested; [`send_batch`] and [`table_exists`] are
//! the only code that talks to the kernel.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, Ordering};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{setsockopt, sockopt};

use crate::Error;

// nlmsghdr flags and types (netlink(7)).
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
const NLA_F_NESTED: u16 = 0x8000;

// nfnetlink.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

/// Protocol families (`NFPROTO_*`).
pub const NFPROTO_INET: u8 = 1;
pub const NFPROTO_IPV4: u8 = 2;

// nf_tables message types.
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;

// Attributes.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_FLAGS: u16 = 7;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;

/// `NFT_REG_VERDICT` and the first 128-bit data register `NFT_REG_1`.
const NFT_REG_VERDICT: u32 = 0;
pub const NFT_REG_1: u32 = 1;
/// The second 128-bit data register `NFT_REG_2`.
pub const NFT_REG_2: u32 = 2;

/// Netfilter hooks (`NF_INET_*`).
pub const NF_INET_PRE_ROUTING: u32 = 0;
pub const NF_INET_LOCAL_IN: u32 = 1;
pub const NF_INET_FORWARD: u32 = 2;
pub const NF_INET_LOCAL_OUT: u32 = 3;
pub const NF_INET_POST_ROUTING: u32 = 4;

/// Verdicts (`NF_DROP`, `NF_ACCEPT`).
pub const NF_DROP: u32 = 0;
pub const NF_ACCEPT: u32 = 1;

/// Meta keys (`NFT_META_*`).
pub const NFT_META_IIFNAME: u32 = 6;
pub const NFT_META_OIFNAME: u32 = 7;
pub const NFT_META_NFPROTO: u32 = 15;
pub const NFT_META_L4PROTO: u32 = 16;

/// Payload bases (`NFT_PAYLOAD_*_HEADER`).
pub const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

/// Conntrack key `NFT_CT_STATE` and its bits (`NF_CT_STATE_BIT`).
pub const NFT_CT_STATE: u32 = 0;
pub const CT_STATE_ESTABLISHED: u32 = 1 << 1;
pub const CT_STATE_RELATED: u32 = 1 << 2;

/// Conntrack key `NFT_CT_STATUS` and its destination-NAT bit
/// (`IPS_DST_NAT`, set once a connection was DNATed).
pub const NFT_CT_STATUS: u32 = 2;
pub const IPS_DST_NAT: u32 = 1 << 5;

/// NAT types (`NFT_NAT_*`) and the range flag saying the port registers
/// are given (`NF_NAT_RANGE_PROTO_SPECIFIED`).
pub const NFT_NAT_DNAT: u32 = 1;
pub const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 1 << 1;

/// fib lookups: the result `NFT_FIB_RESULT_ADDRTYPE`, keyed on the
/// destination address (`NFTA_FIB_F_DADDR`); a local address has type
/// `RTN_LOCAL`.
pub const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
pub const NFTA_FIB_F_DADDR: u32 = 1 << 1;
pub const RTN_LOCAL: u32 = 2;

/// Comparison operators (`NFT_CMP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

/// The nf_tables expressions Berth uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Load a meta key into a register.
    Meta { key: u32, dreg: u32 },
    /// Compare a register with data.
    Cmp { sreg: u32, op: CmpOp, data: Vec<u8> },
    /// Load packet bytes into a register.
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `reg = (reg & mask) ^ xor`.
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// Load a conntrack key into a register.
    Ct { key: u32, dreg: u32 },
    /// Set the verdict.
    Verdict(u32),
    /// Source NAT to the outgoing interface's address.
    Masq,
    /// Load a constant into a data register.
    Immediate { dreg: u32, data: Vec<u8> },
    /// Destination NAT (IPv4) to the address in `addr_reg` and the port in
    /// `port_reg` (the port flagged as specified).
    Dnat { addr_reg: u32, port_reg: u32 },
    /// A routing lookup of the destination address whose address type
    /// (a host-endian u32, e.g. [`RTN_LOCAL`]) goes to `dreg`.
    FibDaddrType { dreg: u32 },
}

impl Expr {
    fn name(&self) -> &'static str {
        match self {
            Expr::Meta { .. } => "meta",
            Expr::Cmp { .. } => "cmp",
            Expr::Payload { .. } => "payload",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Ct { .. } => "ct",
            Expr::Verdict(_) => "immediate",
            Expr::Masq => "masq",
            Expr::Immediate { .. } => "immediate",
            Expr::Dnat { .. } => "nat",
            Expr::FibDaddrType { .. } => "fib",
        }
    }
}

/// Appends netlink attributes to a message buffer.
struct Attrs<'a>(&'a mut Vec<u8>);

impl Attrs<'_> {
    fn put(&mut self, ty: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(value);
        pad(self.0);
    }

    fn put_str(&mut self, ty: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(ty, &v);
    }

    fn put_be32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    fn nested(&mut self, ty: u16, f: impl FnOnce(&mut Attrs<'_>)) {
        let start = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        f(&mut Attrs(self.0));
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.0[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    fn expr(&mut self, e: &Expr) {
        self.nested(NFTA_LIST_ELEM, |a| {
            a.put_str(NFTA_EXPR_NAME, e.name());
            if matches!(e, Expr::Masq) {
                return; // masq without flags or ranges has no data
            }
            a.nested(NFTA_EXPR_DATA, |a| match e {
                Expr::Meta { key, dreg } => {
                    a.put_be32(NFTA_META_DREG, *dreg);
                    a.put_be32(NFTA_META_KEY, *key);
                }
                Expr::Cmp { sreg, op, data } => {
                    a.put_be32(NFTA_CMP_SREG, *sreg);
                    a.put_be32(NFTA_CMP_OP, *op as u32);
                    a.nested(NFTA_CMP_DATA, |a| a.put(NFTA_DATA_VALUE, data));
                }
                Expr::Payload {
                    base,
                    offset,
                    len,
                    dreg,
                } => {
                    a.put_be32(NFTA_PAYLOAD_DREG, *dreg);
                    a.put_be32(NFTA_PAYLOAD_BASE, *base);
                    a.put_be32(NFTA_PAYLOAD_OFFSET, *offset);
                    a.put_be32(NFTA_PAYLOAD_LEN, *len);
                }
                Expr::Bitwise {
                    sreg,
                    dreg,
                    mask,
                    xor,
                } => {
                    a.put_be32(NFTA_BITWISE_SREG, *sreg);
                    a.put_be32(NFTA_BITWISE_DREG, *dreg);
                    a.put_be32(NFTA_BITWISE_LEN, mask.len() as u32);
                    a.nested(NFTA_BITWISE_MASK, |a| a.put(NFTA_DATA_VALUE, mask));
                    a.nested(NFTA_BITWISE_XOR, |a| a.put(NFTA_DATA_VALUE, xor));
                }
                Expr::Ct { key, dreg } => {
                    a.put_be32(NFTA_CT_DREG, *dreg);
                    a.put_be32(NFTA_CT_KEY, *key);
                }
                Expr::Verdict(code) => {
                    a.put_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                    a.nested(NFTA_IMMEDIATE_DATA, |a| {
                        a.nested(NFTA_DATA_VERDICT, |a| a.put_be32(NFTA_VERDICT_CODE, *code))
                    });
                }
                Expr::Masq => {}
                Expr::Immediate { dreg, data } => {
                    a.put_be32(NFTA_IMMEDIATE_DREG, *dreg);
                    a.nested(NFTA_IMMEDIATE_DATA, |a| a.put(NFTA_DATA_VALUE, data));
                }
                Expr::Dnat { addr_reg, port_reg } => {
                    a.put_be32(NFTA_NAT_TYPE, NFT_NAT_DNAT);
                    a.put_be32(NFTA_NAT_FAMILY, u32::from(NFPROTO_IPV4));
                    a.put_be32(NFTA_NAT_REG_ADDR_MIN, *addr_reg);
                    a.put_be32(NFTA_NAT_REG_PROTO_MIN, *port_reg);
                    a.put_be32(NFTA_NAT_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
                }
                Expr::FibDaddrType { dreg } => {
                    a.put_be32(NFTA_FIB_DREG, *dreg);
                    a.put_be32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
                    a.put_be32(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR);
                }
            });
        });
    }
}

/// Appends one message: `nlmsghdr`, `nfgenmsg`, then the attributes.
fn put_message(
    buf: &mut Vec<u8>,
    seq: u32,
    ty: u16,
    flags: u16,
    family: u8,
    res_id: u16,
    body: impl FnOnce(&mut Attrs<'_>),
) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]); // length, set below
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    buf.push(family);
    buf.push(0); // NFNETLINK_V0
    buf.extend_from_slice(&res_id.to_be_bytes());
    body(&mut Attrs(buf));
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// A base chain: its name, type (`filter`, `nat`), hook and priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseChain {
    pub name: &'static str,
    pub kind: &'static str,
    pub hook: u32,
    pub priority: i32,
}

/// One nf_tables transaction under construction.
#[derive(Debug)]
pub struct Batch {
    buf: Vec<u8>,
    next_seq: u32,
    begin_seq: u32,
    /// Sequence number and description of each member, for errors.
    members: Vec<(u32, String)>,
    /// Where the last member starts in `buf` (its flags get `NLM_F_ACK`).
    last_member: Option<usize>,
}

static SEQ: AtomicU32 = AtomicU32::new(1);

impl Batch {
    /// Starts a batch (writes `NFNL_MSG_BATCH_BEGIN`).
    pub fn new() -> Batch {
        // Distinct sequence numbers per batch make stray replies harmless.
        let begin_seq = SEQ.fetch_add(1 << 16, Ordering::Relaxed);
        let mut b = Batch {
            buf: Vec::new(),
            next_seq: begin_seq,
            begin_seq,
            members: Vec::new(),
            last_member: None,
        };
        b.header(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        b
    }

    fn header(
        &mut self,
        ty: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        body: impl FnOnce(&mut Attrs<'_>),
    ) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        put_message(&mut self.buf, seq, ty, flags, family, res_id, body);
        seq
    }

    fn msg(&mut self, ty: u16, flags: u16, what: String, body: impl FnOnce(&mut Attrs<'_>)) {
        self.last_member = Some(self.buf.len());
        let seq = self.header(
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            NLM_F_REQUEST | flags,
            NFPROTO_INET,
            0,
            body,
        );
        self.members.push((seq, what));
    }

    /// Adds table `name` (family inet) if it does not exist.
    pub fn add_table(&mut self, name: &str) {
        self.msg(
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE,
            format!("adding table inet {name}"),
            |a| a.put_str(NFTA_TABLE_NAME, name),
        );
    }

    /// Deletes table `name` with everything in it.
    pub fn del_table(&mut self, name: &str) {
        self.msg(
            NFT_MSG_DELTABLE,
            0,
            format!("deleting table inet {name}"),
            |a| a.put_str(NFTA_TABLE_NAME, name),
        );
    }

    /// Adds a base chain with policy accept.
    pub fn add_chain(&mut self, table: &str, chain: &BaseChain) {
        self.msg(
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            format!(
                "adding chain {} (type {}) to table inet {table}",
                chain.name, chain.kind
            ),
            |a| {
                a.put_str(NFTA_CHAIN_TABLE, table);
                a.put_str(NFTA_CHAIN_NAME, chain.name);
                a.nested(NFTA_CHAIN_HOOK, |a| {
                    a.put_be32(NFTA_HOOK_HOOKNUM, chain.hook);
                    a.put(NFTA_HOOK_PRIORITY, &chain.priority.to_be_bytes());
                });
                a.put_be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
                a.put_str(NFTA_CHAIN_TYPE, chain.kind);
            },
        );
    }

    /// Appends a rule to a chain; `what` describes it in error messages.
    pub fn add_rule(&mut self, table: &str, chain: &str, exprs: &[Expr], what: String) {
        self.msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, what, |a| {
            a.put_str(NFTA_RULE_TABLE, table);
            a.put_str(NFTA_RULE_CHAIN, chain);
            a.nested(NFTA_RULE_EXPRESSIONS, |a| {
                for e in exprs {
                    a.expr(e);
                }
            });
        });
    }

    /// Ends the batch; returns the bytes to send, the sequence number of the
    /// batch header and each member's sequence number and description (the
    /// last one is the member that gets an ack).
    pub fn finish(mut self) -> (Vec<u8>, u32, Vec<(u32, String)>) {
        if let Some(off) = self.last_member {
            let flags = u16::from_ne_bytes([self.buf[off + 6], self.buf[off + 7]]) | NLM_F_ACK;
            self.buf[off + 6..off + 8].copy_from_slice(&flags.to_ne_bytes());
        }
        self.header(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        (self.buf, self.begin_seq, self.members)
    }

    /// Number of members (messages besides the framing).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the batch holds no message besides its framing.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

/// Batches up to this size fit any default netlink send buffer.
const SNDBUF_DEFAULT_SAFE: usize = 64 * 1024;

/// How long we wait for the kernel's answers.
const REPLY_TIMEOUT_MS: u16 = 5000;

fn io_err<'a>(table: &'a str, op: &'static str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::NftIo {
        table: table.to_string(),
        op,
        source,
    }
}

fn open_socket(table: &str) -> Result<Socket, Error> {
    let mut s = Socket::new(NETLINK_NETFILTER)
        .map_err(io_err(table, "opening a netfilter netlink socket"))?;
    s.bind_auto()
        .map_err(io_err(table, "binding the netlink socket"))?;
    // Keep error replies small: no copy of the (possibly long) request.
    s.set_cap_ack(true)
        .map_err(io_err(table, "setting NETLINK_CAP_ACK"))?;
    Ok(s)
}

/// One parsed netlink reply header: (type, seq, error code for NLMSG_ERROR).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub ty: u16,
    pub seq: u32,
    pub error: Option<i32>,
}

/// Splits a datagram into netlink messages.
pub(crate) fn parse_replies(mut buf: &[u8]) -> Result<Vec<Reply>, String> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            return Err(format!("bad netlink message length {len}"));
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let error = if ty == NLMSG_ERROR {
            if len < 20 {
                return Err("truncated NLMSG_ERROR".into());
            }
            Some(i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]))
        } else {
            None
        };
        out.push(Reply { ty, seq, error });
        let aligned = (len + 3) & !3;
        buf = &buf[aligned.min(buf.len())..];
    }
    Ok(out)
}

fn recv_replies(table: &str, s: &Socket) -> Result<Vec<Reply>, Error> {
    let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
    let ready = poll(&mut fds, PollTimeout::from(REPLY_TIMEOUT_MS))
        .map_err(|e| io_err(table, "waiting for the kernel's answer")(e.into()))?;
    if ready == 0 {
        return Err(io_err(table, "waiting for the kernel's answer")(
            io::Error::new(io::ErrorKind::TimedOut, "no answer within 5 s"),
        ));
    }
    let mut buf = Vec::with_capacity(1 << 16);
    s.recv(&mut buf, 0)
        .map_err(io_err(table, "receiving the kernel's answer"))?;
    parse_replies(&buf).map_err(|reason| Error::NftProtocol {
        table: table.to_string(),
        reason,
    })
}

/// Sends a batch and waits until the kernel answered each message. The
/// kernel applies the whole batch or nothing; the first refusal is returned,
/// naming the message it was about.
pub fn send_batch(table: &str, batch: Batch) -> Result<(), Error> {
    let (bytes, begin_seq, members) = batch.finish();
    let Some(&(last_seq, _)) = members.last() else {
        return Ok(());
    };
    let s = open_socket(table)?;
    if bytes.len() > SNDBUF_DEFAULT_SAFE {
        // netlink_sendmsg refuses a message larger than the send buffer
        // (EMSGSIZE); root may raise it past wmem_max.
        let want = bytes.len() + 4096;
        setsockopt(&s, sockopt::SndBufForce, &want)
            .or_else(|_| setsockopt(&s, sockopt::SndBuf, &want))
            .map_err(|e| io_err(table, "raising the socket send buffer")(e.into()))?;
    }
    s.send_to(&bytes, &SocketAddr::new(0, 0), 0)
        .map_err(io_err(table, "sending the batch"))?;
    let members: std::collections::BTreeMap<u32, String> = members.into_iter().collect();
    let mut first_error: Option<(String, i32)> = None;
    loop {
        let replies = match recv_replies(table, &s) {
            // So many members failed that their errors overflowed our
            // receive buffer: the batch was refused all the same.
            Err(Error::NftIo { source, .. })
                if source.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) =>
            {
                return Err(Error::NftRejected {
                    table: table.to_string(),
                    what: "the batch (too many errors to list)".into(),
                    source,
                })
            }
            r => r?,
        };
        for r in replies {
            let Some(code) = r.error else { continue };
            if r.seq == begin_seq && code != 0 {
                // The batch as a whole was refused (e.g. EPERM without
                // CAP_NET_ADMIN); no other answer follows.
                return Err(Error::NftRejected {
                    table: table.to_string(),
                    what: "the batch".into(),
                    source: io::Error::from_raw_os_error(-code),
                });
            }
            if code != 0 && first_error.is_none() {
                if let Some(what) = members.get(&r.seq) {
                    first_error = Some((what.clone(), -code));
                }
            }
            if r.seq == last_seq {
                // Answers come in member order: this one is the last.
                return match first_error {
                    None => Ok(()),
                    Some((what, errno)) => Err(Error::NftRejected {
                        table: table.to_string(),
                        what,
                        source: io::Error::from_raw_os_error(errno),
                    }),
                };
            }
        }
    }
}

/// Whether table `name` of family inet exists.
pub fn table_exists(name: &str) -> Result<bool, Error> {
    let s = open_socket(name)?;
    let seq = SEQ.fetch_add(1 << 16, Ordering::Relaxed);
    let mut buf = Vec::new();
    put_message(
        &mut buf,
        seq,
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
        NLM_F_REQUEST | NLM_F_ACK,
        NFPROTO_INET,
        0,
        |a| a.put_str(NFTA_TABLE_NAME, name),
    );
    s.send_to(&buf, &SocketAddr::new(0, 0), 0)
        .map_err(io_err(name, "sending the table query"))?;
    let mut found = false;
    loop {
        for r in recv_replies(name, &s)? {
            if r.seq != seq {
                continue;
            }
            match r.error {
                Some(0) => return Ok(found),
                Some(e) if -e == nix::errno::Errno::ENOENT as i32 => return Ok(false),
                Some(e) => {
                    return Err(Error::NftRejected {
                        table: name.to_string(),
                        what: "the table query".into(),
                        source: io::Error::from_raw_os_error(-e),
                    })
                }
                None if r.ty == NLMSG_DONE => return Ok(found),
                None => found = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], i: usize) -> u16 {
        u16::from_ne_bytes([b[i], b[i + 1]])
    }

    #[test]
    fn attributes_are_padded_and_nested_lengths_cover_children() {
        let mut v = Vec::new();
        let mut a = Attrs(&mut v);
        a.put_str(1, "ab"); // 4 + 3 = 7, padded to 8
        a.nested(2, |a| a.put_be32(3, 0x0102_0304));
        assert_eq!(v.len(), 8 + 4 + 8);
        assert_eq!(u16_at(&v, 0), 7);
        assert_eq!(&v[4..8], b"ab\0\0");
        assert_eq!(u16_at(&v, 8), 12);
        assert_eq!(u16_at(&v, 10), 2 | NLA_F_NESTED);
        assert_eq!(&v[16..20], &[1, 2, 3, 4]);
    }

    #[test]
    fn verdict_expression_layout() {
        let mut v = Vec::new();
        Attrs(&mut v).expr(&Expr::Verdict(NF_DROP));
        // elem{ name "immediate\0" (4+10→16), data{ dreg(8), data{ verdict{ code(8) } } } }
        let expect_len = 4 + 16 + 4 + 8 + 4 + 4 + 8;
        assert_eq!(v.len(), expect_len);
        assert_eq!(u16_at(&v, 0) as usize, expect_len);
        assert_eq!(&v[8..18], b"immediate\0");
        // The verdict code is the last 4 bytes, big-endian NF_DROP.
        assert_eq!(&v[v.len() - 4..], &0u32.to_be_bytes());
    }

    #[test]
    fn masq_has_no_data() {
        let mut v = Vec::new();
        Attrs(&mut v).expr(&Expr::Masq);
        assert_eq!(v.len(), 4 + 4 + 8);
        assert_eq!(&v[8..13], b"masq\0");
    }

    /// The (type, payload) attributes directly inside an expression's
    /// NFTA_EXPR_DATA.
    fn expr_data(e: &Expr) -> (String, Vec<(u16, Vec<u8>)>) {
        let mut v = Vec::new();
        Attrs(&mut v).expr(e);
        // elem header (4), then the name attribute.
        let name_len = u16_at(&v, 4) as usize;
        let name = String::from_utf8(v[8..4 + name_len - 1].to_vec()).unwrap();
        let mut off = 4 + ((name_len + 3) & !3);
        assert_eq!(u16_at(&v, off + 2), NFTA_EXPR_DATA | NLA_F_NESTED);
        let end = off + u16_at(&v, off) as usize;
        off += 4;
        let mut attrs = Vec::new();
        while off < end {
            let len = u16_at(&v, off) as usize;
            attrs.push((u16_at(&v, off + 2), v[off + 4..off + len].to_vec()));
            off += (len + 3) & !3;
        }
        (name, attrs)
    }

    #[test]
    fn dnat_fib_and_immediate_layouts() {
        let be = |x: u32| x.to_be_bytes().to_vec();
        let (name, attrs) = expr_data(&Expr::Dnat {
            addr_reg: NFT_REG_1,
            port_reg: NFT_REG_2,
        });
        assert_eq!(name, "nat");
        assert_eq!(
            attrs,
            vec![
                (NFTA_NAT_TYPE, be(NFT_NAT_DNAT)),
                (NFTA_NAT_FAMILY, be(2)),
                (NFTA_NAT_REG_ADDR_MIN, be(1)),
                (NFTA_NAT_REG_PROTO_MIN, be(2)),
                (NFTA_NAT_FLAGS, be(2)),
            ]
        );
        let (name, attrs) = expr_data(&Expr::FibDaddrType { dreg: NFT_REG_1 });
        assert_eq!(name, "fib");
        assert_eq!(
            attrs,
            vec![
                (NFTA_FIB_DREG, be(1)),
                (NFTA_FIB_RESULT, be(3)),
                (NFTA_FIB_FLAGS, be(2)),
            ]
        );
        let (name, attrs) = expr_data(&Expr::Immediate {
            dreg: NFT_REG_2,
            data: vec![0x1f, 0x90],
        });
        assert_eq!(name, "immediate");
        assert_eq!(attrs[0], (NFTA_IMMEDIATE_DREG, be(2)));
        // data{ value{ 1f 90 } }: a nested data attribute around the value.
        assert_eq!(attrs[1].0, NFTA_IMMEDIATE_DATA | NLA_F_NESTED);
        assert_eq!(&attrs[1].1[2..4], &NFTA_DATA_VALUE.to_ne_bytes());
        assert_eq!(&attrs[1].1[4..6], &[0x1f, 0x90]);
    }

    #[test]
    fn batch_is_framed_and_only_the_last_member_is_acked() {
        let mut b = Batch::new();
        b.add_table("t");
        b.del_table("t");
        b.add_chain(
            "t",
            &BaseChain {
                name: "input",
                kind: "filter",
                hook: NF_INET_LOCAL_IN,
                priority: 0,
            },
        );
        b.add_rule("t", "input", &[Expr::Verdict(NF_ACCEPT)], "rule".into());
        assert_eq!(b.len(), 4);
        let (bytes, begin, acked) = b.finish();
        // Walk the messages: begin, 4 members, end; lengths tile the buffer.
        let mut off = 0;
        let mut types = Vec::new();
        let mut seqs = Vec::new();
        while off < bytes.len() {
            let len = u32::from_ne_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0);
            types.push(u16_at(&bytes, off + 4));
            let flags = u16_at(&bytes, off + 6);
            seqs.push(u32::from_ne_bytes(
                bytes[off + 8..off + 12].try_into().unwrap(),
            ));
            let res_id = u16::from_be_bytes([bytes[off + 18], bytes[off + 19]]);
            let ty = *types.last().unwrap();
            if ty == NFNL_MSG_BATCH_BEGIN || ty == NFNL_MSG_BATCH_END {
                assert_eq!(res_id, NFNL_SUBSYS_NFTABLES);
                assert_eq!(flags & NLM_F_ACK, 0);
            } else {
                assert_eq!(bytes[off + 16], NFPROTO_INET);
                let last = u32::from_ne_bytes(bytes[off + 8..off + 12].try_into().unwrap())
                    == acked.last().unwrap().0;
                assert_eq!(flags & NLM_F_ACK != 0, last);
            }
            off += len;
        }
        assert_eq!(off, bytes.len());
        let t = |m| (NFNL_SUBSYS_NFTABLES << 8) | m;
        assert_eq!(
            types,
            vec![
                NFNL_MSG_BATCH_BEGIN,
                t(NFT_MSG_NEWTABLE),
                t(NFT_MSG_DELTABLE),
                t(NFT_MSG_NEWCHAIN),
                t(NFT_MSG_NEWRULE),
                NFNL_MSG_BATCH_END
            ]
        );
        assert_eq!(seqs[0], begin);
        assert_eq!(
            acked.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            seqs[1..5].to_vec()
        );
    }

    #[test]
    fn replies_parse() {
        let mut buf = Vec::new();
        for (ty, seq, code) in [(NLMSG_ERROR, 7u32, -2i32), (NLMSG_ERROR, 8, 0)] {
            buf.extend_from_slice(&36u32.to_ne_bytes());
            buf.extend_from_slice(&ty.to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&code.to_ne_bytes());
            buf.extend_from_slice(&[0; 16]);
        }
        let r = parse_replies(&buf).unwrap();
        assert_eq!(
            r,
            vec![
                Reply {
                    ty: NLMSG_ERROR,
                    seq: 7,
                    error: Some(-2)
                },
                Reply {
                    ty: NLMSG_ERROR,
                    seq: 8,
                    error: Some(0)
                }
            ]
        );
        assert!(parse_replies(&[8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
