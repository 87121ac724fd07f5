//! `berth detect`: run the detection sources for a while and print every
//! device event as it happens.
//!
//! Sources: serial when `--serial` or `--sysfs` is given (or when no source
//! is named at all: then the USB serial ports of this machine), MQTT with
//! `--mqtt`, BLE with `--ble`. Without `--rules` every device a source can
//! identify is shown (Home Assistant and Zigbee2MQTT included); a rules file
//! only narrows that, and is what lets Berth open a USB serial port by
//! itself. Output is a table for people, or JSON lines with `--json`. A
//! source that cannot start prints one line on stderr; the others go on.
//!
//! `--mqtt` takes `HOST:PORT`, `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`
//! (TLS with `--mqtt-ca`, optionally `--mqtt-cert`/`--mqtt-key`, and
//! `--mqtt-user` with `--mqtt-password-file`). `--ignore-file FILE` is the
//! technician's list of device ids not to show (one a line); `--ignore ID`
//! and `--unignore ID` edit that list (saved atomically) before detection
//! starts, so `berth detect --ignore-file F --ignore acme:SN-1 --for 0`
//! only edits it. Announces are checked for replays (an older counter of a
//! device already seen in this run is dropped and counted as `replay`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use device_probes::announce::KeyRing;
use device_probes::event::{Device, DeviceEvent, Drops, Identity};
use device_probes::merger::{self, Emitter, Merger};
use device_probes::replay::ReplayGuard;
use device_probes::rules::{IgnoreList, Rules};
use device_probes::{ble, mqtt, serial};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Options of `berth detect`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DetectArgs {
    /// Open and query this serial port whatever its USB ids (repeatable)
    #[arg(long = "serial", value_name = "PATH")]
    pub serial: Vec<PathBuf>,
    /// Enumerate USB serial ports from this sysfs root instead of /sys
    #[arg(long, value_name = "ROOT")]
    pub sysfs: Option<PathBuf>,
    /// Directory holding the serial device nodes named in sysfs
    #[arg(long, value_name = "DIR", default_value = "/dev")]
    pub dev: PathBuf,
    /// Watch this MQTT broker for announces, Home Assistant and Zigbee2MQTT
    /// (HOST:PORT, mqtt://HOST[:PORT] or mqtts://HOST[:PORT] for TLS)
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
    /// CA certificates (PEM) the mqtts:// broker's certificate must chain to
    #[arg(long, value_name = "FILE")]
    pub mqtt_ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for an mqtts:// broker that asks for one
    #[arg(long, value_name = "FILE", requires = "mqtt_key")]
    pub mqtt_cert: Option<PathBuf>,
    /// Private key (PEM) of --mqtt-cert
    #[arg(long, value_name = "FILE", requires = "mqtt_cert")]
    pub mqtt_key: Option<PathBuf>,
    /// Username for the MQTT broker
    #[arg(long, value_name = "NAME", requires = "mqtt_password_file")]
    pub mqtt_user: Option<String>,
    /// File whose first line is the MQTT password (kept off the command line)
    #[arg(long, value_name = "FILE", requires = "mqtt_user")]
    pub mqtt_password_file: Option<PathBuf>,
    /// Scan for BLE devices through BlueZ
    #[arg(long)]
    pub ble: bool,
    /// Vendor rules (TOML): narrow detection and map devices to vendors
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// Print one JSON object per event instead of a table
    #[arg(long)]
    pub json: bool,
    /// Stop after this many seconds (default: until Ctrl-C)
    #[arg(long = "for", value_name = "SECONDS")]
    pub duration: Option<u64>,
    /// Device ids not to show, one a line (the persistent ignore list)
    #[arg(long, value_name = "FILE")]
    pub ignore_file: Option<PathBuf>,
    /// Add this device id to --ignore-file (repeatable)
    #[arg(long = "ignore", value_name = "ID", requires = "ignore_file")]
    pub ignore: Vec<String>,
    /// Remove this device id from --ignore-file (repeatable)
    #[arg(long = "unignore", value_name = "ID", requires = "ignore_file")]
    pub unignore: Vec<String>,
}

