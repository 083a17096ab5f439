//! The cluster's own certificate authority and the TLS configurations built from it.
//!
//! Every party (metadata server, chunk servers, clients, admins) holds a certificate issued by
//! the cluster CA and trusts only that CA, so a peer without such a certificate is refused in
//! the handshake. Server certificates carry the name [`SERVER_NAME`] that clients verify.
//!
//! A certificate's role is a name in it too, so that only the CA can grant it: servers hold
//! [`SERVER_NAME`], the metadata server also [`META_NAME`], administrators [`ADMIN_NAME`]; any
//! other certificate is a client whose rights the metadata server looks up by the
//! certificate's fingerprint ([`Principal`]).

use crate::error::FsError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The DNS name every dfs server certificate holds and every client checks.
pub const SERVER_NAME: &str = "dfs.cluster";
/// The DNS name an administrator's certificate holds.
pub const ADMIN_NAME: &str = "admin.role.dfs";
/// The DNS name a metadata server's certificate holds besides [`SERVER_NAME`]: chunk servers
/// take deletes and rebuilds only from it (or an administrator), not from each other.
pub const META_NAME: &str = "meta.role.dfs";
/// ALPN protocol id, so a dfs endpoint never talks to some other QUIC service by mistake.
pub const ALPN: &[u8] = b"dfs/1";

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct PemPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a certificate may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Accepts connections (chunk servers; metadata servers of clusters made before the
    /// metadata role); connects to other servers to read shards.
    Server,
    /// A server certificate that also holds [`META_NAME`]: the metadata server, which directs
    /// chunk servers (delete, rebuild, verify, scrub).
    Meta,
    /// Connects with every right: the admin CLI (and mounts that may use any volume).
    Admin,
    /// Connects with the rights the metadata server records for it (`dfs client add`).
    Client,
}

/// Who is on the other end of a connection, from its (CA-verified) certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A server certificate, known by its fingerprint: the metadata server binds each chunk
    /// server's id to the certificate it first registered with.
    Server(Fingerprint),
    /// The metadata server's certificate (it holds [`META_NAME`]).
    Meta,
    Admin,
    /// A client certificate, known by the blake3 hash of its DER bytes.
    Client(Fingerprint),
}

/// blake3 of a certificate's DER bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Fingerprint {
    pub fn of(der: &[u8]) -> Self {
        Fingerprint(*blake3::hash(der).as_bytes())
    }

    /// The fingerprint of the first certificate in a PEM text.
    pub fn of_pem(pem: &str) -> Result<Self, FsError> {
        let der = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .ok_or_else(|| FsError::invalid("no certificate in PEM text"))?
            .map_err(tls_err)?;
        Ok(Self::of(&der))
    }
}

impl Principal {
    /// Classifies a peer by the leaf certificate it presented (the handshake has already
    /// verified it against the CA).
    pub fn of_certificate(der: &CertificateDer<'_>) -> Principal {
        let holds = |name: &'static str| {
            let Ok(cert) = webpki::EndEntityCert::try_from(der) else {
                return false;
            };
            let name = rustls::pki_types::ServerName::try_from(name).expect("valid DNS name");
            cert.verify_is_valid_for_subject_name(&name).is_ok()
        };
        if holds(META_NAME) && holds(SERVER_NAME) {
            Principal::Meta
        } else if holds(SERVER_NAME) {
            Principal::Server(Fingerprint::of(der))
        } else if holds(ADMIN_NAME) {
            Principal::Admin
        } else {
            Principal::Client(Fingerprint::of(der))
        }
    }

    /// Classifies the peer of an established connection. A connection without a certificate
    /// cannot exist (the handshake requires one); it would get a client's (no) rights.
    pub fn of_connection(conn: &quinn::Connection) -> Principal {
        conn.peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|chain| chain.first().map(Principal::of_certificate))
            .unwrap_or(Principal::Client(Fingerprint([0; 32])))
    }

    /// Servers and administrators may read any shard.
    pub fn is_privileged(&self) -> bool {
        matches!(
            self,
            Principal::Server(_) | Principal::Meta | Principal::Admin
        )
    }

    /// The metadata server and administrators direct chunk servers (delete, rebuild, verify,
    /// scrub); chunk servers do not direct each other.
    pub fn directs_chunk_servers(&self) -> bool {
        matches!(self, Principal::Meta | Principal::Admin)
    }
}

/// ring's TLS 1.3 suites with AES-128-GCM first: every byte of shard data is sealed and
/// opened once per hop, and AES-128 does that with fewer rounds than ring's default first
/// choice, AES-256 (see docs/BENCHMARKS.md). Both ends use this order, so AES-128 is what they
/// agree on; AES-256 and ChaCha20 stay allowed.
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

fn ca_params() -> Result<CertificateParams, FsError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "dfs cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

fn tls_err(e: impl std::fmt::Display) -> FsError {
    FsError::invalid(format!("certificate: {e}"))
}

