//! The MQTT source over TLS (`mqtts://`) against a real mosquitto TLS
//! listener, with certificates made in the test (rcgen): a CA, a server
//! certificate for 127.0.0.1, a client certificate the broker requires,
//! and a username and password. A source that trusts another CA, or gives
//! the wrong password, must see nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use device_probes::event::DeviceEvent;
use device_probes::mqtt::{self, MqttConfig, TlsFiles};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};

const T: Duration = Duration::from_secs(20);

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A CA the broker's certificate does not chain to.
    other_ca: PathBuf,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("berth test ca {name}"));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = p.clone().self_signed(&key).unwrap();
    (p, key, cert.pem())
}

fn pki(dir: &Path) -> Pki {
    let (ca_params, ca_key, ca_pem) = ca("main");
    let issuer = Issuer::new(ca_params, ca_key);
    let mut sp = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    sp.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let server_key = KeyPair::generate().unwrap();
    let server = sp.signed_by(&server_key, &issuer).unwrap();
    let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name
        .push(rcgen::DnType::CommonName, "berth-gateway");
    let client_key = KeyPair::generate().unwrap();
    let client = cp.signed_by(&client_key, &issuer).unwrap();
    let (_, _, other_pem) = ca("other");
    let w = |name: &str, text: &str| {
        let p = dir.join(name);
        write_file(&p, text);
        p
    };
    Pki {
        ca: w("ca.pem", &ca_pem),
        server_cert: w("server.pem", &server.pem()),
        server_key: w("server.key", &server_key.serialize_pem()),
        client_cert: w("client.pem", &client.pem()),
        client_key: w("client.key", &client_key.serialize_pem()),
        other_ca: w("other-ca.pem", &other_pem),
    }
}

/// A mosquitto with one TLS listener on 127.0.0.1:`port` that requires a
/// client certificate from the test CA and a password.
fn tls_broker(dir: &Path, pki: &Pki, port: u16) -> Peer {
    need("mosquitto");
    need("mosquitto_passwd");
    let pw = dir.join("passwd");
    write_file(&pw, "gateway:s3cret-pass\n");
    let st = Command::new("mosquitto_passwd")
        .arg("-U")
        .arg(&pw)
        .status()
        .unwrap();
    assert!(st.success(), "mosquitto_passwd -U failed");
    let conf = dir.join("mosquitto-tls.conf");
    write_file(
        &conf,
        &format!(
            "per_listener_settings false\nallow_anonymous false\npassword_file {}\npersistence false\n\
             listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            pw.display(),
            pki.ca.display(),
            pki.server_cert.display(),
            pki.server_key.display()
        ),
    );
    mosquitto(&conf, port)
}

fn cbor_announce(serial: &str, counter: u64) -> Vec<u8> {
    let a = protocol::announce::AnnounceBuilder::new(
        "acme",
        "Fake Meter",
        serial,
        "1.0.0",
        "https://provision.acme.example/berth",
        counter,
    )
    .sign(&SEED)
    .unwrap();
    let mut out = vec![0u8; protocol::announce::MAX_ANNOUNCE];
    let n = a.encode(&mut out).unwrap();
    out.truncate(n);
    out
}

/// Publishes at QoS 1 over TLS with the client certificate and password;
/// waits for the broker's acknowledgement.
async fn publish_tls(pki: &Pki, port: u16, topic: &str, payload: Vec<u8>) {
    let files = TlsFiles {
        ca: pki.ca.clone(),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
    };
    let mut o = MqttOptions::new(unique("tls-pub-"), "127.0.0.1", port);
    o.set_transport(Transport::Tls(TlsConfiguration::Rustls(
        mqtt::tls_config(&files).unwrap(),
    )));
    o.set_credentials("gateway", "s3cret-pass");
    let (c, mut el) = AsyncClient::new(o, 8);
    c.publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    tokio::time::timeout(T, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("tls publisher: {e}"),
            }
        }
        c.disconnect().await.unwrap();
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                _ => {}
            }
        }
    })
    .await
    .expect("tls publish timed out");
}

fn source(pki: &Pki, port: u16, ca: &Path, password: &str) -> MqttConfig {
    let url = mqtt::parse_url(&format!("mqtts://127.0.0.1:{port}")).unwrap();
    assert!(url.tls);
    let mut c = MqttConfig::new(&url.host, url.port);
    c.client_id = unique("berth-tls-");
    c.backoff_min = Duration::from_millis(100);
    c.backoff_max = Duration::from_millis(500);
    c.tls = Some(TlsFiles {
        ca: ca.to_owned(),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
    });
    c.credentials = Some(("gateway".to_owned(), password.to_owned()));
    c
}

/// Publishes fresh announces of `serial` until the pipeline shows one, or
/// gives up after `tries`; returns whether one showed.
async fn announce_until_seen(
    p: &mut Pipeline,
    pki: &Pki,
    port: u16,
    serial: &str,
    tries: u64,
) -> Option<DeviceEvent> {
    for i in 1..=tries {
        publish_tls(
            pki,
            port,
            &format!("berth/announce/acme/{serial}"),
            cbor_announce(serial, i),
        )
        .await;
        if let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(300), p.events.recv()).await
        {
            return Some(ev);
        }
    }
    None
}

#[tokio::test(flavor = "current_thread")]
async fn mqtts_with_client_certificate_and_password() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let port = free_port();
    let _broker = tls_broker(dir.path(), &pki, port);

    let mut p = pipeline();
    let src = tokio::spawn(mqtt::run(
        source(&pki, port, &pki.ca, "s3cret-pass"),
        p.emitter.clone(),
        p.shutdown_rx.clone(),
    ));
    let ev = announce_until_seen(&mut p, &pki, port, "TLS-1", 40)
        .await
        .expect("no announce came through the tls listener");
    assert!(
        matches!(&ev, DeviceEvent::Seen(d) if d.id.0 == "acme:TLS-1"),
        "{ev:?}"
    );
    p.shutdown.send(true).unwrap();
    tokio::time::timeout(T, src)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn mqtts_refuses_a_broker_of_another_ca_and_a_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let port = free_port();
    let _broker = tls_broker(dir.path(), &pki, port);
    for (ca, password) in [(&pki.other_ca, "s3cret-pass"), (&pki.ca, "wrong")] {
        let mut p = pipeline();
        let src = tokio::spawn(mqtt::run(
            source(&pki, port, ca, password),
            p.emitter.clone(),
            p.shutdown_rx.clone(),
        ));
        let ev = announce_until_seen(&mut p, &pki, port, "TLS-2", 8).await;
        assert!(
            ev.is_none(),
            "ca {} password {password}: {ev:?}",
            ca.display()
        );
        p.shutdown.send(true).unwrap();
        tokio::time::timeout(T, src)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn bad_tls_files_stop_the_source_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline();
    let mut cfg = MqttConfig::new("127.0.0.1", 1);
    let missing = dir.path().join("no-such-ca.pem");
    cfg.tls = Some(TlsFiles {
        ca: missing.clone(),
        ..TlsFiles::default()
    });
    let e = mqtt::run(cfg.clone(), p.emitter.clone(), p.shutdown_rx.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&missing.display().to_string()), "{e}");
    let empty = dir.path().join("empty.pem");
    write_file(&empty, "not a certificate\n");
    cfg.tls = Some(TlsFiles {
        ca: empty.clone(),
        ..TlsFiles::default()
    });
    let e = mqtt::run(cfg, p.emitter.clone(), p.shutdown_rx.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("empty.pem") && e.contains("no PEM certificate"),
        "{e}"
    );
}
