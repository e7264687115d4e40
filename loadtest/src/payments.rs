//! Synthetic payments between the terminals of a provisioned network.
//!
//! Traffic is skewed as in production: most payments start from a few hot wallets and most go
//! between institutions; amounts are mostly small, a few above the password-free limit (with
//! the PIN entered during the touch). A configurable share of submissions is bad, repeated or
//! conflicting, each with the answer the pipeline must give.

use bytes::Bytes;
use dcpipe_connectors::bus::Outgoing;
use dcpipe_pipeline::invariants::Submission;
use dcpipe_pipeline::network::Network;
use dcpipe_pipeline::subjects;
use dcpipe_pipeline::terminal::{PaymentRequest, PinEntry, Touch, TouchError};
use dcpipe_schemas::{Channel, PaymentId, TransactionEnvelope};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Shares of the traffic, as fractions of all submissions.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentMix {
    /// Wallets that send most of the traffic.
    pub hot_wallets: usize,
    /// Share of payments sent from hot wallets.
    pub hot_share: f64,
    /// Share of payments between two institutions (the rest stay within one).
    pub interbank_share: f64,
    /// Share of payments above the password-free limit (PIN entered in the touch).
    pub large_share: f64,
    /// Share of submissions that repeat an earlier envelope unchanged.
    pub duplicate_share: f64,
    /// Share of submissions that reuse an earlier payment id with other content.
    pub conflict_share: f64,
    /// Share of submissions with a forged payer signature.
    pub forged_share: f64,
}

impl Default for PaymentMix {
    fn default() -> Self {
        PaymentMix {
            hot_wallets: 20,
            hot_share: 0.5,
            interbank_share: 0.8,
            large_share: 0.02,
            duplicate_share: 0.0,
            conflict_share: 0.0,
            forged_share: 0.0,
        }
    }
}

/// What kind of submission was generated, and so what answer it must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmissionKind {
    /// An honest payment: completed, or rejected by a limit or the balance.
    Payment,
    /// An earlier envelope again: gets the earlier answer.
    Duplicate,
    /// An earlier payment id with other content: `txn.conflict`.
    Conflict,
    /// A forged payer signature: `sig.payer_invalid`.
    Forged,
}

/// A generated submission, ready to publish.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The envelope.
    pub envelope: TransactionEnvelope,
    /// Its payment id and digest.
    pub submission: Submission,
    /// What kind it is.
    pub kind: SubmissionKind,
    /// The encoded frame.
    pub frame: Bytes,
}

impl Generated {
    /// The message to publish to the payer's institution.
    pub fn outgoing(&self) -> Outgoing {
        Outgoing::new(
            subjects::txn_submit(&self.envelope.payer.institution_id),
            self.frame.clone(),
        )
        .with_key(self.envelope.payer.wallet_id.clone().into_bytes())
    }
}

/// Why a submission could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The terminals refused each other or could not sign.
    #[error("touch: {0}")]
    Touch(#[from] TouchError),
    /// The envelope did not encode.
    #[error("encode: {0}")]
    Encode(#[from] dcpipe_schemas::CodecError),
    /// The network has fewer than two wallets.
    #[error("the network needs at least two wallets")]
    TooFewWallets,
}

/// Most earlier envelopes kept for repeats and conflicts.
pub const RECENT_ENVELOPES_MAX: usize = 1024;

/// Generates submissions from a seed.
#[derive(Debug)]
pub struct PaymentGenerator<'n> {
    network: &'n Network,
    mix: PaymentMix,
    rng: SmallRng,
    recent: Vec<TransactionEnvelope>,
}

impl<'n> PaymentGenerator<'n> {
    /// A generator over `network`'s wallets.
    pub fn new(network: &'n Network, mix: PaymentMix, seed: u64) -> Self {
        PaymentGenerator {
            network,
            mix,
            rng: SmallRng::seed_from_u64(seed),
            recent: Vec::new(),
        }
    }

