//! Links over rtnetlink: bridges, veth pairs into other namespaces, and the
//! configuration inside those namespaces (loopback, address, default route).
//!
//! [`Net`] wraps an rtnetlink handle on the host namespace. Work inside a
//! jail's namespace uses a second, short-lived rtnetlink connection whose
//! socket was opened in that namespace (see [`crate::ns`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, RawFd};

use futures_util::{pin_mut, TryStreamExt};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use nix::errno::Errno;
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};
use tokio::task::JoinHandle;

use crate::name::validate_ifname;
use crate::Error;

const HOST: &str = "the host network namespace";

/// Which network namespace a veth's jail end goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsRef {
    /// The namespace of this process (e.g. a jail's init, created with
    /// `clone(CLONE_NEWNET)`).
    Pid(i32),
    /// An open network-namespace file (`/proc/PID/ns/net` or a bind mount of
    /// it, see [`crate::Netns`]) or a pidfd of a process in the namespace.
    /// The caller keeps it open during the call.
    Fd(RawFd),
}

/// A bridge as ensured by [`Net::ensure_bridge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    pub name: String,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    /// Interface index seen by `ensure_bridge` (0: look it up by name).
    /// Reused by [`Net::add_veth`] without a second lookup: the kernel
    /// hands out interface indexes cyclically (`dev_index_reserve`), so a
    /// bridge deleted meanwhile makes the request fail with ENODEV rather
    /// than attach the veth to another link.
    pub(crate) index: u32,
}

impl Bridge {
    /// The bridge subnet's network address.
    pub fn network(&self) -> Ipv4Addr {
        network_of(self.gateway, self.prefix_len)
    }
}

/// A veth pair created by [`Net::add_veth`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Veth {
    pub host_if: String,
    pub jail_if: String,
    pub addr: Ipv4Addr,
}

/// The netmask of a prefix length (0..=32).
pub(crate) fn mask_of(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len.min(32)))
    }
}

/// The network address of `addr/prefix_len`.
pub(crate) fn network_of(addr: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr) & mask_of(prefix_len))
}

/// Checks that `gateway/prefix_len` can serve a bridge: prefix 8..=30 and the
/// gateway a host address of it (neither network nor broadcast address).
pub(crate) fn check_subnet(subject: &str, gateway: Ipv4Addr, prefix_len: u8) -> Result<(), Error> {
    let bad = |reason| Error::InvalidSubnet {
        subject: subject.to_string(),
        addr: gateway,
        prefix_len,
        reason,
    };
    if !(8..=30).contains(&prefix_len) {
        return Err(bad("prefix length must be between 8 and 30"));
    }
    let mask = mask_of(prefix_len);
    let host = u32::from(gateway) & !mask;
    if host == 0 || host == !mask {
        return Err(bad("gateway is the network or broadcast address"));
    }
    Ok(())
}

/// Whether `addr` is a usable host address of `bridge` (inside the subnet,
/// not network, broadcast or gateway).
pub(crate) fn is_host_addr(bridge: &Bridge, addr: Ipv4Addr) -> bool {
    let mask = mask_of(bridge.prefix_len);
    let host = u32::from(addr) & !mask;
    u32::from(addr) & mask == u32::from(bridge.gateway) & mask
        && host != 0
        && host != !mask
        && addr != bridge.gateway
}

fn errno(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| Errno::from_raw(-c.get())),
        _ => None,
    }
}

fn nl(op: &'static str, subject: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let subject = subject.into();
    move |source| Error::Netlink {
        op,
        subject,
        source,
    }
}

/// Looks a link up by name; `None` if there is none.
async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let links = handle.link().get().match_name(name.to_string()).execute();
    pin_mut!(links);
    match links.try_next().await {
        Ok(m) => Ok(m),
        Err(e) if errno(&e) == Some(Errno::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The fixed MAC address of bridge `name`: locally administered, unicast,
/// from a hash of the name. A bridge given an address keeps it; one
/// without takes the lowest address of its ports and changes it as ports
/// come and go, and a jail that cached the gateway's old address then
/// cannot answer the host until its neighbour entry expires.
pub fn bridge_mac(name: &str) -> [u8; 6] {
    // FNV-1a, 64 bits.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let b = h.to_be_bytes();
    [0x02, b[3], b[4], b[5], b[6], b[7]]
}

fn is_bridge(msg: &LinkMessage) -> bool {
    msg.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    })
}

