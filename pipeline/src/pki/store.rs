//! PEM files and the PKI directory layout of `dcpipe pki init`: one directory per party, and
//! the trust anchors (certificates only) in a directory of their own.
//!
//! ```text
//! DIR/manifest.toml                                    what was generated (`pki show`)
//! DIR/trust/root.crt.pem                               trust anchors: certificates only,
//! DIR/trust/settlement.crt.pem                         what every verifier needs
//! DIR/trust/institutions/<oi>.crt.pem
//! DIR/root/{ca.crt.pem,ca.key.pem}                     the root (offline)
//! DIR/settlement/{signer.crt.pem,signer.key.pem}       the settlement worker
//! DIR/institutions/<oi>/ca/{ca.crt.pem,ca.key.pem}     the institution's CA (pki revoke --ca)
//! DIR/institutions/<oi>/signer/{signer.crt.pem,signer.key.pem}   the institution's workers
//! DIR/wallets/<wallet>/{terminal,secure-element,wallet}.{crt,key}.pem   the wallet's terminal
//! ```
//!
//! A worker is given the trust directory (`--pki DIR/trust`) and its own signer's directory
//! (`--key DIR/institutions/<oi>/signer`, or `DIR/settlement`); no other file of the PKI.
//!
//! Private keys are PKCS#8 `PRIVATE KEY` PEM created with mode 0600; certificates are
//! `CERTIFICATE` PEM. Files are created, never overwritten: writing into a directory that
//! already holds a PKI fails with `store.already_exists`. manifest.toml is written last, so its
//! presence means the directory is complete. Loading checks every key against its certificate,
//! every certificate against the layout (role, institution, id, algorithm), and the root,
//! institution CAs and settlement signer against each other (the trust store); wallet
//! certificates are verified when they are used, like any certificate received.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::certificate::{CENTRAL_BANK_ID, CertifiedKey, SETTLEMENT_SIGNER_ID};
use super::error::{StoreError, StoreErrorKind};
use super::generate::{
    DemoPkiOptions, InstitutionKeys, MANIFEST_FORMAT_VERSION, Manifest, PkiDirectory, WalletKeys,
    build_trust_store, parallel_map,
};
use super::keys::{Algorithm, PrivateKey, PublicKey};
use super::parse::{Certificate, is_valid_id};
use super::role::Role;
use super::verify::TrustStore;

/// Name of the manifest file.
pub const MANIFEST_FILE: &str = "manifest.toml";
/// Name of the trust anchors' directory inside a PKI directory.
pub const TRUST_DIR: &str = "trust";
/// Mode of private key files.
pub const PRIVATE_KEY_FILE_MODE: u32 = 0o600;
/// Mode of certificate and manifest files.
pub const PUBLIC_FILE_MODE: u32 = 0o644;
/// Largest PEM file read.
pub const PEM_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Largest manifest read (a million wallets take about 90 MB).
pub const MANIFEST_BYTES_MAX: u64 = 128 * 1024 * 1024;
/// Most institution CAs read from a trust directory.
pub const TRUST_INSTITUTIONS_MAX: usize = 1000;

/// Paths of the files of a PKI directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiLayout {
    dir: PathBuf,
}

impl PkiLayout {
    /// The layout rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PkiLayout { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/manifest.toml`.
    pub fn manifest(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }

    /// `DIR/trust`: the trust anchors, certificates only.
    pub fn trust(&self) -> TrustLayout {
        TrustLayout::new(self.dir.join(TRUST_DIR))
    }

