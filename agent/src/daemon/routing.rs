//! Routing devices to their vendor's jail.
//!
//! - Serial: the device's node is passed into the jail as
//!   [`super::jails::SERIAL_IN_JAIL`] and allowed in the jail's devices
//!   cgroup; nothing else of the host's `/dev` is (see
//!   [`super::jails::build_spec`]).
//! - MQTT: with `[mqtt_routing]` configured, each vendor with a running
//!   plan gets a broker user named after it, allowed only
//!   `berth/dev/<vendor>/#`. berthd writes mosquitto's `acl_file` and
//!   `password_file` (SHA-512 `$6$` entries) atomically and sends the broker
//!   SIGHUP (mosquitto.conf(5): it reloads both). The jail finds its
//!   credentials in `/etc/berth/mqtt.conf` of its own rootfs, with the
//!   broker's address: `[mqtt_routing] broker` as configured, where the
//!   host `gateway` stands for the jail's own bridge address on the host
//!   (a broker listening on the bridges is reached by every jail through
//!   its own bridge; berthd's firewall opens the broker's port, and only
//!   that port, from the vendor bridges to the host).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use protocol::provision::Plan;

use super::engine::Daemon;
use super::state::Stage;

/// Where a jail finds its broker credentials.
pub const CREDENTIALS_IN_JAIL: &str = "etc/berth/mqtt.conf";

/// The topic tree a vendor may use.
pub fn vendor_topic(vendor: &str) -> String {
    format!("berth/dev/{vendor}/#")
}

/// The broker address a jail is given: `broker` with the host `gateway`
/// replaced by the jail's bridge address on the host.
pub fn broker_for_jail(broker: &str, gateway: Option<std::net::Ipv4Addr>) -> String {
    let (scheme, rest) = match broker.strip_prefix("mqtt://") {
        Some(r) => ("mqtt://", r),
        None => ("", broker),
    };
    match (rest.strip_prefix("gateway:"), gateway) {
        (Some(port), Some(gw)) => format!("{scheme}{gw}:{port}"),
        _ => broker.to_string(),
    }
}

/// Writes the broker credentials into the new jail's upper dir (before the
/// jail starts); `gateway` is the jail's bridge address on the host. A
/// no-op without `[mqtt_routing]` or without network.
pub fn write_credentials(
    d: &Arc<Daemon>,
    plan: &Plan,
    jail: &str,
    gateway: Option<std::net::Ipv4Addr>,
) -> Result<(), String> {
    let Some(r) = &d.config().mqtt_routing else {
        return Ok(());
    };
    if !plan.jail.network.enabled {
        return Ok(());
    }
    let password = vendor_password(&d.config().state_dir, &plan.vendor)?;
    let upper = d
        .config()
        .state_dir
        .join(crate::jailcmd::OVERLAY_DIR)
        .join(jail)
        .join("upper");
    let file = upper.join(CREDENTIALS_IN_JAIL);
    let text = format!(
        "broker={}\nusername={}\npassword={password}\ntopic={}\n",
        broker_for_jail(&r.broker, gateway),
        plan.vendor,
        vendor_topic(&plan.vendor)
    );
    write_atomic(&file, text.as_bytes(), 0o600)
        .map_err(|e| format!("write {}: {e}", file.display()))
}

/// The vendor's broker password, made once and kept in the state dir.
fn vendor_password(state_dir: &Path, vendor: &str) -> Result<String, String> {
    let file = state_dir.join("mqtt").join(format!("{vendor}.pass"));
    if let Ok(p) = std::fs::read_to_string(&file) {
        if !p.trim().is_empty() {
            return Ok(p.trim().to_string());
        }
    }
    let mut bytes = [0u8; 18];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "no randomness for a broker password".to_string())?;
    let p = super::config::hex(&bytes);
    write_atomic(&file, p.as_bytes(), 0o600)
        .map_err(|e| format!("write {}: {e}", file.display()))?;
    Ok(p)
}

