//! The on-disk image store and the pull procedure.
//!
//! ```text
//! <dir>/lock                       flock: shared by pulls and reads, exclusive for gc
//! <dir>/tmp/                       partial downloads (<hex>.partial, resumed with
//!                                  HTTP Range) and layers being unpacked
//! <dir>/blobs/sha256/<hex>         verified blobs: manifests, configs, and layer
//!                                  blobs until unpacked (or kept, if asked)
//! <dir>/layers/sha256/<hex>/       unpacked layers, keyed by the layer blob digest;
//!                                  shared by every image that has that layer
//! <dir>/images/sha256/<hex>.json   one record per pulled image (the reference digest)
//! ```
//!
//! Nothing appears under `blobs/`, `layers/` or `images/` except by
//! `rename(2)` of something complete, verified and fsynced (layers: the
//! whole filesystem is `syncfs`ed before the rename), followed by an fsync
//! of the directory (Berth's rule for power cuts; see DESIGN.md). Leftovers
//! of a crash live in `tmp/` and are removed by [`ImageStore::gc`].
//! Blocking work (file writes, hashing, unpacking, fsync) runs on tokio's
//! blocking pool, never on a runtime worker.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{FlockOperation, Mode, OFlags};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::digest::{Digest, Hasher};
use super::error::{ImageError, Result};
use super::manifest::{self, ConfigBlob, Descriptor, Fetched, Manifest};
use super::reference::Reference;
use super::registry::{hash_prefix, Registry};
use super::unpack::{unpack_layer, UnpackLimits};
use super::{BlobKind, ImageRootfs, Phase, Progress, PullOptions, MAX_DOCUMENT_BYTES};

/// Write buffer of a blob download: one blocking write and hash per MiB,
/// overlapped with receiving the next.
const WRITE_CHUNK: usize = 1 << 20;
/// Progress is reported at most every this many bytes per blob.
const PROGRESS_STEP: u64 = 256 << 10;
const RECORD_VERSION: u32 = 1;
const MAX_RECORD_BYTES: u64 = 1 << 20;

static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}.{}.{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

/// A content-addressed store of images and unpacked layers.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

/// What [`ImageStore::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Image records dropped.
    pub images: usize,
    /// Blobs deleted.
    pub blobs: usize,
    /// Unpacked layers deleted.
    pub layers: usize,
    /// Leftovers of interrupted pulls deleted.
    pub tmp: usize,
}

/// The persisted record of a pulled image.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageRecord {
    version: u32,
    reference: String,
    manifest: Digest,
    config: Digest,
    /// Bottom first, as in the manifest.
    layers: Vec<Digest>,
}

