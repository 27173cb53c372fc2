//! A throw-away certificate authority for registries that serve HTTPS in tests.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA: its certificate (PEM) and the means to issue server certificates.
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
}

impl TestCa {
    /// A new CA with a fresh key.
    pub fn new() -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "imagersync test CA");
        let cert_pem = params.self_signed(&key).expect("CA cert").pem();
        TestCa {
            params,
            key,
            cert_pem,
        }
    }

    /// The CA certificate, PEM: what a client's `ca_file` holds.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate and key (PEM) for `host` (a name or an IP address).
    pub fn server_cert(&self, host: &str) -> (String, String) {
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec![host.to_owned()]).expect("server params");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("server cert");
        (cert.pem(), key.serialize_pem())
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
