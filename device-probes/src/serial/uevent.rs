//! Hotplug events from the kernel's uevent netlink socket
//! (NETLINK_KOBJECT_UEVENT, netlink(7)).
//!
//! Two formats arrive there. The kernel multicasts on group 1:
//! `ACTION@DEVPATH\0KEY=VALUE\0...`. udevd re-multicasts on group 2 after it
//! has processed the device (so its `/dev` links exist), with a binary
//! header: the 8 bytes `libudev\0`, the magic 0xfeedcafe in network order,
//! the header size, the offset and length of the `KEY=VALUE\0` properties,
//! then filter hashes (systemd `src/libsystemd/sd-device/device-monitor.c`,
//! `struct monitor_netlink_header`). [`parse`] reads both, I/O free.
//! [`UeventMonitor`] listens on both groups and accepts only messages whose
//! sender credentials say root, as libudev does.

use std::collections::BTreeMap;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    bind, recvmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, MsgFlags,
    NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use tokio::io::unix::AsyncFd;

/// Netlink multicast group of the kernel's own uevents.
pub const GROUP_KERNEL: u32 = 1;
/// Netlink multicast group of udevd's processed events.
pub const GROUP_UDEV: u32 = 2;
/// `libudev\0` prefix of udevd's messages.
pub const UDEV_PREFIX: &[u8; 8] = b"libudev\0";
/// Magic after the prefix, big-endian on the wire.
pub const UDEV_MAGIC: u32 = 0xfeed_cafe;
/// Size of udevd's header.
pub const UDEV_HEADER_LEN: usize = 40;
/// Largest uevent we read; the kernel caps its buffer at 2 KiB
/// (UEVENT_BUFFER_SIZE), udevd's messages are larger.
pub const MAX_MESSAGE: usize = 8192;

/// Where a uevent came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Kernel,
    Udev,
}

/// One parsed uevent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uevent {
    pub origin: Origin,
    pub action: String,
    pub devpath: String,
    pub subsystem: Option<String>,
    pub devname: Option<String>,
    pub props: BTreeMap<String, String>,
}

/// Why a uevent message was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("uevent message of {0} bytes is too short")]
    Short(usize),
    #[error("udev message has bad magic {0:#x}")]
    BadMagic(u32),
    #[error("udev message properties at {off}+{len} lie outside its {total} bytes")]
    BadBounds {
        off: usize,
        len: usize,
        total: usize,
    },
    #[error("uevent has no ACTION or DEVPATH")]
    MissingKeys,
    #[error("uevent header is not ACTION@DEVPATH")]
    BadHeader,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(w)
}

fn ne32(b: &[u8], at: usize) -> usize {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    // udevd writes header_size and the offsets in host order.
    u32::from_ne_bytes(w) as usize
}

