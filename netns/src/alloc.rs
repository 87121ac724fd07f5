//! Per-bridge address allocation, persisted so it survives a restart.
//!
//! One file per bridge, `<dir>/<bridge>.addrs`, in a small line format:
//!
//! ```text
//! berth-addrs 1
//! subnet 10.88.0.0/24 gateway 10.88.0.1
//! cursor 10.88.0.7
//! lease 10.88.0.2 jail-a
//! ```
//!
//! Every change is written to a temp file, fsynced, renamed over the old
//! file and the directory fsynced, so a power cut leaves either the old or
//! the new file (on tmpfs, which a power cut empties, without the fsyncs). The cursor (last address handed out) only moves forward,
//! wrapping around, so a just-released address is not handed out again at
//! once (stale ARP caches and connections die first). A file that does not
//! parse is an error naming it; it is never reset silently.
//!
//! Quarantine: [`Allocator::release_after_link`] does not free an address
//! at once but parks it as `quarantine ADDR LINK` until link `LINK` (the
//! host end of the old owner's veth) is gone from the host. A veth whose
//! jail ended is removed by the kernel asynchronously, when it tears the
//! jail's network namespace down (a few ms to tens of ms later); until
//! then the old namespace still answers ARP for the address on the bridge,
//! so handing the address out again would give it to two endpoints. A file
//! with quarantine lines is written as version 2; version 1 files (no
//! quarantine) stay readable and are still written when nothing is parked.
//!
//! One process owns a bridge's file at a time (the agent); nothing locks it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::link::{check_subnet, mask_of, network_of};
use crate::name::validate_ifname;
use crate::Error;

const MAGIC: &str = "berth-addrs 1";
const MAGIC_V2: &str = "berth-addrs 2";
/// Where the host's links show (sysfs-rules: one entry per interface).
const SYS_CLASS_NET: &str = "/sys/class/net";
const OWNER_MAX: usize = 255;

/// Hands out the host addresses of one bridge's subnet to owners.
#[derive(Debug)]
pub struct Allocator {
    path: PathBuf,
    bridge: String,
    gateway: Ipv4Addr,
    prefix_len: u8,
    /// Last address handed out; the search starts after it.
    cursor: u32,
    leases: BTreeMap<String, Ipv4Addr>,
    /// Released addresses waiting for their old link to go: address → link.
    quarantine: BTreeMap<Ipv4Addr, String>,
    /// Directory whose entries are the live links ([`SYS_CLASS_NET`]).
    links_dir: PathBuf,
}

