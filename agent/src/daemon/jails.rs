//! From a verified plan and its pulled image to a `jail::JailSpec`, and the
//! host-side housekeeping around a jail (overlay dirs, volumes, the vendor
//! bridge).
//!
//! Names: a plan version runs in the jail `<vendor>-<jail>-<version>`
//! (shortened with a hash to the runtime's 32 bytes). An update builds the
//! new version beside the old one (each jail has its own network
//! namespace, so ports do not clash), validates it, and only then removes
//! the old one; a failed update removes the new one and the old never
//! stopped.
//!
//! Apps: every app of a plan runs in the plan's one jail (one set of
//! namespaces, one cgroup with the plan's resources, one address), the way
//! a pod's containers share theirs. The jail's rootfs stacks the layers of
//! every app's image, the first app's image on top (a path two images both
//! hold comes from the earlier app; layers the images share appear once,
//! below the layers of every image that uses them). The first app is the
//! jail's payload, under the jail's init; each further app is started in
//! the running jail by [`start_app`], with its own command, environment
//! and working directory. Every app's checks decide the version; a failed
//! one removes the candidate jail with all its apps, while the previous
//! version's jail, with all of its apps, never stopped.
//!
//! State dir layout (shared with `berth jail`):
//!
//! ```text
//! jails/<name>/            the jail runtime's per-jail state
//! net/<bridge>.addrs       vendor bridge address allocators
//! forwards/<name>          the gateway ports forwarded into a jail
//! overlay/<name>/          upper and work dirs of a jail's rootfs
//! data/<vendor>/<jail>/<volume>/   persistent volumes, kept across versions
//! images/                  the image store
//! ```
//!
//! Port forwards: a plan's `host_ports` are gateway ports forwarded to the
//! same port of the jail (TCP or UDP), on the gateway's own addresses other
//! than loopback (its uplink addresses and the vendor bridges' gateway
//! addresses; see `netns::firewall`). Once a jail exists, its forwards are
//! recorded in `forwards/<name>` and the firewall is refreshed from every
//! recorded file; removing the jail (rollback, reset, removal) removes the
//! file and refreshes it again. A host port is forwarded to one vendor jail
//! only: a plan asking for a port another jail holds is refused. The
//! versions of one jail share its ports: the newest version holds them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jail::{oci, Console, JailOptions, JailSpec, NetOptions, RootfsOptions};
use protocol::provision::{App, Plan};

use crate::image::ImageRootfs;
use crate::net;

/// Environment every app starts with (the image's and the plan's are added).
const BASE_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
];

/// Where a serial device shows inside its vendor's jail.
pub const SERIAL_IN_JAIL: &str = "/dev/berth-serial0";

/// Paths of a state dir.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The state dir.
    pub state_dir: PathBuf,
    /// Cgroup parent of jails.
    pub cgroup_parent: String,
    /// The TCP port of the MQTT broker jails are given (`[mqtt_routing]`):
    /// the firewall lets every vendor bridge reach it on the host.
    pub broker_port: Option<u16>,
}

/// The port of a broker address as `[mqtt_routing] broker` gives it
/// (`HOST:PORT`, optionally `mqtt://HOST:PORT`); `None` without a port.
pub fn broker_port(broker: &str) -> Option<u16> {
    let rest = broker.strip_prefix("mqtt://").unwrap_or(broker);
    let (_, port) = rest.trim_end_matches('/').rsplit_once(':')?;
    port.parse().ok().filter(|p| *p != 0)
}

impl Layout {
    /// Jail runtime state root.
    pub fn jails(&self) -> PathBuf {
        self.state_dir.join(crate::jailcmd::JAILS_DIR)
    }
    /// Bridge allocators.
    pub fn net(&self) -> PathBuf {
        self.state_dir.join(crate::jailcmd::NET_DIR)
    }
    /// Recorded port forwards, one file per jail.
    pub fn forwards(&self) -> PathBuf {
        self.state_dir.join("forwards")
    }
    /// Overlay dirs of a jail.
    pub fn overlay(&self, name: &str) -> PathBuf {
        self.state_dir.join(crate::jailcmd::OVERLAY_DIR).join(name)
    }
    /// The image store.
    pub fn images(&self) -> PathBuf {
        self.state_dir.join("images")
    }
    /// A volume of a vendor's jail.
    pub fn volume(&self, vendor: &str, jail: &str, volume: &str) -> PathBuf {
        self.state_dir
            .join("data")
            .join(vendor)
            .join(jail)
            .join(volume)
    }
}

/// The runtime name of a plan version's jail.
pub fn jail_name(vendor: &str, jail: &str, version: u64) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let suffix = format!("-{version}");
    let base = format!("{}-{}", clean(vendor), clean(jail));
    let max = jail::name::MAX_NAME - suffix.len();
    let base = if base.len() <= max {
        base
    } else {
        let tag = format!(
            "-{:06x}",
            net::fnv1a(format!("{vendor}/{jail}").as_bytes()) & 0xff_ffff
        );
        format!("{}{tag}", &base[..max - tag.len()])
    };
    format!("{base}{suffix}")
}

/// A host device passed to the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostDevice {
    /// Character device major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

