//! Whom a terminal client (`peerbubble enroll`, `invite`, `connect`, `chat`) trusts when it speaks HTTPS or
//! `wss://` to a bubble: the system's certificate authorities (an organisation's certificate), or exactly one
//! certificate, pinned by the SHA-256 fingerprint `peerbubble up --tls` prints beside its QR code (a micro-node's
//! self-signed certificate, which no authority vouches for).
//!
//! A pin is the whole trust decision: the certificate whose DER hashes to it is accepted whatever the name it
//! carries (a micro-node on a Wi-Fi hotspot is reached by IP address as often as by name) and however old; any
//! other certificate is refused, even one a system authority signed. The TLS handshake's signatures are still
//! checked against the pinned certificate's key, so a copy of the certificate without its private key gets
//! nowhere. ring is the only crypto provider (as everywhere in PeerBubble).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest as _, Sha256};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The pin is not a SHA-256 fingerprint.
    #[error(
        "a certificate pin is the SHA-256 fingerprint `peerbubble up` prints: 64 hexadecimal digits, colons allowed ({0})"
    )]
    BadPin(String),
    /// The system has no certificate authority this client could load.
    #[error("no trusted certificate authority found on this system ({0}); pin the server's certificate with --pin")]
    NoRoots(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The server presented another certificate than the pinned one (the text names the one it presented).
    #[error("{0}")]
    NotPinned(String),
}

/// The rustls error `e` is, or carries inside (nested) `std::io::Error`s, as hyper and tokio-rustls wrap it.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(error) = e.downcast_ref::<rustls::Error>() {
        return Some(error);
    }
    let inner: &(dyn std::error::Error + 'static) = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    rustls_error(inner)
}

/// The pinned-certificate refusal somewhere in `err`'s chain (through reqwest, hyper, tungstenite or
/// `std::io::Error`), in words: rustls would print it as `Other(OtherError(…))`.
pub fn not_pinned(err: &(dyn std::error::Error + 'static)) -> Option<TrustError> {
    let mut next = Some(err);
    while let Some(e) = next {
        let rustls = rustls_error(e);
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) = rustls
            && let Some(refused) = other.0.downcast_ref::<NotPinned>()
        {
            return Some(TrustError::NotPinned(refused.to_string()));
        }
        next = e.source();
    }
    None
}

/// The SHA-256 fingerprint of one certificate (its DER).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Pin([u8; 32]);

impl Pin {
    /// The pin of `certificate` (DER).
    pub fn of(certificate: &[u8]) -> Self {
        Self(Sha256::digest(certificate).into())
    }

    /// A fingerprint already computed.
    pub fn from_bytes(fingerprint: [u8; 32]) -> Self {
        Self(fingerprint)
    }

    /// The fingerprint's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for Pin {
    type Err = TrustError;

    /// `AB:CD:…` as `peerbubble up` and browsers print it, or the 64 digits alone; case and a `sha256:` prefix
    /// do not matter.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let text = text.strip_prefix("sha256:").or_else(|| text.strip_prefix("SHA256:")).unwrap_or(text);
        let digits: String = text.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
        if digits.len() != 64 {
            return Err(TrustError::BadPin(format!("{} digits", digits.len())));
        }
        let mut pin = [0u8; 32];
        for (i, byte) in pin.iter_mut().enumerate() {
            let pair = digits.get(2 * i..2 * i + 2).ok_or_else(|| TrustError::BadPin("not ASCII".into()))?;
            *byte =
                u8::from_str_radix(pair, 16).map_err(|_| TrustError::BadPin(format!("{pair:?} is not hexadecimal")))?;
        }
        Ok(Self(pin))
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pin({self})")
    }
}

/// Whom to trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The system's certificate authorities, and the name in the URL.
    System,
    /// Exactly the certificate with this fingerprint.
    Pinned(Pin),
}

impl Trust {
    /// `Pinned` when a pin is given, `System` otherwise.
    pub fn from_pin(pin: Option<Pin>) -> Self {
        pin.map_or(Self::System, Self::Pinned)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration for `trust` (TLS 1.2 and 1.3, ring).
pub fn client_config(trust: Trust) -> Result<ClientConfig, TrustError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let config = match trust {
        Trust::System => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map_or_else(|| "none installed".to_owned(), |e| e.to_string());
                return Err(TrustError::NoRoots(why));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pinned(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { pin, provider }))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Accepts exactly the pinned certificate (see the crate documentation).
#[derive(Debug)]
struct Pinned {
    pin: Pin,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Pin::of(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(NotPinned(
                Pin::of(end_entity),
            ))))))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The server presented another certificate than the pinned one. rustls shows it with `Debug`, so both say it
/// in words.
struct NotPinned(Pin);

impl fmt::Debug for NotPinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for NotPinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the server's certificate is not the pinned one (it presented {})", self.0)
    }
}

impl std::error::Error for NotPinned {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn certificate() -> CertificateDer<'static> {
        rcgen::generate_simple_self_signed(vec!["pi.lan".into()]).unwrap().cert.der().clone()
    }

    #[test]
    fn pins_read_as_printed_and_refuse_anything_else() {
        let pin = Pin::of(b"certificate");
        for text in
            [pin.to_string(), pin.to_string().to_lowercase(), pin.to_string().replace(':', ""), format!("sha256:{pin}")]
        {
            assert_eq!(text.parse::<Pin>().unwrap(), pin, "{text}");
        }
        assert_eq!(pin.to_string().len(), 32 * 3 - 1);
        for bad in ["", "AB:CD", &"zz".repeat(32), &"A".repeat(65), "é".repeat(32).as_str()] {
            assert!(matches!(bad.parse::<Pin>(), Err(TrustError::BadPin(_))), "{bad:?}");
        }
    }

    #[test]
    fn only_the_pinned_certificate_is_accepted_whatever_its_name() {
        let (right, wrong) = (certificate(), certificate());
        let verifier = Pinned { pin: Pin::of(&right), provider: provider() };
        let name = ServerName::try_from("10.42.0.1").unwrap();
        assert!(verifier.verify_server_cert(&right, &[], &name, &[], UnixTime::now()).is_ok());
        let refused = verifier.verify_server_cert(&wrong, &[], &name, &[], UnixTime::now()).unwrap_err();
        // In words, also from under an io::Error (as reqwest and tungstenite carry it).
        let io = std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, refused));
        let words = not_pinned(&io).expect("found in the chain").to_string();
        assert!(words.starts_with("the server's certificate is not the pinned one"), "{words}");
        assert!(words.contains(&Pin::of(&wrong).to_string()), "names what it saw: {words}");
        assert!(not_pinned(&std::io::Error::other("unrelated")).is_none());
        assert!(client_config(Trust::Pinned(Pin::of(&right))).is_ok());
    }
}
