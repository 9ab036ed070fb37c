//! The cluster's own certificate authority and mutual TLS.
//!
//! Flow (DESIGN invariant 5): `quorate ca init DIR` makes the CA; on each node
//! `quorate cert request NODE` makes a private key that never leaves the node and a
//! signing request; `quorate ca sign` turns the request into a certificate that names
//! the node; or `quorate ca issue NODE` does both for users who deliver keys with
//! sops-nix or agenix. Keys are written 0600 and never printed.
//!
//! A node certificate carries the node name as its only DNS subject-alternative name.
//! [`peer_node_name`] reads it back from a peer's certificate: a peer is accepted only
//! as the node its certificate names.
//!
//! **Architecture Invariant:** knows nothing of Raft or agents; it deals in node
//! names (valid by the spec's naming rule), PEM files and rustls configs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// File names inside a CA directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key.
pub const CA_KEY: &str = "ca.key";
/// A node's certificate inside its TLS directory.
pub const NODE_CERT: &str = "node.pem";
/// A node's private key.
pub const NODE_KEY: &str = "node.key";
/// A node's signing request.
pub const NODE_CSR: &str = "node.csr";

/// How long a node certificate is valid by default: one year.
pub const NODE_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
/// How long a CA is valid by default: ten years.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Certificates start being valid this long before they are made, so that a node
/// whose clock is a little behind the signer's accepts them at once.
const BACKDATE: Duration = Duration::from_secs(3600);

/// What went wrong; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Refusing to overwrite key material.
    #[error("{path} already exists; refusing to overwrite key material\n  help: use another directory, or remove the file if you really mean to replace it")]
    Exists {
        /// The file.
        path: String,
    },
    /// A name that cannot be a node name.
    #[error("`{name}` is not a valid node name (RFC 1123 label: lowercase letters, digits, `-`)")]
    BadName {
        /// The name.
        name: String,
    },
    /// PEM or certificate content is not usable.
    #[error("{path}: {problem}")]
    Bad {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// TLS configuration failed.
    #[error("TLS configuration failed: {0}")]
    Tls(String),
    /// A signing request for another node than the one the signer expects.
    #[error("{path}: the request is for node `{requested}`, not `{expected}`; nothing was signed\n  help: sign each node's own request, or run `quorate cert request {expected}` on that node")]
    WrongNode {
        /// The request.
        path: String,
        /// The node it names.
        requested: String,
        /// The node the signer expected.
        expected: String,
    },
    /// The CA's private key can be read by others.
    #[error("{path} is readable by group or others (mode {mode:o}); refusing to use it\n  help: `chmod 600 {path}` and keep the CA off the cluster's nodes")]
    KeyExposed {
        /// The key file.
        path: String,
        /// Its mode.
        mode: u32,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), PkiError> {
    if path.exists() {
        return Err(PkiError::Exists {
            path: path.display().to_string(),
        });
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let write = if secret {
        quorate_files::write_secret
    } else {
        quorate_files::write_atomic
    };
    write(path, text.as_bytes()).map_err(io(path))
}

/// True for a valid node name: the spec's rule (an RFC 1123 host label).
#[must_use]
pub fn is_node_name(name: &str) -> bool {
    quorate_spec::validate::is_host_label(name)
}

/// Sets the validity period: from a little before now, for `valid_for`.
fn set_validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + valid_for;
}

fn node_params(node: &str, valid_for: Duration) -> Result<CertificateParams, PkiError> {
    if !is_node_name(node) {
        return Err(PkiError::BadName {
            name: node.to_string(),
        });
    }
    let mut params = CertificateParams::new(vec![node.to_string()])?;
    set_validity(&mut params, valid_for);
    params.distinguished_name.push(DnType::CommonName, node);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "quorate node");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Creates a cluster CA in `dir` (`ca.pem`, and `ca.key` with mode 0600), valid for
/// `valid_for` ([`CA_VALIDITY`] by default).
///
/// # Errors
/// When either file exists, or on I/O failure.
pub fn init_ca(dir: &Path, cluster: &str, valid_for: Duration) -> Result<PathBuf, PkiError> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(PkiError::Exists {
                path: p.display().to_string(),
            });
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    set_validity(&mut params, valid_for);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("quorate CA {cluster}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok(cert_path)
}

fn load_issuer(ca_dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key_path = ca_dir.join(CA_KEY);
    check_private(&key_path)?;
    let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| PkiError::Bad {
        path: key_path.display().to_string(),
        problem: e.to_string(),
    })?;
    let cert_path = ca_dir.join(CA_CERT);
    Issuer::from_ca_cert_pem(&read(&cert_path)?, key).map_err(|e| PkiError::Bad {
        path: cert_path.display().to_string(),
        problem: e.to_string(),
    })
}