    /// `DIR/root`: the root's party directory (offline).
    pub fn root_dir(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// (certificate, key) of the root.
    pub fn root(&self) -> (PathBuf, PathBuf) {
        pair(&self.root_dir(), "ca")
    }

    /// `DIR/settlement`: the settlement signer's party directory.
    pub fn settlement_dir(&self) -> PathBuf {
        self.dir.join("settlement")
    }

    /// (certificate, key) of the settlement signer.
    pub fn settlement_signer(&self) -> (PathBuf, PathBuf) {
        signer_pair(&self.settlement_dir())
    }

    /// `DIR/institutions/<oi>`.
    pub fn institution_dir(&self, institution: &str) -> PathBuf {
        self.dir.join("institutions").join(institution)
    }

    /// `DIR/institutions/<oi>/ca`: the institution CA's party directory.
    pub fn institution_ca_dir(&self, institution: &str) -> PathBuf {
        self.institution_dir(institution).join("ca")
    }

    /// (certificate, key) of an institution's CA.
    pub fn institution_ca(&self, institution: &str) -> (PathBuf, PathBuf) {
        pair(&self.institution_ca_dir(institution), "ca")
    }

    /// `DIR/institutions/<oi>/signer`: the institution signer's party directory.
    pub fn institution_signer_dir(&self, institution: &str) -> PathBuf {
        self.institution_dir(institution).join("signer")
    }

    /// (certificate, key) of an institution's signer.
    pub fn institution_signer(&self, institution: &str) -> (PathBuf, PathBuf) {
        signer_pair(&self.institution_signer_dir(institution))
    }

    /// The party directory holding the signing key of `holder`.
    pub fn signer_dir(&self, holder: KeyHolder<'_>) -> PathBuf {
        match holder {
            KeyHolder::Institution(id) => self.institution_signer_dir(id),
            KeyHolder::Settlement => self.settlement_dir(),
        }
    }

    /// `DIR/wallets/<wallet>`: what the wallet's terminal holds.
    pub fn wallet_dir(&self, wallet: &str) -> PathBuf {
        self.dir.join("wallets").join(wallet)
    }

    /// (certificate, key) of a wallet's terminal, secure element or wallet key, by role.
    pub fn wallet_key(&self, wallet: &str, role: Role) -> (PathBuf, PathBuf) {
        pair(&self.wallet_dir(wallet), role.as_str())
    }
}

/// Paths of a trust directory: the certificates of the root, the settlement signer and every
/// institution CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustLayout {
    dir: PathBuf,
}

impl TrustLayout {
    /// The trust directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        TrustLayout { dir: dir.into() }
    }

    /// The trust directory of `dir`: `dir/trust` when `dir` is a whole PKI directory, `dir`
    /// itself otherwise.
    pub fn of(dir: &Path) -> Self {
        let inner = dir.join(TRUST_DIR);
        if inner.join("root.crt.pem").exists() {
            TrustLayout::new(inner)
        } else {
            TrustLayout::new(dir)
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `trust/root.crt.pem`.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root.crt.pem")
    }

    /// `trust/settlement.crt.pem`.
    pub fn settlement_signer(&self) -> PathBuf {
        self.dir.join("settlement.crt.pem")
    }

    /// `trust/institutions`.
    pub fn institutions_dir(&self) -> PathBuf {
        self.dir.join("institutions")
    }

    /// `trust/institutions/<oi>.crt.pem`: the institution CA's certificate.
    pub fn institution_ca(&self, institution: &str) -> PathBuf {
        self.institutions_dir()
            .join(format!("{institution}.crt.pem"))
    }
}

/// (certificate, key) of a signer's party directory: `signer.crt.pem`, `signer.key.pem`.
pub fn signer_pair(dir: &Path) -> (PathBuf, PathBuf) {
    pair(dir, "signer")
}

fn pair(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}.crt.pem")),
        dir.join(format!("{stem}.key.pem")),
    )
}

fn io_error(path: &Path, err: std::io::Error) -> StoreError {
    let kind = if err.kind() == std::io::ErrorKind::AlreadyExists {
        StoreErrorKind::AlreadyExists
    } else {
        StoreErrorKind::Io
    };
    StoreError::new(kind, path, err.to_string())
}

/// Creates `path` (which must not exist) with `mode` and writes `bytes`.
fn create_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    let mut file = options.open(path).map_err(|e| io_error(path, e))?;
    // The umask may have cleared bits of `mode`; set it exactly.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| io_error(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    file.write_all(bytes).map_err(|e| io_error(path, e))
}

