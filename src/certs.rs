//! Certificate files for development and small deployments: a CA and a server certificate signed by it,
//! made with rcgen. Clients trust the CA (`ca.pem`); the server presents `server.pem`.
//!
//! Layout of a certificate directory:
//!
//! | file             | what                         | mode |
//! |------------------|------------------------------|------|
//! | `ca.pem`         | CA certificate (give to clients) | 0644 |
//! | `ca-key.pem`     | CA private key               | 0600 |
//! | `server.pem`     | server certificate           | 0644 |
//! | `server-key.pem` | server private key           | 0600 |
//! | `NAME.pem`       | client certificate (`qkv cert --client NAME`), for mutual TLS | 0644 |
//! | `NAME-key.pem`   | its private key (give both to that client) | 0600 |

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::ServerName;
use time::{Duration, OffsetDateTime};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server-key.pem";

/// Names every generated server certificate is valid for, so local clients work out of the box.
pub const DEFAULT_SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

const CA_VALIDITY: Duration = Duration::days(3650);
const SERVER_VALIDITY: Duration = Duration::days(825);
const CLIENT_VALIDITY: Duration = Duration::days(397);
const PRIVATE_MODE: u32 = 0o600;
const PUBLIC_MODE: u32 = 0o644;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("refusing to overwrite {}; pass --force to replace them", list(paths))]
    Exists { paths: Vec<PathBuf> },
    #[error("{} exists but {} does not; restore it or remove both", present.display(), missing.display())]
    Incomplete { present: PathBuf, missing: PathBuf },
    #[error("{name:?} cannot be a client name: {reason}")]
    InvalidClientName { name: String, reason: &'static str },
    #[error("{name:?} cannot be a certificate name: {cause}")]
    InvalidName { name: String, cause: String },
    #[error("cannot use the CA in {}: {cause}", dir.display())]
    BadCa { dir: PathBuf, cause: rcgen::Error },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

fn list(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// What was found or made in a certificate directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provisioned {
    /// A server certificate and key were already there; nothing was written.
    Existing,
    /// A server certificate was issued by the CA already in the directory.
    IssuedByExistingCa { names: Vec<String> },
    /// A new CA and a server certificate signed by it were written.
    NewCaAndServer { names: Vec<String> },
}

/// The paths of one certificate directory.
#[derive(Debug, Clone)]
pub struct CertDir {
    dir: PathBuf,
}

impl CertDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CertDir { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    pub fn ca_key(&self) -> PathBuf {
        self.dir.join(CA_KEY)
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join(SERVER_CERT)
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join(SERVER_KEY)
    }

    /// What `qkv serve` does at start: use the server certificate if there is one; otherwise issue one
    /// for the default names, from the directory's CA if it has one or from a new CA if not.
    pub fn ensure_server_certificate(&self) -> Result<Provisioned, CertError> {
        // Certificates in place need no lock (nor a writable directory). Anything else is looked at
        // again under the lock: one half there may be another process's issuing, not yet done.
        // (Files appear whole: `write_file`.)
        if let Ok(true) = present_pair(&self.server_cert(), &self.server_key()) {
            return Ok(Provisioned::Existing);
        }
        // A lock that cannot be taken (a read-only directory) matters only if there is issuing to do;
        // what is there, or half there, says more.
        let issuing = self.lock();
        if present_pair(&self.server_cert(), &self.server_key())? {
            return Ok(Provisioned::Existing);
        }
        let _issuing = issuing?;
        self.issue_server_certificate_locked(&[], false)
    }

    /// The directory (created if need be), locked against other processes issuing into it until the
    /// returned handle is dropped: an exclusive `flock` on its lock file (`.qkv-certs.lock`; on NFS the
    /// server holds such a lock for every host, where a lock on the directory would be each host's
    /// own). Where that file cannot be made or opened (a read-only directory, another user's file),
    /// on the directory itself: this process cannot issue there then, but it still waits for one that
    /// can. What an issuing cut short left beside its files (`*.pem.new`) is removed once locked.
    fn lock(&self) -> Result<fs::File, CertError> {
        let io_error = |cause| CertError::Io { path: self.dir.clone(), cause };
        if self.dir.exists() && !self.dir.is_dir() {
            // create_dir_all would say "File exists", which tells nothing of the kind.
            let cause =
                std::io::Error::new(std::io::ErrorKind::NotADirectory, "it exists, and is not a directory");
            return Err(io_error(cause));
        }
        fs::create_dir_all(&self.dir).map_err(io_error)?;
        // Anyone who may issue here may lock (the umask applies).
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o666)
            .open(self.dir.join(LOCK_FILE));
        let locked = match lock_file {
            Ok(file) => lock_exclusively(file, &self.dir),
            Err(_) => lock_exclusively(fs::File::open(&self.dir).map_err(io_error)?, &self.dir),
        };
        let locked = locked.map_err(io_error)?;
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().ends_with(".pem.new") {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(locked)
    }

    /// What `qkv cert` does: issue a server certificate for the default names plus `extra_names`
    /// (DNS names or IP addresses), signed by the directory's CA, creating the CA first if there is none.
    /// Refuses to replace an existing server certificate unless `force`; never replaces the CA.
    pub fn issue_server_certificate(
        &self,
        extra_names: &[String],
        force: bool,
    ) -> Result<Provisioned, CertError> {
        let _issuing = self.lock()?;
        self.issue_server_certificate_locked(extra_names, force)
    }

    /// [`CertDir::issue_server_certificate`], its caller holding the directory's lock.
    fn issue_server_certificate_locked(
        &self,
        extra_names: &[String],
        force: bool,
    ) -> Result<Provisioned, CertError> {
        refuse_overwrite(&[self.server_cert(), self.server_key()], force)?;

        let mut names: Vec<String> = DEFAULT_SERVER_NAMES.iter().map(|n| n.to_string()).collect();
        for name in extra_names {
            // Accept exactly the names a client can dial and verify: DNS names and IP addresses.
            if let Err(e) = ServerName::try_from(name.as_str()) {
                return Err(CertError::InvalidName { name: name.clone(), cause: e.to_string() });
            }
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        let mut params = CertificateParams::new(names.clone())
            .map_err(|e| CertError::InvalidName { name: names.join(", "), cause: e.to_string() })?;
        params.distinguished_name = common_name(&names[0]);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity(SERVER_VALIDITY);
        let new_ca = self.sign_and_write(&params, &self.server_cert(), &self.server_key(), force)?;
        Ok(if new_ca {
            Provisioned::NewCaAndServer { names }
        } else {
            Provisioned::IssuedByExistingCa { names }
        })
    }

    /// Signs `params` with a new key and the directory's CA, creating the CA first if there is none,
    /// and writes the certificate and its key to `cert` and `key` (replacing them only with `force`).
    /// Returns whether a CA was created.
    fn sign_and_write(
        &self,
        params: &CertificateParams,
        cert: &Path,
        key: &Path,
        force: bool,
    ) -> Result<bool, CertError> {
        let had_ca = present_pair(&self.ca_cert(), &self.ca_key())?;
        let (ca_cert_pem, ca_key) = if had_ca { self.read_ca()? } else { new_ca()? };
        let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key)
            .map_err(|cause| CertError::BadCa { dir: self.dir.clone(), cause })?;
        let new_key = KeyPair::generate()?;
        let new_cert = params.signed_by(&new_key, &issuer)?;
        if !had_ca {
            write_file(&self.ca_key(), issuer.key().serialize_pem().as_bytes(), PRIVATE_MODE, false)?;
            write_file(&self.ca_cert(), ca_cert_pem.as_bytes(), PUBLIC_MODE, false)?;
        }
        write_file(key, new_key.serialize_pem().as_bytes(), PRIVATE_MODE, force)?;
        write_file(cert, new_cert.pem().as_bytes(), PUBLIC_MODE, force)?;
        Ok(!had_ca)
    }

    /// The certificate and key files of client `name`.
    pub fn client_files(&self, name: &str) -> (PathBuf, PathBuf) {
        (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}-key.pem")))
    }

    /// What `qkv cert --client NAME` does: issue a client certificate (subject `CN=NAME`, for client
    /// authentication only) signed by the directory's CA, creating the CA first if there is none.
    /// Servers started with `--client-ca DIR/ca.pem` accept it. Refuses to replace an existing client
    /// certificate of that name unless `force`. Returns the certificate and key paths, and whether a
    /// new CA was created.
    pub fn issue_client_certificate(&self, name: &str, force: bool) -> Result<IssuedClient, CertError> {
        self.issue_client_certificate_valid_for(name, force, CLIENT_VALIDITY.unsigned_abs())
    }

    /// [`CertDir::issue_client_certificate`], valid for `valid_for` from now, at most 397 days (`qkv
    /// cert --client NAME --valid-for DURATION`): short-lived client certificates stand in for revocation, which qkv
    /// does not check (docs/SECURITY.md).
    pub fn issue_client_certificate_valid_for(
        &self,
        name: &str,
        force: bool,
        valid_for: std::time::Duration,
    ) -> Result<IssuedClient, CertError> {
        check_client_name(name)?;
        let _issuing = self.lock()?;
        let (cert, key) = self.client_files(name);
        refuse_overwrite(&[cert.clone(), key.clone()], force)?;
        let mut params = CertificateParams::new(Vec::new())?;
        params.distinguished_name = common_name(name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let valid_for = Duration::try_from(valid_for).unwrap_or(CLIENT_VALIDITY).min(CLIENT_VALIDITY);
        (params.not_before, params.not_after) = validity(valid_for);
        let new_ca = self.sign_and_write(&params, &cert, &key, force)?;
        Ok(IssuedClient { cert, key, new_ca })
    }

    fn read_ca(&self) -> Result<(String, KeyPair), CertError> {
        let cert = read_to_string(&self.ca_cert())?;
        let key = KeyPair::from_pem(&read_to_string(&self.ca_key())?)
            .map_err(|cause| CertError::BadCa { dir: self.dir.clone(), cause })?;
        Ok((cert, key))
    }
}

/// What [`CertDir::issue_client_certificate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedClient {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// True when the directory had no CA and one was created.
    pub new_ca: bool,
}

/// A client name becomes a file name and a certificate subject: letters, digits, '.', '_' and '-',
/// not starting with '.', and none of the names the directory's own files use.
fn check_client_name(name: &str) -> Result<(), CertError> {
    let invalid = |reason| Err(CertError::InvalidClientName { name: name.to_owned(), reason });
    if name.is_empty() || name.len() > 64 {
        return invalid("it must be 1 to 64 characters long");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        || name.starts_with('.')
    {
        return invalid("use letters, digits, '.', '_' and '-' only, not starting with '.'");
    }
    if ["ca", "server"].contains(&name) || name.ends_with("-key") {
        return invalid("the certificate directory's own files use that name");
    }
    Ok(())
}

/// How long a certificate for browsers' WebTransport sessions is valid: a browser accepts a certificate
/// by its hash (`serverCertificateHashes`, W3C WebTransport) only if it is valid for at most 14 days;
/// 13, plus the hour before issue that tolerates clock skew.
pub const WEBTRANSPORT_VALIDITY: Duration = Duration::days(13);

/// A self-signed certificate for browsers' WebTransport sessions, which trust it by its hash.
pub struct SelfIssued {
    pub cert: rustls::pki_types::CertificateDer<'static>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
    pub not_after: OffsetDateTime,
}

/// Issues a self-signed certificate for `names` (at least one), of the only kind browsers accept by
/// hash: an ECDSA P-256 key, valid for [`WEBTRANSPORT_VALIDITY`]. It is not signed by the directory's
/// CA: a browser pins it by its hash, and a CA the browser does not know adds nothing.
pub fn issue_webtransport_certificate(names: &[String]) -> Result<SelfIssued, CertError> {
    let mut params = CertificateParams::new(names.to_vec())
        .map_err(|e| CertError::InvalidName { name: names.join(", "), cause: e.to_string() })?;
    params.distinguished_name = common_name(names.first().map_or("qkv", String::as_str));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    (params.not_before, params.not_after) = validity(WEBTRANSPORT_VALIDITY);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into();
    Ok(SelfIssued { cert: cert.der().clone(), key, not_after: params.not_after })
}

/// A self-signed CA that may sign end-entity certificates only (path length 0).
fn new_ca() -> Result<(String, KeyPair), CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::new())?;
    // A name of its own per CA: verifiers find a certificate's issuer by name, so two CAs named alike
    // would turn "not signed by a CA you trust" into a confusing bad-signature error.
    let id: String = key.public_key_raw().iter().take(4).map(|b| format!("{b:02x}")).collect();
    params.distinguished_name = common_name(&format!("qkv development CA {id}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    (params.not_before, params.not_after) = validity(CA_VALIDITY);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key))
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// From an hour ago (tolerating clock skew between machines) for `length`, in whole seconds: what a certificate
/// can say, and so what the server reports of it (`/webtransport-cert`'s `not_after`).
fn validity(length: Duration) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    (now - Duration::hours(1), now + length)
}

/// The file in a certificate directory whose lock issuers hold ([`CertDir::lock`]).
const LOCK_FILE: &str = ".qkv-certs.lock";

/// `file` locked exclusively, saying so in the log if another process holds it (`dir` named).
fn lock_exclusively(file: fs::File, dir: &Path) -> std::io::Result<fs::File> {
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => {
            tracing::info!(dir = %dir.display(), "waiting for another process issuing certificates there");
            file.lock()?;
            Ok(file)
        }
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Refuses, unless `force`, when any of `paths` exists.
fn refuse_overwrite(paths: &[PathBuf], force: bool) -> Result<(), CertError> {
    let existing: Vec<PathBuf> = paths.iter().filter(|p| p.exists()).cloned().collect();
    match existing.is_empty() || force {
        true => Ok(()),
        false => Err(CertError::Exists { paths: existing }),
    }
}

/// True when both files exist, false when neither does, an error when only one does.
fn present_pair(cert: &Path, key: &Path) -> Result<bool, CertError> {
    match (cert.exists(), key.exists()) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) => Err(CertError::Incomplete { present: cert.to_owned(), missing: key.to_owned() }),
        (false, true) => Err(CertError::Incomplete { present: key.to_owned(), missing: cert.to_owned() }),
    }
}

fn read_to_string(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|cause| CertError::Io { path: path.to_owned(), cause })
}