impl ImageStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let s = Self { dir: dir.into() };
        for d in [
            s.dir.clone(),
            s.tmp(),
            s.dir.join("blobs/sha256"),
            s.dir.join("layers/sha256"),
            s.dir.join("images/sha256"),
        ] {
            fs::create_dir_all(&d).map_err(|e| ImageError::io("create store directory", &d, e))?;
        }
        Ok(s)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }
    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }
    /// Where the layer with blob digest `d` is (or would be) unpacked.
    pub fn layer_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("layers/sha256").join(d.hex())
    }
    fn record_path(&self, d: &Digest) -> PathBuf {
        self.dir
            .join("images/sha256")
            .join(format!("{}.json", d.hex()))
    }

    async fn lock(&self, op: FlockOperation) -> Result<File> {
        let path = self.dir.join("lock");
        blocking("lock the image store", move || {
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| ImageError::io("open", &path, e))?;
            rustix::fs::flock(&f, op).map_err(|e| ImageError::io("flock", &path, e.into()))?;
            Ok(f)
        })
        .await
    }

    /// Pulls `reference` (unless already complete in the store) and returns
    /// its layers and config.
    pub async fn pull(&self, reference: &Reference, opts: &PullOptions) -> Result<ImageRootfs> {
        let _lock = self.lock(FlockOperation::LockShared).await?;
        if let Ok(r) = self.rootfs_unlocked(reference.digest()).await {
            for l in &r.layers {
                tracing::debug!(layer = %l.display(), "layer already unpacked");
            }
            return Ok(r);
        }
        let mut reg: Option<Registry> = None;
        let top = reference.digest().clone();

        let (bytes, ct) = self.document(&mut reg, reference, opts, &top, None).await?;
        let (manifest_digest, manifest) = match manifest::parse_fetched(
            &top,
            ct.as_deref(),
            &bytes,
        )? {
            Fetched::Manifest(m) => (top.clone(), m),
            Fetched::Index(idx) => {
                let desc = manifest::select_platform(&top, &idx, &opts.platform)?.clone();
                tracing::info!(index = %top, manifest = %desc.digest, platform = %opts.platform, "picked manifest from index");
                let (bytes, ct) = self
                    .document(&mut reg, reference, opts, &desc.digest, Some(desc.size))
                    .await?;
                match manifest::parse_fetched(&desc.digest, ct.as_deref(), &bytes)? {
                    Fetched::Manifest(m) => (desc.digest.clone(), m),
                    Fetched::Index(_) => {
                        return Err(ImageError::Manifest {
                            digest: desc.digest.clone(),
                            reason: "an index inside an index is not supported".into(),
                        })
                    }
                }
            }
        };
        let total: u64 = manifest
            .layers
            .iter()
            .map(|l| l.size)
            .fold(0, u64::saturating_add);
        if total > opts.max_bytes {
            return Err(ImageError::LayersTooLarge {
                image: top,
                total,
                limit: opts.max_bytes,
            });
        }
        let config = self.config(&mut reg, reference, opts, &manifest).await?;
        if config.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::Manifest {
                digest: manifest.config.digest.clone(),
                reason: format!(
                    "the config lists {} diff ids for {} layers",
                    config.diff_ids.len(),
                    manifest.layers.len()
                ),
            });
        }
        if config.platform.os != opts.platform.os
            || config.platform.architecture != opts.platform.architecture
        {
            tracing::warn!(image = %top, built_for = %config.platform, wanted = %opts.platform,
                "image config names another platform");
        }

        for (layer, diff_id) in manifest.layers.iter().zip(&config.diff_ids) {
            self.layer(&mut reg, reference, opts, layer, diff_id)
                .await?;
        }

        let record = ImageRecord {
            version: RECORD_VERSION,
            reference: reference.to_string(),
            manifest: manifest_digest.clone(),
            config: manifest.config.digest.clone(),
            layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| ImageError::Record {
            path: self.record_path(&top),
            reason: e.to_string(),
        })?;
        let (tmp, path) = (self.tmp(), self.record_path(&top));
        blocking("write image record", move || {
            write_atomic(&tmp, &path, &json)
        })
        .await?;
        tracing::info!(image = %reference, layers = manifest.layers.len(), "image pulled");
        Ok(ImageRootfs {
            digest: top,
            manifest: manifest_digest,
            layers: manifest
                .layers
                .iter()
                .rev()
                .map(|l| self.layer_path(&l.digest))
                .collect(),
            config: config.config,
        })
    }

    fn registry<'a>(
        reg: &'a mut Option<Registry>,
        reference: &Reference,
        opts: &PullOptions,
    ) -> Result<&'a Registry> {
        if reg.is_none() {
            *reg = Some(Registry::new(
                reference,
                &opts.insecure_http_hosts,
                opts.credentials.clone(),
            )?);
        }
        reg.as_ref().ok_or_else(|| ImageError::Task {
            what: "registry client".into(),
            reason: "not constructed".into(),
        })
    }

    /// A manifest or index: from the store if there, else from the
    /// registry (verified, then stored).
    async fn document(
        &self,
        reg: &mut Option<Registry>,
        reference: &Reference,
        opts: &PullOptions,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<(Vec<u8>, Option<String>)> {
        let limit = size.unwrap_or(MAX_DOCUMENT_BYTES).min(MAX_DOCUMENT_BYTES);
        if let Some(b) = self.stored_small(digest, limit).await? {
            return Ok((b, None));
        }
        let (bytes, ct) = Self::registry(reg, reference, opts)?
            .manifest(digest, limit)
            .await?;
        check_size(digest, size, bytes.len())?;
        self.store_small(digest, &bytes).await?;
        opts.report(Progress {
            digest: digest.clone(),
            // Index or manifest: the `mediaType` is read by the caller.
            kind: if bytes.windows(11).any(|w| w == b"\"manifests\"") {
                BlobKind::Index
            } else {
                BlobKind::Manifest
            },
            phase: Phase::Done,
            done: bytes.len() as u64,
            total: bytes.len() as u64,
        });
        Ok((bytes, ct))
    }

    async fn config(
        &self,
        reg: &mut Option<Registry>,
        reference: &Reference,
        opts: &PullOptions,
        m: &Manifest,
    ) -> Result<ConfigBlob> {
        let d = &m.config.digest;
        let limit = m.config.size.min(MAX_DOCUMENT_BYTES);
        if m.config.size > MAX_DOCUMENT_BYTES {
            return Err(ImageError::TooLarge {
                what: format!("config {d}"),
                limit: MAX_DOCUMENT_BYTES,
            });
        }
        let bytes = match self.stored_small(d, limit).await? {
            Some(b) => b,
            None => {
                let b = Self::registry(reg, reference, opts)?
                    .small_blob(d, limit)
                    .await?;
                check_size(d, Some(m.config.size), b.len())?;
                self.store_small(d, &b).await?;
                opts.report(Progress {
                    digest: d.clone(),
                    kind: BlobKind::Config,
                    phase: Phase::Done,
                    done: b.len() as u64,
                    total: m.config.size,
                });
                b
            }
        };
        manifest::parse_config(d, &bytes)
    }

    /// A small verified blob from the store; `None` if absent. A stored
    /// blob that no longer matches its digest (disk corruption) is removed
    /// and reported absent, so it is fetched again.
    async fn stored_small(&self, d: &Digest, limit: u64) -> Result<Option<Vec<u8>>> {
        let path = self.blob_path(d);
        let d = d.clone();
        blocking("read blob", move || {
            let f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(ImageError::io("open", &path, e)),
            };
            let mut b = Vec::new();
            f.take(limit + 1)
                .read_to_end(&mut b)
                .map_err(|e| ImageError::io("read", &path, e))?;
            if b.len() as u64 > limit || Digest::of(&b) != d {
                tracing::warn!(blob = %path.display(), "stored blob is corrupt; fetching it again");
                fs::remove_file(&path).map_err(|e| ImageError::io("remove", &path, e))?;
                return Ok(None);
            }
            Ok(Some(b))
        })
        .await
    }

    async fn store_small(&self, d: &Digest, bytes: &[u8]) -> Result<()> {
        let (tmp, path, bytes) = (self.tmp(), self.blob_path(d), bytes.to_vec());
        blocking("store blob", move || write_atomic(&tmp, &path, &bytes)).await
    }

    /// Makes sure layer `desc` is unpacked in the store.
    async fn layer(
        &self,
        reg: &mut Option<Registry>,
        reference: &Reference,
        opts: &PullOptions,
        desc: &Descriptor,
        diff_id: &Digest,
    ) -> Result<()> {
        let dest = self.layer_path(&desc.digest);
        let report = |phase, done| {
            opts.report(Progress {
                digest: desc.digest.clone(),
                kind: BlobKind::Layer,
                phase,
                done,
                total: desc.size,
            })
        };
        if exists(&dest).await? {
            report(Phase::Cached, desc.size);
            return Ok(());
        }
        let blob = self.fetch_blob(reg, reference, opts, desc).await?;
        report(Phase::Unpack, desc.size);
        let (tmp, digest, diff_id, limits) = (
            self.tmp(),
            desc.digest.clone(),
            diff_id.clone(),
            opts.unpack,
        );
        let keep = opts.keep_layer_blobs;
        blocking(format!("unpack layer {digest}"), move || {
            unpack_into_store(&tmp, &blob, &dest, &digest, &diff_id, &limits)?;
            if !keep {
                match fs::remove_file(&blob) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(ImageError::io("remove unpacked layer blob", &blob, e)),
                }
            }
            Ok(())
        })
        .await?;
        report(Phase::Done, desc.size);
        Ok(())
    }

    /// Downloads blob `desc` into the store (resuming a partial download),
    /// verifying size and digest while streaming. Returns its path.
    async fn fetch_blob(
        &self,
        reg: &mut Option<Registry>,
        reference: &Reference,
        opts: &PullOptions,
        desc: &Descriptor,
    ) -> Result<PathBuf> {
        let fin = self.blob_path(&desc.digest);
        let partial = self.tmp().join(format!("{}.partial", desc.digest.hex()));
        if exists_file(&fin).await? {
            return Ok(fin);
        }
        let (f2, p2) = (fin.clone(), partial.clone());
        let size = desc.size;
        // Open the partial file and lock it: a concurrent pull of the same
        // blob (this process or another) waits here, then finds it done.
        let opened = blocking("open partial blob", move || {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&p2)
                .map_err(|e| ImageError::io("open", &p2, e))?;
            rustix::fs::flock(&f, FlockOperation::LockExclusive)
                .map_err(|e| ImageError::io("flock", &p2, e.into()))?;
            // Finished by someone else while we waited for the lock: the
            // final blob is there, or (if they also unpacked it and dropped
            // the blob) the partial file we hold was renamed away.
            use std::os::unix::fs::MetadataExt;
            let mine = f.metadata().map_err(|e| ImageError::io("stat", &p2, e))?;
            let still_ours = fs::symlink_metadata(&p2)
                .is_ok_and(|m| (m.dev(), m.ino()) == (mine.dev(), mine.ino()));
            if f2.exists() || !still_ours {
                // An empty partial file we created after they finished.
                if still_ours && mine.len() == 0 {
                    fs::remove_file(&p2).map_err(|e| ImageError::io("remove", &p2, e))?;
                }
                return Ok(None);
            }
            let mut h = hash_prefix(&mut f).map_err(|e| ImageError::io("read", &p2, e))?;
            if h.len() > size {
                f.set_len(0)
                    .map_err(|e| ImageError::io("truncate", &p2, e))?;
                f.rewind().map_err(|e| ImageError::io("seek", &p2, e))?;
                h = Hasher::new();
            }
            Ok(Some((f, h)))
        })
        .await?;
        let Some((file, hasher)) = opened else {
            return Ok(fin);
        };
        let offset = hasher.len();
        let fail_clean = |e: ImageError, path: PathBuf| async move {
            // Content that cannot be right is not kept for resuming.
            let _ = tokio::task::spawn_blocking(move || fs::remove_file(path)).await;
            e
        };
        let (url, mut resp, resumed) = if offset == size {
            (String::new(), None, true)
        } else {
            let (url, resp, resumed) = Self::registry(reg, reference, opts)?
                .blob(&desc.digest, offset)
                .await?;
            (url, Some(resp), resumed)
        };
        let mut w = BlobWriter::new(file, hasher, partial.clone());
        if !resumed {
            w.restart().await?;
        } else if offset > 0 {
            tracing::info!(blob = %desc.digest, offset, "resuming blob download");
        }
        let mut last_report = 0u64;
        if let Some(resp) = resp.as_mut() {
            loop {
                let chunk = resp.chunk().await.map_err(|source| ImageError::Http {
                    url: url.clone(),
                    source,
                });
                let chunk = match chunk {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    // A network error keeps the partial file for resuming.
                    Err(e) => {
                        w.finish_writes().await?;
                        return Err(e);
                    }
                };
                let done = w.len() + chunk.len() as u64;
                if done > size {
                    w.finish_writes().await.ok();
                    return Err(fail_clean(
                        ImageError::SizeMismatch {
                            digest: desc.digest.clone(),
                            expected: size,
                            actual: done,
                        },
                        partial.clone(),
                    )
                    .await);
                }
                w.write(&chunk).await?;
                if done - last_report >= PROGRESS_STEP {
                    last_report = done;
                    opts.report(Progress {
                        digest: desc.digest.clone(),
                        kind: BlobKind::Layer,
                        phase: Phase::Download,
                        done,
                        total: size,
                    });
                }
            }
        }
        let (file, hasher) = w.finish_writes().await?;
        if hasher.len() != size {
            // Short body: keep it, a retry resumes from here.
            return Err(ImageError::SizeMismatch {
                digest: desc.digest.clone(),
                expected: size,
                actual: hasher.len(),
            });
        }
        let actual = hasher.finish();
        if actual != desc.digest {
            return Err(fail_clean(
                ImageError::DigestMismatch {
                    what: format!("blob {url}"),
                    expected: desc.digest.clone(),
                    actual,
                },
                partial,
            )
            .await);
        }
        opts.report(Progress {
            digest: desc.digest.clone(),
            kind: BlobKind::Layer,
            phase: Phase::Download,
            done: size,
            total: size,
        });
        let f2 = fin.clone();
        blocking("commit blob", move || {
            file.sync_all()
                .map_err(|e| ImageError::io("fsync", &partial, e))?;
            fs::rename(&partial, &f2)
                .map_err(|e| ImageError::io("rename into the store", &partial, e))?;
            fsync_parent(&f2)?;
            drop(file);
            Ok(())
        })
        .await?;
        Ok(fin)
    }

    /// The rootfs of an image pulled earlier.
    pub async fn rootfs(&self, digest: &Digest) -> Result<ImageRootfs> {
        let _lock = self.lock(FlockOperation::LockShared).await?;
        self.rootfs_unlocked(digest).await
    }

    async fn rootfs_unlocked(&self, digest: &Digest) -> Result<ImageRootfs> {
        let me = self.clone();
        let digest = digest.clone();
        blocking("read image record", move || {
            let path = me.record_path(&digest);
            let not_pulled = || ImageError::NotPulled {
                digest: digest.clone(),
                store: me.dir.clone(),
            };
            let rec = match read_record(&path) {
                Ok(r) => r,
                Err(ImageError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    return Err(not_pulled())
                }
                Err(e) => return Err(e),
            };
            let cfg_path = me.blob_path(&rec.config);
            let mut bytes = Vec::new();
            File::open(&cfg_path)
                .and_then(|f| f.take(MAX_DOCUMENT_BYTES).read_to_end(&mut bytes))
                .map_err(|e| ImageError::io("read config", &cfg_path, e))?;
            if Digest::of(&bytes) != rec.config {
                return Err(ImageError::Record {
                    path,
                    reason: format!("config blob {} is corrupt", rec.config),
                });
            }
            let cfg = manifest::parse_config(&rec.config, &bytes)?;
            let mut layers = Vec::with_capacity(rec.layers.len());
            for l in rec.layers.iter().rev() {
                let p = me.layer_path(l);
                if !p.is_dir() {
                    return Err(not_pulled());
                }
                layers.push(p);
            }
            Ok(ImageRootfs {
                digest: digest.clone(),
                manifest: rec.manifest,
                layers,
                config: cfg.config,
            })
        })
        .await
    }

    /// The digests of the images in the store.
    pub async fn images(&self) -> Result<Vec<Digest>> {
        let dir = self.dir.join("images/sha256");
        blocking("list images", move || list_records(&dir)).await
    }

    /// Removes every image not in `keep`, then every blob and layer no kept
    /// image uses, and the leftovers of interrupted pulls. Waits for
    /// running pulls to finish and blocks new ones meanwhile.
    pub async fn gc(&self, keep: &[Digest]) -> Result<GcReport> {
        let _lock = self.lock(FlockOperation::LockExclusive).await?;
        let me = self.clone();
        let keep: BTreeSet<Digest> = keep.iter().cloned().collect();
        blocking("garbage-collect the image store", move || {
            me.gc_blocking(&keep)
        })
        .await
    }

    fn gc_blocking(&self, keep: &BTreeSet<Digest>) -> Result<GcReport> {
        let mut report = GcReport::default();
        let images = self.dir.join("images/sha256");
        let mut live_blobs = BTreeSet::new();
        let mut live_layers = BTreeSet::new();
        for d in list_records(&images)? {
            let path = self.record_path(&d);
            if !keep.contains(&d) {
                fs::remove_file(&path).map_err(|e| ImageError::io("remove", &path, e))?;
                report.images += 1;
                continue;
            }
            // A kept record that cannot be read stops the GC: deleting its
            // layers could break a running jail.
            let rec = read_record(&path)?;
            live_blobs.insert(d);
            live_blobs.insert(rec.manifest);
            live_blobs.insert(rec.config);
            for l in rec.layers {
                live_blobs.insert(l.clone());
                live_layers.insert(l);
            }
        }
        fsync_dir(&images)?;
        // Leftovers first: nothing is running while we hold the lock.
        let tmp = self.tmp();
        for e in read_dir(&tmp)? {
            remove_any(&e)?;
            report.tmp += 1;
        }
        let blobs = self.dir.join("blobs/sha256");
        for e in read_dir(&blobs)? {
            let live = e
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(Digest::from_hex)
                .is_some_and(|d| live_blobs.contains(&d));
            if !live {
                remove_any(&e)?;
                report.blobs += 1;
            }
        }
        fsync_dir(&blobs)?;
        let layers = self.dir.join("layers/sha256");
        for e in read_dir(&layers)? {
            let live = e
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(Digest::from_hex)
                .is_some_and(|d| live_layers.contains(&d));
            if !live {
                // Out of sight in one rename, then deleted.
                let doomed = tmp.join(unique("gc"));
                fs::rename(&e, &doomed)
                    .map_err(|err| ImageError::io("move out of the store", &e, err))?;
                remove_any(&doomed)?;
                report.layers += 1;
            }
        }
        fsync_dir(&layers)?;
        tracing::info!(?report, "image store collected");
        Ok(report)
    }
}

