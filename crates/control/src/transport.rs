//! QUIC (quinn) with TLS 1.3 (rustls on ring) between nodes and managers on
//! 2377.
//!
//! Managers present their node certificate followed by the cluster CA
//! certificate. A joining node has no certificate yet: it trusts the CA
//! whose SHA-256 its join token names, and nothing else. Sessions after
//! that use mutual TLS: the manager accepts a client only with a
//! certificate signed by the cluster CA (or none, for the join request
//! alone), and learns the node's id and role from it.
//!
//! Requests are JSON messages in [`protocol`](crate::protocol) envelopes on
//! bidirectional streams, each prefixed with a u32 length that is checked
//! before anything is allocated.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ca::{self, Role};

/// The name managers' certificates carry for TLS.
pub const SERVER_NAME: &str = "swarm-manager";
/// ALPN of Shoal's control protocol.
pub const ALPN: &[u8] = b"shoal-control/1";
/// The largest control message accepted.
pub const MAX_MESSAGE: usize = 4 << 20;

/// Why a TLS, QUIC or message operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// TLS configuration or certificates are unusable.
    #[error("tls: {0}")]
    Tls(String),
    /// The connection or a stream failed.
    #[error("{0}")]
    Connection(String),
    /// A message was too long or did not decode.
    #[error("bad control message: {0}")]
    Message(String),
    /// The peer speaks another protocol version, or sent no envelope.
    #[error(transparent)]
    Protocol(#[from] crate::protocol::ProtocolError),
}

fn tls<E: std::fmt::Display>(e: E) -> TransportError {
    TransportError::Tls(e.to_string())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn chain(cert_pem: &str, ca_der: &[u8]) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let cert = ca::pem_to_der(cert_pem).ok_or_else(|| tls("node certificate is not PEM"))?;
    Ok(vec![CertificateDer::from(cert), CertificateDer::from(ca_der.to_vec())])
}

fn key(key_pem: &str) -> Result<PrivateKeyDer<'static>, TransportError> {
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(tls)
}

fn roots(ca_der: &[u8]) -> Result<RootCertStore, TransportError> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).map_err(tls)?;
    Ok(roots)
}

/// A manager's server side: its certificate and key, the cluster CA.
pub fn server_config(
    ca_der: &[u8],
    cert_pem: &str,
    key_pem: &str,
) -> Result<quinn::ServerConfig, TransportError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_der)?), provider())
        .allow_unauthenticated()
        .build()
        .map_err(tls)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(cert_pem, ca_der)?, key(key_pem)?)
        .map_err(tls)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(config).map_err(tls)?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// A member's client side: trusts the cluster CA, presents its own
/// certificate.
pub fn client_config(
    ca_der: &[u8],
    cert_pem: &str,
    key_pem: &str,
) -> Result<quinn::ClientConfig, TransportError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(roots(ca_der)?)
        .with_client_auth_cert(chain(cert_pem, ca_der)?, key(key_pem)?)
        .map_err(tls)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(config).map_err(tls)?)))
}

/// A client that trusts only the CA a join token names, presenting no
/// certificate: what `swarm join` uses before it has one.
pub fn join_client_config(ca_digest: [u8; 32]) -> Result<quinn::ClientConfig, TransportError> {
    let verifier = Arc::new(TokenPinnedVerifier { ca_digest, provider: provider() });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(config).map_err(tls)?)))
}

/// The message a joiner gets when the manager's CA is not the token's.
pub const CA_MISMATCH: &str =
    "the manager's CA does not match the join token: check the token and the address";

/// Trusts the server only if its chain holds the CA whose digest the join
/// token carries, and the server certificate verifies against that CA.
#[derive(Debug)]
struct TokenPinnedVerifier {
    ca_digest: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for TokenPinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| ca::digest(c.as_ref()) == self.ca_digest)
            .ok_or_else(|| rustls::Error::General(CA_MISMATCH.into()))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The node id and role of a connection's client certificate, if it
/// presented one (the CA has already verified it).
pub fn peer_node(conn: &quinn::Connection) -> Option<(String, Role)> {
    let certs = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let (id, role, _) = ca::identity(certs.first()?.as_ref()).ok()?;
    Some((id, role))
}

/// Writes one length-prefixed message in its protocol envelope.
pub async fn write_message<T: Serialize>(
    send: &mut quinn::SendStream,
    message: &T,
) -> Result<(), TransportError> {
    let body = crate::protocol::encode(message);
    let len = u32::try_from(body.len()).map_err(|_| TransportError::Message("too long".into()))?;
    send.write_all(&len.to_be_bytes()).await.map_err(|e| TransportError::Connection(e.to_string()))?;
    send.write_all(&body).await.map_err(|e| TransportError::Connection(e.to_string()))
}

/// How long a peer may take to send one message.
pub const MESSAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads one length-prefixed message and opens its protocol envelope. Memory grows only as bytes
/// arrive (never to a length merely claimed), and a silent peer is dropped
/// after [`MESSAGE_TIMEOUT`].
pub async fn read_message<T: DeserializeOwned>(recv: &mut quinn::RecvStream) -> Result<T, TransportError> {
    let read = async {
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await.map_err(|e| TransportError::Connection(e.to_string()))?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_MESSAGE {
            return Err(TransportError::Message(format!("{len} bytes is over the {MAX_MESSAGE} limit")));
        }
        let mut body = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        while body.len() < len {
            let want = (len - body.len()).min(chunk.len());
            match recv
                .read(&mut chunk[..want])
                .await
                .map_err(|e| TransportError::Connection(e.to_string()))?
            {
                Some(n) => body.extend_from_slice(&chunk[..n]),
                None => return Err(TransportError::Message("stream ended inside a message".into())),
            }
        }
        Ok(crate::protocol::decode(&body)?)
    };
    tokio::time::timeout(MESSAGE_TIMEOUT, read)
        .await
        .map_err(|_| TransportError::Connection("timed out waiting for a message".into()))?
}

/// Sends `request` on a new stream of `conn` and reads the answer.
pub async fn call<Q: Serialize, A: DeserializeOwned>(
    conn: &quinn::Connection,
    request: &Q,
) -> Result<A, TransportError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| TransportError::Connection(e.to_string()))?;
    write_message(&mut send, request).await?;
    send.finish().map_err(|e| TransportError::Connection(e.to_string()))?;
    read_message(&mut recv).await
}
