//! rustls configurations: the ring provider (never aws-lc), TLS 1.3 only, ALPN `qkv/1`, and PEM files
//! read through rustls-pki-types' `PemObject`.
//!
//! Clients verify the server's certificate against a CA file, always: nothing in qkv skips verification.
//! The server name checked is the one the client dialled (a DNS name or an IP address), never a
//! hard-coded one. With mutual TLS (a client CA given to the server) the server verifies clients'
//! certificates the same way, against its client CA file, and knows each client by its certificate's
//! subject ([`certificate_subject`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The ALPN protocol identifier of qkv's wire protocol, version 1.
pub const ALPN: &[u8] = b"qkv/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {cause}", path.display())]
    Read { path: PathBuf, cause: rustls::pki_types::pem::Error },
    #[error("{} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no CA certificate that can be trusted: {reason}", path.display())]
    BadCa { path: PathBuf, reason: String },
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The only crypto provider qkv uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its private key: a server's, or a client's for mutual TLS.
#[derive(Debug)]
pub struct Identity {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// The files of a client certificate and its key, for mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientCertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Identity {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_chain = read_certificates(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|cause| TlsError::Read { path: key.to_owned(), cause })?;
        Ok(Identity { cert_chain, key })
    }
}

/// A certificate's subject as a distinguished name, e.g. `CN=alice`: how the server names a client
/// that authenticated with a certificate. `None` if the certificate cannot be parsed (a verified one
/// always can).
pub fn certificate_subject(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.subject().to_string())
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |cause| TlsError::Read { path: path.to_owned(), cause };
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
/// resumes one connection (see [`server_configs`]); a few hundred bytes each.
pub const DEFAULT_SESSION_CACHE: usize = 16 * 1024;

/// A server's TLS configurations: one for QUIC, one for TLS over TCP.
pub struct ServerTls {
    pub quic: ServerConfig,
    pub tcp: ServerConfig,
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
pub fn server_configs(
    identity: Identity,
    session_cache: usize,
    client_ca: Option<&Path>,
) -> Result<ServerTls, TlsError> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca_file)?), provider())
                    .build()
                    .map_err(|e| TlsError::BadCa { path: ca_file.to_owned(), reason: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut tcp = builder.with_single_cert(identity.cert_chain, identity.key)?;
    tcp.alpn_protocols = vec![ALPN.to_vec()];
    tcp.session_storage = ServerSessionMemoryCache::new(session_cache.max(1));
    let mut quic = tcp.clone();
    quic.session_storage = ServerSessionMemoryCache::new(session_cache.max(1));
    quic.max_early_data_size = u32::MAX;
    Ok(ServerTls { quic, tcp })
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
        let mut configs = self.configs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
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