fn check_size(d: &Digest, want: Option<u64>, got: usize) -> Result<()> {
    match want {
        Some(w) if w != got as u64 => Err(ImageError::SizeMismatch {
            digest: d.clone(),
            expected: w,
            actual: got as u64,
        }),
        _ => Ok(()),
    }
}

async fn blocking<T: Send + 'static>(
    what: impl Into<String>,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let what = what.into();
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageError::Task {
            what,
            reason: e.to_string(),
        })?
}

async fn exists_file(p: &Path) -> Result<bool> {
    let p = p.to_owned();
    blocking("stat", move || Ok(p.is_file())).await
}

async fn exists(p: &Path) -> Result<bool> {
    let p = p.to_owned();
    blocking("stat", move || Ok(p.is_dir())).await
}

/// Unpacks `blob` into a fresh directory under `tmp`, checks its diff id,
/// syncs the filesystem and renames it to `dest`. On error nothing remains.
fn unpack_into_store(
    tmp: &Path,
    blob: &Path,
    dest: &Path,
    digest: &Digest,
    diff_id: &Digest,
    limits: &UnpackLimits,
) -> Result<()> {
    if dest.is_dir() {
        return Ok(());
    }
    let f = match File::open(blob) {
        Ok(f) => f,
        // A concurrent pull unpacked it and removed the blob.
        Err(e) if e.kind() == io::ErrorKind::NotFound && dest.is_dir() => return Ok(()),
        Err(e) => return Err(ImageError::io("open layer blob", blob, e)),
    };
    let work = tmp.join(unique(&format!("layer-{}", digest.hex())));
    fs::create_dir(&work).map_err(|e| ImageError::io("create", &work, e))?;
    let result = (|| {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&work, fs::Permissions::from_mode(0o755))
            .map_err(|e| ImageError::io("chmod", &work, e))?;
        let report = unpack_layer(f, &work, limits).map_err(|e| ImageError::Layer {
            layer: digest.clone(),
            entry: e.entry,
            reason: e.reason,
        })?;
        if &report.diff_id != diff_id {
            return Err(ImageError::DigestMismatch {
                what: format!("uncompressed layer {digest} (diff id in the config)"),
                expected: diff_id.clone(),
                actual: report.diff_id,
            });
        }
        for s in &report.skipped {
            tracing::warn!(layer = %digest, "{s}");
        }
        // One syncfs instead of an fsync per file: everything written
        // above is durable before the rename makes it visible.
        let fd = rustix::fs::open(
            &work,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ImageError::io("open", &work, e.into()))?;
        rustix::fs::syncfs(&fd).map_err(|e| ImageError::io("syncfs", &work, e.into()))?;
        match fs::rename(&work, dest) {
            Ok(()) => fsync_parent(dest),
            // Another pull finished the same layer first: keep theirs.
            Err(e) if dest.is_dir() => {
                tracing::debug!(layer = %digest, error = %e, "layer unpacked concurrently");
                remove_any(&work)
            }
            Err(e) => Err(ImageError::io("rename into the store", &work, e)),
        }
    })();
    if result.is_err() && work.exists() {
        if let Err(cleanup) = remove_any(&work) {
            tracing::error!(error = %cleanup, "cannot remove a refused layer's directory");
        }
    }
    result
}

