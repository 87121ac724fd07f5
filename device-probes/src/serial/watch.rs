//! The inotify(7) fallback for hotplug: watches directories such as
//! `/dev/serial/by-id` (or the parent of a port named with `--serial`) for
//! entries appearing and disappearing. Used where no uevent socket can be
//! had (containers without udev) and for explicitly named paths.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

/// Why a watch could not be set up or read.
#[derive(Debug, thiserror::Error)]
#[error("inotify on {path}: {source}")]
pub struct WatchError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

#[derive(Debug)]
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl AsFd for Fd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A set of watched directories.
#[derive(Debug)]
pub struct DirWatch {
    fd: AsyncFd<Fd>,
    dirs: Vec<PathBuf>,
}

impl DirWatch {
    /// Watches each directory that exists for entries created, deleted or
    /// moved. Needs a tokio runtime with I/O enabled.
    pub fn new(dirs: &[PathBuf]) -> Result<DirWatch, WatchError> {
        let first = dirs.first().cloned().unwrap_or_default();
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|e| {
            WatchError {
                path: first,
                source: e.into(),
            }
        })?;
        let mut watched = Vec::new();
        for d in dirs {
            match ino.add_watch(
                d.as_path(),
                AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_ATTRIB
                    | AddWatchFlags::IN_ONLYDIR,
            ) {
                Ok(_) => watched.push(d.clone()),
                Err(e) => {
                    // A by-id directory is absent until the first USB
                    // serial device appears; uevents cover that case.
                    tracing::debug!(dir = %d.display(), error = %e, "not watching directory");
                }
            }
        }
        let path = Path::new("inotify").to_path_buf();
        // `AsyncFd::new` is deprecated because a type whose `as_raw_fd`
        // changes or closes under it would break the registration; this one
        // owns its descriptor until the AsyncFd is dropped. The safe call
        // keeps this crate free of `unsafe`.
        #[allow(deprecated)]
        let fd = AsyncFd::new(Fd(ino)).map_err(|source| WatchError { path, source })?;
        Ok(DirWatch { fd, dirs: watched })
    }

    /// The directories actually watched.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Waits until something changed in a watched directory and returns
    /// the names involved. Cancel-safe: events are consumed only by the
    /// synchronous read after readiness.
    pub async fn changed(&self) -> Result<Vec<String>, WatchError> {
        loop {
            let mut guard = self.fd.readable().await.map_err(|source| WatchError {
                path: PathBuf::from("inotify"),
                source,
            })?;
            match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from)) {
                Ok(Ok(evs)) => {
                    return Ok(evs
                        .into_iter()
                        .filter_map(|e| e.name.map(|n| n.to_string_lossy().into_owned()))
                        .collect())
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Ok(Err(source)) => {
                    return Err(WatchError {
                        path: PathBuf::from("inotify"),
                        source,
                    })
                }
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sees_links_appear_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let w = DirWatch::new(&[dir.path().to_owned(), dir.path().join("absent")]).unwrap();
        assert_eq!(w.dirs(), &[dir.path().to_owned()]);
        std::os::unix::fs::symlink("/dev/null", dir.path().join("usb-acme-if00")).unwrap();
        let names = tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(names, vec!["usb-acme-if00".to_owned()]);
        std::fs::remove_file(dir.path().join("usb-acme-if00")).unwrap();
        let names = tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(names, vec!["usb-acme-if00".to_owned()]);
    }
}
