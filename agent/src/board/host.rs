//! What on this host does not match a board: `berth check-board FILE`, and
//! berthd at start with `--board FILE`.
//!
//! Every check reads the kernel's own files below an injectable root (`/`
//! on a real host, a temp dir in tests): `/proc/self/ns/*`,
//! `/proc/sys/user/max_user_namespaces`, `/proc/self/mountinfo` (through the
//! `cgroup` crate's detection), `/proc/filesystems`, `/proc/self/status`,
//! `/sys/module`, the kernel configuration (`/proc/config.gz`, else
//! `/boot/config-$(uname -r)`), `/lib/modules/$(uname -r)/modules.{dep,builtin}`,
//! `/sys/class/bluetooth`, `/sys/class/net`, `/proc/net/route`,
//! `/proc/meminfo`, and `statvfs(3)` of the storage directories. The MQTT
//! broker is probed with one TCP connection, and only when it is on
//! loopback: the check never connects anywhere else.
//!
//! Each check ends as one line: `ok`, `WARN` (a mismatch Berth lives with:
//! an absent optional adapter, a broker not up yet, little free space, an
//! unexpected cgroup layout, or a fact that cannot be determined — then it
//! says "unknown" instead of guessing) or `MISSING` (something Berth cannot
//! build jails without: a namespace, a cgroup controller the board lists,
//! veth, bridge, nftables and its NAT when the board masquerades, overlayfs,
//! seccomp filters, or a BLE adapter the board marks required).

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use super::{Board, CgroupLayout, UsbRule};

/// How long the loopback broker probe waits.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The host being checked: the real one (`/`), or a fake tree in tests.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

impl Host {
    /// The running host.
    pub fn real() -> Host {
        Host {
            root: PathBuf::from("/"),
        }
    }

    /// A host whose `/proc`, `/sys`, `/dev`, `/boot`, `/lib` and storage
    /// directories are below `root`.
    pub fn with_root(root: impl Into<PathBuf>) -> Host {
        Host { root: root.into() }
    }

    /// `abs` (an absolute host path) below the root.
    fn path(&self, abs: impl AsRef<Path>) -> PathBuf {
        let abs = abs.as_ref();
        self.root.join(abs.strip_prefix("/").unwrap_or(abs))
    }

    fn read(&self, abs: &str) -> Option<String> {
        std::fs::read_to_string(self.path(abs)).ok()
    }

    fn exists(&self, abs: impl AsRef<Path>) -> bool {
        std::fs::symlink_metadata(self.path(abs)).is_ok()
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The host matches the board.
    Ok,
    /// A mismatch Berth lives with, or a fact that cannot be determined.
    Warn,
    /// Something Berth needs is missing.
    Missing,
}

impl Status {
    /// The word printed for it.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Missing => "MISSING",
        }
    }
}

/// One check: what was checked, and what was found and why it matters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The outcome.
    pub status: Status,
    /// What was checked (`kernel: overlayfs`).
    pub what: String,
    /// What was found, and where.
    pub why: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<7} {}: {}", self.status.label(), self.what, self.why)
    }
}

fn check(status: Status, what: impl Into<String>, why: impl Into<String>) -> Check {
    Check {
        status,
        what: what.into(),
        why: why.into(),
    }
}

/// All checks of one board on one host.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The board file.
    pub board: PathBuf,
    /// The board's name.
    pub name: String,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    /// Checks that ended with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// The checks that found something Berth needs missing.
    pub fn missing(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Missing)
    }

    /// The closing line: counts by status.
    pub fn summary(&self) -> String {
        format!(
            "board {}: {} ok, {} WARN, {} MISSING",
            self.name,
            self.count(Status::Ok),
            self.count(Status::Warn),
            self.count(Status::Missing)
        )
    }
}

/// What the kernel offers, read once per run.
struct Kernel {
    release: Option<String>,
    /// Source (file) and text of the kernel configuration.
    config: Option<(String, String)>,
    modules_dep: Option<String>,
    modules_builtin: Option<String>,
}