fn read_record(path: &Path) -> Result<ImageRecord> {
    let mut b = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_RECORD_BYTES).read_to_end(&mut b))
        .map_err(|e| ImageError::io("read image record", path, e))?;
    let rec: ImageRecord = serde_json::from_slice(&b).map_err(|e| ImageError::Record {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if rec.version != RECORD_VERSION {
        return Err(ImageError::Record {
            path: path.to_owned(),
            reason: format!("version {} is not {RECORD_VERSION}", rec.version),
        });
    }
    Ok(rec)
}

fn list_records(dir: &Path) -> Result<Vec<Digest>> {
    Ok(read_dir(dir)?
        .iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            Digest::from_hex(name.strip_suffix(".json")?)
        })
        .collect())
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = fs::read_dir(dir).map_err(|e| ImageError::io("list", dir, e))?;
    rd.map(|e| {
        e.map(|e| e.path())
            .map_err(|err| ImageError::io("list", dir, err))
    })
    .collect()
}

/// Removes a file or a whole tree (never following symlinks); directories
/// without write permission are made writable first (unprivileged stores).
fn remove_any(p: &Path) -> Result<()> {
    let md = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io("stat", p, e)),
    };
    if !md.is_dir() {
        return fs::remove_file(p).map_err(|e| ImageError::io("remove", p, e));
    }
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_writable(p)?;
            fs::remove_dir_all(p).map_err(|e| ImageError::io("remove", p, e))
        }
        Err(e) => Err(ImageError::io("remove", p, e)),
    }
}

