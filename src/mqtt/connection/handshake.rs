//! The start of a connection: CONNECT within the connect timeout, the client id, authentication
//! against the hub's users and tokens, and the claim of the client id (who owns a session, takeover
//! of a live connection of the same user). Refusals are answered with their CONNACK code here; an
//! accepted connection gets its CONNACK from the connection loop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::broadcast;

use super::{Conn, Reader, Writer};
use crate::auth::jwt::TokenError;
use crate::auth::Principal;
use crate::hub::signal::Signal;
use crate::model::StoredSession;
use crate::mqtt::codec::{self, connack, Connect, DecodeError, Packet};
use crate::mqtt::{LiveSession, MqttShared};

/// Answers a connection over the limit with CONNACK "server unavailable" (over TCP, TLS or WebSocket).
pub async fn refuse_busy(mut stream: impl AsyncRead + AsyncWrite + Unpin) {
    let mut buf = BytesMut::with_capacity(64);
    let deadline = Duration::from_secs(5);
    let _ = tokio::time::timeout(deadline, async {
        loop {
            if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
            match codec::decode(&mut buf, 1 << 16) {
                Ok(None) => continue,
                Ok(Some(Packet::Connect(_))) => {
                    let mut out = BytesMut::new();
                    codec::encode(
                        &Packet::ConnAck { session_present: false, code: connack::SERVER_UNAVAILABLE },
                        &mut out,
                    );
                    let _ = stream.write_all(&out).await;
                    return;
                }
                _ => return,
            }
        }
    })
    .await;
}

/// A connection whose CONNECT was accepted; its CONNACK is still to be sent.
pub(super) struct Accepted {
    pub connect: Connect,
    pub client_id: String,
    pub principal: Principal,
    /// Listening since before authentication, so a user locked meanwhile is not missed.
    pub revocations: broadcast::Receiver<i64>,
    /// This connection's number in `shared.sessions`.
    pub number: u64,
    /// Wakes this connection: taken over, shutdown, its deadline.
    pub signal: Arc<Signal>,
    pub session_present: bool,
    /// What was read after CONNECT.
    pub rbuf: BytesMut,
}

/// Reads CONNECT, authenticates and claims the client id; `None` when the connection is refused
/// (the refusal is answered) or closed.
pub(super) async fn accept(
    shared: &Arc<MqttShared>,
    reader: &mut Reader,
    writer: &mut Writer,
    peer: Option<std::net::IpAddr>,
) -> Option<Accepted> {
    let settings = &shared.hub.settings.mqtt;
    let mut rbuf = BytesMut::with_capacity(256);

    // CONNECT must come first, and soon.
    let connect = tokio::time::timeout(Duration::from_secs(settings.connect_timeout_secs), async {
        loop {
            match codec::decode(&mut rbuf, settings.max_packet_bytes) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(e),
            }
            match reader.read_buf(&mut rbuf).await {
                Ok(0) | Err(_) => return Err(DecodeError::Malformed("closed before CONNECT")),
                Ok(_) => {}
            }
        }
    })
    .await;
    let connect = match connect {
        Ok(Ok(Packet::Connect(c))) => *c,
        Ok(Err(DecodeError::UnsupportedProtocol(_))) => {
            let _ =
                write_packet(writer, &Packet::ConnAck { session_present: false, code: connack::UNACCEPTABLE_PROTOCOL })
                    .await;
            return None;
        }
        _ => return None,
    };

    let refuse = |code: u8| Packet::ConnAck { session_present: false, code };
    let client_id = match client_id_for(&connect, settings.max_client_id_len) {
        Some(id) => id,
        None => {
            let _ = write_packet(writer, &refuse(connack::IDENTIFIER_REJECTED)).await;
            return None;
        }
    };
    // Listen before authenticating, so a user locked meanwhile is not missed.
    let revocations = shared.hub.revocations();
    let principal = match authenticate(shared, &connect, peer).await {
        Ok(p) => p,
        Err(code) => {
            tracing::debug!(client_id = %client_id, code, "MQTT connection refused");
            let _ = write_packet(writer, &refuse(code)).await;
            return None;
        }
    };

    let number = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let signal = Arc::new(Signal::new());
    let clean = connect.clean_session;
    let owner = principal.user_id();
    let stored = match claim_session(shared, &client_id, owner, clean, number, signal.clone()).await {
        Ok(stored) => stored,
        Err(code) => {
            tracing::debug!(client_id = %client_id, code, "MQTT connection refused: client id held by another user");
            let _ = write_packet(writer, &refuse(code)).await;
            return None;
        }
    };
    let previous = stored.map(|s| s.clean);
    let session_present = !clean && previous == Some(false);
    if clean && previous == Some(false) {
        // A clean session replaces a persistent one: nothing is owed any more.
        let _ = shared.hub.mqtt_subscriptions_clear(&client_id).await;
    }
    Some(Accepted { connect, client_id, principal, revocations, number, signal, session_present, rbuf })
}

/// Whether a session owned by `owner` (`None`: anonymous) may be used by `by`.
fn may_use(owner: Option<Option<i64>>, by: Option<i64>) -> bool {
    owner.is_none_or(|o| o == by)
}