fn props(block: &[u8]) -> BTreeMap<String, String> {
    block
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let kv = std::str::from_utf8(kv).ok()?;
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Parses one message of either format.
pub fn parse(msg: &[u8]) -> Result<Uevent, ParseError> {
    let (origin, props) = if msg.starts_with(UDEV_PREFIX) {
        if msg.len() < UDEV_HEADER_LEN {
            return Err(ParseError::Short(msg.len()));
        }
        let magic = be32(msg, 8);
        if magic != UDEV_MAGIC {
            return Err(ParseError::BadMagic(magic));
        }
        let off = ne32(msg, 16);
        let len = ne32(msg, 20);
        if off < UDEV_HEADER_LEN || off.checked_add(len).is_none_or(|end| end > msg.len()) {
            return Err(ParseError::BadBounds {
                off,
                len,
                total: msg.len(),
            });
        }
        (Origin::Udev, props(&msg[off..off + len]))
    } else {
        let nul = msg
            .iter()
            .position(|&b| b == 0)
            .ok_or(ParseError::BadHeader)?;
        let head = std::str::from_utf8(&msg[..nul]).map_err(|_| ParseError::BadHeader)?;
        if !head.contains('@') {
            return Err(ParseError::BadHeader);
        }
        (Origin::Kernel, props(&msg[nul + 1..]))
    };
    let action = props
        .get("ACTION")
        .cloned()
        .ok_or(ParseError::MissingKeys)?;
    let devpath = props
        .get("DEVPATH")
        .cloned()
        .ok_or(ParseError::MissingKeys)?;
    Ok(Uevent {
        origin,
        action,
        devpath,
        subsystem: props.get("SUBSYSTEM").cloned(),
        devname: props.get("DEVNAME").cloned(),
        props,
    })
}

/// Builds a udevd-format message (tests and tools that inject events).
pub fn encode_udev(props: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in props {
        body.extend_from_slice(k.as_bytes());
        body.push(b'=');
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    let mut m = Vec::with_capacity(UDEV_HEADER_LEN + body.len());
    m.extend_from_slice(UDEV_PREFIX);
    m.extend_from_slice(&UDEV_MAGIC.to_be_bytes());
    m.extend_from_slice(&(UDEV_HEADER_LEN as u32).to_ne_bytes());
    m.extend_from_slice(&(UDEV_HEADER_LEN as u32).to_ne_bytes());
    m.extend_from_slice(&(body.len() as u32).to_ne_bytes());
    m.resize(UDEV_HEADER_LEN, 0);
    m.extend_from_slice(&body);
    m
}

/// Builds a kernel-format message.
pub fn encode_kernel(action: &str, devpath: &str, props: &[(&str, &str)]) -> Vec<u8> {
    let mut m = format!("{action}@{devpath}\0ACTION={action}\0DEVPATH={devpath}\0").into_bytes();
    for (k, v) in props {
        m.extend_from_slice(format!("{k}={v}\0").as_bytes());
    }
    m
}

/// Why the monitor socket failed.
#[derive(Debug, thiserror::Error)]
#[error("uevent netlink socket: {op}: {source}")]
pub struct MonitorError {
    pub op: &'static str,
    pub source: std::io::Error,
}

fn err(op: &'static str) -> impl FnOnce(nix::Error) -> MonitorError {
    move |e| MonitorError {
        op,
        source: e.into(),
    }
}

/// A non-blocking NETLINK_KOBJECT_UEVENT socket bound to the kernel and
/// udev groups of the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct UeventMonitor {
    fd: AsyncFd<OwnedFd>,
}

impl UeventMonitor {
    /// Opens the socket. Needs a tokio runtime with I/O enabled.
    pub fn open() -> Result<UeventMonitor, MonitorError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )
        .map_err(err("socket"))?;
        setsockopt(&fd, sockopt::PassCred, &true).map_err(err("SO_PASSCRED"))?;
        bind(
            fd.as_raw_fd(),
            &NetlinkAddr::new(0, GROUP_KERNEL | GROUP_UDEV),
        )
        .map_err(err("bind"))?;
        // `AsyncFd::new` is deprecated because a type whose `as_raw_fd`
        // changes or closes under it would break the registration; this one
        // owns its descriptor until the AsyncFd is dropped. The safe call
        // keeps this crate free of `unsafe`.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd).map_err(|source| MonitorError {
            op: "register",
            source,
        })?;
        Ok(UeventMonitor { fd })
    }

    /// Waits for the next message from root and parses it. Messages from
    /// other senders come back as `Ok(None)`; unparsable ones as
    /// `Ok(Some(Err(..)))`. Cancel-safe: a message is consumed only in the
    /// synchronous `recvmsg` after readiness.
    pub async fn next(&self) -> Result<Option<Result<Uevent, ParseError>>, MonitorError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|source| MonitorError { op: "poll", source })?;
            let res = guard.try_io(|fd| {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
                let msg = recvmsg::<NetlinkAddr>(
                    fd.get_ref().as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT,
                )
                .map_err(std::io::Error::from)?;
                let mut uid = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmCredentials(cred) = c {
                            uid = Some(cred.uid());
                        }
                    }
                }
                Ok((msg.bytes, uid))
            });
            match res {
                Ok(Ok((n, uid))) => {
                    if uid != Some(0) {
                        return Ok(None);
                    }
                    return Ok(Some(parse(&buf[..n])));
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // ENOBUFS: the kernel dropped events for us; the caller
                // rescans anyway, so report it as an empty wake-up.
                Ok(Err(e)) if e.raw_os_error() == Some(libc_enobufs()) => return Ok(None),
                Ok(Err(source)) => {
                    return Err(MonitorError {
                        op: "recvmsg",
                        source,
                    })
                }
                Err(_would_block) => continue,
            }
        }
    }
}

