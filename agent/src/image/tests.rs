//! Pulls from a real registry (Debian's `docker-registry`) on loopback, with
//! images the tests push themselves through the Distribution API; a small
//! HTTP proxy in front of it tampers with bytes, demands bearer tokens or
//! records requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A `docker-registry serve` on 127.0.0.1, killed (by PID) on drop.
pub(crate) struct TestRegistry {
    child: Child,
    pub(crate) addr: String,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    pub(crate) fn start() -> Self {
        if !Path::new(REGISTRY_BIN).exists() {
            panic!("precondition missing: {REGISTRY_BIN} (apt-get install docker-registry)");
        }
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let reg = Self {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = TcpStream::connect(&reg.addr) {
                let _ = write!(
                    s,
                    "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    reg.addr
                );
                let mut head = String::new();
                let _ = BufReader::new(s).read_line(&mut head);
                if head.contains(" 200 ") {
                    return reg;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not come up on {}",
                reg.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------- building and pushing images ----------

pub(crate) fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h.set_cksum();
    h
}

/// A benign tar layer from (path, content) files, `dir/` directories,
/// `path -> target` symlinks.
pub(crate) fn layer_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        if let Some((link, target)) = path.split_once(" -> ") {
            let mut h = header(link, tar::EntryType::Symlink, 0o777, 0);
            h.set_link_name(target).unwrap();
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
        } else if path.ends_with('/') {
            b.append(&header(path, tar::EntryType::Directory, 0o755, 0), &[][..])
                .unwrap();
        } else {
            b.append(
                &header(path, tar::EntryType::Regular, 0o644, data.len() as u64),
                *data,
            )
            .unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// A raw tar entry, name and link written byte for byte (for `..`).
pub(crate) fn raw_entry(name: &str, kind: u8, link: &str, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    let old = h.as_old_mut();
    old.name = [0; 100];
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname = [0; 100];
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(data.len() as u64);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// An image pushed to a registry.
#[derive(Debug, Clone)]
pub(crate) struct Pushed {
    pub(crate) reference: Reference,
    pub(crate) layers: Vec<Digest>,
}

pub(crate) async fn push_blob(
    client: &crate::http::Client,
    reg: &str,
    repo: &str,
    data: &[u8],
) -> Digest {
    let d = Digest::of(data);
    let r = client
        .post(format!("http://{reg}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "start upload");
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
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
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        201,
        "finish upload: {:?}",
        r.text(4096).await
    );
    d
}

pub(crate) async fn push_manifest(
    client: &crate::http::Client,
    reg: &str,
    repo: &str,
    media_type: &str,
    body: &[u8],
) -> Digest {
    let d = Digest::of(body);
    let r = client
        .put(format!("http://{reg}/v2/{repo}/manifests/{d}"))
        .header_str("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        201,
        "manifest: {:?}",
        r.text(4096).await
    );
    d
}

/// Pushes an image of `layers` (uncompressed tars; each is gzipped), with
/// a config naming `arch`. Returns the image manifest's reference.
pub(crate) async fn push_image(
    reg: &str,
    repo: &str,
    layers: &[Vec<u8>],
    arch: (&str, Option<&str>),
) -> Pushed {
    push_image_as(reg, repo, layers, arch, false).await
}

/// [`push_image`] with Docker v2 schema 2 media types if `docker`.
pub(crate) async fn push_image_as(
    reg: &str,
    repo: &str,
    layers: &[Vec<u8>],
    arch: (&str, Option<&str>),
    docker: bool,
) -> Pushed {
    let (manifest_type, config_type, layer_type) = if docker {
        (
            manifest::DOCKER_MANIFEST,
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        )
    } else {
        (
            manifest::OCI_MANIFEST,
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    };
    let client = crate::http::Client::new(Default::default()).unwrap();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut digests = Vec::new();
    for l in layers {
        let gz = gzip(l);
        let d = push_blob(&client, reg, repo, &gz).await;
        diff_ids.push(format!("\"{}\"", Digest::of(l)));
        descs.push(format!(
            r#"{{"mediaType":"{layer_type}","digest":"{d}","size":{}}}"#,
            gz.len()
        ));
        digests.push(d);
    }
    let variant = arch
        .1
        .map(|v| format!(r#","variant":"{v}""#))
        .unwrap_or_default();
    let config = format!(
        r#"{{"architecture":"{}","os":"linux"{variant},"config":{{"Entrypoint":["/bin/app"],"Cmd":["--serve"],"Env":["PATH=/bin","MODE=test"],"WorkingDir":"/srv","User":"1000:1000","ExposedPorts":{{"8080/tcp":{{}}}}}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        arch.0,
        diff_ids.join(",")
    );
    let cd = push_blob(&client, reg, repo, config.as_bytes()).await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{manifest_type}","config":{{"mediaType":"{config_type}","digest":"{cd}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        descs.join(",")
    );
    let md = push_manifest(&client, reg, repo, manifest_type, manifest.as_bytes()).await;
    Pushed {
        reference: Reference::parse(&format!("{reg}/{repo}@{md}")).unwrap(),
        layers: digests,
    }
}

// ---------- a proxy in front of the registry ----------

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Forward as is.
    Pass,
    /// Flip one byte in the middle of responses whose path contains the
    /// given needle.
    Tamper,
    /// Demand `Authorization: Bearer s3cret`, served by `/token`.
    Bearer,
}

/// A one-request-per-connection HTTP proxy to the registry, on its own
/// thread, stopped on drop. Records request lines and Range headers.
pub(crate) struct Proxy {
    pub(crate) addr: String,
    pub(crate) seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub(crate) fn start(upstream: &str, mode: Mode, needle: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (up, needle, me) = (upstream.to_owned(), needle.to_owned(), addr.clone());
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let _ = serve_one(conn, &up, mode, &needle, &me, &seen2);
            }
        });
        Self {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one(
    mut conn: TcpStream,
    upstream: &str,
    mode: Mode,
    needle: &str,
    me: &str,
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        reader.read_line(&mut l)?;
        if l == "\r\n" || l.is_empty() {
            break;
        }
        headers.push(l.trim_end().to_owned());
    }
    let path = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
    let range = headers
        .iter()
        .find(|h| h.to_ascii_lowercase().starts_with("range:"));
    seen.lock().unwrap().push(format!(
        "{}{}",
        request_line.trim_end(),
        range.map(|r| format!(" [{r}]")).unwrap_or_default()
    ));
    let reply = |conn: &mut TcpStream, status: &str, extra: &str, body: &[u8]| {
        write!(
            conn,
            "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        conn.write_all(body)?;
        conn.flush()?;
        conn.shutdown(Shutdown::Both)
    };
    if mode == Mode::Bearer {
        if path.starts_with("/token") {
            let ok = path.contains("scope=repository%3A") && path.contains("service=berth-test");
            let body: &[u8] = if ok {
                br#"{"token":"s3cret"}"#
            } else {
                br#"{"error":"bad query"}"#
            };
            return reply(
                &mut conn,
                if ok { "200 OK" } else { "400 Bad Request" },
                "",
                body,
            );
        }
        if !headers
            .iter()
            .any(|h| h == "authorization: Bearer s3cret" || h == "Authorization: Bearer s3cret")
        {
            let challenge = format!(
                "WWW-Authenticate: Bearer realm=\"http://{me}/token\",service=\"berth-test\",scope=\"repository:x:pull\"\r\n"
            );
            return reply(
                &mut conn,
                "401 Unauthorized",
                &challenge,
                br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
            );
        }
    }
    let mut up = TcpStream::connect(upstream)?;
    write!(
        up,
        "GET {path} HTTP/1.1\r\nHost: {upstream}\r\nConnection: close\r\n"
    )?;
    for h in &headers {
        let lower = h.to_ascii_lowercase();
        if lower.starts_with("accept:") || lower.starts_with("range:") {
            write!(up, "{h}\r\n")?;
        }
    }
    write!(up, "\r\n")?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(resp.len(), |i| i + 4);
    let (head, body) = resp.split_at_mut(split);
    if let Some(status) = head.split(|b| *b == b'\r').next() {
        seen.lock().unwrap().push(format!(
            "-> {} ({} body bytes)",
            String::from_utf8_lossy(status),
            body.len()
        ));
    }
    if mode == Mode::Tamper && path.contains(needle) && !body.is_empty() {
        let i = body.len() / 2;
        body[i] ^= 0x01;
    }
    conn.write_all(head)?;
    conn.write_all(body)?;
    conn.flush()?;
    conn.shutdown(Shutdown::Both)
}

// ---------- helpers ----------

fn collect_progress() -> (ProgressFn, Arc<Mutex<Vec<Progress>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e2 = events.clone();
    (
        Arc::new(move |p: &Progress| e2.lock().unwrap().push(p.clone())),
        events,
    )
}

/// Incompressible bytes (xorshift64).
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
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

fn amd64() -> Platform {
    Platform::new("linux", "amd64", None)
}

fn opts() -> PullOptions {
    PullOptions {
        platform: amd64(),
        ..PullOptions::default()
    }
}

fn files_under(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            out.push(e.path());
        }
    }
    out
}

/// The store holds no image record, no layer and no blob of `layers`, and
/// no leftover in tmp/.
fn assert_nothing_landed(store: &ImageStore, layers: &[Digest]) {
    let d = store.dir();
    assert!(
        files_under(&d.join("images/sha256")).is_empty(),
        "an image record landed"
    );
    assert!(
        files_under(&d.join("layers/sha256")).is_empty(),
        "a layer landed"
    );
    assert!(
        files_under(&d.join("tmp")).is_empty(),
        "leftovers in tmp: {:?}",
        files_under(&d.join("tmp"))
    );
    for l in layers {
        assert!(
            !d.join("blobs/sha256").join(l.hex()).exists(),
            "blob {l} landed"
        );
    }
}

fn base_layer() -> Vec<u8> {
    layer_tar(&[
        ("bin/", b""),
        ("bin/app", b"#!/bin/sh\necho app\n"),
        ("etc/", b""),
        ("etc/motd", b"hello\n"),
        ("etc/app.conf", b"v1\n"),
        ("etc/alias -> /etc/motd", b""),
        ("var/lib/data/", b""),
        ("var/lib/data/old", b"old\n"),
    ])
}

// ---------- the tests ----------

#[test]
fn pull_verify_unpack_share_and_gc() {
    let reg = TestRegistry::start();
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    rt.block_on(async {
        let top = layer_tar(&[
            ("etc/app.conf", b"v2\n"),
            ("etc/.wh.motd", b""),
            ("srv/", b""),
        ]);
        let img1 = push_image(
            &reg.addr,
            "vendor/app",
            &[base_layer(), top.clone()],
            ("amd64", None),
        )
        .await;
        let other_top = layer_tar(&[("srv/other", b"other\n")]);
        let img2 = push_image(
            &reg.addr,
            "vendor/other",
            &[base_layer(), other_top],
            ("amd64", None),
        )
        .await;
        assert_eq!(img1.layers[0], img2.layers[0], "the base layer is shared");

        let (progress, events) = collect_progress();
        let o = PullOptions {
            progress: Some(progress),
            ..opts()
        };
        let r1 = store.pull(&img1.reference, &o).await.unwrap();
        // Top first, as overlayfs lowerdir= wants them.
        assert_eq!(
            r1.layers,
            vec![
                store.layer_path(&img1.layers[1]),
                store.layer_path(&img1.layers[0])
            ]
        );
        assert_eq!(r1.digest, *img1.reference.digest());
        assert_eq!(r1.config.entrypoint, ["/bin/app"]);
        assert_eq!(r1.config.cmd, ["--serve"]);
        assert_eq!(r1.config.env, ["PATH=/bin", "MODE=test"]);
        assert_eq!(r1.config.working_dir, "/srv");
        assert_eq!(r1.config.user, "1000:1000");
        assert_eq!(r1.config.exposed_ports, ["8080/tcp"]);
        let base = &r1.layers[1];
        assert_eq!(
            std::fs::read(base.join("bin/app")).unwrap(),
            b"#!/bin/sh\necho app\n"
        );
        assert_eq!(
            std::fs::read_link(base.join("etc/alias")).unwrap(),
            Path::new("/etc/motd")
        );
        let wh = std::fs::symlink_metadata(r1.layers[0].join("etc/motd")).unwrap();
        assert!(
            wh.file_type().is_char_device() && wh.rdev() == 0,
            "whiteout as 0:0 char device"
        );
        assert_eq!(
            std::fs::read(r1.layers[0].join("etc/app.conf")).unwrap(),
            b"v2\n"
        );
        {
            let ev = events.lock().unwrap();
            let unpacked = ev.iter().filter(|p| p.phase == Phase::Unpack).count();
            assert_eq!(unpacked, 2, "{ev:?}");
            let last_download = ev
                .iter()
                .rfind(|p| p.phase == Phase::Download && p.digest == img1.layers[0])
                .unwrap();
            assert_eq!(last_download.done, last_download.total);
        }
        // Layer blobs are dropped once unpacked; manifest and config stay.
        for l in &img1.layers {
            assert!(!store.dir().join("blobs/sha256").join(l.hex()).exists());
        }
        assert!(files_under(&store.dir().join("tmp")).is_empty());

        // Same image again: nothing fetched or unpacked, same directories.
        let ino = std::fs::metadata(base.join("bin/app")).unwrap().ino();
        events.lock().unwrap().clear();
        let again = store.pull(&img1.reference, &o).await.unwrap();
        assert_eq!(again, r1);
        assert!(
            events.lock().unwrap().is_empty(),
            "a complete image is not fetched again"
        );
        assert_eq!(store.rootfs(img1.reference.digest()).await.unwrap(), r1);

        // Another image with the same base: the base is not unpacked again.
        let r2 = store.pull(&img2.reference, &o).await.unwrap();
        assert_eq!(r2.layers[1], r1.layers[1]);
        assert_eq!(std::fs::metadata(base.join("bin/app")).unwrap().ino(), ino);
        {
            let ev = events.lock().unwrap();
            let cached: Vec<_> = ev
                .iter()
                .filter(|p| p.phase == Phase::Cached)
                .map(|p| &p.digest)
                .collect();
            assert_eq!(cached, [&img1.layers[0]]);
            assert_eq!(ev.iter().filter(|p| p.phase == Phase::Unpack).count(), 1);
        }

        // GC keeping img2: img1's own layer goes, the shared base stays.
        let rep = store.gc(&[img2.reference.digest().clone()]).await.unwrap();
        assert_eq!((rep.images, rep.layers), (1, 1), "{rep:?}");
        assert!(!r1.layers[0].exists());
        assert!(r2.layers.iter().all(|l| l.is_dir()));
        let err = store.rootfs(img1.reference.digest()).await.unwrap_err();
        assert!(matches!(err, ImageError::NotPulled { .. }), "{err}");
        assert_eq!(
            store.images().await.unwrap(),
            [img2.reference.digest().clone()]
        );
        let rep = store.gc(&[]).await.unwrap();
        assert_eq!((rep.images, rep.layers), (1, 2), "{rep:?}");
        assert!(files_under(&store.dir().join("blobs/sha256")).is_empty());
        assert!(files_under(&store.dir().join("layers/sha256")).is_empty());
    });
}

#[test]
fn index_picks_the_gateway_platform() {
    let reg = TestRegistry::start();
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path()).unwrap();
    rt.block_on(async {
        let x86 = push_image(&reg.addr, "vendor/multi", &[layer_tar(&[("arch", b"amd64")])], ("amd64", None)).await;
        let arm = push_image(&reg.addr, "vendor/multi", &[layer_tar(&[("arch", b"armv7")])], ("arm", Some("v7"))).await;
        let client = crate::http::Client::new(Default::default()).unwrap();
        let entry = |d: &Digest, arch: &str, variant: &str| {
            format!(r#"{{"mediaType":"{}","digest":"{d}","size":SIZE_{},"platform":{{"os":"linux","architecture":"{arch}"{variant}}}}}"#, manifest::OCI_MANIFEST, d.hex())
        };
        let mut index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{},{}]}}"#,
            manifest::OCI_INDEX,
            entry(x86.reference.digest(), "amd64", ""),
            entry(arm.reference.digest(), "arm", r#","variant":"v7""#)
        );
        for m in [&x86, &arm] {
            let d = m.reference.digest();
            let body = client
                .get(format!("http://{}/v2/vendor/multi/manifests/{d}", reg.addr))
                .header_str("accept", manifest::OCI_MANIFEST)
                .send()
                .await
                .unwrap()
                .bytes_limited(1 << 20)
                .await
                .unwrap()
                .unwrap();
            index = index.replace(&format!("SIZE_{}", d.hex()), &body.len().to_string());
        }
        let idx = push_manifest(&client, &reg.addr, "vendor/multi", manifest::OCI_INDEX, index.as_bytes()).await;
        let r: Reference = format!("{}/vendor/multi@{idx}", reg.addr).parse().unwrap();

        let arm_opts = PullOptions {
            platform: Platform::new("linux", "arm", Some("v7")),
            ..PullOptions::default()
        };
        let got = store.pull(&r, &arm_opts).await.unwrap();
        assert_eq!(got.digest, idx);
        assert_eq!(got.manifest, *arm.reference.digest());
        assert_eq!(std::fs::read(got.layers[0].join("arch")).unwrap(), b"armv7");

        let rv = PullOptions {
            platform: Platform::new("linux", "riscv64", None),
            ..PullOptions::default()
        };
        let other_store = ImageStore::open(tmp.path().join("other")).unwrap();
        let err = other_store.pull(&r, &rv).await.unwrap_err().to_string();
        assert!(err.contains("no manifest for linux/riscv64") && err.contains("linux/arm/v7"), "{err}");
    });
}

#[test]
fn tampered_layer_blob_is_refused_and_nothing_lands() {
    let reg = TestRegistry::start();
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path()).unwrap();
    rt.block_on(async {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let img = push_image(&reg.addr, "vendor/tamper", &[layer_tar(&[("big", &big)])], ("amd64", None)).await;
        let proxy = Proxy::start(&reg.addr, Mode::Tamper, &img.layers[0].to_string());
        let via: Reference = format!("{}/vendor/tamper@{}", proxy.addr, img.reference.digest()).parse().unwrap();
        let err = store.pull(&via, &opts()).await.unwrap_err();
        match &err {
            ImageError::DigestMismatch { expected, what, .. } => {
                assert_eq!(expected, &img.layers[0]);
                assert!(what.contains("/blobs/"), "{what}");
            }
            other => panic!("expected a digest mismatch, got {other}"),
        }
        assert!(err.to_string().contains("discarded"), "{err}");
        assert_nothing_landed(&store, &img.layers);

        // A tampered manifest: the reference's digest does not match. (A
        // fresh store: the first one holds the verified manifest by now.)
        let store = ImageStore::open(tmp.path().join("fresh")).unwrap();
        let proxy = Proxy::start(&reg.addr, Mode::Tamper, "/manifests/");
        let via: Reference = format!("{}/vendor/tamper@{}", proxy.addr, img.reference.digest()).parse().unwrap();
        let err = store.pull(&via, &opts()).await.unwrap_err();
        assert!(
            matches!(&err, ImageError::DigestMismatch { expected, .. } if expected == img.reference.digest()),
            "{err}"
        );
        assert_nothing_landed(&store, &img.layers);
        assert!(files_under(&store.dir().join("blobs/sha256")).is_empty());

        // Straight from the registry, the same image pulls fine.
        store.pull(&img.reference, &opts()).await.unwrap();
    });
}

#[test]
fn malicious_layers_are_refused_with_entry_and_digest() {
    let reg = TestRegistry::start();
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let victim = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    rt.block_on(async {
        let mut traversal = raw_entry("../../../../../../../../tmp/berth-escape", b'0', "", b"x");
        traversal.extend_from_slice(&[0u8; 1024]);
        let mut symlink = raw_entry("x", b'2', &victim.path().display().to_string(), b"");
        symlink.extend(raw_entry("x/planted", b'0', "", b"pwned"));
        symlink.extend_from_slice(&[0u8; 1024]);
        let cases = [
            (
                traversal,
                "../../../../../../../../tmp/berth-escape",
                "`..`",
            ),
            (symlink, "x/planted", "is a symlink"),
        ];
        for (i, (layer, entry, why)) in cases.into_iter().enumerate() {
            let img = push_image(
                &reg.addr,
                &format!("vendor/evil{i}"),
                &[base_layer(), layer],
                ("amd64", None),
            )
            .await;
            let err = store.pull(&img.reference, &opts()).await.unwrap_err();
            match &err {
                ImageError::Layer {
                    layer,
                    entry: e,
                    reason,
                } => {
                    assert_eq!(layer, &img.layers[1]);
                    assert_eq!(e, entry);
                    assert!(reason.contains(why), "{reason}");
                }
                other => panic!("expected a refused layer, got {other}"),
            }
            let msg = err.to_string();
            assert!(
                msg.contains(&img.layers[1].to_string()) && msg.contains(entry),
                "{msg}"
            );
            // The refused layer is not in the store, nor is a record.
            assert!(!store.layer_path(&img.layers[1]).exists());
            assert!(files_under(&store.dir().join("images/sha256")).is_empty());
            assert!(files_under(&store.dir().join("tmp")).is_empty());
        }
        assert!(!Path::new("/tmp/berth-escape").exists());
        assert!(!victim.path().join("planted").exists());
    });
}

#[test]
fn size_cap_refuses_before_fetching_layers() {
    let reg = TestRegistry::start();
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path()).unwrap();
    rt.block_on(async {
        let data = noise(200_000, 1);
        let img = push_image(
            &reg.addr,
            "vendor/big",
            &[layer_tar(&[("blob", &data)])],
            ("amd64", None),
        )
        .await;
        let proxy = Proxy::start(&reg.addr, Mode::Pass, "");
        let via: Reference = format!("{}/vendor/big@{}", proxy.addr, img.reference.digest())
            .parse()
            .unwrap();
        let o = PullOptions {
            max_bytes: 100_000,
            ..opts()
        };
        let err = store.pull(&via, &o).await.unwrap_err();
        assert!(
            matches!(err, ImageError::LayersTooLarge { limit: 100_000, .. }),
            "{err}"
        );
        let seen = proxy.seen.lock().unwrap().clone();
        assert!(
            !seen.iter().any(|l| l.contains(&img.layers[0].to_string())),
            "{seen:?}"
        );
        assert_nothing_landed(&store, &img.layers);
    });
}

#[test]
fn interrupted_download_resumes_with_a_range_request() {
    let reg = TestRegistry::start();
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path()).unwrap();
    rt.block_on(async {
        let data = noise(3_000_000, 2);
        let layer = layer_tar(&[("data", &data)]);
        let img = push_image(&reg.addr, "vendor/resume", &[layer], ("amd64", None)).await;
        // What a power cut mid-download leaves: part of the blob in tmp/.
        let gz = crate::http::Client::new(Default::default())
            .unwrap()
            .get(format!(
                "http://{}/v2/vendor/resume/blobs/{}",
                reg.addr, img.layers[0]
            ))
            .send()
            .await
            .unwrap()
            .bytes_limited(64 << 20)
            .await
            .unwrap()
            .unwrap();
        let half = gz.len() / 2;
        std::fs::write(
            store
                .dir()
                .join(format!("tmp/{}.partial", img.layers[0].hex())),
            &gz[..half],
        )
        .unwrap();
        let proxy = Proxy::start(&reg.addr, Mode::Pass, "");
        let via: Reference = format!("{}/vendor/resume@{}", proxy.addr, img.reference.digest())
            .parse()
            .unwrap();
        let r = store.pull(&via, &opts()).await.unwrap();
        assert_eq!(std::fs::read(r.layers[0].join("data")).unwrap(), data);
        let seen = proxy.seen.lock().unwrap().clone();
        let blob_reqs: Vec<_> = seen
            .iter()
            .filter(|l| l.contains(&img.layers[0].to_string()))
            .collect();
        assert_eq!(blob_reqs.len(), 1, "{seen:?}");
        assert!(blob_reqs[0].contains(&format!("bytes={half}-")), "{seen:?}");
        assert!(files_under(&store.dir().join("tmp")).is_empty());

        // A partial file of garbage is caught by the digest and discarded.
        let store2 = ImageStore::open(tmp.path().join("second")).unwrap();
        std::fs::write(
            store2
                .dir()
                .join(format!("tmp/{}.partial", img.layers[0].hex())),
            vec![0u8; half],
        )
        .unwrap();
        let err = store2.pull(&via, &opts()).await.unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        assert_nothing_landed(&store2, &img.layers);
        // ...and the retry then succeeds from scratch.
        store2.pull(&via, &opts()).await.unwrap();
    });
}

