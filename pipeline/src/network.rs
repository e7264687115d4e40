//! A whole payment network in one place: the PKI, each institution's back-end and ledger with
//! its wallets, and the central bank's settlement — provisioned, then started on a bus.
//!
//! The demo, the end-to-end tests and the load test use it; a production deployment runs the
//! same stages one per process with `dcpipe worker`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use dcpipe_connectors::bus::{Bus, BusError, SubjectSpec};
use dcpipe_connectors::ledger::{
    LedgerError, LedgerOptions, LedgerUrl, SettlementConfig, WalletAccount, open_ledger,
    open_settlement,
};
use dcpipe_connectors::session::open_session_store;
use dcpipe_schemas::PartyRef;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::payment::{Institution, PaymentPolicy};
use crate::pki::{
    AlgorithmChoice, CertifiedKey, ChainVerifier, DemoPkiOptions, IssueError, PkiDirectory,
    PrivateKey, RevocationSet,
};
use crate::registry::{self, Build};
use crate::revocation::RevocationFollower;
use crate::runtime::{ConfigError, Health, MemberResult, RunnerConfig, Stage, spawn_stage};
use crate::settlement::{CentralBank, GRACE_MS_DEFAULT};
use crate::terminal::Terminal;
use crate::tier::{FEN_PER_CNY, TIER_2, TIER_4, Tier};
use crate::vehicle::backend::{RegistryFollower, RegistryView, VehicleInstitution, VehiclePolicy};

/// Every this many wallets, one is tier 2; the others are tier 4.
pub const TIER_2_EVERY: usize = 10;

/// Opening balance of a tier 4 wallet: 5,000 CNY.
pub const TIER_4_OPENING_FEN: i64 = 5_000 * FEN_PER_CNY;

/// Opening balance of a tier 2 wallet: 200,000 CNY.
pub const TIER_2_OPENING_FEN: i64 = 200_000 * FEN_PER_CNY;

/// Readings of one ledger's money before giving up on a consistent pair.
const MONEY_READ_ATTEMPTS: u32 = 100;

/// What to provision.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Operating institutions.
    pub institutions: usize,
    /// Wallets, all institutions together (spread round-robin).
    pub wallets: usize,
    /// Certificate algorithms.
    pub algorithm: AlgorithmChoice,
    /// Where the ledgers live.
    pub ledger: LedgerUrl,
    /// Ledger connection settings.
    pub ledger_options: LedgerOptions,
    /// Time and expiry limits of the payment stages.
    pub policy: PaymentPolicy,
    /// Settlement windows.
    pub settlement: SettlementConfig,
    /// Grace after a window's end before it closes.
    pub settlement_grace_ms: i64,
}

impl NetworkConfig {
    /// `institutions` institutions and `wallets` wallets with in-memory SQLite ledgers.
    pub fn in_memory(institutions: usize, wallets: usize) -> Self {
        NetworkConfig {
            institutions,
            wallets,
            algorithm: AlgorithmChoice::P256,
            ledger: LedgerUrl::SqliteMemory,
            ledger_options: LedgerOptions::default(),
            policy: PaymentPolicy::default(),
            settlement: SettlementConfig::default(),
            settlement_grace_ms: GRACE_MS_DEFAULT,
        }
    }
}

/// Why a network could not be provisioned or started.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The PKI could not be generated.
    #[error("PKI: {0}")]
    Pki(#[from] IssueError),
    /// A ledger could not be opened or provisioned.
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// A subject could not be created on the bus.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
}

/// A provisioned wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletInfo {
    /// Institution and wallet id.
    pub party: PartyRef,
    /// Its tier.
    pub tier: Tier,
    /// Its opening balance.
    pub opening_fen: i64,
}