/// Looks up a host character device's numbers.
pub fn host_device(path: &Path) -> std::io::Result<HostDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(path)?;
    if !m.file_type().is_char_device() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a character device", path.display()),
        ));
    }
    let rdev = m.rdev();
    Ok(HostDevice {
        major: nix::sys::stat::major(rdev) as u32,
        minor: nix::sys::stat::minor(rdev) as u32,
    })
}

/// The command line of an app: the plan's command or the image's
/// entrypoint, then the plan's args or the image's cmd.
pub fn argv(app: &App, image: &ImageRootfs) -> Vec<String> {
    let mut a = if app.command.is_empty() {
        image.config.entrypoint.clone()
    } else {
        app.command.clone()
    };
    if app.args.is_empty() && app.command.is_empty() {
        a.extend(image.config.cmd.iter().cloned());
    } else {
        a.extend(app.args.iter().cloned());
    }
    a
}

/// The environment of an app: base, then the image's, then the plan's (a
/// later one wins for the same name).
pub fn env(app: &App, image: &ImageRootfs) -> Vec<String> {
    let mut m: BTreeMap<String, String> = BASE_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for kv in &image.config.env {
        if let Some((k, v)) = kv.split_once('=') {
            m.insert(k.into(), v.into());
        }
    }
    for (k, v) in &app.env {
        m.insert(k.clone(), v.clone());
    }
    m.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The working directory of an app: its image's, or `/`.
pub fn cwd(image: &ImageRootfs) -> String {
    if image.config.working_dir.starts_with('/') {
        image.config.working_dir.clone()
    } else {
        "/".to_string()
    }
}

/// The lower layers of a jail running apps from `images` (one per app, in
/// the plan's order), topmost first: each image's layers in its own order,
/// the first app's image on top; a layer several images share is kept
/// once, at its lowest place, so that it stays below every image built on
/// it.
pub fn stacked_layers(images: &[ImageRootfs]) -> Vec<PathBuf> {
    let all: Vec<&PathBuf> = images.iter().flat_map(|i| i.layers.iter()).collect();
    let mut out = Vec::with_capacity(all.len());
    for (i, l) in all.iter().enumerate() {
        if !all[i + 1..].contains(l) {
            out.push((*l).clone());
        }
    }
    out
}

/// How a further app (not the first) of a plan is started in its running
/// jail: its command line, environment and working directory. Its output
/// goes to berthd's own standard output and error.
pub fn app_exec(app: &App, image: &ImageRootfs) -> Result<jail::ExecOptions, String> {
    let args = argv(app, image);
    if args.is_empty() {
        return Err(format!(
            "app {} has no command and its image no entrypoint",
            app.name
        ));
    }
    let mut opts = jail::ExecOptions::new(args);
    opts.env = Some(env(app, image));
    opts.cwd = Some(cwd(image));
    opts.stdio = jail::ExecStdio::Inherit;
    Ok(opts)
}

/// Starts a further app in the running jail `jail` and returns a channel
/// that receives one line when the app ends (how it ended). The app lives
/// in the jail's namespaces and cgroup: removing the jail ends it, and it
/// keeps running if berthd stops. Its wait runs on a thread of its own
/// (not the runtime's blocking pool, which a graceful stop of berthd waits
/// for).
pub fn start_app(
    state_root: PathBuf,
    jail: String,
    app: String,
    opts: jail::ExecOptions,
) -> Result<std::sync::mpsc::Receiver<String>, String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let what = format!("start app {app} in jail {jail}");
    std::thread::Builder::new()
        .name(format!("app-{app}"))
        .spawn(move || {
            let ended = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(async {
                    let j = jail::Jail::adopt(&state_root, &jail).await?;
                    j.exec(opts).await
                }),
                Err(source) => Err(jail::Error::Io {
                    what: "build the runtime of an app's wait".into(),
                    source,
                }),
            };
            let line = match ended {
                Ok(o) => format!("app {app} exited with code {}", o.code),
                Err(e) => format!("app {app} could not run: {e}"),
            };
            tracing::info!(jail = jail.as_str(), "{line}");
            let _ = tx.send(line);
        })
        .map_err(|e| format!("{what}: {e}"))?;
    Ok(rx)
}

