//! A fake Berth end device on a serial port (or any read/write path, such as
//! one end of a `socat` pseudo-terminal pair).
//!
//! It answers every `Hello { nonce }` with a signed announce echoing the
//! nonce, and with `--announce-at-start` also sends one unsolicited announce
//! when it starts. The counter goes up by one per announce. It prints
//! `ready` on stdout once the port is open, logs to stderr, and exits when
//! the port reaches end of file.
//!
//! ```text
//! fake-device PATH [--vendor V] [--model M] [--serial S] [--firmware F]
//!     [--endpoint URL] [--caps a,b] [--seed HEX64] [--counter N]
//!     [--public-key] [--announce-at-start] [--garbage]
//! fake-device --print-public-key [--seed HEX64]
//! ```
//!
//! `--garbage` writes a few bytes of line noise before each frame, to
//! exercise a receiver's resynchronisation. The default seed is 32 bytes of
//! 0x42: a test key, never a real one.

use std::io::{Read, Write};
use std::process::ExitCode;

use protocol::announce::{public_key, AnnounceBuilder};
use protocol::frame::{encode_frame, FrameDecoder, MAX_FRAME, MAX_WIRE};
use protocol::message::{encode_signed_announce, Message};

struct Args {
    path: Option<String>,
    vendor: String,
    model: String,
    serial: String,
    firmware: String,
    endpoint: String,
    caps: Vec<String>,
    seed: [u8; 32],
    counter: u64,
    public_key: bool,
    at_start: bool,
    garbage: bool,
    print_key: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        path: None,
        vendor: "acme".into(),
        model: "Fake Meter".into(),
        serial: "FAKE-0001".into(),
        firmware: "1.0.0".into(),
        endpoint: "https://provision.acme.example/berth".into(),
        caps: vec!["temperature".into()],
        seed: [0x42; 32],
        counter: 1,
        public_key: false,
        at_start: false,
        garbage: false,
        print_key: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--vendor" => a.vendor = value()?,
            "--model" => a.model = value()?,
            "--serial" => a.serial = value()?,
            "--firmware" => a.firmware = value()?,
            "--endpoint" => a.endpoint = value()?,
            "--caps" => {
                a.caps = value()?
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(String::from)
                    .collect()
            }
            "--seed" => a.seed = parse_seed(&value()?)?,
            "--counter" => a.counter = value()?.parse().map_err(|e| format!("--counter: {e}"))?,
            "--public-key" => a.public_key = true,
            "--announce-at-start" => a.at_start = true,
            "--garbage" => a.garbage = true,
            "--print-public-key" => a.print_key = true,
            p if !p.starts_with("--") && a.path.is_none() => a.path = Some(p.into()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn parse_seed(hex: &str) -> Result<[u8; 32], String> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err("--seed takes 64 hex digits".into());
    }
    let mut seed = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
        seed[i] = u8::from_str_radix(s, 16).map_err(|e| format!("--seed: {e}"))?;
    }
    Ok(seed)
}

fn send_announce(
    port: &mut std::fs::File,
    a: &Args,
    counter: u64,
    challenge: Option<u64>,
) -> Result<(), String> {
    let caps: Vec<&str> = a.caps.iter().map(String::as_str).collect();
    let mut b = AnnounceBuilder::new(
        &a.vendor,
        &a.model,
        &a.serial,
        &a.firmware,
        &a.endpoint,
        counter,
    )
    .capabilities(&caps)
    .include_public_key(a.public_key);
    b.challenge = challenge;
    let mut msg = [0u8; MAX_FRAME + 32];
    let n = encode_signed_announce(&b, &a.seed, &mut msg).map_err(|e| e.to_string())?;
    let mut wire = [0u8; MAX_WIRE];
    let w = encode_frame(&msg[..n], &mut wire).map_err(|e| e.to_string())?;
    if a.garbage {
        port.write_all(&[0x13, 0x37, 0xff, 0x00])
            .map_err(|e| format!("write: {e}"))?;
    }
    port.write_all(&wire[..w])
        .and_then(|()| port.flush())
        .map_err(|e| format!("write: {e}"))?;
    eprintln!("fake-device: sent announce counter={counter} challenge={challenge:?}");
    Ok(())
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
    let path = a.path.clone().ok_or("usage: fake-device PATH [options]")?;
    let mut port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("open {path}: {e}"))?;
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut counter = a.counter;
    if a.at_start {
        send_announce(&mut port, &a, counter, None)?;
        counter += 1;
    }
    let mut dec = FrameDecoder::<MAX_FRAME>::new();
    let mut buf = [0u8; 256];
    loop {
        let n = match port.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A pty whose other end closed reports EIO: that is our EOF.
            Err(e) if e.raw_os_error() == Some(5) => return Ok(()),
            Err(e) => return Err(format!("read {path}: {e}")),
        };
        for &byte in &buf[..n] {
            let reply = match dec.push(byte) {
                None => continue,
                Some(Err(e)) => {
                    eprintln!("fake-device: dropped frame: {e}");
                    continue;
                }
                Some(Ok(frame)) => match Message::decode(frame) {
                    Ok(Message::Hello { nonce }) => Some(nonce),
                    Ok(Message::Ack { counter }) => {
                        eprintln!("fake-device: ack for counter {counter}");
                        None
                    }
                    Ok(Message::Announce(_)) => None,
                    Err(e) => {
                        eprintln!("fake-device: dropped message: {e}");
                        None
                    }
                },
            };
            if let Some(nonce) = reply {
                send_announce(&mut port, &a, counter, Some(nonce))?;
                counter += 1;
            }
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-device: {e}");
            ExitCode::FAILURE
        }
    }
}
