//! MQTT over TLS (`[mqtt] tls_listen` with a PEM certificate chain and private key): the TLS stream is
//! served by the same connection loop as plain TCP, under the same connection cap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use super::{connection, MqttShared, MqttSlot};
use crate::error::StartupError;
use crate::net;

fn load(cert_file: &str, key_file: &str) -> Result<ServerConfig, StartupError> {
    let read = |path: &str| std::fs::read(path).map_err(|e| StartupError(format!("cannot read {path}: {e}")));
    let cert_pem = read(cert_file)?;
    let key_pem = read(key_file)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| StartupError(format!("bad certificate in {cert_file}: {e}")))?;
    if certs.is_empty() {
        return Err(StartupError(format!("no certificate in {cert_file}")));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => StartupError(format!("no private key in {key_file}")),
        e => StartupError(format!("bad private key in {key_file}: {e}")),
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartupError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartupError(format!("certificate and key do not match: {e}")))
}

pub async fn start(shared: Arc<MqttShared>) -> Result<SocketAddr, StartupError> {
    let settings = shared.hub.settings.mqtt.clone();
    let acceptor = TlsAcceptor::from(Arc::new(load(&settings.tls_cert_file, &settings.tls_key_file)?));
    let listener = TcpListener::bind(&settings.tls_listen)
        .await
        .map_err(|e| StartupError(format!("cannot listen for MQTT/TLS on {}: {e}", settings.tls_listen)))?;
    let addr = listener.local_addr().map_err(|e| StartupError(e.to_string()))?;
    tracing::info!(%addr, "MQTT over TLS listening");
    let hub = shared.hub.clone();
    // The handshake counts against the client's time to send CONNECT.
    let handshake_timeout = Duration::from_secs(settings.connect_timeout_secs);
    let refuse_acceptor = acceptor.clone();
    tokio::spawn(async move {
        net::accept::run(
            "mqtt-tls",
            listener,
            shared.cap.clone(),
            hub.shutting_down(),
            |stream, peer, slot| {
                let slot = MqttSlot::new(slot, &shared.hub);
                let (acceptor, shared) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    let local = stream.local_addr().ok().map(|a| super::url_host(a.ip()));
                    if let Ok(Ok(tls)) = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        let (reader, writer) = tokio::io::split(tls);
                        let peer = Some(peer.ip());
                        connection::run_io(shared, Box::new(reader), Box::new(writer), peer, local).await;
                    }
                });
            },
            |stream, _peer, refusal| {
                let acceptor = refuse_acceptor.clone();
                tokio::spawn(async move {
                    let _refusal = refusal;
                    if let Ok(Ok(tls)) = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        connection::refuse_busy(tls).await;
                    }
                });
            },
        )
        .await;
    });
    Ok(addr)
}