/// Builds the spec of the jail running `plan`; `images` holds the pulled
/// image of each app, in the plan's order.
pub fn build_spec(
    layout: &Layout,
    name: &str,
    plan: &Plan,
    images: &[ImageRootfs],
    serial: Option<HostDevice>,
) -> Result<JailSpec, String> {
    let app = plan.apps.first().ok_or("the plan has no app")?;
    let image = images.first().ok_or("the plan's first app has no image")?;
    if images.len() != plan.apps.len() {
        return Err(format!(
            "{} images for {} apps",
            images.len(),
            plan.apps.len()
        ));
    }
    check_forwards(layout, plan)?;
    let args = argv(app, image);
    if args.is_empty() {
        return Err(format!(
            "app {} has no command and its image no entrypoint",
            app.name
        ));
    }
    for (a, i) in plan.apps.iter().zip(images).skip(1) {
        app_exec(a, i)?;
    }
    let runtime = runtime_spec(layout, plan, args, env(app, image), cwd(image), serial)?;
    let dir = layout.overlay(name);
    let rootfs = RootfsOptions::Overlay {
        lowers: stacked_layers(images),
        upper: dir.join("upper"),
        work: dir.join("work"),
    };
    let network = if plan.jail.network.enabled {
        let bridge = net::bridge_name(&plan.vendor);
        let routes = net::host_routes().map_err(|e| format!("read /proc/net/route: {e}"))?;
        let subnet = net::pick_subnet(&plan.vendor, &bridge, &routes)
            .ok_or_else(|| format!("no free subnet for bridge {bridge}"))?;
        Some(NetOptions {
            bridge,
            gateway: subnet.gateway,
            prefix_len: subnet.prefix_len,
            allocator_dir: layout.net(),
        })
    } else {
        None
    };
    let r = &plan.jail.resources;
    let opts = JailOptions {
        name: name.to_string(),
        vendor: vendor_name(&plan.vendor),
        rootfs: Some(rootfs),
        network,
        cgroup_parent: Some(PathBuf::from(&layout.cgroup_parent)),
        state_root: Some(layout.jails()),
        init_path: None,
        memory_max: Some(r.memory),
        pids_max: Some(u64::from(r.pids)),
        cpus: (r.cpu_millis > 0).then(|| f64::from(r.cpu_millis) / 1000.0),
        hostname: Some(plan.jail.name.replace(['.', '_'], "-")),
        user_ns: None,
        console: Console::LogFile,
    };
    JailSpec::from_oci(&runtime, &opts).map_err(|e| format!("jail spec: {e}"))
}

/// The OCI runtime spec of the jail running `plan`: the first app's
/// process, the mounts of all apps, the serial device when the plan asks for
/// it and the board has one.
fn runtime_spec(
    layout: &Layout,
    plan: &Plan,
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    serial: Option<HostDevice>,
) -> Result<oci_spec::runtime::Spec, String> {
    // The apps share one mount namespace: their mounts are merged, and two
    // apps may name the same target only for the same volume and mode.
    let mut targets: BTreeMap<&str, (&str, &str, bool)> = BTreeMap::new();
    let mut mounts = Vec::new();
    for a in &plan.apps {
        for m in &a.mounts {
            if !plan.jail.volumes.iter().any(|v| v.name == m.volume) {
                return Err(format!("app {} mounts unknown volume {}", a.name, m.volume));
            }
            match targets.get(m.target.as_str()) {
                Some((_, vol, ro)) if *vol == m.volume.as_str() && *ro == m.read_only => continue,
                Some((other, vol, _)) => {
                    return Err(format!(
                        "apps {other} and {} both mount on {} (volumes {vol} and {}); the apps of a plan share the jail's mounts",
                        a.name, m.target, m.volume
                    ))
                }
                None => {
                    targets.insert(&m.target, (&a.name, &m.volume, m.read_only));
                }
            }
            let src = layout.volume(&plan.vendor, &plan.jail.name, &m.volume);
            let mode = if m.read_only { "ro" } else { "rw" };
            mounts.push(oci::bind_mount(
                &m.target,
                src,
                vec!["rbind".into(), mode.into()],
            ));
        }
    }
    let mut linux = oci::linux();
    if let (true, Some(d)) = (plan.jail.devices.serial, serial) {
        let (major, minor) = (i64::from(d.major), i64::from(d.minor));
        linux.set_devices(Some(vec![oci::char_device(
            SERIAL_IN_JAIL,
            major,
            minor,
            0o660,
            0,
            0,
        )]));
        linux.set_resources(Some(oci::device_resources(vec![oci::allow_char_device(
            major, minor, "rwm",
        )])));
    }
    let mut spec = oci::spec(oci::root("/", false), oci::process(args, env, cwd, 0, 0));
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// The jail runtime's vendor name of a vendor id (`[a-z0-9-]`).
pub fn vendor_name(vendor: &str) -> String {
    vendor
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Creates the overlay and volume dirs of a jail.
pub fn prepare_dirs(layout: &Layout, name: &str, plan: &Plan) -> std::io::Result<()> {
    let dir = layout.overlay(name);
    std::fs::create_dir_all(dir.join("upper"))?;
    std::fs::create_dir_all(dir.join("work"))?;
    for v in &plan.jail.volumes {
        std::fs::create_dir_all(layout.volume(&plan.vendor, &plan.jail.name, &v.name))?;
    }
    Ok(())
}

/// Deletes a jail (if it exists), its overlay dirs and, when no jail uses
/// it any more, its vendor's bridge. Errors are logged: removal is retried
/// at the next start.
pub async fn remove(layout: &Layout, name: &str) {
    let state_file = jail::state::jail_dir(&layout.jails(), name);
    if state_file.exists() {
        match jail::Jail::adopt(&layout.jails(), name).await {
            Ok(j) => {
                if let Err(e) = j.delete().await {
                    tracing::warn!(jail = name, error = %e, "cannot delete jail");
                }
            }
            Err(e) => {
                tracing::warn!(jail = name, error = %e, "cannot adopt jail to delete it");
                let _ = std::fs::remove_dir_all(&state_file);
            }
        }
    }
    let fwd = layout.forwards().join(name);
    if let Err(e) = std::fs::remove_file(&fwd) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(file = %fwd.display(), error = %e, "cannot remove port forwards");
        }
    }
    let dir = layout.overlay(name);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove overlay dir");
        }
    }
    gc_bridges(layout).await;
}

