//! The crate's error type: every variant names the link, bridge, file,
//! namespace or table it is about.

use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name given by the caller breaks the kernel's or our rules.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        kind: &'static str,
        name: String,
        reason: &'static str,
    },
    /// A netlink route socket could not be opened.
    #[error("opening a netlink route socket in {namespace}: {source}")]
    Socket {
        namespace: String,
        #[source]
        source: io::Error,
    },
    /// The kernel refused a route-netlink request.
    #[error("{op} {subject}: {source}")]
    Netlink {
        op: &'static str,
        subject: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// A link of that name exists but is not a bridge.
    #[error("link {0} exists but is not a bridge; remove it or pick another bridge name")]
    NotABridge(String),
    /// The bridge a veth should join does not exist.
    #[error("bridge {0} does not exist; call ensure_bridge first")]
    NoSuchBridge(String),
    /// A link that was just created cannot be found.
    #[error("link {link} not found in {namespace}")]
    NoSuchLink { link: String, namespace: String },
    /// A subnet (address and prefix length) that cannot serve a bridge.
    #[error("invalid subnet {addr}/{prefix_len} for {subject}: {reason}")]
    InvalidSubnet {
        subject: String,
        addr: Ipv4Addr,
        prefix_len: u8,
        reason: &'static str,
    },
    /// An address that is not a usable host address of the bridge's subnet.
    #[error("address {addr} is not a usable host address on bridge {bridge} ({network}/{prefix_len}, gateway {gateway})")]
    AddressOutsideSubnet {
        bridge: String,
        addr: Ipv4Addr,
        network: Ipv4Addr,
        prefix_len: u8,
        gateway: Ipv4Addr,
    },
    /// A namespace reference that cannot be used (bad pid or fd).
    #[error("network namespace {namespace}: {op}: {source}")]
    Namespace {
        namespace: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// A named namespace that should be new already exists.
    #[error("network namespace file {0} already exists; remove it or pick another name")]
    NamespaceExists(PathBuf),
    /// The address file could not be read or written.
    #[error("address file {path}: {op}: {source}")]
    AllocIo {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The address file does not parse; it is never reset silently.
    #[error("address file {path} is corrupt at line {line}: {reason}; repair or remove it by hand (removing it forgets every lease)")]
    AllocCorrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// The address file belongs to another subnet or gateway.
    #[error("address file {path} is for {found} but bridge {bridge} was opened with {expected}; remove the file only if no jail holds one of its addresses")]
    AllocMismatch {
        path: PathBuf,
        bridge: String,
        found: String,
        expected: String,
    },
    /// Every usable address of the subnet is handed out.
    #[error("no free address left on bridge {bridge} ({network}/{prefix_len}, file {path}); release one first")]
    AllocExhausted {
        bridge: String,
        network: Ipv4Addr,
        prefix_len: u8,
        path: PathBuf,
    },
    /// An owner name the address file cannot hold.
    #[error("invalid address owner {owner:?} for bridge {bridge}: {reason}")]
    InvalidOwner {
        bridge: String,
        owner: String,
        reason: &'static str,
    },
    /// The nf_tables socket failed.
    #[error("nftables table {table}: {op}: {source}")]
    NftIo {
        table: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel refused part of an nf_tables batch (nothing was applied).
    #[error("nftables table {table}: kernel refused {what}: {source}")]
    NftRejected {
        table: String,
        what: String,
        #[source]
        source: io::Error,
    },
    /// The kernel's nf_tables reply made no sense.
    #[error("nftables table {table}: {reason}")]
    NftProtocol { table: String, reason: String },
    /// A firewall policy that cannot be turned into rules.
    #[error("nftables table {table}: invalid policy: {reason}")]
    InvalidPolicy { table: String, reason: String },
    /// A sysctl could not be read or written.
    #[error("sysctl {path}: {source}")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An operation failed and so did the cleanup after it; both are kept.
    #[error("{original}; cleaning up after it also failed: {cleanup}")]
    Cleanup {
        original: Box<Error>,
        cleanup: Box<Error>,
    },
}

impl Error {
    /// Combines an original error with the error of the cleanup after it.
    pub(crate) fn with_cleanup(original: Error, cleanup: Result<(), Error>) -> Error {
        match cleanup {
            Ok(()) => original,
            Err(cleanup) => Error::Cleanup {
                original: Box::new(original),
                cleanup: Box::new(cleanup),
            },
        }
    }
}
