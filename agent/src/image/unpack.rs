//! Unpacking one (hostile) layer tarball into a directory that becomes an
//! overlayfs lower layer.
//!
//! Every filesystem change is made relative to a directory fd that was
//! opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from the
//! layer root (or, on kernels without openat2, by walking one component at a
//! time with `O_NOFOLLOW | O_DIRECTORY`), and the final component is created
//! with `O_CREAT | O_EXCL | O_NOFOLLOW`, `mkdirat`, `symlinkat`, `linkat`
//! without `AT_SYMLINK_FOLLOW`, or `mknodat`: nothing is ever resolved
//! through a symlink, so no entry can write outside the root, including
//! "through" a symlink that an earlier entry of the same layer created.
//!
//! Rules (OCI image spec, "Image Layer Filesystem Changeset"):
//! - a `..` component anywhere refuses the layer; a leading `/` and `.`
//!   components are dropped (absolute paths are relative to the root);
//! - symlinks are created as they are (their target is only text here);
//! - hardlink targets obey the same path rules and must already exist in
//!   this layer;
//! - character and block devices and fifos are **skipped** with a warning
//!   and listed in [`UnpackReport::skipped`]: a vendor app gets its devices
//!   from the jail's own `/dev`, never from an image;
//! - setuid and setgid bits are dropped; the sticky bit and permissions are
//!   kept; owners are kept when running as root (unprivileged: the caller
//!   owns everything);
//! - `.wh.NAME` becomes an overlayfs whiteout (char device 0:0 named NAME,
//!   allowed without CAP_MKNOD since Linux 5.8); `.wh..wh..opq` sets
//!   `trusted.overlay.opaque=y` on its directory (needs CAP_SYS_ADMIN, so
//!   root); other `.wh..wh.` names (aufs internals) are ignored;
//! - an entry replacing an existing non-directory replaces it; an entry
//!   replacing a directory by something else is refused;
//! - GNU sparse entries are refused; PAX extended attributes are ignored.
//!
//! Limits: entry count, total bytes of the decompressed stream (a gzip bomb
//! stops there), path and link target length. The layer is decompressed
//! (gzip, zstd or none, sniffed from the first bytes) and its uncompressed
//! sha256 computed on the way, for the caller to check against the config's
//! `diff_ids`. The caller unpacks into a fresh temporary directory and
//! removes it on error, so a refused layer leaves nothing behind.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use super::digest::{Digest, HashingReader};

/// Bounds on one layer.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// Most tar entries.
    pub max_entries: u64,
    /// Most bytes of the decompressed tar stream (headers and data).
    pub max_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            max_bytes: 8 << 30,
        }
    }
}

/// What an unpack did.
#[derive(Debug, Clone)]
pub struct UnpackReport {
    /// sha256 of the uncompressed tar stream (the layer's diff id).
    pub diff_id: Digest,
    /// Length of the uncompressed stream.
    pub uncompressed_bytes: u64,
    /// Entries processed.
    pub entries: u64,
    /// Entries skipped on purpose (devices, fifos), with the reason.
    pub skipped: Vec<String>,
}

/// Why a layer was refused: the entry (lossy UTF-8 of its path, `-` when it
/// is about the archive as a whole) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entry `{entry}`: {reason}")]
pub struct UnpackError {
    /// The tar entry's path as written in the archive.
    pub entry: String,
    /// Why it was refused.
    pub reason: String,
}

fn fail<T>(entry: &str, reason: impl Into<String>) -> Result<T, UnpackError> {
    Err(UnpackError {
        entry: entry.to_owned(),
        reason: reason.into(),
    })
}

const MAX_PATH: usize = 4096;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
const MAX_ZSTD_WINDOW: u64 = 64 << 20;