impl Allocator {
    /// Opens (or starts) the allocation of bridge `bridge` for
    /// `gateway/prefix_len`, persisted under `dir`.
    pub fn open(
        dir: &Path,
        bridge: &str,
        gateway: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<Allocator, Error> {
        validate_ifname(bridge)?;
        check_subnet(&format!("bridge {bridge}"), gateway, prefix_len)?;
        let path = dir.join(format!("{bridge}.addrs"));
        let mut a = Allocator {
            path,
            bridge: bridge.to_string(),
            gateway,
            prefix_len,
            cursor: u32::from(gateway),
            leases: BTreeMap::new(),
            quarantine: BTreeMap::new(),
            links_dir: PathBuf::from(SYS_CLASS_NET),
        };
        match fs::read_to_string(&a.path) {
            Ok(text) => a.parse(&text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(a.io("reading", e)),
        }
        Ok(a)
    }

    /// Returns `owner`'s address, handing out the next free one after the
    /// cursor if it has none yet.
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, Error> {
        self.check_owner(owner)?;
        if let Some(addr) = self.leases.get(owner) {
            return Ok(*addr);
        }
        let mask = mask_of(self.prefix_len);
        let network = u32::from(self.gateway) & mask;
        let first = network + 1;
        let last = (network | !mask) - 1;
        let size = last - first + 1;
        // Parked addresses whose link is gone are free again.
        let before = self.quarantine.clone();
        self.quarantine
            .retain(|_, link| self.links_dir.join(link.as_str()).exists());
        let taken: std::collections::BTreeSet<u32> = self
            .leases
            .values()
            .chain(self.quarantine.keys())
            .map(|a| u32::from(*a))
            .collect();
        let start = if (first..=last).contains(&self.cursor) {
            self.cursor
        } else {
            last
        };
        let mut candidate = start;
        let mut found = None;
        for _ in 0..size {
            candidate = if candidate >= last {
                first
            } else {
                candidate + 1
            };
            if candidate != u32::from(self.gateway) && !taken.contains(&candidate) {
                found = Some(candidate);
                break;
            }
        }
        let Some(addr) = found else {
            self.quarantine = before;
            return Err(Error::AllocExhausted {
                bridge: self.bridge.clone(),
                network: Ipv4Addr::from(network),
                prefix_len: self.prefix_len,
                path: self.path.clone(),
            });
        };
        let addr = Ipv4Addr::from(addr);
        let old_cursor = self.cursor;
        self.cursor = u32::from(addr);
        self.leases.insert(owner.to_string(), addr);
        if let Err(e) = self.persist() {
            self.leases.remove(owner);
            self.cursor = old_cursor;
            self.quarantine = before;
            return Err(e);
        }
        tracing::debug!(bridge = self.bridge, owner, %addr, "allocated address");
        Ok(addr)
    }

    /// Releases `owner`'s address; `Ok` if it holds none.
    pub fn release(&mut self, owner: &str) -> Result<(), Error> {
        let Some(addr) = self.leases.remove(owner) else {
            return Ok(());
        };
        if let Err(e) = self.persist() {
            self.leases.insert(owner.to_string(), addr);
            return Err(e);
        }
        tracing::debug!(bridge = self.bridge, owner, %addr, "released address");
        Ok(())
    }

    /// Releases `owner`'s address into quarantine: it is handed out again
    /// only once link `link` no longer exists on the host (see the module
    /// docs). `Ok` if `owner` holds none.
    pub fn release_after_link(&mut self, owner: &str, link: &str) -> Result<(), Error> {
        validate_ifname(link)?;
        let Some(addr) = self.leases.remove(owner) else {
            return Ok(());
        };
        if !self.links_dir.join(link).exists() {
            // Already gone: nothing to wait for.
            return match self.persist() {
                Ok(()) => Ok(()),
                Err(e) => {
                    self.leases.insert(owner.to_string(), addr);
                    Err(e)
                }
            };
        }
        // A link name exists once at a time: an address parked earlier for
        // `link` waited for an earlier link of that name (a jail of the same
        // name), which was gone before this one could be created. It is free.
        let stale: Vec<Ipv4Addr> = self
            .quarantine
            .iter()
            .filter(|(_, l)| l.as_str() == link)
            .map(|(a, _)| *a)
            .collect();
        for a in &stale {
            self.quarantine.remove(a);
        }
        self.quarantine.insert(addr, link.to_string());
        if let Err(e) = self.persist() {
            self.quarantine.remove(&addr);
            for a in stale {
                self.quarantine.insert(a, link.to_string());
            }
            self.leases.insert(owner.to_string(), addr);
            return Err(e);
        }
        tracing::debug!(bridge = self.bridge, owner, %addr, link, "address parked until its link is gone");
        Ok(())
    }

    /// The parked addresses and the links they wait for.
    pub fn quarantined(&self) -> impl Iterator<Item = (Ipv4Addr, &str)> {
        self.quarantine.iter().map(|(a, l)| (*a, l.as_str()))
    }

    /// Tests: judge link presence by the entries of `dir` instead of
    /// `/sys/class/net`.
    #[doc(hidden)]
    pub fn with_links_dir(mut self, dir: &Path) -> Allocator {
        self.links_dir = dir.to_path_buf();
        self
    }

    /// `owner`'s address, if it holds one.
    pub fn lookup(&self, owner: &str) -> Option<Ipv4Addr> {
        self.leases.get(owner).copied()
    }

    /// Every lease, by owner (for adopting what exists after a restart).
    pub fn leases(&self) -> impl Iterator<Item = (&str, Ipv4Addr)> {
        self.leases.iter().map(|(o, a)| (o.as_str(), *a))
    }

    /// The file this allocator persists to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_owner(&self, owner: &str) -> Result<(), Error> {
        let bad = |reason| Error::InvalidOwner {
            bridge: self.bridge.clone(),
            owner: owner.to_string(),
            reason,
        };
        if owner.is_empty() {
            return Err(bad("empty"));
        }
        if owner.len() > OWNER_MAX {
            return Err(bad("longer than 255 bytes"));
        }
        if owner.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("contains whitespace or control characters"));
        }
        Ok(())
    }

    fn io(&self, op: &'static str, source: io::Error) -> Error {
        Error::AllocIo {
            path: self.path.clone(),
            op,
            source,
        }
    }

    fn subnet_line(&self) -> String {
        format!(
            "subnet {}/{} gateway {}",
            network_of(self.gateway, self.prefix_len),
            self.prefix_len,
            self.gateway
        )
    }

    fn render(&self) -> String {
        let magic = if self.quarantine.is_empty() {
            MAGIC
        } else {
            MAGIC_V2
        };
        let mut s = format!(
            "{magic}\n{}\ncursor {}\n",
            self.subnet_line(),
            Ipv4Addr::from(self.cursor)
        );
        for (owner, addr) in &self.leases {
            s.push_str(&format!("lease {addr} {owner}\n"));
        }
        for (addr, link) in &self.quarantine {
            s.push_str(&format!("quarantine {addr} {link}\n"));
        }
        s
    }

    fn parse(&mut self, text: &str) -> Result<(), Error> {
        let corrupt = |line: usize, reason: String| Error::AllocCorrupt {
            path: self.path.clone(),
            line,
            reason,
        };
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        match lines.next() {
            Some((_, l)) if l == MAGIC || l == MAGIC_V2 => {}
            Some((n, l)) => return Err(corrupt(n, format!("expected {MAGIC:?}, found {l:?}"))),
            None => return Err(corrupt(1, "empty file".into())),
        }
        match lines.next() {
            Some((_, l)) if l == self.subnet_line() => {}
            Some((n, l)) => {
                if !parses_as_subnet_line(l) {
                    return Err(corrupt(n, format!("expected a subnet line, found {l:?}")));
                }
                return Err(Error::AllocMismatch {
                    path: self.path.clone(),
                    bridge: self.bridge.clone(),
                    found: l.trim_start_matches("subnet ").to_string(),
                    expected: self.subnet_line().trim_start_matches("subnet ").to_string(),
                });
            }
            None => return Err(corrupt(2, "missing subnet line".into())),
        }
        let mask = mask_of(self.prefix_len);
        let network = u32::from(self.gateway) & mask;
        let in_subnet = |a: Ipv4Addr| {
            let h = u32::from(a) & !mask;
            u32::from(a) & mask == network && h != 0 && h != !mask && a != self.gateway
        };
        let cursor = match lines.next() {
            Some((n, l)) => {
                let v = l
                    .strip_prefix("cursor ")
                    .ok_or_else(|| corrupt(n, format!("expected a cursor line, found {l:?}")))?;
                let a: Ipv4Addr = v
                    .parse()
                    .map_err(|_| corrupt(n, format!("bad cursor address {v:?}")))?;
                if u32::from(a) & mask != network {
                    return Err(corrupt(n, format!("cursor {a} is outside the subnet")));
                }
                u32::from(a)
            }
            None => return Err(corrupt(3, "missing cursor line".into())),
        };
        let mut leases = BTreeMap::new();
        let mut quarantine = BTreeMap::new();
        let mut seen = std::collections::BTreeSet::new();
        for (n, l) in lines {
            let mut parts = l.splitn(3, ' ');
            if let (Some("quarantine"), Some(a), Some(link)) = (
                parts.clone().next(),
                parts.clone().nth(1),
                parts.clone().nth(2),
            ) {
                let a: Ipv4Addr = a
                    .parse()
                    .map_err(|_| corrupt(n, format!("bad quarantine address {a:?}")))?;
                if !in_subnet(a) {
                    return Err(corrupt(
                        n,
                        format!("quarantined {a} is not a host address of the subnet"),
                    ));
                }
                if validate_ifname(link).is_err() {
                    return Err(corrupt(n, format!("bad link name {link:?}")));
                }
                if !seen.insert(a) {
                    return Err(corrupt(n, format!("address {a} is listed twice")));
                }
                quarantine.insert(a, link.to_string());
                continue;
            }
            let (Some("lease"), Some(a), Some(owner)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(corrupt(
                    n,
                    format!("expected \"lease ADDRESS OWNER\", found {l:?}"),
                ));
            };
            let a: Ipv4Addr = a
                .parse()
                .map_err(|_| corrupt(n, format!("bad lease address {a:?}")))?;
            if !in_subnet(a) {
                return Err(corrupt(
                    n,
                    format!("lease {a} is not a host address of the subnet"),
                ));
            }
            if owner.is_empty() || owner.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(corrupt(n, format!("bad owner {owner:?}")));
            }
            if !seen.insert(a) {
                return Err(corrupt(n, format!("address {a} is leased twice")));
            }
            if leases.insert(owner.to_string(), a).is_some() {
                return Err(corrupt(n, format!("owner {owner} holds two leases")));
            }
        }
        self.cursor = cursor;
        self.leases = leases;
        self.quarantine = quarantine;
        Ok(())
    }

    /// Writes the state durably: temp file, fsync, rename, fsync directory.
    fn persist(&self) -> Result<(), Error> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| self.io("creating the directory", e))?;
        let tmp = self.path.with_extension("addrs.tmp");
        // tmpfs does not outlive a power cut whatever we do: no fsync there.
        let durable = !nix::sys::statfs::statfs(dir)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(self.render().as_bytes())?;
            if durable {
                f.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| self.io("writing the temp file", e))?;
        fs::rename(&tmp, &self.path).map_err(|e| self.io("renaming the temp file over", e))?;
        if !durable {
            return Ok(());
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io("syncing the directory of", e))
    }
}

