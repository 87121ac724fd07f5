//! Board configurations: one TOML file per supported board
//! (`board-configs/*.toml`, installed as `/etc/berth/board.toml`) saying
//! what the gateway has and may spend: serial ports and their USB rules, the
//! BLE adapter, the MQTT broker, the jail bridge and address range, storage
//! paths, the cgroup layout expected, and the memory budgets.
//!
//! [`Board::load`] reads a file and checks it with the same rules as the
//! offline checker `board-configs/check` (every section and key present, no
//! unknown ones, values that hold together); a bad file is refused with its
//! path, the line and column of the offending value and the reason, in the
//! style of the daemon's configuration ([`crate::daemon::config`]).
//!
//! [`host`] compares the running host against a board (`berth check-board`,
//! and berthd at start with `--board`).
//!
//! The key reference is `board-configs/README.md`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use cgroup::Controller;
use serde::Deserialize;
use toml::Spanned;

pub mod host;

/// The one schema version this code reads.
pub const SCHEMA: i64 = 1;
/// File stem of the installed copy (`/etc/berth/board.toml`), which is
/// exempt from the name-equals-file-name rule.
pub const INSTALLED_STEM: &str = "board";
/// Rust targets a board may name (the ones `cross/build` builds).
pub const TARGETS: [&str; 2] = ["armv7-unknown-linux-gnueabihf", "x86_64-unknown-linux-gnu"];
/// Standard serial line speeds.
pub const BAUDS: [u32; 11] = [
    1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600,
];
/// Controllers a board may ask for, by their `board.toml` name.
pub const CONTROLLERS: [(&str, Controller); 5] = [
    ("cpu", Controller::Cpu),
    ("cpuset", Controller::Cpuset),
    ("io", Controller::Io),
    ("memory", Controller::Memory),
    ("pids", Controller::Pids),
];

/// A board file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// The file cannot be read.
    #[error("cannot read board {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A value is wrong (or the TOML is).
    #[error("{}: {reason}", at(path, *line, *column))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending value (0 when unknown).
        line: usize,
        /// 1-based column of the offending value (0 when unknown).
        column: usize,
        /// What is wrong.
        reason: String,
    },
}

fn at(path: &Path, line: usize, column: usize) -> String {
    if line == 0 {
        path.display().to_string()
    } else {
        format!("{}:{line}:{column}", path.display())
    }
}