/// Sets a link up by index.
async fn set_up(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
}

/// Adds `addr/prefix_len` to link `index` unless it is already there.
async fn ensure_addr(
    handle: &Handle,
    index: u32,
    addr: Ipv4Addr,
    prefix_len: u8,
) -> Result<(), rtnetlink::Error> {
    let addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    pin_mut!(addrs);
    while let Some(msg) = addrs.try_next().await? {
        let has = msg.attributes.iter().any(|a| {
            matches!(a, AddressAttribute::Local(IpAddr::V4(a)) | AddressAttribute::Address(IpAddr::V4(a)) if *a == addr)
        });
        if has && msg.header.index == index && msg.header.prefix_len == prefix_len {
            return Ok(());
        }
    }
    match handle
        .address()
        .add(index, IpAddr::V4(addr), prefix_len)
        .execute()
        .await
    {
        Err(e) if errno(&e) == Some(Errno::EEXIST) => Ok(()),
        r => r,
    }
}

/// rtnetlink access to the host network namespace.
pub struct Net {
    handle: Handle,
    connection: JoinHandle<()>,
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net").finish_non_exhaustive()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Net {
    /// Opens a netlink route socket in the calling thread's (host) namespace
    /// and spawns its connection task on the current tokio runtime, which
    /// must have the IO driver enabled.
    pub async fn connect() -> Result<Net, Error> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| Error::Socket {
            namespace: HOST.to_string(),
            source: e,
        })?;
        let connection = tokio::spawn(connection);
        Ok(Net { handle, connection })
    }

    /// The underlying rtnetlink handle, for operations this crate lacks.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Creates bridge `name` if missing, sets it up and assigns
    /// `gateway/prefix_len` to it. Idempotent.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<Bridge, Error> {
        validate_ifname(name)?;
        check_subnet(&format!("bridge {name}"), gateway, prefix_len)?;
        let h = &self.handle;
        let existing = link_by_name(h, name)
            .await
            .map_err(nl("looking up bridge", name))?;
        // Already up (the common case: the vendor has jails): no SETLINK.
        let mut up = false;
        let index = match existing {
            Some(msg) if is_bridge(&msg) => {
                up = msg.header.flags.contains(LinkFlags::Up);
                msg.header.index
            }
            Some(_) => return Err(Error::NotABridge(name.to_string())),
            None => {
                let msg = LinkBridge::new(name)
                    .address(bridge_mac(name).to_vec())
                    .build();
                match h.link().add(msg).execute().await {
                    Ok(()) => tracing::info!(bridge = name, "created bridge"),
                    // Created concurrently: the lookup below checks its kind.
                    Err(e) if errno(&e) == Some(Errno::EEXIST) => {}
                    Err(e) => return Err(nl("creating bridge", name)(e)),
                }
                match link_by_name(h, name)
                    .await
                    .map_err(nl("looking up bridge", name))?
                {
                    Some(msg) if is_bridge(&msg) => msg.header.index,
                    Some(_) => return Err(Error::NotABridge(name.to_string())),
                    None => {
                        return Err(Error::NoSuchLink {
                            link: name.to_string(),
                            namespace: HOST.to_string(),
                        })
                    }
                }
            }
        };
        ensure_addr(h, index, gateway, prefix_len)
            .await
            .map_err(nl(
                "assigning the gateway address to bridge",
                format!("{name} ({gateway}/{prefix_len})"),
            ))?;
        if !up {
            set_up(h, index)
                .await
                .map_err(nl("setting up bridge", name))?;
        }
        Ok(Bridge {
            name: name.to_string(),
            gateway,
            prefix_len,
            index,
        })
    }

    /// Deletes bridge `name`; `Ok` if it is already gone. Refuses to delete a
    /// link that is not a bridge. Ports still attached are detached by the
    /// kernel, not deleted.
    pub async fn delete_bridge(&self, name: &str) -> Result<(), Error> {
        validate_ifname(name)?;
        match link_by_name(&self.handle, name)
            .await
            .map_err(nl("looking up bridge", name))?
        {
            None => Ok(()),
            Some(msg) if !is_bridge(&msg) => Err(Error::NotABridge(name.to_string())),
            Some(msg) => {
                self.delete_index(name, msg.header.index).await?;
                tracing::info!(bridge = name, "deleted bridge");
                Ok(())
            }
        }
    }

    /// Creates the veth pair `host_if` (host, attached to `bridge`, up) and
    /// `jail_if` (created directly inside `ns` in the same request), then
    /// inside `ns`: loopback up, `addr/prefix` on `jail_if`, `jail_if` up,
    /// default route via the bridge's gateway. On failure the pair is deleted
    /// again. Not cancel-safe: a future dropped after the pair was created
    /// leaves it; `delete_link(host_if)` removes it.
    ///
    /// Round trips: one RTM_NEWLINK on the host (plus a lookup of the
    /// bridge when `bridge` did not come from [`Net::ensure_bridge`]),
    /// then a socket inside `ns`, opened on a short-lived thread; in `ns`,
    /// the lookup of `jail_if` runs beside loopback's RTM_SETLINK,
    /// then the address, link-up and route requests go out together (the
    /// kernel handles one socket's requests in order, so the route finds
    /// the address on a link that is up).
    pub async fn add_veth(
        &self,
        bridge: &Bridge,
        host_if: &str,
        jail_if: &str,
        ns: NsRef,
        addr: Ipv4Addr,
    ) -> Result<Veth, Error> {
        let (veth, ns_fd) = self
            .create_pair(bridge, host_if, jail_if, &ns, addr)
            .await?;
        let configured = match crate::ns::route_socket_in(&ns, ns_fd).await {
            Ok(socket) => configure_inside(&ns, socket, jail_if, addr, bridge).await,
            Err(e) => Err(e),
        };
        if let Err(e) = configured {
            let cleanup = self.delete_link(host_if).await;
            return Err(Error::with_cleanup(e, cleanup));
        }
        Ok(veth)
    }

    /// The pair of [`Net::add_veth`] without the work inside `ns`: `jail_if`
    /// arrives there down and without an address, for a process in `ns`
    /// to configure with [`configure_current`] (a jail's init does, while
    /// this process goes on). One RTM_NEWLINK, no thread. `addr` is only
    /// checked against the bridge's subnet and returned in the [`Veth`].
    pub async fn add_veth_pair(
        &self,
        bridge: &Bridge,
        host_if: &str,
        jail_if: &str,
        ns: NsRef,
        addr: Ipv4Addr,
    ) -> Result<Veth, Error> {
        Ok(self
            .create_pair(bridge, host_if, jail_if, &ns, addr)
            .await?
            .0)
    }

    /// Creates the pair; returns it with the namespace fd its jail end went
    /// to (resolved once: whatever is done inside next lands there too).
    async fn create_pair(
        &self,
        bridge: &Bridge,
        host_if: &str,
        jail_if: &str,
        ns: &NsRef,
        addr: Ipv4Addr,
    ) -> Result<(Veth, std::os::fd::OwnedFd), Error> {
        let (msg, ns_fd) = self
            .veth_request(bridge, host_if, jail_if, ns, addr)
            .await?;
        self.handle.link().add(msg).execute().await.map_err(nl(
            "creating veth pair",
            format!("{host_if} (peer {jail_if} in {})", crate::ns::describe(ns)),
        ))?;
        tracing::info!(host_if, jail_if, "created veth pair");
        let veth = Veth {
            host_if: host_if.to_string(),
            jail_if: jail_if.to_string(),
            addr,
        };
        Ok((veth, ns_fd))
    }

    /// Checks the names and the address, finds the bridge's index and
    /// resolves `ns` (once, before anything exists: a bad pid or fd is
    /// reported as such); returns the RTM_NEWLINK request of the pair and
    /// the namespace fd it names, to be kept open until it is sent.
    async fn veth_request(
        &self,
        bridge: &Bridge,
        host_if: &str,
        jail_if: &str,
        ns: &NsRef,
        addr: Ipv4Addr,
    ) -> Result<(LinkMessage, std::os::fd::OwnedFd), Error> {
        validate_ifname(host_if)?;
        validate_ifname(jail_if)?;
        if !is_host_addr(bridge, addr) {
            return Err(Error::AddressOutsideSubnet {
                bridge: bridge.name.clone(),
                addr,
                network: bridge.network(),
                prefix_len: bridge.prefix_len,
                gateway: bridge.gateway,
            });
        }
        let h = &self.handle;
        let bridge_index = if bridge.index != 0 {
            bridge.index
        } else {
            match link_by_name(h, &bridge.name)
                .await
                .map_err(nl("looking up bridge", bridge.name.as_str()))?
            {
                Some(msg) if is_bridge(&msg) => msg.header.index,
                Some(_) => return Err(Error::NotABridge(bridge.name.clone())),
                None => return Err(Error::NoSuchBridge(bridge.name.clone())),
            }
        };
        let ns_fd = crate::ns::open_ns(ns)?;
        // Not up here: a veth end cannot open before its peer is
        // registered (ENOTCONN, veth_open); whoever configures it inside
        // `ns` sets it up.
        // One queue each way on both ends, asked for: without it the kernel
        // makes one per possible CPU and then cuts them to one, which waits
        // for an expedited RCU grace period per end (veth_init_queues).
        let one_queue = [LinkAttribute::NumTxQueues(1), LinkAttribute::NumRxQueues(1)];
        let mut peer = LinkUnspec::new_with_name(jail_if)
            .setns_by_fd(ns_fd.as_raw_fd())
            .build();
        peer.attributes.extend(one_queue.clone());
        let mut msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host_if)
            .controller(bridge_index)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        msg.attributes.extend(one_queue);
        Ok((msg, ns_fd))
    }

    /// Deletes link `name` from the host namespace (for a veth, both ends go);
    /// `Ok` if it is already gone.
    pub async fn delete_link(&self, name: &str) -> Result<(), Error> {
        validate_ifname(name)?;
        match link_by_name(&self.handle, name)
            .await
            .map_err(nl("looking up link", name))?
        {
            None => Ok(()),
            Some(msg) => self.delete_index(name, msg.header.index).await,
        }
    }

    /// The names of the links attached to bridge `name` (its ports), sorted;
    /// for adopting or removing what exists after a restart.
    pub async fn bridge_ports(&self, name: &str) -> Result<Vec<String>, Error> {
        validate_ifname(name)?;
        let index = match link_by_name(&self.handle, name)
            .await
            .map_err(nl("looking up bridge", name))?
        {
            Some(msg) if is_bridge(&msg) => msg.header.index,
            Some(_) => return Err(Error::NotABridge(name.to_string())),
            None => return Err(Error::NoSuchBridge(name.to_string())),
        };
        let links = self.handle.link().get().execute();
        pin_mut!(links);
        let mut ports = Vec::new();
        while let Some(msg) = links
            .try_next()
            .await
            .map_err(nl("listing the ports of bridge", name))?
        {
            let attached = msg
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(c) if *c == index));
            if attached {
                ports.extend(msg.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                }));
            }
        }
        ports.sort();
        Ok(ports)
    }

    /// Whether link `name` exists in the host namespace.
    pub async fn link_exists(&self, name: &str) -> Result<bool, Error> {
        validate_ifname(name)?;
        Ok(link_by_name(&self.handle, name)
            .await
            .map_err(nl("looking up link", name))?
            .is_some())
    }

    async fn delete_index(&self, name: &str, index: u32) -> Result<(), Error> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(Errno::ENODEV) => Ok(()),
            Err(e) => Err(nl("deleting link", name)(e)),
        }
    }
}