/// The MQTT source's configuration from the command line.
pub fn mqtt_config(args: &DetectArgs, url: &str) -> anyhow::Result<mqtt::MqttConfig> {
    let broker = mqtt::parse_url(url)?;
    let mut cfg = mqtt::MqttConfig::new(&broker.host, broker.port);
    match (&args.mqtt_ca, broker.tls) {
        (Some(ca), true) => {
            cfg.tls = Some(mqtt::TlsFiles {
                ca: ca.clone(),
                cert: args.mqtt_cert.clone(),
                key: args.mqtt_key.clone(),
            })
        }
        (None, true) => anyhow::bail!("{url}: an mqtts:// broker needs --mqtt-ca FILE"),
        (Some(_), false) => {
            anyhow::bail!("--mqtt-ca is for an mqtts:// broker, and {url} is not one")
        }
        (None, false) if args.mqtt_cert.is_some() => {
            anyhow::bail!("--mqtt-cert is for an mqtts:// broker, and {url} is not one")
        }
        (None, false) => {}
    }
    if let (Some(user), Some(file)) = (&args.mqtt_user, &args.mqtt_password_file) {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read mqtt password file {}", file.display()))?;
        let password = text.lines().next().unwrap_or("").to_owned();
        cfg.credentials = Some((user.clone(), password));
    }
    Ok(cfg)
}

/// Applies `--ignore` and `--unignore` to the ignore file and returns the
/// list (empty without `--ignore-file`).
pub fn ignore_list(args: &DetectArgs, err: &mut dyn Write) -> anyhow::Result<Vec<String>> {
    let Some(path) = &args.ignore_file else {
        return Ok(Vec::new());
    };
    let mut list = IgnoreList::load(path)?;
    for id in &args.ignore {
        if list.add(id)? {
            let _ = writeln!(
                err,
                "berth detect: {id} is now ignored ({})",
                path.display()
            );
        }
    }
    for id in &args.unignore {
        if list.remove(id)? {
            let _ = writeln!(
                err,
                "berth detect: {id} is no longer ignored ({})",
                path.display()
            );
        } else {
            let _ = writeln!(err, "berth detect: {id} was not on the ignore list");
        }
    }
    Ok(list.ids().map(str::to_owned).collect())
}

/// Runs `berth detect` on stdout and stderr. Builds its own current-thread
/// runtime.
pub fn run(args: DetectArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    run_to(args, &mut out, &mut err)
}