/// Removes the vendor bridges of this state dir that have no lease and no
/// port left.
pub async fn gc_bridges(layout: &Layout) {
    let Ok(rd) = std::fs::read_dir(layout.net()) else {
        return;
    };
    for e in rd.flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        let Some(bridge) = f.strip_suffix(".addrs") else {
            continue;
        };
        // One `lease ADDR OWNER` line per address handed out and one
        // `quarantine ADDR LINK` line per address waiting for the veth of a
        // jail that ended to go (netns::alloc); an unreadable file counts as
        // in use.
        let text = std::fs::read_to_string(e.path()).ok();
        let leases = text.as_deref().map(lease_count).unwrap_or(usize::MAX);
        let dying = text.as_deref().map(dying_links).unwrap_or_default();
        // Ports other than those dying veths (which the kernel removes
        // asynchronously with their jails' namespaces) keep the bridge.
        let ports = std::fs::read_dir(Path::new("/sys/class/net").join(bridge).join("brif"))
            .map(|rd| {
                rd.flatten()
                    .filter(|p| !dying.iter().any(|d| p.file_name() == d.as_str()))
                    .count()
            })
            .unwrap_or(0);
        if leases > 0 || ports > 0 {
            continue;
        }
        match netns::Net::connect().await {
            Ok(c) => {
                if let Err(err) = c.delete_bridge(bridge).await {
                    tracing::warn!(bridge, error = %err, "cannot delete bridge");
                    continue;
                }
                let _ = std::fs::remove_file(e.path());
            }
            Err(err) => tracing::warn!(error = %err, "cannot connect to netlink"),
        }
    }
    refresh_firewall(layout).await;
}

/// The number of `lease` lines of an allocator file.
fn lease_count(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("lease ")).count()
}

/// The links named by the `quarantine ADDR LINK` lines of an allocator
/// file: veths of ended jails the kernel is still removing.
fn dying_links(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("quarantine "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(str::to_string)
        .collect()
}

/// The gateway ports a plan forwards into its jail: (protocol, port), the
/// jail's port being the same number.
fn plan_forwards(plan: &Plan) -> Vec<(netns::Proto, u16)> {
    plan.jail
        .network
        .host_ports
        .iter()
        .map(|h| {
            let proto = match h.protocol {
                protocol::provision::PortProtocol::Tcp => netns::Proto::Tcp,
                protocol::provision::PortProtocol::Udp => netns::Proto::Udp,
            };
            (proto, h.port)
        })
        .collect()
}

/// One recorded `forwards/<name>` file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recorded {
    /// `VENDOR/JAIL`: the versions of one jail share their ports.
    owner: String,
    version: u64,
    jail: std::net::Ipv4Addr,
    ports: Vec<(netns::Proto, u16)>,
}

impl Recorded {
    fn to_text(&self) -> String {
        let mut s = format!(
            "owner {}\nversion {}\njail {}\n",
            self.owner, self.version, self.jail
        );
        for (p, port) in &self.ports {
            s.push_str(&format!("forward {p} {port}\n"));
        }
        s
    }

    fn parse(text: &str) -> Option<Recorded> {
        let mut owner = None;
        let mut version = None;
        let mut jail = None;
        let mut ports = Vec::new();
        for l in text.lines() {
            let mut t = l.split_whitespace();
            match (t.next(), t.next(), t.next()) {
                (Some("owner"), Some(o), None) => owner = Some(o.to_string()),
                (Some("version"), Some(v), None) => version = v.parse().ok(),
                (Some("jail"), Some(a), None) => jail = a.parse().ok(),
                (Some("forward"), Some(p), Some(port)) => {
                    let proto = match p {
                        "tcp" => netns::Proto::Tcp,
                        "udp" => netns::Proto::Udp,
                        _ => return None,
                    };
                    ports.push((proto, port.parse().ok()?));
                }
                _ => return None,
            }
        }
        Some(Recorded {
            owner: owner?,
            version: version?,
            jail: jail?,
            ports,
        })
    }
}

fn owner_of(plan: &Plan) -> String {
    format!("{}/{}", plan.vendor, plan.jail.name)
}

