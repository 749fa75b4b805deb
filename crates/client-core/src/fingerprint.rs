//! DTLS certificate fingerprints, the value that binds a WebRTC connection to a member's identity (DESIGN.md
//! invariant 2): announced inside MLS, compared with the SDP's `a=fingerprint` lines and with the certificate
//! the DTLS handshake presents. One typed value for client-core and every edge, compared as bytes.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A DTLS certificate fingerprint: SHA-256 only (what browsers use, and the one algorithm webrtc-rs checks).
/// Written as in SDP, `sha-256 AB:CD:…` (32 colon-separated hex bytes); parsed case-insensitively.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint([u8; 32]);

/// Why a fingerprint could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a DTLS fingerprint is `sha-256` followed by 32 colon-separated hex bytes")]
pub struct FingerprintError;

impl Fingerprint {
    /// Parses the `a=fingerprint` value form.
    pub fn parse(text: &str) -> Result<Self, FingerprintError> {
        let (algorithm, hex) = text.trim().split_once(' ').ok_or(FingerprintError)?;
        if !algorithm.eq_ignore_ascii_case("sha-256") {
            return Err(FingerprintError);
        }
        let mut bytes = [0u8; 32];
        let mut parts = hex.trim().split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or(FingerprintError)?;
            // Two hex digits exactly (`from_str_radix` alone would also take a sign).
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(FingerprintError);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| FingerprintError)?;
        }
        match parts.next() {
            None => Ok(Self(bytes)),
            Some(_) => Err(FingerprintError),
        }
    }

    /// The fingerprint of a DER certificate.
    pub fn of_certificate(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// The digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha-256 ")?;
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = FingerprintError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = FingerprintError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<Fingerprint> for String {
    fn from(fingerprint: Fingerprint) -> Self {
        fingerprint.to_string()
    }
}

/// The `a=fingerprint` values of an SDP, session and media level; `None` for a line that does not parse.
pub fn sdp_fingerprints(sdp: &str) -> Vec<Option<Fingerprint>> {
    sdp.lines()
        .filter_map(|line| line.trim_end_matches('\r').strip_prefix("a=fingerprint:"))
        .map(|value| Fingerprint::parse(value).ok())
        .collect()
}

/// Does the SDP carry this fingerprint, at least once, and no other (nor an unreadable one)?
pub fn sdp_has_only_fingerprint(sdp: &str, fingerprint: &Fingerprint) -> bool {
    let found = sdp_fingerprints(sdp);
    !found.is_empty() && found.iter().all(|f| f.as_ref() == Some(fingerprint))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(byte: u8) -> String {
        vec![format!("{byte:02X}"); 32].join(":")
    }

    #[test]
    fn parses_strictly_compares_as_bytes_round_trips() {
        let upper = format!("sha-256 {}", hex(0xAB));
        let a = Fingerprint::parse(&upper).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Fingerprint::parse(&upper.to_lowercase()), Ok(a), "case does not matter");
        assert_eq!(Fingerprint::parse(&format!("SHA-256   {}  ", hex(0xAB))), Ok(a));
        assert_eq!(a.to_string(), upper);
        assert_eq!(a.as_bytes(), &[0xAB; 32]);
        for bad in [
            "sha-256 not-a-fingerprint".to_owned(),
            format!("sha-1 {}", hex(0xAB)),
            format!("sha-256 {}:CD", hex(0xAB)),
            format!("sha-256 {}", vec!["AB"; 31].join(":")),
            format!("sha-256 {}", hex(0xAB).replace(':', "")),
            format!("sha-256 {}", hex(0xAB).replacen("AB", "+B", 1)),
            String::new(),
        ] {
            assert_eq!(Fingerprint::parse(&bad), Err(FingerprintError), "{bad}");
        }
        let json = serde_json::to_string(&a).unwrap_or_default();
        assert_eq!(json, format!("\"{upper}\""));
        assert_eq!(serde_json::from_str::<Fingerprint>(&json).ok(), Some(a));
        assert!(serde_json::from_str::<Fingerprint>("\"sha-256 AB\"").is_err());
        assert_eq!(Fingerprint::of_certificate(b"cert"), Fingerprint::of_certificate(b"cert"));
        assert_ne!(Fingerprint::of_certificate(b"cert"), Fingerprint::of_certificate(b"other"));
    }

    #[test]
    fn fingerprints_in_sdp() {
        let fp = |b| Fingerprint::parse(&format!("sha-256 {}", hex(b))).unwrap_or_else(|e| panic!("{e}"));
        let (ab, ce) = (fp(0xAB), fp(0xCE));
        let sdp = format!(
            "v=0\r\na=fingerprint:sha-256 {}\r\nm=application 9\r\na=fingerprint:sha-256 {}\r\n",
            hex(0xAB),
            hex(0xAB).to_lowercase()
        );
        assert!(sdp_has_only_fingerprint(&sdp, &ab));
        assert!(!sdp_has_only_fingerprint(&sdp, &ce));
        assert!(!sdp_has_only_fingerprint("v=0\r\n", &ab));
        let two = format!("a=fingerprint:sha-256 {}\na=fingerprint:sha-256 {}\n", hex(0xAB), hex(0xCE));
        assert!(!sdp_has_only_fingerprint(&two, &ab));
        let unreadable = format!("a=fingerprint:sha-256 {}\na=fingerprint:sha-256 AB:CD\n", hex(0xAB));
        assert!(!sdp_has_only_fingerprint(&unreadable, &ab));
    }
}