/// Inside `ns`: loopback up, address on `jail_if`, `jail_if` up, default
/// route via the bridge's gateway. Uses its own rtnetlink connection on a
/// socket opened in `ns`; the connection ends with this function.
async fn configure_inside(
    ns: &NsRef,
    socket: netlink_sys::Socket,
    jail_if: &str,
    addr: Ipv4Addr,
    bridge: &Bridge,
) -> Result<(), Error> {
    let where_ = crate::ns::describe(ns);
    let (connection, handle, _) = rtnetlink::from_socket(crate::sys::into_tokio_socket(socket));
    let task = tokio::spawn(connection);
    let result = async {
        let subject = |what: &str| format!("{what} in {where_}");
        // Loopback up (by name: in a new namespace it is the only other
        // link) beside the lookup of the jail's end.
        let lo_up = async {
            handle
                .link()
                .set(LinkUnspec::new_with_name("lo").up().build())
                .execute()
                .await
                .map_err(nl("setting up", subject("lo")))
        };
        let lookup = async {
            link_by_name(&handle, jail_if)
                .await
                .map_err(nl("looking up", subject(jail_if)))?
                .ok_or_else(|| Error::NoSuchLink {
                    link: jail_if.to_string(),
                    namespace: where_.clone(),
                })
        };
        let ((), jail) = futures_util::future::try_join(lo_up, lookup).await?;
        let index = jail.header.index;
        // Address, link up, then the route through it: one socket, sent
        // in this order, handled by the kernel in this order. A fresh
        // namespace holds no address yet; EEXIST (a retry) is fine.
        let add_addr = async {
            match handle
                .address()
                .add(index, IpAddr::V4(addr), bridge.prefix_len)
                .execute()
                .await
            {
                Err(e) if errno(&e) == Some(Errno::EEXIST) => Ok(()),
                r => r,
            }
            .map_err(nl(
                "assigning address",
                subject(&format!("{addr}/{} to {jail_if}", bridge.prefix_len)),
            ))
        };
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(bridge.gateway)
            .output_interface(index)
            .build();
        let add_route = async {
            handle.route().add(route).execute().await.map_err(nl(
                "adding default route",
                subject(&format!("via {} on {jail_if}", bridge.gateway)),
            ))
        };
        let link_up = async {
            set_up(&handle, index)
                .await
                .map_err(nl("setting up", subject(jail_if)))
        };
        futures_util::future::try_join3(add_addr, link_up, add_route).await?;
        Ok(())
    }
    .await;
    task.abort();
    result
}

