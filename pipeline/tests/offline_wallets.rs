//! Flow 2 end to end without a bus: hard wallets pay each other offline, reconnect and upload
//! their key sets to the institutions' platform side (`OfflineNetwork`, the reference model of
//! the stages), which verifies, clears each payment once, catches double spending, answers with
//! signed results and delivers remote commands. Real keys and certificates throughout.

use std::sync::{Arc, LazyLock};

use dcpipe_pipeline::clock::system_now_ms;
use dcpipe_pipeline::pki::{
    AlgorithmChoice, ChainVerifier, DemoPkiOptions, PkiDirectory, RevocationSet, Role,
    SpecialCertificate, SubjectSpec,
};
use dcpipe_pipeline::protocol::{CHAIN_START, offline_payment_bytes};
use dcpipe_pipeline::reason::Reason;
use dcpipe_pipeline::wallet::limits::{HOUR_MS, PAID_AT_SKEW_MS_MAX_DEFAULT};
use dcpipe_pipeline::wallet::{
    Command, CommandApplied, HardWallet, OFFLINE_TIER_4, OfflineNetwork, PayRefusal,
    ReceiveRefusal, Received, SatelliteFix, SyncOutcome, SyncPolicy, SyncResultError,
    WalletProvisioning, copied_key, key_set_input, sign_command,
};
use dcpipe_schemas::{
    CommandId, Frame, OfflinePayment, PartyRef, SyncStatus, WalletAction, WalletKeySet,
};

const DAY_MS: i64 = 24 * HOUR_MS;
const PURSE_FEN: i64 = 50_000;

/// One PKI for the whole binary: 2 institutions, 8 wallets (4 each), P-256 and SM2 mixed.
static PKI: LazyLock<PkiDirectory> = LazyLock::new(|| {
    PkiDirectory::generate(&DemoPkiOptions::new(
        2,
        8,
        AlgorithmChoice::Mixed,
        system_now_ms(),
    ))
    .expect("PKI")
});

fn anchors() -> Vec<Vec<u8>> {
    let mut anchors = vec![PKI.root().certificate().der().to_vec()];
    for (_, keys) in PKI.institutions() {
        anchors.push(keys.ca.certificate().der().to_vec());
    }
    anchors
}

fn verifier(revocations: Arc<RevocationSet>) -> Arc<ChainVerifier> {
    Arc::new(ChainVerifier::new(
        Arc::clone(PKI.trust_store()),
        revocations,
    ))
}

struct World {
    net: OfflineNetwork,
    /// The institutions' verifier (their trust store and revocation set).
    verifier: Arc<ChainVerifier>,
    revocations: Arc<RevocationSet>,
    t0: i64,
}

fn party(index: usize) -> PartyRef {
    let (id, keys) = PKI.wallets().nth(index).expect("wallet");
    PartyRef {
        institution_id: keys.institution.clone(),
        wallet_id: id.to_owned(),
    }
}

fn fix(at_ms: i64) -> SatelliteFix {
    SatelliteFix { at_ms }
}

impl World {
    fn new() -> World {
        let revocations = Arc::new(RevocationSet::new());
        let verifier = verifier(Arc::clone(&revocations));
        let signers = PKI.institutions().map(|(id, keys)| {
            (
                id.to_owned(),
                Arc::new(copied_key(&keys.signer).expect("copy")),
            )
        });
        World {
            net: OfflineNetwork::new(
                Arc::clone(&verifier),
                anchors(),
                signers,
                SyncPolicy::default(),
            ),
            verifier,
            revocations,
            // Certificates are valid from a day before the PKI was made.
            t0: system_now_ms(),
        }
    }

    /// Wallet `index`, opened for offline use at t0 with a purse of [`PURSE_FEN`].
    fn wallet(&mut self, index: usize) -> HardWallet {
        let party = party(index);
        let keys = PKI.wallet(&party.wallet_id).expect("keys");
        let mut wallet = HardWallet::provision(WalletProvisioning {
            party: party.clone(),
            tier: 4,
            key: copied_key(&keys.wallet).expect("copy"),
            key_version: 1,
            limits: OFFLINE_TIER_4,
            trust_anchors: anchors(),
            last_sync_at_ms: self.t0,
            counter: 0,
            chain_head: CHAIN_START,
            purse_fen: 0,
        })
        .expect("provisioned");
        let public_key = keys
            .wallet
            .certificate()
            .public_key()
            .to_spki_der()
            .expect("spki");
        self.net
            .open_wallet(&party, 1, &public_key, self.t0, OFFLINE_TIER_4);
        assert!(self.net.fund_purse(&party, PURSE_FEN));
        wallet.fund_purse(PURSE_FEN).expect("purse");
        wallet
    }

    /// Wallet reconnects at `at_ms`: makes (or resends) its key set, the platform answers,
    /// the wallet applies the answer and the commands that follow.
    fn sync(&mut self, wallet: &mut HardWallet, at_ms: i64) -> SyncOutcome {
        let upload = wallet.key_set(fix(at_ms)).expect("key set");
        let outcome = self
            .net
            .sync(
                &wallet.party().institution_id.clone(),
                &upload.key_set,
                at_ms,
            )
            .expect("answered");
        wallet
            .apply_sync_result(&outcome.result, &self.verifier)
            .expect("result applies");
        for command in &outcome.commands {
            wallet
                .apply_command(command, &self.verifier)
                .expect("command applies");
        }
        outcome
    }

