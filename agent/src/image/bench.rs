//! Image delivery benchmark: time to pull and unpack a 10 MB and a 100 MB
//! image (random-data layers, so compression gains nothing) from a
//! `docker-registry` on loopback, with Berth's `ImageStore::pull` against
//! `skopeo copy docker://… oci:…` followed by `umoci raw unpack` of the same
//! image. Prints the median of a few runs of each and their ratio (goal:
//! Berth ≤ 1.1× the baseline).
//!
//! Berth's pull also fsyncs every blob and syncfs-es each unpacked layer
//! before making it visible (power cuts); skopeo and umoci do not, so a
//! baseline followed by `sync(1)` is printed too, for a like-for-like cost.
//!
//! Run as root (umoci keeps owners; Berth creates whiteouts):
//! `cargo run --release -p agent --example image-bench [-- RUNS]`.
//! Needs the Debian packages docker-registry, skopeo and umoci.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::image::{Digest, ImageStore, Platform, PullOptions, Reference};

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(3);
    for bin in [
        "/usr/bin/docker-registry",
        "/usr/bin/skopeo",
        "/usr/bin/umoci",
    ] {
        anyhow::ensure!(Path::new(bin).exists(), "precondition missing: {bin}");
    }
    let work = tempfile::tempdir()?;
    let reg = Registry::start(work.path())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    println!(
        "{:>8} {:>12} {:>12} {:>14} {:>8}",
        "size", "berth (s)", "skopeo+umoci", "+sync (s)", "ratio"
    );
    for mb in [10usize, 100] {
        let reference = rt.block_on(push_random_image(&reg.addr, &format!("bench/r{mb}"), mb))?;
        let mut berth = Vec::new();
        let mut base = Vec::new();
        let mut base_sync = Vec::new();
        for i in 0..runs {
            let dir = work.path().join(format!("berth-{mb}-{i}"));
            let store = ImageStore::open(&dir)?;
            let opts = PullOptions {
                platform: Platform::new("linux", "amd64", None),
                ..PullOptions::default()
            };
            sync();
            let t = Instant::now();
            let r = rt.block_on(store.pull(&reference, &opts))?;
            berth.push(t.elapsed());
            anyhow::ensure!(!r.layers.is_empty(), "no layers pulled");
            std::fs::remove_dir_all(&dir)?;

            for (with_sync, out) in [(false, &mut base), (true, &mut base_sync)] {
                let dir = work.path().join(format!("base-{mb}-{i}-{with_sync}"));
                std::fs::create_dir(&dir)?;
                sync();
                let t = Instant::now();
                run(Command::new("skopeo").args([
                    "copy",
                    "--quiet",
                    "--src-tls-verify=false",
                    &format!("docker://{reference}"),
                    &format!("oci:{}:bench", dir.join("oci").display()),
                ]))?;
                run(Command::new("umoci").args([
                    "raw",
                    "unpack",
                    "--image",
                    &format!("{}:bench", dir.join("oci").display()),
                    &dir.join("rootfs").display().to_string(),
                ]))?;
                if with_sync {
                    sync();
                }
                out.push(t.elapsed());
                std::fs::remove_dir_all(&dir)?;
            }
        }
        let (b, s, ss) = (
            median(&mut berth),
            median(&mut base),
            median(&mut base_sync),
        );
        println!(
            "{:>6}MB {:>12.3} {:>12.3} {:>14.3} {:>7.2}x",
            mb,
            b.as_secs_f64(),
            s.as_secs_f64(),
            ss.as_secs_f64(),
            b.as_secs_f64() / s.as_secs_f64()
        );
    }
    Ok(())
}

fn sync() {
    let _ = Command::new("sync").status();
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("registry").display()
            ),
        )?;
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let reg = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&reg.addr).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(reg)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Four gzip layers of 1 MB files of random data, `mb` MB in all.
async fn push_random_image(reg: &str, repo: &str, mb: usize) -> anyhow::Result<Reference> {
    let client = agent::http::Client::new(Default::default())?;
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut seed = 1;
    for l in 0..4 {
        let mut b = tar::Builder::new(Vec::new());
        // 1 MB files, spread over the four layers: `mb` MB in all.
        for f in (0..mb).filter(|f| f % 4 == l) {
            let data = noise(1 << 20, seed);
            seed += 1;
            let mut h = tar::Header::new_gnu();
            h.set_path(format!("layer{l}/file{f}"))?;
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, &data[..])?;
        }
        let t = b.into_inner()?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&t)?;
        let gz = gz.finish()?;
        let d = push_blob(&client, reg, repo, &gz).await?;
        diff_ids.push(format!("\"{}\"", Digest::of(&t)));
        descs.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{}}}"#,
            gz.len()
        ));
    }
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/bin/true"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let cd = push_blob(&client, reg, repo, config.as_bytes()).await?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        descs.join(",")
    );
    let md = Digest::of(manifest.as_bytes());
    let r = client
        .put(format!("http://{reg}/v2/{repo}/manifests/{md}"))
        .header_str("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .await?;
    anyhow::ensure!(r.status().as_u16() == 201, "manifest push: {}", r.status());
    Ok(Reference::parse(&format!("{reg}/{repo}@{md}"))?)
}

async fn push_blob(
    client: &agent::http::Client,
    reg: &str,
    repo: &str,
    data: &[u8],
) -> anyhow::Result<Digest> {
    let d = Digest::of(data);
    let r = client
        .post(format!("http://{reg}/v2/{repo}/blobs/uploads/"))
        .send()
        .await?;
    anyhow::ensure!(r.status().as_u16() == 202, "upload start: {}", r.status());
    let loc = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| anyhow::anyhow!("upload without location"))?
        .to_owned();
    let loc = if loc.starts_with('/') {
        format!("http://{reg}{loc}")
    } else {
        loc
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = client
        .put(format!("{loc}{sep}digest={d}"))
        .header_str("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await?;
    anyhow::ensure!(r.status().as_u16() == 201, "upload finish: {}", r.status());
    Ok(d)
}