impl Kernel {
    fn read(host: &Host) -> Kernel {
        let release = host
            .read("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let mut config = None;
        if let Ok(f) = std::fs::File::open(host.path("/proc/config.gz")) {
            let mut text = String::new();
            if flate2::read::GzDecoder::new(f)
                .read_to_string(&mut text)
                .is_ok()
            {
                config = Some(("/proc/config.gz".to_string(), text));
            }
        }
        if config.is_none() {
            if let Some(r) = &release {
                let p = format!("/boot/config-{r}");
                if let Some(text) = host.read(&p) {
                    config = Some((p, text));
                }
            }
        }
        let modfile = |name: &str| {
            release
                .as_ref()
                .and_then(|r| host.read(&format!("/lib/modules/{r}/{name}")))
        };
        Kernel {
            modules_dep: modfile("modules.dep"),
            modules_builtin: modfile("modules.builtin"),
            release,
            config,
        }
    }

    /// The value of `CONFIG_X` (`y`, `m`, or `None` when not set), if the
    /// configuration is known.
    fn config_value(&self, key: &str) -> Option<Option<String>> {
        let (_, text) = self.config.as_ref()?;
        let prefix = format!("{key}=");
        Some(
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .map(|v| v.trim().to_string()),
        )
    }

    fn lists(text: &Option<String>, module: &str) -> Option<bool> {
        let text = text.as_ref()?;
        // modules.dep: `kernel/drivers/net/veth.ko.xz: deps`; modules.builtin:
        // `kernel/drivers/net/veth.ko`. Module files use `_` or `-` alike.
        let want: BTreeSet<String> = [module.to_string(), module.replace('_', "-")].into();
        Some(text.lines().any(|l| {
            let path = l.split(':').next().unwrap_or("");
            let file = path.rsplit('/').next().unwrap_or("");
            let stem = file.split(".ko").next().unwrap_or("");
            file.contains(".ko") && want.contains(stem)
        }))
    }

    fn modules_dir(&self) -> String {
        format!(
            "/lib/modules/{}",
            self.release.as_deref().unwrap_or("$(uname -r)")
        )
    }
}

/// A kernel feature that is either built in or a module.
struct Feature {
    what: &'static str,
    module: &'static str,
    config: &'static str,
}

fn feature(host: &Host, k: &Kernel, f: &Feature) -> Check {
    let what = format!("kernel: {}", f.what);
    if host.exists(format!("/sys/module/{}", f.module)) {
        return check(
            Status::Ok,
            what,
            format!("module {} present (/sys/module/{})", f.module, f.module),
        );
    }
    let dir = k.modules_dir();
    if let Some(value) = k.config_value(f.config) {
        let src = k.config.as_ref().map_or("", |(s, _)| s.as_str());
        return match value.as_deref() {
            Some("y") => check(Status::Ok, what, format!("{}=y in {src}", f.config)),
            Some("m") => match Kernel::lists(&k.modules_dep, f.module) {
                Some(true) => check(
                    Status::Ok,
                    what,
                    format!(
                        "{}=m in {src}, module {} installed (loaded on demand)",
                        f.config, f.module
                    ),
                ),
                Some(false) => check(
                    Status::Missing,
                    what,
                    format!(
                        "{}=m in {src} but module {} is not in {dir}/modules.dep",
                        f.config, f.module
                    ),
                ),
                None => check(
                    Status::Warn,
                    what,
                    format!(
                        "{}=m in {src}; unknown whether module {} is installed (no {dir}/modules.dep)",
                        f.config, f.module
                    ),
                ),
            },
            _ => check(
                Status::Missing,
                what,
                format!("{} is not set in {src}", f.config),
            ),
        };
    }
    match (
        Kernel::lists(&k.modules_builtin, f.module),
        Kernel::lists(&k.modules_dep, f.module),
    ) {
        (Some(true), _) => check(
            Status::Ok,
            what,
            format!("{} built in ({dir}/modules.builtin)", f.module),
        ),
        (_, Some(true)) => check(
            Status::Ok,
            what,
            format!(
                "module {} installed ({dir}/modules.dep, loaded on demand)",
                f.module
            ),
        ),
        (Some(false), Some(false)) => check(
            Status::Missing,
            what,
            format!(
                "{} is neither built in nor a module ({dir}/modules.builtin, modules.dep)",
                f.module
            ),
        ),
        _ => check(
            Status::Warn,
            what,
            format!(
                "unknown: no /sys/module/{}, no kernel configuration (/proc/config.gz, /boot/config-{}), no {dir}/modules.builtin",
                f.module,
                k.release.as_deref().unwrap_or("$(uname -r)")
            ),
        ),
    }
}

/// Runs every check of `board` against `host`.
pub fn check_host(board: &Board, host: &Host) -> Report {
    let mut checks = Vec::new();
    let kernel = Kernel::read(host);
    namespaces(host, &mut checks);
    cgroups(board, host, &mut checks);
    kernel_features(board, host, &kernel, &mut checks);
    serial(board, host, &kernel, &mut checks);
    ble(board, host, &mut checks);
    mqtt(board, &mut checks);
    network(board, host, &mut checks);
    storage(board, host, &mut checks);
    memory(board, host, &mut checks);
    Report {
        board: board.path.clone(),
        name: board.name.clone(),
        checks,
    }
}

fn namespaces(host: &Host, out: &mut Vec<Check>) {
    for ns in ["mnt", "pid", "net", "uts", "ipc", "cgroup", "user"] {
        let what = format!("kernel: {ns} namespace");
        let p = format!("/proc/self/ns/{ns}");
        if !host.exists(&p) {
            out.push(check(
                Status::Missing,
                what,
                format!("{p} absent: the kernel has no {ns} namespaces"),
            ));
            continue;
        }
        if ns != "user" {
            out.push(check(Status::Ok, what, format!("{p} present")));
            continue;
        }
        let max = "/proc/sys/user/max_user_namespaces";
        match host.read(max).and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(0) => out.push(check(
                Status::Missing,
                what,
                format!("{p} present but disabled: user.max_user_namespaces = 0 ({max})"),
            )),
            Some(n) => out.push(check(
                Status::Ok,
                what,
                format!("{p} present, user.max_user_namespaces = {n}"),
            )),
            None => out.push(check(
                Status::Warn,
                what,
                format!("{p} present; unknown whether enabled ({max} unreadable)"),
            )),
        }
    }
}

fn layout_name(l: cgroup::Layout) -> &'static str {
    match l {
        cgroup::Layout::V1 => "v1",
        cgroup::Layout::V2 => "v2",
        cgroup::Layout::Hybrid => "hybrid",
    }
}

fn cgroups(board: &Board, host: &Host, out: &mut Vec<Check>) {
    let mountinfo = host.read("/proc/self/mountinfo").unwrap_or_default();
    let h = match cgroup::Hierarchy::detect_with_root(&mountinfo, &host.root) {
        Ok(h) => h,
        Err(e) => {
            out.push(check(
                Status::Missing,
                "cgroup: layout",
                format!("no usable cgroup filesystem: {e}"),
            ));
            return;
        }
    };
    let got = layout_name(h.layout());
    let want = board.cgroup.expect;
    let matches = match want {
        CgroupLayout::Any => true,
        CgroupLayout::V1 => h.layout() == cgroup::Layout::V1,
        CgroupLayout::V2 => h.layout() == cgroup::Layout::V2,
        CgroupLayout::Hybrid => h.layout() == cgroup::Layout::Hybrid,
    };
    if matches {
        out.push(check(
            Status::Ok,
            "cgroup: layout",
            format!("{got} (board expects {})", want.as_str()),
        ));
    } else {
        out.push(check(
            Status::Warn,
            "cgroup: layout",
            format!(
                "{got}, board expects {} (Berth handles v1, v2 and hybrid; the board's image mounts {})",
                want.as_str(),
                want.as_str()
            ),
        ));
    }
    for (name, c) in &board.cgroup.controllers {
        let what = format!("cgroup: {name} controller");
        match h.controller_version(*c) {
            Some(cgroup::Layout::V2) => {
                let at = h
                    .unified_mount()
                    .map(|p| strip_root(host, p))
                    .unwrap_or_default();
                out.push(check(
                    Status::Ok,
                    what,
                    format!("in v2 ({at}/cgroup.controllers)"),
                ));
            }
            Some(_) => {
                let at = h
                    .v1_mount(*c)
                    .map(|p| strip_root(host, p))
                    .unwrap_or_default();
                out.push(check(Status::Ok, what, format!("in v1 ({at})")));
            }
            None => out.push(check(
                Status::Missing,
                what,
                format!(
                    "neither a v1 hierarchy nor the cgroup2 root ({}) offers it",
                    h.unified_mount()
                        .map(|p| strip_root(host, p))
                        .unwrap_or_else(|| "none mounted".into())
                ),
            )),
        }
    }
}

