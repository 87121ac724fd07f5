//! The local API: `berth` talks to `berthd` over a unix socket
//! (`<state dir>/berthd.sock`, mode 0600) that only root may use. Each
//! connection carries one request and one response, each a frame: a 4-byte
//! big-endian length, then that many bytes of JSON. The server checks the
//! peer's credentials (`SO_PEERCRED`, unix(7)) and refuses any uid but 0,
//! whatever the file mode says; the uid and pid go into the audit log with
//! every decision.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest frame accepted either way.
pub const MAX_FRAME: u32 = 1 << 20;

/// A request of `berth` to `berthd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Requests waiting for approval.
    Pending,
    /// Approve a request.
    Approve {
        /// Request id.
        id: u64,
    },
    /// Deny a request.
    Deny {
        /// Request id.
        id: u64,
        /// Why, for the audit log and the vendor.
        reason: Option<String>,
    },
    /// Auto-approve a vendor's new devices for a while.
    Pair {
        /// Vendor id.
        vendor: String,
        /// Window length in seconds.
        secs: u64,
    },
    /// Every known device and where it stands.
    Devices,
    /// The jails berthd manages.
    Jails,
    /// Daemon status.
    Status,
    /// A jail's console log.
    Logs {
        /// Jail name.
        jail: String,
    },
    /// Remove a jail and forget its device's plan, so that the device is
    /// provisioned anew when it shows again.
    JailReset {
        /// Jail name.
        jail: String,
    },
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    /// Done; `data` is what the command shows.
    Ok {
        /// Command output.
        data: serde_json::Value,
    },
    /// Refused or failed.
    Error {
        /// `true` when the input was wrong (exit 2), else a failure (1).
        usage: bool,
        /// One line, lowercase.
        message: String,
    },
}

impl Response {
    /// A refusal for bad input.
    pub fn usage(message: impl Into<String>) -> Response {
        Response::Error {
            usage: true,
            message: message.into(),
        }
    }
    /// A failure while acting.
    pub fn failure(message: impl Into<String>) -> Response {
        Response::Error {
            usage: false,
            message: message.into(),
        }
    }
}

/// A frame that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// I/O on the socket.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// Too large.
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(u32),
    /// Not the JSON expected.
    #[error("bad frame: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads one frame and decodes it.
pub async fn read_frame<T: for<'de> Deserialize<'de>, R: AsyncReadExt + Unpin>(
    r: &mut R,
) -> Result<T, FrameError> {
    let len = r.read_u32().await?;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut buf = vec![0; len as usize];
    r.read_exact(&mut buf).await?;
    Ok(serde_json::from_slice(&buf)?)
}

/// Encodes and writes one frame.
pub async fn write_frame<T: Serialize, W: AsyncWriteExt + Unpin>(
    w: &mut W,
    v: &T,
) -> Result<(), FrameError> {
    let buf = serde_json::to_vec(v)?;
    let len = u32::try_from(buf.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME)
        .ok_or(FrameError::TooLarge(u32::MAX))?;
    w.write_u32(len).await?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Who is asking: from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Peer uid.
    pub uid: u32,
    /// Peer pid, when the kernel tells it.
    pub pid: Option<i32>,
}

impl Peer {
    /// How the audit log names the peer.
    pub fn who(&self) -> String {
        match self.pid {
            Some(p) => format!("uid={} pid={p}", self.uid),
            None => format!("uid={}", self.uid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversize_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let req = Request::Deny {
            id: 3,
            reason: Some("wrong site".into()),
        };
        write_frame(&mut a, &req).await.unwrap();
        let got: Request = read_frame(&mut b).await.unwrap();
        assert_eq!(got, req);
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(json, r#"{"op":"deny","id":3,"reason":"wrong site"}"#);
        a.write_u32(MAX_FRAME + 1).await.unwrap();
        let e = read_frame::<Request, _>(&mut b).await.unwrap_err();
        assert!(matches!(e, FrameError::TooLarge(_)), "{e}");
    }
}