/// Refuses a private key file that group or others may read.
fn check_private(path: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(io(path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::KeyExposed {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// On a node: creates its private key (0600) and a signing request in `tls_dir`.
/// Returns the request's path; the key never leaves the node.
///
/// # Errors
/// Invalid name, existing files, I/O.
pub fn request(node: &str, tls_dir: &Path) -> Result<PathBuf, PkiError> {
    if !is_node_name(node) {
        return Err(PkiError::BadName {
            name: node.to_string(),
        });
    }
    // A request carries only the name; usages are decided by the signer.
    let mut params = CertificateParams::new(vec![node.to_string()])?;
    params.distinguished_name.push(DnType::CommonName, node);
    let (key_path, csr_path) = (tls_dir.join(NODE_KEY), tls_dir.join(NODE_CSR));
    if key_path.exists() {
        return Err(PkiError::Exists {
            path: key_path.display().to_string(),
        });
    }
    let key = KeyPair::generate()?;
    let csr = params.serialize_request(&key)?.pem()?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    let _ = std::fs::remove_file(&csr_path);
    write_new(&csr_path, &csr, false)?;
    Ok(csr_path)
}

/// With the CA: signs `expected_node`'s request, valid for `valid_for`. The request
/// must name exactly that node; nothing else from it is trusted. Returns the
/// certificate PEM.
///
/// # Errors
/// Unreadable or invalid request, a request for another node, CA not found.
pub fn sign(
    ca_dir: &Path,
    csr_path: &Path,
    expected_node: &str,
    valid_for: Duration,
) -> Result<String, PkiError> {
    let bad = |problem: String| PkiError::Bad {
        path: csr_path.display().to_string(),
        problem,
    };
    let csr = CertificateSigningRequestParams::from_pem(&read(csr_path)?)
        .map_err(|e| bad(format!("not a valid signing request: {e}")))?;
    let names: Vec<String> = csr
        .params
        .subject_alt_names
        .iter()
        .filter_map(|san| match san {
            SanType::DnsName(n) => Some(n.to_string()),
            _ => None,
        })
        .collect();
    let [node] = names.as_slice() else {
        return Err(bad(format!(
            "the request must name exactly one node, it names {names:?}"
        )));
    };
    if node != expected_node {
        return Err(PkiError::WrongNode {
            path: csr_path.display().to_string(),
            requested: node.clone(),
            expected: expected_node.to_string(),
        });
    }
    let params = node_params(node, valid_for)?;
    let issuer = load_issuer(ca_dir)?;
    let cert = params.signed_by(&csr.public_key, &issuer)?;
    Ok(cert.pem())
}

/// With the CA: creates a node's key and certificate (valid for `valid_for`) in
/// `out_dir` (plus a copy of `ca.pem`), for delivery by the user's secret tooling.
///
/// # Errors
/// Invalid name, existing files, CA not found.
pub fn issue(
    ca_dir: &Path,
    node: &str,
    out_dir: &Path,
    valid_for: Duration,
) -> Result<(), PkiError> {
    let params = node_params(node, valid_for)?;
    sign_into(&params, ca_dir, out_dir, NODE_CERT, NODE_KEY)
}

/// Signs `params` with a new key and the CA in `ca_dir`; writes the certificate,
/// the key (0600) and, when missing, a copy of the CA's certificate into `out_dir`.
fn sign_into(
    params: &CertificateParams,
    ca_dir: &Path,
    out_dir: &Path,
    cert_file: &str,
    key_file: &str,
) -> Result<(), PkiError> {
    let issuer = load_issuer(ca_dir)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_new(&out_dir.join(key_file), &key.serialize_pem(), true)?;
    write_new(&out_dir.join(cert_file), &cert.pem(), false)?;
    let ca_copy = out_dir.join(CA_CERT);
    if !ca_copy.exists() {
        write_new(&ca_copy, &read(&ca_dir.join(CA_CERT))?, false)?;
    }
    Ok(())
}

/// What a person's (or a tool's) certificate lets it do through the HTTP API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads: status, events, explain, metrics.
    Viewer,
    /// Reads, and operates: move, restart, drain, maintenance, …
    Operator,
}

impl Role {
    /// `viewer` or `operator`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            other => Err(format!(
                "unknown role `{other}`: use `viewer` or `operator`"
            )),
        }
    }
}