/// A provisioned payment network.
#[derive(Debug)]
pub struct Network {
    /// Keys and certificates of everyone.
    pub pki: Arc<PkiDirectory>,
    /// The revocation set every verifier of this process consults.
    pub revocations: Arc<RevocationSet>,
    /// The chain verifier shared by this process's stages.
    pub verifier: Arc<ChainVerifier>,
    /// Each institution's back-end, by id.
    pub institutions: BTreeMap<String, Arc<Institution>>,
    /// The central bank's settlement service.
    pub central_bank: Arc<CentralBank>,
    /// Every wallet, in PKI order.
    pub wallets: Vec<WalletInfo>,
    /// What this process's stages report: members attached, ledgers and bus reachable.
    pub health: Arc<Health>,
    /// Each institution's vehicle back-end, once [`Network::enable_vehicles`] opened their
    /// session stores; empty otherwise (and the vehicle stages are not run).
    pub vehicles: BTreeMap<String, Arc<VehicleInstitution>>,
    /// The registry of service entities this process follows (used once vehicles are enabled).
    pub entity_registry: Arc<RegistryView>,
    wallet_index: HashMap<String, usize>,
    /// Sum of all balances once provisioned: the money the network must conserve.
    opening_total_fen: i64,
}

/// A copy of a certified key (keys are not `Clone`: they are copied deliberately, through
/// their PKCS#8 encoding).
pub fn copy_certified_key(key: &CertifiedKey) -> Result<CertifiedKey, IssueError> {
    let pkcs8 = key
        .key()
        .to_pkcs8_der()
        .map_err(|e| IssueError::new(crate::pki::IssueErrorKind::Key, e.to_string()))?;
    let private = PrivateKey::from_pkcs8_der(&pkcs8)
        .map_err(|e| IssueError::new(crate::pki::IssueErrorKind::Key, e.to_string()))?;
    CertifiedKey::new(key.certificate().clone(), private)
}

