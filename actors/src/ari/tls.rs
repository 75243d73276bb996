//! TLS toward ARI (`https://` REST, `wss://` events): the rustls client configuration and the
//! trust it uses. Without a CA file the trust anchors are Mozilla's roots (webpki-roots,
//! compiled in: no system store needed); with one (`ari.ca_file`, PEM) exactly the
//! certificates in it, for an Asterisk whose certificate a private CA signed. The host name in
//! the ARI URL is always verified against the certificate.
//!
//! Its only IO is reading the CA file ([`load_ca_file`]); building the configuration from PEM
//! text is pure and tested here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the CA file {path:?}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("the CA file {path:?} is not PEM: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("the CA file {path:?} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)")]
    Empty { path: PathBuf },
    #[error("the CA file {path:?} holds a certificate rustls refuses as a trust anchor: {reason}")]
    BadAnchor { path: PathBuf, reason: String },
}

/// The certificates in a PEM file, at least one.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = std::fs::read(path).map_err(|error| TlsError::Read { path: path.to_owned(), error })?;
    parse_ca_pem(&text, path)
}

/// The certificates in PEM text (other PEM blocks, e.g. a key, are skipped), at least one.
pub fn parse_ca_pem(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.to_owned(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { path: path.to_owned() });
    }
    Ok(certs)
}

/// The client configuration: HTTP/1.1 only (ARI's WebSocket upgrade is HTTP/1.1, and Asterisk
/// speaks nothing else), ring as the crypto provider, trust from `ca` or else Mozilla's roots.
pub fn client_config(ca: Option<(&Path, Vec<CertificateDer<'static>>)>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some((path, certs)) => {
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::BadAnchor { path: path.to_owned(), reason: e.to_string() })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a TLS failure means, in words an operator can act on: which check Asterisk's
/// certificate failed and which setting to look at. rustls's own text follows in parentheses.
pub fn explain(error: &rustls::Error) -> String {
    use rustls::{CertificateError as C, Error as E};
    match error {
        E::InvalidCertificate(C::UnknownIssuer) => format!(
            "TLS: Asterisk's certificate is not signed by a trusted CA ({error}); set ari.ca_file to \
             the CA that signed it"
        ),
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
            "TLS: Asterisk's certificate is not for the host in ari.url ({error}); use a host name \
             or address the certificate names"
        ),
        E::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => format!("TLS: Asterisk's certificate is outside its validity period ({error})"),
        E::InvalidCertificate(_) => format!("TLS: Asterisk's certificate was refused ({error})"),
        other => format!("TLS: {other}"),
    }
}

/// The configuration for an optional CA file.
pub fn client_config_for(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    match ca_file {
        Some(path) => client_config(Some((path, load_ca_file(path)?))),
        None => client_config(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed CA certificate (openssl req -x509, EC P-256), shared with the
    /// configuration tests.
    const CA: &str = include_str!("../../testdata/test-ca.pem");

    #[test]
    fn pem_blocks_are_found_and_other_blocks_skipped() {
        let path = Path::new("ca.pem");
        let two = format!("{CA}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{CA}");
        let certs = parse_ca_pem(two.as_bytes(), path).unwrap();
        assert_eq!(certs.len(), 2);
        // A real certificate is accepted as a trust anchor.
        client_config(Some((path, certs))).unwrap();
        let empty = parse_ca_pem(b"just text\n", path).unwrap_err();
        assert!(matches!(empty, TlsError::Empty { .. }), "{empty}");
        assert!(empty.to_string().contains("\"ca.pem\" holds no certificate"), "{empty}");
    }

    #[test]
    fn failures_say_what_to_check() {
        use rustls::{CertificateError as C, Error as E};
        let unknown = explain(&E::InvalidCertificate(C::UnknownIssuer));
        assert!(unknown.starts_with("TLS: Asterisk's certificate is not signed by a trusted CA ("), "{unknown}");
        assert!(unknown.contains("UnknownIssuer") && unknown.ends_with("set ari.ca_file to the CA that signed it"));
        let name = explain(&E::InvalidCertificate(C::NotValidForName));
        assert!(name.contains("not for the host in ari.url"), "{name}");
        assert!(explain(&E::InvalidCertificate(C::Expired)).contains("validity period"));
        assert!(explain(&E::InvalidCertificate(C::BadSignature)).contains("was refused"));
        assert_eq!(explain(&E::DecryptError), "TLS: cannot decrypt peer's message");
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let error = load_ca_file(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(error.to_string().starts_with("cannot read the CA file \"/nonexistent/ca.pem\": "), "{error}");
    }

    #[test]
    fn default_trust_is_mozillas_roots_and_http1_only() {
        let config = client_config(None).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(webpki_roots::TLS_SERVER_ROOTS.len() > 100);
    }
}
