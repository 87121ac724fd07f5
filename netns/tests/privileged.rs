//! Privileged tests of the netns crate against the real kernel: bridges,
//! veths into named namespaces, addresses and routes inside them, and the
//! nftables isolation policy, verified by traffic (busybox ping through
//! nsenter, TCP connects from threads that entered a namespace) and by
//! listing what exists afterwards (`ip`, `nft`, mountinfo).
//!
//! Run as root: `cargo test -p netns -- --include-ignored`. Every resource
//! has a unique name (pid + counter) and a guard that removes it, also when
//! an assertion fails.

// A test harness: a failed step should panic with its message.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use netns::{Allocator, BridgePolicy, Firewall, Net, Netns, NsRef, Policy, Proto};
use nix::sched::{setns, CloneFlags};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{:x}{n}", std::process::id());
    assert!(name.len() <= 15, "test name {name} too long");
    name
}

fn preconditions() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "precondition missing: must run as root (creates bridges, namespaces, nftables tables)"
    );
    for tool in ["busybox", "nsenter", "ip", "nft"] {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "precondition missing: {tool} not found (apt-get install busybox-static util-linux iproute2 nftables)");
    }
}

/// This process's own runtime directory for the namespaces of [`NsGuard`]
/// (not Berth's default, so the suite leaves no mount of its own behind
/// there): `Netns::create_in` makes it a shared self-bind mount, which the
/// last guard to go unmounts and removes.
fn runtime_dir() -> PathBuf {
    PathBuf::from(format!("/run/berth-test-netns-{}", std::process::id()))
}

/// Live [`NsGuard`]s; held while one is created or removed, so the runtime
/// directory is unmounted only when no guard is using it.
static LIVE_GUARDS: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

/// Routes (all tables) as (network, prefix) pairs.
fn routes() -> Vec<(Ipv4Addr, u8)> {
    let out = Command::new("ip")
        .args(["-4", "-o", "route", "show", "table", "all"])
        .output()
        .expect("ip route");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let kinds = [
        "local",
        "broadcast",
        "unicast",
        "multicast",
        "blackhole",
        "unreachable",
        "prohibit",
        "throw",
        "nat",
        "anycast",
    ];
    let mut v = Vec::new();
    for line in text.lines() {
        let mut toks = line.split_whitespace();
        let mut dst = toks.next().unwrap_or("");
        if kinds.contains(&dst) {
            dst = toks.next().unwrap_or("");
        }
        if dst == "default" {
            continue;
        }
        let (a, p) = dst.split_once('/').unwrap_or((dst, "32"));
        if let (Ok(a), Ok(p)) = (a.parse::<Ipv4Addr>(), p.parse::<u8>()) {
            v.push((a, p));
        }
    }
    v
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let p = a.1.min(b.1);
    let mask = if p == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(p))
    };
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

static SUBNET: AtomicU32 = AtomicU32::new(0);

/// A free 10.224.x.0/24 (no route covers it); distinct per call in this
/// process. Outside the agent's pool (10.213.0.0/16, which `berth jail run
/// --net` and berthd take from) and the jail suite's 10.226-227.x, so
/// suites running at the same time cannot pick the same subnet between a
/// route check and a bridge's creation.
fn free_subnet() -> Ipv4Addr {
    let existing = routes();
    for _ in 0..200 {
        let i = SUBNET.fetch_add(1, Ordering::Relaxed);
        let x = ((std::process::id() + i * 7) % 200 + 20) as u8;
        let net = Ipv4Addr::new(10, 224, x, 0);
        if !existing.iter().any(|r| overlaps(*r, (net, 24))) {
            return net;
        }
    }
    panic!("precondition missing: no free 10.224.x.0/24 subnet (routes cover them all)");
}

fn host(net: Ipv4Addr, h: u8) -> Ipv4Addr {
    let o = net.octets();
    Ipv4Addr::new(o[0], o[1], o[2], h)
}

