//! Reading and writing cgroupfs control files, with errors that name the
//! file. Writes never create files: a control file that is missing means the
//! kernel lacks the feature, and a test tree must say so the same way.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use crate::Error;

/// Reads a whole control file.
pub(crate) fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a control file that may be absent on this kernel.
pub(crate) fn read_opt(path: &Path) -> Result<Option<String>, Error> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `value` to an existing control file in one `write(2)`, as the
/// kernel parses each write on its own (cgroups(7)).
pub(crate) fn write(path: &Path, value: &str) -> Result<(), Error> {
    let res = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    res.map_err(|source| Error::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// A control file kept open for several writes, each a single write(2)
/// (for files such as v1 `devices.allow` that take one entry per write).
pub(crate) struct Writer {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl Writer {
    pub(crate) fn open(path: &Path) -> Result<Writer, Error> {
        let file = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(|source| Error::Write {
                path: path.to_path_buf(),
                value: String::new(),
                source,
            })?;
        Ok(Writer {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Writes `value` in one write(2); a short write is an error.
    pub(crate) fn write(&mut self, value: &str) -> Result<(), Error> {
        let err = |source| Error::Write {
            path: self.path.clone(),
            value: value.to_string(),
            source,
        };
        match self.file.write(value.as_bytes()) {
            Ok(n) if n == value.len() => Ok(()),
            Ok(_) => Err(err(std::io::Error::other("short write"))),
            Err(e) => Err(err(e)),
        }
    }
}

/// Parses a file that holds one unsigned number.
pub(crate) fn read_u64(path: &Path) -> Result<u64, Error> {
    parse_u64(path, &read(path)?)
}

/// Like [`read_u64`] for a file that may be absent.
pub(crate) fn read_u64_opt(path: &Path) -> Result<Option<u64>, Error> {
    read_opt(path)?.map(|s| parse_u64(path, &s)).transpose()
}

pub(crate) fn parse_u64(path: &Path, text: &str) -> Result<u64, Error> {
    let t = text.trim();
    t.parse::<u64>().map_err(|_| Error::Parse {
        path: path.to_path_buf(),
        reason: format!("expected an unsigned number, found {t:?}"),
    })
}

/// Finds `key value` in a flat-keyed file such as `memory.events`,
/// `cpu.stat` or `memory.oom_control`.
pub(crate) fn keyed(path: &Path, text: &str, key: &str) -> Result<Option<u64>, Error> {
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if it.next() == Some(key) {
            let v = it.next().unwrap_or("");
            return parse_u64(path, v).map(Some);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_finds_value_and_reports_bad_numbers() {
        let p = Path::new("memory.events");
        let text = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\n";
        assert_eq!(keyed(p, text, "oom_kill").unwrap(), Some(2));
        assert_eq!(keyed(p, text, "oom").unwrap(), Some(3));
        assert_eq!(keyed(p, text, "missing").unwrap(), None);
        assert!(keyed(p, "oom_kill x\n", "oom_kill").is_err());
    }

    #[test]
    fn write_does_not_create_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("memory.max");
        let err = write(&p, "1").unwrap_err();
        assert!(matches!(err, Error::Write { .. }), "{err}");
        assert!(!p.exists());
        fs::write(&p, "old value that is long").unwrap();
        write(&p, "42").unwrap();
        assert_eq!(read_u64(&p).unwrap(), 42);
    }
}
