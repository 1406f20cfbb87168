//! rustls configurations: the ring provider (never aws-lc), TLS 1.3 only, ALPN `qkv/1`, and PEM files
//! read through rustls-pki-types' `PemObject`.
//!
//! Clients verify the server's certificate against a CA file, always: nothing in qkv skips verification.
//! The server name checked is the one the client dialled (a DNS name or an IP address), never a
//! hard-coded one. With mutual TLS (a client CA given to the server) the server verifies clients'
//! certificates the same way, against its client CA file, and knows each client by its certificate's
//! subject (`certificate_subject`, in a build with the `server` feature).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
#[cfg(feature = "server")]
use parking_lot::RwLock;
#[cfg(feature = "server")]
use rustls::ServerConfig;
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
#[cfg(feature = "server")]
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore};

/// The ALPN protocol identifier of qkv's wire protocol, version 1.
pub const ALPN: &[u8] = b"qkv/1";

/// The ALPN protocol identifiers of the web listener, HTTP/2 preferred.
pub const WEB_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// HTTP/3's ALPN: what browsers offer, alone, for a WebTransport session on the QUIC port.
pub const H3_ALPN: &[u8] = b"h3";

/// Why a certificate, key or CA file could not be used; each names its file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read, or is not PEM: `cause` says which (a missing file is its
    /// `io::Error`, kept as the error's source).
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        cause: PemFailure,
    },
    /// The PEM file holds no certificate.
    #[error("{} holds no certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// None of the CA file's certificates can be a trust anchor.
    #[error("{} holds no CA certificate that can be trusted: {reason}", path.display())]
    BadCa {
        /// The CA file.
        path: PathBuf,
        /// rustls's reason.
        reason: String,
    },
    /// The private key is not the certificate's.
    #[error("the key in {} does not belong to the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The key file holds no usable private key.
    #[error("{} holds no private key that can sign for the certificate in {}: {reason}", key.display(), cert.display())]
    BadKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        reason: String,
    },
    /// The certificate cannot be used (expired, not yet valid, a CA's, or not for this use).
    #[error("the certificate in {} cannot be used: {reason}", path.display())]
    BadCertificate {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Why a PEM file could not be read: its message with labels as text (rustls-pki-types shows them as
/// byte lists), and the operating system's error, when reading failed, as its source.
#[derive(Debug)]
pub struct PemFailure(pub rustls::pki_types::pem::Error);

impl fmt::Display for PemFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&pem_reason(&self.0))
    }
}

impl std::error::Error for PemFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            rustls::pki_types::pem::Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// What is wrong with a PEM file, its labels as text (rustls-pki-types shows them as byte lists).
fn pem_reason(cause: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match cause {
        Error::MissingSectionEnd { end_marker } => {
            format!("its {} section has no END line", String::from_utf8_lossy(end_marker))
        }
        Error::IllegalSectionStart { line } => {
            format!("a section starts with a bad line: {}", String::from_utf8_lossy(line))
        }
        other => other.to_string(),
    }
}

/// The only crypto provider qkv uses: ring's, with AES-128-GCM/SHA-256 preferred.
///
/// ring's default order puts AES-256-GCM/SHA-384 first. SHA-384 has no instructions of its own on
/// x86 or ARM (SHA-256 has, on most CPUs of the last years), and the TLS 1.3 key schedule is hashes
/// from end to end: in a reconnect storm SHA-384 took 8% of each side's time (docs/bench/STORM.md).
/// AES-128-GCM is TLS 1.3's mandatory suite and what browsers and most QUIC stacks prefer; the other
/// two stay on offer for peers that want them. A server follows its client's order (rustls'
/// default), so a client that prefers ChaCha20 (no AES instructions) gets it.
///
/// rustls 0.23.48 deprecates `crypto::ring::default_provider` because ring offers no post-quantum key
/// exchange, and offers no other way to build ring's provider: the allowance below keeps the warning
/// out of every dependent's build while qkv stays on ring (quinn's and wtransport's provider too, and
/// no C toolchain for aws-lc). Key exchange is therefore classical (X25519, P-256, P-384): see
/// docs/SECURITY.md, "Known gaps".
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

/// A certificate chain and its private key: a server's, or a client's for mutual TLS.
#[derive(Debug)]
pub struct Identity {
    /// The certificates, the leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

/// The files of a client certificate and its key, for mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientCertFiles {
    /// The PEM certificate chain, the client's certificate first.
    pub cert: PathBuf,
    /// The PEM private key of the client's certificate.
    pub key: PathBuf,
}

impl Identity {
    /// When its certificate (the chain's first) expires; `None` if it cannot be read.
    #[cfg(feature = "server")]
    pub fn not_after(&self) -> Option<std::time::SystemTime> {
        not_after(self.cert_chain.first()?)
    }