fn make_writable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| ImageError::io("chmod", dir, e))?;
    for e in read_dir(dir)? {
        if fs::symlink_metadata(&e).is_ok_and(|m| m.is_dir()) {
            make_writable(&e)?;
        }
    }
    Ok(())
}

/// temp file in `tmp`, fsync, rename to `path`, fsync its directory.
fn write_atomic(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let t = tmp.join(unique("write"));
    let r = (|| {
        let mut f = File::create(&t).map_err(|e| ImageError::io("create", &t, e))?;
        f.write_all(bytes)
            .map_err(|e| ImageError::io("write", &t, e))?;
        f.sync_all().map_err(|e| ImageError::io("fsync", &t, e))?;
        fs::rename(&t, path).map_err(|e| ImageError::io("rename into the store", &t, e))?;
        fsync_parent(path)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&t);
    }
    r
}

fn fsync_parent(p: &Path) -> Result<()> {
    match p.parent() {
        Some(d) => fsync_dir(d),
        None => Ok(()),
    }
}

fn fsync_dir(d: &Path) -> Result<()> {
    File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(|e| ImageError::io("fsync directory", d, e))
}

/// Streams a blob to its partial file: bytes are buffered to a MiB, then
/// written and hashed on the blocking pool while the next MiB arrives.
struct BlobWriter {
    slot: Slot,
    buf: Vec<u8>,
    path: PathBuf,
    len: u64,
}

