//! Gossip sealed with the cluster secret: every datagram encrypted and authenticated
//! (ChaCha20-Poly1305), and never accepted twice.
//!
//! chitchat keeps its wire format private (`ChitchatEnvelope::serialize` is `pub(crate)`), so a
//! transport of ours cannot seal the bytes of an envelope it is handed. It can still use
//! chitchat's own public codec: [`SealedTransport`] gives chitchat a socket whose messages go
//! through a chitchat [`UdpSocket`] bound to loopback (the codec), and relays the bytes that
//! socket sends and receives through one loopback relay socket per peer. Outbound: chitchat
//! sends an envelope for peer P, the codec serializes it to P's relay, which seals the bytes
//! and sends them to P from the gossip port. Inbound: a datagram from P on the gossip port is
//! opened and checked, then P's relay hands the plain bytes to the codec, which chitchat reads
//! as coming from P. Nothing of chitchat is patched or copied, and an envelope costs two
//! loopback hops.
//!
//! A datagram is `[version 1][key id 1][sender 16][counter 8][time 8]`, the ciphertext and the
//! 16-byte tag; the 34-byte header is authenticated data. Keys: HKDF-SHA256 of each cluster
//! secret (salt `ipubsub gossip v1`, the cluster name in the info) gives a master key per
//! secret; each process draws a random 128-bit sender id at start and seals with the key
//! expanded from the master key and its id, with its counter as the nonce, so no two senders
//! ever share a key and a nonce. A receiver rejects a datagram whose key it does not hold
//! (another cluster, another secret, none), whose tag does not verify (altered, forged), whose
//! time is more than [`CLOCK_WINDOW`] from its own clock, or whose counter it has seen (a
//! replay; a window of 64 counters allows reordering). Rejections are counted and logged by
//! the caller's rate limit. The first secret seals; every secret of the list opens, so a
//! secret is rotated without restarting the cluster.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::task::JoinHandle;

use crate::secret::ClusterSecret;

const VERSION: u8 = 1;
/// Version, key id, sender id, counter, time.
const HEADER: usize = 1 + 1 + 16 + 8 + 8;
const TAG: usize = 16;
/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_507;
/// How far a datagram's time may be from the receiver's clock.
pub const CLOCK_WINDOW: Duration = Duration::from_secs(300);
/// How long a sender's replay window is kept after its last datagram: longer than the clock
/// window, so a datagram older than its sender's forgotten window is already too old.
const SENDER_MEMORY: Duration = Duration::from_secs(900);
/// Senders remembered at most (only senders whose datagrams verified are remembered).
const MAX_SENDERS: usize = 4096;
/// Peers relayed at most.
const MAX_PEERS: usize = 4096;

/// Why a datagram was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Too short, or of another version: not sealed gossip.
    Malformed,
    /// Sealed with a key this node does not hold (another secret or cluster), or altered.
    Unauthentic,
    /// Its time is outside the clock window.
    Stale,
    /// Already received: a replay.
    Replayed,
}

/// The keys gossip is sealed and opened with: one per cluster secret, the first seals.
pub struct GossipKeys {
    masters: Vec<Master>,
}

struct Master {
    id: u8,
    /// Tells the secret apart from others of the same one-byte id.
    fingerprint: [u8; 16],
    prk: hkdf::Prk,
    cluster: Vec<u8>,
}

/// An HKDF output length.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl GossipKeys {
    /// Keys of `secrets` (the first seals) for the cluster named `cluster_name`; `None`
    /// without any secret.
    pub fn new(secrets: &[ClusterSecret], cluster_name: &str) -> Option<Self> {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"ipubsub gossip v1");
        let masters: Vec<Master> = secrets
            .iter()
            .map(|secret| {
                let prk = salt.extract(secret.header().as_bytes());
                let mut id = [0u8; 1];
                let info = [b"key id".as_slice(), cluster_name.as_bytes()];
                if let Ok(okm) = prk.expand(&info, Len(1)) {
                    // Cannot fail for one byte of HKDF-SHA256.
                    let _ = okm.fill(&mut id);
                }
                let mut fingerprint = [0u8; 16];
                let info = [b"fingerprint".as_slice(), cluster_name.as_bytes()];
                if let Ok(okm) = prk.expand(&info, Len(16)) {
                    // Cannot fail for 16 bytes of HKDF-SHA256.
                    let _ = okm.fill(&mut fingerprint);
                }
                Master {
                    id: id[0],
                    fingerprint,
                    prk,
                    cluster: cluster_name.as_bytes().to_vec(),
                }
            })
            .collect();
        (!masters.is_empty()).then_some(Self { masters })
    }

    /// The key `sender` seals with under `master`.
    fn sender_key(master: &Master, sender: &[u8; 16]) -> Option<LessSafeKey> {
        let info = [b"sender".as_slice(), &master.cluster, sender];
        let okm = master.prk.expand(&info, &CHACHA20_POLY1305).ok()?;
        Some(LessSafeKey::new(UnboundKey::from(okm)))
    }
}