    /// Reads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1), and
    /// checks that the key is one qkv can sign with and belongs to the leaf certificate; an error names
    /// the files. A certificate expired, not valid yet or expiring within a week is warned about.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_chain = read_certificates(cert)?;
        #[cfg(feature = "server")]
        if let Some(leaf) = cert_chain.first()
            && is_a_ca(leaf)
        {
            // qkv's clients (rustls: CaUsedAsEndEntity) and browsers refuse it; clients on OpenSSL that
            // trust it directly (curl, node, Python) take it, so it is not refused, but said.
            tracing::warn!(
                file = %cert.display(),
                "the certificate is a CA's (basicConstraints CA:TRUE): qkv's own clients and browsers refuse it as a server's or a client's (`openssl req -x509` makes such certificates by default); give the one a CA issued"
            );
        }
        #[cfg(feature = "server")]
        if let Some(leaf) = cert_chain.first() {
            warn_if_not_valid_now(leaf, cert);
        }
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|cause| TlsError::Read { path: key.to_owned(), cause: PemFailure(cause) })?;
        let files = || (cert.to_owned(), key.to_owned());
        let signing = provider().key_provider.load_private_key(key_der.clone_key()).map_err(|e| {
            let (cert, key) = files();
            TlsError::BadKey { cert, key, reason: e.to_string() }
        })?;
        match rustls::sign::CertifiedKey::new(cert_chain.clone(), signing).keys_match() {
            // A key that cannot tell its public half is not refused (as rustls does not).
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                Ok(Identity { cert_chain, key: key_der })
            }
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                let (cert, key) = files();
                Err(TlsError::KeyMismatch { cert, key })
            }
            Err(e) => Err(TlsError::BadCertificate { path: cert.to_owned(), reason: e.to_string() }),
        }
    }
}

/// How long before its expiry a certificate loaded is warned about.
#[cfg(feature = "server")]
const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// When `cert` expires (its notAfter); `None` if it cannot be parsed.
#[cfg(feature = "server")]
pub fn not_after(cert: &CertificateDer<'_>) -> Option<std::time::SystemTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let seconds = u64::try_from(parsed.validity().not_after.timestamp()).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
}

/// Warns when the certificate in `file` (its leaf, `cert`) has expired, expires within
/// [`EXPIRY_WARNING`], or is not valid yet: every peer refuses it then, and the load gave no sign.
#[cfg(feature = "server")]
fn warn_if_not_valid_now(cert: &CertificateDer<'_>, file: &Path) {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else { return };
    let validity = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    let (not_before, not_after) = (validity.not_before.to_string(), validity.not_after.to_string());
    if validity.not_after < now {
        tracing::warn!(file = %file.display(), %not_after, "the certificate has expired: every peer that checks it refuses it");
    } else if validity.not_before > now {
        tracing::warn!(file = %file.display(), %not_before, "the certificate is not valid yet (is the clock right?): every peer that checks it refuses it");
    } else if validity
        .time_to_expiration()
        .is_some_and(|left| left.whole_seconds() < EXPIRY_WARNING.as_secs() as i64)
    {
        tracing::warn!(file = %file.display(), %not_after, "the certificate expires within a week: renew it (SIGHUP reloads it)");
    }
}

/// Whether `cert` says it is a CA's (basicConstraints CA:TRUE).
#[cfg(feature = "server")]
fn is_a_ca(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .and_then(|(_, parsed)| {
            parsed.basic_constraints().ok().flatten().map(|constraints| constraints.value.ca)
        })
        .unwrap_or(false)
}

/// A certificate's subject as a distinguished name, e.g. `CN=alice`: how the server names a client
/// that authenticated with a certificate. `None` if the certificate cannot be parsed (a verified one
/// always can).
#[cfg(feature = "server")]
pub fn certificate_subject(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.subject().to_string())
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |cause| TlsError::Read { path: path.to_owned(), cause: PemFailure(cause) };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

/// The trust anchors in a PEM file of CA certificates.
pub fn read_roots(ca_file: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(ca_file)? {
        roots.add(cert).map_err(|e| TlsError::BadCa { path: ca_file.to_owned(), reason: e.to_string() })?;
    }
    Ok(roots)
}

/// How many sessions a server remembers for resumption, unless configured otherwise. Each ticket
/// resumes one connection (see `server_configs`); a few hundred bytes each.
pub const DEFAULT_SESSION_CACHE: usize = 16 * 1024;

/// The most sessions `--session-cache` may keep per transport: its table is allocated whole at start
/// (about 100 MB of address space at this size), and a larger one is a typo, not a plan.
pub const MAX_SESSION_CACHE: usize = 1 << 20;

/// The sessions a server remembers for resumption, each taken out when a client resumes it.
///
/// rustls' own `ServerSessionMemoryCache` finds a session by its ticket in a hash map, but then
/// searches its list of keys, oldest first, to forget it: O(sessions) per resumption. Full (16k
/// sessions), that search took a third of the server's time in a reconnect storm of resuming clients
/// (docs/bench/STORM.md). This cache is scc's `HashCache`: taking a session is one hash lookup, and
/// when the cache is full a new session evicts the least recently used of the 32 in its bucket, so
/// it never holds more than `capacity` rounded up to a power of two (at least 64).
#[cfg(feature = "server")]
struct SessionCache {
    sessions: scc::HashCache<Vec<u8>, Vec<u8>>,
    /// The transport whose handshakes use it, as the metrics name it.
    transport: &'static str,
}

