//! The storm's crypto ceiling: key sets per second that the wallet stages' own public
//! functions allow on a sample of the storm's mix, with no bus and no ledger — per key set what
//! `wallet-sync` does between reading the wallet's record and writing it
//! ([`verify_key_set`]: the wallet's chain and signature, each own and received payment's chain
//! and signature; [`decide_sync`]; the answer signed with [`sign_sync_result`]) and what
//! `wallet-clearing` does for each received payment its payer's institution clears
//! ([`verify_offline_payment_frame`]); then, once per offline payment, what the clearing path
//! signs and verifies for it as for every payment ([`ClearingPathWork`]: the clearing message,
//! the response, the outcome and its check at settlement). Recording, reservations and
//! double-spending checks are ledger work, not in it.
//!
//! Each pass over the sample starts from a verifier with an empty chain cache, as the storm's
//! wallets are all new to the platform: every wallet certificate is verified once per pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dcpipe_pipeline::network::Network;
use dcpipe_pipeline::pki::ChainVerifier;
use dcpipe_pipeline::protocol::anchors_digest;
use dcpipe_pipeline::wallet::limits::SyncPolicy;
use dcpipe_pipeline::wallet::stages::record::offline_intent;
use dcpipe_pipeline::wallet::{
    KeySetVerdict, PayerStanding, SyncContext, WalletRecord, accepted_result, decide_sync,
    sign_sync_result, verify_key_set, verify_offline_payment_frame,
};
use dcpipe_schemas::{Der, WalletKeySet};
use serde::Serialize;

use super::generate::Storm;
use crate::ceiling::{ClearingPathWork, OpCounts, crypto_error, on_threads};
use crate::error::LoadTestError;

/// Wallets of the ceiling's sample.
pub const CEILING_SAMPLE_WALLETS: usize = 128;
/// Chain cache of the ceiling's verifiers: more than a pass verifies.
const CEILING_CHAIN_CACHE: usize = 4 * CEILING_SAMPLE_WALLETS;

/// The ceiling of a storm's mix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StormCeiling {
    /// Key sets per second the wallet stages' work allows on all cores.
    pub key_sets_per_s: f64,
    /// Offline payments per second at that rate (the sample's payments per key set).
    pub payments_per_s: f64,
    /// Key sets per second per core.
    pub per_core: f64,
    /// Threads it was measured on.
    pub cores: usize,
    /// Offline payments per key set in the sample.
    pub payments_per_key_set: f64,
    /// Key sets per second one core of the wallets makes (certificate, payments made and
    /// received, key set signed); the storm makes them before it starts.
    pub producer_per_core: f64,
    /// Key sets done during the measurement.
    pub key_sets: u64,
    /// Length of the measurement, seconds.
    pub seconds: f64,
}

/// The wallet stages' work on a sample of key sets.
pub struct StormWork {
    /// Each key set, the platform's record of its wallet, and the clearing path of each of its
    /// own payments (each offline payment is cleared once, from its payer's purse).
    sets: Vec<(WalletKeySet, WalletRecord, Vec<ClearingPathWork>)>,
    network: Arc<Network>,
    anchors: Vec<Der>,
    payments: usize,
    producer_per_core: f64,
}

impl std::fmt::Debug for StormWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StormWork")
            .field("sets", &self.sets.len())
            .finish_non_exhaustive()
    }
}

impl StormWork {
    /// A sample of [`CEILING_SAMPLE_WALLETS`] wallets made like the storm's (the time making
    /// them took is the wallets' cost), with the records the platform holds of them.
    pub fn prepare(network: &Arc<Network>, seed: u64, now_ms: i64) -> Result<Self, LoadTestError> {
        let sample = Storm::with_prefix(network, seed, CEILING_SAMPLE_WALLETS, now_ms, "c");
        let started = Instant::now();
        let chunk = sample.chunk(network, 0)?;
        let producer_per_core =
            chunk.reconnections.len() as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let payments = chunk.payments();
        let mut sets = Vec::with_capacity(chunk.reconnections.len());
        for reconnection in &chunk.reconnections {
            let set: WalletKeySet = dcpipe_schemas::decode(&reconnection.frame)
                .map_err(|e| crypto_error("a sample key set", e))?;
            let mut clearings = Vec::with_capacity(set.payments.len());
            for frame in &set.payments {
                let verified = verify_offline_payment_frame(frame.as_bytes(), &network.verifier)
                    .map_err(|e| crypto_error("a sample offline payment", e.reason.as_str()))?;
                clearings.push(ClearingPathWork::prepare(
                    network,
                    &offline_intent(&verified),
                    verified.digest,
                    now_ms,
                )?);
            }
            sets.push((set, sample.opened_record(reconnection.index)?, clearings));
        }
        let store = network.verifier.trust_store();
        let mut anchors = vec![Der(store.root().der().to_vec())];
        anchors.extend(
            store
                .institution_ids()
                .filter_map(|id| store.institution_ca(id))
                .map(|ca| Der(ca.der().to_vec())),
        );
        Ok(StormWork {
            sets,
            network: Arc::clone(network),
            anchors,
            payments,
            producer_per_core,
        })
    }