/// Every readable `forwards/<name>` file with its jail's name.
fn recorded_forwards(layout: &Layout) -> Vec<(String, Recorded)> {
    let Ok(rd) = std::fs::read_dir(layout.forwards()) else {
        return Vec::new();
    };
    let mut v: Vec<(String, Recorded)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            if name.starts_with('.') {
                return None;
            }
            let text = std::fs::read_to_string(e.path()).ok()?;
            match Recorded::parse(&text) {
                Some(r) => Some((name, r)),
                None => {
                    tracing::warn!(file = %e.path().display(), "unreadable port forwards ignored");
                    None
                }
            }
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Serialises the check and the record of forwards between vendors'
/// workers, so that two plans cannot take one port at once.
static FORWARDS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Refuses a plan that forwards ports without a network, a port twice, or
/// a port that another vendor jail holds (the versions of the plan's own
/// jail may hold it).
pub fn check_forwards(layout: &Layout, plan: &Plan) -> Result<(), String> {
    let wanted = plan_forwards(plan);
    if wanted.is_empty() {
        return Ok(());
    }
    if !plan.jail.network.enabled {
        return Err(format!(
            "the plan forwards {} gateway port(s) into a jail without a network",
            wanted.len()
        ));
    }
    for (i, (p, port)) in wanted.iter().enumerate() {
        if *port == 0 {
            return Err(format!("the plan forwards {p} port 0"));
        }
        if wanted[..i].contains(&(*p, *port)) {
            return Err(format!("the plan forwards gateway {p} port {port} twice"));
        }
        if *p == netns::Proto::Tcp && layout.broker_port == Some(*port) {
            return Err(format!(
                "gateway tcp port {port} is the MQTT broker's; it cannot be forwarded"
            ));
        }
    }
    let me = owner_of(plan);
    for (name, r) in recorded_forwards(layout) {
        if r.owner == me {
            continue;
        }
        if let Some((p, port)) = wanted.iter().find(|w| r.ports.contains(w)) {
            return Err(format!(
                "gateway {p} port {port} is already forwarded to another jail ({name}); it cannot be forwarded to this one"
            ));
        }
    }
    Ok(())
}

/// Records the ports `plan` forwards into its jail `name` at `addr`, after
/// checking them again against the other jails' (under a lock). Nothing is
/// written for a plan without forwards.
pub fn record_forwards(
    layout: &Layout,
    name: &str,
    plan: &Plan,
    addr: Option<std::net::Ipv4Addr>,
) -> Result<(), String> {
    let ports = plan_forwards(plan);
    if ports.is_empty() {
        return Ok(());
    }
    let jail = addr.ok_or_else(|| format!("jail {name} has no address to forward ports to"))?;
    // A poisoned lock only means another worker panicked mid-check; the
    // files on disk are still whole (written by rename).
    let _guard = FORWARDS_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    check_forwards(layout, plan)?;
    let dir = layout.forwards();
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let r = Recorded {
        owner: owner_of(plan),
        version: plan.version,
        jail,
        ports,
    };
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    std::fs::write(&tmp, r.to_text()).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("rename to {}: {e}", path.display()))
}

/// The forwards of every recorded jail that exists and whose address is on
/// one of `bridges`; of the versions of one jail the newest holds its ports, and a
/// port two jails claim (which [`record_forwards`] prevents) goes to the
/// first by name.
fn active_forwards(layout: &Layout, bridges: &[netns::BridgePolicy]) -> Vec<netns::Forward> {
    // A jail removed behind berthd's back (`berth jail rm`) forwards
    // nothing.
    let recorded: Vec<(String, Recorded)> = recorded_forwards(layout)
        .into_iter()
        .filter(|(name, _)| jail::state::jail_dir(&layout.jails(), name).exists())
        .collect();
    let on_bridge = |a: std::net::Ipv4Addr| {
        bridges.iter().any(|b| {
            let m = u32::MAX
                .checked_shl(32 - u32::from(b.prefix_len))
                .unwrap_or(0);
            u32::from(a) & m == u32::from(b.subnet) & m
        })
    };
    let mut out: Vec<netns::Forward> = Vec::new();
    for (name, r) in &recorded {
        let newer = recorded
            .iter()
            .any(|(_, o)| o.owner == r.owner && o.version > r.version);
        if newer || !on_bridge(r.jail) {
            continue;
        }
        for (proto, port) in &r.ports {
            if out
                .iter()
                .any(|f| f.proto == *proto && f.host_port == *port)
            {
                tracing::warn!(jail = name.as_str(), %proto, port, "port already forwarded; skipped");
                continue;
            }
            out.push(netns::Forward {
                proto: *proto,
                host_port: *port,
                jail: r.jail,
                jail_port: *port,
            });
        }
    }
    out
}

/// Applies NAT egress and isolation between vendor bridges for every
/// bridge this state dir allocates on (one atomic nftables table, the same
/// one `berth jail` keeps for the state dir), or removes the table when no
/// bridge is left. Blocking (netlink); call it off the runtime.
pub fn apply_firewall(layout: &Layout) -> Result<(), String> {
    let routes = net::host_routes().map_err(|e| format!("read /proc/net/route: {e}"))?;
    let mut bridges = Vec::new();
    if let Ok(rd) = std::fs::read_dir(layout.net()) {
        for e in rd.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            let Some(bridge) = f.strip_suffix(".addrs") else {
                continue;
            };
            if let Some(r) = routes.iter().find(|r| r.iface == bridge && r.mask != 0) {
                bridges.push(netns::BridgePolicy {
                    bridge: bridge.to_string(),
                    subnet: r.dest,
                    prefix_len: r.mask.count_ones() as u8,
                    gateway: std::net::Ipv4Addr::from(u32::from(r.dest) + 1),
                    // The broker of `[mqtt_routing]` is the one host
                    // service a jail is given.
                    host_ports: layout
                        .broker_port
                        .map(|p| vec![(netns::Proto::Tcp, p)])
                        .unwrap_or_default(),
                    allow_to: Vec::new(),
                });
            }
        }
    }
    let fw = netns::Firewall::new(&crate::jailcmd::table_name(&layout.state_dir));
    if bridges.is_empty() {
        return fw
            .remove()
            .map_err(|e| format!("remove firewall table {}: {e}", fw.table()));
    }
    if !netns::ipv4_forwarding().unwrap_or(false) {
        // NAT egress needs forwarding (ip(7), ip_forward).
        netns::set_ipv4_forwarding(true).map_err(|e| format!("enable ipv4 forwarding: {e}"))?;
    }
    let forwards = active_forwards(layout, &bridges);
    let policy = netns::Policy {
        uplink_masquerade: true,
        bridges,
    };
    fw.apply_with_forwards(&policy, &forwards)
        .map_err(|e| format!("firewall table {}: {e}", fw.table()))
}