#[test]
fn bearer_token_flow() {
    let reg = TestRegistry::start();
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path()).unwrap();
    rt.block_on(async {
        let img = push_image(
            &reg.addr,
            "vendor/private",
            &[base_layer()],
            ("amd64", None),
        )
        .await;
        let proxy = Proxy::start(&reg.addr, Mode::Bearer, "");
        let via: Reference = format!("{}/vendor/private@{}", proxy.addr, img.reference.digest())
            .parse()
            .unwrap();
        let r = store.pull(&via, &opts()).await.unwrap();
        assert!(r.layers[0].join("bin/app").exists());
        let seen = proxy.seen.lock().unwrap().clone();
        assert!(
            seen.iter().any(|l| l.starts_with("GET /token?")),
            "{seen:?}"
        );
    });
}

#[test]
fn plain_http_is_refused_for_hosts_not_listed() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path()).unwrap();
    // A plain-HTTP server on loopback, reached as if it were remote: the
    // client must speak TLS to it and fail, never fall back to HTTP.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicBool::new(false));
    let s2 = served.clone();
    let t = std::thread::spawn(move || {
        if let Ok((mut c, _)) = listener.accept() {
            let mut buf = [0u8; 3];
            let _ = c.read_exact(&mut buf);
            // A TLS ClientHello starts with 0x16 0x03; HTTP with "GET".
            s2.store(&buf == b"GET", Ordering::SeqCst);
        }
    });
    let r: Reference = format!("127.0.0.1:{port}/vendor/app@sha256:{}", "a".repeat(64))
        .parse()
        .unwrap();
    let o = PullOptions {
        insecure_http_hosts: vec![],
        ..opts()
    };
    let err = rt.block_on(store.pull(&r, &o)).unwrap_err();
    t.join().unwrap();
    assert!(matches!(err, ImageError::Http { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("https://127.0.0.1:{port}/v2/")),
        "{err}"
    );
    assert!(!served.load(Ordering::SeqCst), "plain HTTP was sent");
}