impl std::fmt::Debug for GossipKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipKeys")
            .field("keys", &self.masters.len())
            .finish_non_exhaustive()
    }
}

/// Seals this process's datagrams and opens its peers', with the keys in force.
pub struct Sealer {
    keys: RwLock<Arc<GossipKeys>>,
    sender: [u8; 16],
    counter: AtomicU64,
    /// This sender's key under each master (by key id), made on first use.
    own: Mutex<HashMap<u8, Arc<LessSafeKey>>>,
    /// Peers' keys and replay windows.
    peers: Mutex<HashMap<(u8, [u8; 16]), Window>>,
    clock: fn() -> u64,
}

/// One sender's replay window: the highest counter seen and which of the 64 below it were.
struct Window {
    key: Arc<LessSafeKey>,
    /// The secret `key` comes from ([`Master::fingerprint`]).
    secret: [u8; 16],
    highest: u64,
    seen: u64,
    last: Instant,
}

impl Window {
    fn has_seen(&self, counter: u64) -> bool {
        if counter > self.highest {
            return false;
        }
        let back = self.highest - counter;
        back >= 64 || self.seen & (1 << back) != 0
    }

    fn mark(&mut self, counter: u64) {
        if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.highest = counter;
            self.seen |= 1;
        } else {
            self.seen |= 1 << (self.highest - counter);
        }
        self.last = Instant::now();
    }
}

fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Sealer {
    /// A sealer with `keys` and a fresh random sender id.
    pub fn new(keys: GossipKeys) -> Self {
        Self::with_clock(keys, wall_clock_ms)
    }

    fn with_clock(keys: GossipKeys, clock: fn() -> u64) -> Self {
        let mut sender = [0u8; 16];
        if SystemRandom::new().fill(&mut sender).is_err() {
            // No system randomness: the time and the process id still differ per start.
            sender[..8].copy_from_slice(&clock().to_be_bytes());
            sender[8..12].copy_from_slice(&std::process::id().to_be_bytes());
        }
        Self {
            keys: RwLock::new(Arc::new(keys)),
            sender,
            counter: AtomicU64::new(0),
            own: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            clock,
        }
    }

    /// From now on, seals with the first of `keys` and opens with any of them: peers' keys
    /// from a secret no longer in the list are forgotten (their replay windows too, which
    /// is safe: nothing sealed with that secret opens any more).
    pub fn set_keys(&self, keys: GossipKeys) {
        let kept: Vec<[u8; 16]> = keys.masters.iter().map(|m| m.fingerprint).collect();
        let mut current = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, window| kept.contains(&window.secret));
        *current = Arc::new(keys);
    }

    fn keys(&self) -> Arc<GossipKeys> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// `plain`, sealed; `None` if it would not fit in a datagram.
    pub fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        if plain.len() + HEADER + TAG > MAX_DATAGRAM {
            return None;
        }
        let keys = self.keys();
        let master = keys.masters.first()?;
        let key = {
            let mut own = self.own.lock().unwrap_or_else(PoisonError::into_inner);
            match own.get(&master.id) {
                Some(key) => Arc::clone(key),
                None => {
                    let key = Arc::new(GossipKeys::sender_key(master, &self.sender)?);
                    own.insert(master.id, Arc::clone(&key));
                    key
                }
            }
        };
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::with_capacity(HEADER + plain.len() + TAG);
        out.push(VERSION);
        out.push(master.id);
        out.extend_from_slice(&self.sender);
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(&(self.clock)().to_be_bytes());
        out.extend_from_slice(plain);
        let (header, body) = out.split_at_mut(HEADER);
        let tag = key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&*header), body)
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    /// The plain bytes of `datagram`, if it is authentic, fresh and new.
    pub fn open(&self, datagram: &[u8]) -> Result<Vec<u8>, Rejection> {
        if datagram.len() < HEADER + TAG || datagram[0] != VERSION {
            return Err(Rejection::Malformed);
        }
        let key_id = datagram[1];
        let mut sender = [0u8; 16];
        sender.copy_from_slice(&datagram[2..18]);
        let counter = u64::from_be_bytes(
            datagram[18..26]
                .try_into()
                .map_err(|_| Rejection::Malformed)?,
        );
        let time = u64::from_be_bytes(
            datagram[26..34]
                .try_into()
                .map_err(|_| Rejection::Malformed)?,
        );
        let window = u64::try_from(CLOCK_WINDOW.as_millis()).unwrap_or(u64::MAX);
        if (self.clock)().abs_diff(time) > window {
            return Err(Rejection::Stale);
        }
        let known = {
            let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
            match peers.get(&(key_id, sender)) {
                Some(window) if window.has_seen(counter) => return Err(Rejection::Replayed),
                Some(window) => Some((Arc::clone(&window.key), window.secret)),
                None => None,
            }
        };
        let (header, sealed) = datagram.split_at(HEADER);
        let (key, secret, body) = match known {
            Some((key, secret)) => {
                let body = open_with(&key, counter, header, sealed)?;
                (key, secret, body)
            }
            // A one-byte key id can be shared by two secrets of the list: each is tried.
            None => self
                .keys()
                .masters
                .iter()
                .filter(|m| m.id == key_id)
                .find_map(|master| {
                    let key = GossipKeys::sender_key(master, &sender)?;
                    let body = open_with(&key, counter, header, sealed).ok()?;
                    Some((Arc::new(key), master.fingerprint, body))
                })
                .ok_or(Rejection::Unauthentic)?,
        };
        // Keys before peers, as in `set_keys`: a secret a reload took out meanwhile is not
        // remembered again.
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        if !keys.masters.iter().any(|m| m.fingerprint == secret) {
            return Err(Rejection::Unauthentic);
        }
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if peers.len() >= MAX_SENDERS && !peers.contains_key(&(key_id, sender)) {
            peers.retain(|_, w| w.last.elapsed() < SENDER_MEMORY);
            if peers.len() >= MAX_SENDERS
                && let Some(oldest) = peers.iter().min_by_key(|(_, w)| w.last).map(|(k, _)| *k)
            {
                peers.remove(&oldest);
            }
        }
        let window = peers.entry((key_id, sender)).or_insert_with(|| Window {
            key,
            secret,
            highest: 0,
            seen: 0,
            last: Instant::now(),
        });
        // Checked again: the same datagram may have been opened twice at once.
        if window.has_seen(counter) {
            return Err(Rejection::Replayed);
        }
        window.mark(counter);
        Ok(body)
    }
}