/// `p` as a host path (without the injected root).
fn strip_root(host: &Host, p: &Path) -> String {
    match p.strip_prefix(&host.root) {
        Ok(rel) => format!("/{}", rel.display()),
        Err(_) => p.display().to_string(),
    }
}

fn kernel_features(board: &Board, host: &Host, k: &Kernel, out: &mut Vec<Check>) {
    let mut features = vec![
        Feature {
            what: "veth",
            module: "veth",
            config: "CONFIG_VETH",
        },
        Feature {
            what: "bridge",
            module: "bridge",
            config: "CONFIG_BRIDGE",
        },
        Feature {
            what: "nftables",
            module: "nf_tables",
            config: "CONFIG_NF_TABLES",
        },
    ];
    if board.network.masquerade {
        features.push(Feature {
            what: "nftables NAT (network.masquerade)",
            module: "nft_chain_nat",
            config: "CONFIG_NFT_NAT",
        });
        features.push(Feature {
            what: "nftables masquerade (network.masquerade)",
            module: "nft_masq",
            config: "CONFIG_NFT_MASQ",
        });
    }
    for f in &features {
        out.push(feature(host, k, f));
    }

    // overlayfs: registered filesystems first (proc(5) /proc/filesystems).
    let fs = host.read("/proc/filesystems").unwrap_or_default();
    if fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        out.push(check(
            Status::Ok,
            "kernel: overlayfs",
            "overlay in /proc/filesystems",
        ));
    } else {
        out.push(feature(
            host,
            k,
            &Feature {
                what: "overlayfs",
                module: "overlay",
                config: "CONFIG_OVERLAY_FS",
            },
        ));
    }

    // seccomp: the Seccomp field exists with CONFIG_SECCOMP, Seccomp_filters
    // with CONFIG_SECCOMP_FILTER (proc(5), fs/proc/array.c).
    let status = host.read("/proc/self/status").unwrap_or_default();
    let field = |name: &str| status.lines().any(|l| l.split(':').next() == Some(name));
    let what = "kernel: seccomp filters";
    if field("Seccomp_filters") {
        out.push(check(
            Status::Ok,
            what,
            "Seccomp_filters in /proc/self/status",
        ));
    } else if !status.is_empty() && !field("Seccomp") {
        out.push(check(
            Status::Missing,
            what,
            "no Seccomp field in /proc/self/status: the kernel lacks CONFIG_SECCOMP",
        ));
    } else {
        match k.config_value("CONFIG_SECCOMP_FILTER") {
            Some(Some(v)) if v == "y" => out.push(check(
                Status::Ok,
                what,
                format!(
                    "CONFIG_SECCOMP_FILTER=y in {}",
                    k.config.as_ref().map_or("", |(s, _)| s.as_str())
                ),
            )),
            Some(_) => out.push(check(
                Status::Missing,
                what,
                format!(
                    "CONFIG_SECCOMP_FILTER is not set in {}",
                    k.config.as_ref().map_or("", |(s, _)| s.as_str())
                ),
            )),
            None => out.push(check(
                Status::Warn,
                what,
                "unknown: no Seccomp_filters in /proc/self/status and no kernel configuration",
            )),
        }
    }
}

/// `*` and `?` glob on one file name.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], name) || (!name.is_empty() && glob_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

fn serial(board: &Board, host: &Host, k: &Kernel, out: &mut Vec<Check>) {
    for port in &board.serial {
        let what = format!("serial {}", port.name);
        if port.is_glob() {
            let p = Path::new(&port.path);
            let dir = p.parent().unwrap_or(Path::new("/dev"));
            let pat = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut found: Vec<String> = std::fs::read_dir(host.path(dir))
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| glob_match(pat.as_bytes(), n.as_bytes()))
                        .collect()
                })
                .unwrap_or_default();
            found.sort();
            if found.is_empty() {
                out.push(check(
                    Status::Ok,
                    what.clone(),
                    format!(
                        "{}: no adapter plugged in now; berthd opens them as they appear",
                        port.path
                    ),
                ));
            } else {
                out.push(check(
                    Status::Ok,
                    what.clone(),
                    format!("{}: {} present", port.path, found.join(", ")),
                ));
            }
        } else {
            match std::fs::metadata(host.path(&port.path)) {
                Ok(m) if m.file_type().is_char_device() => out.push(check(
                    Status::Ok,
                    what.clone(),
                    format!("{} present", port.path),
                )),
                Ok(_) => out.push(check(
                    Status::Warn,
                    what.clone(),
                    format!("{} exists but is not a character device", port.path),
                )),
                Err(_) => out.push(check(
                    Status::Warn,
                    what.clone(),
                    format!(
                        "{} absent: devices on this port cannot announce themselves",
                        port.path
                    ),
                )),
            }
        }
        // The drivers the USB rules name.
        let drivers: BTreeSet<&str> = port
            .usb_rules
            .iter()
            .map(|r| match r {
                UsbRule::Id { driver, .. } | UsbRule::Class { driver, .. } => driver.as_str(),
            })
            .collect();
        if drivers.is_empty() {
            continue;
        }
        let mut absent = Vec::new();
        let mut unknown = Vec::new();
        for d in &drivers {
            let registered = host.exists(format!("/sys/bus/usb/drivers/{d}"))
                || host.exists(format!("/sys/bus/usb-serial/drivers/{d}"))
                || host.exists(format!("/sys/module/{d}"));
            if registered {
                continue;
            }
            match (
                Kernel::lists(&k.modules_builtin, d),
                Kernel::lists(&k.modules_dep, d),
            ) {
                (Some(true), _) | (_, Some(true)) => {}
                (Some(false), Some(false)) => absent.push(*d),
                // Without the module lists the configuration may still
                // know a built-in or missing driver.
                _ => match usb_driver_config(d).and_then(|key| k.config_value(key)) {
                    Some(Some(v)) if v == "y" => {}
                    Some(None) => absent.push(*d),
                    _ => unknown.push(*d),
                },
            }
        }
        let what = format!("serial {} drivers", port.name);
        let all: Vec<&str> = drivers.iter().copied().collect();
        if !absent.is_empty() {
            out.push(check(
                Status::Warn,
                what,
                format!(
                    "{} not in this kernel (not registered under /sys/bus/usb/drivers, not built in or installed per {}, or not set in the kernel configuration): such adapters will not show up",
                    absent.join(", "),
                    k.modules_dir()
                ),
            ));
        } else if !unknown.is_empty() {
            out.push(check(
                Status::Warn,
                what,
                format!(
                    "unknown for {}: not registered under /sys/bus/usb/drivers and no {}/modules.dep",
                    unknown.join(", "),
                    k.modules_dir()
                ),
            ));
        } else {
            out.push(check(
                Status::Ok,
                what,
                format!("{} available", all.join(", ")),
            ));
        }
    }
}