#[cfg(feature = "server")]
impl SessionCache {
    fn new(capacity: usize, transport: crate::transport::Transport) -> Arc<Self> {
        // Allocated whole at once: a growing cache evicts from its few buckets before it grows.
        let capacity = capacity.max(1);
        let sessions = scc::HashCache::with_capacity(capacity, capacity);
        Arc::new(SessionCache { sessions, transport: transport.name() })
    }

    /// Counts a ticket presented: known (the session resumes) or not.
    fn looked_up(&self, session: Option<Vec<u8>>) -> Option<Vec<u8>> {
        use crate::metrics::Resumption;
        let result = if session.is_some() { Resumption::Resumed } else { Resumption::Unknown };
        crate::metrics::resumption(self.transport, result);
        session
    }
}

#[cfg(feature = "server")]
impl rustls::server::StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        // Keys are random ticket identifiers: one already present is a collision, and kept as it is.
        self.sessions.put_sync(key, value).is_ok()
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.looked_up(self.sessions.read_sync(key, |_, value| value.clone()))
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.looked_up(self.sessions.remove_sync(key).map(|(_, value)| value))
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// Sessions are secrets: only their number is shown.
#[cfg(feature = "server")]
impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache").field("sessions", &self.sessions.len()).finish()
    }
}

/// A server's TLS configurations: one for QUIC, one for TLS over TCP, one for the web listener.
#[cfg(feature = "server")]
pub struct ServerTls {
    pub quic: ServerConfig,
    pub tcp: ServerConfig,
    /// ALPN `h2` and `http/1.1`, for the web listener (REST and gRPC), with sessions of its own
    /// (counted as `http`).
    pub web: ServerConfig,
    /// What both present and verify, for reloading.
    pub credentials: Credentials,
    /// The QUIC endpoint's settings, with the keys of its stateless resets and connection IDs: see
    /// [`quic_endpoint_config`].
    pub quic_endpoint: quinn::EndpointConfig,
}

/// The QUIC endpoint's settings, its keys derived from the server's private key (HKDF-Extract, RFC
/// 5869, with labels of qkv's own) so that they are the same after a restart: the key that makes
/// stateless reset tokens, and the key that makes its connection IDs recognisable as its own. A
/// restarted server can then end the connections of the process before it with a stateless reset,
/// and their clients learn at their next packet that the connection is gone instead of waiting for
/// the idle timeout. quinn's default, random keys per start, made the new process drop its
/// predecessor's packets as not its own and its resets unrecognisable. Servers that share a private
/// key share these keys (docs/SECURITY.md, "Stateless resets").
#[cfg(feature = "server")]
pub fn quic_endpoint_config(key: &PrivateKeyDer<'_>) -> quinn::EndpointConfig {
    use ring::hmac::{HMAC_SHA256, Key, sign};
    let derive = |label: &[u8]| sign(&Key::new(HMAC_SHA256, label), key.secret_der());
    let reset = Key::new(HMAC_SHA256, derive(b"qkv/1 QUIC stateless reset key").as_ref());
    let mut config = quinn::EndpointConfig::new(Arc::new(reset));
    let cid_key = Key::new(HMAC_SHA256, derive(b"qkv/1 QUIC connection ID key").as_ref());
    config.cid_generator(move || Box::new(TaggedConnectionIds { key: cid_key.clone() }));
    config
}

/// Random bytes of a connection ID made by [`TaggedConnectionIds`]: 2^48 of them.
#[cfg(feature = "server")]
const CID_NONCE: usize = 6;

/// Bytes of a connection ID's tag: forging one takes 2^47 tries on average.
#[cfg(feature = "server")]
const CID_TAG: usize = 6;

/// Connection IDs a server recognises as its own, after a restart too, and that nobody without its key
/// can make: [`CID_NONCE`] random bytes and a tag, HMAC-SHA256 of them truncated to [`CID_TAG`] bytes.
/// quinn's own `HashedConnectionIdGenerator` takes 3 random bytes and a check of a non-cryptographic
/// hash: 2^24 connection IDs in all, whose key can be worked out from one's own connections' IDs. With
/// the key kept across restarts, someone could then have collected the stateless reset token of every
/// connection ID the server could ever issue (the server answers a stray packet with one, for the ID
/// it carries), and kept them for as long as the private key lasts. Here a stray packet must carry an
/// ID the server actually issued to get a reset (docs/SECURITY.md, "Stateless resets").
#[cfg(feature = "server")]
struct TaggedConnectionIds {
    key: ring::hmac::Key,
}

#[cfg(feature = "server")]
impl TaggedConnectionIds {
    fn tag(&self, nonce: &[u8]) -> ring::hmac::Tag {
        ring::hmac::sign(&self.key, nonce)
    }
}