/// The plain bytes of `sealed` under `key`, if its tag verifies with `header`.
fn open_with(
    key: &LessSafeKey,
    counter: u64,
    header: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, Rejection> {
    let mut body = sealed.to_vec();
    let plain_len = key
        .open_in_place(nonce(counter), Aad::from(header), &mut body)
        .map_err(|_| Rejection::Unauthentic)?
        .len();
    body.truncate(plain_len);
    Ok(body)
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[NONCE_LEN - 8..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// A chitchat transport whose datagrams are sealed (see the [module](self)).
#[derive(Clone)]
pub struct SealedTransport {
    sealer: Arc<Sealer>,
    rejected: Arc<AtomicU64>,
}

impl SealedTransport {
    /// Seals with `sealer`; counts rejected datagrams in `rejected`.
    pub fn new(sealer: Arc<Sealer>, rejected: Arc<AtomicU64>) -> Self {
        Self { sealer, rejected }
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let public = Arc::new(tokio::net::UdpSocket::bind(listen_addr).await?);
        let codec = UdpSocket::open(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let shared = Arc::new(Shared {
            public,
            codec: codec.local_addr()?,
            sealer: Arc::clone(&self.sealer),
            rejected: Arc::clone(&self.rejected),
            relays: Mutex::new(Relays::default()),
        });
        let inbound = tokio::spawn(Arc::clone(&shared).inbound());
        Ok(Box::new(SealedSocket {
            codec,
            shared,
            inbound,
        }))
    }
}

struct Shared {
    public: Arc<tokio::net::UdpSocket>,
    /// The codec socket's address.
    codec: SocketAddr,
    sealer: Arc<Sealer>,
    rejected: Arc<AtomicU64>,
    relays: Mutex<Relays>,
}

#[derive(Default)]
struct Relays {
    /// Peer → its relay socket's address.
    by_peer: HashMap<SocketAddr, Relay>,
    /// Relay socket address → peer.
    by_relay: HashMap<SocketAddr, SocketAddr>,
}

struct Relay {
    socket: Arc<tokio::net::UdpSocket>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    /// `peer`'s relay, made on first use.
    async fn relay(
        self: &Arc<Self>,
        peer: SocketAddr,
    ) -> std::io::Result<(Arc<tokio::net::UdpSocket>, SocketAddr)> {
        if let Some(relay) = self
            .relays
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_peer
            .get(&peer)
        {
            return Ok((Arc::clone(&relay.socket), relay.addr));
        }
        let socket =
            Arc::new(tokio::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?);
        let addr = socket.local_addr()?;
        let mut relays = self.relays.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(relay) = relays.by_peer.get(&peer) {
            return Ok((Arc::clone(&relay.socket), relay.addr));
        }
        if relays.by_peer.len() >= MAX_PEERS {
            return Err(std::io::Error::other("too many gossip peers"));
        }
        let task = tokio::spawn(Arc::clone(self).outbound(Arc::clone(&socket), peer));
        relays.by_relay.insert(addr, peer);
        relays.by_peer.insert(
            peer,
            Relay {
                socket: Arc::clone(&socket),
                addr,
                task,
            },
        );
        Ok((socket, addr))
    }

    /// What the codec sends to `peer`'s relay: sealed, to `peer`.
    async fn outbound(self: Arc<Self>, relay: Arc<tokio::net::UdpSocket>, peer: SocketAddr) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let Ok((n, from)) = relay.recv_from(&mut buf).await else {
                continue;
            };
            if from != self.codec {
                continue;
            }
            match self.sealer.seal(&buf[..n]) {
                Some(sealed) => {
                    if let Err(e) = self.public.send_to(&sealed, peer).await {
                        tracing::debug!(%peer, error = %e, "gossip send failed");
                    }
                }
                None => {
                    tracing::warn!(%peer, bytes = n, "a gossip datagram too large to seal was dropped")
                }
            }
        }
    }

    /// Datagrams on the gossip port: opened, then handed to the codec by their sender's relay.
    async fn inbound(self: Arc<Self>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, from) = match self.public.recv_from(&mut buf).await {
                Ok(received) => received,
                Err(e) => {
                    tracing::debug!(error = %e, "gossip receive failed");
                    continue;
                }
            };
            match self.sealer.open(&buf[..n]) {
                Ok(plain) => match self.relay(from).await {
                    Ok((relay, _)) => {
                        let _ = relay.send_to(&plain, self.codec).await;
                    }
                    Err(e) => tracing::warn!(%from, error = %e, "gossip from a peer not relayed"),
                },
                Err(why) => {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%from, bytes = n, reason = ?why, "gossip datagram rejected");
                }
            }
        }
    }
}

/// The socket chitchat uses: envelopes through the codec, bytes through the relays.
struct SealedSocket {
    codec: UdpSocket,
    shared: Arc<Shared>,
    inbound: JoinHandle<()>,
}

