//! Image delivery benchmark: time to pull and unpack images of 10 and 100
//! MB (and 750 MB with `--sizes 10,100,750`) of random-data layers, so
//! compression gains nothing, from a `docker-registry` on loopback. Berth's
//! `ImageStore::pull` against two plain pull-and-extract baselines of the
//! same image:
//! - `skopeo copy docker://… oci:…` followed by `umoci raw unpack`;
//! - `curl` of each layer blob piped into `tar -xz` (no digest checks at
//!   all: the floor of what a pull can cost).
//!
//! Berth's pull also hashes every byte, fsyncs every blob and syncfs-es
//! each unpacked layer before making it visible (power cuts); the baselines
//! do not, so each is also timed followed by `sync(1)`, for a like-for-like
//! cost. Berth's time is split into download (blob fetched, verified and
//! fsynced) and unpack (layer unpacked, checked against its diff id,
//! synced and renamed), from its progress reports. Prints the median of
//! RUNS runs of each, interleaved, and the ratios (goal: Berth ≤ 1.1× the
//! baseline).
//!
//! Run as root (umoci keeps owners; Berth creates whiteouts):
//! `cargo run --release -p agent --example image-bench [-- RUNS] [--sizes 10,100,750] [--dir DIR]`.
//! Needs the Debian packages docker-registry, skopeo, umoci and curl. The
//! work dir (default: a temp dir under $TMPDIR or /tmp; `--dir` for another
//! disk) holds the registry's copy of the image and one pulled copy at a
//! time: about three times the largest size, all removed at the end.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::image::{Digest, ImageStore, Phase, Platform, Progress, PullOptions, Reference};

struct Args {
    runs: usize,
    sizes: Vec<usize>,
    dir: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        runs: 3,
        sizes: vec![10, 100],
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--sizes" => {
                let v = it
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--sizes wants a list such as 10,100,750"))?;
                a.sizes = v
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| anyhow::anyhow!("--sizes {v}: {e}"))?;
                anyhow::ensure!(
                    a.sizes.iter().all(|&s| s >= 1),
                    "--sizes {v}: sizes are MB, at least 1"
                );
            }
            "--dir" => {
                a.dir = Some(
                    it.next()
                        .ok_or_else(|| anyhow::anyhow!("--dir wants a directory"))?
                        .into(),
                )
            }
            n => {
                a.runs = n
                    .parse()
                    .map_err(|e| anyhow::anyhow!("unexpected argument {n:?}: {e}"))?
            }
        }
    }
    anyhow::ensure!(a.runs >= 1, "RUNS must be at least 1");
    Ok(a)
}

/// Medians of one image size, in seconds.
struct Row {
    mb: usize,
    berth: f64,
    download: f64,
    unpack: f64,
    skopeo: f64,
    skopeo_sync: f64,
    curl: f64,
    curl_sync: f64,
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let runs = args.runs;
    for bin in [
        "/usr/bin/docker-registry",
        "/usr/bin/skopeo",
        "/usr/bin/umoci",
        "/usr/bin/curl",
    ] {
        anyhow::ensure!(Path::new(bin).exists(), "precondition missing: {bin}");
    }
    let work = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let reg = Registry::start(work.path())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let mut rows = Vec::new();
    for &mb in &args.sizes {
        let repo = format!("bench/r{mb}");
        let (reference, layers) = rt.block_on(push_random_image(&reg.addr, &repo, mb))?;
        let mut berth = Vec::new();
        let mut download = Vec::new();
        let mut unpack = Vec::new();
        let mut base = Vec::new();
        let mut base_sync = Vec::new();
        let mut curl = Vec::new();
        let mut curl_sync = Vec::new();
        for i in 0..runs {
            let dir = work.path().join(format!("berth-{mb}-{i}"));
            let store = ImageStore::open(&dir)?;
            let events: Arc<Mutex<Vec<(Instant, Phase)>>> = Arc::default();
            let ev = Arc::clone(&events);
            let opts = PullOptions {
                platform: Platform::new("linux", "amd64", None),
                progress: Some(Arc::new(move |p: &Progress| {
                    if matches!(p.phase, Phase::Unpack | Phase::Done)
                        && p.kind == agent::image::BlobKind::Layer
                    {
                        if let Ok(mut v) = ev.lock() {
                            v.push((Instant::now(), p.phase));
                        }
                    }
                })),
                ..PullOptions::default()
            };
            sync();
            let t = Instant::now();
            let r = rt.block_on(store.pull(&reference, &opts))?;
            let total = t.elapsed();
            berth.push(total);
            anyhow::ensure!(!r.layers.is_empty(), "no layers pulled");
            // Layers go one after the other: download, then unpack.
            let mut unpacking = Duration::ZERO;
            let mut since = None;
            for (at, phase) in events.lock().map(|v| v.clone()).unwrap_or_default() {
                match phase {
                    Phase::Unpack => since = Some(at),
                    Phase::Done => {
                        if let Some(s) = since.take() {
                            unpacking += at - s;
                        }
                    }
                    _ => {}
                }
            }
            unpack.push(unpacking);
            download.push(total.saturating_sub(unpacking));
            drop(store);
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
            for (with_sync, out) in [(false, &mut curl), (true, &mut curl_sync)] {
                let dir = work.path().join(format!("curl-{mb}-{i}-{with_sync}"));
                std::fs::create_dir(&dir)?;
                sync();
                let t = Instant::now();
                run(Command::new("curl").args([
                    "-fsS",
                    "-o",
                    "/dev/null",
                    "-H",
                    "Accept: application/vnd.oci.image.manifest.v1+json",
                    &format!(
                        "http://{}/v2/{repo}/manifests/{}",
                        reg.addr,
                        reference.digest()
                    ),
                ]))?;
                for l in &layers {
                    let url = format!("http://{}/v2/{repo}/blobs/{l}", reg.addr);
                    run(Command::new("sh")
                        .arg("-c")
                        .arg("curl -fsS \"$1\" | tar -xzf - -C \"$2\"")
                        .arg("sh")
                        .arg(&url)
                        .arg(&dir))?;
                }
                if with_sync {
                    sync();
                }
                out.push(t.elapsed());
                std::fs::remove_dir_all(&dir)?;
            }
        }
        let row = Row {
            mb,
            berth: median(&mut berth),
            download: median(&mut download),
            unpack: median(&mut unpack),
            skopeo: median(&mut base),
            skopeo_sync: median(&mut base_sync),
            curl: median(&mut curl),
            curl_sync: median(&mut curl_sync),
        };
        // The registry's copy goes before the next size is pushed.
        rt.block_on(delete_repo(&reg, &repo))?;
        rows.push(row);
    }
    print_rows(runs, &rows);
    Ok(())
}

