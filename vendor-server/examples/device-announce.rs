//! Writes a device's signed announce, bare canonical CBOR as an MQTT device
//! publishes it on `berth/announce/<vendor>/<serial>`, to a file: tests and
//! demos play an MQTT device with `mosquitto_pub -f FILE`.
//!
//! ```text
//! device-announce --out FILE [--vendor V] [--model M] [--serial S]
//!     [--firmware F] [--endpoint URL] [--seed HEX64] [--counter N]
//! device-announce --print-public-key [--seed HEX64]
//! ```
//!
//! The default seed is 32 bytes of 0x42 (the serial `fake-device`'s): a
//! test key, never a real one.

use std::process::ExitCode;

use protocol::announce::{public_key, AnnounceBuilder};

struct Args {
    out: Option<String>,
    vendor: String,
    model: String,
    serial: String,
    firmware: String,
    endpoint: String,
    seed: [u8; 32],
    counter: u64,
    print_key: bool,
}

fn parse_seed(hex: &str) -> Result<[u8; 32], String> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err(format!("--seed takes 64 hex digits, not {hex:?}"));
    }
    let mut seed = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|e| format!("--seed: {e}"))?;
        seed[i] = u8::from_str_radix(s, 16).map_err(|e| format!("--seed {hex:?}: {e}"))?;
    }
    Ok(seed)
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        out: None,
        vendor: "acme".into(),
        model: "Fake Meter".into(),
        serial: "FAKE-0001".into(),
        firmware: "1.0.0".into(),
        endpoint: "https://provision.acme.example/berth".into(),
        seed: [0x42; 32],
        counter: 1,
        print_key: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--out" => a.out = Some(value()?),
            "--vendor" => a.vendor = value()?,
            "--model" => a.model = value()?,
            "--serial" => a.serial = value()?,
            "--firmware" => a.firmware = value()?,
            "--endpoint" => a.endpoint = value()?,
            "--seed" => a.seed = parse_seed(&value()?)?,
            "--counter" => {
                let v = value()?;
                a.counter = v.parse().map_err(|e| format!("--counter {v:?}: {e}"))?
            }
            "--print-public-key" => a.print_key = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn run() -> Result<(), String> {
    let a = parse_args()?;
    if a.print_key {
        let pk = public_key(&a.seed);
        println!(
            "{}",
            pk.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        return Ok(());
    }
    let out = a
        .out
        .as_deref()
        .ok_or("usage: device-announce --out FILE [options]")?;
    let b = AnnounceBuilder::new(
        &a.vendor,
        &a.model,
        &a.serial,
        &a.firmware,
        &a.endpoint,
        a.counter,
    );
    let mut buf = [0u8; 512];
    let n = b
        .encode_signed(&a.seed, &mut buf)
        .map_err(|e| format!("encode the announce: {e}"))?;
    std::fs::write(out, &buf[..n]).map_err(|e| format!("write {out}: {e}"))?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("device-announce: {e}");
            ExitCode::from(2)
        }
    }
}