/// What [`configure_current`] asks of the kernel, in this order.
const INSIDE_OPS: [&str; 4] = [
    "setting up",
    "assigning address",
    "setting up",
    "adding default route",
];

/// In the calling thread's network namespace, what [`Net::add_veth`] does
/// from outside: loopback up, `addr/prefix_len` on `jail_if`, `jail_if`
/// up, the default route via `gateway`. Blocking, for a process that lives
/// in the namespace (a jail's init): one netlink socket, the four requests
/// in one send (the kernel handles them in order, so the route finds the
/// address on a link that is up), then their four answers; no runtime and
/// no thread. An address already there (EEXIST) is fine.
pub fn configure_current(
    jail_if: &str,
    addr: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
) -> Result<(), Error> {
    use netlink_packet_core::{
        NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
    };
    use netlink_packet_route::RouteNetlinkMessage;
    use rtnetlink::AddressMessageBuilder;

    const HERE: &str = "this network namespace";
    validate_ifname(jail_if)?;
    let index = nix::net::if_::if_nametoindex(jail_if).map_err(|_| Error::NoSuchLink {
        link: jail_if.to_string(),
        namespace: HERE.to_string(),
    })?;
    let subjects = [
        format!("lo in {HERE}"),
        format!("{addr}/{prefix_len} to {jail_if} in {HERE}"),
        format!("{jail_if} in {HERE}"),
        format!("via {gateway} on {jail_if} in {HERE}"),
    ];
    let requests = [
        RouteNetlinkMessage::SetLink(LinkUnspec::new_with_name("lo").up().build()),
        RouteNetlinkMessage::NewAddress(
            AddressMessageBuilder::<Ipv4Addr>::new()
                .index(index)
                .address(addr, prefix_len)
                .build(),
        ),
        RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(index).up().build()),
        RouteNetlinkMessage::NewRoute(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gateway)
                .output_interface(index)
                .build(),
        ),
    ];
    let mut buf = Vec::new();
    for (seq, req) in (1u32..).zip(requests) {
        let mut m = NetlinkMessage::from(req);
        m.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
        m.header.sequence_number = seq;
        m.finalize();
        let at = buf.len();
        buf.resize(at + m.buffer_len().next_multiple_of(4), 0);
        m.serialize(&mut buf[at..]);
    }
    let io_err = |op: &'static str| {
        move |e: std::io::Error| Error::Namespace {
            namespace: HERE.to_string(),
            op,
            source: e,
        }
    };
    let sock = netlink_sys::Socket::new(netlink_sys::constants::NETLINK_ROUTE).map_err(|e| {
        Error::Socket {
            namespace: HERE.to_string(),
            source: e,
        }
    })?;
    let kernel = netlink_sys::SocketAddr::new(0, 0);
    let sent = sock
        .send_to(&buf, &kernel, 0)
        .map_err(io_err("sending the configuration"))?;
    if sent != buf.len() {
        return Err(io_err("sending the configuration")(std::io::Error::other(
            "short write to the netlink socket",
        )));
    }
    // The kernel answers every request before send returns; the answers
    // are read without blocking so that a missing one cannot hang init.
    let mut answers: [Option<Option<rtnetlink::Error>>; 4] = Default::default();
    let mut rbuf = Vec::with_capacity(16 * 1024);
    while answers.iter().any(Option::is_none) {
        rbuf.clear();
        let n = sock
            .recv(&mut rbuf, libc_msg_dontwait())
            .map_err(io_err("reading the kernel's answers"))?;
        let mut off = 0;
        while off < n {
            let m =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rbuf[off..n]).map_err(|e| {
                    io_err("reading the kernel's answers")(std::io::Error::other(e.to_string()))
                })?;
            let len = (m.header.length as usize).next_multiple_of(4);
            if len == 0 {
                break;
            }
            off += len;
            let seq = m.header.sequence_number as usize;
            if let (NetlinkPayload::Error(e), 1..=4) = (m.payload, seq) {
                answers[seq - 1] = Some(e.code.map(|_| rtnetlink::Error::NetlinkError(e)));
            }
        }
    }
    for (i, answer) in answers.into_iter().enumerate() {
        if let Some(Some(e)) = answer {
            if i == 1 && errno(&e) == Some(Errno::EEXIST) {
                continue;
            }
            return Err(Error::Netlink {
                op: INSIDE_OPS[i],
                subject: subjects[i].clone(),
                source: e,
            });
        }
    }
    Ok(())
}