#[cfg(feature = "server")]
impl quinn_proto::ConnectionIdGenerator for TaggedConnectionIds {
    fn generate_cid(&mut self) -> quinn_proto::ConnectionId {
        use rand::Rng;
        let mut id = [0u8; CID_NONCE + CID_TAG];
        rand::rng().fill_bytes(&mut id[..CID_NONCE]);
        let tag = self.tag(&id[..CID_NONCE]);
        id[CID_NONCE..].copy_from_slice(&tag.as_ref()[..CID_TAG]);
        quinn_proto::ConnectionId::new(&id)
    }

    /// (Not in constant time: whether an ID is valid shows anyway, as a reset or none.)
    fn validate(&self, cid: &quinn_proto::ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        let valid = cid.len() == CID_NONCE + CID_TAG
            && self.tag(&cid[..CID_NONCE]).as_ref()[..CID_TAG] == cid[CID_NONCE..];
        if valid { Ok(()) } else { Err(quinn_proto::InvalidCid) }
    }

    fn cid_len(&self) -> usize {
        CID_NONCE + CID_TAG
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// TLS 1.3 server configurations offering ALPN `qkv/1`, with session resumption: after each handshake
/// the server sends the client two tickets, and remembers up to `session_cache` sessions per transport.
///
/// QUIC accepts 0-RTT early data with a ticket (quinn requires `max_early_data_size` = `u32::MAX`).
/// Tickets are stateful and single-use (rustls takes a session out of the cache when it resumes it), so
/// a captured ClientHello with early data cannot be replayed against this server: the replay's ticket
/// is gone and its early data is rejected. Replay protection ends with the process, but so do the
/// sessions: after a restart every old ticket falls back to a full handshake. The request-level rules
/// (only read-only commands run before the handshake completes) are in `transport::exchange`.
///
/// TLS over TCP resumes sessions (no certificate exchange) but takes no early data.
///
/// With `client_ca`, every client must present a certificate that chains to a CA in that PEM file
/// (mutual TLS); a resumed session keeps the identity its ticket was issued to.
#[cfg(feature = "server")]
pub fn server_configs(
    identity: Identity,
    session_cache: usize,
    client_ca: Option<&Path>,
    webtransport: WebTransportCert,
) -> Result<ServerTls, TlsError> {
    let quic_endpoint = quic_endpoint_config(&identity.key);
    let server = certified_key(identity)?;
    let browsers = match webtransport {
        WebTransportCert::SelfIssued => Some(RwLock::new(Arc::new(BrowserCert::issue(&server)?))),
        WebTransportCert::Server => None,
    };
    let cert = Arc::new(ReloadableCert { server: RwLock::new(Arc::new(server)), browsers });
    let builder =
        ServerConfig::builder_with_provider(provider()).with_protocol_versions(&[&rustls::version::TLS13])?;
    let (builder, verifier) = match client_ca {
        None => (builder.with_no_client_auth(), None),
        Some(ca_file) => {
            let verifier = Arc::new(ReloadableClientVerifier(RwLock::new(client_verifier(ca_file)?)));
            (builder.with_client_cert_verifier(verifier.clone()), Some((ca_file.to_owned(), verifier)))
        }
    };
    let mut tcp = builder.with_cert_resolver(cert.clone());
    tcp.alpn_protocols = vec![ALPN.to_vec()];
    // One cache per listener, so that each counts its own resumptions.
    let sessions = [
        SessionCache::new(session_cache, crate::transport::Transport::Tls),
        SessionCache::new(session_cache, crate::transport::Transport::Quic),
        SessionCache::new(session_cache, crate::transport::Transport::Http),
    ];
    tcp.session_storage = sessions[0].clone();
    let mut quic = tcp.clone();
    quic.alpn_protocols = vec![ALPN.to_vec(), H3_ALPN.to_vec()];
    quic.session_storage = sessions[1].clone();
    quic.max_early_data_size = u32::MAX;
    let mut web = tcp.clone();
    web.alpn_protocols = WEB_ALPN.iter().map(|p| p.to_vec()).collect();
    web.session_storage = sessions[2].clone();
    let credentials = Credentials { cert, client_ca: verifier, sessions };
    Ok(ServerTls { quic, tcp, web, credentials, quic_endpoint })
}

/// The certificate a server presents and the CA its clients' certificates must chain to, replaced by
/// [`Credentials::reload`] (on SIGHUP) for every handshake from then on. Established connections keep
/// the keys they agreed. The sessions remembered for resumption are forgotten at a reload: a resumed
/// handshake does not verify the client's certificate again, so a session made under the old client CA
/// must not outlive it.
#[cfg(feature = "server")]
#[derive(Clone)]
pub struct Credentials {
    cert: Arc<ReloadableCert>,
    client_ca: Option<(PathBuf, Arc<ReloadableClientVerifier>)>,
    sessions: [Arc<SessionCache>; 3],
}

#[cfg(feature = "server")]
impl Credentials {
    /// Reads the certificate chain and key again, and the client CA file if there is one, and uses
    /// them for new handshakes. All or nothing: a file that cannot be read or parsed, a key that does
    /// not match the certificate, or a CA file without a usable certificate leaves everything as it
    /// was, and says why.
    /// Returns when the new certificate expires.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<Option<std::time::SystemTime>, TlsError> {
        let identity = Identity::from_pem_files(cert, key)?;
        let not_after = identity.not_after();
        let certified = certified_key(identity)?;
        let verifier = match &self.client_ca {
            Some((ca_file, _)) => Some(client_verifier(ca_file)?),
            None => None,
        };
        if let Some(browsers) = &self.cert.browsers {
            // For the new certificate's names.
            *browsers.write() = Arc::new(BrowserCert::issue(&certified)?);
        }
        *self.cert.server.write() = Arc::new(certified);
        if let (Some((_, current)), Some(verifier)) = (&self.client_ca, verifier) {
            *current.0.write() = verifier;
        }
        for sessions in &self.sessions {
            sessions.sessions.clear_sync();
        }
        Ok(not_after)
    }
}

#[cfg(feature = "server")]
impl Credentials {
    /// What checks a client's certificate again once its handshake has completed, when client
    /// certificates are required.
    pub fn client_auth(&self) -> Option<ClientAuth> {
        self.client_ca.as_ref().map(|(_, verifier)| ClientAuth(verifier.clone()))
    }