    fn conserved(&self) {
        let totals = self.net.totals();
        assert!(totals.conserved(), "{totals:?}");
    }
}

fn receive(payee: &mut HardWallet, frame: &Frame, at_ms: i64) -> Result<Received, ReceiveRefusal> {
    payee.receive(frame.as_bytes(), fix(at_ms), PAID_AT_SKEW_MS_MAX_DEFAULT)
}

fn refused_with(result: Result<Received, ReceiveRefusal>, reason: Reason) {
    match result {
        Err(ReceiveRefusal::Refused(rejected)) => assert_eq!(rejected.reason, reason, "{rejected}"),
        other => panic!("expected {reason}, got {other:?}"),
    }
}

fn rejected_with(outcome: &SyncOutcome, reason: Reason) {
    assert_eq!(
        outcome.result.status,
        SyncStatus::Rejected,
        "{:?}",
        outcome.result
    );
    assert_eq!(
        outcome.result.reason_code.as_deref(),
        Some(reason.as_str()),
        "{:?}",
        outcome.result
    );
}

/// Signs a changed key set again with the wallet's key, as a tampered wallet would.
fn resigned(wallet: &HardWallet, mut set: WalletKeySet) -> WalletKeySet {
    set.signature = wallet
        .key()
        .key()
        .sign(&key_set_input(&set))
        .expect("signs");
    set
}

// ---------------------------------------------------------------------------------------------
// Paying and receiving offline
// ---------------------------------------------------------------------------------------------

#[test]
fn an_offline_payment_clears_once_whoever_uploads_it_first() {
    for payer_first in [true, false] {
        let mut world = World::new();
        let (mut a, mut b) = (world.wallet(0), world.wallet(1));
        let t = world.t0 + HOUR_MS;
        let frame = a.pay(b.party(), 12_300, fix(t)).expect("pays");
        assert_eq!(a.purse_fen(), PURSE_FEN - 12_300);
        assert!(matches!(
            receive(&mut b, &frame, t + 10),
            Ok(Received::New {
                amount_fen: 12_300,
                ..
            })
        ));
        assert_eq!(receive(&mut b, &frame, t + 20), Ok(Received::AlreadyHeld));
        let order: [&mut HardWallet; 2] = if payer_first {
            [&mut a, &mut b]
        } else {
            [&mut b, &mut a]
        };
        let [first, second] = order;
        let one = world.sync(first, t + HOUR_MS);
        let two = world.sync(second, t + 2 * HOUR_MS);
        assert_eq!(one.result.status, SyncStatus::Accepted);
        assert_eq!(two.result.status, SyncStatus::Accepted);
        assert_eq!(
            (one.cleared.len(), two.cleared.len()),
            (1, 0),
            "payer first: {payer_first}"
        );
        assert_eq!(world.net.credited(b.party()), 12_300);
        assert_eq!(
            world.net.record(a.party()).expect("record").purse_fen,
            PURSE_FEN - 12_300
        );
        assert_eq!(a.purse_fen(), PURSE_FEN - 12_300);
        assert_eq!(
            (
                a.counter(),
                world.net.record(a.party()).expect("record").counter
            ),
            (1, 1)
        );
        assert_eq!(a.received_pending() + b.received_pending(), 0);
        assert_eq!(a.made_since_sync(), (0, 0));
        world.conserved();
    }
}

#[test]
fn a_key_set_delivered_again_gets_the_same_answer_and_changes_nothing() {
    let mut world = World::new();
    let (mut a, b) = (world.wallet(0), world.wallet(1));
    let t = world.t0 + HOUR_MS;
    a.pay(b.party(), 5_000, fix(t)).expect("pays");
    let upload = a.key_set(fix(t + HOUR_MS)).expect("set");
    let again = a.key_set(fix(t + 2 * HOUR_MS)).expect("resent");
    assert_eq!(
        upload.frame, again.frame,
        "the waiting key set is resent byte for byte"
    );
    let institution = a.party().institution_id.clone();
    let first = world
        .net
        .sync(&institution, &upload.key_set, t + HOUR_MS)
        .expect("first");
    let second = world
        .net
        .sync(&institution, &upload.key_set, t + HOUR_MS + 50)
        .expect("again");
    assert!(second.duplicate && second.cleared.is_empty());
    assert_eq!(first.result, second.result);
    assert_eq!(world.net.credited(b.party()), 5_000);
    world.conserved();
}