/// Writes `contents` with permissions `mode`, whole: into a new file beside `path`, synced, which then
/// becomes `path`, so that a reader (a server starting without the directory's lock) sees the file
/// whole or not at all. Without `overwrite` `path` must not exist yet, checked atomically by the link
/// that makes it; with `overwrite` the new file is renamed over the old one.
fn write_file(path: &Path, contents: &[u8], mode: u32, overwrite: bool) -> Result<(), CertError> {
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |cause| CertError::Io { path, cause }
    };
    let new = path.with_extension("pem.new");
    // A leftover from an interrupted run would make `create_new` fail.
    let _ = fs::remove_file(&new);
    let mut file =
        OpenOptions::new().write(true).create_new(true).mode(mode).open(&new).map_err(io_error(&new))?;
    file.write_all(contents).map_err(io_error(&new))?;
    file.sync_all().map_err(io_error(&new))?;
    let placed = match overwrite {
        true => fs::rename(&new, path),
        // A link fails if `path` exists. Where the filesystem has no hard links (FAT, some FUSE and
        // SMB mounts) a rename places it as well: every writer holds the directory's lock, and
        // `refuse_overwrite` found `path` absent under it.
        false => match fs::hard_link(&new, path) {
            Ok(()) => fs::remove_file(&new),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
            Err(_) => fs::rename(&new, path),
        },
    };
    if placed.is_err() {
        let _ = fs::remove_file(&new);
    }
    placed.map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::tls::{Identity, read_roots};

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Servers started together on an empty directory (a test suite, a supervisor starting several):
    /// one issues, the others wait for it and use what it made; none fails on a half-written pair.
    #[test]
    fn servers_starting_together_on_an_empty_directory_share_one_ca() {
        let dir = tempfile::tempdir().unwrap();
        let certs = CertDir::new(dir.path().join("certs"));
        let starts: Vec<_> = (0..8)
            .map(|_| {
                let certs = CertDir::new(certs.path());
                std::thread::spawn(move || {
                    let provisioned = certs.ensure_server_certificate();
                    // What each found is whole: a server goes on to load it at once.
                    Identity::from_pem_files(&certs.server_cert(), &certs.server_key()).unwrap();
                    provisioned
                })
            })
            .collect();
        let provisioned: Vec<_> = starts.into_iter().map(|start| start.join().unwrap().unwrap()).collect();
        assert!(!certs.path().join("server.pem.new").exists(), "nothing is left beside the files");
        let issued = provisioned.iter().filter(|p| **p != Provisioned::Existing).count();
        assert_eq!(issued, 1, "{provisioned:?}");
        read_roots(&certs.ca_cert()).unwrap();
        Identity::from_pem_files(&certs.server_cert(), &certs.server_key()).unwrap();
    }

    #[test]
    fn a_fresh_directory_gets_a_ca_and_server_certificate_with_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        let certs = CertDir::new(dir.path().join("certs"));
        let provisioned = certs.ensure_server_certificate().unwrap();
        assert!(matches!(provisioned, Provisioned::NewCaAndServer { .. }));
        assert_eq!(mode(&certs.ca_key()), 0o600);
        assert_eq!(mode(&certs.server_key()), 0o600);
        assert_eq!(mode(&certs.ca_cert()), 0o644);
        // The files are usable by the TLS layer.
        read_roots(&certs.ca_cert()).unwrap();
        Identity::from_pem_files(&certs.server_cert(), &certs.server_key()).unwrap();
        // Second start: nothing changes.
        let before = fs::read(certs.server_cert()).unwrap();
        assert_eq!(certs.ensure_server_certificate().unwrap(), Provisioned::Existing);
        assert_eq!(fs::read(certs.server_cert()).unwrap(), before);
    }

    #[test]
    fn existing_files_are_not_overwritten_without_force_and_the_ca_is_kept_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let certs = CertDir::new(dir.path());
        certs.issue_server_certificate(&[], false).unwrap();
        let ca_before = fs::read(certs.ca_cert()).unwrap();
        let err = certs.issue_server_certificate(&["db.example".into()], false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");

        let provisioned =
            certs.issue_server_certificate(&["db.example".into(), "10.0.0.7".into()], true).unwrap();
        let Provisioned::IssuedByExistingCa { names } = provisioned else {
            panic!("expected a certificate from the existing CA, got {provisioned:?}")
        };
        assert!(names.contains(&"db.example".to_string()) && names.contains(&"localhost".to_string()));
        assert_eq!(fs::read(certs.ca_cert()).unwrap(), ca_before, "the CA must be kept");
        assert_eq!(mode(&certs.server_key()), 0o600);
    }

    #[test]
    fn a_server_certificate_without_its_key_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let certs = CertDir::new(dir.path());
        certs.ensure_server_certificate().unwrap();
        fs::remove_file(certs.server_key()).unwrap();
        let err = certs.ensure_server_certificate().unwrap_err();
        assert!(matches!(err, CertError::Incomplete { .. }), "{err}");
    }

    #[test]
    fn a_client_certificate_is_signed_by_the_directorys_ca_and_names_its_client() {
        let dir = tempfile::tempdir().unwrap();
        let certs = CertDir::new(dir.path());
        certs.ensure_server_certificate().unwrap();
        let issued = certs.issue_client_certificate("alice", false).unwrap();
        assert!(!issued.new_ca);
        assert_eq!(mode(&issued.key), 0o600);
        let identity = Identity::from_pem_files(&issued.cert, &issued.key).unwrap();
        let subject = crate::tls::certificate_subject(&identity.cert_chain[0]).unwrap();
        assert_eq!(subject, "CN=alice");
        // The server's CA verifies it as a client certificate.
        let roots = std::sync::Arc::new(read_roots(&certs.ca_cert()).unwrap());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, crate::tls::provider())
                .build()
                .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        verifier.verify_client_cert(&identity.cert_chain[0], &[], now).unwrap();

        let err = certs.issue_client_certificate("alice", false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        certs.issue_client_certificate("alice", true).unwrap();
    }

    #[test]
    fn client_names_that_are_not_plain_file_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let certs = CertDir::new(dir.path());
        for name in ["", "../etc/passwd", ".hidden", "a b", "ca", "server", "bob-key", &"x".repeat(65)] {
            let err = certs.issue_client_certificate(name, false).unwrap_err();
            assert!(matches!(err, CertError::InvalidClientName { .. }), "{name:?}: {err}");
        }
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none(), "nothing was written");
    }

    #[test]
    fn invalid_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            CertDir::new(dir.path()).issue_server_certificate(&["bad name\u{7f}".into()], false).unwrap_err();
        assert!(matches!(err, CertError::InvalidName { .. }), "{err}");
    }
}