// ---- the file as written ------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BoardFile {
    schema: Spanned<i64>,
    board: BoardSection,
    // Zero or more `[[serial]]` tables.
    #[serde(default)]
    serial: Vec<Spanned<SerialFile>>,
    ble: BleFile,
    mqtt: MqttFile,
    network: NetworkFile,
    storage: StorageFile,
    cgroup: CgroupFile,
    memory: MemoryFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BoardSection {
    name: Spanned<String>,
    description: String,
    target: Spanned<String>,
    memory_mib: Spanned<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SerialFile {
    name: Spanned<String>,
    path: Spanned<String>,
    baud: Spanned<u32>,
    usb_rules: Option<Spanned<Vec<Spanned<UsbRuleFile>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsbRuleFile {
    vendor: Option<String>,
    product: Option<String>,
    class: Option<String>,
    subclass: Option<String>,
    driver: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BleFile {
    enabled: bool,
    adapter: Spanned<String>,
    required: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MqttFile {
    broker: Spanned<String>,
    topic_prefix: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    bridge: Spanned<String>,
    bridge_address: Spanned<String>,
    jail_range: Spanned<String>,
    uplink: Spanned<String>,
    masquerade: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageFile {
    state_dir: Spanned<String>,
    images_dir: Spanned<String>,
    jails_dir: Spanned<String>,
    min_free_mib: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CgroupFile {
    expect: Spanned<String>,
    controllers: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryFile {
    berthd_max_mib: Spanned<u64>,
    host_reserve_mib: Spanned<u64>,
    jail_default_mib: Spanned<u64>,
    jail_max_mib: Spanned<u64>,
    max_jails: Spanned<u64>,
}

// ---- the validated board ------------------------------------------------

/// A validated board configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Board {
    /// The file it came from.
    pub path: PathBuf,
    /// The board's name (the file name without `.toml`).
    pub name: String,
    /// One line for humans.
    pub description: String,
    /// Rust target triple of the board's binaries.
    pub target: String,
    /// RAM of the board class, MiB.
    pub memory_mib: u64,
    /// Serial ports where devices may announce themselves.
    pub serial: Vec<SerialPort>,
    /// The BLE adapter.
    pub ble: Ble,
    /// The broker devices publish to.
    pub mqtt: Mqtt,
    /// The jails' bridge and addresses.
    pub network: Network,
    /// Where berthd keeps its state.
    pub storage: Storage,
    /// The cgroup layout and controllers expected.
    pub cgroup: CgroupNeeds,
    /// Memory budgets.
    pub memory: MemoryBudget,
}

/// One serial port of a board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialPort {
    /// Unique name within the board.
    pub name: String,
    /// Device node, or a glob (`/dev/ttyUSB*`) for hot-plugged adapters.
    pub path: String,
    /// Line speed.
    pub baud: u32,
    /// Which USB devices count as adapters on this port.
    pub usb_rules: Vec<UsbRule>,
}

impl SerialPort {
    /// True when the path is a glob rather than one device node.
    pub fn is_glob(&self) -> bool {
        self.path.contains(['*', '?', '['])
    }
}

/// Which USB devices count as serial adapters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsbRule {
    /// By USB vendor and product id.
    Id {
        /// Vendor id.
        vendor: u16,
        /// Product id.
        product: u16,
        /// Kernel driver that binds it.
        driver: String,
    },
    /// By USB interface class and subclass.
    Class {
        /// Interface class.
        class: u8,
        /// Interface subclass.
        subclass: u8,
        /// Kernel driver that binds it.
        driver: String,
    },
}

/// The board's BLE adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ble {
    /// Scan for BLE devices.
    pub enabled: bool,
    /// BlueZ adapter name, `hciN`.
    pub adapter: String,
    /// berthd needs the adapter at start (else it picks it up later).
    pub required: bool,
}

/// The broker devices publish to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mqtt {
    /// The URL as written.
    pub broker: String,
    /// `mqtts://`.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Topics below which devices announce themselves.
    pub topic_prefix: String,
}

/// The jails' bridge and address range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// Host bridge the jails' veths attach to.
    pub bridge: String,
    /// The bridge's address.
    pub bridge_address: Ipv4Addr,
    /// Network address of the jail range.
    pub jail_range: Ipv4Addr,
    /// Prefix length of the jail range (and of the bridge address).
    pub prefix_len: u8,
    /// The uplink interface; `None` for `auto` (the default route's).
    pub uplink: Option<String>,
    /// NAT jail traffic to the uplink.
    pub masquerade: bool,
}

/// Where berthd keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    /// The state store.
    pub state_dir: PathBuf,
    /// Image layers.
    pub images_dir: PathBuf,
    /// Jail roots.
    pub jails_dir: PathBuf,
    /// New images are refused when less than this would remain, MiB.
    pub min_free_mib: u64,
}

/// The cgroup layout a board mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupLayout {
    /// v1 only.
    V1,
    /// v2 only.
    V2,
    /// v1 controllers and a cgroup2 mount.
    Hybrid,
    /// Whatever the host mounts.
    Any,
}

impl CgroupLayout {
    /// The name used in board files.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupLayout::V1 => "v1",
            CgroupLayout::V2 => "v2",
            CgroupLayout::Hybrid => "hybrid",
            CgroupLayout::Any => "any",
        }
    }
}

/// The cgroup layout and controllers a board expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupNeeds {
    /// The layout.
    pub expect: CgroupLayout,
    /// Controllers Berth needs, as named in the file and as controllers.
    pub controllers: Vec<(String, Controller)>,
}

/// Memory budgets, MiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBudget {
    /// berthd itself.
    pub berthd_max_mib: u64,
    /// Kept for the OS and other services.
    pub host_reserve_mib: u64,
    /// A jail whose plan names no limit.
    pub jail_default_mib: u64,
    /// The largest limit a plan may ask for.
    pub jail_max_mib: u64,
    /// Jails run at once.
    pub max_jails: u64,
}

impl MemoryBudget {
    /// berthd, the host reserve and `max_jails` default-sized jails.
    pub fn committed_mib(&self) -> u64 {
        self.berthd_max_mib
            .saturating_add(self.host_reserve_mib)
            .saturating_add(self.max_jails.saturating_mul(self.jail_default_mib))
    }
}

impl Board {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Board, BoardError> {
        let text = std::fs::read_to_string(path).map_err(|source| BoardError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Board::parse(path, &text)
    }