/// Deletes a link by name when dropped (test-side cleanup with `ip`).
struct LinkGuard(String);
impl Drop for LinkGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// Removes a named namespace when dropped.
struct NsGuard {
    ns: Option<Netns>,
    name: String,
}
impl NsGuard {
    fn create() -> NsGuard {
        let name = format!(
            "berth-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut live = LIVE_GUARDS.lock().unwrap_or_else(|e| e.into_inner());
        let ns = Netns::create_in(&runtime_dir(), &name).expect("create netns");
        *live += 1;
        NsGuard { ns: Some(ns), name }
    }
    fn ns(&self) -> &Netns {
        self.ns.as_ref().expect("namespace present")
    }
    fn path(&self) -> PathBuf {
        runtime_dir().join(&self.name)
    }
}
impl Drop for NsGuard {
    fn drop(&mut self) {
        let mut live = LIVE_GUARDS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ns) = self.ns.take() {
            let _ = ns.remove();
        }
        let dir = runtime_dir();
        let _ = Netns::remove_in(&dir, &self.name);
        *live -= 1;
        if *live == 0 {
            let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// Removes an nftables table when dropped.
struct TableGuard(Firewall);
impl Drop for TableGuard {
    fn drop(&mut self) {
        let _ = self.0.remove();
    }
}

/// Runs `f` on a thread that entered the namespace at `path`.
fn in_ns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(path).expect("open netns file");
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A process sleeping in a namespace (as a jail's init would live there),
/// killed by pid when dropped.
struct Sleeper(std::process::Child);
impl Sleeper {
    fn start(ns: &Path) -> Sleeper {
        let want = std::fs::metadata(ns).expect("netns file").ino();
        let s = Sleeper(
            Command::new("nsenter")
                .arg(format!("--net={}", ns.display()))
                .args(["busybox", "sleep", "60"])
                .spawn()
                .expect("spawn sleeper"),
        );
        let pid = s.pid();
        for _ in 0..200 {
            let ino = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino());
            if ino.ok() == Some(want) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("sleeper {pid} never entered {}", ns.display());
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}
impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pidfd_open(pid: i32) -> OwnedFd {
    // SAFETY: pidfd_open(2) takes a pid and a flags word and returns a new
    // fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(
        fd >= 0,
        "precondition missing: pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` was just returned by pidfd_open, is open and owned by
    // nothing else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn ping(from: &Path, to: Ipv4Addr) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={}", from.display()))
        .args(["busybox", "ping", "-c", "1", "-W", "1", &to.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run nsenter busybox ping")
        .success()
}

fn tcp(from: &Path, to: SocketAddrV4) -> bool {
    in_ns(from, move || {
        TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_millis(1500)).is_ok()
    })
}

fn listen_in(ns: &Path, addr: Ipv4Addr) -> (TcpListener, SocketAddrV4) {
    let l = in_ns(ns, move || {
        TcpListener::bind((addr, 0)).expect("bind in namespace")
    });
    let port = l.local_addr().expect("local addr").port();
    (l, SocketAddrV4::new(addr, port))
}

/// The source address of the next connection on `l`, waiting up to 3 s.
fn accept_peer(l: &TcpListener) -> Option<Ipv4Addr> {
    l.set_nonblocking(true).expect("nonblocking");
    for _ in 0..150 {
        match l.accept() {
            Ok((_, SocketAddr::V4(a))) => return Some(*a.ip()),
            Ok(_) => return None,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    None
}

fn in_ns_output(ns: &Path, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(args)
        .output()
        .expect("run nsenter");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn host_links() -> String {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn nft_tables() -> String {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft list tables");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn bridge_policy(
    name: &str,
    net: Ipv4Addr,
    ports: &[(Proto, u16)],
    allow_to: &[&str],
) -> BridgePolicy {
    BridgePolicy {
        bridge: name.to_string(),
        subnet: net,
        prefix_len: 24,
        gateway: host(net, 1),
        host_ports: ports.to_vec(),
        allow_to: allow_to.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "privileged: needs root"]
async fn two_bridges_isolation_host_ports_and_teardown() {
    preconditions();
    netns::set_ipv4_forwarding(true).expect("enable forwarding");
    assert!(netns::ipv4_forwarding().unwrap());
    let net = Net::connect().await.expect("connect");

    let (na, nb) = (free_subnet(), free_subnet());
    let (gwa, gwb) = (host(na, 1), host(nb, 1));
    let (bra, brb) = (unique("btA"), unique("btB"));
    let _ga = LinkGuard(bra.clone());
    let _gb = LinkGuard(brb.clone());
    let bridge_a = net.ensure_bridge(&bra, gwa, 24).await.expect("bridge A");
    let bridge_b = net.ensure_bridge(&brb, gwb, 24).await.expect("bridge B");
    // Idempotent.
    assert_eq!(
        net.ensure_bridge(&bra, gwa, 24)
            .await
            .expect("bridge A again"),
        bridge_a
    );
    let addrs = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-o", "-4", "addr", "show", "dev", &bra])
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    assert_eq!(addrs.matches(&format!("{gwa}/24")).count(), 1, "{addrs}");

    let state = tempfile::tempdir().unwrap();
    let mut alloc_a = Allocator::open(state.path(), &bra, gwa, 24).unwrap();
    let mut alloc_b = Allocator::open(state.path(), &brb, gwb, 24).unwrap();

    let (a1, a2, b1) = (NsGuard::create(), NsGuard::create(), NsGuard::create());
    let mut veths = Vec::new();
    let mut guards = Vec::new();
    for (ns, on_a) in [(&a1, true), (&a2, true), (&b1, false)] {
        let (bridge, alloc) = if on_a {
            (&bridge_a, &mut alloc_a)
        } else {
            (&bridge_b, &mut alloc_b)
        };
        let host_if = unique("btv");
        guards.push(LinkGuard(host_if.clone()));
        let addr = alloc.allocate(&ns.name).unwrap();
        let v = net
            .add_veth(bridge, &host_if, "eth0", ns.ns().ns_ref(), addr)
            .await
            .expect("add veth");
        assert!(net.link_exists(&host_if).await.unwrap());
        // The jail end lives in the other namespace: the host sees only
        // the peer's namespace id.
        let inside = in_ns_output(
            &ns.path(),
            &["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
        );
        assert!(inside.contains(&format!("{addr}/24")), "{inside}");
        let lo = in_ns_output(&ns.path(), &["ip", "-o", "link", "show", "dev", "lo"]);
        assert!(lo.contains("UP"), "lo not up: {lo}");
        let route = in_ns_output(&ns.path(), &["ip", "-4", "route", "show", "default"]);
        assert!(
            route.contains(&format!("default via {} dev eth0", bridge.gateway)),
            "{route}"
        );
        let master = String::from_utf8_lossy(
            &Command::new("ip")
                .args(["-o", "link", "show", "dev", &host_if])
                .output()
                .unwrap()
                .stdout,
        )
        .to_string();
        assert!(
            master.contains(&format!("master {}", bridge.name))
                && master.contains("UP")
                && master.contains("link-netns"),
            "{master}"
        );
        veths.push(v);
    }
    let mut ports_a = vec![veths[0].host_if.clone(), veths[1].host_if.clone()];
    ports_a.sort();
    assert_eq!(net.bridge_ports(&bra).await.unwrap(), ports_a);
    assert_eq!(
        net.bridge_ports(&brb).await.unwrap(),
        vec![veths[2].host_if.clone()]
    );
    let (ip_a1, ip_a2, ip_b1) = (veths[0].addr, veths[1].addr, veths[2].addr);
    assert_ne!(ip_a1, ip_a2);

    let (_lb1, b1_svc) = listen_in(&b1.path(), ip_b1);
    let (_la2, a2_svc) = listen_in(&a2.path(), ip_a2);
    let (_la1, a1_svc) = listen_in(&a1.path(), ip_a1);
    let host_listener = TcpListener::bind((gwa, 0)).expect("host listener on gateway A");
    let host_svc = SocketAddrV4::new(gwa, host_listener.local_addr().unwrap().port());
    let host_listener_b = TcpListener::bind((gwb, 0)).expect("host listener on gateway B");
    let host_svc_b = SocketAddrV4::new(gwb, host_listener_b.local_addr().unwrap().port());

    // An "uplink" peer: a namespace behind a bridge that is not in the
    // policy (a non-Berth interface), to see masquerading at work.
    let nu = free_subnet();
    let gwu = host(nu, 1);
    let bru = unique("btU");
    let _gu = LinkGuard(bru.clone());
    let bridge_u = net
        .ensure_bridge(&bru, gwu, 24)
        .await
        .expect("uplink bridge");
    let up = NsGuard::create();
    let up_if = unique("btv");
    guards.push(LinkGuard(up_if.clone()));
    let up_veth = net
        .add_veth(&bridge_u, &up_if, "eth0", up.ns().ns_ref(), host(nu, 2))
        .await
        .expect("uplink veth");
    let (up_listener, up_svc) = listen_in(&up.path(), up_veth.addr);

    // Without our table, everything flows: the checks below can fail.
    assert!(ping(&a1.path(), gwa), "a1 cannot ping its gateway");
    assert!(ping(&b1.path(), gwb), "b1 cannot ping its gateway");
    assert!(
        ping(&a1.path(), ip_a2),
        "a1 cannot ping a2 on the same bridge"
    );
    assert!(
        ping(&a1.path(), ip_b1)
            && tcp(&a1.path(), b1_svc)
            && tcp(&b1.path(), a1_svc)
            && tcp(&a1.path(), host_svc)
            && tcp(&b1.path(), host_svc_b)
            && ping(&a1.path(), gwb),
        "precondition missing: traffic between test bridges and to the host does not flow without our firewall (another firewall on the host?)"
    );

    assert!(tcp(&a1.path(), up_svc), "a1 cannot reach the uplink peer");
    assert_eq!(
        accept_peer(&up_listener),
        Some(ip_a1),
        "source rewritten without our table"
    );

    let fw = TableGuard(Firewall::new(&format!("berth_t{}", unique("t"))));
    let mut policy = Policy {
        bridges: vec![
            bridge_policy(&bra, na, &[], &[]),
            bridge_policy(&brb, nb, &[], &[]),
        ],
        uplink_masquerade: true,
    };
    fw.0.apply(&policy).expect("apply policy");
    fw.0.apply(&policy)
        .expect("apply policy again (idempotent)");
    assert!(fw.0.exists().unwrap());

    // Egress to a non-Berth interface is masqueraded: the peer sees the
    // host's address on its side, not the jail's.
    assert!(tcp(&a1.path(), up_svc), "a1 cannot reach the uplink peer");
    assert_eq!(
        accept_peer(&up_listener),
        Some(gwu),
        "egress not masqueraded"
    );
    // Same bridge: allowed; own gateway answers ping.
    assert!(
        ping(&a1.path(), gwa),
        "a1 cannot ping its gateway under the policy"
    );
    assert!(
        ping(&b1.path(), gwb),
        "b1 cannot ping its gateway under the policy"
    );
    assert!(ping(&a1.path(), ip_a2), "same-bridge ping blocked");
    assert!(tcp(&a1.path(), a2_svc), "same-bridge tcp blocked");
    // Across bridges: blocked both ways.
    assert!(!ping(&a1.path(), ip_b1), "a1 reached b1 by ping");
    assert!(!tcp(&a1.path(), b1_svc), "a1 reached b1 by tcp");
    assert!(!ping(&b1.path(), ip_a1), "b1 reached a1 by ping");
    // Host services: blocked unless allowed; other host addresses too.
    assert!(!tcp(&a1.path(), host_svc), "a1 reached the host service");
    assert!(
        !ping(&a1.path(), gwb),
        "a1 pinged the other bridge's gateway"
    );

    // Allow A → B and the host port for A.
    policy.bridges[0] = bridge_policy(&bra, na, &[(Proto::Tcp, host_svc.port())], &[&brb]);
    fw.0.apply(&policy).expect("apply second policy");
    assert!(tcp(&a1.path(), host_svc), "allowed host port unreachable");
    assert!(ping(&a1.path(), ip_b1), "allow_to: a1 cannot ping b1");
    assert!(
        tcp(&a1.path(), b1_svc),
        "allow_to: a1 cannot reach b1 by tcp"
    );
    assert!(
        !ping(&b1.path(), ip_a1),
        "allow_to is one-way, yet b1 pinged a1"
    );
    assert!(!tcp(&b1.path(), a1_svc), "b1 reached a1 by tcp");
    // B has no host port.
    assert!(!tcp(&b1.path(), host_svc_b), "b1 reached a host port");

    // Teardown through the crate.
    net.delete_link(&up_if).await.expect("delete uplink veth");
    net.delete_bridge(&bru).await.expect("delete uplink bridge");
    drop(up);
    for (v, ns, on_a) in [
        (&veths[0], &a1, true),
        (&veths[1], &a2, true),
        (&veths[2], &b1, false),
    ] {
        let alloc = if on_a { &mut alloc_a } else { &mut alloc_b };
        net.delete_link(&v.host_if).await.expect("delete veth");
        net.delete_link(&v.host_if)
            .await
            .expect("delete veth again");
        alloc.release(&ns.name).unwrap();
    }
    fw.0.remove().expect("remove table");
    fw.0.remove().expect("remove table again");
    net.delete_bridge(&bra).await.expect("delete bridge A");
    net.delete_bridge(&brb).await.expect("delete bridge B");
    net.delete_bridge(&brb)
        .await
        .expect("delete bridge B again");
    let ns_paths = [a1.path(), a2.path(), b1.path()];
    for g in [a1, a2, b1] {
        let mut g = g;
        g.ns.take().unwrap().remove().expect("remove netns");
    }

    // Nothing of ours is left.
    let links = host_links();
    for name in [
        &bra,
        &brb,
        &bru,
        &up_if,
        &veths[0].host_if,
        &veths[1].host_if,
        &veths[2].host_if,
    ] {
        assert!(!net.link_exists(name).await.unwrap(), "{name} still exists");
        assert!(
            !links.contains(&format!(" {name}:")) && !links.contains(&format!(" {name}@")),
            "{name} in {links}"
        );
    }
    assert!(!fw.0.exists().unwrap());
    assert!(!nft_tables().contains(fw.0.table()), "{}", nft_tables());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for p in ns_paths {
        assert!(!p.exists(), "{} left", p.display());
        assert!(
            !mounts.contains(&p.display().to_string()),
            "{} still mounted",
            p.display()
        );
    }
    let reopened = Allocator::open(state.path(), &bra, gwa, 24).unwrap();
    assert_eq!(reopened.leases().count(), 0);
}

/// Runs `f` on a thread of its own that first joins network namespace
/// `ns` (the thread ends with it, so this process's namespace is never
/// changed).
fn in_ns_thread<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(ns).unwrap();
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "privileged: needs root"]
async fn veth_pair_configured_from_inside() {
    preconditions();
    let net = Net::connect().await.expect("connect");
    let subnet = free_subnet();
    let br = unique("btC");
    let _gb = LinkGuard(br.clone());
    let bridge = net.ensure_bridge(&br, host(subnet, 1), 24).await.unwrap();
    let ns = NsGuard::create();
    let host_if = unique("btc");
    let _gv = LinkGuard(host_if.clone());
    let addr = host(subnet, 7);
    let veth = net
        .add_veth_pair(&bridge, &host_if, "eth0", ns.ns().ns_ref(), addr)
        .await
        .expect("add veth pair");
    assert_eq!(veth.addr, addr);
    // The jail end arrives down, without an address, with one queue each
    // way (as the host end).
    let inside = in_ns_output(
        &ns.path(),
        &["ip", "-d", "-o", "link", "show", "dev", "eth0"],
    );
    assert!(inside.contains("state DOWN"), "{inside}");
    assert!(inside.contains("numtxqueues 1 numrxqueues 1"), "{inside}");
    let outside = String::from_utf8(
        Command::new("ip")
            .args(["-d", "-o", "link", "show", "dev", &host_if])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(outside.contains("numtxqueues 1 numrxqueues 1"), "{outside}");
    assert!(outside.contains(&format!("master {br}")), "{outside}");
    let v4 = in_ns_output(&ns.path(), &["ip", "-o", "-4", "addr", "show"]);
    assert!(!v4.contains("eth0"), "{v4}");

    // Configured from a thread inside: loopback, address, link, route.
    let gw = bridge.gateway;
    in_ns_thread(&ns.path(), move || {
        netns::configure_current("eth0", addr, 24, gw)
    })
    .expect("configure from inside");
    let v4 = in_ns_output(&ns.path(), &["ip", "-o", "-4", "addr", "show"]);
    assert!(v4.contains(&format!("eth0    inet {addr}/24")), "{v4}");
    assert!(v4.contains("lo    inet 127.0.0.1/8"), "{v4}");
    let routes = in_ns_output(&ns.path(), &["ip", "route", "show", "default"]);
    assert!(
        routes.contains(&format!("default via {gw} dev eth0")),
        "{routes}"
    );
    assert!(
        ping(&ns.path(), gw),
        "configured end cannot ping the gateway"
    );

    // Again: the address is there (fine), the route too (an error that
    // says which request failed and where).
    let err = in_ns_thread(&ns.path(), move || {
        netns::configure_current("eth0", addr, 24, gw)
    })
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("adding default route"), "{msg}");
    assert!(msg.contains(&format!("via {gw} on eth0")), "{msg}");
    // A link that is not there is named.
    let err = in_ns_thread(&ns.path(), move || {
        netns::configure_current("eth9", addr, 24, gw)
    })
    .unwrap_err();
    assert!(err.to_string().contains("link eth9 not found"), "{err}");
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "privileged: needs root"]
async fn veth_into_namespace_of_a_pid() {
    preconditions();
    let net = Net::connect().await.expect("connect");
    let subnet = free_subnet();
    let br = unique("btP");
    let _gb = LinkGuard(br.clone());
    let bridge = net.ensure_bridge(&br, host(subnet, 1), 24).await.unwrap();
    let ns = NsGuard::create();

    // A process living in the namespace, as a jail's init would.
    let sleeper = Sleeper::start(&ns.path());
    let pid = sleeper.pid();

    let host_if = unique("btq");
    let _gv = LinkGuard(host_if.clone());
    let addr = host(subnet, 9);
    net.add_veth(&bridge, &host_if, "eth0", NsRef::Pid(pid), addr)
        .await
        .expect("add veth by pid");
    assert!(
        ping(&ns.path(), bridge.gateway),
        "jail end by pid cannot ping the gateway"
    );

    // The same through a pidfd of a process in another namespace.
    let ns2 = NsGuard::create();
    let sleeper2 = Sleeper::start(&ns2.path());
    let pidfd = pidfd_open(sleeper2.pid());
    let host_if2 = unique("btq");
    let _gv2 = LinkGuard(host_if2.clone());
    net.add_veth(
        &bridge,
        &host_if2,
        "eth0",
        NsRef::Fd(pidfd.as_raw_fd()),
        host(subnet, 12),
    )
    .await
    .expect("add veth by pidfd");
    let inside = in_ns_output(
        &ns2.path(),
        &["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
    );
    assert!(
        inside.contains(&format!("{}/24", host(subnet, 12))),
        "{inside}"
    );
    assert!(
        ping(&ns2.path(), host(subnet, 9)),
        "pidfd jail cannot reach the pid jail"
    );
    // The bridge keeps its own address whatever ports come and go, so the
    // jails' cached gateway address stays right.
    let mac = netns::link::bridge_mac(&br)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let sysfs = format!("/sys/class/net/{br}/address");
    assert_eq!(std::fs::read_to_string(&sysfs).unwrap().trim(), mac);
    drop(sleeper2);
    drop(ns2);
    // The second jail's veth goes with its namespace; the address stays.
    let t0 = std::time::Instant::now();
    while Path::new(&format!("/sys/class/net/{host_if2}")).exists()
        && t0.elapsed() < std::time::Duration::from_secs(5)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(std::fs::read_to_string(&sysfs).unwrap().trim(), mac);
    // The process is gone: its pidfd no longer leads to a namespace.
    let other2 = unique("btq");
    let _go2 = LinkGuard(other2.clone());
    let err = net
        .add_veth(
            &bridge,
            &other2,
            "eth0",
            NsRef::Fd(pidfd.as_raw_fd()),
            host(subnet, 13),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("has exited"), "{err}");
    assert!(!net.link_exists(&other2).await.unwrap());
    net.delete_link(&host_if2).await.unwrap();

    // A failure inside the namespace (a default route already there)
    // deletes the new pair again, both ends.
    let ns3 = NsGuard::create();
    let st = Command::new("nsenter")
        .arg(format!("--net={}", ns3.path().display()))
        .args(["ip", "route", "add", "blackhole", "default"])
        .status()
        .unwrap();
    assert!(
        st.success(),
        "precondition missing: cannot add a blackhole route"
    );
    let host_if3 = unique("btq");
    let _gv3 = LinkGuard(host_if3.clone());
    let err = net
        .add_veth(
            &bridge,
            &host_if3,
            "eth0",
            ns3.ns().ns_ref(),
            host(subnet, 14),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("adding default route"), "{err}");
    assert!(
        !net.link_exists(&host_if3).await.unwrap(),
        "host end left behind"
    );
    let inside = in_ns_output(&ns3.path(), &["ip", "-o", "link", "show"]);
    assert!(!inside.contains("eth0"), "jail end left behind: {inside}");

    // Errors name what they are about, and a failed add leaves nothing.
    let other = unique("btq");
    let _go = LinkGuard(other.clone());
    let err = net
        .add_veth(&bridge, &other, "eth0", NsRef::Pid(pid), host(subnet, 10))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&other), "{err}");
    assert!(!net.link_exists(&other).await.unwrap());
    let err = net
        .add_veth(&bridge, &other, "eth1", NsRef::Pid(pid), host(subnet, 1))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not a usable host address"),
        "{err}"
    );
    let err = net
        .add_veth(&bridge, &other, "eth1", NsRef::Pid(i32::MAX), addr)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!("pid {}", i32::MAX)),
        "{err}"
    );
    assert!(!net.link_exists(&other).await.unwrap());

    net.delete_link(&host_if).await.unwrap();
    net.delete_bridge(&br).await.unwrap();
    assert!(!net.link_exists(&host_if).await.unwrap());
    assert!(!net.link_exists(&br).await.unwrap());
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "privileged: needs root"]
async fn bridge_name_taken_by_another_kind_is_refused() {
    preconditions();
    let net = Net::connect().await.expect("connect");
    let name = unique("btD");
    let _g = LinkGuard(name.clone());
    let peer = unique("btE");
    let _gp = LinkGuard(peer.clone());
    let status = Command::new("ip")
        .args(["link", "add", &name, "type", "veth", "peer", "name", &peer])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "precondition missing: cannot create a veth link"
    );
    let subnet = free_subnet();
    let err = net
        .ensure_bridge(&name, host(subnet, 1), 24)
        .await
        .unwrap_err();
    assert!(
        matches!(err, netns::Error::NotABridge(ref n) if *n == name),
        "{err}"
    );
    let err = net.delete_bridge(&name).await.unwrap_err();
    assert!(matches!(err, netns::Error::NotABridge(_)), "{err}");
    assert!(
        net.link_exists(&name).await.unwrap(),
        "a non-bridge was deleted"
    );
    net.delete_link(&name).await.unwrap();
    assert!(!net.link_exists(&name).await.unwrap());
}

#[test]
#[ignore = "privileged: needs root"]
fn firewall_ruleset_as_the_kernel_sees_it() {
    preconditions();
    let fw = TableGuard(Firewall::new(&format!("berth_t{}", unique("k"))));
    assert!(!fw.0.exists().unwrap());
    fw.0.remove().expect("remove of an absent table is ok");
    let policy = Policy {
        bridges: vec![
            bridge_policy(
                "btkA",
                Ipv4Addr::new(10, 213, 250, 0),
                &[(Proto::Udp, 53)],
                &["btkB"],
            ),
            bridge_policy("btkB", Ipv4Addr::new(10, 213, 251, 0), &[], &[]),
        ],
        uplink_masquerade: true,
    };
    fw.0.apply(&policy).unwrap();
    fw.0.apply(&policy).unwrap();
    let out = Command::new("nft")
        .args(["list", "table", "inet", fw.0.table()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for needle in [
        "type filter hook input priority filter; policy accept;",
        "type filter hook forward priority filter; policy accept;",
        "type nat hook postrouting priority srcnat; policy accept;",
        r#"iifname "btkA" ct state established,related accept"#,
        r#"iifname "btkA" ip daddr 10.213.250.1 icmp type echo-request accept"#,
        r#"iifname "btkA" udp dport 53 accept"#,
        r#"iifname "btkA" drop"#,
        r#"iifname "btkA" oifname "btkB" accept"#,
        r#"iifname "btkB" oifname "btkA" drop"#,
        r#"ip saddr 10.213.250.0/24 oifname != "btkA" oifname != "btkB" masquerade"#,
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // Applying twice did not duplicate anything.
    assert_eq!(text.matches(r#"iifname "btkA" drop"#).count(), 1, "{text}");

    let list = || {
        let out = Command::new("nft")
            .args(["list", "table", "inet", fw.0.table()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // A policy we refuse never reaches the kernel.
    let bad = Policy {
        bridges: vec![bridge_policy(
            "btkA",
            Ipv4Addr::new(10, 213, 250, 0),
            &[],
            &["nope"],
        )],
        uplink_masquerade: false,
    };
    assert!(fw.0.apply(&bad).is_err());
    assert_eq!(list(), text);

    // A batch the kernel refuses (its last rule names a missing chain) is
    // not applied at all, though it starts by deleting the table: the
    // transaction is all or nothing.
    let mut rules = netns::firewall::ruleset(&Policy {
        bridges: vec![bridge_policy(
            "btkC",
            Ipv4Addr::new(10, 213, 252, 0),
            &[],
            &[],
        )],
        uplink_masquerade: false,
    });
    rules.push(netns::firewall::Rule {
        chain: "missing",
        matches: vec![netns::firewall::Match::Iif("btkC".into())],
        action: netns::firewall::Action::Drop,
    });
    let err = netns::nft::send_batch(
        fw.0.table(),
        netns::firewall::replace_batch(fw.0.table(), &rules),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains(r#"rule missing: iifname "btkC" drop"#),
        "{err}"
    );
    assert_eq!(list(), text, "a refused batch changed the table");

    // Dropping a bridge from the policy removes its rules.
    let only_a = Policy {
        bridges: vec![bridge_policy(
            "btkA",
            Ipv4Addr::new(10, 213, 250, 0),
            &[],
            &[],
        )],
        uplink_masquerade: true,
    };
    fw.0.apply(&only_a).unwrap();
    let text = list();
    assert!(
        !text.contains("btkB") && !text.contains("10.213.251."),
        "{text}"
    );
    assert!(text.contains(r#"iifname "btkA" drop"#), "{text}");

    fw.0.remove().unwrap();
    assert!(!fw.0.exists().unwrap());
    assert!(!nft_tables().contains(fw.0.table()));
}

#[test]
#[ignore = "privileged: needs root"]
fn named_namespace_lifecycle() {
    preconditions();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("ns");
    let ns = Netns::create_in(dir.path(), &name).expect("create");
    struct Cleanup(PathBuf, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Netns::remove_in(&self.0, &self.1);
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _c = Cleanup(dir.path().to_path_buf(), name.clone());
    assert!(matches!(
        Netns::create_in(dir.path(), &name),
        Err(netns::Error::NamespaceExists(_))
    ));
    // A distinct namespace from ours, with only a loopback that is down.
    let ours = std::fs::metadata("/proc/self/ns/net").unwrap();
    let theirs = std::fs::metadata(ns.path()).unwrap();
    assert_ne!(
        std::os::unix::fs::MetadataExt::ino(&ours),
        std::os::unix::fs::MetadataExt::ino(&theirs)
    );
    let links = in_ns_output(ns.path(), &["ip", "-o", "link", "show"]);
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:"), "{links}");
    let opened = Netns::open_in(dir.path(), &name).expect("open");
    assert_eq!(opened.path(), ns.path());
    drop(opened);
    let path = ns.path().to_path_buf();
    ns.remove().expect("remove");
    assert!(!path.exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&path.display().to_string()));
    Netns::remove_in(dir.path(), &name).expect("remove again");
    assert!(Netns::open_in(dir.path(), &name).is_err());
}

#[test]
#[ignore = "privileged: needs root"]
fn large_policy_applies_in_one_batch() {
    preconditions();
    let fw = TableGuard(Firewall::new(&format!("berth_t{}", unique("l"))));
    // 40 bridges, each allowed to the next and with two host ports: about
    // 1,900 rules, far past one default socket buffer of messages.
    let names: Vec<String> = (0..40).map(|i| format!("btl{i}")).collect();
    let bridges = (0..40)
        .map(|i| {
            let next = names[(i + 1) % 40].as_str();
            bridge_policy(
                &names[i],
                Ipv4Addr::new(10, 214, i as u8, 0),
                &[(Proto::Udp, 53), (Proto::Tcp, 53)],
                &[next],
            )
        })
        .collect();
    let policy = Policy {
        bridges,
        uplink_masquerade: true,
    };
    let expected = netns::firewall::ruleset(&policy).len();
    assert!(expected > 1800, "{expected}");
    fw.0.apply(&policy).expect("apply large policy");
    fw.0.apply(&policy).expect("apply large policy again");
    let out = Command::new("nft")
        .args(["-a", "list", "table", "inet", fw.0.table()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rules = text
        .lines()
        .filter(|l| l.contains("# handle") && !l.contains("chain ") && !l.contains("table "))
        .count();
    assert_eq!(rules, expected, "rule count in the kernel");
    assert!(text.contains(r#"iifname "btl39" oifname "btl0" accept"#));
    fw.0.remove().unwrap();
    assert!(!fw.0.exists().unwrap());
}

/// A free TCP port of the host (bound on all addresses, then released).
fn free_host_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// The chains of table `table` (family inet), as `nft` lists them.
fn nft_table(table: &str) -> String {
    let out = Command::new("nft")
        .args(["list", "table", "inet", table])
        .output()
        .expect("nft list table");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "privileged: needs root"]
async fn port_forward_from_the_gateway_into_a_jail() {
    preconditions();
    netns::set_ipv4_forwarding(true).expect("enable forwarding");
    let net = Net::connect().await.expect("connect");

    // Two vendor bridges with one jail-like namespace each.
    let (na, nb) = (free_subnet(), free_subnet());
    let (gwa, gwb) = (host(na, 1), host(nb, 1));
    let (bra, brb) = (unique("bfA"), unique("bfB"));
    let _ga = LinkGuard(bra.clone());
    let _gb = LinkGuard(brb.clone());
    let bridge_a = net.ensure_bridge(&bra, gwa, 24).await.expect("bridge A");
    let bridge_b = net.ensure_bridge(&brb, gwb, 24).await.expect("bridge B");
    let (a1, b1) = (NsGuard::create(), NsGuard::create());
    let mut guards = Vec::new();
    let mut addrs = Vec::new();
    for (ns, bridge, addr) in [(&a1, &bridge_a, host(na, 5)), (&b1, &bridge_b, host(nb, 5))] {
        let host_if = unique("bfv");
        guards.push(LinkGuard(host_if.clone()));
        let v = net
            .add_veth(bridge, &host_if, "eth0", ns.ns().ns_ref(), addr)
            .await
            .expect("add veth");
        addrs.push(v.addr);
    }
    let (ip_a1, ip_b1) = (addrs[0], addrs[1]);
    // A test host on the "network" side: a namespace behind an interface
    // that is no vendor bridge, its default route via the host.
    let nu = free_subnet();
    let gwu = host(nu, 1);
    let bru = unique("bfU");
    let _gu = LinkGuard(bru.clone());
    let bridge_u = net.ensure_bridge(&bru, gwu, 24).await.expect("uplink");
    let th = NsGuard::create();
    let th_if = unique("bfv");
    guards.push(LinkGuard(th_if.clone()));
    let th_addr = net
        .add_veth(&bridge_u, &th_if, "eth0", th.ns().ns_ref(), host(nu, 2))
        .await
        .expect("test host veth")
        .addr;

    // The jail's server, and a second port of the jail that is not
    // forwarded.
    let (served, svc) = listen_in(&a1.path(), ip_a1);
    let (_other, other_svc) = listen_in(&a1.path(), ip_a1);
    let (hport, unforwarded) = (free_host_port(), free_host_port());
    assert!(
        tcp(&th.path(), svc),
        "precondition missing: the test host cannot reach the jail before any firewall (another firewall on the host?)"
    );
    assert_eq!(accept_peer(&served), Some(th_addr));
    assert!(
        !tcp(&th.path(), SocketAddrV4::new(gwu, hport)),
        "host port {hport} answers before any forward"
    );

    let fw = TableGuard(Firewall::new(&format!("berth_t{}", unique("f"))));
    let policy = Policy {
        bridges: vec![
            bridge_policy(&bra, na, &[], &[]),
            bridge_policy(&brb, nb, &[], &[]),
        ],
        uplink_masquerade: true,
    };
    let forwards = [netns::Forward {
        proto: Proto::Tcp,
        host_port: hport,
        jail: ip_a1,
        jail_port: svc.port(),
    }];
    // A host port forwarded twice is refused before anything is sent.
    let twice = [forwards[0], forwards[0]];
    let err = fw.0.apply_with_forwards(&policy, &twice).unwrap_err();
    assert!(err.to_string().contains("forwarded twice"), "{err}");
    assert!(!fw.0.exists().unwrap());

    fw.0.apply_with_forwards(&policy, &forwards)
        .expect("apply with a forward");
    fw.0.apply_with_forwards(&policy, &forwards)
        .expect("apply with a forward again");
    let listed = nft_table(fw.0.table());
    assert!(
        listed.contains("type nat hook prerouting priority dstnat")
            && listed.contains("type nat hook output priority -100"),
        "{listed}"
    );
    assert!(
        listed.contains(&format!("dnat ip to {ip_a1}:{}", svc.port())),
        "{listed}"
    );

    // From the network to the host's address: the jail's server answers,
    // and sees the test host's own address.
    assert!(
        tcp(&th.path(), SocketAddrV4::new(gwu, hport)),
        "forwarded port unreachable from the test host"
    );
    assert_eq!(accept_peer(&served), Some(th_addr), "not the jail's server");
    // The host itself, on a bridge gateway address (not on loopback).
    let h = std::net::SocketAddr::V4(SocketAddrV4::new(gwa, hport));
    assert!(
        TcpStream::connect_timeout(&h, Duration::from_millis(1500)).is_ok(),
        "forwarded port unreachable from the host on {gwa}"
    );
    assert_eq!(accept_peer(&served), Some(gwa));
    let lo = std::net::SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, hport));
    assert!(
        TcpStream::connect_timeout(&lo, Duration::from_millis(500)).is_err(),
        "127.0.0.1 is forwarded"
    );
    // A port that is not forwarded, and the jail's other port reached
    // directly, are not open to the network.
    assert!(!tcp(&th.path(), SocketAddrV4::new(gwu, unforwarded)));
    assert!(
        !tcp(&th.path(), other_svc),
        "the jail's unforwarded port is open to the network"
    );
    assert!(
        !tcp(&th.path(), SocketAddrV4::new(ip_a1, hport)),
        "the jail reached on the host port directly"
    );
    // The other vendor's jail reaches the first neither directly nor
    // through the forward on its own gateway.
    assert!(!tcp(&b1.path(), svc), "b1 reached a1 directly");
    assert!(
        !tcp(&b1.path(), SocketAddrV4::new(gwb, hport)),
        "b1 reached a1 through the forwarded port"
    );
    assert!(!ping(&b1.path(), ip_a1), "b1 pinged a1");
    assert_eq!(accept_peer(&served), None, "a blocked connection arrived");
    // The jail's own egress still works (replies come back into bridge A).
    let (up_listener, up_svc) = listen_in(&th.path(), th_addr);
    assert!(tcp(&a1.path(), up_svc), "a1 cannot reach the network");
    assert_eq!(
        accept_peer(&up_listener),
        Some(gwu),
        "egress not masqueraded"
    );
    let _ = ip_b1;

    // Without the forward: the nat chains go and the port is closed.
    fw.0.apply(&policy).expect("apply without forwards");
    let listed = nft_table(fw.0.table());
    assert!(
        !listed.contains("prerouting") && !listed.contains("chain output"),
        "{listed}"
    );
    assert!(
        !tcp(&th.path(), SocketAddrV4::new(gwu, hport)),
        "forward still open after it was removed"
    );
    fw.0.apply_with_forwards(&policy, &forwards)
        .expect("apply with a forward once more");
    fw.0.remove().expect("remove table");
    assert!(!fw.0.exists().unwrap());
    assert!(!nft_tables().contains(fw.0.table()), "{}", nft_tables());
    assert!(
        !tcp(&th.path(), SocketAddrV4::new(gwu, hport)),
        "forward still open after the table was removed"
    );
}
