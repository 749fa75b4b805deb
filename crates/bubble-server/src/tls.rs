//! TLS for the bubble-server's listeners: the HTTP listener (web client, `wss://` signaling and, on a
//! micro-node, the admin API) and TURN over TLS.
//!
//! Browsers grant WebCrypto, Web Locks, WebAuthn and cameras only to secure contexts, so a micro-node serving
//! members on a LAN must speak HTTPS. Certificates come from PEM files (an organisation's PKI, a mounted
//! Secret), or are self-signed: made at start, or made once and kept in a directory so that the fingerprint
//! members compared on the first visit stays the same across restarts.
//!
//! Certificates from files are watched: cert-manager renews a Secret and the kubelet swaps the mounted files in
//! place, so a handshake at most [`RELOAD_CHECK`] after the files changed is served with the new certificate,
//! without a restart. A renewal that cannot be read (half written, a key that does not match) is logged and
//! the previous certificate kept.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use peerbubble_tls_trust::Pin;
use sha2::{Digest as _, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
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
    watched: Option<Arc<WatchedFiles>>,
}

/// How often, at most, certificate files are looked at for a renewal (at a handshake, never in between).
pub const RELOAD_CHECK: Duration = Duration::from_secs(30);

/// What the files held when they were read: their digest (a few KiB read at most every [`RELOAD_CHECK`]; a
/// modification time can stay the same across a quick rewrite, and the kubelet's symlink swap changes no size).
type Stamp = Option<[u8; 32]>;

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let mut digest = Sha256::new();
    for path in [cert, key] {
        let bytes = zeroize::Zeroizing::new(std::fs::read(path).ok()?);
        digest.update((bytes.len() as u64).to_be_bytes());
        digest.update(&bytes);
    }
    Some(digest.finalize().into())
}

/// A certificate read from files, read again when they change.
struct WatchedFiles {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    every: Mutex<Duration>,
    state: Mutex<Watched>,
}

struct Watched {
    current: Arc<CertifiedKey>,
    stamp: Stamp,
    checked: Instant,
}

impl std::fmt::Debug for WatchedFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedFiles").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
}

impl WatchedFiles {
    fn certified(provider: &rustls::crypto::CryptoProvider, cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
        let (certs, key_der) = read_pem(cert, key)?;
        let certified = CertifiedKey::from_der(certs, key_der, provider)
            .map_err(|e| TlsError::File { path: key.to_owned(), reason: e.to_string() })?;
        Ok(certified)
    }

    /// The certificate to serve now, after reading the files again if they changed since the last look.
    fn current(&self) -> Arc<CertifiedKey> {
        let every = *self.every.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.checked.elapsed() < every {
            return state.current.clone();
        }
        state.checked = Instant::now();
        let stamp = stamp(&self.cert, &self.key);
        if stamp == state.stamp {
            return state.current.clone();
        }
        match Self::certified(&self.provider, &self.cert, &self.key) {
            Ok(renewed) => {
                let fingerprint = renewed.end_entity_cert().map(|c| Pin::of(c.as_ref()).to_string());
                tracing::info!(cert = %self.cert.display(), fingerprint = ?fingerprint.ok(), "TLS certificate reloaded");
                state.current = Arc::new(renewed);
                state.stamp = stamp;
            }
            // A renewal in the middle of being written is read again at the next look; anything else stays
            // logged at every look until it is fixed, while the previous certificate serves.
            Err(err) => tracing::warn!(error = %err, "renewed TLS certificate unusable; the previous one is kept"),
        }
        state.current.clone()
    }
}