    /// Validates `text` as if read from `path` (whose file name must match
    /// `board.name`).
    pub fn parse(path: &Path, text: &str) -> Result<Board, BoardError> {
        let bad = |span: Option<Range<usize>>, reason: String| {
            let (line, column) = span.map_or((0, 0), |s| line_col(text, s.start));
            BoardError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                reason,
            }
        };
        let file: BoardFile =
            toml::from_str(text).map_err(|e| bad(e.span(), e.message().trim().to_string()))?;

        if *file.schema.get_ref() != SCHEMA {
            return Err(bad(
                Some(file.schema.span()),
                format!("schema is {}, expected {SCHEMA}", file.schema.get_ref()),
            ));
        }

        // [board]
        let b = file.board;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The installed copy is `/etc/berth/board.toml` whatever the board.
        if stem != INSTALLED_STEM && b.name.get_ref() != &stem {
            return Err(bad(
                Some(b.name.span()),
                format!(
                    "board.name {:?} differs from the file name {stem:?}",
                    b.name.get_ref()
                ),
            ));
        }
        if !TARGETS.contains(&b.target.get_ref().as_str()) {
            return Err(bad(
                Some(b.target.span()),
                format!(
                    "board.target {:?} is not one of {}",
                    b.target.get_ref(),
                    TARGETS.join(", ")
                ),
            ));
        }
        let name_ok = !b.name.get_ref().is_empty()
            && b.name.get_ref().len() <= 64
            && b.name.get_ref().bytes().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
            });
        if !name_ok {
            return Err(bad(
                Some(b.name.span()),
                format!(
                    "board.name {:?} must be 1-64 of [a-z0-9._-]",
                    b.name.get_ref()
                ),
            ));
        }
        if *b.memory_mib.get_ref() == 0 {
            return Err(bad(
                Some(b.memory_mib.span()),
                "board.memory_mib must be at least 1".into(),
            ));
        }

        // [[serial]]
        let mut serial: Vec<SerialPort> = Vec::new();
        for s in file.serial {
            let s = s.into_inner();
            let name = s.name.get_ref().clone();
            if name.is_empty() {
                return Err(bad(Some(s.name.span()), "serial name is empty".into()));
            }
            if serial.iter().any(|p| p.name == name) {
                return Err(bad(
                    Some(s.name.span()),
                    format!("serial {name:?} appears twice"),
                ));
            }
            let path_s = s.path.get_ref().clone();
            if !path_s.starts_with("/dev/") {
                return Err(bad(
                    Some(s.path.span()),
                    format!("serial {name:?}: path {path_s:?} is not under /dev"),
                ));
            }
            if !BAUDS.contains(s.baud.get_ref()) {
                return Err(bad(
                    Some(s.baud.span()),
                    format!(
                        "serial {name:?}: baud {} is not a standard rate",
                        s.baud.get_ref()
                    ),
                ));
            }
            let mut usb_rules = Vec::new();
            let mut rules_span = None;
            if let Some(rules) = s.usb_rules {
                rules_span = Some(rules.span());
                for r in rules.into_inner() {
                    let rspan = r.span();
                    let rule = usb_rule(r.into_inner()).ok_or_else(|| {
                        bad(
                            Some(rspan),
                            format!(
                                "serial {name:?}: usb rule needs vendor+product or class+subclass (lowercase hex) and a driver"
                            ),
                        )
                    })?;
                    usb_rules.push(rule);
                }
            }
            if !usb_rules.is_empty() && !path_s.contains('*') {
                return Err(bad(
                    rules_span,
                    format!(
                        "serial {name:?}: usb rules match many devices, so path should be a glob"
                    ),
                ));
            }
            serial.push(SerialPort {
                name,
                path: path_s,
                baud: *s.baud.get_ref(),
                usb_rules,
            });
        }

        // [ble]
        let adapter = file.ble.adapter.get_ref();
        let hci_ok = adapter
            .strip_prefix("hci")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()));
        if !hci_ok {
            return Err(bad(
                Some(file.ble.adapter.span()),
                format!("ble.adapter {adapter:?} is not a BlueZ adapter name (hciN)"),
            ));
        }
        let ble = Ble {
            enabled: file.ble.enabled,
            adapter: adapter.clone(),
            required: file.ble.required,
        };

        // [mqtt]
        let broker = file.mqtt.broker.get_ref();
        let (tls, host, port) = parse_broker(broker).ok_or_else(|| {
            bad(
                Some(file.mqtt.broker.span()),
                format!("mqtt.broker {broker:?} is not mqtt[s]://host:port"),
            )
        })?;
        let prefix = file.mqtt.topic_prefix.get_ref();
        if prefix.is_empty() || prefix.contains(['+', '#', '\0']) {
            return Err(bad(
                Some(file.mqtt.topic_prefix.span()),
                format!("mqtt.topic_prefix {prefix:?} must be a non-empty topic without wildcards"),
            ));
        }
        let mqtt = Mqtt {
            broker: broker.clone(),
            tls,
            host,
            port,
            topic_prefix: prefix.clone(),
        };

        // [network]
        let n = file.network;
        let mem = &file.memory;
        let bridge = n.bridge.get_ref();
        if !valid_bridge_name(bridge) {
            return Err(bad(
                Some(n.bridge.span()),
                format!(
                    "network.bridge {bridge:?} is not a valid interface name of at most 15 bytes"
                ),
            ));
        }
        let (range, range_len) = parse_cidr(n.jail_range.get_ref()).map_err(|e| {
            bad(
                Some(n.jail_range.span()),
                format!("network.jail_range: {e}"),
            )
        })?;
        if range != network_of(range, range_len) {
            return Err(bad(
                Some(n.jail_range.span()),
                format!(
                    "network.jail_range {} has host bits set",
                    n.jail_range.get_ref()
                ),
            ));
        }
        let (addr, addr_len) = parse_cidr(n.bridge_address.get_ref()).map_err(|e| {
            bad(
                Some(n.bridge_address.span()),
                format!("network.bridge_address: {e}"),
            )
        })?;
        if !is_private(range, range_len) {
            return Err(bad(
                Some(n.jail_range.span()),
                format!(
                    "network.jail_range {range}/{range_len} is not a private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)"
                ),
            ));
        }
        if addr_len != range_len || network_of(addr, addr_len) != range {
            return Err(bad(
                Some(n.bridge_address.span()),
                format!(
                    "network.bridge_address {addr}/{addr_len} is not an address of jail_range {range}/{range_len}"
                ),
            ));
        }
        let size = 1u64 << (32 - u32::from(range_len));
        let offset = u64::from(u32::from(addr) - u32::from(range));
        if size > 2 && (offset == 0 || offset == size - 1) {
            return Err(bad(
                Some(n.bridge_address.span()),
                format!(
                    "network.bridge_address {addr} is the network or broadcast address of {range}/{range_len}"
                ),
            ));
        }
        if size.saturating_sub(3) < *mem.max_jails.get_ref() {
            return Err(bad(
                Some(n.jail_range.span()),
                format!(
                    "network.jail_range {range}/{range_len} has no room for {} jails",
                    mem.max_jails.get_ref()
                ),
            ));
        }
        let uplink = n.uplink.get_ref();
        let uplink = if uplink == "auto" {
            None
        } else if valid_ifname(uplink) {
            Some(uplink.clone())
        } else {
            return Err(bad(
                Some(n.uplink.span()),
                format!("network.uplink {uplink:?} is neither \"auto\" nor an interface name of at most 15 bytes"),
            ));
        };
        let network = Network {
            bridge: bridge.clone(),
            bridge_address: addr,
            jail_range: range,
            prefix_len: range_len,
            uplink,
            masquerade: n.masquerade,
        };

        // [storage]
        let st = file.storage;
        for (key, v) in [
            ("state_dir", &st.state_dir),
            ("images_dir", &st.images_dir),
            ("jails_dir", &st.jails_dir),
        ] {
            if !v.get_ref().starts_with('/') {
                return Err(bad(
                    Some(v.span()),
                    format!("storage.{key} {:?} is not absolute", v.get_ref()),
                ));
            }
        }
        let sd = st.state_dir.get_ref();
        let below = format!("{}/", sd.trim_end_matches('/'));
        for (key, v) in [("images_dir", &st.images_dir), ("jails_dir", &st.jails_dir)] {
            if !v.get_ref().starts_with(&below) {
                return Err(bad(
                    Some(v.span()),
                    format!(
                        "storage.{key} {:?} is not below state_dir {sd:?}",
                        v.get_ref()
                    ),
                ));
            }
        }
        let storage = Storage {
            state_dir: PathBuf::from(sd),
            images_dir: PathBuf::from(st.images_dir.get_ref()),
            jails_dir: PathBuf::from(st.jails_dir.get_ref()),
            min_free_mib: st.min_free_mib,
        };

        // [cgroup]
        let expect = match file.cgroup.expect.get_ref().as_str() {
            "v1" => CgroupLayout::V1,
            "v2" => CgroupLayout::V2,
            "hybrid" => CgroupLayout::Hybrid,
            "any" => CgroupLayout::Any,
            other => {
                return Err(bad(
                    Some(file.cgroup.expect.span()),
                    format!("cgroup.expect {other:?} is not one of any, hybrid, v1, v2"),
                ))
            }
        };
        let names = || {
            CONTROLLERS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let cspan = file.cgroup.controllers.span();
        let mut controllers: Vec<(String, Controller)> = Vec::new();
        for c in file.cgroup.controllers.into_inner() {
            let name = c.get_ref();
            let Some((_, ctl)) = CONTROLLERS.iter().find(|(n, _)| n == name) else {
                return Err(bad(
                    Some(c.span()),
                    format!("cgroup.controllers: {name:?} is not one of {}", names()),
                ));
            };
            if controllers.iter().any(|(n, _)| n == name) {
                return Err(bad(
                    Some(c.span()),
                    format!("cgroup.controllers: {name:?} is listed twice"),
                ));
            }
            controllers.push((name.clone(), *ctl));
        }
        for need in ["memory", "pids"] {
            if !controllers.iter().any(|(n, _)| n == need) {
                return Err(bad(
                    Some(cspan),
                    format!("cgroup.controllers must hold memory and pids (missing {need})"),
                ));
            }
        }
        let cgroup = CgroupNeeds {
            expect,
            controllers,
        };

        // [memory]
        for (key, v) in [
            ("berthd_max_mib", &mem.berthd_max_mib),
            ("jail_default_mib", &mem.jail_default_mib),
            ("jail_max_mib", &mem.jail_max_mib),
            ("max_jails", &mem.max_jails),
        ] {
            if *v.get_ref() == 0 {
                return Err(bad(
                    Some(v.span()),
                    format!("memory.{key} must be at least 1"),
                ));
            }
        }
        let memory = MemoryBudget {
            berthd_max_mib: *mem.berthd_max_mib.get_ref(),
            host_reserve_mib: *mem.host_reserve_mib.get_ref(),
            jail_default_mib: *mem.jail_default_mib.get_ref(),
            jail_max_mib: *mem.jail_max_mib.get_ref(),
            max_jails: *mem.max_jails.get_ref(),
        };
        let total = *b.memory_mib.get_ref();
        let committed = memory.committed_mib();
        if committed > total {
            return Err(bad(
                Some(mem.max_jails.span()),
                format!(
                    "memory: berthd {} + reserve {} + {} x {} = {committed} MiB exceeds {total} MiB",
                    memory.berthd_max_mib,
                    memory.host_reserve_mib,
                    memory.max_jails,
                    memory.jail_default_mib
                ),
            ));
        }
        let room = total
            .saturating_sub(memory.berthd_max_mib)
            .saturating_sub(memory.host_reserve_mib);
        if !(memory.jail_default_mib <= memory.jail_max_mib && memory.jail_max_mib <= room) {
            return Err(bad(
                Some(mem.jail_max_mib.span()),
                format!(
                    "memory: need jail_default {} <= jail_max {} <= {room} MiB",
                    memory.jail_default_mib, memory.jail_max_mib
                ),
            ));
        }

        Ok(Board {
            path: path.to_path_buf(),
            name: b.name.into_inner(),
            description: b.description,
            target: b.target.into_inner(),
            memory_mib: total,
            serial,
            ble,
            mqtt,
            network,
            storage,
            cgroup,
            memory,
        })
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

fn lower_hex(s: &Option<String>, digits: usize) -> Option<u32> {
    let s = s.as_deref()?;
    let ok = s.len() == digits && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if !ok {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

fn usb_rule(r: UsbRuleFile) -> Option<UsbRule> {
    let driver = r.driver.filter(|d| !d.is_empty())?;
    let by_id = r.vendor.is_some() || r.product.is_some();
    let by_class = r.class.is_some() || r.subclass.is_some();
    match (by_id, by_class) {
        (true, false) => Some(UsbRule::Id {
            vendor: u16::try_from(lower_hex(&r.vendor, 4)?).ok()?,
            product: u16::try_from(lower_hex(&r.product, 4)?).ok()?,
            driver,
        }),
        (false, true) => Some(UsbRule::Class {
            class: u8::try_from(lower_hex(&r.class, 2)?).ok()?,
            subclass: u8::try_from(lower_hex(&r.subclass, 2)?).ok()?,
            driver,
        }),
        _ => None,
    }
}

/// `mqtt://host:port` or `mqtts://host:port` (no path, port 1-65535).
fn parse_broker(url: &str) -> Option<(bool, String, u16)> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else {
        (false, url.strip_prefix("mqtt://")?)
    };
    let (host, port) = rest.split_once(':')?;
    if host.is_empty() || host.contains('/') || port.is_empty() {
        return None;
    }
    if !port.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    Some((tls, host.to_string(), port))
}

/// `[a-z][a-z0-9_-]{0,14}`: what Berth names its bridges.
fn valid_bridge_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'))
}

/// A Linux interface name as found on hosts: 1-15 of `[A-Za-z0-9_.-]`.
fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `a.b.c.d/len`, IPv4 only (Berth's address allocator is IPv4).
fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not an IPv4 address with a prefix (a.b.c.d/len)"))?;
    let addr: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address with a prefix (a.b.c.d/len)"))?;
    let len: u8 = l
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("{s:?} has a bad prefix length"))?;
    Ok((addr, len))
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn network_of(addr: Ipv4Addr, len: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr) & mask(len))
}