/// A client certificate's file names in its directory.
pub const CLIENT_CERT: &str = "client.pem";
/// Its key (0600).
pub const CLIENT_KEY: &str = "client.key";

/// The URI subject-alternative name that carries a client's name and role. A client
/// certificate has no DNS name, so the transport between nodes never takes it for a
/// node's (it names none), and a node's certificate carries no role, so the API never
/// takes a node for a person.
fn role_uri(name: &str, role: Role) -> String {
    format!("urn:quorate:{}:{name}", role.as_str())
}

/// With the CA: a client certificate for the HTTP API (`client.pem`, `client.key`
/// 0600, and `ca.pem`) in `out_dir`, naming `name` with `role`.
///
/// # Errors
/// Invalid name, existing files, CA not found.
pub fn issue_client(
    ca_dir: &Path,
    name: &str,
    role: Role,
    out_dir: &Path,
    valid_for: Duration,
) -> Result<(), PkiError> {
    if !is_node_name(name) {
        return Err(PkiError::BadName {
            name: name.to_string(),
        });
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(role_uri(name, role))
            .map_err(|e| PkiError::Tls(e.to_string()))?,
    )];
    set_validity(&mut params, valid_for);
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(
        DnType::OrganizationName,
        format!("quorate {}", role.as_str()),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    sign_into(&params, ca_dir, out_dir, CLIENT_CERT, CLIENT_KEY)
}

/// The name and role a client certificate carries (see [`issue_client`]); `None` for a
/// node's certificate or any other.
#[must_use]
pub fn client_role(cert: &CertificateDer<'_>) -> Option<(String, Role)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut found = san.value.general_names.iter().filter_map(|g| match g {
        x509_parser::extensions::GeneralName::URI(uri) => {
            let rest = uri.strip_prefix("urn:quorate:")?;
            let (role, name) = rest.split_once(':')?;
            Some((name.to_string(), role.parse::<Role>().ok()?))
        }
        _ => None,
    });
    let one = found.next()?;
    // A DNS name too would make it a node's certificate as well: refused.
    let dns = san
        .value
        .general_names
        .iter()
        .any(|g| matches!(g, x509_parser::extensions::GeneralName::DNSName(_)));
    (found.next().is_none() && !dns && is_node_name(&one.0)).then_some(one)
}

/// The TLS server side of the HTTP API: this node's certificate; a client certificate
/// from the cluster CA is verified when presented but not required (a token may
/// authenticate instead). TLS 1.2 and 1.3, HTTP/1.1.
///
/// # Errors
/// Unreadable files or an impossible configuration.
pub fn api_server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in certs(&files.ca)? {
        roots.add(c).map_err(|e| PkiError::Tls(e.to_string()))?;
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| PkiError::Bad {
        path: files.key.display().to_string(),
        problem: e.to_string(),
    })?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    let tls = |e: rustls::Error| PkiError::Tls(e.to_string());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&files.cert)?, key)
        .map_err(tls)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// The bundle of old + new CA written by [`rotate`].
pub const CA_BUNDLE: &str = "bundle.pem";