    /// A TLS listener's side of its handshakes with `config`.
    pub fn door(&self, config: ServerConfig) -> TlsDoor {
        TlsDoor {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            client_auth: self.client_auth(),
        }
    }

    /// The DNS names and IP addresses the server's certificate is valid for.
    pub fn server_names(&self) -> Vec<String> {
        let server = self.cert.server.read().clone();
        server.end_entity_cert().map(|cert| subject_alt_names(cert)).unwrap_or_default()
    }

    /// The certificate WebTransport sessions are presented now, as browsers pin it.
    pub fn webtransport(&self) -> WebTransportIdentity {
        match &self.cert.browsers {
            Some(browsers) => {
                let current = browsers.read().clone();
                WebTransportIdentity {
                    sha256: current.sha256,
                    not_after: Some(current.not_after),
                    self_issued: true,
                }
            }
            None => {
                let server = self.cert.server.read().clone();
                let sha256 = server.end_entity_cert().map(|cert| sha256(cert.as_ref())).unwrap_or_default();
                WebTransportIdentity { sha256, not_after: None, self_issued: false }
            }
        }
    }

    /// Issues the self-issued WebTransport certificate again if it expires within `within`; whether it
    /// did. Fails (and keeps the current one) only if a new one cannot be made.
    pub fn renew_webtransport(&self, within: time::Duration) -> Result<bool, TlsError> {
        let Some(browsers) = &self.cert.browsers else { return Ok(false) };
        if browsers.read().not_after - time::OffsetDateTime::now_utc() > within {
            return Ok(false);
        }
        let renewed = BrowserCert::issue(&self.cert.server.read())?;
        *browsers.write() = Arc::new(renewed);
        Ok(true)
    }
}

/// What the QUIC endpoint presents to browsers' WebTransport sessions (ALPN `h3`).
#[cfg(feature = "server")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebTransportCert {
    /// A short-lived ECDSA certificate the server issues itself and renews, which browsers trust by
    /// its hash (`serverCertificateHashes`): for a server whose CA browsers do not know.
    #[default]
    SelfIssued,
    /// The server's own certificate: for one issued by a CA that browsers trust.
    Server,
}

#[cfg(feature = "server")]
impl std::str::FromStr for WebTransportCert {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "self-issued" => Ok(WebTransportCert::SelfIssued),
            "server" => Ok(WebTransportCert::Server),
            other => Err(format!("{other:?} is not a WebTransport certificate: self-issued or server")),
        }
    }
}

/// The certificate WebTransport sessions are presented: its SHA-256 (of the DER encoding, what
/// `serverCertificateHashes` takes), when it expires if the server issued it, and whether it did.
#[cfg(feature = "server")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebTransportIdentity {
    pub sha256: [u8; 32],
    pub not_after: Option<time::OffsetDateTime>,
    pub self_issued: bool,
}

#[cfg(feature = "server")]
fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// A self-issued certificate for WebTransport sessions.
#[cfg(feature = "server")]
#[derive(Debug)]
struct BrowserCert {
    key: Arc<rustls::sign::CertifiedKey>,
    sha256: [u8; 32],
    not_after: time::OffsetDateTime,
}

#[cfg(feature = "server")]
impl BrowserCert {
    /// A new one, for the names of the server's certificate `server`.
    fn issue(server: &rustls::sign::CertifiedKey) -> Result<BrowserCert, TlsError> {
        let names = server.end_entity_cert().map(|cert| subject_alt_names(cert)).unwrap_or_default();
        let names = if names.is_empty() {
            crate::certs::DEFAULT_SERVER_NAMES.iter().map(|n| n.to_string()).collect()
        } else {
            names
        };
        let issued = crate::certs::issue_webtransport_certificate(&names)
            .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
        let sha256 = sha256(issued.cert.as_ref());
        let key = certified_key(Identity { cert_chain: vec![issued.cert], key: issued.key })?;
        Ok(BrowserCert { key: Arc::new(key), sha256, not_after: issued.not_after })
    }
}