impl Network {
    /// Generates the PKI, opens every ledger and provisions the wallets.
    pub async fn provision(
        config: &NetworkConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, NetworkError> {
        let now_ms = clock.now_ms();
        let pki = Arc::new(PkiDirectory::generate(&DemoPkiOptions::new(
            config.institutions,
            config.wallets,
            config.algorithm,
            now_ms,
        ))?);
        Self::from_pki(pki, config, clock).await
    }

    /// Opens every ledger of an existing PKI and provisions its wallets.
    pub async fn from_pki(
        pki: Arc<PkiDirectory>,
        config: &NetworkConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, NetworkError> {
        let revocations = Arc::new(RevocationSet::new());
        let verifier = Arc::new(ChainVerifier::new(
            Arc::clone(pki.trust_store()),
            Arc::clone(&revocations),
        ));
        let mut wallets = Vec::new();
        for (index, (wallet_id, keys)) in pki.wallets().enumerate() {
            let (tier, opening_fen) = if index % TIER_2_EVERY == TIER_2_EVERY - 1 {
                (TIER_2, TIER_2_OPENING_FEN)
            } else {
                (TIER_4, TIER_4_OPENING_FEN)
            };
            wallets.push(WalletInfo {
                party: PartyRef {
                    institution_id: keys.institution.clone(),
                    wallet_id: wallet_id.to_owned(),
                },
                tier,
                opening_fen,
            });
        }
        let mut institutions = BTreeMap::new();
        let mut opening_total_fen = 0;
        for (id, keys) in pki.institutions() {
            let ledger = open_ledger(&config.ledger, id, &config.ledger_options).await?;
            let accounts: Vec<WalletAccount> = wallets
                .iter()
                .filter(|w| w.party.institution_id == id)
                .map(|w| WalletAccount {
                    wallet_id: w.party.wallet_id.clone(),
                    institution_id: id.to_owned(),
                    tier: w.tier.number,
                    balance_fen: w.opening_fen,
                    limits: w.tier.limits,
                    locked: false,
                })
                .collect();
            for chunk in accounts.chunks(dcpipe_connectors::ledger::BATCH_ITEMS_MAX) {
                ledger.open_wallets(chunk).await?;
            }
            // Money enters only by issuance: what every opening of this ledger issued, the
            // earlier ones of a ledger that already existed included.
            opening_total_fen += ledger.issued_total_fen().await?;
            let institution = Institution::new(
                id,
                copy_certified_key(&keys.signer)?,
                Arc::clone(&verifier),
                ledger,
                config.policy.clone(),
                Arc::clone(&clock),
            );
            institutions.insert(id.to_owned(), Arc::new(institution));
        }
        let store =
            open_settlement(&config.ledger, config.settlement, &config.ledger_options).await?;
        let central_bank = Arc::new(CentralBank {
            signer: copy_certified_key(pki.settlement_signer())?,
            verifier: Arc::clone(&verifier),
            store,
            clock,
            grace_ms: config.settlement_grace_ms,
        });
        let wallet_index = wallets
            .iter()
            .enumerate()
            .map(|(i, w)| (w.party.wallet_id.clone(), i))
            .collect();
        Ok(Network {
            pki,
            revocations,
            verifier,
            institutions,
            central_bank,
            wallets,
            health: Arc::new(Health::new()),
            vehicles: BTreeMap::new(),
            entity_registry: Arc::new(RegistryView::new()),
            wallet_index,
            opening_total_fen,
        })
    }

    /// Opens each institution's session store beside its ledger (`ledger`, `options`: as the
    /// network was provisioned with) and runs the vehicle flow's stages from then on.
    pub async fn enable_vehicles(
        &mut self,
        ledger: &LedgerUrl,
        options: &LedgerOptions,
        policy: VehiclePolicy,
    ) -> Result<(), NetworkError> {
        for (id, institution) in &self.institutions {
            let store = open_session_store(ledger, id, options).await?;
            self.vehicles.insert(
                id.clone(),
                Arc::new(VehicleInstitution {
                    institution: Arc::clone(institution),
                    store,
                    registry: Arc::clone(&self.entity_registry),
                    policy,
                }),
            );
        }
        Ok(())
    }

    /// Whether a stage built this way runs in this network.
    fn runs(&self, build: &Build) -> bool {
        !matches!(build, Build::Vehicle(_)) || !self.vehicles.is_empty()
    }

    /// Every subject the network uses: what each registered stage of each owner consumes and
    /// publishes, the stages' dead-letter subjects and the revocations every process follows
    /// (and, with vehicles, the registry of service entities).
    pub fn subjects(&self) -> BTreeSet<String> {
        let institutions: Vec<String> = self.institutions.keys().cloned().collect();
        registry::subjects_of(
            registry::stages()
                .into_iter()
                .filter(|d| self.runs(&d.build)),
            &institutions,
        )
    }

    /// Every subject the network uses ([`Network::subjects`]), created on `bus` (streams or
    /// topics) if missing.
    pub async fn ensure_subjects(&self, bus: &dyn Bus, partitions: u32) -> Result<(), BusError> {
        for name in self.subjects() {
            bus.ensure_subject(&SubjectSpec::new(name).with_partitions(partitions))
                .await?;
        }
        Ok(())
    }

    /// Every registered stage: one per institution for the institutions' stages, one for the
    /// central bank's.
    pub fn stages(&self) -> Vec<Arc<dyn Stage>> {
        let mut stages: Vec<Arc<dyn Stage>> = Vec::new();
        for descriptor in registry::stages() {
            match descriptor.build {
                Build::Institution(build) => {
                    stages.extend(self.institutions.values().map(|i| build(Arc::clone(i))));
                }
                Build::CentralBank(build) => stages.push(build(Arc::clone(&self.central_bank))),
                Build::Vehicle(build) => {
                    stages.extend(self.vehicles.values().map(|v| build(Arc::clone(v))));
                }
            }
        }
        stages
    }

    /// Starts every stage, and a follower of revocations, on `bus`; they stop when `shutdown`
    /// is cancelled (a stage member also alone, on a fatal failure, which it returns). The
    /// stages report to [`Network::health`]. Refused before anything starts if `runner` is
    /// outside its limits.
    pub fn spawn(
        &self,
        bus: &Arc<dyn Bus>,
        runner: &RunnerConfig,
        shutdown: &CancellationToken,
    ) -> Result<Vec<JoinHandle<MemberResult>>, ConfigError> {
        runner.validate()?;
        let mut handles = Vec::new();
        for stage in self.stages() {
            handles.extend(spawn_stage(
                Arc::clone(bus),
                stage,
                runner,
                &self.health,
                shutdown,
            )?);
        }
        let follower =
            RevocationFollower::new(Arc::clone(&self.verifier), Arc::clone(&self.revocations));
        let (bus_for_follower, follower_shutdown) = (Arc::clone(bus), shutdown.clone());
        handles.push(tokio::spawn(async move {
            follower.run(bus_for_follower, follower_shutdown).await;
            Ok(())
        }));
        if !self.vehicles.is_empty() {
            let follower = RegistryFollower::new(
                Arc::clone(&self.verifier),
                Arc::clone(&self.entity_registry),
            );
            let (bus_for_follower, follower_shutdown) = (Arc::clone(bus), shutdown.clone());
            handles.push(tokio::spawn(async move {
                follower.run(bus_for_follower, follower_shutdown).await;
                Ok(())
            }));
        }
        Ok(handles)
    }

    /// The terminal of a wallet.
    pub fn terminal(&self, wallet_id: &str) -> Option<Terminal<'_>> {
        let info = &self.wallets[*self.wallet_index.get(wallet_id)?];
        let keys = self.pki.wallet(wallet_id)?;
        Some(Terminal {
            wallet: &info.party,
            user: &keys.terminal,
            secure_element: &keys.secure_element,
            password_free_limit_fen: info.tier.limits.password_free_limit_fen,
        })
    }

    /// Money issued to the network's wallets (every opening recorded in the ledgers when it
    /// was provisioned): what the balances and the money in flight must add up to.
    pub fn opening_total_fen(&self) -> i64 {
        self.opening_total_fen
    }

    /// The money in every ledger now.
    pub async fn money(&self) -> Result<MoneyReport, LedgerError> {
        let mut report = MoneyReport {
            opening_fen: self.opening_total_fen(),
            ..MoneyReport::default()
        };
        for institution in self.institutions.values() {
            let ledger = &institution.ledger;
            // Balances and money in flight are two reads; while stages run, a credit finalized
            // between them would be in neither. Bracketing the balance between two equal
            // readings of what is in flight makes the pair consistent.
            // Under a steady load the readings may never agree: after MONEY_READ_ATTEMPTS the
            // last one is returned (and judged by its caller).
            let mut attempt = 0;
            let (balance, pending) = loop {
                attempt += 1;
                let before = ledger.pending_totals().await?;
                let balance = ledger.total_balance_fen().await?;
                let after = ledger.pending_totals().await?;
                if before == after || attempt == MONEY_READ_ATTEMPTS {
                    break (balance, after);
                }
            };
            let offline = ledger.offline().offline_totals().await?;
            report.balance_fen += balance;
            report.loss_fen += offline.loss_account_fen;
            report.purses_fen += offline.purse_accounts_fen;
            report.held_fen += pending.held_fen;
            report.pending_credit_fen += pending.pending_credit_fen;
            report
                .by_institution
                .insert(institution.id.clone(), balance);
            ledger.verify_integrity().await?;
        }
        Ok(report)
    }
}

/// Where the money is, across all ledgers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoneyReport {
    /// What the wallets were opened with.
    pub opening_fen: i64,
    /// Sum of balances (holds included, pending credits not; offline purse accounts
    /// included).
    pub balance_fen: i64,
    /// Of which in offline purse accounts.
    pub purses_fen: i64,
    /// The institutions' loss accounts for offline double spending (0 or below).
    pub loss_fen: i64,
    /// Reserved, not yet decided.
    pub held_fen: i64,
    /// Credited, not yet final.
    pub pending_credit_fen: i64,
    /// Balance per institution.
    pub by_institution: BTreeMap<String, i64>,
}

impl MoneyReport {
    /// Money is conserved and nothing is in flight: the balances and the loss accounts sum to
    /// the opening total.
    pub fn is_settled_and_conserved(&self) -> bool {
        self.balance_fen + self.loss_fen == self.opening_fen
            && self.loss_fen <= 0
            && self.held_fen == 0
            && self.pending_credit_fen == 0
    }
}
