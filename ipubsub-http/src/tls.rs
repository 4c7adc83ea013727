//! TLS (feature `tls`, rustls with the ring provider): [`ServerTls`] for the listener
//! ([`serve_tls`](crate::serve_tls)) and [`PeerTls`] for forwarding to members that listen
//! with TLS themselves.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {path}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    /// rustls refused the certificates or the key (a key that does not match, say).
    #[error("TLS refused the configuration: {0}")]
    Rejected(#[from] rustls::Error),
    /// The server name to check members' certificates for is not a DNS name or an IP address.
    #[error("{0:?} is not a DNS name or an IP address")]
    BadServerName(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        path: path.to_owned(),
        source,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certificates)
}

/// The listener's certificate and key. Cheap to clone; clones share the certificate, which
/// [`reload_pem_files`](Self::reload_pem_files) replaces for the handshakes that follow.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    certificate: Arc<Reloadable>,
}

impl ServerTls {
    /// Reads the certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8, PKCS#1
    /// or SEC1). TLS 1.2 and 1.3; HTTP/1.1 is offered by ALPN.
    pub fn from_pem_files(certificate_chain: &Path, key: &Path) -> Result<Self, TlsError> {
        let certificate = Arc::new(Reloadable(RwLock::new(certified_key(
            certificate_chain,
            key,
        )?)));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&certificate) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            certificate,
        })
    }

    /// Reads the certificate chain and key again (a reload): handshakes from now on present
    /// them, connections already open keep theirs. On an error nothing changes.
    pub fn reload_pem_files(&self, certificate_chain: &Path, key: &Path) -> Result<(), TlsError> {
        let loaded = certified_key(certificate_chain, key)?;
        *self
            .certificate
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner) = loaded;
        Ok(())
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.config))
    }
}

/// A certificate chain with its key, checked to match (rustls refuses a mismatch).
fn certified_key(certificate_chain: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certificates(certificate_chain)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem {
        path: key.to_owned(),
        source,
    })?;
    Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider())?))
}

/// The listener's one certificate, replaceable.
#[derive(Debug)]
struct Reloadable(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// How this node talks HTTPS to the members it forwards to: the certificates it trusts, and
/// the name it checks their certificates for. Cheap to clone.
#[derive(Clone)]
pub struct PeerTls {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) server_name: Option<ServerName<'static>>,
}

impl PeerTls {
    /// Trusts the certificates in `roots` (PEM: the CA that signed the members' certificates,
    /// or the members' own self-signed ones). Members' certificates are checked for the IP
    /// address each advertises, or for `server_name` when given (one name on every member's
    /// certificate).
    pub fn from_pem_file(roots: &Path, server_name: Option<&str>) -> Result<Self, TlsError> {
        let mut store = RootCertStore::empty();
        for certificate in certificates(roots)? {
            store.add(certificate)?;
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(store)
            .with_no_client_auth();
        let server_name = server_name
            .map(|name| {
                ServerName::try_from(name.to_owned())
                    .map_err(|_| TlsError::BadServerName(name.to_owned()))
            })
            .transpose()?;
        Ok(Self {
            config: Arc::new(config),
            server_name,
        })
    }
}

impl PartialEq for PeerTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Eq for PeerTls {}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}
