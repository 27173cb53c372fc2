//! Certificate verification for registries: the platform's webpki verifier, plus the one
//! thing Go and OpenSSL clients accept and webpki does not: a server certificate that is
//! itself one of the configured trust anchors (Docker's documented self-signed recipe,
//! `openssl req -x509`, marks it `CA:TRUE`, and webpki refuses a CA as end entity).
//! Also turns the TLS errors a refused connection carries into words.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, SignatureScheme};

/// Accepts a presented certificate byte-equal to a configured anchor (after checking its
/// dates and the name the registry was reached by); everything else goes to `inner`.
#[derive(Debug)]
pub(crate) struct AnchorVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    anchors: Vec<CertificateDer<'static>>,
}

impl AnchorVerifier {
    /// `inner` verifies chains (it already trusts `anchors` as roots); `anchors` are the
    /// certificates a server may present as its own.
    pub(crate) fn new(
        inner: Arc<dyn ServerCertVerifier>,
        anchors: Vec<CertificateDer<'static>>,
    ) -> Self {
        Self { inner, anchors }
    }
}

impl ServerCertVerifier for AnchorVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if self
            .anchors
            .iter()
            .any(|a| a.as_ref() == end_entity.as_ref())
        {
            check_pinned(end_entity, server_name, now)?;
            return Ok(ServerCertVerified::assertion());
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| match self_signed_subject(end_entity) {
                // A self-signed certificate that is not an anchor can only be trusted by
                // naming it: say that rather than webpki's "unknown issuer".
                Some(subject) if intermediates.is_empty() => Error::InvalidCertificate(
                    CertificateError::Other(OtherError(Arc::new(SelfSigned { subject }))),
                ),
                _ => e,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// The checks that still apply to a certificate trusted by being an anchor itself: its
/// validity dates and the name or IP address the registry was reached by (subject
/// alternative names, as webpki matches them). There is no chain, so no issuer to check.
fn check_pinned(
    cert: &CertificateDer<'_>,
    name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), Error> {
    let bad = || Error::InvalidCertificate(CertificateError::BadEncoding);
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| bad())?;
    let validity = parsed.validity();
    let unix = |t: &x509_parser::time::ASN1Time| {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(t.timestamp()).unwrap_or(0),
        ))
    };
    let (not_before, not_after) = (unix(&validity.not_before), unix(&validity.not_after));
    if now.as_secs() < not_before.as_secs() {
        return Err(Error::InvalidCertificate(
            CertificateError::NotValidYetContext {
                time: now,
                not_before,
            },
        ));
    }
    if now.as_secs() > not_after.as_secs() {
        return Err(Error::InvalidCertificate(
            CertificateError::ExpiredContext {
                time: now,
                not_after,
            },
        ));
    }
    let end_entity = webpki::EndEntityCert::try_from(cert).map_err(|_| bad())?;
    if end_entity.verify_is_valid_for_subject_name(name).is_err() {
        return Err(Error::InvalidCertificate(
            CertificateError::NotValidForNameContext {
                expected: name.to_owned(),
                presented: presented_names(&parsed),
            },
        ));
    }
    Ok(())
}

/// The DNS names and IP addresses a certificate's subject alternative names hold.
fn presented_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            GeneralName::IPAddress(ip) => match ip.len() {
                4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).ok()?).to_string()),
                16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The subject of a certificate whose issuer is its own subject, `None` otherwise.
fn self_signed_subject(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    (parsed.subject().as_raw() == parsed.issuer().as_raw()).then(|| parsed.subject().to_string())
}

/// A self-signed server certificate that no configured anchor equals.
#[derive(Debug)]
struct SelfSigned {
    subject: String,
}

impl std::fmt::Display for SelfSigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "self-signed certificate ({})", self.subject)
    }
}

impl std::error::Error for SelfSigned {}

/// What to do about a server certificate that was refused.
const TRUST_HINT: &str = "to trust it, give its CA (or, for a self-signed registry, the certificate itself) in `ca_file` or a `*.crt` in `cert_dir` of this registry's entry in rsyncserver.rsyncconfig.auth, or in `certs_d`/<host:port>/";
/// What to do when the registry wants a client certificate.
const CLIENT_HINT: &str = "give this registry's entry in rsyncserver.rsyncconfig.auth a `client_cert_file` and `client_key_file` the registry accepts, or a `*.cert` + `*.key` pair in `cert_dir` or `certs_d`/<host:port>/";

/// The certificate problem behind a failed request, in words with what to do; `None`
/// when the failure is not about certificates.
pub(crate) fn certificate_problem(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(tls) = rustls_error(e) {
            return describe(tls);
        }
        source = e.source();
    }
    None
}

/// The rustls error `e` is or wraps: tokio-rustls puts it inside an `io::Error`, which
/// the connection layers may wrap in another, and `io::Error::source` skips the wrapped
/// error itself, so each layer is opened by hand.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
    if let Some(tls) = e.downcast_ref::<Error>() {
        return Some(tls);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    rustls_error(inner as &(dyn std::error::Error + 'static))
}

/// Words for a rustls error about certificates, `None` for other TLS errors.
fn describe(err: &Error) -> Option<String> {
    use rustls::AlertDescription as Alert;
    let server = |what: String| {
        Some(format!(
            "the registry's TLS certificate is not trusted: {what}; {TRUST_HINT}"
        ))
    };
    match err {
        Error::InvalidCertificate(cert) => match cert {
            CertificateError::Other(OtherError(inner)) => {
                if let Some(s) = inner.downcast_ref::<SelfSigned>() {
                    server(format!("it is a {s} that is not among the configured trust anchors"))
                } else if inner.to_string().contains("CaUsedAsEndEntity") {
                    server("it is a CA certificate used as the server's own, and it is not a configured trust anchor".into())
                } else {
                    server(format!("{inner}"))
                }
            }
            CertificateError::UnknownIssuer => server(
                "it was issued by a certificate authority this service does not know (unknown issuer)".into(),
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                let when = match cert {
                    CertificateError::ExpiredContext { not_after, .. } => format!(" on {}", date(*not_after)),
                    _ => String::new(),
                };
                Some(format!(
                    "the registry's TLS certificate has expired{when}: the registry must be given a new certificate (this is not fixed by trusting it)"
                ))
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => Some(
                "the registry's TLS certificate is not valid yet (is this host's clock right?)".into(),
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                let detail = match cert {
                    CertificateError::NotValidForNameContext { expected, presented } => {
                        let names = if presented.is_empty() {
                            "no names".to_owned()
                        } else {
                            presented.join(", ")
                        };
                        format!(" {}: it names {names}", expected.to_str())
                    }
                    _ => String::new(),
                };
                Some(format!(
                    "the registry's TLS certificate is not valid for the name it was reached by{detail}; use the name or address the certificate was made for (its subjectAltName), or give the registry a certificate for this one"
                ))
            }
            other => server(other.to_string()),
        },
        Error::AlertReceived(Alert::CertificateRequired | Alert::BadCertificate | Alert::UnknownCA | Alert::UnsupportedCertificate | Alert::CertificateUnknown | Alert::CertificateExpired | Alert::CertificateRevoked) => Some(format!(
            "the registry refused the TLS connection ({err}): it asks for a client certificate and none was sent, or it does not accept the one sent; {CLIENT_HINT}"
        )),
        _ => None,
    }
}

/// A UTC date and time for a certificate bound.
fn date(t: UnixTime) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(t.as_secs()).unwrap_or(i64::MAX), 0).map_or_else(
        || format!("{} (UNIX)", t.as_secs()),
        |d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}
