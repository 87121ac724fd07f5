//! The errors of image delivery: each names the registry URL, digest, path or
//! layer entry it is about, so that a log line alone says what to fix.

use std::io;
use std::path::PathBuf;

use super::digest::Digest;

/// Why an image could not be pulled, unpacked or read back from the store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image reference is not `registry/repository@sha256:<hex>`.
    #[error("invalid image reference `{reference}`: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A digest string is not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid digest `{value}`: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest {
        /// The digest as given.
        value: String,
    },
    /// The HTTP request failed (connection, TLS, timeout, body read).
    #[error("request to {url} failed: {source}")]
    Http {
        /// The URL that was requested.
        url: String,
        /// What went wrong.
        #[source]
        source: crate::http::HttpError,
    },
    /// The registry answered with an unexpected status.
    #[error("{url} answered HTTP {status}{}", if .detail.is_empty() { String::new() } else { format!(": {}", .detail) })]
    Status {
        /// The URL that was requested.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the registry's error body, if any.
        detail: String,
    },
    /// The registry asked for authentication that could not be obtained.
    #[error("authentication with {url} failed: {reason}")]
    Auth {
        /// The URL that asked for it (or the token realm).
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A manifest, config or token was larger than allowed.
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// What was being read (URL or digest).
        what: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The image's layers add up to more than the caller allows.
    #[error("image {image} has {total} bytes of layers, more than the limit of {limit} bytes")]
    LayersTooLarge {
        /// The image's digest.
        image: Digest,
        /// The sum of the layer sizes the manifest declares.
        total: u64,
        /// The caller's `max_bytes`.
        limit: u64,
    },
    /// Content did not hash to the digest it was asked for by.
    #[error(
        "digest mismatch for {what}: expected {expected}, got {actual}; the content was discarded"
    )]
    DigestMismatch {
        /// What was checked (blob URL, manifest, layer diff id).
        what: String,
        /// The digest the reference or manifest pinned.
        expected: Digest,
        /// The digest of the bytes actually received.
        actual: Digest,
    },
    /// A blob's length differs from the size its descriptor declares.
    #[error("size mismatch for blob {digest}: the descriptor says {expected} bytes, the registry sent {actual}")]
    SizeMismatch {
        /// The blob's digest.
        digest: Digest,
        /// The descriptor's size.
        expected: u64,
        /// The bytes received (at least).
        actual: u64,
    },
    /// A manifest, index or config is malformed or of an unsupported kind.
    #[error("bad manifest or config {digest}: {reason}")]
    Manifest {
        /// The blob's digest.
        digest: Digest,
        /// What is wrong with it.
        reason: String,
    },
    /// An image index has no manifest for the gateway's platform.
    #[error("image index {digest} has no manifest for {wanted}; it has: {available}")]
    NoPlatform {
        /// The index digest.
        digest: Digest,
        /// The platform asked for, e.g. `linux/arm/v7`.
        wanted: String,
        /// The platforms the index lists.
        available: String,
    },
    /// A layer was refused: unsafe or malformed entry, or limits exceeded.
    #[error("layer {layer} refused at entry `{entry}`: {reason}; nothing of it was kept")]
    Layer {
        /// The layer's (compressed) digest.
        layer: Digest,
        /// The tar entry's path as written in the archive (lossy UTF-8), or
        /// `-` when the error is not about one entry.
        entry: String,
        /// Why.
        reason: String,
    },
    /// A filesystem operation in the store failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// An image record in the store could not be read.
    #[error("image record {path} is corrupt: {reason}")]
    Record {
        /// The record's path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `rootfs` was asked for an image that is not (completely) in the store.
    #[error("image {digest} is not in the store at {store}; pull it first")]
    NotPulled {
        /// The image digest.
        digest: Digest,
        /// The store directory.
        store: PathBuf,
    },
    /// A blocking task (unpack, fsync) panicked or was cancelled.
    #[error("background task for {what} did not finish: {reason}")]
    Task {
        /// What the task was doing.
        what: String,
        /// The join error.
        reason: String,
    },
}

impl ImageError {
    /// An [`ImageError::Io`] for `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for results of this module.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