/// Takes the client id for this connection, taking over a live connection of the same user (MQTT
/// 3.1.1 §3.1.4). A session belongs to the user who created it: when another user (or anonymous, or
/// a user when anonymous owns it) holds it live or stored persistent, the CONNECT is refused with
/// the CONNACK code returned and nothing changes. Otherwise returns the stored record as it was
/// (`None` for a clean session whose client id cannot have a persistent one: it is not read).
async fn claim_session(
    shared: &MqttShared,
    client_id: &str,
    owner: Option<i64>,
    clean: bool,
    number: u64,
    signal: Arc<Signal>,
) -> Result<Option<StoredSession>, u8> {
    let hub = &shared.hub;
    // A clean session only needs the record when a persistent one may stand in its way; a client
    // id that never had one is not read (the common case, and a connect storm's).
    let stored = if clean && !hub.mqtt_session_may_be_persistent(client_id) {
        None
    } else {
        hub.mqtt_session(client_id).await.map_err(|_| connack::SERVER_UNAVAILABLE)?
    };
    if stored.as_ref().is_some_and(|s| !s.clean && !may_use(s.owner, owner)) {
        return Err(connack::NOT_AUTHORIZED);
    }
    // Live on another instance as another user: refused as a live session here would be.
    let me = &*hub.cluster.node_id;
    if let Some((user, Some(node))) = stored.as_ref().and_then(|s| s.live.as_ref()) {
        if node != me && *user != owner {
            return Err(connack::NOT_AUTHORIZED);
        }
    }
    let since = crate::time::now_ms();
    let previous = {
        let mut sessions = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.get(client_id).is_some_and(|live| live.owner != owner) {
            return Err(connack::NOT_AUTHORIZED);
        }
        sessions.insert(client_id.to_string(), LiveSession { number, signal, owner, since })
    };
    // The record changes hands where ownership matters: a persistent session is made, or a clean one
    // replaces a persistent one. The claim is one conditional statement, so a connection of another
    // user that stored its session since the read above keeps it.
    let persistent_before = stored.as_ref().is_some_and(|s| !s.clean);
    if !clean || persistent_before {
        let claimed = hub.mqtt_session_claim(client_id, owner, clean).await;
        if !matches!(claimed, Ok(true)) {
            let mut sessions = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if sessions.get(client_id).is_some_and(|s| s.number == number) {
                match previous {
                    Some(p) => sessions.insert(client_id.to_string(), p),
                    None => sessions.remove(client_id),
                };
            }
            return Err(if claimed.is_err() { connack::SERVER_UNAVAILABLE } else { connack::NOT_AUTHORIZED });
        }
    }
    if let Some(old) = previous {
        old.signal.raise(Signal::TAKEN_OVER);
    }
    // A live connection with this client id on another instance is taken over too.
    hub.cluster.announce(crate::cluster::Control::MqttClaim { client_id: client_id.to_string(), at: since });
    Ok(stored)
}

/// The client id to use, or `None` to refuse it. An empty id gets a generated one when the session is
/// clean (persistent sessions need a stable id).
fn client_id_for(connect: &Connect, max_len: usize) -> Option<String> {
    let id = connect.client_id.as_str();
    if id.is_empty() {
        if !connect.clean_session {
            return None;
        }
        use rand::Rng;
        let n: u64 = rand::thread_rng().gen();
        return Some(format!("hivehub-{n:016x}"));
    }
    if id.len() > max_len || id.contains(['/', '+', '#', '@']) {
        return None;
    }
    Some(id.to_string())
}

/// CONNECT credentials: login/password of a hub user, or an access JWT as the password.
async fn authenticate(shared: &MqttShared, connect: &Connect, peer: Option<std::net::IpAddr>) -> Result<Principal, u8> {
    let hub = &shared.hub;
    let password = connect.password.as_ref().map(|p| String::from_utf8_lossy(p).into_owned());
    match (&connect.username, password) {
        (_, Some(pw)) if looks_like_jwt(&pw) => hub.principal_from_token(&pw).await.map_err(|e| match e {
            TokenError::Unavailable => connack::SERVER_UNAVAILABLE,
            _ => connack::BAD_USERNAME_OR_PASSWORD,
        }),
        (Some(login), Some(pw)) => hub.password_principal(login, &pw, peer).await.map_err(|e| {
            if e.status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
                connack::SERVER_UNAVAILABLE
            } else {
                connack::BAD_USERNAME_OR_PASSWORD
            }
        }),
        (Some(_), None) | (None, Some(_)) => Err(connack::BAD_USERNAME_OR_PASSWORD),
        (None, None) if hub.settings.mqtt.allow_anonymous => Ok(Principal::anonymous()),
        (None, None) => Err(connack::NOT_AUTHORIZED),
    }
}

fn looks_like_jwt(s: &str) -> bool {
    s.starts_with("eyJ") && s.matches('.').count() == 2
}

async fn write_packet(writer: &mut Writer, p: &Packet) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    codec::encode(p, &mut out);
    writer.write_all(&out).await
}

impl Conn {
    /// After `authenticate` the session belongs to the user it authenticated as: from then on only
    /// that user may take it over.
    pub(super) async fn follow_owner(&mut self) {
        let user = self.session.principal.user_id();
        if user == self.owner {
            return;
        }
        self.owner = user;
        {
            let mut sessions = self.shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(live) = sessions.get_mut(&self.client_id).filter(|s| s.number == self.number) {
                live.owner = user;
            }
        }
        if self.persistent {
            if let Err(e) = self.shared.hub.mqtt_session_set_owner(&self.client_id, user).await {
                tracing::warn!(client_id = %self.client_id, error = %e, "cannot store the MQTT session owner");
            }
        }
    }
}