/// Starts a rolling CA change: creates the new CA in `new_dir` unless it has one, and
/// writes `new_dir/bundle.pem` with the old CA's certificate(s) and the new one's.
/// Returns the bundle's path.
///
/// # Errors
/// Unreadable old CA, an exposed key, I/O.
pub fn rotate(
    old_dir: &Path,
    new_dir: &Path,
    cluster: &str,
    valid_for: Duration,
) -> Result<PathBuf, PkiError> {
    // The old CA must be the real thing: a readable certificate and a private key.
    load_issuer(old_dir)?;
    if !new_dir.join(CA_CERT).exists() {
        init_ca(new_dir, cluster, valid_for)?;
    }
    load_issuer(new_dir)?;
    let old = read(&old_dir.join(CA_CERT))?;
    let new = read(&new_dir.join(CA_CERT))?;
    let bundle = new_dir.join(CA_BUNDLE);
    let text = format!("{}\n{}", old.trim_end(), new);
    quorate_files::write_atomic(&bundle, text.as_bytes()).map_err(io(&bundle))?;
    Ok(bundle)
}

/// Paths of one node's TLS material.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Cluster CA certificate.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The default layout: `ca.pem`, `node.pem`, `node.key` in `dir`.
    #[must_use]
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join(CA_CERT),
            cert: dir.join(NODE_CERT),
            key: dir.join(NODE_KEY),
        }
    }
}

/// Loaded TLS material: configs for both directions and this node's own name.
#[derive(Clone, Debug)]
pub struct NodeTls {
    /// The node name this certificate carries.
    pub node: String,
    /// Server side: requires a client certificate from the cluster CA.
    pub server: Arc<ServerConfig>,
    /// Client side: presents this node's certificate, trusts only the cluster CA.
    pub client: Arc<ClientConfig>,
    /// When this node's certificate expires.
    pub not_after: SystemTime,
}

/// The TLS material an agent uses now; [`SharedTls::set`] swaps in reloaded material
/// for every connection made afterwards.
#[derive(Clone, Debug)]
pub struct SharedTls(Arc<RwLock<NodeTls>>);

impl SharedTls {
    /// Shares `tls`.
    #[must_use]
    pub fn new(tls: NodeTls) -> Self {
        Self(Arc::new(RwLock::new(tls)))
    }

    /// The material in use now.
    #[must_use]
    pub fn get(&self) -> NodeTls {
        match self.0.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the material for new connections.
    pub fn set(&self, tls: NodeTls) {
        match self.0.write() {
            Ok(mut t) => *t = tls,
            Err(poisoned) => *poisoned.into_inner() = tls,
        }
    }
}

/// A version of the node-to-node protocol. Peers announce theirs in the TLS handshake
/// (ALPN `quorate/MAJOR.MINOR`, the highest first, then the one before it): two nodes
/// talk when they have a version in common, i.e. the same major and minors at most one
/// apart. A minor version only adds (fields with defaults, messages sent only once
/// every member announces that minor); anything an older node cannot read is a new
/// major version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    /// Incompatible changes.
    pub major: u16,
    /// Additive changes.
    pub minor: u16,
}

/// The protocol version this build speaks.
pub const PROTOCOL: ProtocolVersion = ProtocolVersion { major: 1, minor: 0 };

impl ProtocolVersion {
    /// What a peer that announces nothing speaks: builds from before the announcement.
    pub const UNANNOUNCED: Self = Self { major: 1, minor: 0 };

    /// The version this process speaks: [`PROTOCOL`], unless `QUORATE_PROTOCOL_VERSION`
    /// (`MAJOR.MINOR`) says otherwise — a testing aid that makes this binary act as
    /// the build of another version in mixed-version tests.
    #[must_use]
    pub fn spoken() -> Self {
        static SPOKEN: std::sync::OnceLock<ProtocolVersion> = std::sync::OnceLock::new();
        *SPOKEN.get_or_init(|| {
            std::env::var("QUORATE_PROTOCOL_VERSION")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(PROTOCOL)
        })
    }

    /// The versions a node of this version talks: itself and the minor before it.
    #[must_use]
    pub fn accepted(self) -> Vec<Self> {
        let mut all = vec![self];
        if self.minor > 0 {
            all.push(Self {
                major: self.major,
                minor: self.minor - 1,
            });
        }
        all
    }

