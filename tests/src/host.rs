//! Reads of host state that tests assert on: cgroups in every hierarchy,
//! network links, mounts and named network namespaces.

use std::path::{Path, PathBuf};

/// Mount points of every cgroup hierarchy (v1 controllers, named v1
/// hierarchies and the v2 mount), from /proc/self/mountinfo.
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in info.lines() {
        // ... mountpoint(5th) ... - fstype source options
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = post.split_whitespace().next().unwrap_or("");
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        if let Some(mp) = pre.split_whitespace().nth(4) {
            out.push(PathBuf::from(unescape(mp)));
        }
    }
    out
}

/// `<hierarchy>/<parent>` for every hierarchy where it exists.
pub fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    cgroup_mounts()
        .into_iter()
        .map(|m| m.join(parent))
        .filter(|p| p.is_dir())
        .collect()
}

/// Every cgroup directory strictly below `<hierarchy>/<parent>`, in every
/// hierarchy.
pub fn cgroups_below(parent: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in cgroup_dirs(parent) {
        walk_dirs(&dir, &mut out);
    }
    out
}

fn walk_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push(e.path());
            walk_dirs(&e.path(), out);
        }
    }
}

/// Pids in `<cgroup>/cgroup.procs`.
pub fn cgroup_pids(cgroup: &Path) -> Vec<i32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills (SIGKILL, by pid) every process in the cgroups at and below
/// `<hierarchy>/<parent>` and removes those cgroups, deepest first. Only for
/// a test's own unique parent.
pub fn kill_and_remove_cgroups(parent: &str) {
    let mut all = cgroups_below(parent);
    all.extend(cgroup_dirs(parent));
    for cg in &all {
        for pid in cgroup_pids(cg) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for cg in all {
        for _ in 0..50 {
            match std::fs::remove_dir(&cg) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }
}

/// Names of the network links in the host's network namespace.
pub fn link_names() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// True if `name` is a link in the host's network namespace.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The bridge berth puts a vendor's jails on, for the short vendor names the
/// tests use: `berth-<vendor>` when that fits in 15 bytes.
pub fn bridge_name(vendor: &str) -> String {
    format!("berth-{vendor}")
}

/// 32-bit FNV-1a, as berth uses for derived names.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The nftables table berth keeps for a (non-default) state dir:
/// `berth-` and the FNV-1a hash of its absolute path.
pub fn nft_table_name(state_dir: &Path) -> String {
    format!(
        "berth-{:08x}",
        fnv1a(state_dir.as_os_str().as_encoded_bytes())
    )
}

/// Whether table `inet NAME` exists (asks `nft`; `None` if nft is missing).
pub fn nft_table_exists(name: &str) -> Option<bool> {
    let out = std::process::Command::new("nft")
        .args(["list", "tables", "inet"])
        .output()
        .ok()?;
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == format!("table inet {name}")),
    )
}

/// Mount lines of /proc/self/mountinfo whose mount point or source mentions
/// `dir`.
pub fn mounts_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| unescape(l).contains(&needle))
        .map(str::to_string)
        .collect()
}

/// Mount points at or below `dir`.
pub fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|mp| PathBuf::from(unescape(mp)))
        .filter(|mp| mp.starts_with(dir))
        .collect()
}

/// Names of the network namespaces in /run/netns.
pub fn named_netns() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Undoes mountinfo's octal escapes (`\040` for space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Pids of processes whose command line contains `needle`.
pub fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
                let c: Vec<u8> = c
                    .into_iter()
                    .map(|b| if b == 0 { b' ' } else { b })
                    .collect();
                if String::from_utf8_lossy(&c).contains(needle) {
                    out.push(pid);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_handles_octal() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"\04"), r"\04");
    }

    #[test]
    fn sees_host_facts() {
        assert!(link_names().iter().any(|l| l == "lo"));
        assert!(!cgroup_mounts().is_empty(), "no cgroup hierarchy mounted");
        assert!(mounts_mentioning(Path::new("/proc"))
            .iter()
            .any(|l| l.contains(" /proc ")));
    }
}