#[test]
fn the_wallet_enforces_its_offline_limits() {
    let mut world = World::new();
    let (mut a, b, c) = (world.wallet(0), world.wallet(1), world.wallet(2));
    let t = world.t0 + HOUR_MS;
    assert_eq!(
        a.pay(
            b.party(),
            OFFLINE_TIER_4.single_payment_limit_fen + 1,
            fix(t)
        ),
        Err(PayRefusal::SinglePaymentLimit {
            limit_fen: OFFLINE_TIER_4.single_payment_limit_fen
        })
    );
    assert_eq!(
        a.pay(b.party(), 0, fix(t)),
        Err(PayRefusal::InvalidAmount(0))
    );
    let own = a.party().clone();
    assert_eq!(a.pay(&own, 100, fix(t)), Err(PayRefusal::SelfPayment));
    a.pay(b.party(), 40_000, fix(t)).expect("pays");
    assert_eq!(
        a.pay(c.party(), 20_000, fix(t + 1)),
        Err(PayRefusal::PurseInsufficient { purse_fen: 10_000 })
    );
    let late = world.t0 + OFFLINE_TIER_4.offline_duration_ms_max + 1;
    assert!(matches!(
        a.pay(c.party(), 100, fix(late)),
        Err(PayRefusal::OfflineTooLong { .. })
    ));
    assert!(a.needs_sync(fix(late)));
    assert_eq!(
        a.pay(c.party(), 100, fix(world.t0 - 1)),
        Err(PayRefusal::TimeBeforeLastSync)
    );
    a.key_set(fix(t + 2)).expect("set");
    assert_eq!(
        a.pay(c.party(), 100, fix(t + 3)),
        Err(PayRefusal::Synchronizing)
    );
}

#[test]
fn the_count_and_cumulative_limits_hold_between_two_syncs() {
    let mut world = World::new();
    let (mut a, b) = (world.wallet(0), world.wallet(1));
    a.fund_purse(OFFLINE_TIER_4.purse_limit_fen - PURSE_FEN)
        .expect("purse");
    let t = world.t0 + HOUR_MS;
    for k in 0..OFFLINE_TIER_4.payments_per_sync_max {
        a.pay(b.party(), 100, fix(t + k)).expect("pays");
    }
    assert_eq!(
        a.pay(b.party(), 100, fix(t + 100)),
        Err(PayRefusal::PaymentCountLimit {
            limit: OFFLINE_TIER_4.payments_per_sync_max
        })
    );
    let mut d = world.wallet(3);
    d.fund_purse(OFFLINE_TIER_4.purse_limit_fen - PURSE_FEN)
        .expect("purse");
    d.pay(b.party(), 50_000, fix(t)).expect("pays");
    d.pay(b.party(), 50_000, fix(t + 1)).expect("pays");
    assert_eq!(
        d.pay(b.party(), 1, fix(t + 2)),
        Err(PayRefusal::CumulativeLimit {
            paid_fen: 100_000,
            limit_fen: OFFLINE_TIER_4.cumulative_limit_fen
        })
    );
}

