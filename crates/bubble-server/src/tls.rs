//! TLS for the bubble-server's listeners: the HTTP listener (web client, `wss://` signaling and, on a
//! micro-node, the admin API) and TURN over TLS.
//!
//! Browsers grant WebCrypto, Web Locks, WebAuthn and cameras only to secure contexts, so a micro-node serving
//! members on a LAN must speak HTTPS. Certificates come from PEM files (an organisation's PKI, a mounted
//! Secret), or are self-signed: made at start, or made once and kept in a directory so that the fingerprint
//! members compared on the first visit stays the same across restarts.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, rustls};

/// Where a certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files (a mounted Secret in Kubernetes, an organisation's PKI).
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// A self-signed certificate made at start for these names (TURN on a laptop or a Pi without a PKI).
    SelfSigned(Vec<String>),
    /// A self-signed certificate for these names, made once and kept in `dir` (`cert.pem`, and `key.pem`
    /// readable by its owner only), so that its fingerprint stays the same across restarts.
    Kept {
        /// Directory of `cert.pem` and `key.pem`.
        dir: PathBuf,
        /// DNS names and IP addresses the certificate is made for (used only when it is made).
        names: Vec<String>,
    },
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The certificate could not be made, or rustls refused the certificate and key.
    #[error("TLS: {0}")]
    Config(String),
}

/// A server certificate ready to serve, with the SHA-256 fingerprint of its leaf certificate (what a member
/// compares with the one `peerbubble up` printed before accepting a self-signed certificate).
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    fingerprint: [u8; 32],
    made: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("fingerprint", &self.fingerprint_hex()).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads (or makes) the certificate; `alpn` lists the application protocols offered (empty for none).
    pub fn load(source: &TlsSource, alpn: &[&[u8]]) -> Result<Self, TlsError> {
        let mut made = false;
        let (certs, key) = match source {
            TlsSource::Files { cert, key } => read_pem(cert, key)?,
            TlsSource::SelfSigned(names) => {
                let (cert, key) = self_signed(names)?;
                (vec![cert], key)
            }
            TlsSource::Kept { dir, names } => {
                let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
                if !cert.exists() || !key.exists() {
                    keep_self_signed(dir, names)?;
                    made = true;
                }
                read_pem(&cert, &key)?
            }
        };
        let leaf = certs.first().ok_or_else(|| TlsError::Config("no certificate in the chain".into()))?;
        let fingerprint: [u8; 32] = Sha256::digest(leaf.as_ref()).into();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Self { config: Arc::new(config), fingerprint, made })
    }

    /// SHA-256 of the leaf certificate.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The fingerprint as browsers show it: upper-case hex pairs joined by colons.
    pub fn fingerprint_hex(&self) -> String {
        self.fingerprint.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
    }

    /// Whether this load made a new self-signed certificate (the first start, or after it was deleted).
    pub fn made(&self) -> bool {
        self.made
    }

    /// An acceptor for this certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }
}

fn read_pem(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let file_error = |path: &Path, reason: String| TlsError::File { path: path.to_owned(), reason };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| file_error(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error(cert, "no PEM certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e.to_string()))?;
    Ok((certs, key))
}

fn self_signed(names: &[String]) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let made = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| TlsError::Config(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    Ok((made.cert.der().clone(), key))
}

/// Makes a self-signed certificate and writes it to `dir`: the key first, owner-only, never over a file.
fn keep_self_signed(dir: &Path, names: &[String]) -> Result<(), TlsError> {
    let made = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| TlsError::Config(e.to_string()))?;
    let io_error = |path: &Path, e: io::Error| TlsError::File { path: path.to_owned(), reason: e.to_string() };
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let key_path = dir.join("key.pem");
    let cert_path = dir.join("cert.pem");
    // Half a pair (an interrupted first start, a deleted file) is replaced as a whole.
    if key_path.exists() && !cert_path.exists() {
        std::fs::remove_file(&key_path).map_err(|e| io_error(&key_path, e))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut key_file = options.open(&key_path).map_err(|e| io_error(&key_path, e))?;
    let key_pem = zeroize::Zeroizing::new(made.signing_key.serialize_pem());
    io::Write::write_all(&mut key_file, key_pem.as_bytes()).map_err(|e| io_error(&key_path, e))?;
    std::fs::write(&cert_path, made.cert.pem()).map_err(|e| io_error(&cert_path, e))?;
    Ok(())
}

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

/// A TCP listener whose connections are TLS streams once their handshake is done. Handshakes run on their own
/// tasks, so a slow or silent client holds up nobody else.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept: JoinHandle<()>,
}

impl TlsListener {
    pub(crate) fn new(listener: TcpListener, tls: &ServerTls) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tls.acceptor();
        let accept = tokio::spawn(async move {
            let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
            loop {
                let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
                let (tcp, peer) = tokio::select! {
                    () = tx.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(err) => {
                            // Out of file descriptors and the like: wait instead of spinning.
                            tracing::debug!(error = %err, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                if let Err(err) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %err, "cannot set TCP_NODELAY");
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { ready, local, accept })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accept task ended (only when this listener is dropped): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_kept_certificate_is_made_once_with_an_owner_only_key_and_keeps_its_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let source = TlsSource::Kept { dir: dir.path().join("tls"), names: vec!["localhost".into()] };
        let first = ServerTls::load(&source, &[]).unwrap();
        assert!(first.made());
        let again = ServerTls::load(&source, &[]).unwrap();
        assert!(!again.made());
        assert_eq!(first.fingerprint(), again.fingerprint());
        assert_eq!(first.fingerprint_hex().len(), 32 * 3 - 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("tls/key.pem")).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
        }
        // Deleting the certificate makes a new one (and a new fingerprint), never a half-kept pair.
        std::fs::remove_file(dir.path().join("tls/cert.pem")).unwrap();
        let remade = ServerTls::load(&source, &[]).unwrap();
        assert!(remade.made());
        assert_ne!(remade.fingerprint(), first.fingerprint());
    }

    #[test]
    fn unreadable_or_empty_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        let source = TlsSource::Files { cert: cert.clone(), key: dir.path().join("missing.pem") };
        let err = ServerTls::load(&source, &[]).unwrap_err();
        assert!(err.to_string().contains("cert.pem"), "{err}");
        let source = TlsSource::Files { cert: dir.path().join("nothing.pem"), key: cert };
        let err = ServerTls::load(&source, &[]).unwrap_err();
        assert!(err.to_string().contains("nothing.pem"), "{err}");
    }
}