fn print_rows(runs: usize, rows: &[Row]) {
    println!("medians of {runs} runs, seconds (+sync: followed by sync(1), as Berth syncs)");
    println!(
        "{:>6} {:>8} {:>9} {:>8} {:>13} {:>8} {:>9} {:>8}",
        "size", "berth", "download", "unpack", "skopeo+umoci", "+sync", "curl|tar", "+sync"
    );
    for r in rows {
        println!(
            "{:>4}MB {:>8.3} {:>9.3} {:>8.3} {:>13.3} {:>8.3} {:>9.3} {:>8.3}",
            r.mb, r.berth, r.download, r.unpack, r.skopeo, r.skopeo_sync, r.curl, r.curl_sync
        );
    }
    println!("ratios, berth / baseline (goal <= 1.10x):");
    println!(
        "{:>6} {:>13} {:>8} {:>9} {:>8}",
        "size", "skopeo+umoci", "+sync", "curl|tar", "+sync"
    );
    for r in rows {
        println!(
            "{:>4}MB {:>12.2}x {:>7.2}x {:>8.2}x {:>7.2}x",
            r.mb,
            r.berth / r.skopeo,
            r.berth / r.skopeo_sync,
            r.berth / r.curl,
            r.berth / r.curl_sync
        );
    }
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

fn median(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

/// Deletes the manifest and blobs of `repo` from the registry's storage
/// (the registry has no delete API enabled): files under its root dir.
async fn delete_repo(reg: &Registry, repo: &str) -> anyhow::Result<()> {
    let root = reg.root.join("docker/registry/v2");
    let links = root.join("repositories").join(repo).join("_layers/sha256");
    for e in std::fs::read_dir(&links)? {
        let hex = e?.file_name().to_string_lossy().into_owned();
        let blob = root.join("blobs/sha256").join(&hex[..2]).join(&hex);
        std::fs::remove_dir_all(&blob)?;
    }
    std::fs::remove_dir_all(root.join("repositories").join(repo))?;
    Ok(())
}

struct Registry {
    child: Child,
    addr: String,
    root: PathBuf,
}

impl Registry {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        let root = dir.join("registry");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                root.display()
            ),
        )?;
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let reg = Self { child, addr, root };
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

/// Four gzip layers of 1 MB files of random data, `mb` MB in all; returns
/// the reference and the layers' digests.
async fn push_random_image(
    reg: &str,
    repo: &str,
    mb: usize,
) -> anyhow::Result<(Reference, Vec<Digest>)> {
    let client = agent::http::Client::new(Default::default())?;
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut digests = Vec::new();
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
        digests.push(d.clone());
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
    Ok((Reference::parse(&format!("{reg}/{repo}@{md}"))?, digests))
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
