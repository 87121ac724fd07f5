//! The library side: a [`Server`] started inside the test process, as a
//! gateway's own tests can do, and stopped through its shutdown future.

// A test harness: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use protocol::ed25519_dalek::SigningKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vendor_server::{Server, ServerConfig, Store};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn serves_and_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("v.db")).unwrap();
    let key = SigningKey::from_bytes(&[1; 32]);
    let server = Server::bind(
        ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: None,
            signing_key: key.clone(),
        },
        store,
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    assert_eq!(server.scheme(), "http");
    assert_eq!(server.public_key(), key.verifying_key());
    let server_store = server.store().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let answer = get(addr, "/v1/plans/0123").await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    // Devices registered through the running server's store are served.
    let store = server_store.clone();
    let device = tokio::task::spawn_blocking(move || {
        store.add_device(
            "M",
            "SN-1",
            &SigningKey::from_bytes(&[2; 32]).verifying_key(),
        )
    })
    .await
    .unwrap()
    .unwrap();
    let answer = get(addr, &format!("/v1/plans/{}", device.plan_id)).await;
    assert!(
        answer.contains("no plan published for model `M`"),
        "{answer}"
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("server did not stop within 10 s")
        .unwrap()
        .unwrap();
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn plain_http_only_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("v.db")).unwrap();
    let e = Server::bind(
        ServerConfig {
            listen: "0.0.0.0:0".parse().unwrap(),
            tls: None,
            signing_key: SigningKey::from_bytes(&[1; 32]),
        },
        store,
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("plain HTTP is only allowed on a loopback address"),
        "{e}"
    );
}