/// [`run`] with the output streams as parameters.
pub fn run_to(
    args: DetectArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let rules = match &args.rules {
        Some(p) => Rules::load(p)?,
        None => Rules::default(),
    };
    let ignored = ignore_list(&args, err)?;
    if args.duration == Some(0) {
        // Only the ignore list was to be edited.
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(detect(args, Arc::new(rules), ignored, out, err))
}

type SourceResult = (&'static str, Result<(), String>);

async fn detect(
    args: DetectArgs,
    rules: Arc<Rules>,
    ignored: Vec<String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let drops = Arc::new(Drops::default());
    let (stx, srx) = mpsc::channel(1024);
    let (dtx, mut drx) = mpsc::channel(256);
    let (stop, stop_rx) = watch::channel(false);
    let merger_task = tokio::spawn(merger::run(
        Merger::new(drops.clone()).with_ignored(ignored),
        srx,
        dtx,
    ));
    // One replay guard for every source: a device has one counter.
    let keys = KeyRing::default().with_replay(Arc::new(ReplayGuard::in_memory()));
    let emitter = Emitter::new(stx, drops.clone());
    let mut sources: JoinSet<SourceResult> = JoinSet::new();

    let want_serial =
        !args.serial.is_empty() || args.sysfs.is_some() || (args.mqtt.is_none() && !args.ble);
    if want_serial {
        let mut cfg = serial::SerialConfig {
            explicit: args.serial.clone(),
            dev_dir: args.dev.clone(),
            rules: rules.clone(),
            keys: keys.clone(),
            ..serial::SerialConfig::default()
        };
        if let Some(root) = &args.sysfs {
            cfg.sysfs_root = root.clone();
        }
        let (e, s) = (emitter.clone(), stop_rx.clone());
        sources.spawn(async move {
            (
                "serial",
                serial::run(cfg, e, s).await.map_err(|e| e.to_string()),
            )
        });
    }
    if let Some(addr) = &args.mqtt {
        match mqtt_config(&args, addr) {
            Ok(mut cfg) => {
                cfg.rules = rules.clone();
                cfg.keys = keys.clone();
                let (e, s) = (emitter.clone(), stop_rx.clone());
                sources.spawn(async move {
                    (
                        "mqtt",
                        mqtt::run(cfg, e, s).await.map_err(|e| e.to_string()),
                    )
                });
            }
            Err(e) => {
                let _ = writeln!(err, "berth detect: mqtt source not started: {e:#}");
            }
        }
    }
    if args.ble {
        let cfg = ble::BleConfig {
            rules: rules.clone(),
            keys: keys.clone(),
            ..ble::BleConfig::default()
        };
        let (e, s) = (emitter.clone(), stop_rx.clone());
        sources.spawn(async move { ("ble", ble::run(cfg, e, s).await.map_err(|e| e.to_string())) });
    }
    drop(emitter);
    if sources.is_empty() {
        let _ = writeln!(err, "berth detect: no source could start");
        return Ok(ExitCode::from(crate::EXIT_FAILURE));
    }

    if !args.json {
        write_or_quit(out, &table_header())?;
    }
    let deadline = tokio::time::sleep(
        args.duration
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(u64::from(u32::MAX))),
    );
    tokio::pin!(deadline);
    let mut failed = 0usize;
    let mut running = sources.len();
    let code = loop {
        // Cancel-safe: recv, join_next, the timer and ctrl_c lose nothing
        // when another branch wins.
        tokio::select! {
            ev = drx.recv() => {
                let Some(ev) = ev else { break ExitCode::SUCCESS };
                let line = if args.json { json_line(&ev, SystemTime::now()) } else { table_line(&ev, SystemTime::now()) };
                if !write_or_quit(out, &line)? {
                    break ExitCode::SUCCESS;
                }
            }
            done = sources.join_next(), if running > 0 => {
                running -= 1;
                match done {
                    Some(Ok((name, Err(e)))) => {
                        failed += 1;
                        let _ = writeln!(err, "berth detect: {name} source failed: {e}");
                    }
                    Some(Err(e)) => {
                        failed += 1;
                        let _ = writeln!(err, "berth detect: a source stopped: {e}");
                    }
                    _ => {}
                }
                if running == 0 && failed > 0 {
                    break ExitCode::from(crate::EXIT_FAILURE);
                }
            }
            _ = &mut deadline => break ExitCode::SUCCESS,
            _ = tokio::signal::ctrl_c() => break ExitCode::SUCCESS,
        }
    };
    let _ = stop.send(true);
    // Sources report their devices gone on the way out; that is shutdown,
    // not news, so it is not printed.
    let drain = async { while sources.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(drain, async { while drx.recv().await.is_some() {} });
    })
    .await;
    merger_task.abort();
    let dropped = drops.snapshot();
    if !dropped.is_empty() {
        let list: Vec<String> = dropped.iter().map(|(r, n)| format!("{r}={n}")).collect();
        let _ = writeln!(err, "berth detect: input dropped: {}", list.join(" "));
    }
    let _ = out.flush();
    Ok(code)
}

/// Writes a line; false when the reader went away (a closed pipe).
fn write_or_quit(out: &mut dyn Write, line: &str) -> anyhow::Result<bool> {
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("cannot write to standard output"),
    }
}

fn parts(ev: &DeviceEvent) -> (&'static str, &Device) {
    match ev {
        DeviceEvent::Seen(d) => ("seen", d),
        DeviceEvent::Updated(d) => ("updated", d),
        DeviceEvent::Gone(d) => ("gone", d),
    }
}

const COLUMNS: [(&str, usize); 9] = [
    ("TIME", 20),
    ("EVENT", 7),
    ("ID", 28),
    ("TRANSPORT", 9),
    ("VENDOR", 10),
    ("MODEL", 16),
    ("SERIAL", 18),
    ("FIRMWARE", 10),
    ("ADDRESS", 0),
];

fn row(cells: &[String]) -> String {
    let mut s = String::new();
    for (i, (cell, (_, w))) in cells.iter().zip(COLUMNS.iter()).enumerate() {
        if i > 0 {
            s.push(' ');
        }
        if *w == 0 {
            s.push_str(cell);
        } else {
            s.push_str(&format!("{cell:<w$}", w = *w));
        }
    }
    s.trim_end().to_owned()
}

