//! OCI image delivery: pull an app image pinned by digest from any OCI
//! registry, verify every byte, and unpack its layers safely into a
//! content-addressed store whose directories the jail runtime stacks as
//! overlayfs lower layers.
//!
//! ```text
//! let store = ImageStore::open("/var/lib/berth/images")?;
//! let rootfs = store.pull(&"reg.example/vendor/app@sha256:…".parse()?, &PullOptions::default()).await?;
//! // rootfs.layers: lower dirs, top first; rootfs.config: entrypoint, cmd, env, …
//! ```
//!
//! Layout of the module:
//! - [`reference`]: `registry/repo[:tag]@sha256:…` references;
//! - [`digest`]: sha256 digests and hashing;
//! - [`manifest`]: index, manifest and config documents, platform choice;
//! - `registry`: the Distribution API v2 client (token auth, limits);
//! - [`unpack`]: the hostile-input layer unpacker;
//! - `store`: the on-disk store, pulls, `rootfs`, `gc`;
//! - [`error`]: the [`ImageError`] type.
//!
//! Guarantees: the reference's digest must match the manifest's bytes (or
//! the index's, from which the gateway's platform is chosen); every blob is
//! hashed while it streams and only renamed into the store after its digest
//! and size match and it was fsynced; layers are unpacked into a temporary
//! directory, checked against the config's `diff_ids`, synced and renamed
//! into place, so a power cut at any instant leaves either nothing or a
//! complete, verified layer. Identical layers are unpacked once and shared.

pub mod digest;
pub mod error;
pub mod manifest;
pub mod reference;
mod registry;
mod store;
pub mod unpack;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub use digest::Digest;
pub use error::ImageError;
pub use manifest::{ImageConfig, Platform};
pub use reference::Reference;
pub use store::{GcReport, ImageStore};
pub use unpack::UnpackLimits;

/// Largest manifest, index or config accepted.
pub const MAX_DOCUMENT_BYTES: u64 = 4 << 20;

/// A pulled image, ready to be stacked by the jail runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRootfs {
    /// The digest the image was pulled by (manifest or index).
    pub digest: Digest,
    /// The platform manifest's digest (equal to `digest` without an index).
    pub manifest: Digest,
    /// Unpacked layer directories, **top first**: the order of overlayfs
    /// `lowerdir=` and of `jail::RootfsSpec` lowers. Read-only by contract;
    /// layers are shared by every image and jail that uses them.
    pub layers: Vec<PathBuf>,
    /// How to run the app.
    pub config: ImageConfig,
}

/// User name and password for registries that want them (basic auth, or
/// sent to the token endpoint of the bearer flow).
#[derive(Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What a blob being pulled is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// An image index / manifest list.
    Index,
    /// An image manifest.
    Manifest,
    /// The image config.
    Config,
    /// A layer.
    Layer,
}

/// Where a blob is in its pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Bytes are arriving; `done` of `total` so far.
    Download,
    /// A layer is being unpacked (`done` = `total` = its compressed size).
    Unpack,
    /// Finished and verified.
    Done,
    /// Already in the store (for layers: already unpacked); nothing fetched.
    Cached,
}

/// One progress report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The blob.
    pub digest: Digest,
    /// What it is.
    pub kind: BlobKind,
    /// Where it is.
    pub phase: Phase,
    /// Bytes done.
    pub done: u64,
    /// Bytes in all (from its descriptor).
    pub total: u64,
}

/// Receives progress reports; called on the pulling task, so it must be
/// quick (e.g. update a counter or `try_send` on a bounded channel).
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// How to pull.
#[derive(Clone)]
pub struct PullOptions {
    /// The platform to pick from an image index (default: this machine's,
    /// 32-bit ARM taken as `linux/arm/v7`).
    pub platform: Platform,
    /// Cap on the sum of the image's compressed layer sizes; an image whose
    /// manifest declares more is refused before any layer is fetched.
    pub max_bytes: u64,
    /// Limits for unpacking each layer.
    pub unpack: UnpackLimits,
    /// Registries reached over plain HTTP: `host` or `host:port` each.
    /// Default: loopback only. Everything else is HTTPS.
    pub insecure_http_hosts: Vec<String>,
    /// Credentials, if the registry wants them.
    pub credentials: Option<Credentials>,
    /// Keep compressed layer blobs after unpacking (default: delete them,
    /// gateway disks are small; a re-pull of a GC'd layer fetches again).
    pub keep_layer_blobs: bool,
    /// Progress reports.
    pub progress: Option<ProgressFn>,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            platform: Platform::host(),
            max_bytes: 2 << 30,
            unpack: UnpackLimits::default(),
            insecure_http_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            credentials: None,
            keep_layer_blobs: false,
            progress: None,
        }
    }
}

impl fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullOptions")
            .field("platform", &self.platform)
            .field("max_bytes", &self.max_bytes)
            .field("unpack", &self.unpack)
            .field("insecure_http_hosts", &self.insecure_http_hosts)
            .field("credentials", &self.credentials)
            .field("keep_layer_blobs", &self.keep_layer_blobs)
            .field("progress", &self.progress.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

impl PullOptions {
    pub(crate) fn report(&self, p: Progress) {
        if let Some(f) = &self.progress {
            f(&p);
        }
    }
}
