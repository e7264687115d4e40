//! Verified chains, keyed by the leaf certificate's SHA-256 fingerprint.
//!
//! The same few thousand terminal and institution certificates arrive with every message, so
//! each chain's signatures are checked once: a cached entry keeps the verified identity, the
//! chain's validity interval and the serials to look up in the revocation set. The per-message
//! checks that depend on time, revocation and the caller's expected role are redone on every hit
//! (they are cheap). The cache is bounded ([`CHAIN_CACHE_ENTRIES_DEFAULT`]) and evicts with
//! quick_cache's CLOCK-Pro policy, so a flood of distinct certificates cannot grow it.

use std::sync::atomic::{AtomicU64, Ordering};

use super::verify::VerifiedIdentity;

/// Default bound on cached chains (about 1 KiB each: 100 MB at most).
pub const CHAIN_CACHE_ENTRIES_DEFAULT: usize = 100_000;

/// Metric: cache hits.
pub const METRIC_CHAIN_CACHE_HITS: &str = "dcpipe_pki_chain_cache_hits_total";
/// Metric: cache misses.
pub const METRIC_CHAIN_CACHE_MISSES: &str = "dcpipe_pki_chain_cache_misses_total";

/// A bounded map from leaf fingerprint to verified chain.
#[derive(Debug)]
pub struct ChainCache {
    entries: quick_cache::sync::Cache<[u8; 32], VerifiedIdentity>,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ChainCache {
    /// A cache holding at most `capacity` chains (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        ChainCache {
            entries: quick_cache::sync::Cache::new(capacity),
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cached chain of the leaf with this fingerprint; counts a hit or a miss.
    pub fn get(&self, fingerprint: &[u8; 32]) -> Option<VerifiedIdentity> {
        let found = self.entries.get(fingerprint);
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(METRIC_CHAIN_CACHE_HITS).increment(1);
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(METRIC_CHAIN_CACHE_MISSES).increment(1);
        }
        found
    }

    /// Caches a verified chain under its leaf fingerprint.
    pub fn insert(&self, identity: VerifiedIdentity) {
        self.entries.insert(*identity.fingerprint(), identity);
    }

    /// Number of cached chains; never above [`ChainCache::capacity`].
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bound given at construction.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Hits since construction.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Misses since construction.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Drops every entry (e.g. after the trust store changed).
    pub fn clear(&self) {
        self.entries.clear();
    }
}