    /// The next submission, stamped `now_ms`.
    pub fn next(&mut self, now_ms: i64) -> Result<Generated, GenerateError> {
        let roll: f64 = self.rng.random();
        let mix = &self.mix;
        let kind = if roll < mix.duplicate_share && !self.recent.is_empty() {
            SubmissionKind::Duplicate
        } else if roll < mix.duplicate_share + mix.conflict_share && !self.recent.is_empty() {
            SubmissionKind::Conflict
        } else if roll < mix.duplicate_share + mix.conflict_share + mix.forged_share {
            SubmissionKind::Forged
        } else {
            SubmissionKind::Payment
        };
        let envelope = match kind {
            SubmissionKind::Duplicate => {
                let i = self.rng.random_range(0..self.recent.len());
                self.recent[i].clone()
            }
            SubmissionKind::Conflict => {
                let i = self.rng.random_range(0..self.recent.len());
                let earlier = self.recent[i].clone();
                self.payment(
                    now_ms,
                    Some(earlier.payment_id),
                    Some((&earlier.payer.wallet_id, &earlier.payee.wallet_id)),
                    earlier.amount_fen + 1,
                )?
            }
            SubmissionKind::Forged => {
                let mut envelope = self.fresh_payment(now_ms)?;
                envelope.payer_signature[0] ^= 0x01;
                envelope
            }
            SubmissionKind::Payment => {
                let envelope = self.fresh_payment(now_ms)?;
                if self.recent.len() < RECENT_ENVELOPES_MAX {
                    self.recent.push(envelope.clone());
                } else {
                    let i = self.rng.random_range(0..RECENT_ENVELOPES_MAX);
                    self.recent[i] = envelope.clone();
                }
                envelope
            }
        };
        let frame = Bytes::from(dcpipe_schemas::encode(&envelope)?);
        Ok(Generated {
            submission: Submission::of(&envelope, &frame),
            envelope,
            kind,
            frame,
        })
    }

    fn fresh_payment(&mut self, now_ms: i64) -> Result<TransactionEnvelope, GenerateError> {
        let amount_fen = self.amount_fen();
        self.payment(now_ms, None, None, amount_fen)
    }

    /// A skewed amount: mostly a few yuan to a few hundred, sometimes above the password-free
    /// limit of 1,000 CNY.
    fn amount_fen(&mut self) -> i64 {
        if self.rng.random_bool(self.mix.large_share.clamp(0.0, 1.0)) {
            self.rng.random_range(100_001..=300_000)
        } else {
            // Log-uniform between 1 CNY and 500 CNY.
            let exponent: f64 = self.rng.random_range(2.0..4.7);
            10f64.powf(exponent).round() as i64
        }
    }

    fn pick_wallets(&mut self) -> Result<(usize, usize), GenerateError> {
        let wallets = &self.network.wallets;
        if wallets.len() < 2 {
            return Err(GenerateError::TooFewWallets);
        }
        let hot = self.mix.hot_wallets.clamp(1, wallets.len());
        let payer = if self.rng.random_bool(self.mix.hot_share.clamp(0.0, 1.0)) {
            self.rng.random_range(0..hot)
        } else {
            self.rng.random_range(0..wallets.len())
        };
        let want_interbank = self
            .rng
            .random_bool(self.mix.interbank_share.clamp(0.0, 1.0));
        for _ in 0..64 {
            let payee = self.rng.random_range(0..wallets.len());
            let interbank =
                wallets[payee].party.institution_id != wallets[payer].party.institution_id;
            if payee != payer && interbank == want_interbank {
                return Ok((payer, payee));
            }
        }
        Ok((payer, (payer + 1) % wallets.len()))
    }

    fn payment(
        &mut self,
        now_ms: i64,
        payment_id: Option<PaymentId>,
        parties: Option<(&str, &str)>,
        amount_fen: i64,
    ) -> Result<TransactionEnvelope, GenerateError> {
        let (payer, payee) = match parties {
            Some((payer, payee)) => (payer.to_owned(), payee.to_owned()),
            None => {
                let (payer, payee) = self.pick_wallets()?;
                (
                    self.network.wallets[payer].party.wallet_id.clone(),
                    self.network.wallets[payee].party.wallet_id.clone(),
                )
            }
        };
        let payer = self
            .network
            .terminal(&payer)
            .ok_or(GenerateError::TooFewWallets)?;
        let payee = self
            .network
            .terminal(&payee)
            .ok_or(GenerateError::TooFewWallets)?;
        // The terminals already verified each other at their first touch; the load is the
        // institutions', so the generator skips the terminals' own chain checks.
        let touch = Touch::unchecked(payer, payee);
        // Ids are globally unique (a run on a bus that kept an earlier run's messages must not
        // reuse them); the seed decides the traffic, not the ids.
        let payment_id = payment_id.unwrap_or_else(PaymentId::time_ordered);
        let channel = match self.rng.random_range(0..3) {
            0 => Channel::Nfc,
            1 => Channel::Bluetooth,
            _ => Channel::Remote,
        };
        Ok(touch.negotiate(&PaymentRequest {
            payment_id,
            amount_fen,
            channel,
            created_at_ms: now_ms,
            pin: PinEntry::WhenRequired,
        })?)
    }
}
