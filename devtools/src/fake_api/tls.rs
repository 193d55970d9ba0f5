//! TLS and a service account for the fake API server, so the agent can be
//! started as a DaemonSet starts it: in-cluster configuration (token, CA,
//! namespace files), https, a bearer token checked on every request.
//!
//! A fresh CA and server certificate are made at every start (rcgen); the
//! CA goes into the service account directory next to a random token.
use std::{net::IpAddr, path::Path, sync::Arc};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// What the API server's certificate names besides its own address: the
/// names a pod's client may use (as kubeadm's apiserver certificate).
const DNS_NAMES: [&str; 4] =
    ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"];

pub struct ServerTls {
    pub acceptor: TlsAcceptor,
    /// The CA that signed the server certificate (PEM), for `ca.crt`.
    pub ca_pem: String,
}

/// A CA and a server certificate for `ips` (the listen address, and the
/// `kubernetes` Service's ClusterIP if clients come through it).
pub fn server_tls(ips: &[IpAddr]) -> anyhow::Result<ServerTls> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "weir fake API server CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut params = CertificateParams::new(DNS_NAMES.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone(), ca.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .context("server certificate")?;
    Ok(ServerTls { acceptor: TlsAcceptor::from(Arc::new(config)), ca_pem: ca.pem() })
}

/// A random bearer token (what a projected service account token is to
/// the client: an opaque string read from a file).
pub fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `token`, `ca.crt` and `namespace` as a pod's service account
/// volume holds them (each file in one step: temp file, then rename).
pub fn write_service_account(dir: &Path, token: &str, ca_pem: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    for (name, text) in [("ca.crt", ca_pem), ("namespace", "kube-system"), ("token", token)] {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))?;
    }
    Ok(())
}