/// The DNS names and IP addresses a certificate is valid for.
#[cfg(feature = "server")]
fn subject_alt_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else { return Vec::new() };
    let Ok(Some(names)) = parsed.subject_alternative_name() else { return Vec::new() };
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            GeneralName::IPAddress(ip) => match ip.len() {
                4 => <[u8; 4]>::try_from(*ip).ok().map(|o| std::net::IpAddr::from(o).to_string()),
                16 => <[u8; 16]>::try_from(*ip).ok().map(|o| std::net::IpAddr::from(o).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A certificate chain and its key, checked to belong together.
#[cfg(feature = "server")]
fn certified_key(identity: Identity) -> Result<rustls::sign::CertifiedKey, TlsError> {
    if identity.cert_chain.is_empty() {
        return Err(TlsError::Config(rustls::Error::General(
            "the certificate file holds no certificate".into(),
        )));
    }
    Ok(rustls::sign::CertifiedKey::from_der(identity.cert_chain, identity.key, &provider())?)
}

#[cfg(feature = "server")]
fn client_verifier(ca_file: &Path) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca_file)?), provider())
        .build()
        .map_err(|e| TlsError::BadCa { path: ca_file.to_owned(), reason: e.to_string() })
}

/// The server certificate, replaceable, and the one WebTransport sessions get if the server issues its
/// own for them.
#[cfg(feature = "server")]
#[derive(Debug)]
struct ReloadableCert {
    server: RwLock<Arc<rustls::sign::CertifiedKey>>,
    browsers: Option<RwLock<Arc<BrowserCert>>>,
}

#[cfg(feature = "server")]
impl rustls::server::ResolvesServerCert for ReloadableCert {
    /// A client that offers HTTP/3 and not qkv's protocol is a browser opening a WebTransport session.
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        if let Some(browsers) = &self.browsers
            && let Some(mut offered) = hello.alpn()
            && offered.all(|protocol| protocol != ALPN)
            && hello.alpn().is_some_and(|mut offered| offered.any(|protocol| protocol == H3_ALPN))
        {
            return Some(browsers.read().key.clone());
        }
        Some(self.server.read().clone())
    }
}

/// Checks a client's certificate chain again once its handshake has completed, against the client CA
/// in use now and at the time now. A resumed handshake does not verify a certificate: it takes the
/// chain of the session it resumes, which the tickets it is given carry on, so without this a client
/// kept resuming past its certificate's expiry, and one whose handshake was in flight while a reload
/// replaced the client CA got sessions (remembered after the reload forgot the others) in the old
/// CA's name. A full handshake's chain, verified a moment before, passes again.
#[cfg(feature = "server")]
#[derive(Clone, Debug)]
pub struct ClientAuth(Arc<ReloadableClientVerifier>);

#[cfg(feature = "server")]
impl ClientAuth {
    /// Whether `chain` (end entity first) is trusted now.
    pub fn verify(&self, chain: Option<&[CertificateDer<'_>]>) -> Result<(), rustls::Error> {
        use rustls::server::danger::ClientCertVerifier;
        let Some((end_entity, intermediates)) = chain.and_then(<[_]>::split_first) else {
            return Err(rustls::Error::NoCertificatesPresented);
        };
        let now = rustls::pki_types::UnixTime::now();
        self.0.verify_client_cert(end_entity, intermediates, now).map(drop)
    }
}

/// A TLS listener's side of its handshakes: the acceptor, and when client certificates are required
/// what checks them again once a handshake has completed ([`ClientAuth`]).
#[cfg(feature = "server")]
#[derive(Clone)]
pub struct TlsDoor {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub client_auth: Option<ClientAuth>,
}

/// The verifier of client certificates (WebPKI against the client CA file), replaceable. It names no
/// acceptable CAs in its certificate request (the hint is optional in TLS 1.3, and a qkv client has
/// one certificate to present anyway).
#[cfg(feature = "server")]
#[derive(Debug)]
struct ReloadableClientVerifier(RwLock<Arc<dyn rustls::server::danger::ClientCertVerifier>>);

#[cfg(feature = "server")]
impl rustls::server::danger::ClientCertVerifier for ReloadableClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.0.read().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.read().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.read().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.read().supported_verify_schemes()
    }
}

/// TLS 1.3 client configuration that trusts exactly `roots`, presents `identity` if the server asks
/// for a client certificate, asks for ALPN `qkv/1`, and keeps session tickets in `tickets` (0-RTT over
/// QUIC). Only connections made with this very configuration resume its sessions:
/// [`Tickets::client_config`] builds one per CA file and client certificate, and keeps it.
pub fn client_config(
    roots: RootCertStore,
    tickets: &Tickets,
    identity: Option<Identity>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => builder.with_client_auth_cert(identity.cert_chain, identity.key)?,
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = match &tickets.store {
        Some(store) => Resumption::store(store.clone()),
        None => Resumption::disabled(),
    };
    // Over QUIC only: quinn sends early data itself. tokio-rustls sends none unless asked.
    config.enable_early_data = true;
    Ok(config)
}

