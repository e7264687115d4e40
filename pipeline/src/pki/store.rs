//! PEM files and the PKI directory layout of `dcpipe pki init`.
//!
//! ```text
//! DIR/manifest.toml
//! DIR/root/{ca.crt.pem,ca.key.pem}
//! DIR/central-bank/{settlement.crt.pem,settlement.key.pem}
//! DIR/institutions/<oi>/{ca.crt.pem,ca.key.pem,signer.crt.pem,signer.key.pem}
//! DIR/institutions/<oi>/wallets/<wallet>/{terminal,secure-element,wallet}.{crt,key}.pem
//! ```
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
use super::keys::{Algorithm, PrivateKey};
use super::parse::{Certificate, is_valid_id};
use super::role::Role;
use super::verify::TrustStore;

/// Name of the manifest file.
pub const MANIFEST_FILE: &str = "manifest.toml";
/// Mode of private key files.
pub const PRIVATE_KEY_FILE_MODE: u32 = 0o600;
/// Mode of certificate and manifest files.
pub const PUBLIC_FILE_MODE: u32 = 0o644;
/// Largest PEM file read.
pub const PEM_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Largest manifest read (a million wallets take about 90 MB).
pub const MANIFEST_BYTES_MAX: u64 = 128 * 1024 * 1024;

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

    /// (certificate, key) of the root.
    pub fn root(&self) -> (PathBuf, PathBuf) {
        pair(&self.dir.join("root"), "ca")
    }

    /// (certificate, key) of the settlement signer.
    pub fn settlement_signer(&self) -> (PathBuf, PathBuf) {
        pair(&self.dir.join(CENTRAL_BANK_ID), SETTLEMENT_SIGNER_ID)
    }

    /// `DIR/institutions/<oi>`.
    pub fn institution_dir(&self, institution: &str) -> PathBuf {
        self.dir.join("institutions").join(institution)
    }

    /// (certificate, key) of an institution's CA.
    pub fn institution_ca(&self, institution: &str) -> (PathBuf, PathBuf) {
        pair(&self.institution_dir(institution), "ca")
    }

    /// (certificate, key) of an institution's signer.
    pub fn institution_signer(&self, institution: &str) -> (PathBuf, PathBuf) {
        pair(&self.institution_dir(institution), "signer")
    }

    /// `DIR/institutions/<oi>/wallets/<wallet>`.
    pub fn wallet_dir(&self, institution: &str, wallet: &str) -> PathBuf {
        self.institution_dir(institution)
            .join("wallets")
            .join(wallet)
    }

    /// (certificate, key) of a wallet's terminal, secure element or wallet key, by role.
    pub fn wallet_key(&self, institution: &str, wallet: &str, role: Role) -> (PathBuf, PathBuf) {
        pair(&self.wallet_dir(institution, wallet), role.as_str())
    }
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
    Ok(certificate)
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

impl PkiDirectory {
    /// Reads what one worker needs of a PKI directory: the manifest, the root's, the
    /// institution CAs' and the settlement signer's certificates, and the certificate and
    /// private key of `holder` only.
    pub fn load_worker(dir: &Path, holder: KeyHolder<'_>) -> Result<WorkerKeys, StoreError> {
        let layout = PkiLayout::new(dir);
        let manifest = read_manifest(&layout.manifest())?;
        let central_bank = |role, id| Expected {
            role,
            id,
            institution: CENTRAL_BANK_ID,
            algorithm: manifest.root_algorithm,
        };
        let root = read_expected_certificate(
            &layout.root().0,
            central_bank(Role::CentralBankRoot, CENTRAL_BANK_ID),
        )?;
        let settlement_paths = layout.settlement_signer();
        let settlement_expected = central_bank(Role::SettlementSigner, SETTLEMENT_SIGNER_ID);
        let mut cas = Vec::new();
        let mut own = None;
        for institution in &manifest.institutions {
            let id = institution.id.as_str();
            let expected = |role| Expected {
                role,
                id,
                institution: id,
                algorithm: institution.algorithm,
            };
            cas.push(read_expected_certificate(
                &layout.institution_ca(id).0,
                expected(Role::InstitutionCa),
            )?);
            if holder == KeyHolder::Institution(id) {
                own = Some(read_pair(
                    &layout.institution_signer(id),
                    expected(Role::InstitutionSigner),
                )?);
            }
        }
        let (settlement, signer) = match holder {
            KeyHolder::Settlement => {
                let pair = read_pair(&settlement_paths, settlement_expected)?;
                (pair.certificate().clone(), pair)
            }
            KeyHolder::Institution(id) => {
                let signer = own.ok_or_else(|| {
                    manifest_error(&layout.manifest(), format!("no institution {id}"))
                })?;
                let settlement =
                    read_expected_certificate(&settlement_paths.0, settlement_expected)?;
                (settlement, signer)
            }
        };
        let trust_store = trust_store_of(root, settlement, cas)
            .map_err(|e| StoreError::new(StoreErrorKind::Certificate, dir, e.to_string()))?;
        Ok(WorkerKeys {
            institutions: manifest.institutions.iter().map(|i| i.id.clone()).collect(),
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
        let wallets: Vec<(&String, &WalletKeys)> = self.wallets.iter().collect();
        parallel_map(
            &wallets,
            |(id, keys)| {
                for (role, certified) in [
                    (Role::Terminal, &keys.terminal),
                    (Role::SecureElement, &keys.secure_element),
                    (Role::Wallet, &keys.wallet),
                ] {
                    write_pair(&layout.wallet_key(&keys.institution, id, role), certified)?;
                }
                Ok(())
            },
            || StoreError::new(StoreErrorKind::Io, dir, "writer thread panicked"),
        )?;
        let manifest = toml::to_string(&self.manifest)
            .map_err(|e| manifest_error(&layout.manifest(), e.to_string()))?;
        create_file(&layout.manifest(), manifest.as_bytes(), PUBLIC_FILE_MODE)
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
                        &layout.wallet_key(&wallet.institution, &wallet.id, role),
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