/// Creates a new cluster CA.
pub fn generate_ca() -> Result<PemPair, FsError> {
    let key = KeyPair::generate().map_err(tls_err)?;
    let cert = ca_params()?.self_signed(&key).map_err(tls_err)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a certificate for `name` signed by the CA. Server certificates also hold
/// [`SERVER_NAME`] and every entry of `extra_names` (host names or IP addresses).
pub fn issue(
    ca: &PemPair,
    name: &str,
    role: Role,
    extra_names: &[String],
) -> Result<PemPair, FsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(tls_err)?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut sans = Vec::new();
    match role {
        Role::Server => {
            sans.push(SERVER_NAME.to_string());
            sans.extend(extra_names.iter().cloned());
        }
        Role::Meta => {
            sans.push(SERVER_NAME.to_string());
            sans.push(META_NAME.to_string());
            sans.extend(extra_names.iter().cloned());
        }
        Role::Admin => sans.push(ADMIN_NAME.to_string()),
        Role::Client => {}
    }
    let mut params = CertificateParams::new(sans).map_err(tls_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Server | Role::Meta => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Admin | Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    let key = KeyPair::generate().map_err(tls_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(tls_err)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Where a party's TLS files are: the CA certificate, its own certificate and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsPaths {
    /// The layout of a certificate directory made by `dfs cert init`: `ca.pem`, `NAME.pem`,
    /// `NAME.key`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        TlsPaths {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

/// A loaded TLS identity: the CA to trust and our own certificate chain and key.
#[derive(Debug)]
pub struct Identity {
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    pub fn load(paths: &TlsPaths) -> Result<Self, FsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| FsError::invalid(format!("{}: {e}", p.display())))
        };
        Self::from_pem(
            &String::from_utf8_lossy(&read(&paths.ca)?),
            &String::from_utf8_lossy(&read(&paths.cert)?),
            &String::from_utf8_lossy(&read(&paths.key)?),
        )
    }

    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, FsError> {
        let certs = |pem: &str, what: &str| -> Result<Vec<CertificateDer<'static>>, FsError> {
            let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| FsError::invalid(format!("{what}: {e}")))?;
            if certs.is_empty() {
                return Err(FsError::invalid(format!("{what}: no certificate found")));
            }
            Ok(certs)
        };
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| FsError::invalid(format!("private key: {e}")))?;
        Ok(Identity {
            ca: certs(ca_pem, "CA certificate")?,
            chain: certs(cert_pem, "certificate")?,
            key,
        })
    }

    /// Builds an identity straight from PEM pairs (tests and the dev cluster).
    pub fn from_pairs(ca: &PemPair, own: &PemPair) -> Result<Self, FsError> {
        Self::from_pem(&ca.cert_pem, &own.cert_pem, &own.key_pem)
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, FsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in &self.ca {
            roots.add(c.clone()).map_err(tls_err)?;
        }
        Ok(Arc::new(roots))
    }

    pub fn rustls_server_config(&self) -> Result<rustls::ServerConfig, FsError> {
        let provider = crypto_provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            provider.clone(),
        )
        .build()
        .map_err(tls_err)?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls_err)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    pub fn rustls_client_config(&self) -> Result<rustls::ClientConfig, FsError> {
        let provider = crypto_provider();
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls_err)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }
}

/// Writes a PEM pair as `dir/NAME.pem` and `dir/NAME.key` (the key readable by its owner only).
pub fn write_pair(dir: &Path, name: &str, pair: &PemPair) -> Result<(), FsError> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(format!("{name}.pem")), &pair.cert_pem)?;
    let key_path = dir.join(format!("{name}.key"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&key_path)?;
    f.write_all(pair.key_pem.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Reads `dir/NAME.pem` and `dir/NAME.key`.
pub fn read_pair(dir: &Path, name: &str) -> Result<PemPair, FsError> {
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).map_err(|e| FsError::invalid(format!("{}: {e}", p.display())))
    };
    Ok(PemPair {
        cert_pem: read(dir.join(format!("{name}.pem")))?,
        key_pem: read(dir.join(format!("{name}.key")))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our client and server, handshaking in memory, agree on AES-128-GCM.
    #[test]
    fn peers_negotiate_aes_128_gcm() {
        let ca = generate_ca().unwrap();
        let server = Identity::from_pairs(
            &ca,
            &issue(&ca, "s", Role::Server, &["127.0.0.1".into()]).unwrap(),
        )
        .unwrap();
        let client =
            Identity::from_pairs(&ca, &issue(&ca, "c", Role::Admin, &[]).unwrap()).unwrap();
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).unwrap();
        let mut c =
            rustls::ClientConnection::new(Arc::new(client.rustls_client_config().unwrap()), name)
                .unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server.rustls_server_config().unwrap()))
            .unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets().unwrap();
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        assert!(!c.is_handshaking());
        let suite = c.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    }
}