/// Unpacks the (possibly compressed) layer read from `blob` into `root`,
/// an existing empty directory.
pub fn unpack_layer<R: Read>(
    blob: R,
    root: &Path,
    limits: &UnpackLimits,
) -> Result<UnpackReport, UnpackError> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .or_else(|e| {
        fail(
            "-",
            format!("cannot open layer root {}: {e}", root.display()),
        )
    })?;
    let mut buffered = BufReader::with_capacity(256 << 10, blob);
    let head = buffered
        .fill_buf()
        .or_else(|e| fail("-", format!("cannot read layer: {e}")))?;
    let decompressed: Box<dyn Read + '_> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(ZstdFrames::new(buffered))
    } else {
        Box::new(buffered)
    };
    let limited = LimitedReader {
        inner: HashingReader::new(decompressed),
        left: limits.max_bytes,
        limit: limits.max_bytes,
    };
    let mut archive = tar::Archive::new(limited);
    let mut u = Unpacker {
        root: root_fd,
        chown: nix::unistd::geteuid().is_root(),
        dirs: Vec::new(),
        skipped: Vec::new(),
        written: 0,
        limits: *limits,
    };
    let mut entries = 0u64;
    let iter = archive
        .entries()
        .or_else(|e| fail("-", format!("not a tar archive: {e}")))?;
    for entry in iter {
        let mut entry = entry.or_else(|e| fail("-", format!("malformed tar stream: {e}")))?;
        entries += 1;
        if entries > limits.max_entries {
            return fail("-", format!("more than {} entries", limits.max_entries));
        }
        u.entry(&mut entry)?;
    }
    u.finish_dirs()?;
    // Hash the end-of-archive blocks and anything after them too: the diff
    // id covers the whole uncompressed stream.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink())
        .or_else(|e| fail("-", format!("cannot read the end of the layer: {e}")))?;
    let (diff_id, uncompressed_bytes) = rest.inner.finish();
    Ok(UnpackReport {
        diff_id,
        uncompressed_bytes,
        entries,
        skipped: u.skipped,
    })
}

/// Path components of an entry name: `..` refused, `/` and `.` dropped.
fn components<'a>(entry: &str, raw: &'a [u8]) -> Result<Vec<&'a [u8]>, UnpackError> {
    if raw.len() > MAX_PATH {
        return fail(entry, format!("path longer than {MAX_PATH} bytes"));
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return fail(entry, "path contains `..`: it would leave the layer root"),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn os(c: &[u8]) -> &OsStr {
    OsStr::from_bytes(c)
}

fn display(comps: &[&[u8]]) -> String {
    String::from_utf8_lossy(&comps.join(&b'/')).into_owned()
}

struct Unpacker {
    root: OwnedFd,
    chown: bool,
    /// Directories whose mode, owner and mtime are applied at the end, so
    /// that a read-only directory does not stop its own entries.
    dirs: Vec<(Vec<u8>, Meta)>,
    skipped: Vec<String>,
    written: u64,
    limits: UnpackLimits,
}

#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

impl Meta {
    fn of(name: &str, h: &tar::Header) -> Result<Self, UnpackError> {
        let bad = |what: &str, e: io::Error| UnpackError {
            entry: name.to_owned(),
            reason: format!("bad {what} field: {e}"),
        };
        let mode = h.mode().map_err(|e| bad("mode", e))?;
        let uid = h.uid().map_err(|e| bad("uid", e))?;
        let gid = h.gid().map_err(|e| bad("gid", e))?;
        let mtime = h.mtime().unwrap_or(0);
        let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
            return fail(name, format!("owner {uid}:{gid} does not fit 32 bits"));
        };
        Ok(Self {
            // setuid and setgid are dropped: a vendor image must not be
            // able to plant privileged binaries.
            mode: mode & 0o1777,
            uid,
            gid,
            mtime: i64::try_from(mtime).unwrap_or(0),
        })
    }
}

impl Unpacker {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let comps = components(&name, &raw)?;
        let Some((last, parents)) = comps.split_last() else {
            // The root itself (`./`): its attributes come from the jail's
            // upper layer, nothing to do.
            return if kind.is_dir() {
                Ok(())
            } else {
                fail(&name, "a non-directory entry for the layer root")
            };
        };
        let meta = Meta::of(&name, entry.header())?;