/// Whether `l` is a well-formed `subnet A/P gateway G` line.
fn parses_as_subnet_line(l: &str) -> bool {
    let parts: Vec<&str> = l.split(' ').collect();
    let ["subnet", net, "gateway", gw] = parts.as_slice() else {
        return false;
    };
    let Some((a, p)) = net.split_once('/') else {
        return false;
    };
    a.parse::<Ipv4Addr>().is_ok()
        && p.parse::<u8>().is_ok_and(|p| p <= 32)
        && gw.parse::<Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);

    fn open(dir: &Path) -> Allocator {
        Allocator::open(dir, "br-test", GW, 24).unwrap()
    }

    #[test]
    fn hands_out_distinct_addresses_in_order_and_same_to_same_owner() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = open(dir.path());
        assert_eq!(a.allocate("a").unwrap(), Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(a.allocate("b").unwrap(), Ipv4Addr::new(10, 88, 0, 3));
        assert_eq!(a.allocate("a").unwrap(), Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(a.lookup("b"), Some(Ipv4Addr::new(10, 88, 0, 3)));
        assert_eq!(a.lookup("c"), None);
    }

    #[test]
    fn never_hands_out_an_address_twice_over_many_cycles() {
        let dir = tempfile::tempdir().unwrap();
        let mut a =
            Allocator::open(dir.path(), "br-test", Ipv4Addr::new(10, 88, 0, 1), 28).unwrap();
        // A /28 has 13 usable addresses besides the gateway.
        let mut live: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
        let mut seed = 12345u64;
        for round in 0..800 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let owner = format!("j{}", (seed >> 33) % 20);
            if live.contains_key(&owner) && (seed >> 20).is_multiple_of(2) {
                a.release(&owner).unwrap();
                live.remove(&owner);
            } else if live.len() < 13 || live.contains_key(&owner) {
                let addr = a.allocate(&owner).unwrap();
                assert_ne!(
                    addr,
                    Ipv4Addr::new(10, 88, 0, 1),
                    "round {round}: gateway handed out"
                );
                if let Some(prev) = live.get(&owner) {
                    assert_eq!(*prev, addr);
                } else {
                    assert!(
                        !live.values().any(|v| *v == addr),
                        "round {round}: {addr} twice"
                    );
                    live.insert(owner, addr);
                }
            }
            if round % 41 == 0 {
                // Reopening mid-way must give the same picture.
                a = Allocator::open(dir.path(), "br-test", Ipv4Addr::new(10, 88, 0, 1), 28)
                    .unwrap();
                let persisted: BTreeMap<String, Ipv4Addr> =
                    a.leases().map(|(o, x)| (o.to_string(), x)).collect();
                assert_eq!(persisted, live);
            }
        }
    }

    #[test]
    fn persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = open(dir.path());
        let x = a.allocate("x").unwrap();
        let y = a.allocate("y").unwrap();
        a.release("x").unwrap();
        drop(a);
        let mut b = open(dir.path());
        assert_eq!(b.lookup("x"), None);
        assert_eq!(b.lookup("y"), Some(y));
        // The cursor survived too: the next address comes after y, not x.
        let z = b.allocate("z").unwrap();
        assert_ne!(z, x);
        assert_eq!(u32::from(z), u32::from(y) + 1);
        assert!(!dir.path().join("br-test.addrs.tmp").exists());
    }

    #[test]
    fn cursor_moves_forward_and_wraps() {
        let dir = tempfile::tempdir().unwrap();
        let mut a =
            Allocator::open(dir.path(), "br-test", Ipv4Addr::new(10, 88, 0, 1), 29).unwrap();
        // /29: .1 gateway, .2-.6 usable.
        let got: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|o| a.allocate(o).unwrap())
            .collect();
        assert_eq!(got[2], Ipv4Addr::new(10, 88, 0, 4));
        a.release("a").unwrap(); // .2 free again, but not re-used at once
        assert_eq!(a.allocate("d").unwrap(), Ipv4Addr::new(10, 88, 0, 5));
        assert_eq!(a.allocate("e").unwrap(), Ipv4Addr::new(10, 88, 0, 6));
        // Wraps around, skipping the gateway, to the released .2.
        assert_eq!(a.allocate("f").unwrap(), Ipv4Addr::new(10, 88, 0, 2));
    }

    #[test]
    fn exhaustion_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut a =
            Allocator::open(dir.path(), "br-tiny", Ipv4Addr::new(10, 88, 0, 1), 30).unwrap();
        assert_eq!(a.allocate("a").unwrap(), Ipv4Addr::new(10, 88, 0, 2));
        let err = a.allocate("b").unwrap_err();
        assert!(matches!(err, Error::AllocExhausted { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("br-tiny") && msg.contains("10.88.0.0/30"),
            "{msg}"
        );
        // The failed attempt changed nothing.
        assert_eq!(a.lookup("b"), None);
        a.release("a").unwrap();
        assert_eq!(a.allocate("b").unwrap(), Ipv4Addr::new(10, 88, 0, 2));
    }

    #[test]
    fn corrupt_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = open(dir.path());
        a.allocate("a").unwrap();
        let path = a.path().to_path_buf();
        let good = fs::read_to_string(&path).unwrap();
        let cases = [
            String::new(),
            "garbage\n".to_string(),
            good.replace("cursor", "kursor"),
            good.replace("lease 10.88.0.2 a", "lease 10.88.0.999 a"),
            good.replace("lease 10.88.0.2 a", "lease 10.88.0.1 a"),
            format!("{good}lease 10.88.0.2 b\n"),
            format!("{good}lease 10.88.0.3 a\n"),
            format!("{good}junk\n"),
            good[..good.len() / 2].to_string(),
        ];
        for bad in cases {
            fs::write(&path, &bad).unwrap();
            let err = Allocator::open(dir.path(), "br-test", GW, 24).unwrap_err();
            assert!(matches!(err, Error::AllocCorrupt { .. }), "{bad:?}: {err}");
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
            // Never reset: the file is left as it was.
            assert_eq!(fs::read_to_string(&path).unwrap(), bad);
        }
    }

    #[test]
    fn file_of_another_subnet_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path()).allocate("a").unwrap();
        let err =
            Allocator::open(dir.path(), "br-test", Ipv4Addr::new(10, 89, 0, 1), 24).unwrap_err();
        assert!(matches!(err, Error::AllocMismatch { .. }), "{err}");
        assert!(err.to_string().contains("10.88.0.0/24"), "{err}");
    }

    #[test]
    fn bad_owners_and_release_of_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = open(dir.path());
        for o in ["", "a b", "a\nb", &"x".repeat(256)] {
            assert!(
                matches!(a.allocate(o), Err(Error::InvalidOwner { .. })),
                "{o:?}"
            );
        }
        a.release("nobody").unwrap();
        assert!(!a.path().exists(), "nothing to persist yet");
    }

    #[test]
    fn write_failure_leaves_state_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        let mut a = Allocator::open(&sub, "br-test", GW, 24).unwrap();
        // A file where the directory should be makes persisting fail.
        fs::write(&sub, b"").unwrap();
        let err = a.allocate("a").unwrap_err();
        assert!(matches!(err, Error::AllocIo { .. }), "{err}");
        assert_eq!(a.lookup("a"), None);
    }

    #[test]
    fn quarantined_address_waits_for_its_link_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let links = tempfile::tempdir().unwrap();
        // A /30 has two host addresses: the gateway and one more.
        let reopen = || {
            Allocator::open(dir.path(), "br-q", Ipv4Addr::new(10, 88, 0, 1), 30)
                .unwrap()
                .with_links_dir(links.path())
        };
        let mut a = reopen();
        let only = a.allocate("a").unwrap();
        assert_eq!(only, Ipv4Addr::new(10, 88, 0, 2));
        // The old veth still exists: the address is parked, not free.
        fs::write(links.path().join("bj-old"), b"").unwrap();
        a.release_after_link("a", "bj-old").unwrap();
        assert_eq!(a.lookup("a"), None);
        assert_eq!(a.quarantined().collect::<Vec<_>>(), vec![(only, "bj-old")]);
        let text = fs::read_to_string(a.path()).unwrap();
        assert!(text.starts_with("berth-addrs 2\n"), "{text}");
        assert!(text.contains("quarantine 10.88.0.2 bj-old\n"), "{text}");
        // A restart keeps it parked, and never hands it to anyone else.
        let mut a = reopen();
        assert!(matches!(a.allocate("b"), Err(Error::AllocExhausted { .. })));
        assert_eq!(
            a.quarantined().count(),
            1,
            "a failed allocate changes nothing"
        );
        // Once the link is gone the address is free again.
        fs::remove_file(links.path().join("bj-old")).unwrap();
        assert_eq!(a.allocate("b").unwrap(), only);
        assert_eq!(a.quarantined().count(), 0);
        let text = fs::read_to_string(a.path()).unwrap();
        assert!(text.starts_with("berth-addrs 1\n"), "{text}");
        assert_eq!(reopen().lookup("b"), Some(only));
    }

    #[test]
    fn a_link_parked_again_frees_what_its_earlier_namesake_held() {
        let dir = tempfile::tempdir().unwrap();
        let links = tempfile::tempdir().unwrap();
        let mut a = open(dir.path()).with_links_dir(links.path());
        let first = a.allocate("j").unwrap();
        fs::write(links.path().join("bj-same"), b"").unwrap();
        a.release_after_link("j", "bj-same").unwrap();
        // The same jail again: its veth of the same name could only be
        // created once the first was gone; it is still there when released.
        let second = a.allocate("j").unwrap();
        assert_ne!(second, first, "the parked address is not handed out");
        a.release_after_link("j", "bj-same").unwrap();
        assert_eq!(
            a.quarantined().collect::<Vec<_>>(),
            vec![(second, "bj-same")]
        );
        let text = fs::read_to_string(a.path()).unwrap();
        assert_eq!(text.matches("quarantine ").count(), 1, "{text}");
    }

    #[test]
    fn release_after_a_link_already_gone_frees_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let links = tempfile::tempdir().unwrap();
        let mut a = open(dir.path()).with_links_dir(links.path());
        a.allocate("a").unwrap();
        a.release_after_link("a", "bj-gone").unwrap();
        assert_eq!(a.quarantined().count(), 0);
        assert_eq!(a.lookup("a"), None);
        assert!(matches!(
            a.release_after_link("a", "bad name!"),
            Err(Error::InvalidName { .. })
        ));
        assert_eq!(fs::read_to_string(a.path()).unwrap().lines().count(), 3);
    }

    #[test]
    fn corrupt_quarantine_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let base = "berth-addrs 2\nsubnet 10.88.0.0/24 gateway 10.88.0.1\ncursor 10.88.0.2\n";
        for (bad, why) in [
            ("quarantine 10.88.1.2 bj-x\n", "not a host address"),
            ("quarantine x bj-x\n", "bad quarantine address"),
            ("quarantine 10.88.0.2 a/b\n", "bad link name"),
            (
                "lease 10.88.0.2 j\nquarantine 10.88.0.2 bj-x\n",
                "listed twice",
            ),
        ] {
            fs::write(dir.path().join("br-test.addrs"), format!("{base}{bad}")).unwrap();
            let err = Allocator::open(dir.path(), "br-test", GW, 24).unwrap_err();
            assert!(err.to_string().contains(why), "{bad:?}: {err}");
        }
    }
}