    /// One key set as the stages handle it; the payments it clears at its payers'
    /// institutions.
    fn one(
        &self,
        (set, record, clearings): &(WalletKeySet, WalletRecord, Vec<ClearingPathWork>),
        verifier: &ChainVerifier,
        now_ms: i64,
    ) -> Result<(), LoadTestError> {
        let inst = &self.network.institutions[&set.institution_id];
        let policy = SyncPolicy::default();
        let verdict = verify_key_set(
            set,
            Some(record),
            &inst.id,
            verifier,
            &policy,
            now_ms,
            &|_| PayerStanding::default(),
        );
        let verified = match verdict {
            KeySetVerdict::Verified(verified) => verified,
            other => {
                return Err(crypto_error(
                    "a sample key set",
                    format!("not verified: {other:?}"),
                ));
            }
        };
        let context = SyncContext {
            blacklist: &[],
            blacklist_version: 0,
            trust_anchors: &self.anchors,
            anchors_digest: anchors_digest(self.anchors.iter().map(|d| d.0.as_slice())),
            pending_commands: 0,
            policy: &policy,
            rotation_ordered: false,
            now_ms,
        };
        let decision = decide_sync(record, &verified, &context);
        sign_sync_result(
            accepted_result(&decision, &decision.record, false, &context),
            &inst.signer,
        )
        .map_err(|e| crypto_error("a sync result", e))?;
        for frame in &set.received {
            verify_offline_payment_frame(frame.as_bytes(), verifier)
                .map_err(|e| crypto_error("a received payment", e.reason.as_str()))?;
        }
        let mut counts = OpCounts::default();
        for clearing in clearings {
            clearing.run(verifier, &mut counts)?;
        }
        Ok(())
    }

    /// Runs the work on `threads` threads for `duration` and returns the ceiling.
    pub fn measure(
        &self,
        threads: usize,
        duration: Duration,
    ) -> Result<StormCeiling, LoadTestError> {
        let threads = threads.max(1);
        let now_ms = dcpipe_pipeline::clock::system_now_ms();
        let store = Arc::clone(self.network.pki.trust_store());
        let (results, seconds) = on_threads(threads, duration, |t, deadline| {
            let mut done = 0u64;
            let mut i = t * self.sets.len() / threads;
            let mut verifier = None;
            while Instant::now() < deadline {
                let index = i % self.sets.len();
                if index == 0 || verifier.is_none() {
                    verifier = Some(ChainVerifier::with_cache_capacity(
                        Arc::clone(&store),
                        Arc::clone(&self.network.revocations),
                        CEILING_CHAIN_CACHE,
                    ));
                }
                if let Some(verifier) = &verifier {
                    self.one(&self.sets[index], verifier, now_ms)?;
                }
                done += 1;
                i += 1;
            }
            Ok(done)
        })?;
        let key_sets: u64 = results.into_iter().sum();
        let rate = if seconds > 0.0 {
            key_sets as f64 / seconds
        } else {
            0.0
        };
        let payments_per_key_set = self.payments as f64 / self.sets.len().max(1) as f64;
        let per_core = rate / threads as f64;
        Ok(StormCeiling {
            key_sets_per_s: rate,
            payments_per_s: rate * payments_per_key_set,
            per_core,
            cores: threads,
            payments_per_key_set,
            producer_per_core: self.producer_per_core,
            key_sets,
            seconds,
        })
    }
}