    /// Its ALPN identifier.
    #[must_use]
    pub fn alpn(self) -> Vec<u8> {
        format!("quorate/{self}").into_bytes()
    }

    /// The version an ALPN identifier names, if it is one of quorate's.
    #[must_use]
    pub fn from_alpn(id: &[u8]) -> Option<Self> {
        std::str::from_utf8(id)
            .ok()?
            .strip_prefix("quorate/")?
            .parse()
            .ok()
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl std::str::FromStr for ProtocolVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (major, minor) = s
            .split_once('.')
            .ok_or_else(|| format!("`{s}` is not MAJOR.MINOR"))?;
        Ok(Self {
            major: major.parse().map_err(|e| format!("`{s}`: {e}"))?,
            minor: minor.parse().map_err(|e| format!("`{s}`: {e}"))?,
        })
    }
}

/// Who a peer certificate names, and until when it is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The node name (the single DNS subject-alternative name).
    pub node: String,
    /// The end of the certificate's validity.
    pub not_after: SystemTime,
    /// The highest protocol version the peer announced in its handshake (filled in by
    /// the transport; [`ProtocolVersion::UNANNOUNCED`] when it announced none).
    pub protocol: ProtocolVersion,
}

impl PeerIdentity {
    /// True once the certificate's validity has ended.
    #[must_use]
    pub fn expired(&self) -> bool {
        SystemTime::now() > self.not_after
    }
}

/// The end of validity of the first certificate in a PEM file.
///
/// # Errors
/// Unreadable file or no certificate in it.
pub fn cert_not_after(path: &Path) -> Result<SystemTime, PkiError> {
    let first = certs(path)?.remove(0);
    not_after(&first).ok_or_else(|| PkiError::Bad {
        path: path.display().to_string(),
        problem: "unreadable validity period".into(),
    })
}