/// [`apply_firewall`] on a blocking thread; errors are logged.
pub async fn refresh_firewall(layout: &Layout) {
    let l = layout.clone();
    match tokio::task::spawn_blocking(move || apply_firewall(&l)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = e.as_str(), "firewall not applied"),
        Err(e) => tracing::warn!(error = %e, "firewall task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Digest, ImageConfig};

    fn image() -> ImageRootfs {
        let d: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        ImageRootfs {
            digest: d.clone(),
            manifest: d,
            layers: vec![PathBuf::from("/l/2"), PathBuf::from("/l/1")],
            config: ImageConfig {
                entrypoint: vec!["/bin/app".into()],
                cmd: vec!["--serve".into()],
                env: vec!["PATH=/app/bin".into(), "MODE=prod".into()],
                ..Default::default()
            },
        }
    }

    fn app() -> App {
        App {
            name: "web".into(),
            image: protocol::provision::ImageRef::parse(&format!(
                "localhost:5000/acme/web@sha256:{}",
                "a".repeat(64)
            ))
            .unwrap(),
            command: vec![],
            args: vec![],
            env: BTreeMap::new(),
            mounts: vec![],
            checks: vec![],
        }
    }

    fn plan_of(apps: Vec<App>) -> Plan {
        protocol::provision::Plan {
            format: protocol::provision::FORMAT,
            plan_id: "p".into(),
            version: 1,
            vendor: "acme".into(),
            model: "M".into(),
            serial: "S".into(),
            jail: protocol::provision::JailPlan {
                name: "app".into(),
                mode: protocol::provision::JailMode::CreateOrReuse,
                resources: protocol::provision::Resources {
                    memory: 64 << 20,
                    cpu_millis: 0,
                    pids: 64,
                },
                network: protocol::provision::NetworkPolicy {
                    enabled: false,
                    host_ports: vec![],
                },
                devices: protocol::provision::DevicePassthrough { serial: false },
                volumes: vec![protocol::provision::Volume {
                    name: "data".into(),
                }],
            },
            apps,
        }
    }

    fn mount(volume: &str, target: &str, read_only: bool) -> protocol::provision::Mount {
        protocol::provision::Mount {
            volume: volume.into(),
            target: target.into(),
            read_only,
        }
    }

    #[test]
    fn runtime_spec_equals_its_json_form() {
        let layout = Layout {
            state_dir: PathBuf::from("/tmp/st"),
            cgroup_parent: "berth".into(),
            broker_port: None,
        };
        let mut first = app();
        first.mounts = vec![mount("data", "/data", true), mount("data", "/rw", false)];
        let mut plan = plan_of(vec![first]);
        plan.jail.devices.serial = true;
        let serial = HostDevice {
            major: 188,
            minor: 3,
        };
        let built = runtime_spec(
            &layout,
            &plan,
            vec!["/bin/app".into()],
            vec!["HOME=/root".into()],
            "/srv".into(),
            Some(serial),
        )
        .unwrap();
        let src = layout.volume("acme", "app", "data");
        let want: oci_spec::runtime::Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": { "path": "/", "readonly": false },
            "process": {
                "args": ["/bin/app"], "env": ["HOME=/root"], "cwd": "/srv",
                "user": { "uid": 0, "gid": 0 },
            },
            "mounts": [
                { "destination": "/data", "type": "bind", "source": src, "options": ["rbind", "ro"] },
                { "destination": "/rw", "type": "bind", "source": src, "options": ["rbind", "rw"] },
            ],
            "linux": {
                "devices": [{
                    "path": SERIAL_IN_JAIL, "type": "c", "major": 188, "minor": 3,
                    "fileMode": 0o660, "uid": 0, "gid": 0,
                }],
                "resources": { "devices": [
                    { "allow": true, "type": "c", "major": 188, "minor": 3, "access": "rwm" },
                ]},
            },
        }))
        .unwrap();
        assert_eq!(built, want);
        // Without serial passthrough, and with no mounts: empty members.
        plan.jail.devices.serial = false;
        plan.apps[0].mounts.clear();
        let built = runtime_spec(
            &layout,
            &plan,
            vec!["/a".into()],
            vec![],
            "/".into(),
            Some(serial),
        )
        .unwrap();
        let want: oci_spec::runtime::Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": { "path": "/", "readonly": false },
            "process": { "args": ["/a"], "env": [], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
            "mounts": [],
            "linux": {},
        }))
        .unwrap();
        assert_eq!(built, want);
    }

    #[test]
    fn several_apps_share_one_jail() {
        let layout = Layout {
            state_dir: PathBuf::from("/tmp/st"),
            cgroup_parent: "berth".into(),
            broker_port: None,
        };
        let mut second = app();
        second.name = "api".into();
        second.command = vec!["/bin/api".into()];
        second.env.insert("MODE".into(), "api".into());
        second.mounts = vec![mount("data", "/data", true)];
        let mut first = app();
        first.mounts = vec![mount("data", "/data", true)];
        let plan = plan_of(vec![first, second.clone()]);
        let mut other = image();
        other.layers = vec![PathBuf::from("/l/3"), PathBuf::from("/l/1")];
        other.config.working_dir = "/srv".into();
        let images = [image(), other.clone()];
        let spec = build_spec(&layout, "acme-app-1", &plan, &images, None).unwrap();
        // The first app is the payload.
        assert_eq!(spec.process.args, ["/bin/app", "--serve"]);
        // Both images' layers, the first app's on top, the shared base once
        // and below both.
        match &spec.rootfs {
            RootfsOptions::Overlay { lowers, .. } => assert_eq!(
                lowers,
                &[
                    PathBuf::from("/l/2"),
                    PathBuf::from("/l/3"),
                    PathBuf::from("/l/1")
                ]
            ),
            other => panic!("not an overlay: {other:?}"),
        }
        // The same mount asked by both apps is made once.
        assert_eq!(
            spec.mounts
                .iter()
                .filter(|m| m.destination == "/data")
                .count(),
            1
        );
        // The second app runs with its own command, environment and cwd.
        let x = app_exec(&second, &other).unwrap();
        assert_eq!(x.args, ["/bin/api"]);
        let env = x.env.unwrap();
        assert!(env.contains(&"MODE=api".to_string()), "{env:?}");
        assert_eq!(x.cwd.as_deref(), Some("/srv"));
        assert_eq!(x.stdio, jail::ExecStdio::Inherit);

        // Two apps may not put different volumes (or modes) on one target.
        let mut clash = second.clone();
        clash.mounts = vec![mount("data", "/data", false)];
        let mut first = app();
        first.mounts = vec![mount("data", "/data", true)];
        let plan = plan_of(vec![first, clash]);
        let e = build_spec(&layout, "acme-app-1", &plan, &images, None).unwrap_err();
        assert!(e.starts_with("apps web and api both mount on /data"), "{e}");
        // A further app without a command line is refused before anything
        // is built.
        let mut bare = second;
        bare.command.clear();
        let mut no_entry = other;
        no_entry.config.entrypoint.clear();
        no_entry.config.cmd.clear();
        let plan = plan_of(vec![app(), bare]);
        let e = build_spec(&layout, "acme-app-1", &plan, &[image(), no_entry], None).unwrap_err();
        assert_eq!(e, "app api has no command and its image no entrypoint");
    }

    #[test]
    fn port_forwards_are_checked_recorded_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            state_dir: dir.path().to_path_buf(),
            cgroup_parent: "berth".into(),
            broker_port: Some(1883),
        };
        let hp = |port, protocol| protocol::provision::HostPort { port, protocol };
        use protocol::provision::PortProtocol::{Tcp, Udp};
        let mut plan = plan_of(vec![app()]);
        plan.jail.network.host_ports = vec![hp(8080, Tcp)];
        // Without a network there is nothing to forward to.
        let e = build_spec(&layout, "acme-app-1", &plan, &[image()], None).unwrap_err();
        assert!(e.contains("without a network"), "{e}");
        plan.jail.network.enabled = true;
        for (ports, needle) in [
            (vec![hp(8080, Tcp), hp(8080, Tcp)], "twice"),
            (vec![hp(1883, Tcp)], "MQTT broker"),
            (vec![hp(0, Udp)], "port 0"),
        ] {
            let mut p = plan.clone();
            p.jail.network.host_ports = ports;
            let e = check_forwards(&layout, &p).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        check_forwards(&layout, &plan).unwrap();
        let a = std::net::Ipv4Addr::new(10, 213, 7, 5);
        record_forwards(&layout, "acme-app-1", &plan, Some(a)).unwrap();
        // Another vendor's jail cannot take the port; the same jail's next
        // version can, and holds it.
        let mut other = plan.clone();
        other.vendor = "globex".into();
        let e = check_forwards(&layout, &other).unwrap_err();
        assert_eq!(
            e,
            "gateway tcp port 8080 is already forwarded to another jail (acme-app-1); it cannot be forwarded to this one"
        );
        assert!(record_forwards(&layout, "globex-app-1", &other, Some(a)).is_err());
        other.jail.network.host_ports = vec![hp(8080, Udp)];
        check_forwards(&layout, &other).unwrap();
        let mut next = plan.clone();
        next.version = 2;
        let b = std::net::Ipv4Addr::new(10, 213, 7, 6);
        record_forwards(&layout, "acme-app-2", &next, Some(b)).unwrap();
        for j in ["acme-app-1", "acme-app-2"] {
            std::fs::create_dir_all(layout.jails().join(j)).unwrap();
        }
        let bridges = [netns::BridgePolicy {
            bridge: "b".into(),
            subnet: std::net::Ipv4Addr::new(10, 213, 7, 0),
            prefix_len: 24,
            gateway: std::net::Ipv4Addr::new(10, 213, 7, 1),
            host_ports: vec![],
            allow_to: vec![],
        }];
        let f = netns::Forward {
            proto: netns::Proto::Tcp,
            host_port: 8080,
            jail: b,
            jail_port: 8080,
        };
        assert_eq!(active_forwards(&layout, &bridges), vec![f]);
        // A jail whose address is on no bridge of the policy forwards
        // nothing.
        assert!(active_forwards(&layout, &[]).is_empty());
        // Nor does a recorded jail that is gone.
        std::fs::remove_dir(layout.jails().join("acme-app-2")).unwrap();
        assert_eq!(
            active_forwards(&layout, &bridges),
            vec![netns::Forward { jail: a, ..f }]
        );
        std::fs::create_dir_all(layout.jails().join("acme-app-2")).unwrap();
        // Removing a jail's file gives the port back.
        std::fs::remove_file(layout.forwards().join("acme-app-2")).unwrap();
        assert_eq!(
            active_forwards(&layout, &bridges),
            vec![netns::Forward { jail: a, ..f }]
        );
        std::fs::remove_file(layout.forwards().join("acme-app-1")).unwrap();
        check_forwards(&layout, &plan_of(vec![app()])).unwrap();
        let mut globex = plan.clone();
        globex.vendor = "globex".into();
        check_forwards(&layout, &globex).unwrap();
        // A plan without forwards records nothing.
        record_forwards(&layout, "x-1", &plan_of(vec![app()]), None).unwrap();
        assert!(!layout.forwards().join("x-1").exists());
    }

    #[test]
    fn recorded_forwards_round_trip() {
        let r = Recorded {
            owner: "acme/app".into(),
            version: 3,
            jail: std::net::Ipv4Addr::new(10, 1, 2, 3),
            ports: vec![(netns::Proto::Tcp, 80), (netns::Proto::Udp, 5683)],
        };
        assert_eq!(Recorded::parse(&r.to_text()), Some(r));
        assert_eq!(
            Recorded::parse("owner a/b\nversion x\njail 10.0.0.1\n"),
            None
        );
        assert_eq!(Recorded::parse("owner a/b\nversion 1\n"), None);
    }

    #[test]
    fn dying_veths_do_not_keep_a_bridge() {
        // The file as netns::alloc writes it: one lease, one address parked
        // until its link (here `lo`, which exists) goes.
        let dir = tempfile::tempdir().unwrap();
        let gw = std::net::Ipv4Addr::new(10, 213, 9, 1);
        let mut alloc = netns::Allocator::open(dir.path(), "br-x", gw, 24).unwrap();
        alloc.allocate("j1").unwrap();
        alloc.allocate("j2").unwrap();
        alloc.release_after_link("j2", "lo").unwrap();
        let text = std::fs::read_to_string(dir.path().join("br-x.addrs")).unwrap();
        assert_eq!(lease_count(&text), 1, "{text}");
        assert_eq!(dying_links(&text), ["lo"], "{text}");
        assert!(dying_links("berth-alloc 1\n").is_empty());
    }

    #[test]
    fn the_broker_port_is_read_from_its_address() {
        assert_eq!(broker_port("10.213.0.1:1883"), Some(1883));
        assert_eq!(broker_port("mqtt://127.0.0.1:8883"), Some(8883));
        assert_eq!(broker_port("[fd00::1]:1884"), Some(1884));
        assert_eq!(broker_port("broker.local"), None);
        assert_eq!(broker_port("h:0"), None);
    }

    #[test]
    fn names_fit_the_runtime() {
        assert_eq!(jail_name("acme", "meter", 3), "acme-meter-3");
        let long = jail_name("averyveryverylongvendor", "and.a_long_jail_name", 12345);
        assert!(long.len() <= 32, "{long}");
        assert!(long.ends_with("-12345"));
        assert!(jail::Name::new(&long).is_ok(), "{long}");
        assert_ne!(
            long,
            jail_name("averyveryverylongvendor", "and.a_long_jail_nam2", 12345)
        );
    }

    #[test]
    fn command_and_environment_merge() {
        let mut a = app();
        assert_eq!(argv(&a, &image()), ["/bin/app", "--serve"]);
        a.args = vec!["--debug".into()];
        assert_eq!(argv(&a, &image()), ["/bin/app", "--debug"]);
        a.command = vec!["/bin/sh".into()];
        a.args = vec![];
        assert_eq!(argv(&a, &image()), ["/bin/sh"]);
        a.env.insert("MODE".into(), "test".into());
        let e = env(&a, &image());
        assert!(e.contains(&"PATH=/app/bin".to_string()), "{e:?}");
        assert!(e.contains(&"MODE=test".to_string()), "{e:?}");
        assert!(e.contains(&"HOME=/root".to_string()), "{e:?}");
    }
}