/// What a client TLS configuration is built from: a CA file and, for mutual TLS, a client certificate.
type ConfigKey = (PathBuf, Option<ClientCertFiles>);

/// Where a client keeps the session tickets servers give it, to resume later connections (0-RTT over
/// QUIC, an abbreviated handshake over TLS). Cheap to clone; clones share the tickets. In memory only:
/// rustls 0.23, which quinn 0.11 needs, cannot serialise a client session.
#[derive(Clone)]
pub struct Tickets {
    /// `None`: resumption off.
    store: Option<Arc<dyn rustls::client::ClientSessionStore>>,
    /// The configurations built for this store, by CA file and client certificate. rustls resumes a
    /// session only with the configuration (the very same verifier and credentials) that made it, so
    /// each is built once.
    configs: Arc<Mutex<HashMap<ConfigKey, Arc<ClientConfig>>>>,
}

impl Tickets {
    /// Room for the tickets of `servers` servers (rustls keeps up to 8 per server name).
    pub fn in_memory(servers: usize) -> Self {
        let store: Arc<dyn rustls::client::ClientSessionStore> =
            Arc::new(ClientSessionMemoryCache::new(servers.max(1) * 8));
        Tickets { store: Some(store), configs: Arc::default() }
    }

    /// No resumption: every connection makes a full handshake.
    pub fn none() -> Self {
        Tickets { store: None, configs: Arc::default() }
    }

    /// Forgets the tickets of `server_name`, so that the next connection to it makes a full handshake:
    /// for a server that refused the client certificate of a session it resumed (it expired, or its
    /// CA was replaced), whose tickets, given with the refusal, carry that certificate on (every
    /// connection resumed one and was refused, never told why by a full handshake).
    pub fn forget(&self, server_name: &str) {
        let Some(store) = &self.store else { return };
        let Ok(name) = rustls::pki_types::ServerName::try_from(server_name.to_owned()) else { return };
        store.remove_tls12_session(&name);
        while store.take_tls13_ticket(&name).is_some() {}
    }

    /// The TLS configuration for servers whose certificates chain to the CAs in `ca_file`, presenting
    /// `client_cert` to servers that ask for one. The files are read the first time it is asked for;
    /// the configuration is kept, so that later connections resume sessions and do not read them again.
    pub fn client_config(
        &self,
        ca_file: &Path,
        client_cert: Option<&ClientCertFiles>,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let build = || {
            let identity = client_cert.map(|c| Identity::from_pem_files(&c.cert, &c.key)).transpose()?;
            client_config(read_roots(ca_file)?, self, identity).map(Arc::new)
        };
        let key = (ca_file.to_owned(), client_cert.cloned());
        let mut configs = self.configs.lock();
        if let Some(config) = configs.get(&key) {
            return Ok(config.clone());
        }
        let config = build()?;
        configs.insert(key, config.clone());
        Ok(config)
    }
}

impl Default for Tickets {
    fn default() -> Self {
        Tickets::in_memory(32)
    }
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.store.is_some() { "Tickets(in memory)" } else { "Tickets(none)" })
    }
}

#[cfg(test)]
mod tests {
    use rustls::server::StoresServerSessions;

    use super::*;