enum Slot {
    Idle(Box<(File, Hasher)>),
    Busy(JoinHandle<io::Result<(File, Hasher)>>),
    Gone,
}

impl BlobWriter {
    fn new(file: File, hasher: Hasher, path: PathBuf) -> Self {
        let len = hasher.len();
        Self {
            slot: Slot::Idle(Box::new((file, hasher))),
            buf: Vec::with_capacity(WRITE_CHUNK),
            path,
            len,
        }
    }

    fn len(&self) -> u64 {
        self.len
    }

    async fn settle(&mut self) -> Result<(File, Hasher)> {
        match std::mem::replace(&mut self.slot, Slot::Gone) {
            Slot::Idle(fh) => Ok(*fh),
            Slot::Busy(j) => j
                .await
                .map_err(|e| ImageError::Task {
                    what: format!("write {}", self.path.display()),
                    reason: e.to_string(),
                })?
                .map_err(|e| ImageError::io("write", &self.path, e)),
            Slot::Gone => Err(ImageError::Task {
                what: format!("write {}", self.path.display()),
                reason: "writer used after an error".into(),
            }),
        }
    }

    /// The registry ignored the range: start the file over.
    async fn restart(&mut self) -> Result<()> {
        let (mut f, _) = self.settle().await?;
        let path = self.path.clone();
        let f = blocking("truncate partial blob", move || {
            f.set_len(0)
                .map_err(|e| ImageError::io("truncate", &path, e))?;
            f.rewind().map_err(|e| ImageError::io("seek", &path, e))?;
            Ok(f)
        })
        .await?;
        self.slot = Slot::Idle(Box::new((f, Hasher::new())));
        self.len = 0;
        Ok(())
    }

    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(data);
        self.len += data.len() as u64;
        if self.buf.len() >= WRITE_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let (mut f, mut h) = self.settle().await?;
        let buf = std::mem::replace(&mut self.buf, Vec::with_capacity(WRITE_CHUNK));
        self.slot = Slot::Busy(tokio::task::spawn_blocking(move || {
            f.seek(io::SeekFrom::End(0))?;
            f.write_all(&buf)?;
            h.update(&buf);
            Ok((f, h))
        }));
        Ok(())
    }

    async fn finish_writes(&mut self) -> Result<(File, Hasher)> {
        if !self.buf.is_empty() {
            self.flush().await?;
        }
        self.settle().await
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn write_atomic_leaves_no_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let s = ImageStore::open(d.path().join("store")).unwrap();
        let digest = Digest::of(b"hello");
        write_atomic(&s.tmp(), &s.blob_path(&digest), b"hello").unwrap();
        assert_eq!(fs::read(s.blob_path(&digest)).unwrap(), b"hello");
        assert!(read_dir(&s.tmp()).unwrap().is_empty());
    }

    #[test]
    fn refused_layer_leaves_nothing_and_names_entry_and_digest() {
        let d = tempfile::tempdir().unwrap();
        let s = ImageStore::open(d.path().join("store")).unwrap();
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..4].copy_from_slice(b"../x");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut t = h.as_bytes().to_vec();
        t.extend_from_slice(b"x");
        t.resize(512 * 4, 0);
        let digest = Digest::of(&t);
        fs::write(s.blob_path(&digest), &t).unwrap();
        let dest = s.layer_path(&digest);
        let err = unpack_into_store(
            &s.tmp(),
            &s.blob_path(&digest),
            &dest,
            &digest,
            &Digest::of(&t),
            &UnpackLimits::default(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&digest.to_string()) && msg.contains("`../x`"),
            "{msg}"
        );
        assert!(!dest.exists());
        assert!(read_dir(&s.tmp()).unwrap().is_empty());
        assert!(!d.path().join("store/x").exists() && !d.path().join("x").exists());
    }

    #[test]
    fn diff_id_mismatch_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = ImageStore::open(d.path().join("store")).unwrap();
        let t = vec![0u8; 1024];
        let digest = Digest::of(&t);
        fs::write(s.blob_path(&digest), &t).unwrap();
        let err = unpack_into_store(
            &s.tmp(),
            &s.blob_path(&digest),
            &s.layer_path(&digest),
            &digest,
            &Digest::of(b"other"),
            &UnpackLimits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        assert!(!s.layer_path(&digest).exists());
        assert!(read_dir(&s.tmp()).unwrap().is_empty());
    }
}