/// The table's header line.
pub fn table_header() -> String {
    row(&COLUMNS
        .iter()
        .map(|(h, _)| (*h).to_owned())
        .collect::<Vec<_>>())
}

fn dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".to_owned())
}

/// One table line for an event.
pub fn table_line(ev: &DeviceEvent, at: SystemTime) -> String {
    let (kind, d) = parts(ev);
    let transports: Vec<String> = d.seen_on.iter().map(|(t, _)| t.to_string()).collect();
    let addresses: Vec<&str> = d.seen_on.iter().map(|(_, a)| a.as_str()).collect();
    let model = d.identity.model.clone().or_else(|| {
        d.identity
            .usb
            .as_ref()
            .map(|u| format!("usb {:04x}:{:04x}", u.vid, u.pid))
    });
    row(&[
        rfc3339(at),
        kind.to_owned(),
        d.id.0.clone(),
        transports.join(","),
        dash(&d.identity.vendor),
        dash(&model),
        dash(&d.identity.serial_number),
        dash(&d.identity.firmware),
        addresses.join(","),
    ])
}

fn identity_json(i: &Identity) -> serde_json::Value {
    serde_json::json!({
        "vendor": i.vendor,
        "manufacturer": i.manufacturer,
        "model": i.model,
        "serial_number": i.serial_number,
        "firmware": i.firmware,
        "name": i.name,
        "capabilities": i.capabilities,
        "endpoint": i.endpoint,
        "usb": i.usb.as_ref().map(|u| serde_json::json!({
            "vid": format!("{:04x}", u.vid),
            "pid": format!("{:04x}", u.pid),
            "serial": u.serial,
            "manufacturer": u.manufacturer,
            "product": u.product,
        })),
        "ble_company_id": i.ble_company_id,
        "mac": i.mac,
        "verified": i.verified,
    })
}

/// One JSON line for an event, with every identity field.
pub fn json_line(ev: &DeviceEvent, at: SystemTime) -> String {
    let (kind, d) = parts(ev);
    let seen_on: Vec<serde_json::Value> = d
        .seen_on
        .iter()
        .map(|(t, a)| serde_json::json!({"transport": t.to_string(), "address": a}))
        .collect();
    serde_json::json!({
        "time": rfc3339(at),
        "event": kind,
        "id": d.id.0,
        "identity": identity_json(&d.identity),
        "seen_on": seen_on,
    })
    .to_string()
}