impl ResolvesServerCert for WatchedFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
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
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (certs, key) = match source {
            TlsSource::Files { cert, key } => {
                let stamp = stamp(cert, key);
                let certified = WatchedFiles::certified(&provider, cert, key)?;
                let leaf = certified.end_entity_cert().map_err(|e| TlsError::Config(e.to_string()))?;
                let fingerprint: [u8; 32] = Sha256::digest(leaf.as_ref()).into();
                let watched = Arc::new(WatchedFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    provider: provider.clone(),
                    every: Mutex::new(RELOAD_CHECK),
                    state: Mutex::new(Watched { current: Arc::new(certified), stamp, checked: Instant::now() }),
                });
                let mut config = rustls::ServerConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| TlsError::Config(e.to_string()))?
                    .with_no_client_auth()
                    .with_cert_resolver(watched.clone());
                config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
                return Ok(Self { config: Arc::new(config), fingerprint, made, watched: Some(watched) });
            }
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
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Self { config: Arc::new(config), fingerprint, made, watched: None })
    }

    /// Looks at watched certificate files at most this often (default [`RELOAD_CHECK`]); no effect on a
    /// self-signed certificate.
    pub fn check_every(&self, interval: Duration) {
        if let Some(watched) = &self.watched {
            *watched.every.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = interval;
        }
    }

    /// SHA-256 of the leaf certificate as it was loaded (a renewal of watched files changes what is served,
    /// not this).
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The fingerprint as browsers show it: upper-case hex pairs joined by colons.
    pub fn fingerprint_hex(&self) -> String {
        Pin::from_bytes(self.fingerprint).to_string()
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

    /// Writes a certificate and key the way the kubelet updates a mounted Secret: the files in a new directory,
    /// then `..data` swapped to it in one rename; `tls.crt` and `tls.key` link through `..data`.
    fn kubelet_writes(dir: &Path, version: &str, cert: &str, key: &str) {
        let v = dir.join(version);
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("tls.crt"), cert).unwrap();
        std::fs::write(v.join("tls.key"), key).unwrap();
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(version, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        for name in ["tls.crt", "tls.key"] {
            if !dir.join(name).exists() {
                std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
            }
        }
    }

    fn fresh_certificate() -> (String, String, Pin) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let pin = Pin::of(made.cert.der());
        (made.cert.pem(), made.signing_key.serialize_pem(), pin)
    }

    /// Whether a client trusting exactly `pin` completes a handshake with `addr`.
    async fn accepted_with(addr: SocketAddr, pin: Pin) -> bool {
        let config = peerbubble_tls_trust::client_config(peerbubble_tls_trust::Trust::Pinned(pin)).unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.is_ok()
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_renewed_secret_is_served_without_a_restart_and_a_broken_renewal_keeps_the_previous_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_a, key_a, pin_a) = fresh_certificate();
        kubelet_writes(dir.path(), "..v1", &cert_a, &key_a);
        let source = TlsSource::Files { cert: dir.path().join("tls.crt"), key: dir.path().join("tls.key") };
        let tls = ServerTls::load(&source, &[]).unwrap();
        assert_eq!(tls.fingerprint(), *pin_a.as_bytes());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls.acceptor();
        let server = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move { drop(acceptor.accept(tcp).await) });
            }
        });
        assert!(accepted_with(addr, pin_a).await);

        // Renewed, but not looked at before the interval is over.
        let (cert_b, key_b, pin_b) = fresh_certificate();
        kubelet_writes(dir.path(), "..v2", &cert_b, &key_b);
        assert!(accepted_with(addr, pin_a).await, "the files were read again before RELOAD_CHECK");
        tls.check_every(Duration::ZERO);
        assert!(accepted_with(addr, pin_b).await, "the renewed certificate is not served");
        assert!(!accepted_with(addr, pin_a).await, "the old certificate is still served");

        // A renewal whose key does not match its certificate, then one that is not PEM: B keeps serving.
        kubelet_writes(dir.path(), "..v3", &cert_a, &key_b);
        assert!(accepted_with(addr, pin_b).await);
        kubelet_writes(dir.path(), "..v4", "-----BEGIN CERTIFICATE-----\ntruncated", &key_b);
        assert!(accepted_with(addr, pin_b).await);
        // Fixed: served at the next look.
        let (cert_c, key_c, pin_c) = fresh_certificate();
        kubelet_writes(dir.path(), "..v5", &cert_c, &key_c);
        assert!(accepted_with(addr, pin_c).await);
        server.abort();
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
