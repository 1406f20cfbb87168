//! rustls configurations: the ring provider (never aws-lc), TLS 1.3 only, ALPN `qkv/1`, and PEM files
//! read through rustls-pki-types' `PemObject`.
//!
//! Clients verify the server's certificate against a CA file, always: nothing in qkv skips verification.
//! The server name checked is the one the client dialled (a DNS name or an IP address), never a
//! hard-coded one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
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

/// A server's certificate chain and private key.
#[derive(Debug)]
pub struct ServerIdentity {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl ServerIdentity {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_chain = read_certificates(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|cause| TlsError::Read { path: key.to_owned(), cause })?;
        Ok(ServerIdentity { cert_chain, key })
    }
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

/// TLS 1.3 server configuration offering ALPN `qkv/1`.
pub fn server_config(identity: ServerIdentity) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain, identity.key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// TLS 1.3 client configuration that trusts exactly `roots` and asks for ALPN `qkv/1`.
pub fn client_config(roots: RootCertStore) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}