#[test]
fn the_payee_wallet_refuses_what_it_can_check_offline() {
    let mut world = World::new();
    let (mut a, mut b, mut c) = (world.wallet(0), world.wallet(1), world.wallet(2));
    let t = world.t0 + HOUR_MS;
    let to_b = a.pay(b.party(), 1_000, fix(t)).expect("pays");
    refused_with(receive(&mut c, &to_b, t), Reason::OfflineWrongPayee);
    refused_with(
        receive(&mut b, &to_b, t + 11 * 60_000),
        Reason::OfflineTimeInvalid,
    );
    // A forged signature.
    let mut forged: OfflinePayment = dcpipe_schemas::decode(to_b.as_bytes()).expect("decodes");
    forged.amount_fen = 9_000;
    let forged = Frame(dcpipe_schemas::encode(&forged).expect("encodes"));
    refused_with(receive(&mut b, &forged, t), Reason::OfflineSignature);
    // A certificate no trust anchor issued.
    let rogue = PKI
        .issue_special(
            SpecialCertificate::UnknownIssuer,
            &SubjectSpec {
                role: Role::Wallet,
                id: &a.party().wallet_id,
                institution: &a.party().institution_id,
                algorithm: a.key().certificate().algorithm(),
            },
            t,
            &RevocationSet::new(),
        )
        .expect("rogue");
    let mut rogue_payment: OfflinePayment =
        dcpipe_schemas::decode(to_b.as_bytes()).expect("decodes");
    rogue_payment.payer_certificate = rogue.certificate().der().to_vec();
    rogue_payment.signature = rogue
        .key()
        .sign(&offline_payment_bytes(&rogue_payment))
        .expect("signs");
    let rogue_frame = Frame(dcpipe_schemas::encode(&rogue_payment).expect("encodes"));
    refused_with(
        receive(&mut b, &rogue_frame, t),
        Reason::Certificate(dcpipe_pipeline::pki::CertErrorKind::UnknownIssuer),
    );
    refused_with(
        b.receive(b"not a frame", fix(t), PAID_AT_SKEW_MS_MAX_DEFAULT),
        Reason::Schema(dcpipe_schemas::CodecErrorKind::BadMagic),
    );
    // A double spend presented to the same payee: the payer rewinds its secure element.
    assert!(matches!(
        receive(&mut b, &to_b, t),
        Ok(Received::New { .. })
    ));
    a.rewind_for_double_spending(0, CHAIN_START, PURSE_FEN);
    let again = a
        .pay(b.party(), 2_000, fix(t + 5))
        .expect("pays again under counter 1");
    refused_with(receive(&mut b, &again, t + 5), Reason::OfflineDoubleSpend);
    // A payer on the blacklist.
    let issued = world.t0 + 2 * HOUR_MS;
    world
        .net
        .issue_command(
            c.party(),
            Command::Blacklist(vec![a.party().wallet_id.clone()]),
            issued,
        )
        .expect("issued");
    world.sync(&mut c, issued + 1);
    assert!(c.blacklist().contains(&a.party().wallet_id));
    let to_c = a.pay(c.party(), 100, fix(issued + 2));
    let to_c = to_c.expect("a still pays");
    refused_with(
        receive(&mut c, &to_c, issued + 2),
        Reason::OfflinePayerBlacklisted,
    );
    assert_eq!(a.pay(c.party(), 1, fix(issued + 3)).map(|_| ()), Ok(()));
    // A full wallet must sync first.
    let mut d = world.wallet(4);
    d.fund_purse(OFFLINE_TIER_4.purse_limit_fen - PURSE_FEN)
        .expect("purse");
    let mut e = world.wallet(5);
    e.fund_purse(OFFLINE_TIER_4.purse_limit_fen - PURSE_FEN)
        .expect("purse");
    for k in 0..16 {
        for payer in [&mut d, &mut e] {
            let frame = payer.pay(b.party(), 10, fix(t + k)).expect("pays");
            let _ = receive(&mut b, &frame, t + k);
        }
    }
    let frame = d.pay(b.party(), 10, fix(t + 20)).expect("pays");
    assert!(matches!(
        receive(&mut b, &frame, t + 20),
        Err(ReceiveRefusal::Full { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Key sets the platform refuses
// ---------------------------------------------------------------------------------------------

fn offline_with_one_payment(world: &mut World) -> (HardWallet, WalletKeySet, i64) {
    let (mut a, b) = (world.wallet(0), world.wallet(1));
    let t = world.t0 + HOUR_MS;
    a.pay(b.party(), 2_500, fix(t)).expect("pays");
    a.pay(b.party(), 1_500, fix(t + 1)).expect("pays");
    let at = t + HOUR_MS;
    let set = a.key_set(fix(at)).expect("set").key_set;
    (a, set, at)
}

fn submit(world: &mut World, set: &WalletKeySet, at_ms: i64) -> SyncOutcome {
    world
        .net
        .sync(&set.institution_id.clone(), set, at_ms)
        .expect("answered")
}

#[test]
fn a_forged_key_set_is_refused() {
    let mut world = World::new();
    let (_, mut set, at) = offline_with_one_payment(&mut world);
    set.purse_fen += 10_000;
    rejected_with(&submit(&mut world, &set, at), Reason::WalletSignature);
    let other = world.wallet(2);
    let set = resigned(&other, set);
    rejected_with(&submit(&mut world, &set, at), Reason::WalletSignature);
    let truncated = dcpipe_schemas::decode::<WalletKeySet>(&[0, 0, 0, 0, 24, 2]);
    assert!(truncated.is_err(), "a truncated key set does not decode");
    world.conserved();
}

#[test]
fn a_satellite_moment_far_from_the_platform_clock_is_refused() {
    for offset_ms in [-3 * 60_000, 3 * 60_000] {
        let mut world = World::new();
        let (_, set, at) = offline_with_one_payment(&mut world);
        rejected_with(
            &submit(&mut world, &set, at + offset_ms),
            Reason::WalletSatelliteTimeSkew,
        );
    }
}

#[test]
fn a_replayed_key_set_is_refused() {
    let mut world = World::new();
    let (mut a, set, at) = offline_with_one_payment(&mut world);
    let first = submit(&mut world, &set, at);
    a.apply_sync_result(&first.result, &world.verifier)
        .expect("applies");
    let b = party(1);
    a.pay(&b, 700, fix(at + HOUR_MS)).expect("pays");
    world.sync(&mut a, at + 2 * HOUR_MS);
    // The first key set again, with a fresh satellite moment it cannot change unsigned: its
    // moment is now far behind, so re-sign as an attacker holding an old upload cannot; the
    // old bytes as they were are a replay of a superseded sync.
    let replay = submit(&mut world, &set, at);
    rejected_with(&replay, Reason::WalletKeySetReplayed);
    assert_eq!(world.net.credited(&b), 4_700);
    world.conserved();
}

#[test]
fn a_duration_that_does_not_match_the_recorded_sync_is_refused() {
    let mut world = World::new();
    let (a, set, at) = offline_with_one_payment(&mut world);
    let mut longer = set.clone();
    longer.offline_duration_ms += 1;
    rejected_with(
        &submit(&mut world, &resigned(&a, longer), at),
        Reason::WalletDurationInconsistent,
    );
    let mut later = set;
    later.last_sync_at_ms += 1;
    later.offline_duration_ms -= 1;
    rejected_with(
        &submit(&mut world, &resigned(&a, later), at),
        Reason::WalletDurationInconsistent,
    );
}

#[test]
fn a_broken_chain_a_wrong_summary_and_foreign_records_are_refused() {
    let mut world = World::new();
    let (a, set, at) = offline_with_one_payment(&mut world);
    let mut swapped = set.clone();
    swapped.payments.swap(0, 1);
    rejected_with(
        &submit(&mut world, &resigned(&a, swapped), at),
        Reason::WalletChainBroken,
    );
    let mut dropped = set.clone();
    dropped.payments.remove(0);
    rejected_with(
        &submit(&mut world, &resigned(&a, dropped), at),
        Reason::WalletChainBroken,
    );
    let mut summary = set.clone();
    summary.offline_payments.total_fen -= 1;
    rejected_with(
        &submit(&mut world, &resigned(&a, summary), at),
        Reason::WalletSummaryMismatch,
    );
    let mut malformed = set.clone();
    malformed.payments[1] = Frame(vec![0, 0, 0, 0, 25]);
    rejected_with(
        &submit(&mut world, &resigned(&a, malformed), at),
        Reason::WalletRecordMalformed,
    );
    // Another wallet's payment among its own.
    let (mut c, d) = (world.wallet(2), world.wallet(3));
    let foreign = c.pay(d.party(), 300, fix(at - 10)).expect("pays");
    let mut with_foreign = set.clone();
    with_foreign.payments.push(foreign);
    rejected_with(
        &submit(&mut world, &resigned(&a, with_foreign), at),
        Reason::WalletRecordForeign,
    );
    // A payment naming this wallet but signed with another wallet's key.
    let mut stolen: OfflinePayment =
        dcpipe_schemas::decode(set.payments[1].as_bytes()).expect("decodes");
    stolen.counter = 3;
    stolen.payer_certificate = c.key().certificate().der().to_vec();
    stolen.signature = c
        .key()
        .key()
        .sign(&offline_payment_bytes(&stolen))
        .expect("signs");
    let mut with_stolen = set.clone();
    with_stolen
        .payments
        .push(Frame(dcpipe_schemas::encode(&stolen).expect("encodes")));
    rejected_with(
        &submit(&mut world, &resigned(&a, with_stolen), at),
        Reason::WalletRecordForeign,
    );
    // The genuine set still goes through afterwards: refusals changed nothing.
    assert_eq!(
        submit(&mut world, &set, at).result.status,
        SyncStatus::Accepted
    );
    world.conserved();
}

#[test]
fn key_versions_never_go_down_and_a_rotation_raises_them() {
    let mut world = World::new();
    let (mut a, b) = (world.wallet(0), world.wallet(1));
    let back = world.t0 + 8 * DAY_MS;
    // Offline more than 7 days: the platform asks for a new key.
    let outcome = world.sync(&mut a, back);
    assert!(outcome.result.actions.contains(&WalletAction::KeyRotation));
    assert!(outcome.result.actions.contains(&WalletAction::ClockResync));
    assert!(a.rotation_due());
    let old_key = copied_key(a.key()).expect("copy");
    let new_key = PKI
        .issue(
            &SubjectSpec {
                role: Role::Wallet,
                id: &a.party().wallet_id,
                institution: &a.party().institution_id,
                algorithm: a.key().certificate().algorithm(),
            },
            world.t0 - HOUR_MS,
            world.t0 + 365 * DAY_MS,
        )
        .expect("new key");
    a.rotate_key(new_key).expect("rotates");
    assert_eq!(a.key_version(), 2);
    a.pay(b.party(), 100, fix(back + HOUR_MS))
        .expect("pays with the new key");
    let outcome = world.sync(&mut a, back + 2 * HOUR_MS);
    assert_eq!(outcome.result.status, SyncStatus::Accepted);
    assert_eq!(world.net.record(a.party()).expect("record").key_version, 2);
    // The old key under the old version, now refused.
    let mut old = a.key_set(fix(back + 3 * HOUR_MS)).expect("set").key_set;
    old.key_version = 1;
    old.certificate = old_key.certificate().der().to_vec();
    old.public_key = old_key
        .certificate()
        .public_key()
        .to_spki_der()
        .expect("spki");
    old.signature = old_key.key().sign(&key_set_input(&old)).expect("signs");
    rejected_with(
        &submit(&mut world, &old, back + 3 * HOUR_MS),
        Reason::WalletKeyVersionLowered,
    );
    // The old key claiming the new version.
    old.key_version = 2;
    old.signature = old_key.key().sign(&key_set_input(&old)).expect("signs");
    rejected_with(
        &submit(&mut world, &old, back + 3 * HOUR_MS),
        Reason::WalletKeyUnknown,
    );
}

#[test]
fn keys_sets_of_revoked_unknown_or_misaddressed_wallets_are_refused() {
    let mut world = World::new();
    let (a, set, at) = offline_with_one_payment(&mut world);
    // For another institution: nobody here can answer it.
    let other = PKI
        .institutions()
        .map(|(id, _)| id.to_owned())
        .find(|id| *id != a.party().institution_id)
        .expect("two institutions");
    let outcome = world.net.sync(&other, &set, at).expect("handled");
    assert_eq!(
        outcome.dead_letter.map(|r| r.reason),
        Some(Reason::WalletWrongInstitution)
    );
    // A wallet its institution never opened for offline use.
    let stranger = {
        let party = party(6);
        let keys = PKI.wallet(&party.wallet_id).expect("keys");
        HardWallet::provision(WalletProvisioning {
            party,
            tier: 4,
            key: copied_key(&keys.wallet).expect("copy"),
            key_version: 1,
            limits: OFFLINE_TIER_4,
            trust_anchors: anchors(),
            last_sync_at_ms: world.t0,
            counter: 0,
            chain_head: CHAIN_START,
            purse_fen: 0,
        })
        .expect("provisioned")
    };
    let mut stranger = stranger;
    let unknown = stranger.key_set(fix(at)).expect("set").key_set;
    rejected_with(&submit(&mut world, &unknown, at), Reason::WalletUnknown);
    // A revoked wallet certificate.
    let issuer = PKI
        .institution(&a.party().institution_id)
        .expect("institution");
    world
        .revocations
        .revoke_certificate(a.key().certificate(), issuer.ca.certificate())
        .expect("revoked");
    rejected_with(
        &submit(&mut world, &set, at),
        Reason::Certificate(dcpipe_pipeline::pki::CertErrorKind::Revoked),
    );
}

// ---------------------------------------------------------------------------------------------
// Double spending
// ---------------------------------------------------------------------------------------------

/// A tampered secure element pays 30,000 to B under counter 1, rewinds and pays 30,000 to C
/// under counter 1 again, from a purse of 50,000. Both payees are credited in full; 10,000
/// comes from the loss account of the payer's institution; the payer is locked and blacklisted
/// everywhere; money is conserved.
#[test]
fn a_double_spender_is_caught_locked_and_blacklisted_and_its_payees_are_paid() {
    let mut world = World::new();
    let (mut a, mut b, mut c, mut d) = (
        world.wallet(0),
        world.wallet(1),
        world.wallet(2),
        world.wallet(3),
    );
    let t = world.t0 + HOUR_MS;
    let to_b = a.pay(b.party(), 30_000, fix(t)).expect("pays");
    a.rewind_for_double_spending(0, CHAIN_START, PURSE_FEN);
    let to_c = a
        .pay(c.party(), 30_000, fix(t + 60_000))
        .expect("pays again");
    assert!(matches!(
        receive(&mut b, &to_b, t),
        Ok(Received::New { .. })
    ));
    assert!(matches!(
        receive(&mut c, &to_c, t + 60_000),
        Ok(Received::New { .. })
    ));
    let first = world.sync(&mut b, t + HOUR_MS);
    assert_eq!(first.cleared.len(), 1);
    assert!(!world.net.blacklist().contains(&a.party().wallet_id));
    let second = world.sync(&mut c, t + 2 * HOUR_MS);
    assert_eq!(second.cleared.len(), 1);
    assert_eq!(world.net.credited(b.party()), 30_000);
    assert_eq!(world.net.credited(c.party()), 30_000);
    assert_eq!(
        world.net.loss_account_fen(&a.party().institution_id),
        -10_000
    );
    assert!(world.net.blacklist().contains(&a.party().wallet_id));
    let record = world.net.record(a.party()).expect("record");
    assert!(record.locked_at_ms.is_some() && record.blacklisted_at_ms.is_some());
    assert_eq!(record.purse_fen, 0);
    // Every other wallet learns the blacklist at its next sync.
    let third = world.sync(&mut d, t + 3 * HOUR_MS);
    assert!(
        third
            .result
            .actions
            .contains(&WalletAction::BlacklistUpdate)
    );
    assert!(d.blacklist().contains(&a.party().wallet_id));
    // The double spender's own key set is refused from now on.
    let upload = a.key_set(fix(t + 4 * HOUR_MS)).expect("set");
    rejected_with(
        &submit(&mut world, &upload.key_set, t + 4 * HOUR_MS),
        Reason::WalletBlacklisted,
    );
    // The payee's view of each clearing: one of the two was evidence.
    let evidence: Vec<_> = world
        .net
        .cleared()
        .values()
        .filter_map(|c| c.decision.evidence)
        .collect();
    assert_eq!(evidence, vec![Reason::OfflineDoubleSpend]);
    world.conserved();
}

/// The double spender uploads its own chain first (one branch of it); the second payee's upload
/// of the other branch is the evidence.
#[test]
fn a_double_spend_is_caught_when_the_payer_uploads_first() {
    let mut world = World::new();
    let (mut a, b, mut c) = (world.wallet(0), world.wallet(1), world.wallet(2));
    let t = world.t0 + HOUR_MS;
    a.pay(b.party(), 45_000, fix(t)).expect("pays");
    let frames: Vec<Frame> = a.made_frames().cloned().collect();
    let outcome = world.sync(&mut a, t + HOUR_MS);
    assert_eq!(outcome.cleared.len(), 1);
    assert!(!frames.is_empty());
    // Rewound to before the sync's payment: counter 0 and a full purse again.
    a.rewind_for_double_spending(0, CHAIN_START, PURSE_FEN);
    let to_c = a.pay(c.party(), 20_000, fix(t + 2 * HOUR_MS));
    let to_c = to_c.expect("the tampered wallet pays");
    receive(&mut c, &to_c, t + 2 * HOUR_MS).expect("C takes it offline");
    world.sync(&mut c, t + 3 * HOUR_MS);
    assert_eq!(world.net.credited(c.party()), 20_000);
    assert_eq!(
        world.net.loss_account_fen(&a.party().institution_id),
        -15_000
    );
    assert!(world.net.blacklist().contains(&a.party().wallet_id));
    world.conserved();
}

// ---------------------------------------------------------------------------------------------
// Remote control
// ---------------------------------------------------------------------------------------------

#[test]
fn a_command_issued_while_a_wallet_is_offline_applies_once_at_its_next_sync() {
    let mut world = World::new();
    let (mut a, b) = (world.wallet(0), world.wallet(1));
    let t = world.t0 + HOUR_MS;
    let limits = dcpipe_schemas::OfflineLimits {
        single_payment_limit_fen: 100,
        ..OFFLINE_TIER_4
    };
    world
        .net
        .issue_command(a.party(), Command::OfflineLimits(limits), t)
        .expect("issued");
    world
        .net
        .issue_command(a.party(), Command::Lock, t + 1)
        .expect("issued");
    a.pay(b.party(), 1_000, fix(t + 2))
        .expect("a does not know yet");
    let outcome = world.sync(&mut a, t + HOUR_MS);
    assert_eq!(outcome.result.pending_commands, 2);
    assert_eq!(outcome.commands.len(), 2);
    assert!(a.is_locked());
    assert_eq!(a.limits().single_payment_limit_fen, 100);
    assert_eq!(a.commands_applied_through(), 2);
    assert_eq!(
        a.pay(b.party(), 10, fix(t + HOUR_MS + 1)),
        Err(PayRefusal::Locked)
    );
    // Delivered again: nothing to do.
    for command in &outcome.commands {
        assert_eq!(
            a.apply_command(command, &world.verifier),
            Ok(CommandApplied::AlreadyApplied)
        );
    }
    // Its payment after the lock was refused at the sync; the one before would have cleared.
    assert_eq!(outcome.result.refused.len(), 1);
    assert_eq!(
        outcome.result.refused[0].reason_code,
        "offline.payer_locked"
    );
    assert_eq!(world.net.credited(b.party()), 0);
    // The next key set reports the commands applied: none is delivered again.
    world
        .net
        .issue_command(a.party(), Command::Unlock, t + 2 * HOUR_MS)
        .expect("issued");
    let next = world.sync(&mut a, t + 3 * HOUR_MS);
    assert_eq!(
        next.result.status,
        SyncStatus::Accepted,
        "{:?}",
        next.result
    );
    assert_eq!(next.commands.len(), 1);
    assert!(!a.is_locked());
    world.conserved();
}

/// A payment to a locked wallet is cleared at its payer's institution and voided on the
/// clearing path (the payee's institution refuses the credit): credited to nobody, and its
/// amount back in the payer's purse once the answer to the key set that cleared it is made.
#[test]
fn a_payment_to_a_locked_wallet_is_voided_and_gives_the_purse_back() {
    let mut world = World::new();
    let (a, mut b, c) = (world.wallet(0), world.wallet(1), world.wallet(2));
    let t = world.t0 + HOUR_MS;
    let to_a = b.pay(a.party(), 3_000, fix(t)).expect("b pays a");
    let to_c = b.pay(c.party(), 1_000, fix(t + 1)).expect("b pays c");
    world
        .net
        .issue_command(a.party(), Command::Lock, t + 2)
        .expect("issued");
    let outcome = world.sync(&mut b, t + HOUR_MS);
    assert_eq!(outcome.result.status, SyncStatus::Accepted);
    // The answer is made before the clearing path runs: the purse without either payment.
    assert_eq!(outcome.result.purse_fen, PURSE_FEN - 4_000);
    let id_of = |frame: &Frame| {
        let payment: OfflinePayment = dcpipe_schemas::decode(frame.as_bytes()).expect("decodes");
        dcpipe_pipeline::protocol::offline_payment_id(
            &dcpipe_pipeline::protocol::offline_payment_digest(&payment),
        )
    };
    let cleared = world.net.cleared();
    assert!(cleared[&id_of(&to_a)].voided);
    assert!(!cleared[&id_of(&to_c)].voided);
    assert_eq!(world.net.credited(a.party()), 0);
    assert_eq!(world.net.credited(c.party()), 1_000);
    assert_eq!(
        world.net.record(b.party()).expect("record").purse_fen,
        PURSE_FEN - 1_000
    );
    world.conserved();
    // Its wallet learns its purse at its next sync.
    let next = world.sync(&mut b, t + 2 * HOUR_MS);
    assert_eq!(next.result.purse_fen, PURSE_FEN - 1_000);
    assert_eq!(b.purse_fen(), PURSE_FEN - 1_000);
}

#[test]
fn commands_out_of_order_forged_or_misaddressed_are_refused_by_the_wallet() {
    let mut world = World::new();
    let (mut a, b) = (world.wallet(0), world.wallet(1));
    let t = world.t0 + HOUR_MS;
    let institution = PKI
        .institution(&a.party().institution_id)
        .expect("institution");
    let second = sign_command(
        CommandId::random(),
        a.party(),
        2,
        &Command::Lock,
        t,
        &institution.signer,
    )
    .expect("signed");
    assert_eq!(
        a.apply_command(&second, &world.verifier)
            .map_err(|r| r.reason),
        Err(Reason::RemoteOutOfOrder)
    );
    let first = sign_command(
        CommandId::random(),
        a.party(),
        1,
        &Command::Unlock,
        t,
        &institution.signer,
    )
    .expect("signed");
    let mut tampered = first.clone();
    tampered.command = dcpipe_schemas::ControlCommand::Lock;
    assert_eq!(
        a.apply_command(&tampered, &world.verifier)
            .map_err(|r| r.reason),
        Err(Reason::RemoteSignature)
    );
    let other = PKI
        .institutions()
        .find(|(id, _)| *id != a.party().institution_id)
        .map(|(_, keys)| keys)
        .expect("another institution");
    let foreign = sign_command(
        CommandId::random(),
        a.party(),
        1,
        &Command::Lock,
        t,
        &other.signer,
    )
    .expect("signed");
    assert_eq!(
        a.apply_command(&foreign, &world.verifier)
            .map_err(|r| r.reason),
        Err(Reason::RemoteWrongIssuer)
    );
    let for_b = sign_command(
        CommandId::random(),
        b.party(),
        1,
        &Command::Lock,
        t,
        &institution.signer,
    )
    .expect("signed");
    assert_eq!(
        a.apply_command(&for_b, &world.verifier)
            .map_err(|r| r.reason),
        Err(Reason::RemoteWrongWallet)
    );
    let mut unsequenced = first.clone();
    unsequenced.sequence = 0;
    assert_eq!(
        a.apply_command(&unsequenced, &world.verifier)
            .map_err(|r| r.reason),
        Err(Reason::RemoteUnsequenced)
    );
    assert_eq!(
        a.apply_command(&first, &world.verifier),
        Ok(CommandApplied::Applied(
            dcpipe_schemas::ControlCommand::Unlock
        ))
    );
    assert_eq!(
        a.apply_command(&second, &world.verifier),
        Ok(CommandApplied::Applied(
            dcpipe_schemas::ControlCommand::Lock
        ))
    );
    assert!(a.is_locked());
}

#[test]
fn a_wallet_refuses_a_result_not_from_its_institution_or_for_another_key_set() {
    let mut world = World::new();
    let (mut a, b) = (world.wallet(0), world.wallet(1));
    let t = world.t0 + HOUR_MS;
    a.pay(b.party(), 100, fix(t)).expect("pays");
    let upload = a.key_set(fix(t + HOUR_MS)).expect("set");
    let outcome = submit(&mut world, &upload.key_set, t + HOUR_MS);
    let other = PKI
        .institutions()
        .find(|(id, _)| *id != a.party().institution_id)
        .map(|(_, keys)| keys)
        .expect("another institution");
    let forged = dcpipe_pipeline::wallet::sign_sync_result(outcome.result.clone(), &other.signer)
        .expect("signed");
    assert!(matches!(
        a.apply_sync_result(&forged, &world.verifier),
        Err(SyncResultError::Refused(r)) if r.reason == Reason::RemoteWrongIssuer
    ));
    let mut stale = outcome.result.clone();
    stale.key_set_digest = Some(dcpipe_schemas::Digest32::from_bytes([1; 32]));
    let institution = PKI
        .institution(&a.party().institution_id)
        .expect("institution");
    let stale =
        dcpipe_pipeline::wallet::sign_sync_result(stale, &institution.signer).expect("signed");
    assert_eq!(
        a.apply_sync_result(&stale, &world.verifier),
        Err(SyncResultError::NotForThisUpload)
    );
    a.apply_sync_result(&outcome.result, &world.verifier)
        .expect("the genuine one applies");
    assert_eq!(a.made_since_sync(), (0, 0));
}

/// A wallet whose secure element ignores its limits (it was given limits above its tier's):
/// its payments still clear — its payees are honest — but the key set is evidence, and it is
/// locked and blacklisted.
#[test]
fn payments_beyond_the_recorded_limits_are_evidence() {
    let mut world = World::new();
    let (mut a, b) = (world.wallet(0), world.wallet(1));
    let t = world.t0 + HOUR_MS;
    let lax = dcpipe_schemas::OfflineLimits {
        single_payment_limit_fen: 1_000_000,
        ..OFFLINE_TIER_4
    };
    let institution = PKI
        .institution(&a.party().institution_id)
        .expect("institution");
    let command = sign_command(
        CommandId::random(),
        a.party(),
        1,
        &Command::OfflineLimits(lax),
        t,
        &institution.signer,
    )
    .expect("signed");
    // The platform never issued it (its record keeps tier 4): a tampered element applies it.
    a.apply_command(&command, &world.verifier).expect("applies");
    assert!(world.net.fund_purse(a.party(), 10_000));
    a.fund_purse(10_000).expect("purse");
    a.pay(
        b.party(),
        OFFLINE_TIER_4.single_payment_limit_fen + 1,
        fix(t),
    )
    .expect("pays");
    let outcome = world.sync(&mut a, t + HOUR_MS);
    assert_eq!(outcome.result.status, SyncStatus::Accepted);
    assert!(outcome.result.actions.contains(&WalletAction::Lock));
    assert!(world.net.blacklist().contains(&a.party().wallet_id));
    assert_eq!(
        world.net.credited(b.party()),
        OFFLINE_TIER_4.single_payment_limit_fen + 1
    );
    world.conserved();
}