/// The kernel option of a USB serial driver that board files name.
fn usb_driver_config(driver: &str) -> Option<&'static str> {
    Some(match driver {
        "ftdi_sio" => "CONFIG_USB_SERIAL_FTDI_SIO",
        "cp210x" => "CONFIG_USB_SERIAL_CP210X",
        "ch341" => "CONFIG_USB_SERIAL_CH341",
        "pl2303" => "CONFIG_USB_SERIAL_PL2303",
        "cdc_acm" => "CONFIG_USB_ACM",
        _ => return None,
    })
}

fn ble(board: &Board, host: &Host, out: &mut Vec<Check>) {
    let what = format!("ble adapter {}", board.ble.adapter);
    if !board.ble.enabled {
        out.push(check(Status::Ok, what, "BLE is disabled on this board"));
        return;
    }
    let p = format!("/sys/class/bluetooth/{}", board.ble.adapter);
    if host.exists(&p) {
        out.push(check(Status::Ok, what, format!("{p} present")));
    } else if board.ble.required {
        out.push(check(
            Status::Missing,
            what,
            format!("{p} absent and the board requires it (ble.required = true)"),
        ));
    } else {
        out.push(check(
            Status::Warn,
            what,
            format!("{p} absent; berthd starts without it and picks it up when it appears"),
        ));
    }
}

fn loopback_addr(host: &str) -> Option<IpAddr> {
    if host == "localhost" {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let ip: IpAddr = host.trim_matches(['[', ']']).parse().ok()?;
    ip.is_loopback().then_some(ip)
}

fn mqtt(board: &Board, out: &mut Vec<Check>) {
    let m = &board.mqtt;
    let what = format!("mqtt broker {}", m.broker);
    let Some(ip) = loopback_addr(&m.host) else {
        out.push(check(
            Status::Warn,
            what,
            "not checked: the broker is not on loopback, and this check connects nowhere else",
        ));
        return;
    };
    let addr = SocketAddr::new(ip, m.port);
    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(_) => out.push(check(
            Status::Ok,
            what,
            format!("{addr} accepts connections"),
        )),
        Err(e) => out.push(check(
            Status::Warn,
            what,
            format!("cannot connect to {addr}: {e}; berthd's MQTT source retries until it is up"),
        )),
    }
}

/// Routes of `/proc/net/route`: interface, destination, mask.
fn routes(host: &Host) -> Option<Vec<(String, u32, u32)>> {
    let text = host.read("/proc/net/route")?;
    // The kernel prints each address as the native-endian u32 of its
    // network-order bytes.
    let hex = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| u32::from_be_bytes(v.to_ne_bytes()))
    };
    Some(
        text.lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let dest = hex(f.get(1)?)?;
                let mask = hex(f.get(7)?)?;
                Some((f.first()?.to_string(), dest, mask))
            })
            .collect(),
    )
}

fn network(board: &Board, host: &Host, out: &mut Vec<Check>) {
    let n = &board.network;
    let br = format!("/sys/class/net/{}", n.bridge);
    let what = format!("network: bridge {}", n.bridge);
    if !host.exists(&br) {
        out.push(check(
            Status::Ok,
            what,
            format!("{br} absent: free to create"),
        ));
    } else if host.exists(format!("{br}/bridge")) {
        out.push(check(
            Status::Ok,
            what,
            format!("{br} exists and is a bridge"),
        ));
    } else {
        out.push(check(
            Status::Warn,
            what,
            format!("{br} exists and is not a bridge"),
        ));
    }
    let routes = routes(host);
    let range = u32::from(n.jail_range);
    let rmask = super::mask(n.prefix_len);
    let what = format!("network: jail_range {}/{}", n.jail_range, n.prefix_len);
    match &routes {
        None => out.push(check(
            Status::Warn,
            what,
            "unknown whether it clashes with a host route (/proc/net/route unreadable)",
        )),
        Some(rs) => {
            let clash: Vec<String> = rs
                .iter()
                .filter(|(iface, dest, mask)| {
                    // Overlap: equal under the shorter of the two masks;
                    // the default route overlaps everything and is fine.
                    let m = rmask & *mask;
                    *mask != 0 && iface != &n.bridge && (range & m) == (*dest & m)
                })
                .map(|(iface, dest, mask)| {
                    format!("{}/{} on {iface}", Ipv4Addr::from(*dest), mask.count_ones())
                })
                .collect();
            if clash.is_empty() {
                out.push(check(Status::Ok, what, "no host route overlaps it"));
            } else {
                out.push(check(
                    Status::Warn,
                    what,
                    format!(
                        "overlaps host route {}: jail addresses would be ambiguous",
                        clash.join(", ")
                    ),
                ));
            }
        }
    }
    let what = "network: uplink".to_string();
    match &n.uplink {
        Some(up) => {
            if host.exists(format!("/sys/class/net/{up}")) {
                out.push(check(Status::Ok, what, format!("{up} present")));
            } else {
                out.push(check(
                    Status::Warn,
                    what,
                    format!("{up} absent (/sys/class/net/{up}): jails get no egress through it"),
                ));
            }
        }
        None => {
            let default = routes
                .as_ref()
                .and_then(|rs| rs.iter().find(|(_, d, m)| *d == 0 && *m == 0))
                .map(|(iface, _, _)| iface.clone());
            match (default, &routes) {
                (Some(iface), _) => out.push(check(
                    Status::Ok,
                    what,
                    format!("auto: the default route's interface is {iface}"),
                )),
                (None, Some(_)) => out.push(check(
                    Status::Warn,
                    what,
                    "auto, but the host has no default route: jails get no egress",
                )),
                (None, None) => out.push(check(
                    Status::Warn,
                    what,
                    "auto; unknown default route (/proc/net/route unreadable)",
                )),
            }
        }
    }
}

