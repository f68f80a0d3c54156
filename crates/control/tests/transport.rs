//! QUIC with mutual TLS on loopback: who can connect, and what the manager
//! learns about them.

use std::net::SocketAddr;

use shoal_control::ca::{self, ClusterCa, NODE_CERT_VALIDITY, Role, Subject};

fn subject<'a>(node_id: &'a str, role: Role, cluster_id: &'a str) -> Subject<'a> {
    Subject { node_id, role, cluster_id, validity: NODE_CERT_VALIDITY }
}
use shoal_control::transport::{self, CA_MISMATCH, SERVER_NAME};

/// A manager endpoint that reports the identity of each accepted client.
fn manager(ca: &ClusterCa) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Option<(String, Role)>>) {
    let (cert, key) = ca.issue(subject("manager1", Role::Manager, "c1")).unwrap();
    let config = transport::server_config(&ca.cert_der(), &cert, &key).unwrap();
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            if let Ok(conn) = incoming.await {
                let _ = tx.send(transport::peer_node(&conn));
            }
        }
    });
    (addr, rx)
}

async fn connect(config: quinn::ClientConfig, addr: SocketAddr) -> Result<quinn::Connection, String> {
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(config);
    client.connect(addr, SERVER_NAME).map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_joiner_trusts_only_the_ca_its_token_names() {
    let ca = ClusterCa::create("c1").unwrap();
    let (addr, mut accepted) = manager(&ca);
    let other = ClusterCa::create("c2").unwrap();
    let err = connect(transport::join_client_config(other.digest()).unwrap(), addr).await.unwrap_err();
    assert!(err.contains(CA_MISMATCH), "{err}");
    let conn = connect(transport::join_client_config(ca.digest()).unwrap(), addr).await.unwrap();
    assert_eq!(accepted.recv().await.unwrap(), None, "a joiner has no certificate yet");
    drop(conn);
}

#[tokio::test]
async fn members_present_their_certificate_and_strangers_are_refused() {
    let ca = ClusterCa::create("c1").unwrap();
    let (addr, mut accepted) = manager(&ca);
    let (csr, key) = ca::new_csr().unwrap();
    let cert = ca.sign_csr(&csr, subject("worker7", Role::Worker, "c1")).unwrap();
    let conn = connect(transport::client_config(&ca.cert_der(), &cert, &key).unwrap(), addr).await.unwrap();
    assert_eq!(accepted.recv().await.unwrap(), Some(("worker7".to_owned(), Role::Worker)));
    drop(conn);

    // A certificate from another cluster's CA: the handshake fails.
    let other = ClusterCa::create("c2").unwrap();
    let (csr, key) = ca::new_csr().unwrap();
    let foreign = other.sign_csr(&csr, subject("intruder", Role::Manager, "c2")).unwrap();
    let config = transport::client_config(&ca.cert_der(), &foreign, &key).unwrap();
    let result = connect(config, addr).await;
    let refused = match result {
        Err(_) => true,
        // TLS 1.3 may finish the client side before the server's verdict
        // arrives; the connection then dies at once.
        Ok(conn) => conn.open_bi().await.is_err() || conn.closed().await.to_string().contains("certificate"),
    };
    assert!(refused, "a certificate of another CA was accepted");
}

#[tokio::test]
async fn messages_round_trip_and_oversized_ones_are_refused() {
    let ca = ClusterCa::create("c1").unwrap();
    let (cert, key) = ca.issue(subject("manager1", Role::Manager, "c1")).unwrap();
    let config = transport::server_config(&ca.cert_der(), &cert, &key).unwrap();
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        let conn = endpoint.accept().await.unwrap().await.unwrap();
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let answer = match transport::read_message::<serde_json::Value>(&mut recv).await {
                Ok(v) => serde_json::json!({ "echo": v }),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            };
            let _ = transport::write_message(&mut send, &answer).await;
            let _ = send.finish();
        }
    });
    let conn = connect(transport::join_client_config(ca.digest()).unwrap(), addr).await.unwrap();
    let answer: serde_json::Value = transport::call(&conn, &serde_json::json!({"hello": 1})).await.unwrap();
    assert_eq!(answer["echo"]["hello"], 1);
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    send.finish().unwrap();
    let answer: serde_json::Value = transport::read_message(&mut recv).await.unwrap();
    assert!(answer["error"].as_str().unwrap().contains("limit"), "{answer}");
}

#[tokio::test]
async fn a_worker_certificate_cannot_pose_as_the_manager() {
    let ca = ClusterCa::create("c1").unwrap();
    let (csr, key) = ca::new_csr().unwrap();
    let worker = ca.sign_csr(&csr, subject("worker7", Role::Worker, "c1")).unwrap();
    let config = transport::server_config(&ca.cert_der(), &worker, &key).unwrap();
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let _ = incoming.await;
        }
    });
    assert!(connect(transport::join_client_config(ca.digest()).unwrap(), addr).await.is_err());
    let (csr, key) = ca::new_csr().unwrap();
    let other = ca.sign_csr(&csr, subject("worker8", Role::Worker, "c1")).unwrap();
    assert!(connect(transport::client_config(&ca.cert_der(), &other, &key).unwrap(), addr).await.is_err());
}