    /// A CA file that cannot be read says which, and keeps the operating system's error as its
    /// source, for a caller that wants its kind.
    #[test]
    fn a_missing_ca_file_keeps_the_io_error_underneath() {
        let error = read_roots(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
        let mut source = std::error::Error::source(&error);
        let mut kinds = Vec::new();
        while let Some(cause) = source {
            kinds.extend(cause.downcast_ref::<std::io::Error>().map(std::io::Error::kind));
            source = cause.source();
        }
        assert_eq!(kinds, [std::io::ErrorKind::NotFound], "{error:?}");
    }

    /// Connection IDs: the server's own validate, with this key or the same key after a restart; one
    /// changed byte, an ID of another key's, or random bytes do not (quinn's own generator left 2^24
    /// IDs and a key that could be worked out).
    #[cfg(feature = "server")]
    #[test]
    fn only_the_connection_ids_a_key_made_validate_with_it() {
        use quinn_proto::ConnectionIdGenerator;
        let ids =
            |label: &[u8]| TaggedConnectionIds { key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, label) };
        let (mut server, restarted, other) = (ids(b"key"), ids(b"key"), ids(b"another key"));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = server.generate_cid();
            assert_eq!(id.len(), server.cid_len());
            assert!(seen.insert(id.to_vec()), "IDs repeat");
            assert!(server.validate(&id).is_ok() && restarted.validate(&id).is_ok());
            assert!(other.validate(&id).is_err());
            for i in 0..id.len() {
                let mut changed = id.to_vec();
                changed[i] ^= 1;
                assert!(server.validate(&quinn_proto::ConnectionId::new(&changed)).is_err(), "byte {i}");
            }
        }
        let forged = (0..10_000).filter(|i| {
            let mut random = [0u8; CID_NONCE + CID_TAG];
            random[..8].copy_from_slice(&u64::to_le_bytes(*i));
            server.validate(&quinn_proto::ConnectionId::new(&random)).is_ok()
        });
        assert_eq!(forged.count(), 0);
        assert!(server.validate(&quinn_proto::ConnectionId::new(&[0u8; 8])).is_err(), "another length");
    }

    fn ticket(i: u32) -> Vec<u8> {
        let mut key = vec![0u8; 32];
        key[..4].copy_from_slice(&i.to_le_bytes());
        key
    }

    /// Runs a TLS handshake in memory and returns the suite agreed on.
    fn agreed_suite(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> rustls::CipherSuite {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(client, name).unwrap();
        let mut server = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            let mut flight = Vec::new();
            client.write_tls(&mut flight).unwrap();
            server.read_tls(&mut &flight[..]).unwrap();
            server.process_new_packets().unwrap();
            flight.clear();
            server.write_tls(&mut flight).unwrap();
            client.read_tls(&mut &flight[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        client.negotiated_cipher_suite().expect("a completed handshake").suite()
    }

    #[test]
    fn aes_128_is_preferred_and_a_client_that_prefers_another_suite_gets_it() {
        let dir = tempfile::tempdir().unwrap();
        let certs = crate::certs::CertDir::new(dir.path());
        certs.ensure_server_certificate().unwrap();
        let identity = Identity::from_pem_files(&certs.server_cert(), &certs.server_key()).unwrap();
        let server = Arc::new(server_configs(identity, 16, None, WebTransportCert::Server).unwrap().tcp);
        let roots = read_roots(&certs.ca_cert()).unwrap();

        let qkv_client = Arc::new(client_config(roots.clone(), &Tickets::none(), None).unwrap());
        assert_eq!(agreed_suite(qkv_client, server.clone()), rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);

        // A phone without AES instructions puts ChaCha20 first; the server follows its order.
        use rustls::crypto::ring::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256};
        let chacha_first = CryptoProvider {
            cipher_suites: vec![TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_128_GCM_SHA256],
            ..(*provider()).clone()
        };
        let chacha_client = ClientConfig::builder_with_provider(Arc::new(chacha_first))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert_eq!(
            agreed_suite(Arc::new(chacha_client), server),
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        );
    }

    /// A certificate and a key that do not belong together, or a certificate that cannot be parsed, are
    /// refused when they are read, naming the files (the server's start and its SIGHUP reload).
    #[test]
    fn an_identity_whose_key_or_certificate_is_wrong_names_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let certs = crate::certs::CertDir::new(dir.path());
        certs.ensure_server_certificate().unwrap();
        let (cert, key, ca_key) = (certs.server_cert(), certs.server_key(), certs.ca_key());
        assert!(Identity::from_pem_files(&cert, &key).is_ok());

        let mismatch = Identity::from_pem_files(&cert, &ca_key).unwrap_err();
        assert!(matches!(&mismatch, TlsError::KeyMismatch { .. }), "{mismatch:?}");
        let message = mismatch.to_string();
        assert!(message.contains("ca-key.pem") && message.contains("server.pem"), "{message}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let unparsed = Identity::from_pem_files(&garbage, &key).unwrap_err();
        assert!(matches!(&unparsed, TlsError::BadCertificate { .. }), "{unparsed:?}");
        assert!(unparsed.to_string().contains("garbage.pem"), "{unparsed}");

        // A key cut short: its file, and the section that has no end, in words.
        let cut = dir.path().join("cut-key.pem");
        std::fs::write(&cut, "-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap();
        let unread = Identity::from_pem_files(&cert, &cut).unwrap_err().to_string();
        assert!(
            unread.contains("cut-key.pem") && unread.contains("PRIVATE KEY section has no END line"),
            "{unread}"
        );
    }

    #[test]
    fn a_session_resumes_once() {
        let cache = SessionCache::new(16, crate::transport::Transport::Quic);
        assert!(cache.put(ticket(1), b"session".to_vec()));
        assert_eq!(cache.get(&ticket(1)).as_deref(), Some(&b"session"[..]));
        assert_eq!(cache.take(&ticket(1)).as_deref(), Some(&b"session"[..]));
        assert_eq!(cache.take(&ticket(1)), None, "a ticket taken twice would allow a replay");
        assert_eq!(cache.get(&ticket(1)), None);
    }

    #[test]
    fn the_cache_stays_within_its_capacity_and_keeps_recent_sessions() {
        let capacity = 1000;
        let cache = SessionCache::new(capacity, crate::transport::Transport::Quic);
        for i in 0..20 * capacity as u32 {
            cache.put(ticket(i), vec![1; 100]);
        }
        let bound = capacity.next_power_of_two().max(64);
        assert!(cache.sessions.len() <= bound, "{} sessions held", cache.sessions.len());
        // Eviction is least recently used per bucket: the newest sessions are all still there.
        let newest = 20 * capacity as u32 - 10;
        assert!((newest..newest + 10).all(|i| cache.take(&ticket(i)).is_some()));
    }
}