/// Overlay of the pulled layers: whiteouts hide lower files, opaque
/// directories hide lower contents, upper layers win.
#[test]
#[ignore = "privileged: needs root"]
fn overlay_of_pulled_layers_shows_the_image_view() {
    if !nix::unistd::geteuid().is_root() {
        panic!("precondition missing: root (overlayfs mount, trusted.* xattrs)");
    }
    let reg = TestRegistry::start();
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let r = rt.block_on(async {
        let top = layer_tar(&[
            ("etc/app.conf", b"v2\n"),
            ("etc/.wh.motd", b""),
            ("var/lib/data/", b""),
            ("var/lib/data/.wh..wh..opq", b""),
            ("var/lib/data/new", b"new\n"),
        ]);
        let img = push_image(
            &reg.addr,
            "vendor/overlay",
            &[base_layer(), top],
            ("amd64", None),
        )
        .await;
        store.pull(&img.reference, &opts()).await.unwrap()
    });
    let (upper, work, merged) = (
        tmp.path().join("upper"),
        tmp.path().join("work"),
        tmp.path().join("merged"),
    );
    for d in [&upper, &work, &merged] {
        std::fs::create_dir(d).unwrap();
    }
    let lower: Vec<String> = r.layers.iter().map(|p| p.display().to_string()).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &data])
        .arg(&merged)
        .status()
        .unwrap_or_else(|e| panic!("precondition missing: mount(8) ({e})"));
    assert!(
        st.success(),
        "precondition missing: overlayfs mount of {data}"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(merged.clone());
    assert_eq!(std::fs::read(merged.join("etc/app.conf")).unwrap(), b"v2\n");
    assert!(
        !merged.join("etc/motd").exists(),
        "the whiteout hides the lower file"
    );
    assert!(std::fs::symlink_metadata(merged.join("etc/alias"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(
        !merged.join("var/lib/data/old").exists(),
        "the opaque dir hides lower content"
    );
    assert_eq!(
        std::fs::read(merged.join("var/lib/data/new")).unwrap(),
        b"new\n"
    );
    assert!(merged.join("bin/app").exists());
}

#[test]
fn concurrent_pulls_of_one_image_share_the_work() {
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let img = runtime().block_on(push_image(
        &reg.addr,
        "vendor/concurrent",
        &[base_layer(), layer_tar(&[("big", &noise(2_000_000, 9))])],
        ("amd64", None),
    ));
    // Two pullers with their own store handles and runtimes, as two
    // processes would be: the blob lock and the rename make them agree.
    let pulls: Vec<_> = (0..2)
        .map(|_| {
            let (dir, r) = (dir.clone(), img.reference.clone());
            std::thread::spawn(move || {
                let store = ImageStore::open(dir).unwrap();
                runtime().block_on(store.pull(&r, &opts()))
            })
        })
        .collect();
    let results: Vec<_> = pulls
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    assert_eq!(results[0], results[1]);
    let store = ImageStore::open(&dir).unwrap();
    assert_eq!(files_under(&dir.join("layers/sha256")).len(), 2);
    assert!(
        files_under(&dir.join("tmp")).is_empty(),
        "{:?}",
        files_under(&dir.join("tmp"))
    );
    let data = std::fs::read(results[0].layers[0].join("big")).unwrap();
    assert_eq!(data, noise(2_000_000, 9));
    // GC with the image kept removes nothing it needs.
    let rep = runtime()
        .block_on(store.gc(&[img.reference.digest().clone()]))
        .unwrap();
    assert_eq!((rep.images, rep.layers), (0, 0), "{rep:?}");
    assert!(results[0].layers.iter().all(|l| l.is_dir()));
}

#[test]
fn docker_schema2_manifest_list_and_manifest() {
    let reg = TestRegistry::start();
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path()).unwrap();
    rt.block_on(async {
        let img = push_image_as(
            &reg.addr,
            "vendor/docker",
            &[base_layer(), layer_tar(&[("etc/app.conf", b"docker\n")])],
            ("amd64", None),
            true,
        )
        .await;
        let r = store.pull(&img.reference, &opts()).await.unwrap();
        assert_eq!(std::fs::read(r.layers[0].join("etc/app.conf")).unwrap(), b"docker\n");
        assert_eq!(r.config.entrypoint, ["/bin/app"]);

        // A Docker manifest list in front of it.
        let client = crate::http::Client::new(Default::default()).unwrap();
        let body = client
            .get(format!("http://{}/v2/vendor/docker/manifests/{}", reg.addr, img.reference.digest()))
            .header_str("accept", manifest::DOCKER_MANIFEST)
            .send()
            .await
            .unwrap()
            .bytes_limited(1 << 20)
            .await
            .unwrap()
            .unwrap();
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            manifest::DOCKER_LIST,
            manifest::DOCKER_MANIFEST,
            img.reference.digest(),
            body.len()
        );
        let ld = push_manifest(&client, &reg.addr, "vendor/docker", manifest::DOCKER_LIST, list.as_bytes()).await;
        let via_list: Reference = format!("{}/vendor/docker@{ld}", reg.addr).parse().unwrap();
        let r2 = store.pull(&via_list, &opts()).await.unwrap();
        assert_eq!(r2.manifest, *img.reference.digest());
        assert_eq!(r2.layers, r.layers);
    });
}