        if last.starts_with(WHITEOUT_PREFIX) {
            let parent = self.open_dir(&name, parents, true)?;
            if *last == OPAQUE {
                let dir = rustix::fs::openat(
                    &parent,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .or_else(|e| fail(&name, format!("cannot open its directory: {e}")))?;
                return rustix::fs::fsetxattr(
                    &dir,
                    "trusted.overlay.opaque",
                    b"y",
                    XattrFlags::empty(),
                )
                .or_else(|e| {
                    fail(
                        &name,
                        format!(
                            "cannot mark the directory opaque (trusted.overlay.opaque needs root): {e}"
                        ),
                    )
                });
            }
            if last.starts_with(b".wh..wh.") {
                self.skipped
                    .push(format!("{name}: aufs metadata, not needed by overlayfs"));
                return Ok(());
            }
            let target = &last[WHITEOUT_PREFIX.len()..];
            if matches!(target, b"" | b"." | b"..") {
                return fail(&name, "a whiteout of nothing, `.` or `..`");
            }
            self.clear(&name, &parent, target, false)?;
            return rustix::fs::mknodat(
                &parent,
                os(target),
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .or_else(|e| fail(&name, format!("cannot create the overlayfs whiteout: {e}")));
        }

        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let parent = self.open_dir(&name, parents, true)?;
                self.clear(&name, &parent, last, false)?;
                let fd = rustix::fs::openat(
                    &parent,
                    os(last),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .or_else(|e| fail(&name, format!("cannot create: {e}")))?;
                let mut file = File::from(fd);
                let n = copy_limited(entry, &mut file, self.limits.max_bytes - self.written)
                    .or_else(|e| fail(&name, format!("cannot write: {e}")))?;
                self.written += n;
                if self.written >= self.limits.max_bytes {
                    return fail(
                        &name,
                        format!("layer content exceeds {} bytes", self.limits.max_bytes),
                    );
                }
                self.apply_meta(&name, &file, meta)
            }
            tar::EntryType::Directory => {
                let parent = self.open_dir(&name, parents, true)?;
                match rustix::fs::mkdirat(&parent, os(last), Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        // Keep an existing directory; replace anything else.
                        if !self.clear(&name, &parent, last, true)? {
                            rustix::fs::mkdirat(&parent, os(last), Mode::from_raw_mode(0o700))
                                .or_else(|e| fail(&name, format!("cannot create: {e}")))?;
                        }
                    }
                    Err(e) => return fail(&name, format!("cannot create directory: {e}")),
                }
                self.dirs.push((comps.join(&b'/'), meta));
                Ok(())
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| UnpackError {
                        entry: name.clone(),
                        reason: "symlink without a target".into(),
                    })?
                    .into_owned();
                if target.is_empty() || target.len() > MAX_PATH {
                    return fail(&name, "symlink target empty or too long");
                }
                let parent = self.open_dir(&name, parents, true)?;
                self.clear(&name, &parent, last, false)?;
                rustix::fs::symlinkat(os(&target), &parent, os(last))
                    .or_else(|e| fail(&name, format!("cannot create symlink: {e}")))?;
                if self.chown {
                    rustix::fs::chownat(
                        &parent,
                        os(last),
                        Some(Uid::from_raw(meta.uid)),
                        Some(Gid::from_raw(meta.gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .or_else(|e| fail(&name, format!("cannot set owner: {e}")))?;
                }
                Ok(())
            }
            tar::EntryType::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| UnpackError {
                        entry: name.clone(),
                        reason: "hardlink without a target".into(),
                    })?
                    .into_owned();
                let tcomps = components(&name, &target_raw).map_err(|e| UnpackError {
                    entry: e.entry,
                    reason: format!("hardlink target: {}", e.reason),
                })?;
                let Some((tlast, tparents)) = tcomps.split_last() else {
                    return fail(&name, "hardlink to the layer root");
                };
                if tcomps == comps {
                    return fail(&name, "hardlink to itself");
                }
                let tparent = self
                    .open_dir(&name, tparents, false)
                    .map_err(|e| UnpackError {
                        entry: e.entry,
                        reason: format!(
                            "hardlink target `{}` is not inside this layer: {}",
                            display(&tcomps),
                            e.reason
                        ),
                    })?;
                let parent = self.open_dir(&name, parents, true)?;
                self.clear(&name, &parent, last, false)?;
                // No AT_SYMLINK_FOLLOW: a symlink target is linked as the
                // symlink itself, never resolved.
                rustix::fs::linkat(&tparent, os(tlast), &parent, os(last), AtFlags::empty())
                    .or_else(|e| {
                        fail(
                            &name,
                            format!(
                                "hardlink target `{}` is not inside this layer: {e}",
                                display(&tcomps)
                            ),
                        )
                    })
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let what = match kind {
                    tar::EntryType::Char => "character device",
                    tar::EntryType::Block => "block device",
                    _ => "fifo",
                };
                tracing::warn!(entry = %name, "skipping {what} in image layer");
                self.skipped.push(format!(
                    "{name}: {what} skipped (jails get devices from their own /dev)"
                ));
                Ok(())
            }
            tar::EntryType::GNUSparse => fail(&name, "GNU sparse files are not supported"),
            other => fail(
                &name,
                format!("unsupported tar entry type {:?}", other.as_byte() as char),
            ),
        }
    }

    /// Opens directory `comps` beneath the root, never through a symlink;
    /// with `create`, missing directories are made (mode 0755).
    fn open_dir(&self, name: &str, comps: &[&[u8]], create: bool) -> Result<OwnedFd, UnpackError> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        if comps.is_empty() {
            return rustix::fs::openat(&self.root, ".", flags, Mode::empty())
                .or_else(|e| fail(name, format!("cannot open the layer root: {e}")));
        }
        let joined = comps.join(&b'/');
        // One syscall for the common case. RESOLVE_NO_SYMLINKS: a symlink
        // anywhere on the way fails with ELOOP; RESOLVE_BENEATH: the result
        // is inside the root even if something raced us.
        match rustix::fs::openat2(
            &self.root,
            os(&joined),
            flags,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => return Ok(fd),
            // Slow path below: creates what is missing (openat2 absent on
            // Linux < 5.6) and names the offending component.
            Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR | Errno::NOSYS | Errno::XDEV) => {}
            Err(e) => return fail(name, format!("cannot open `{}`: {e}", display(comps))),
        }
        let mut cur = rustix::fs::openat(&self.root, ".", flags, Mode::empty())
            .or_else(|e| fail(name, format!("cannot open the layer root: {e}")))?;
        for (i, c) in comps.iter().enumerate() {
            let here = || display(&comps[..=i]);
            let next = match rustix::fs::openat(&cur, os(c), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&cur, os(c), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return fail(name, format!("cannot create `{}`: {e}", here())),
                    }
                    rustix::fs::openat(&cur, os(c), flags, Mode::empty())
                        .or_else(|e| fail(name, format!("cannot open `{}`: {e}", here())))?
                }
                Err(Errno::NOENT) => return fail(name, format!("`{}` does not exist", here())),
                Err(Errno::NOTDIR | Errno::LOOP) => {
                    let is_link = rustix::fs::statat(&cur, os(c), AtFlags::SYMLINK_NOFOLLOW)
                        .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
                        .unwrap_or(false);
                    return if is_link {
                        fail(
                            name,
                            format!(
                                "`{}` is a symlink: writing through symlinks is refused",
                                here()
                            ),
                        )
                    } else {
                        fail(name, format!("`{}` is not a directory", here()))
                    };
                }
                Err(e) => return fail(name, format!("cannot open `{}`: {e}", here())),
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Makes room for `last` in `parent`: removes an existing non-directory.
    /// Returns whether an existing directory was kept (only if `keep_dir`).
    fn clear(
        &self,
        name: &str,
        parent: &OwnedFd,
        last: &[u8],
        keep_dir: bool,
    ) -> Result<bool, UnpackError> {
        match rustix::fs::statat(parent, os(last), AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(false),
            Err(e) => fail(name, format!("cannot inspect the existing entry: {e}")),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                if keep_dir {
                    Ok(true)
                } else {
                    fail(name, "would replace a directory of the same layer")
                }
            }
            Ok(_) => rustix::fs::unlinkat(parent, os(last), AtFlags::empty())
                .map(|()| false)
                .or_else(|e| fail(name, format!("cannot replace the existing entry: {e}"))),
        }
    }

    fn apply_meta(&self, name: &str, fd: impl AsFd, m: Meta) -> Result<(), UnpackError> {
        if self.chown {
            rustix::fs::fchown(&fd, Some(Uid::from_raw(m.uid)), Some(Gid::from_raw(m.gid)))
                .or_else(|e| fail(name, format!("cannot set owner: {e}")))?;
        }
        // After chown, which clears set-id bits anyway; they are masked out
        // of `m.mode` already.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(m.mode))
            .or_else(|e| fail(name, format!("cannot set mode: {e}")))?;
        let t = Timespec {
            tv_sec: m.mtime,
            tv_nsec: 0,
        };
        rustix::fs::futimens(
            &fd,
            &Timestamps {
                last_access: t,
                last_modification: t,
            },
        )
        .or_else(|e| fail(name, format!("cannot set times: {e}")))
    }

    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let dirs = std::mem::take(&mut self.dirs);
        // Deepest first, so that setting a parent's mtime comes last.
        for (path, meta) in dirs.iter().rev() {
            let name = String::from_utf8_lossy(path).into_owned();
            let comps: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
            let Some((last, parents)) = comps.split_last() else {
                continue;
            };
            let parent = self.open_dir(&name, parents, false)?;
            let fd = rustix::fs::openat(
                &parent,
                os(last),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .or_else(|e| fail(&name, format!("cannot reopen directory: {e}")))?;
            self.apply_meta(&name, &fd, *meta)?;
        }
        Ok(())
    }
}