impl Drop for SealedSocket {
    fn drop(&mut self) {
        self.inbound.abort();
        let mut relays = self
            .shared
            .relays
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        relays.by_peer.clear();
        relays.by_relay.clear();
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.shared.public.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: chitchat::ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        match self.shared.relay(to).await {
            Ok((_, relay)) => self.codec.send(relay, envelope).await,
            Err(e) => {
                tracing::debug!(%to, error = %e, "gossip not sent");
                Ok(SendOutcome { num_bytes_sent: 0 })
            }
        }
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let received = self.codec.recv().await?;
            let peer = self
                .shared
                .relays
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .by_relay
                .get(&received.from_addr)
                .copied();
            // Only the relays speak to the codec; anything else on loopback is ignored.
            if let Some(peer) = peer {
                return Ok(RecvOutcome {
                    from_addr: peer,
                    ..received
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str, cluster: &str) -> GossipKeys {
        let secret = ClusterSecret::new(secret).expect("secret");
        GossipKeys::new(&[secret], cluster).expect("keys")
    }

    const S1: &str = "gossip-secret-one-0123";
    const S2: &str = "gossip-secret-two-0123";

    #[test]
    fn a_sealed_datagram_opens_once_with_the_same_secret_only() {
        let (a, b) = (Sealer::new(keys(S1, "c")), Sealer::new(keys(S1, "c")));
        let sealed = a.seal(b"hello gossip").expect("sealed");
        assert_eq!(sealed.len(), HEADER + 12 + TAG);
        assert!(
            !sealed.windows(5).any(|w| w == b"hello"),
            "the payload is encrypted"
        );
        assert_eq!(b.open(&sealed).as_deref(), Ok(b"hello gossip".as_slice()));
        assert_eq!(b.open(&sealed), Err(Rejection::Replayed), "a replay");
        let other_secret = Sealer::new(keys(S2, "c"));
        let other_cluster = Sealer::new(keys(S1, "d"));
        let fresh = a.seal(b"again").expect("sealed");
        assert_eq!(other_secret.open(&fresh), Err(Rejection::Unauthentic));
        assert_eq!(other_cluster.open(&fresh), Err(Rejection::Unauthentic));
        for i in [0, 1, 2, 20, 30, HEADER, fresh.len() - 1] {
            let mut altered = fresh.clone();
            altered[i] ^= 0x40;
            assert!(b.open(&altered).is_err(), "byte {i} altered");
        }
        assert_eq!(b.open(&fresh).as_deref(), Ok(b"again".as_slice()));
        assert_eq!(b.open(b"garbage"), Err(Rejection::Malformed));
    }

    #[test]
    fn datagrams_may_arrive_out_of_order_but_not_twice_or_late() {
        let (a, b) = (Sealer::new(keys(S1, "c")), Sealer::new(keys(S1, "c")));
        let sealed: Vec<Vec<u8>> = (0..100).map(|i| a.seal(&[i]).expect("sealed")).collect();
        // Newest first: each older one is still within the 64 behind the newest.
        for i in (40..100).rev().step_by(3) {
            assert!(b.open(&sealed[i]).is_ok(), "{i}");
        }
        assert!(b.open(&sealed[98]).is_ok(), "within the window, unseen");
        assert_eq!(b.open(&sealed[96]), Err(Rejection::Replayed));
        assert_eq!(
            b.open(&sealed[5]),
            Err(Rejection::Replayed),
            "below the window"
        );
        let past = Sealer::with_clock(keys(S1, "c"), || 1_000);
        assert_eq!(
            b.open(&past.seal(b"x").expect("sealed")),
            Err(Rejection::Stale)
        );
    }

    #[test]
    fn a_rotation_seals_with_the_first_secret_and_opens_with_any() {
        let both = |first: &str, second: &str| {
            let secrets = [
                ClusterSecret::new(first).expect("s"),
                ClusterSecret::new(second).expect("s"),
            ];
            GossipKeys::new(&secrets, "c").expect("keys")
        };
        let old = Sealer::new(keys(S1, "c"));
        let rotating = Sealer::new(both(S2, S1));
        assert!(rotating.open(&old.seal(b"old").expect("sealed")).is_ok());
        assert!(old.open(&rotating.seal(b"new").expect("sealed")).is_err());
        old.set_keys(both(S1, S2));
        assert!(old.open(&rotating.seal(b"new").expect("sealed")).is_ok());
        // A secret taken out of the list opens nothing more, also from a sender whose key
        // under it was already known.
        let still_old = Sealer::new(keys(S1, "c"));
        assert!(
            old.open(&still_old.seal(b"before").expect("sealed"))
                .is_ok()
        );
        old.set_keys(keys(S2, "c"));
        assert_eq!(
            old.open(&still_old.seal(b"after").expect("sealed")),
            Err(Rejection::Unauthentic)
        );
        assert!(old.open(&rotating.seal(b"newest").expect("sealed")).is_ok());
    }
}