fn read_file(path: &Path, limit: u64) -> Result<String, StoreError> {
    let file = fs::File::open(path).map_err(|e| io_error(path, e))?;
    let mut text = String::new();
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(|e| io_error(path, e))?;
    if text.len() as u64 > limit {
        return Err(StoreError::new(
            StoreErrorKind::Io,
            path,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(text)
}

/// Writes a certificate as PEM into a new file.
pub fn write_certificate_pem(path: &Path, certificate: &Certificate) -> Result<(), StoreError> {
    create_file(path, certificate.to_pem().as_bytes(), PUBLIC_FILE_MODE)
}

/// Writes a private key as PKCS#8 PEM into a new file with mode 0600.
pub fn write_private_key_pem(path: &Path, key: &PrivateKey) -> Result<(), StoreError> {
    let pem = key
        .to_pkcs8_pem()
        .map_err(|e| StoreError::new(StoreErrorKind::Key, path, e.to_string()))?;
    create_file(path, pem.as_bytes(), PRIVATE_KEY_FILE_MODE)
}

/// Reads a `CERTIFICATE` PEM file.
pub fn read_certificate_pem(path: &Path) -> Result<Certificate, StoreError> {
    let pem = read_file(path, PEM_FILE_BYTES_MAX)?;
    Certificate::from_pem(&pem)
        .map_err(|e| StoreError::new(StoreErrorKind::Certificate, path, e.to_string()))
}

/// Reads a `PUBLIC KEY` PEM file (SubjectPublicKeyInfo, P-256 or SM2).
pub fn read_public_key_pem(path: &Path) -> Result<PublicKey, StoreError> {
    let pem = read_file(path, PEM_FILE_BYTES_MAX)?;
    PublicKey::from_spki_pem(&pem)
        .map_err(|e| StoreError::new(StoreErrorKind::Key, path, e.to_string()))
}

/// Refuses a private key file that its group or others may read or write: a key must be its
/// owner's alone.
fn check_private_key_mode(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(path)
            .map_err(|e| io_error(path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(StoreError::new(
                StoreErrorKind::Key,
                path,
                format!(
                    "private key file has mode {:04o}, open to group or others: refused; run chmod 600 on it",
                    mode & 0o7777
                ),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Reads a PKCS#8 `PRIVATE KEY` PEM file; refused when its group or others may read it.
pub fn read_private_key_pem(path: &Path) -> Result<PrivateKey, StoreError> {
    check_private_key_mode(path)?;
    let pem = der::zeroize::Zeroizing::new(read_file(path, PEM_FILE_BYTES_MAX)?);
    PrivateKey::from_pkcs8_pem(&pem)
        .map_err(|e| StoreError::new(StoreErrorKind::Key, path, e.to_string()))
}

fn write_pair(paths: &(PathBuf, PathBuf), keys: &CertifiedKey) -> Result<(), StoreError> {
    if let Some(dir) = paths.0.parent() {
        fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    }
    write_certificate_pem(&paths.0, keys.certificate())?;
    write_private_key_pem(&paths.1, keys.key())
}

/// What a file of the layout must hold.
struct Expected<'a> {
    role: Role,
    id: &'a str,
    institution: &'a str,
    algorithm: Algorithm,
}

fn read_pair(
    paths: &(PathBuf, PathBuf),
    expected: Expected<'_>,
) -> Result<CertifiedKey, StoreError> {
    let certificate = read_expected_certificate(&paths.0, expected)?;
    let key = read_private_key_pem(&paths.1)?;
    CertifiedKey::new(certificate, key)
        .map_err(|e| StoreError::new(StoreErrorKind::KeyMismatch, &paths.1, e.to_string()))
}

/// Reads a certificate and checks it against the layout.
fn read_expected_certificate(
    path: &Path,
    expected: Expected<'_>,
) -> Result<Certificate, StoreError> {
    let certificate = read_certificate_pem(path)?;
    check_expected(path, &certificate, expected)?;
    Ok(certificate)
}

/// Reads a certificate and checks its role, id and institution (any supported algorithm).
fn read_role_certificate(
    path: &Path,
    role: Role,
    id: &str,
    institution: &str,
) -> Result<Certificate, StoreError> {
    let certificate = read_certificate_pem(path)?;
    let algorithm = certificate.algorithm();
    check_expected(
        path,
        &certificate,
        Expected {
            role,
            id,
            institution,
            algorithm,
        },
    )?;
    Ok(certificate)
}

fn check_expected(
    path: &Path,
    certificate: &Certificate,
    expected: Expected<'_>,
) -> Result<(), StoreError> {
    let actual = (
        certificate.role(),
        certificate.id(),
        certificate.institution(),
        certificate.algorithm(),
    );
    let wanted = (
        Some(expected.role),
        expected.id,
        expected.institution,
        expected.algorithm,
    );
    if actual != wanted {
        return Err(StoreError::new(
            StoreErrorKind::Certificate,
            path,
            format!(
                "holds {} {} of {} ({}), expected {} {} of {} ({})",
                certificate.role_name(),
                actual.1,
                actual.2,
                actual.3,
                expected.role,
                expected.id,
                expected.institution,
                expected.algorithm
            ),
        ));
    }
    Ok(())
}

/// Whose signing key a worker holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHolder<'a> {
    /// An institution's signer (its payment stages).
    Institution(&'a str),
    /// The central bank's settlement signer (the settlement stage).
    Settlement,
}

/// What a worker holds: the trust anchors, read from certificates only, and its own signing
/// key. No other private key is read, so none needs to be on the worker's machine.
#[derive(Debug)]
pub struct WorkerKeys {
    /// The network's institutions, from the manifest.
    pub institutions: Vec<String>,
    /// Root, institution CAs and settlement signer, as certificates.
    pub trust_store: Arc<TrustStore>,
    /// The key the worker signs with.
    pub signer: CertifiedKey,
}

/// The trust anchors of a trust directory ([`TrustLayout`]): the root's, the settlement
/// signer's and every institution CA's certificate, checked against each other. Returns the
/// institutions, in id order, and the trust store.
pub fn read_trust_anchors(trust: &TrustLayout) -> Result<(Vec<String>, TrustStore), StoreError> {
    let root = read_role_certificate(
        &trust.root(),
        Role::CentralBankRoot,
        CENTRAL_BANK_ID,
        CENTRAL_BANK_ID,
    )?;
    let settlement = read_role_certificate(
        &trust.settlement_signer(),
        Role::SettlementSigner,
        SETTLEMENT_SIGNER_ID,
        CENTRAL_BANK_ID,
    )?;
    let dir = trust.institutions_dir();
    let mut ids = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|e| io_error(&dir, e))? {
        let entry = entry.map_err(|e| io_error(&dir, e))?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".crt.pem")) else {
            continue;
        };
        if !is_valid_id(id) {
            return Err(StoreError::new(
                StoreErrorKind::Certificate,
                entry.path(),
                format!("{id:?} is not an institution id"),
            ));
        }
        ids.push(id.to_owned());
        if ids.len() > TRUST_INSTITUTIONS_MAX {
            return Err(StoreError::new(
                StoreErrorKind::Certificate,
                &dir,
                format!("more than {TRUST_INSTITUTIONS_MAX} institution CAs"),
            ));
        }
    }
    ids.sort();
    let mut cas = Vec::with_capacity(ids.len());
    for id in &ids {
        cas.push(read_role_certificate(
            &trust.institution_ca(id),
            Role::InstitutionCa,
            id,
            id,
        )?);
    }
    let store = trust_store_of(root, settlement, cas)
        .map_err(|e| StoreError::new(StoreErrorKind::Certificate, trust.dir(), e.to_string()))?;
    Ok((ids, store))
}

impl PkiDirectory {
    /// Reads what one worker needs: the trust anchors from the trust directory `trust` (a
    /// whole PKI directory is accepted too, see [`TrustLayout::of`]) and the certificate and
    /// private key of `holder` from its party directory `key_dir` (`signer.crt.pem`,
    /// `signer.key.pem`). No other private key is read.
    pub fn load_worker(
        trust: &Path,
        key_dir: &Path,
        holder: KeyHolder<'_>,
    ) -> Result<WorkerKeys, StoreError> {
        let (institutions, trust_store) = read_trust_anchors(&TrustLayout::of(trust))?;
        let paths = signer_pair(key_dir);
        let (role, id, institution) = match holder {
            KeyHolder::Institution(id) => (Role::InstitutionSigner, id, id),
            KeyHolder::Settlement => (
                Role::SettlementSigner,
                SETTLEMENT_SIGNER_ID,
                CENTRAL_BANK_ID,
            ),
        };
        let certificate = read_role_certificate(&paths.0, role, id, institution)?;
        let key = read_private_key_pem(&paths.1)?;
        let signer = CertifiedKey::new(certificate, key)
            .map_err(|e| StoreError::new(StoreErrorKind::KeyMismatch, &paths.1, e.to_string()))?;
        let trusted = match holder {
            KeyHolder::Institution(id) => trust_store.institution_ca(id).is_some(),
            KeyHolder::Settlement => trust_store
                .settlement_signer()
                .is_some_and(|c| c.fingerprint() == signer.certificate().fingerprint()),
        };
        if !trusted {
            return Err(StoreError::new(
                StoreErrorKind::Certificate,
                &paths.0,
                format!("not trusted by the trust anchors of {}", trust.display()),
            ));
        }
        Ok(WorkerKeys {
            institutions,
            trust_store: Arc::new(trust_store),
            signer,
        })
    }
}

/// The trust store of a root, its institution CAs and the settlement signer.
fn trust_store_of(
    root: Certificate,
    settlement: Certificate,
    institution_cas: Vec<Certificate>,
) -> Result<TrustStore, super::error::CertError> {
    let mut store = TrustStore::new(root)?;
    for ca in institution_cas {
        store.add_institution_ca(ca)?;
    }
    store.set_settlement_signer(settlement)?;
    Ok(store)
}

fn manifest_error(path: &Path, detail: impl Into<String>) -> StoreError {
    StoreError::new(StoreErrorKind::Manifest, path, detail)
}

fn read_manifest(path: &Path) -> Result<Manifest, StoreError> {
    let text = read_file(path, MANIFEST_BYTES_MAX)?;
    let manifest: Manifest =
        toml::from_str(&text).map_err(|e| manifest_error(path, e.to_string()))?;
    if manifest.format_version != MANIFEST_FORMAT_VERSION {
        return Err(manifest_error(
            path,
            format!(
                "format_version {} (this build reads {MANIFEST_FORMAT_VERSION})",
                manifest.format_version
            ),
        ));
    }
    let institutions: BTreeMap<&str, Algorithm> = manifest
        .institutions
        .iter()
        .map(|i| (i.id.as_str(), i.algorithm))
        .collect();
    if institutions.len() != manifest.institutions.len() {
        return Err(manifest_error(path, "an institution is listed twice"));
    }
    // Ids become path components: only the id alphabet is accepted.
    for id in manifest.institutions.iter().map(|i| &i.id) {
        if !is_valid_id(id) {
            return Err(manifest_error(
                path,
                format!("invalid institution id {id:?}"),
            ));
        }
    }
    for wallet in &manifest.wallets {
        if !is_valid_id(&wallet.id) {
            return Err(manifest_error(
                path,
                format!("invalid wallet id {:?}", wallet.id),
            ));
        }
        if !institutions.contains_key(wallet.institution.as_str()) {
            return Err(manifest_error(
                path,
                format!(
                    "wallet {} of unknown institution {}",
                    wallet.id, wallet.institution
                ),
            ));
        }
    }
    Ok(manifest)
}

impl PkiDirectory {
    /// Writes the PKI into `dir` (created if needed). Fails with `store.already_exists`, and
    /// overwrites nothing, if a file of the layout is already there.
    pub fn write(&self, dir: &Path) -> Result<(), StoreError> {
        let layout = PkiLayout::new(dir);
        if layout.manifest().exists() {
            return Err(StoreError::new(
                StoreErrorKind::AlreadyExists,
                layout.manifest(),
                "a PKI is already there",
            ));
        }
        write_pair(&layout.root(), &self.root)?;
        write_pair(&layout.settlement_signer(), &self.settlement)?;
        for (id, keys) in &self.institutions {
            write_pair(&layout.institution_ca(id), &keys.ca)?;
            write_pair(&layout.institution_signer(id), &keys.signer)?;
        }
        // The trust anchors, certificates only, in a directory of their own.
        self.write_trust_anchors(&layout.trust())?;
        let wallets: Vec<(&String, &WalletKeys)> = self.wallets.iter().collect();
        parallel_map(
            &wallets,
            |(id, keys)| {
                for (role, certified) in [
                    (Role::Terminal, &keys.terminal),
                    (Role::SecureElement, &keys.secure_element),
                    (Role::Wallet, &keys.wallet),
                ] {
                    write_pair(&layout.wallet_key(id, role), certified)?;
                }
                Ok(())
            },
            || StoreError::new(StoreErrorKind::Io, dir, "writer thread panicked"),
        )?;
        let manifest = toml::to_string(&self.manifest)
            .map_err(|e| manifest_error(&layout.manifest(), e.to_string()))?;
        create_file(&layout.manifest(), manifest.as_bytes(), PUBLIC_FILE_MODE)
    }

    /// Writes the trust anchors alone (the certificates of the root, the settlement signer and
    /// every institution CA; no private key) into the trust directory `trust`, created if
    /// needed: what `dcpipe audit --pki` and every verifier read. Overwrites nothing: fails
    /// with `store.already_exists` if one of the files is already there.
    pub fn write_trust_anchors(&self, trust: &TrustLayout) -> Result<(), StoreError> {
        let trust_institutions = trust.institutions_dir();
        fs::create_dir_all(&trust_institutions).map_err(|e| io_error(&trust_institutions, e))?;
        write_certificate_pem(&trust.root(), self.root.certificate())?;
        write_certificate_pem(&trust.settlement_signer(), self.settlement.certificate())?;
        for (id, keys) in &self.institutions {
            write_certificate_pem(&trust.institution_ca(id), keys.ca.certificate())?;
        }
        Ok(())
    }

    /// Reads a PKI directory written by [`PkiDirectory::write`] and rebuilds its trust store.
    pub fn load(dir: &Path) -> Result<Self, StoreError> {
        Self::load_with(dir, true)
    }

    /// Reads what a worker needs of a PKI directory: the root, the settlement signer and the
    /// institutions' CAs and signers, with the trust store; no wallet keys (a worker verifies
    /// wallets' certificates from the messages and never holds their keys).
    pub fn load_institutions(dir: &Path) -> Result<Self, StoreError> {
        Self::load_with(dir, false)
    }

    fn load_with(dir: &Path, with_wallets: bool) -> Result<Self, StoreError> {
        let layout = PkiLayout::new(dir);
        let manifest = read_manifest(&layout.manifest())?;
        let root = read_pair(
            &layout.root(),
            Expected {
                role: Role::CentralBankRoot,
                id: CENTRAL_BANK_ID,
                institution: CENTRAL_BANK_ID,
                algorithm: manifest.root_algorithm,
            },
        )?;
        let settlement = read_pair(
            &layout.settlement_signer(),
            Expected {
                role: Role::SettlementSigner,
                id: SETTLEMENT_SIGNER_ID,
                institution: CENTRAL_BANK_ID,
                algorithm: manifest.root_algorithm,
            },
        )?;
        let mut institutions = BTreeMap::new();
        for institution in &manifest.institutions {
            let id = institution.id.as_str();
            let expected = |role| Expected {
                role,
                id,
                institution: id,
                algorithm: institution.algorithm,
            };
            let ca = read_pair(&layout.institution_ca(id), expected(Role::InstitutionCa))?;
            let signer = read_pair(
                &layout.institution_signer(id),
                expected(Role::InstitutionSigner),
            )?;
            institutions.insert(id.to_owned(), InstitutionKeys { ca, signer });
        }
        let wallet_entries: &[_] = if with_wallets { &manifest.wallets } else { &[] };
        let wallets = parallel_map(
            wallet_entries,
            |wallet| {
                let read = |role| {
                    read_pair(
                        &layout.wallet_key(&wallet.id, role),
                        Expected {
                            role,
                            id: &wallet.id,
                            institution: &wallet.institution,
                            algorithm: wallet.algorithm,
                        },
                    )
                };
                let keys = WalletKeys {
                    institution: wallet.institution.clone(),
                    terminal: read(Role::Terminal)?,
                    secure_element: read(Role::SecureElement)?,
                    wallet: read(Role::Wallet)?,
                };
                Ok((wallet.id.clone(), keys))
            },
            || StoreError::new(StoreErrorKind::Io, dir, "reader thread panicked"),
        )?;
        let trust_store = build_trust_store(&root, &settlement, &institutions).map_err(|e| {
            StoreError::new(StoreErrorKind::Certificate, layout.dir(), e.to_string())
        })?;
        Ok(PkiDirectory {
            manifest,
            root,
            settlement,
            institutions,
            wallets: wallets.into_iter().collect(),
            trust_store: Arc::new(trust_store),
        })
    }
}

/// The body of `dcpipe pki init`: generates a PKI and writes it into `out`, which must not hold
/// one yet.
pub fn init_pki_directory(
    out: &Path,
    options: &DemoPkiOptions,
) -> Result<PkiDirectory, StoreError> {
    let layout = PkiLayout::new(out);
    if layout.manifest().exists() {
        return Err(StoreError::new(
            StoreErrorKind::AlreadyExists,
            layout.manifest(),
            "a PKI is already there",
        ));
    }
    let pki = PkiDirectory::generate(options)
        .map_err(|e| StoreError::new(StoreErrorKind::Issue, out, e.to_string()))?;
    pki.write(out)?;
    Ok(pki)
}
