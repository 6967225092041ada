//! MQTT over TLS (`[mqtt] tls_listen` with a PEM certificate chain and private key): the TLS stream is
//! served by the same connection loop as plain TCP.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use super::{connection, MqttShared};
use crate::error::StartupError;

fn load(cert_file: &str, key_file: &str) -> Result<ServerConfig, StartupError> {
    let read = |path: &str| std::fs::read(path).map_err(|e| StartupError(format!("cannot read {path}: {e}")));
    let cert_pem = read(cert_file)?;
    let key_pem = read(key_file)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| StartupError(format!("bad certificate in {cert_file}: {e}")))?;
    if certs.is_empty() {
        return Err(StartupError(format!("no certificate in {cert_file}")));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| StartupError(format!("bad private key in {key_file}: {e}")))?
        .ok_or_else(|| StartupError(format!("no private key in {key_file}")))?;
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
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                a = listener.accept() => match a { Ok(a) => a, Err(_) => { tokio::task::yield_now().await; continue } },
                _ = hub.shutting_down() => break,
            };
            if shared.hub.stats.mqtt_connections.load(Ordering::Relaxed) >= settings.max_connections {
                continue;
            }
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let shared = shared.clone();
            shared.hub.stats.mqtt_connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(Duration::from_secs(settings.connect_timeout_secs), acceptor.accept(stream));
                if let Ok(Ok(tls)) = handshake.await {
                    let (reader, writer) = tokio::io::split(tls);
                    connection::run_io(shared.clone(), Box::new(reader), Box::new(writer)).await;
                }
                shared.hub.stats.mqtt_connections.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    Ok(addr)
}