fn libc_enobufs() -> i32 {
    nix::errno::Errno::ENOBUFS as i32
}

/// Whether an event may have changed the set of serial ports.
pub fn is_tty_change(ev: &Uevent) -> bool {
    let tty = ev.subsystem.as_deref() == Some("tty")
        || ev.subsystem.as_deref() == Some("usb-serial")
        || ev.devname.as_deref().is_some_and(|n| n.contains("tty"));
    tty && matches!(
        ev.action.as_str(),
        "add" | "remove" | "change" | "bind" | "unbind"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_format() {
        let m = encode_kernel(
            "add",
            "/devices/pci0000:00/usb1/1-1/1-1:1.0/ttyUSB0/tty/ttyUSB0",
            &[
                ("SUBSYSTEM", "tty"),
                ("DEVNAME", "ttyUSB0"),
                ("SEQNUM", "7"),
            ],
        );
        let e = parse(&m).unwrap();
        assert_eq!(e.origin, Origin::Kernel);
        assert_eq!(e.action, "add");
        assert_eq!(e.subsystem.as_deref(), Some("tty"));
        assert_eq!(e.devname.as_deref(), Some("ttyUSB0"));
        assert_eq!(e.props["SEQNUM"], "7");
        assert!(is_tty_change(&e));
    }

    #[test]
    fn parses_udev_format() {
        let m = encode_udev(&[
            ("ACTION", "remove"),
            ("DEVPATH", "/devices/x/tty/ttyACM0"),
            ("SUBSYSTEM", "tty"),
            ("DEVNAME", "/dev/ttyACM0"),
            ("ID_SERIAL_SHORT", "A10K"),
        ]);
        assert_eq!(&m[..8], UDEV_PREFIX);
        let e = parse(&m).unwrap();
        assert_eq!(e.origin, Origin::Udev);
        assert_eq!(e.action, "remove");
        assert_eq!(e.props["ID_SERIAL_SHORT"], "A10K");
        assert!(is_tty_change(&e));
    }

    #[test]
    fn refuses_malformed_messages() {
        assert_eq!(parse(b"libudev\0abc"), Err(ParseError::Short(11)));
        let mut m = encode_udev(&[("ACTION", "add"), ("DEVPATH", "/x")]);
        m[8] = 0;
        assert!(matches!(parse(&m), Err(ParseError::BadMagic(_))));
        let mut m = encode_udev(&[("ACTION", "add"), ("DEVPATH", "/x")]);
        m[20..24].copy_from_slice(&10_000u32.to_ne_bytes());
        assert!(matches!(parse(&m), Err(ParseError::BadBounds { .. })));
        assert_eq!(parse(b"no header here"), Err(ParseError::BadHeader));
        assert_eq!(
            parse(b"add@/x\0SUBSYSTEM=tty\0"),
            Err(ParseError::MissingKeys)
        );
        assert_eq!(parse(b""), Err(ParseError::BadHeader));
    }

    #[test]
    fn non_tty_events_do_not_count() {
        let m = encode_kernel("add", "/devices/x/net/eth0", &[("SUBSYSTEM", "net")]);
        assert!(!is_tty_change(&parse(&m).unwrap()));
    }
}