/// The range lies within RFC 1918 space.
fn is_private(net: Ipv4Addr, len: u8) -> bool {
    [
        (Ipv4Addr::new(10, 0, 0, 0), 8u8),
        (Ipv4Addr::new(172, 16, 0, 0), 12),
        (Ipv4Addr::new(192, 168, 0, 0), 16),
    ]
    .iter()
    .any(|(p, l)| len >= *l && network_of(net, *l) == *p)
}

/// Names of the controllers a board may list, for messages.
pub fn controller_names() -> BTreeSet<&'static str> {
    CONTROLLERS.iter().map(|(n, _)| *n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boards_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../board-configs")
    }

    fn generic() -> String {
        std::fs::read_to_string(boards_dir().join("generic-x86_64.toml")).unwrap()
    }

    fn err_of(text: &str) -> String {
        Board::parse(Path::new("/b/generic-x86_64.toml"), text)
            .unwrap_err()
            .to_string()
    }

    /// The generic board with `from` replaced by `to` (which must occur).
    fn edited(from: &str, to: &str) -> String {
        let g = generic();
        assert!(g.contains(from), "{from:?} not in the generic board");
        g.replacen(from, to, 1)
    }

    #[test]
    fn every_board_config_parses() {
        let mut n = 0;
        for entry in std::fs::read_dir(boards_dir()).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let b = Board::load(&p).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                Some(b.name.as_str()),
                p.file_stem().and_then(|s| s.to_str())
            );
            assert!(b.memory.committed_mib() <= b.memory_mib);
            n += 1;
        }
        assert!(n >= 4, "only {n} board files found");
    }

    #[test]
    fn generic_board_values() {
        let b = Board::parse(Path::new("/x/generic-x86_64.toml"), &generic()).unwrap();
        assert_eq!(b.target, "x86_64-unknown-linux-gnu");
        assert_eq!(b.serial.len(), 2);
        assert_eq!(b.serial[0].path, "/dev/ttyUSB*");
        assert!(b.serial[0].is_glob());
        assert_eq!(
            b.serial[0].usb_rules[0],
            UsbRule::Id {
                vendor: 0x0403,
                product: 0x6001,
                driver: "ftdi_sio".into()
            }
        );
        assert_eq!(
            b.serial[1].usb_rules[0],
            UsbRule::Class {
                class: 2,
                subclass: 2,
                driver: "cdc_acm".into()
            }
        );
        assert!(b.ble.enabled && !b.ble.required);
        assert_eq!(
            (b.mqtt.tls, b.mqtt.host.as_str(), b.mqtt.port),
            (false, "127.0.0.1", 1883)
        );
        assert_eq!(b.network.bridge_address, Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(b.network.jail_range, Ipv4Addr::new(10, 88, 0, 0));
        assert_eq!(b.network.prefix_len, 24);
        assert_eq!(b.network.uplink, None);
        assert_eq!(b.storage.images_dir, PathBuf::from("/var/lib/berth/images"));
        assert_eq!(b.cgroup.expect, CgroupLayout::Any);
        assert_eq!(
            b.cgroup
                .controllers
                .iter()
                .map(|(_, c)| *c)
                .collect::<Vec<_>>(),
            vec![Controller::Cpu, Controller::Memory, Controller::Pids]
        );
        assert_eq!(b.memory.committed_mib(), 64 + 512 + 4 * 256);
    }

    #[test]
    fn zero_serial_ports_are_allowed() {
        let g = generic();
        let start = g.find("[[serial]]").unwrap();
        let end = g.find("[ble]").unwrap();
        let text = format!("{}{}", &g[..start], &g[end..]);
        let b = Board::parse(Path::new("/b/generic-x86_64.toml"), &text).unwrap();
        assert!(b.serial.is_empty());
    }

    #[test]
    fn bad_boards_are_refused_with_line_column_and_reason() {
        let cases: Vec<(String, &str)> = vec![
            (
                edited("schema = 1", "schema = 2"),
                "/b/generic-x86_64.toml:4:10: schema is 2, expected 1",
            ),
            (
                edited("name = \"generic-x86_64\"", "name = \"other\""),
                "/b/generic-x86_64.toml:7:8: board.name \"other\" differs from the file name \"generic-x86_64\"",
            ),
            (
                edited("target = \"x86_64-unknown-linux-gnu\"", "target = \"mips-unknown-linux-gnu\""),
                "/b/generic-x86_64.toml:9:10: board.target \"mips-unknown-linux-gnu\" is not one of armv7-unknown-linux-gnueabihf, x86_64-unknown-linux-gnu",
            ),
            (
                edited("baud = 115200\nusb_rules", "baud = 115201\nusb_rules"),
                "/b/generic-x86_64.toml:15:8: serial \"usb\": baud 115201 is not a standard rate",
            ),
            (
                edited("path = \"/dev/ttyUSB*\"", "path = \"/tmp/ttyUSB*\""),
                "/b/generic-x86_64.toml:14:8: serial \"usb\": path \"/tmp/ttyUSB*\" is not under /dev",
            ),
            (
                edited("path = \"/dev/ttyUSB*\"", "path = \"/dev/ttyUSB0\""),
                "/b/generic-x86_64.toml:16:13: serial \"usb\": usb rules match many devices, so path should be a glob",
            ),
            (
                edited("vendor = \"0403\"", "vendor = \"04G3\""),
                "/b/generic-x86_64.toml:17:5: serial \"usb\": usb rule needs vendor+product or class+subclass (lowercase hex) and a driver",
            ),
            (
                edited("name = \"usb-acm\"", "name = \"usb\""),
                "/b/generic-x86_64.toml:24:8: serial \"usb\" appears twice",
            ),
            (
                edited("adapter = \"hci0\"", "adapter = \"bt0\""),
                "/b/generic-x86_64.toml:33:11: ble.adapter \"bt0\" is not a BlueZ adapter name (hciN)",
            ),
            (
                edited("mqtt://127.0.0.1:1883", "tcp://127.0.0.1:1883"),
                "/b/generic-x86_64.toml:37:10: mqtt.broker \"tcp://127.0.0.1:1883\" is not mqtt[s]://host:port",
            ),
            (
                edited("mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:99999"),
                "/b/generic-x86_64.toml:37:10: mqtt.broker \"mqtt://127.0.0.1:99999\" is not mqtt[s]://host:port",
            ),
            (
                edited("bridge = \"berth0\"", "bridge = \"berth-bridge-too-long\""),
                "/b/generic-x86_64.toml:41:10: network.bridge \"berth-bridge-too-long\" is not a valid interface name of at most 15 bytes",
            ),
            (
                edited("bridge_address = \"10.88.0.1/24\"", "bridge_address = \"10.89.0.1/24\""),
                "/b/generic-x86_64.toml:42:18: network.bridge_address 10.89.0.1/24 is not an address of jail_range 10.88.0.0/24",
            ),
            (
                edited("bridge_address = \"10.88.0.1/24\"", "bridge_address = \"10.88.0.255/24\""),
                "/b/generic-x86_64.toml:42:18: network.bridge_address 10.88.0.255 is the network or broadcast address of 10.88.0.0/24",
            ),
            (
                edited("bridge_address = \"10.88.0.1/24\"\njail_range = \"10.88.0.0/24\"", "bridge_address = \"8.8.8.1/24\"\njail_range = \"8.8.8.0/24\""),
                "/b/generic-x86_64.toml:43:14: network.jail_range 8.8.8.0/24 is not a private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)",
            ),
            (
                edited("jail_range = \"10.88.0.0/24\"", "jail_range = \"10.88.0.1/24\""),
                "/b/generic-x86_64.toml:43:14: network.jail_range 10.88.0.1/24 has host bits set",
            ),
            (
                edited("bridge_address = \"10.88.0.1/24\"\njail_range = \"10.88.0.0/24\"", "bridge_address = \"10.88.0.1/30\"\njail_range = \"10.88.0.0/30\""),
                "/b/generic-x86_64.toml:43:14: network.jail_range 10.88.0.0/30 has no room for 4 jails",
            ),
            (
                edited("jail_range = \"10.88.0.0/24\"", "jail_range = \"fd00::/64\""),
                "/b/generic-x86_64.toml:43:14: network.jail_range: \"fd00::/64\" is not an IPv4 address with a prefix (a.b.c.d/len)",
            ),
            (
                edited("images_dir = \"/var/lib/berth/images\"", "images_dir = \"/srv/images\""),
                "/b/generic-x86_64.toml:49:14: storage.images_dir \"/srv/images\" is not below state_dir \"/var/lib/berth\"",
            ),
            (
                edited("state_dir = \"/var/lib/berth\"", "state_dir = \"var/lib/berth\""),
                "/b/generic-x86_64.toml:48:13: storage.state_dir \"var/lib/berth\" is not absolute",
            ),
            (
                edited("expect = \"any\"", "expect = \"v3\""),
                "/b/generic-x86_64.toml:55:10: cgroup.expect \"v3\" is not one of any, hybrid, v1, v2",
            ),
            (
                edited("controllers = [\"cpu\", \"memory\", \"pids\"]", "controllers = [\"cpu\", \"memory\"]"),
                "/b/generic-x86_64.toml:56:15: cgroup.controllers must hold memory and pids (missing pids)",
            ),
            (
                edited("controllers = [\"cpu\", \"memory\", \"pids\"]", "controllers = [\"cpu\", \"memory\", \"pids\", \"net_cls\"]"),
                "/b/generic-x86_64.toml:56:41: cgroup.controllers: \"net_cls\" is not one of cpu, cpuset, io, memory, pids",
            ),
            (
                edited("max_jails = 4", "max_jails = 6"),
                "/b/generic-x86_64.toml:63:13: memory: berthd 64 + reserve 512 + 6 x 256 = 2112 MiB exceeds 2048 MiB",
            ),
            (
                edited("jail_max_mib = 1024", "jail_max_mib = 2000"),
                "/b/generic-x86_64.toml:62:16: memory: need jail_default 256 <= jail_max 2000 <= 1472 MiB",
            ),
            (
                edited("masquerade = true", "masquerade = true\nnat = true"),
                "/b/generic-x86_64.toml:46:1: unknown field `nat`, expected one of `bridge`, `bridge_address`, `jail_range`, `uplink`, `masquerade`",
            ),
            (
                edited("memory_mib = 2048", "memory_mib = \"2G\""),
                "/b/generic-x86_64.toml:10:14: invalid type: string \"2G\", expected u64",
            ),
            (
                edited("max_jails = 4", "max_jails = -4"),
                "/b/generic-x86_64.toml:63:13: invalid value: integer `-4`, expected u64",
            ),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .map(|(text, want)| (err_of(text), want))
            .filter(|(got, want)| got != *want)
            .map(|(got, want)| format!("\n  got  {got}\n  want {want}"))
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.concat());
    }

    #[test]
    fn missing_keys_and_sections_are_named() {
        let e = err_of(&edited("min_free_mib = 1024\n", ""));
        assert!(e.contains("missing field `min_free_mib`"), "{e}");
        assert!(e.starts_with("/b/generic-x86_64.toml:"), "{e}");
        let g = generic();
        let start = g.find("[memory]").unwrap();
        let e = err_of(&g[..start]);
        assert!(e.contains("missing field `memory`"), "{e}");
        let e = err_of("schema = 1\n[board\n");
        assert!(e.starts_with("/b/generic-x86_64.toml:2:"), "{e}");
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let e = Board::load(Path::new("/nonexistent/x.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read board /nonexistent/x.toml:"),
            "{e}"
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(line_col("a\nbc\nd", 3), (2, 2));
        assert_eq!(line_col("é\nx", 1), (1, 1));
        assert_eq!(
            parse_broker("mqtts://h.example:8883"),
            Some((true, "h.example".into(), 8883))
        );
        assert_eq!(parse_broker("mqtt://h:0"), None);
        assert_eq!(parse_broker("mqtt://h:1/x"), None);
        assert!(is_private(Ipv4Addr::new(172, 20, 0, 0), 16));
        assert!(!is_private(Ipv4Addr::new(172, 0, 0, 0), 8));
        assert!(!is_private(Ipv4Addr::new(100, 64, 0, 0), 10));
        assert!(valid_ifname("enp1s0") && !valid_ifname("a/b") && !valid_ifname(""));
        assert_eq!(controller_names().len(), 5);
    }
}