fn storage(board: &Board, host: &Host, out: &mut Vec<Check>) {
    let s = &board.storage;
    for (key, dir) in [
        ("state_dir", &s.state_dir),
        ("images_dir", &s.images_dir),
        ("jails_dir", &s.jails_dir),
    ] {
        let what = format!("storage: {key} {}", dir.display());
        // The directory may not exist yet: its filesystem is that of the
        // nearest existing ancestor.
        let mut at = dir.clone();
        while !host.path(&at).exists() {
            if !at.pop() {
                break;
            }
        }
        let shown = if &at == dir {
            String::new()
        } else {
            format!(" (not created yet; {} is on that filesystem)", at.display())
        };
        match nix::sys::statvfs::statvfs(&host.path(&at)) {
            Ok(v) => {
                let free_mib =
                    (v.blocks_available() as u128 * v.fragment_size() as u128 / (1 << 20)) as u64;
                if free_mib >= s.min_free_mib {
                    out.push(check(
                        Status::Ok,
                        what,
                        format!(
                            "{free_mib} MiB free >= min_free_mib {}{shown}",
                            s.min_free_mib
                        ),
                    ));
                } else {
                    out.push(check(
                        Status::Warn,
                        what,
                        format!(
                            "{free_mib} MiB free < min_free_mib {}: new images would be refused{shown}",
                            s.min_free_mib
                        ),
                    ));
                }
            }
            Err(e) => out.push(check(
                Status::Warn,
                what,
                format!("unknown free space: statvfs {}: {e}", at.display()),
            )),
        }
    }
}

/// A `/proc/meminfo` field in MiB.
fn meminfo_mib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib / 1024)
    })
}

fn memory(board: &Board, host: &Host, out: &mut Vec<Check>) {
    let m = &board.memory;
    let committed = m.committed_mib();
    let budget = format!(
        "berthd {} + reserve {} + {} x {} = {committed} MiB",
        m.berthd_max_mib, m.host_reserve_mib, m.max_jails, m.jail_default_mib
    );
    let Some(text) = host.read("/proc/meminfo") else {
        out.push(check(
            Status::Warn,
            "memory: total",
            "unknown (/proc/meminfo unreadable)",
        ));
        return;
    };
    match meminfo_mib(&text, "MemTotal") {
        Some(total) if total < committed => out.push(check(
            Status::Warn,
            "memory: total",
            format!("MemTotal {total} MiB < the board's budget {budget}"),
        )),
        // The kernel keeps some RAM for itself (and a Pi its GPU): 1/8 of
        // slack before the host counts as smaller than the board class.
        Some(total) if total < board.memory_mib - board.memory_mib / 8 => out.push(check(
            Status::Warn,
            "memory: total",
            format!(
                "MemTotal {total} MiB, well below the board class's {} MiB (budget {budget} fits)",
                board.memory_mib
            ),
        )),
        Some(total) => out.push(check(
            Status::Ok,
            "memory: total",
            format!("MemTotal {total} MiB >= budget {budget}"),
        )),
        None => out.push(check(
            Status::Warn,
            "memory: total",
            "unknown (no MemTotal in /proc/meminfo)",
        )),
    }
    let need = m
        .berthd_max_mib
        .saturating_add(m.max_jails.saturating_mul(m.jail_default_mib));
    match meminfo_mib(&text, "MemAvailable") {
        Some(avail) if avail < need => out.push(check(
            Status::Warn,
            "memory: available",
            format!(
                "MemAvailable {avail} MiB < berthd {} + {} x {} = {need} MiB: not every jail would fit now",
                m.berthd_max_mib, m.max_jails, m.jail_default_mib
            ),
        )),
        Some(avail) => out.push(check(
            Status::Ok,
            "memory: available",
            format!(
                "MemAvailable {avail} MiB >= berthd {} + {} x {} = {need} MiB",
                m.berthd_max_mib, m.max_jails, m.jail_default_mib
            ),
        )),
        None => out.push(check(
            Status::Warn,
            "memory: available",
            "unknown (no MemAvailable in /proc/meminfo)",
        )),
    }
}

/// `berth check-board`.
#[derive(Debug, clap::Args)]
pub struct CheckBoardArgs {
    /// The board file (board-configs/*.toml, /etc/berth/board.toml).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print JSON instead of one line per check.
    #[arg(long)]
    pub json: bool,
    /// Check the host tree below DIR instead of / (tests).
    #[arg(long, value_name = "DIR", hide = true)]
    pub root: Option<PathBuf>,
}

