//! Measures Berth's full jail cycle against bubblewrap, and idle memory.
//!
//! `bench-cycle cycle N`: N interleaved rounds of (a) `jail::run` of
//! `/bin/true` with cgroups, a veth on a bridge and an overlay rootfs and
//! (b) `bwrap --unshare-all --ro-bind ROOT / --proc /proc --dev /dev
//! /bin/true`; prints the medians.
//!
//! `bench-cycle idle N [net]`: creates and starts N jails running `sleep`,
//! prints the MemAvailable delta per jail (signed: on a shared machine
//! other processes move it too), the summed Pss of their init processes
//! and the memory charged to their cgroups, then deletes them.
//!
//! Everything it creates (temp dir, cgroup parent, bridge) has a name with
//! its pid and is removed at the end, also after a failed round.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "../src/testing.rs"]
mod testing;

struct Cleanup {
    cgroup_parent: String,
    bridge: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        testing::remove_cgroup_parent(&self.cgroup_parent);
        testing::delete_link(&self.bridge);
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn pss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn spec(
    tmp: &Path,
    rootfs: &Path,
    name: &str,
    script: &str,
    cg: &str,
    net: Option<&jail::NetOptions>,
) -> anyhow::Result<jail::JailSpec> {
    let oci = testing::oci_spec(rootfs, script);
    let mut o = testing::options(name, "bench", &tmp.join("state"), cg);
    let upper = tmp.join(format!("{name}.upper"));
    let work = tmp.join(format!("{name}.work"));
    std::fs::create_dir_all(&upper)?;
    std::fs::create_dir_all(&work)?;
    o.rootfs = Some(jail::RootfsOptions::Overlay {
        lowers: vec![rootfs.to_owned()],
        upper,
        work,
    });
    o.network = net.cloned();
    o.console = jail::Console::Null;
    Ok(jail::JailSpec::from_oci(&oci, &o)?)
}

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let mode = a.get(1).map(String::as_str).unwrap_or("cycle");
    let n: usize = a.get(2).map(|s| s.parse()).transpose()?.unwrap_or(20);
    testing::require_root();
    let tmp = tempfile::Builder::new().prefix("berth-bench-").tempdir()?;
    let rootfs = tmp.path().join("rootfs");
    testing::busybox_rootfs(&rootfs, "bench");
    let pid = std::process::id();
    let guard = Cleanup {
        cgroup_parent: testing::unique("berth-bench"),
        bridge: format!("bb{}", pid % 10_000_000),
    };
    let net = jail::NetOptions {
        bridge: guard.bridge.clone(),
        gateway: std::net::Ipv4Addr::new(10, 217, (pid % 200) as u8 + 20, 1),
        prefix_len: 24,
        allocator_dir: tmp.path().join("alloc"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match mode {
        "cycle" => {
            let (mut berth, mut bwrap) = (Vec::new(), Vec::new());
            for i in 0..n {
                let s = spec(
                    tmp.path(),
                    &rootfs,
                    &format!("c{i}"),
                    "/bin/true",
                    &guard.cgroup_parent,
                    Some(&net),
                )?;
                let t = Instant::now();
                let r = if std::env::var_os("BENCH_PHASES").is_some() {
                    rt.block_on(async {
                        let mut j = jail::Jail::create(s).await?;
                        let c = t.elapsed();
                        j.start().await?;
                        let st = t.elapsed();
                        let r = j.wait().await?;
                        let w = t.elapsed();
                        j.delete().await?;
                        eprintln!(
                            "create={c:?} start={:?} wait={:?} delete={:?}",
                            st - c,
                            w - st,
                            t.elapsed() - w
                        );
                        anyhow::Ok(r)
                    })?
                } else {
                    rt.block_on(jail::run(s))?
                };
                berth.push(t.elapsed());
                anyhow::ensure!(r.code == 0, "jail exit {r:?}");
                let t = Instant::now();
                let st = Command::new("bwrap")
                    .args(["--unshare-all", "--ro-bind"])
                    .arg(&rootfs)
                    .args(["/", "--proc", "/proc", "--dev", "/dev", "/bin/true"])
                    .status()?;
                bwrap.push(t.elapsed());
                anyhow::ensure!(st.success(), "bwrap {st}");
            }
            println!(
                "rounds={n} berth_median_ms={:.2} bwrap_median_ms={:.2}",
                median(&mut berth).as_secs_f64() * 1e3,
                median(&mut bwrap).as_secs_f64() * 1e3
            );
        }
        "idle" => {
            let with_net = a.get(3).map(String::as_str) == Some("net");
            let before = mem_available_kib();
            let mut jails = Vec::new();
            let res = rt.block_on(async {
                for i in 0..n {
                    let s = spec(
                        tmp.path(),
                        &rootfs,
                        &format!("i{i}"),
                        "exec sleep 100000",
                        &guard.cgroup_parent,
                        with_net.then_some(&net),
                    )?;
                    let mut j = jail::Jail::create(s).await?;
                    j.start().await?;
                    jails.push(j);
                }
                let hold = std::env::var("BENCH_HOLD")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(2);
                tokio::time::sleep(Duration::from_secs(hold)).await;
                let mut cg = 0;
                for j in &jails {
                    cg += j.stats().await?.cgroup.memory_current;
                }
                anyhow::Ok(cg)
            });
            let after = mem_available_kib();
            let pss: u64 = jails.iter().filter_map(|j| j.pid()).map(pss_kib).sum();
            if let Ok(cg) = &res {
                println!(
                    "jails={n} net={with_net} memavailable_delta_per_jail_kib={} init_pss_total_kib={pss} init_pss_per_jail_kib={} cgroup_memory_per_jail_kib={}",
                    (before as i64 - after as i64) / n as i64,
                    pss / n as u64,
                    cg / 1024 / n as u64
                );
            }
            rt.block_on(async {
                for j in jails {
                    let _ = j.delete().await;
                }
            });
            res?;
        }
        other => anyhow::bail!("unknown mode {other}: cycle N | idle N [net]"),
    }
    drop(guard);
    drop(tmp);
    Ok(())
}
