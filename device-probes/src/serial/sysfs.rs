//! Serial port enumeration from sysfs, with the USB identity of the bridge
//! each port hangs off.
//!
//! `ROOT/class/tty/NAME/device` links to the port's device; for USB serial
//! bridges (ttyUSB*, ttyACM*) one of that directory's ancestors is the USB
//! device, which holds `idVendor`, `idProduct` and, when the device has
//! them, `serial`, `manufacturer` and `product` (sysfs-bus-usb(5) ABI).
//! The root is a parameter so tests run against a fake tree.

use std::path::{Path, PathBuf};

use crate::event::UsbIds;

/// A serial port found in sysfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// Kernel name, e.g. `ttyUSB0`.
    pub name: String,
    /// Device node: the dev directory joined with the name.
    pub path: PathBuf,
    pub usb: UsbIds,
}

/// Why sysfs could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot list serial ports in {path}: {source}")]
pub struct ScanError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// How many directories up from a tty's device the USB device may sit
/// (tty → interface → device is two; hubs do not add levels here).
const MAX_UP: usize = 4;

fn read_attr(dir: &Path, name: &str) -> Option<String> {
    let s = std::fs::read_to_string(dir.join(name)).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

fn read_hex(dir: &Path, name: &str) -> Option<u16> {
    u16::from_str_radix(&read_attr(dir, name)?, 16).ok()
}

/// The USB identity of the device owning `tty_device` (the resolved
/// `device` link), if it is a USB device.
pub fn usb_ids(tty_device: &Path) -> Option<UsbIds> {
    let mut dir = tty_device.to_path_buf();
    for _ in 0..=MAX_UP {
        if let (Some(vid), Some(pid)) = (read_hex(&dir, "idVendor"), read_hex(&dir, "idProduct")) {
            return Some(UsbIds {
                vid,
                pid,
                serial: read_attr(&dir, "serial"),
                manufacturer: read_attr(&dir, "manufacturer"),
                product: read_attr(&dir, "product"),
            });
        }
        if !dir.pop() {
            break;
        }
    }
    None
}

/// Lists the USB serial ports under `sysfs_root`, their nodes named in
/// `dev_dir`. Ports without a USB ancestor (on-board UARTs, virtual
/// consoles) are left out: they are opened only when named explicitly.
pub fn scan(sysfs_root: &Path, dev_dir: &Path) -> Result<Vec<PortInfo>, ScanError> {
    let class = sysfs_root.join("class/tty");
    let entries = std::fs::read_dir(&class).map_err(|source| ScanError {
        path: class.clone(),
        source,
    })?;
    let mut ports = Vec::new();
    for entry in entries.flatten() {
        // Most of a board's ttys are virtual (tty0..63, console, ptmx):
        // one readlink rules each out, where resolving its `device` link
        // costs a walk of sysfs (a scan runs on every hotplug event, before
        // a new port is opened).
        if std::fs::read_link(entry.path()).is_ok_and(|t| is_virtual(&t)) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(device) = std::fs::canonicalize(entry.path().join("device")) else {
            continue;
        };
        // Only a device below a USB root hub (`usbN`) can have USB ids;
        // on-board UARTs are not searched for them.
        if !below_usb_root_hub(&device) {
            continue;
        }
        if let Some(usb) = usb_ids(&device) {
            ports.push(PortInfo {
                path: dev_dir.join(&name),
                name,
                usb,
            });
        }
    }
    ports.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(ports)
}

/// Whether a `class/tty` link points at a virtual tty
/// (`../../devices/virtual/tty/NAME`): one with no device behind it.
fn is_virtual(class_link: &Path) -> bool {
    let parts: Vec<_> = class_link.components().map(|c| c.as_os_str()).collect();
    parts
        .windows(2)
        .any(|w| w[0] == "devices" && w[1] == "virtual")
}

/// Whether `device` (a resolved sysfs path) sits below a USB root hub,
/// which the kernel names `usbN` (every USB device's sysfs path passes
/// through one, whatever the host controller).
fn below_usb_root_hub(device: &Path) -> bool {
    device.components().any(|c| {
        c.as_os_str()
            .to_str()
            .and_then(|s| s.strip_prefix("usb"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Builds a fake sysfs tree for tests: one USB device with one tty.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;

    pub struct FakeUsb<'a> {
        pub vid: u16,
        pub pid: u16,
        pub serial: Option<&'a str>,
        pub manufacturer: Option<&'a str>,
        pub product: Option<&'a str>,
    }

    /// Adds `tty` under `root`, hanging off a USB device at bus path
    /// `busport` (e.g. `1-1`), as the kernel lays out usb-serial.
    pub fn add_usb_tty(root: &Path, busport: &str, tty: &str, usb: &FakeUsb) {
        let dev = root.join(format!("devices/pci0000:00/usb1/{busport}"));
        let iface = dev.join(format!("{busport}:1.0"));
        let port = iface.join(tty);
        std::fs::create_dir_all(port.join(format!("tty/{tty}"))).unwrap();
        std::fs::write(dev.join("idVendor"), format!("{:04x}\n", usb.vid)).unwrap();
        std::fs::write(dev.join("idProduct"), format!("{:04x}\n", usb.pid)).unwrap();
        for (k, v) in [
            ("serial", usb.serial),
            ("manufacturer", usb.manufacturer),
            ("product", usb.product),
        ] {
            if let Some(v) = v {
                std::fs::write(dev.join(k), format!("{v}\n")).unwrap();
            }
        }
        let class = root.join("class/tty");
        std::fs::create_dir_all(&class).unwrap();
        let entry = class.join(tty);
        std::os::unix::fs::symlink(port.join(format!("tty/{tty}")), &entry).unwrap();
        std::os::unix::fs::symlink(&port, port.join(format!("tty/{tty}/device"))).unwrap();
    }

    /// Adds a virtual tty (a console), linked as the kernel links one:
    /// no `device` link.
    pub fn add_virtual_tty(root: &Path, tty: &str) {
        let dev = root.join(format!("devices/virtual/tty/{tty}"));
        std::fs::create_dir_all(&dev).unwrap();
        let class = root.join("class/tty");
        std::fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(format!("../../devices/virtual/tty/{tty}"), class.join(tty))
            .unwrap();
    }

    /// Adds a tty with no USB ancestor (an on-board UART).
    pub fn add_plain_tty(root: &Path, tty: &str) {
        let dev = root.join(format!("devices/platform/serial8250/tty/{tty}"));
        std::fs::create_dir_all(&dev).unwrap();
        let class = root.join("class/tty");
        std::fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(&dev, class.join(tty)).unwrap();
        std::os::unix::fs::symlink(root.join("devices/platform/serial8250"), dev.join("device"))
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    #[test]
    fn finds_usb_ports_with_their_ids() {
        let root = tempfile::tempdir().unwrap();
        add_usb_tty(
            root.path(),
            "1-1",
            "ttyUSB0",
            &FakeUsb {
                vid: 0x0403,
                pid: 0x6001,
                serial: Some("A10K"),
                manufacturer: Some("FTDI"),
                product: Some("FT232R USB UART"),
            },
        );
        add_usb_tty(
            root.path(),
            "1-2",
            "ttyACM0",
            &FakeUsb {
                vid: 0x2341,
                pid: 0x0043,
                serial: None,
                manufacturer: None,
                product: None,
            },
        );
        add_plain_tty(root.path(), "ttyS0");
        add_virtual_tty(root.path(), "tty0");
        let ports = scan(root.path(), Path::new("/dev")).unwrap();
        assert_eq!(ports.len(), 2, "{ports:?}");
        assert_eq!(ports[0].name, "ttyACM0");
        assert_eq!(ports[0].usb.vid, 0x2341);
        assert_eq!(ports[0].usb.serial, None);
        assert_eq!(ports[1].path, Path::new("/dev/ttyUSB0"));
        assert_eq!(
            ports[1].usb,
            UsbIds {
                vid: 0x0403,
                pid: 0x6001,
                serial: Some("A10K".into()),
                manufacturer: Some("FTDI".into()),
                product: Some("FT232R USB UART".into()),
            }
        );
    }

    #[test]
    fn which_paths_are_virtual_or_usb() {
        assert!(is_virtual(Path::new("../../devices/virtual/tty/tty0")));
        assert!(!is_virtual(Path::new(
            "../../devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/ttyUSB0/tty/ttyUSB0"
        )));
        assert!(!is_virtual(Path::new(
            "../../devices/platform/virtual-uart/tty/ttyS0"
        )));
        assert!(below_usb_root_hub(Path::new(
            "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/ttyUSB0"
        )));
        assert!(below_usb_root_hub(Path::new(
            "/sys/devices/platform/vhci_hcd.0/usb3/3-1/3-1:1.0/ttyACM0"
        )));
        assert!(!below_usb_root_hub(Path::new(
            "/sys/devices/platform/serial8250/tty/ttyS0"
        )));
        assert!(!below_usb_root_hub(Path::new(
            "/sys/devices/platform/usbmisc"
        )));
    }

    #[test]
    fn missing_class_dir_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let e = scan(root.path(), Path::new("/dev")).unwrap_err();
        assert!(e.to_string().contains("class/tty"), "{e}");
    }

    #[test]
    fn garbage_ids_are_not_usb() {
        let root = tempfile::tempdir().unwrap();
        add_usb_tty(
            root.path(),
            "1-1",
            "ttyUSB0",
            &FakeUsb {
                vid: 1,
                pid: 2,
                serial: None,
                manufacturer: None,
                product: None,
            },
        );
        std::fs::write(
            root.path().join("devices/pci0000:00/usb1/1-1/idVendor"),
            "zzzz\n",
        )
        .unwrap();
        assert!(scan(root.path(), Path::new("/dev")).unwrap().is_empty());
    }
}