/// Runs `berth check-board`: exit 0 when nothing is missing, 1 when a
/// required check fails, 2 for a bad board file.
pub fn main(args: CheckBoardArgs) -> ExitCode {
    let board = match Board::load(&args.file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("berth: error: {e}");
            return ExitCode::from(crate::EXIT_USAGE);
        }
    };
    let host = args.root.map_or_else(Host::real, Host::with_root);
    let report = check_host(&board, &host);
    let printed = if args.json {
        serde_json::to_string_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|s| write_out(&format!("{s}\n")))
    } else {
        let mut text = String::new();
        for c in &report.checks {
            text.push_str(&format!("{c}\n"));
        }
        text.push_str(&format!("{}\n", report.summary()));
        write_out(&text)
    };
    if let Err(e) = printed {
        eprintln!("berth: error: cannot write output: {e}");
        return ExitCode::from(crate::EXIT_FAILURE);
    }
    if report.count(Status::Missing) > 0 {
        ExitCode::from(crate::EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}

fn write_out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    const RELEASE: &str = "6.1.0-test";

    /// A fake host tree: a hybrid cgroup layout with every controller, all
    /// namespaces, a kernel configuration in /boot, a BLE adapter.
    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        fn new() -> Fake {
            let f = Fake {
                dir: tempfile::tempdir().unwrap(),
            };
            for ns in ["mnt", "pid", "net", "uts", "ipc", "cgroup", "user"] {
                f.link(&format!("proc/self/ns/{ns}"), &format!("{ns}:[4026531840]"));
            }
            f.write("proc/sys/user/max_user_namespaces", "63000\n");
            f.write("proc/sys/kernel/osrelease", &format!("{RELEASE}\n"));
            let mut mi =
                String::from("31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n");
            for (i, c) in ["cpu", "cpuacct", "cpuset", "memory", "pids", "blkio"]
                .iter()
                .enumerate()
            {
                mi.push_str(&format!(
                    "{} 31 0:{} / /sys/fs/cgroup/{c} rw,relatime - cgroup cgroup rw,{c}\n",
                    40 + i,
                    40 + i
                ));
                f.mkdir(&format!("sys/fs/cgroup/{c}"));
            }
            mi.push_str("50 31 0:50 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n");
            f.write("sys/fs/cgroup/unified/cgroup.controllers", "\n");
            f.write("proc/self/mountinfo", &mi);
            f.write("proc/filesystems", "nodev\tsysfs\nnodev\toverlay\n");
            f.write(
                "proc/self/status",
                "Name:\tberth\nSeccomp:\t0\nSeccomp_filters:\t0\n",
            );
            f.write(
                &format!("boot/config-{RELEASE}"),
                "CONFIG_VETH=m\nCONFIG_BRIDGE=y\nCONFIG_NF_TABLES=y\nCONFIG_NFT_NAT=y\nCONFIG_NFT_MASQ=y\n# CONFIG_OVERLAY_FS is not set\n",
            );
            f.write(
                &format!("lib/modules/{RELEASE}/modules.dep"),
                "kernel/drivers/net/veth.ko.xz:\nkernel/drivers/usb/serial/ftdi_sio.ko.xz: kernel/drivers/usb/serial/usbserial.ko.xz\n",
            );
            f.write(
                &format!("lib/modules/{RELEASE}/modules.builtin"),
                "kernel/drivers/usb/class/cdc-acm.ko\nkernel/drivers/usb/serial/cp210x.ko\nkernel/drivers/usb/serial/ch341.ko\nkernel/drivers/usb/serial/pl2303.ko\n",
            );
            f.mkdir("sys/class/bluetooth/hci0");
            f.write("dev/ttyUSB0", "");
            f.write("dev/ttyUSB1", "");
            f.write("dev/ttyS0", "");
            f.mkdir("sys/class/net/eth0");
            f.write(
                "proc/net/route",
                "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                 eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
            );
            f.write(
                "proc/meminfo",
                "MemTotal:        4000000 kB\nMemFree:         3000000 kB\nMemAvailable:    3500000 kB\n",
            );
            f.mkdir("var/lib");
            f
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        fn mkdir(&self, rel: &str) {
            std::fs::create_dir_all(self.path(rel)).unwrap();
        }

        fn write(&self, rel: &str, text: &str) {
            let p = self.path(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }

        fn link(&self, rel: &str, target: &str) {
            let p = self.path(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, p).unwrap();
        }

        fn remove(&self, rel: &str) {
            let p = self.path(rel);
            if p.is_dir() {
                std::fs::remove_dir_all(p).unwrap();
            } else {
                std::fs::remove_file(p).unwrap();
            }
        }

        fn host(&self) -> Host {
            Host::with_root(self.dir.path())
        }
    }

    fn generic_text() -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../board-configs/generic-x86_64.toml");
        std::fs::read_to_string(p).unwrap()
    }

    /// The generic board with its broker on `port` and edits applied.
    fn board(port: u16, edits: &[(&str, &str)]) -> Board {
        let mut text = generic_text().replace("127.0.0.1:1883", &format!("127.0.0.1:{port}"));
        for (from, to) in edits {
            assert!(text.contains(from), "{from:?}");
            text = text.replacen(from, to, 1);
        }
        Board::parse(Path::new("/x/generic-x86_64.toml"), &text).unwrap()
    }

    /// A loopback port nothing listens on.
    fn closed_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn lines(r: &Report) -> Vec<String> {
        r.checks.iter().map(|c| c.to_string()).collect()
    }

    fn line<'a>(r: &'a Report, what: &str) -> &'a Check {
        r.checks
            .iter()
            .find(|c| c.what == what)
            .unwrap_or_else(|| panic!("no check {what:?} in {:#?}", lines(r)))
    }

    #[test]
    fn a_matching_host_passes_with_lines_naming_their_source() {
        let fake = Fake::new();
        let broker = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = broker.local_addr().unwrap().port();
        let r = check_host(&board(port, &[]), &fake.host());
        let all = lines(&r);
        assert_eq!(r.count(Status::Missing), 0, "{all:#?}");
        let want = [
            "ok      kernel: user namespace: /proc/self/ns/user present, user.max_user_namespaces = 63000".to_string(),
            "ok      kernel: mnt namespace: /proc/self/ns/mnt present".to_string(),
            "ok      cgroup: layout: hybrid (board expects any)".to_string(),
            "ok      cgroup: memory controller: in v1 (/sys/fs/cgroup/memory)".to_string(),
            "ok      cgroup: pids controller: in v1 (/sys/fs/cgroup/pids)".to_string(),
            format!("ok      kernel: veth: CONFIG_VETH=m in /boot/config-{RELEASE}, module veth installed (loaded on demand)"),
            format!("ok      kernel: bridge: CONFIG_BRIDGE=y in /boot/config-{RELEASE}"),
            format!("ok      kernel: nftables masquerade (network.masquerade): CONFIG_NFT_MASQ=y in /boot/config-{RELEASE}"),
            "ok      kernel: overlayfs: overlay in /proc/filesystems".to_string(),
            "ok      kernel: seccomp filters: Seccomp_filters in /proc/self/status".to_string(),
            "ok      serial usb: /dev/ttyUSB*: ttyUSB0, ttyUSB1 present".to_string(),
            "ok      serial usb drivers: ch341, cp210x, ftdi_sio, pl2303 available".to_string(),
            "ok      serial usb-acm: /dev/ttyACM*: no adapter plugged in now; berthd opens them as they appear".to_string(),
            "ok      ble adapter hci0: /sys/class/bluetooth/hci0 present".to_string(),
            format!("ok      mqtt broker mqtt://127.0.0.1:{port}: 127.0.0.1:{port} accepts connections"),
            "ok      network: bridge berth0: /sys/class/net/berth0 absent: free to create".to_string(),
            "ok      network: jail_range 10.88.0.0/24: no host route overlaps it".to_string(),
            "ok      network: uplink: auto: the default route's interface is eth0".to_string(),
            "ok      memory: total: MemTotal 3906 MiB >= budget berthd 64 + reserve 512 + 4 x 256 = 1600 MiB".to_string(),
            "ok      memory: available: MemAvailable 3417 MiB >= berthd 64 + 4 x 256 = 1088 MiB".to_string(),
        ];
        for w in &want {
            assert!(all.contains(w), "missing line {w:?} in {all:#?}");
        }
        let st = line(&r, "storage: images_dir /var/lib/berth/images");
        assert_eq!(st.status, Status::Ok, "{st}");
        assert!(
            st.why
                .ends_with("(not created yet; /var/lib is on that filesystem)"),
            "{st}"
        );
        assert_eq!(
            r.summary(),
            format!(
                "board generic-x86_64: {} ok, 0 WARN, 0 MISSING",
                r.checks.len()
            )
        );
    }

    #[test]
    fn missing_kernel_features_are_missing() {
        let fake = Fake::new();
        fake.remove("proc/self/ns/cgroup");
        fake.write("proc/sys/user/max_user_namespaces", "0\n");
        fake.write(
            &format!("boot/config-{RELEASE}"),
            "CONFIG_VETH=m\n# CONFIG_BRIDGE is not set\nCONFIG_NF_TABLES=y\nCONFIG_NFT_NAT=y\n",
        );
        fake.write(&format!("lib/modules/{RELEASE}/modules.dep"), "");
        fake.write("proc/filesystems", "nodev\tsysfs\n");
        fake.write("proc/self/status", "Name:\tberth\n");
        let r = check_host(&board(closed_port(), &[]), &fake.host());
        let all = lines(&r);
        let want = [
            "MISSING kernel: cgroup namespace: /proc/self/ns/cgroup absent: the kernel has no cgroup namespaces".to_string(),
            "MISSING kernel: user namespace: /proc/self/ns/user present but disabled: user.max_user_namespaces = 0 (/proc/sys/user/max_user_namespaces)".to_string(),
            format!("MISSING kernel: veth: CONFIG_VETH=m in /boot/config-{RELEASE} but module veth is not in /lib/modules/{RELEASE}/modules.dep"),
            format!("MISSING kernel: bridge: CONFIG_BRIDGE is not set in /boot/config-{RELEASE}"),
            format!("MISSING kernel: nftables masquerade (network.masquerade): CONFIG_NFT_MASQ is not set in /boot/config-{RELEASE}"),
            format!("MISSING kernel: overlayfs: CONFIG_OVERLAY_FS is not set in /boot/config-{RELEASE}"),
            "MISSING kernel: seccomp filters: no Seccomp field in /proc/self/status: the kernel lacks CONFIG_SECCOMP".to_string(),
        ];
        for w in &want {
            assert!(all.contains(w), "missing line {w:?} in {all:#?}");
        }
        assert_eq!(r.count(Status::Missing), want.len(), "{all:#?}");
        // The broker is down: a warning, not a missing requirement.
        let m = &r
            .checks
            .iter()
            .find(|c| c.what.starts_with("mqtt"))
            .unwrap();
        assert_eq!(m.status, Status::Warn, "{m}");
        assert!(m.why.contains("cannot connect to 127.0.0.1:"), "{m}");
    }

    #[test]
    fn without_kernel_configuration_the_answer_is_unknown_not_a_guess() {
        let fake = Fake::new();
        fake.remove(&format!("boot/config-{RELEASE}"));
        fake.remove(&format!("lib/modules/{RELEASE}"));
        fake.write("proc/self/status", "Name:\tberth\nSeccomp:\t0\n");
        let r = check_host(&board(closed_port(), &[]), &fake.host());
        let veth = line(&r, "kernel: veth");
        assert_eq!(veth.status, Status::Warn);
        assert!(veth.why.starts_with("unknown: no /sys/module/veth, no kernel configuration (/proc/config.gz, /boot/config-6.1.0-test)"), "{veth}");
        let sc = line(&r, "kernel: seccomp filters");
        assert_eq!(
            sc.to_string(),
            "WARN    kernel: seccomp filters: unknown: no Seccomp_filters in /proc/self/status and no kernel configuration"
        );
        let drivers = line(&r, "serial usb drivers");
        assert_eq!(drivers.status, Status::Warn);
        assert!(
            drivers
                .why
                .starts_with("unknown for ch341, cp210x, ftdi_sio, pl2303"),
            "{drivers}"
        );
        // A loaded module is known whatever the configuration says.
        fake.mkdir("sys/module/veth");
        let r = check_host(&board(closed_port(), &[]), &fake.host());
        assert_eq!(
            line(&r, "kernel: veth").to_string(),
            "ok      kernel: veth: module veth present (/sys/module/veth)"
        );
    }

    #[test]
    fn proc_config_gz_is_read_first() {
        let fake = Fake::new();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"CONFIG_VETH=y\nCONFIG_BRIDGE=y\n").unwrap();
        fake.write("proc/config.gz", "");
        std::fs::write(fake.path("proc/config.gz"), gz.finish().unwrap()).unwrap();
        let r = check_host(&board(closed_port(), &[]), &fake.host());
        assert_eq!(
            line(&r, "kernel: veth").to_string(),
            "ok      kernel: veth: CONFIG_VETH=y in /proc/config.gz"
        );
        assert_eq!(line(&r, "kernel: nftables").status, Status::Missing);
    }

    #[test]
    fn cgroup_layout_and_controllers_against_the_board() {
        let fake = Fake::new();
        // Drop the pids hierarchy; offer memory in v2.
        let mi = std::fs::read_to_string(fake.path("proc/self/mountinfo")).unwrap();
        let mi: String = mi
            .lines()
            .filter(|l| !l.contains("/pids "))
            .map(|l| format!("{l}\n"))
            .collect();
        fake.write("proc/self/mountinfo", &mi);
        fake.write("sys/fs/cgroup/unified/cgroup.controllers", "memory io\n");
        let b = board(closed_port(), &[("expect = \"any\"", "expect = \"v2\"")]);
        let r = check_host(&b, &fake.host());
        assert_eq!(
            line(&r, "cgroup: layout").to_string(),
            "WARN    cgroup: layout: hybrid, board expects v2 (Berth handles v1, v2 and hybrid; the board's image mounts v2)"
        );
        assert_eq!(
            line(&r, "cgroup: memory controller").to_string(),
            "ok      cgroup: memory controller: in v2 (/sys/fs/cgroup/unified/cgroup.controllers)"
        );
        assert_eq!(
            line(&r, "cgroup: pids controller").to_string(),
            "MISSING cgroup: pids controller: neither a v1 hierarchy nor the cgroup2 root (/sys/fs/cgroup/unified) offers it"
        );
        // No cgroup filesystem at all.
        fake.write("proc/self/mountinfo", "");
        let r = check_host(&b, &fake.host());
        assert_eq!(line(&r, "cgroup: layout").status, Status::Missing);
    }

    #[test]
    fn ble_serial_network_storage_and_memory_mismatches() {
        let fake = Fake::new();
        fake.remove("sys/class/bluetooth/hci0");
        fake.write(
            "proc/net/route",
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth1\t0000580A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n",
        );
        fake.mkdir("sys/class/net/berth0");
        fake.write(
            "proc/meminfo",
            "MemTotal:        1000000 kB\nMemAvailable:     500000 kB\n",
        );
        let b = board(
            closed_port(),
            &[
                ("required = false", "required = true"),
                ("uplink = \"auto\"", "uplink = \"enp9s0\""),
                ("min_free_mib = 1024", "min_free_mib = 999999999"),
            ],
        );
        let r = check_host(&b, &fake.host());
        let all = lines(&r);
        let want = [
            "MISSING ble adapter hci0: /sys/class/bluetooth/hci0 absent and the board requires it (ble.required = true)",
            "WARN    network: bridge berth0: /sys/class/net/berth0 exists and is not a bridge",
            "WARN    network: jail_range 10.88.0.0/24: overlaps host route 10.88.0.0/16 on eth1: jail addresses would be ambiguous",
            "WARN    network: uplink: enp9s0 absent (/sys/class/net/enp9s0): jails get no egress through it",
            "WARN    memory: total: MemTotal 976 MiB < the board's budget berthd 64 + reserve 512 + 4 x 256 = 1600 MiB",
            "WARN    memory: available: MemAvailable 488 MiB < berthd 64 + 4 x 256 = 1088 MiB: not every jail would fit now",
        ];
        for w in want {
            assert!(all.iter().any(|l| l == w), "missing line {w:?} in {all:#?}");
        }
        let st = line(&r, "storage: state_dir /var/lib/berth");
        assert_eq!(st.status, Status::Warn);
        assert!(
            st.why
                .contains("< min_free_mib 999999999: new images would be refused"),
            "{st}"
        );
        // Not required: a warning; disabled: fine.
        let b = board(closed_port(), &[]);
        let r = check_host(&b, &fake.host());
        assert_eq!(
            line(&r, "ble adapter hci0").to_string(),
            "WARN    ble adapter hci0: /sys/class/bluetooth/hci0 absent; berthd starts without it and picks it up when it appears"
        );
        let b = board(closed_port(), &[("enabled = true", "enabled = false")]);
        let r = check_host(&b, &fake.host());
        assert_eq!(line(&r, "ble adapter hci0").status, Status::Ok);
        // Fixed serial ports.
        let hpe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../board-configs/hpe-el10.toml");
        let b = Board::load(&hpe).unwrap();
        let r = check_host(&b, &fake.host());
        assert_eq!(
            line(&r, "serial com1").to_string(),
            "WARN    serial com1: /dev/ttyS0 exists but is not a character device"
        );
        assert_eq!(
            line(&r, "serial com2-rs485").to_string(),
            "WARN    serial com2-rs485: /dev/ttyS1 absent: devices on this port cannot announce themselves"
        );
    }

    #[test]
    fn a_broker_off_loopback_is_never_contacted() {
        let fake = Fake::new();
        let b = board(closed_port(), &[("mqtt://127.0.0.1:", "mqtt://192.0.2.1:")]);
        let start = std::time::Instant::now();
        let r = check_host(&b, &fake.host());
        let m = r
            .checks
            .iter()
            .find(|c| c.what.starts_with("mqtt broker mqtt://192.0.2.1:"))
            .unwrap();
        assert_eq!(
            m.to_string(),
            format!("WARN    {}: not checked: the broker is not on loopback, and this check connects nowhere else", m.what)
        );
        assert!(start.elapsed() < CONNECT_TIMEOUT);
    }

    #[test]
    fn helpers() {
        assert!(glob_match(b"ttyUSB*", b"ttyUSB0"));
        assert!(glob_match(b"ttyUSB*", b"ttyUSB"));
        assert!(!glob_match(b"ttyUSB*", b"ttyACM0"));
        assert!(glob_match(b"tty?", b"ttyS"));
        assert!(glob_match(b"*ACM*", b"ttyACM12"));
        assert_eq!(meminfo_mib("MemTotal:  2048 kB\n", "MemTotal"), Some(2));
        assert_eq!(meminfo_mib("MemTotalX:  2048 kB\n", "MemTotal"), None);
        assert_eq!(
            loopback_addr("localhost"),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        assert!(loopback_addr("::1").is_some());
        assert!(loopback_addr("10.0.0.1").is_none());
        assert!(loopback_addr("broker.example").is_none());
        let c = check(Status::Missing, "a", "b");
        assert_eq!(c.to_string(), "MISSING a: b");
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"status": "missing", "what": "a", "why": "b"})
        );
    }
}