/// UTC time as `YYYY-MM-DDTHH:MM:SSZ` (days to civil date after Howard
/// Hinnant's `civil_from_days`).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use device_probes::event::{DeviceId, Transport, UsbIds};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: DetectArgs,
    }

    fn device() -> Device {
        Device {
            id: DeviceId("acme:SN-1".into()),
            identity: Identity {
                vendor: Some("acme".into()),
                model: Some("Fake Meter".into()),
                serial_number: Some("SN-1".into()),
                firmware: Some("1.0.0".into()),
                usb: Some(UsbIds {
                    vid: 0x0403,
                    pid: 0x6001,
                    serial: Some("A10K".into()),
                    ..UsbIds::default()
                }),
                ..Identity::default()
            },
            seen_on: vec![(Transport::Serial, "/dev/ttyUSB0".into())],
        }
    }

    #[test]
    fn parses_every_option() {
        let c = Cli::try_parse_from([
            "detect",
            "--serial",
            "/dev/ttyUSB0",
            "--serial",
            "/dev/ttyACM0",
            "--sysfs",
            "/tmp/sys",
            "--mqtt",
            "127.0.0.1:1883",
            "--ble",
            "--rules",
            "r.toml",
            "--json",
            "--for",
            "5",
        ])
        .unwrap();
        assert_eq!(c.args.serial.len(), 2);
        assert_eq!(c.args.duration, Some(5));
        assert!(c.args.ble && c.args.json);
        assert_eq!(c.args.dev, PathBuf::from("/dev"));
        assert!(Cli::try_parse_from(["detect", "--for", "soon"]).is_err());
    }

    #[test]
    fn time_formats_as_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn table_and_json_lines() {
        let ev = DeviceEvent::Seen(device());
        let line = table_line(&ev, UNIX_EPOCH);
        assert!(line.starts_with("1970-01-01T00:00:00Z seen"), "{line}");
        for part in [
            "acme:SN-1",
            "serial",
            "acme",
            "Fake Meter",
            "SN-1",
            "1.0.0",
            "/dev/ttyUSB0",
        ] {
            assert!(line.contains(part), "{part} missing in {line}");
        }
        assert!(table_header().starts_with("TIME"));
        let j: serde_json::Value = serde_json::from_str(&json_line(&ev, UNIX_EPOCH)).unwrap();
        assert_eq!(j["event"], "seen");
        assert_eq!(j["id"], "acme:SN-1");
        assert_eq!(j["identity"]["usb"]["vid"], "0403");
        assert_eq!(j["identity"]["usb"]["serial"], "A10K");
        assert_eq!(j["identity"]["verified"], false);
        assert_eq!(j["seen_on"][0]["transport"], "serial");
    }

    #[test]
    fn bad_rules_file_is_refused_with_line() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.toml");
        std::fs::write(
            &rules,
            "[[rule]]\nvendor = \"acme\"\nusb = { vid = 1, pid = 2 }\nspeed = 3\n",
        )
        .unwrap();
        let args = DetectArgs {
            rules: Some(rules),
            duration: Some(1),
            ..DetectArgs::default()
        };
        let e = run_to(args, &mut Vec::new(), &mut Vec::new()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("line 4") && msg.contains("speed"), "{msg}");
    }

    #[test]
    fn failing_source_reports_and_others_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        let mut err = Vec::new();
        let args = DetectArgs {
            // No such broker address: refused before start.
            mqtt: Some("no-port-here".into()),
            sysfs: Some(dir.path().to_owned()),
            dev: dir.path().to_owned(),
            duration: Some(1),
            ..DetectArgs::default()
        };
        let code = run_to(args, &mut out, &mut err).unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        let err = String::from_utf8(err).unwrap();
        assert_eq!(
            err.lines().filter(|l| l.contains("mqtt")).count(),
            1,
            "{err}"
        );
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("TIME"), "{out}");
    }
    #[test]
    fn mqtt_tls_and_ignore_options() {
        let c = Cli::try_parse_from([
            "detect",
            "--mqtt",
            "mqtts://broker.local",
            "--mqtt-ca",
            "ca.pem",
            "--mqtt-cert",
            "c.pem",
            "--mqtt-key",
            "c.key",
            "--mqtt-user",
            "gw",
            "--mqtt-password-file",
            "pw",
            "--ignore-file",
            "ignored",
            "--ignore",
            "acme:1",
            "--unignore",
            "acme:2",
        ])
        .unwrap();
        assert_eq!(c.args.mqtt_ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(c.args.ignore, vec!["acme:1"]);
        assert_eq!(c.args.unignore, vec!["acme:2"]);
        // A key without its certificate, a user without a password file,
        // --ignore without the file: refused by the parser.
        for bad in [
            &["detect", "--mqtt-key", "k"][..],
            &["detect", "--mqtt-user", "u"][..],
            &["detect", "--ignore", "acme:1"][..],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mqtt_config_from_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\nignored second line\n").unwrap();
        let args = DetectArgs {
            mqtt_ca: Some("ca.pem".into()),
            mqtt_user: Some("gw".into()),
            mqtt_password_file: Some(pw),
            ..DetectArgs::default()
        };
        let cfg = mqtt_config(&args, "mqtts://10.0.0.5").unwrap();
        assert_eq!((cfg.host.as_str(), cfg.port), ("10.0.0.5", 8883));
        assert_eq!(cfg.tls.unwrap().ca, PathBuf::from("ca.pem"));
        assert_eq!(cfg.credentials, Some(("gw".into(), "s3cret".into())));
        let e = mqtt_config(&DetectArgs::default(), "mqtts://h").unwrap_err();
        assert!(e.to_string().contains("--mqtt-ca"), "{e}");
        let e = mqtt_config(&args, "mqtt://h").unwrap_err();
        assert!(e.to_string().contains("not one"), "{e}");
        let plain = mqtt_config(&DetectArgs::default(), "127.0.0.1:1883").unwrap();
        assert!(plain.tls.is_none() && plain.credentials.is_none());
        assert!(mqtt_config(&DetectArgs::default(), "http://h:1").is_err());
    }

    /// A mosquitto on a loopback port, killed by its PID when dropped.
    struct Broker(std::process::Child);

    impl Drop for Broker {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn broker(dir: &std::path::Path) -> (Broker, u16) {
        for bin in ["mosquitto", "mosquitto_pub"] {
            let found = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).exists()))
                .unwrap_or(false);
            assert!(
                found,
                "precondition missing: {bin} (Debian mosquitto, mosquitto-clients)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let b = Broker(child);
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < end, "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        (b, port)
    }

    /// Publishes a retained, signed announce of acme/`serial`.
    fn retain_announce(dir: &std::path::Path, port: u16, serial: &str) {
        let mut buf = [0u8; 512];
        let n = protocol::AnnounceBuilder::new(
            "acme",
            "Meter 2",
            serial,
            "1.0",
            "https://p.acme.example",
            3,
        )
        .encode_signed(&[5; 32], &mut buf)
        .unwrap();
        let file = dir.join(format!("{serial}.cbor"));
        std::fs::write(&file, &buf[..n]).unwrap();
        let st = std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-r"])
            .args(["-t", &format!("berth/announce/acme/{serial}")])
            .arg("-f")
            .arg(&file)
            .status()
            .unwrap();
        assert!(st.success(), "mosquitto_pub failed");
    }

    #[test]
    fn ignored_devices_are_not_printed() {
        let dir = tempfile::tempdir().unwrap();
        let (_broker, port) = broker(dir.path());
        retain_announce(dir.path(), port, "KEEP-1");
        retain_announce(dir.path(), port, "SKIP-1");
        let list = dir.path().join("ignored");
        let run = |extra: &[&str]| {
            let mut argv = vec![
                "detect".to_owned(),
                "--mqtt".to_owned(),
                format!("127.0.0.1:{port}"),
                "--json".to_owned(),
                "--ignore-file".to_owned(),
                list.display().to_string(),
                "--for".to_owned(),
                "2".to_owned(),
            ];
            argv.extend(extra.iter().map(|s| (*s).to_owned()));
            let c = Cli::try_parse_from(argv).unwrap();
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = run_to(c.args, &mut out, &mut err).unwrap();
            assert_eq!(code, ExitCode::SUCCESS);
            (
                String::from_utf8(out).unwrap(),
                String::from_utf8(err).unwrap(),
            )
        };
        // The technician ignores one device: it is kept in the file and
        // not shown; the other one is.
        let (out, err) = run(&["--ignore", "acme:SKIP-1"]);
        assert!(out.contains("\"acme:KEEP-1\""), "{out}");
        assert!(!out.contains("SKIP-1"), "{out}");
        assert!(err.contains("acme:SKIP-1 is now ignored"), "{err}");
        assert!(err.contains("denied=1"), "{err}");
        assert_eq!(std::fs::read_to_string(&list).unwrap(), "acme:SKIP-1\n");
        // Without --ignore the file alone keeps hiding it.
        let (out, _) = run(&[]);
        assert!(
            out.contains("acme:KEEP-1") && !out.contains("SKIP-1"),
            "{out}"
        );
        // --unignore brings it back.
        let (out, err) = run(&["--unignore", "acme:SKIP-1"]);
        assert!(out.contains("\"acme:SKIP-1\""), "{out}");
        assert!(err.contains("no longer ignored"), "{err}");
        assert_eq!(std::fs::read_to_string(&list).unwrap(), "");
    }

    #[test]
    fn editing_the_ignore_list_alone_runs_no_source() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("ignored");
        let c = Cli::try_parse_from([
            "detect",
            "--ignore-file",
            list.to_str().unwrap(),
            "--ignore",
            "acme:9",
            "--for",
            "0",
        ])
        .unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(
            run_to(c.args, &mut out, &mut err).unwrap(),
            ExitCode::SUCCESS
        );
        assert!(out.is_empty());
        assert_eq!(std::fs::read_to_string(&list).unwrap(), "acme:9\n");
    }
}