/// MSG_DONTWAIT (socket(7)): the same value on every Linux architecture.
fn libc_msg_dontwait() -> i32 {
    nix::sys::socket::MsgFlags::MSG_DONTWAIT.bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn br(gw: [u8; 4], p: u8) -> Bridge {
        Bridge {
            name: "b".into(),
            gateway: Ipv4Addr::from(gw),
            prefix_len: p,
            index: 0,
        }
    }

    #[test]
    fn bridge_macs_are_local_unicast_stable_and_per_name() {
        let a = bridge_mac("berth-acme");
        assert_eq!(a[0], 0x02, "locally administered, unicast");
        assert_eq!(a, bridge_mac("berth-acme"));
        assert_ne!(a, bridge_mac("berth-acmf"));
    }

    #[test]
    fn masks_and_networks() {
        assert_eq!(mask_of(24), 0xffff_ff00);
        assert_eq!(mask_of(0), 0);
        assert_eq!(mask_of(32), u32::MAX);
        assert_eq!(
            network_of(Ipv4Addr::new(10, 88, 3, 7), 16),
            Ipv4Addr::new(10, 88, 0, 0)
        );
    }

    #[test]
    fn subnet_checks() {
        check_subnet("x", Ipv4Addr::new(10, 88, 0, 1), 24).unwrap();
        assert!(check_subnet("x", Ipv4Addr::new(10, 88, 0, 0), 24).is_err());
        assert!(check_subnet("x", Ipv4Addr::new(10, 88, 0, 255), 24).is_err());
        let err = check_subnet("bridge b", Ipv4Addr::new(10, 88, 0, 1), 31).unwrap_err();
        assert!(err.to_string().contains("bridge b"), "{err}");
        assert!(check_subnet("x", Ipv4Addr::new(10, 88, 0, 1), 4).is_err());
    }

    #[test]
    fn host_addresses() {
        let b = br([10, 88, 0, 1], 24);
        assert!(is_host_addr(&b, Ipv4Addr::new(10, 88, 0, 2)));
        assert!(is_host_addr(&b, Ipv4Addr::new(10, 88, 0, 254)));
        assert!(!is_host_addr(&b, Ipv4Addr::new(10, 88, 0, 1)));
        assert!(!is_host_addr(&b, Ipv4Addr::new(10, 88, 0, 0)));
        assert!(!is_host_addr(&b, Ipv4Addr::new(10, 88, 0, 255)));
        assert!(!is_host_addr(&b, Ipv4Addr::new(10, 88, 1, 2)));
    }
}