/// Copies at most `max` bytes; errors with `FileTooLarge` past it.
fn copy_limited(r: &mut impl Read, w: &mut impl Write, max: u64) -> io::Result<u64> {
    let n = io::copy(&mut r.take(max), w)?;
    if n == max {
        let mut probe = [0u8; 1];
        if r.read(&mut probe)? > 0 {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "entry exceeds the layer size limit",
            ));
        }
    }
    Ok(n)
}

/// Errors once more than `limit` bytes were read.
struct LimitedReader<R> {
    inner: HashingReader<R>,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("uncompressed layer exceeds {} bytes", self.limit),
            )
        })?;
        Ok(n)
    }
}

/// A zstd stream of any number of frames (zstd:chunked layers have many),
/// skippable frames included.
struct ZstdFrames<R: BufRead> {
    src: R,
    dec: ruzstd::decoding::FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(src: R) -> Self {
        let mut dec = ruzstd::decoding::FrameDecoder::new();
        // Bounds the decoder's allocation on a 1 GB gateway.
        dec.set_max_window_size(MAX_ZSTD_WINDOW);
        Self {
            src,
            dec,
            in_frame: false,
        }
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if self.src.fill_buf()?.is_empty() {
                    return Ok(0);
                }
                match self.dec.init(&mut self.src) {
                    Ok(()) => self.in_frame = true,
                    Err(FrameDecoderError::ReadFrameHeaderError(
                        ReadFrameHeaderError::SkipFrame { length, .. },
                    )) => {
                        let skipped = io::copy(
                            &mut (&mut self.src).take(u64::from(length)),
                            &mut io::sink(),
                        )?;
                        if skipped != u64::from(length) {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "truncated zstd skippable frame",
                            ));
                        }
                        continue;
                    }
                    Err(e) => return Err(io::Error::other(format!("zstd: {e}"))),
                }
            }
            while self.dec.can_collect() == 0 && !self.dec.is_finished() {
                self.dec
                    .decode_blocks(
                        &mut self.src,
                        ruzstd::decoding::BlockDecodingStrategy::UptoBlocks(1),
                    )
                    .map_err(|e| io::Error::other(format!("zstd: {e}")))?;
            }
            let n = self.dec.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if self.dec.is_finished() {
                self.in_frame = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    /// One raw tar entry; names and link targets are written byte for byte
    /// (the tar crate's builder refuses `..`, which these tests need).
    fn entry(name: &str, kind: u8, link: &str, mode: u32, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        {
            let old = h.as_old_mut();
            assert!(name.len() <= 100 && link.len() <= 100);
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname = [0; 100];
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    fn file(name: &str, data: &[u8]) -> Vec<u8> {
        entry(name, b'0', "", 0o644, data)
    }
    fn dir(name: &str) -> Vec<u8> {
        entry(name, b'5', "", 0o755, b"")
    }
    fn symlink(name: &str, target: &str) -> Vec<u8> {
        entry(name, b'2', target, 0o777, b"")
    }
    fn hardlink(name: &str, target: &str) -> Vec<u8> {
        entry(name, b'1', target, 0o644, b"")
    }

    fn tar(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut out: Vec<u8> = entries.concat();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    struct Layer {
        dir: tempfile::TempDir,
    }
    impl Layer {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn root(&self) -> &Path {
            self.dir.path()
        }
        fn unpack(&self, blob: &[u8]) -> Result<UnpackReport, UnpackError> {
            unpack_layer(blob, self.root(), &UnpackLimits::default())
        }
    }

    /// A directory outside the layer, to prove nothing lands there.
    fn outside() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn plain_gzip_and_zstd_layers_unpack_with_diff_id() {
        let t = tar(&[
            dir("etc/"),
            file("etc/hostname", b"gw\n"),
            file("/abs/file", b"abs"),
            file("./dot/./x", b"x"),
            symlink("etc/link", "/etc/hostname"),
            hardlink("etc/hard", "etc/hostname"),
        ]);
        let mut zstd = ruzstd::encoding::compress_to_vec(
            &t[..t.len() / 2],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        // Two frames with a skippable frame between them.
        zstd.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        zstd.extend(ruzstd::encoding::compress_to_vec(
            &t[t.len() / 2..],
            ruzstd::encoding::CompressionLevel::Fastest,
        ));
        for blob in [t.clone(), gzip(&t), zstd] {
            let l = Layer::new();
            let r = l.unpack(&blob).unwrap();
            assert_eq!(r.diff_id, Digest::of(&t));
            assert_eq!(r.uncompressed_bytes, t.len() as u64);
            assert_eq!(r.entries, 6);
            let root = l.root();
            assert_eq!(std::fs::read(root.join("etc/hostname")).unwrap(), b"gw\n");
            assert_eq!(std::fs::read(root.join("abs/file")).unwrap(), b"abs");
            assert_eq!(std::fs::read(root.join("dot/x")).unwrap(), b"x");
            assert_eq!(
                std::fs::read_link(root.join("etc/link")).unwrap(),
                Path::new("/etc/hostname")
            );
            let a = std::fs::metadata(root.join("etc/hostname")).unwrap();
            let b = std::fs::metadata(root.join("etc/hard")).unwrap();
            assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
            assert_eq!(a.mtime(), 1_700_000_000);
            assert_eq!(a.permissions().mode() & 0o7777, 0o644);
        }
    }

    fn assert_refused(blob: &[u8], entry: &str, reason_part: &str) {
        let l = Layer::new();
        let err = l.unpack(blob).unwrap_err();
        assert_eq!(err.entry, entry, "{err}");
        assert!(err.reason.contains(reason_part), "{err}");
    }

    #[test]
    fn traversal_is_refused() {
        let out = outside();
        let rel = format!("../../../../../../../..{}/x", out.path().display());
        assert_refused(&tar(&[file("../x", b"x")]), "../x", "`..`");
        assert_refused(&tar(&[file("a/../../x", b"x")]), "a/../../x", "`..`");
        assert_refused(&tar(&[file(&rel, b"x")]), &rel, "`..`");
        assert_refused(&tar(&[hardlink("h", "../etc/passwd")]), "h", "`..`");
        assert!(!out.path().join("x").exists());
    }

    #[test]
    fn absolute_paths_land_inside_the_root() {
        let out = outside();
        let abs = format!("{}/escaped", out.path().display());
        let l = Layer::new();
        l.unpack(&tar(&[file(&abs, b"in")])).unwrap();
        assert!(!out.path().join("escaped").exists());
        let inside = l.root().join(abs.trim_start_matches('/'));
        assert_eq!(std::fs::read(inside).unwrap(), b"in");
    }

    #[test]
    fn writing_through_a_symlink_is_refused() {
        let out = outside();
        let target = out.path().display().to_string();
        // Symlink to a directory outside, then a file "in" it.
        assert_refused(
            &tar(&[symlink("x", &target), file("x/passwd", b"pwned")]),
            "x/passwd",
            "`x` is a symlink",
        );
        assert!(!out.path().join("passwd").exists());
        // Deeper, and to a relative escape; and a directory entry through it.
        assert_refused(
            &tar(&[
                dir("a/"),
                symlink("a/b", "../../../../.."),
                file("a/b/etc/x", b"x"),
            ]),
            "a/b/etc/x",
            "`a/b` is a symlink",
        );
        assert_refused(
            &tar(&[symlink("x", "/etc"), dir("x/cron.d/")]),
            "x/cron.d/",
            "symlink",
        );
        // The classic: x -> /etc then x/passwd. /etc/passwd must be intact.
        let before = std::fs::read("/etc/passwd").unwrap();
        assert_refused(
            &tar(&[
                symlink("x", "/etc"),
                file("x/passwd", b"root::0:0::/:/bin/sh\n"),
            ]),
            "x/passwd",
            "symlink",
        );
        assert_eq!(std::fs::read("/etc/passwd").unwrap(), before);
        // Replacing the symlink itself by a file is fine (it is unlinked,
        // not followed).
        let l = Layer::new();
        l.unpack(&tar(&[
            symlink("y", &format!("{target}/f")),
            file("y", b"mine"),
        ]))
        .unwrap();
        assert_eq!(std::fs::read(l.root().join("y")).unwrap(), b"mine");
        assert!(!out.path().join("f").exists());
    }

    #[test]
    fn hardlink_escape_is_refused() {
        let out = outside();
        std::fs::write(out.path().join("secret"), b"s").unwrap();
        let abs = format!("{}/secret", out.path().display());
        // An absolute target is relative to the layer root: not there.
        assert_refused(&tar(&[hardlink("h", &abs)]), "h", "not inside this layer");
        // Through a symlink pointing outside.
        let target = out.path().display().to_string();
        assert_refused(
            &tar(&[symlink("s", &target), hardlink("h", "s/secret")]),
            "h",
            "is a symlink",
        );
        assert_eq!(
            std::fs::metadata(out.path().join("secret"))
                .unwrap()
                .nlink(),
            1
        );
        // A hardlink to a symlink links the symlink, never its target.
        let l = Layer::new();
        l.unpack(&tar(&[symlink("s", &abs), hardlink("h", "s")]))
            .unwrap();
        let h = std::fs::symlink_metadata(l.root().join("h")).unwrap();
        assert!(h.file_type().is_symlink());
        assert_eq!(
            std::fs::metadata(out.path().join("secret"))
                .unwrap()
                .nlink(),
            1
        );
    }

    #[test]
    fn devices_and_fifos_are_skipped() {
        let l = Layer::new();
        let r = l
            .unpack(&tar(&[
                entry("dev/sda", b'4', "", 0o660, b""),
                entry("dev/null", b'3', "", 0o666, b""),
                entry("run/fifo", b'6', "", 0o644, b""),
                file("ok", b"ok"),
            ]))
            .unwrap();
        assert_eq!(r.skipped.len(), 3, "{:?}", r.skipped);
        assert!(r.skipped[0].contains("dev/sda: block device skipped"));
        assert!(!l.root().join("dev/sda").exists());
        assert!(!l.root().join("dev/null").exists());
        assert!(!l.root().join("run/fifo").exists());
        assert!(l.root().join("ok").exists());
    }

    #[test]
    fn setuid_and_setgid_bits_are_stripped() {
        let l = Layer::new();
        l.unpack(&tar(&[
            entry("bin/su", b'0', "", 0o4755, b"elf"),
            entry("bin/wall", b'0', "", 0o2755, b"elf"),
            entry("tmp/", b'5', "", 0o1777, b""),
            entry("ro/", b'5', "", 0o555, b""),
            file("ro/inside", b"ok"),
        ]))
        .unwrap();
        let mode = |p: &str| {
            std::fs::symlink_metadata(l.root().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("bin/su"), 0o755);
        assert_eq!(mode("bin/wall"), 0o755);
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("ro"), 0o555);
        assert_eq!(std::fs::read(l.root().join("ro/inside")).unwrap(), b"ok");
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        // Char 0:0 needs no privilege since Linux 5.8.
        let l = Layer::new();
        l.unpack(&tar(&[
            dir("etc/"),
            file("etc/.wh.motd", b""),
            file(".wh.opt", b""),
        ]))
        .unwrap();
        for p in ["etc/motd", "opt"] {
            let m = std::fs::symlink_metadata(l.root().join(p)).unwrap();
            assert!(m.file_type().is_char_device(), "{p}");
            assert_eq!(m.rdev(), 0, "{p}");
        }
        assert!(!l.root().join("etc/.wh.motd").exists());
        assert_refused(&tar(&[file("a/.wh..", b"")]), "a/.wh..", "whiteout");
        assert_refused(&tar(&[file(".wh.", b"")]), ".wh.", "whiteout");
    }

    #[test]
    #[ignore = "privileged: needs root"]
    fn opaque_dirs_get_the_overlay_xattr() {
        if !nix::unistd::geteuid().is_root() {
            panic!("precondition missing: root (trusted.* xattrs need CAP_SYS_ADMIN)");
        }
        let l = Layer::new();
        l.unpack(&tar(&[
            dir("var/"),
            dir("var/lib/"),
            file("var/lib/.wh..wh..opq", b""),
            file("var/lib/new", b"n"),
        ]))
        .unwrap();
        let mut buf = [0u8; 8];
        let n = rustix::fs::lgetxattr(l.root().join("var/lib"), "trusted.overlay.opaque", &mut buf)
            .unwrap();
        assert_eq!(&buf[..n], b"y");
        assert!(!l.root().join("var/lib/.wh..wh..opq").exists());
        assert!(l.root().join("var/lib/new").exists());
        assert!(
            rustix::fs::lgetxattr(l.root().join("var"), "trusted.overlay.opaque", &mut buf)
                .is_err()
        );
    }

    #[test]
    fn oversize_layers_and_too_many_entries_are_refused() {
        let big = tar(&[file("a", &vec![1u8; 10_000]), file("b", b"b")]);
        let l = Layer::new();
        let lim = UnpackLimits {
            max_entries: 100,
            max_bytes: 8_000,
        };
        let err = unpack_layer(&big[..], l.root(), &lim).unwrap_err();
        assert!(err.reason.contains("exceeds 8000 bytes"), "{err}");
        // A gzip bomb: a tiny blob that inflates past the limit.
        let bomb = gzip(&tar(&[file("zeros", &vec![0u8; 4 << 20])]));
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        let lim = UnpackLimits {
            max_entries: 100,
            max_bytes: 1 << 20,
        };
        let err = unpack_layer(&bomb[..], Layer::new().root(), &lim).unwrap_err();
        assert!(err.reason.contains("exceeds"), "{err}");
        let many: Vec<Vec<u8>> = (0..20).map(|i| file(&format!("f{i}"), b"")).collect();
        let lim = UnpackLimits {
            max_entries: 10,
            max_bytes: 1 << 20,
        };
        let err = unpack_layer(&tar(&many)[..], Layer::new().root(), &lim).unwrap_err();
        assert!(err.reason.contains("more than 10 entries"), "{err}");
    }

    #[test]
    fn replacing_entries_and_bad_archives() {
        let l = Layer::new();
        l.unpack(&tar(&[
            file("f", b"1"),
            file("f", b"2"),
            dir("d/"),
            dir("d/"),
        ]))
        .unwrap();
        assert_eq!(std::fs::read(l.root().join("f")).unwrap(), b"2");
        assert_refused(
            &tar(&[dir("d/"), file("d", b"x")]),
            "d",
            "replace a directory",
        );
        assert_refused(
            &tar(&[file("f", b"x"), file("f/g", b"x")]),
            "f/g",
            "`f` is not a directory",
        );
        // Sparse entries: refused (by the tar reader before they reach us).
        let err = Layer::new()
            .unpack(&tar(&[entry("s", b'S', "", 0o644, b"")]))
            .unwrap_err();
        assert!(err.reason.contains("sparse"), "{err}");
        // Garbage that is not a tar archive.
        let err = Layer::new().unpack(&[0x42u8; 1024]).unwrap_err();
        assert_eq!(err.entry, "-");
        // A corrupt gzip stream.
        let mut gz = gzip(&tar(&[file("a", &[7u8; 4096])]));
        let n = gz.len();
        gz[n / 2] ^= 0xff;
        assert!(Layer::new().unpack(&gz).is_err());
    }
}