/// Rewrites the ACL and password files for the vendors with running plans
/// and asks the broker to reload. Errors are logged.
pub async fn refresh(d: &Arc<Daemon>) {
    let Some(r) = d.config().mqtt_routing.clone() else {
        return;
    };
    let items = match d.store().call(|s| s.items()).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "mqtt routing: cannot read the store");
            return;
        }
    };
    let mut vendors: Vec<String> = items
        .into_iter()
        .filter(|i| {
            matches!(i.stage, Stage::Running | Stage::RolledBack) && i.current_jail.is_some()
        })
        .map(|i| i.device.vendor)
        .collect();
    vendors.sort();
    vendors.dedup();
    let state_dir = d.config().state_dir.clone();
    let res = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut acl =
            String::from("# written by berthd: one user per vendor, its own topics only\n");
        let mut pw = String::new();
        for v in &vendors {
            let _ = writeln!(acl, "\nuser {v}\ntopic readwrite {}", vendor_topic(v));
            let p = vendor_password(&state_dir, v)?;
            let _ = writeln!(pw, "{v}:{}", sha512_entry(&p)?);
        }
        write_atomic(&r.acl_file, acl.as_bytes(), 0o644)
            .map_err(|e| format!("write {}: {e}", r.acl_file.display()))?;
        write_atomic(&r.password_file, pw.as_bytes(), 0o600)
            .map_err(|e| format!("write {}: {e}", r.password_file.display()))?;
        if let Some(pidf) = &r.pid_file {
            let pid: i32 = std::fs::read_to_string(pidf)
                .map_err(|e| format!("read {}: {e}", pidf.display()))?
                .trim()
                .parse()
                .map_err(|_| format!("{} holds no pid", pidf.display()))?;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGHUP,
            )
            .map_err(|e| format!("signal broker pid {pid}: {e}"))?;
        }
        Ok(())
    })
    .await;
    match res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = e.as_str(), "mqtt routing not updated"),
        Err(e) => tracing::warn!(error = %e, "mqtt routing task failed"),
    }
}

/// A mosquitto `$6$` password entry: base64 salt, base64 SHA-512 of
/// password then salt.
pub fn sha512_entry(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| "no randomness for a salt".to_string())?;
    Ok(sha512_entry_with(password, &salt))
}

fn sha512_entry_with(password: &str, salt: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
    ctx.update(password.as_bytes());
    ctx.update(salt);
    format!("$6${}${}", base64(salt), base64(ctx.finish().as_ref()))
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Temp file, fsync, rename, fsync the directory (STYLE §5). When `path`
/// exists, the new file keeps its owner and mode (the broker may read its
/// files as its own user); else it is root's with `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let keep = std::fs::metadata(path).ok();
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        if let Some(m) = &keep {
            std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
            f.set_permissions(std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
        }
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jail_is_given_its_own_gateway_for_the_broker() {
        let gw = Some(std::net::Ipv4Addr::new(10, 77, 3, 1));
        assert_eq!(broker_for_jail("gateway:1883", gw), "10.77.3.1:1883");
        assert_eq!(
            broker_for_jail("mqtt://gateway:8883", gw),
            "mqtt://10.77.3.1:8883"
        );
        assert_eq!(broker_for_jail("10.9.9.9:1883", gw), "10.9.9.9:1883");
        // Without a network there is no gateway to name.
        assert_eq!(broker_for_jail("gateway:1883", None), "gateway:1883");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn password_entries_are_salted_sha512() {
        let e = sha512_entry_with("pw", b"salt");
        // sha512("pwsalt"), checked with coreutils:
        // printf pwsalt | sha512sum | xxd -r -p | base64 -w0
        assert!(e.starts_with("$6$c2FsdA==$"), "{e}");
        assert_eq!(e.len(), "$6$c2FsdA==$".len() + 88);
        assert_ne!(sha512_entry("pw").unwrap(), sha512_entry("pw").unwrap());
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("sub/acl");
        write_atomic(&f, b"one", 0o600).unwrap();
        write_atomic(&f, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "two");
        assert_eq!(std::fs::read_dir(d.path().join("sub")).unwrap().count(), 1);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&f, b"three", 0o600).unwrap();
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "an existing file keeps its mode");
    }
}