/// A certificate time as a UTC date and time, `2027-12-02 21:55:40 UTC`.
#[must_use]
pub fn format_time(at: SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    format!(
        "{} {:02}:{:02}:{:02} UTC",
        t.date(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let secs = parsed.validity().not_after.timestamp();
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| PkiError::Bad {
            path: path.display().to_string(),
            problem: e.to_string(),
        })?
        .collect();
    let certs = certs.map_err(|e| PkiError::Bad {
        path: path.display().to_string(),
        problem: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(PkiError::Bad {
            path: path.display().to_string(),
            problem: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

/// Loads a node's TLS material and checks that its certificate names `expected_node`.
///
/// # Errors
/// Missing or invalid files, or a certificate for another node.
pub fn load(files: &TlsFiles, expected_node: &str) -> Result<NodeTls, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = certs(&files.ca)?;
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| PkiError::Bad {
        path: files.key.display().to_string(),
        problem: e.to_string(),
    })?;
    let PeerIdentity {
        node, not_after, ..
    } = peer_identity(&chain[0]).ok_or_else(|| PkiError::Bad {
        path: files.cert.display().to_string(),
        problem: "the certificate names no node".into(),
    })?;
    if node != expected_node {
        return Err(PkiError::Bad {
            path: files.cert.display().to_string(),
            problem: format!("this certificate is for node `{node}`, not `{expected_node}`; issue one for `{expected_node}` with `quorate ca issue {expected_node}`"),
        });
    }
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c).map_err(|e| PkiError::Bad {
            path: files.ca.display().to_string(),
            problem: e.to_string(),
        })?;
    }
    let roots = Arc::new(roots);
    let tls = |e: rustls::Error| PkiError::Tls(e.to_string());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(TLS_VERSIONS)
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(tls)?;
    server.alpn_protocols = alpn_protocols();
    let client = client_config(provider, roots, chain, key, TLS_VERSIONS)?;
    Ok(NodeTls {
        node,
        server: Arc::new(server),
        client,
        not_after,
    })
}

/// Between nodes: TLS 1.3 only.
const TLS_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn client_config(
    provider: Arc<rustls::crypto::CryptoProvider>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>, PkiError> {
    let tls = |e: rustls::Error| PkiError::Tls(e.to_string());
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(tls)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(tls)?;
    client.alpn_protocols = alpn_protocols();
    Ok(Arc::new(client))
}

/// The ALPN identifiers of the protocol versions this node talks, highest first.
fn alpn_protocols() -> Vec<Vec<u8>> {
    ProtocolVersion::spoken()
        .accepted()
        .into_iter()
        .map(ProtocolVersion::alpn)
        .collect()
}

/// A client config for other TLS versions than nodes use: for tests that show an
/// older version is refused.
///
/// # Errors
/// Unreadable files or an impossible configuration.
pub fn client_config_with_versions(
    files: &TlsFiles,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in certs(&files.ca)? {
        roots.add(c).map_err(|e| PkiError::Tls(e.to_string()))?;
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| PkiError::Bad {
        path: files.key.display().to_string(),
        problem: e.to_string(),
    })?;
    client_config(
        provider,
        Arc::new(roots),
        certs(&files.cert)?,
        key,
        versions,
    )
}

/// The node a certificate names and the end of its validity.
#[must_use]
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
    Some(PeerIdentity {
        node: peer_node_name(cert)?,
        not_after: not_after(cert)?,
        protocol: ProtocolVersion::UNANNOUNCED,
    })
}

/// The node a certificate names: its single DNS subject-alternative name.
#[must_use]
pub fn peer_node_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            x509_parser::extensions::GeneralName::DNSName(n) => Some((*n).to_string()),
            _ => None,
        })
        .collect();
    match names.as_slice() {
        [one] if is_node_name(one) => Some(one.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_client_certificate_carries_a_role_and_never_names_a_node() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca, "t", CA_VALIDITY).unwrap();
        let alice = dir.path().join("alice");
        issue_client(&ca, "alice", Role::Operator, &alice, NODE_VALIDITY).unwrap();
        let cert = &certs(&alice.join(CLIENT_CERT)).unwrap()[0];
        assert_eq!(client_role(cert), Some(("alice".into(), Role::Operator)));
        assert_eq!(peer_node_name(cert), None, "the node transport refuses it");
        let key_mode = std::fs::metadata(alice.join(CLIENT_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        // A node's certificate has no role.
        issue(&ca, "n1", &dir.path().join("n1"), NODE_VALIDITY).unwrap();
        let node = &certs(&dir.path().join("n1").join(NODE_CERT)).unwrap()[0];
        assert_eq!(client_role(node), None);
        assert!(issue_client(
            &ca,
            "Not A Name",
            Role::Viewer,
            &dir.path().join("x"),
            NODE_VALIDITY
        )
        .is_err());
        assert_eq!("viewer".parse::<Role>(), Ok(Role::Viewer));
        assert!("admin".parse::<Role>().is_err());
    }

    #[test]
    fn nodes_talk_across_one_minor_version_and_never_across_majors() {
        let v = |s: &str| s.parse::<ProtocolVersion>().unwrap();
        let common = |a: &str, b: &str| {
            let theirs = v(b).accepted();
            v(a).accepted().iter().any(|x| theirs.contains(x))
        };
        assert!(common("1.1", "1.0") && common("1.0", "1.1") && common("1.2", "1.1"));
        assert!(!common("1.2", "1.0") && !common("2.0", "1.0") && !common("2.0", "1.9"));
        assert_eq!(ProtocolVersion::from_alpn(&v("1.7").alpn()), Some(v("1.7")));
        assert_eq!(ProtocolVersion::from_alpn(b"h2"), None);
        assert!(
            "1".parse::<ProtocolVersion>().is_err() && "a.b".parse::<ProtocolVersion>().is_err()
        );
    }

    #[test]
    fn request_sign_and_issue_produce_loadable_certs_naming_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca, "lab", CA_VALIDITY).unwrap();
        assert_eq!(
            std::fs::metadata(ca.join(CA_KEY))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert!(matches!(
            init_ca(&ca, "lab", CA_VALIDITY),
            Err(PkiError::Exists { .. })
        ));

        // Flow 1: request on the node, sign with the CA.
        let n1 = dir.path().join("n1");
        let csr = request("n1", &n1).unwrap();
        assert_eq!(
            std::fs::metadata(n1.join(NODE_KEY))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let pem = sign(&ca, &csr, "n1", NODE_VALIDITY).unwrap();
        // A request is signed only for the node the signer expects.
        let err = sign(&ca, &csr, "n2", NODE_VALIDITY).unwrap_err();
        assert!(matches!(err, PkiError::WrongNode { .. }), "{err}");
        std::fs::write(n1.join(NODE_CERT), pem).unwrap();
        std::fs::copy(ca.join(CA_CERT), n1.join(CA_CERT)).unwrap();
        let tls = load(&TlsFiles::in_dir(&n1), "n1").unwrap();
        assert_eq!(tls.node, "n1");
        // The certificate of n1 cannot be loaded as n2.
        let err = load(&TlsFiles::in_dir(&n1), "n2").unwrap_err();
        assert!(err.to_string().contains("for node `n1`"), "{err}");

        // Flow 2: issue key + cert in one step.
        let n2 = dir.path().join("n2");
        issue(&ca, "n2", &n2, NODE_VALIDITY).unwrap();
        assert_eq!(load(&TlsFiles::in_dir(&n2), "n2").unwrap().node, "n2");
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "lab", CA_VALIDITY).unwrap();
        for name in ["", "N1", "n_1", "-n", "a.b"] {
            assert!(
                matches!(
                    issue(dir.path(), name, &dir.path().join("x"), NODE_VALIDITY),
                    Err(PkiError::BadName { .. })
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn certificates_carry_the_validity_they_were_issued_with() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca, "lab", CA_VALIDITY).unwrap();
        let n1 = dir.path().join("n1");
        issue(&ca, "n1", &n1, Duration::from_secs(30 * 86_400)).unwrap();
        let tls = load(&TlsFiles::in_dir(&n1), "n1").unwrap();
        let days = tls
            .not_after
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs()
            / 86_400;
        assert_eq!(days, 29, "30 days minus the moment since issuing");
        let ca_days = cert_not_after(&ca.join(CA_CERT))
            .unwrap()
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs()
            / 86_400;
        assert!(ca_days > 3600, "{ca_days}");
    }

    #[test]
    fn a_ca_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca, "lab", CA_VALIDITY).unwrap();
        std::fs::set_permissions(ca.join(CA_KEY), std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = issue(&ca, "n1", &dir.path().join("n1"), NODE_VALIDITY).unwrap_err();
        assert!(
            matches!(err, PkiError::KeyExposed { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(
            !dir.path().join("n1").join(NODE_KEY).exists(),
            "nothing was written"
        );
    }

    /// Issue 14, item 7: signing requests from anywhere — random bytes, and a real
    /// request with a span replaced — are signed only for the expected node, or
    /// refused, never a panic.
    #[test]
    fn fuzzed_signing_requests_are_refused_or_name_the_expected_node() {
        use proptest::prelude::*;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca, "lab", CA_VALIDITY).unwrap();
        let real = std::fs::read(request("n1", &dir.path().join("n1")).unwrap()).unwrap();
        let cases = std::env::var("QUORATE_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let strategy = (
            any::<prop::sample::Index>(),
            0_usize..16,
            prop::collection::vec(any::<u8>(), 0..16),
            any::<bool>(),
        );
        let csr = dir.path().join("fuzz.csr");
        runner
            .run(&strategy, |(at, len, with, random)| {
                let mut bytes = if random { with.clone() } else { real.clone() };
                if !random {
                    let start = at.index(bytes.len());
                    let end = (start + len).min(bytes.len());
                    bytes.splice(start..end, with);
                }
                std::fs::write(&csr, &bytes).unwrap();
                if let Ok(pem) = sign(&ca, &csr, "n1", NODE_VALIDITY) {
                    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
                    let named = peer_node_name(&der);
                    prop_assert_eq!(named.as_deref(), Some("n1"));
                }
                Ok(())
            })
            .unwrap();
    }
}
