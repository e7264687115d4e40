//! The verification ceiling of a range's mix, measured by the audit that read it: an even
//! sample of the range's records (reservoir sampling) is checked again at the end, on the
//! audit's threads, with nothing else to do: no reading, no reconciliation, no broker. The
//! audit's speed over this is how close it came to what its own verification allows
//! (docs/BENCHMARKS.md, "Audit replay").

use std::time::Instant;

use serde::Serialize;

use super::{AuditRecord, CheckContext, check_parallel};

/// Most records kept to measure the ceiling: about a second of verification on two cores, and
/// at most tens of MiB (each frame is copied out of the buffer it was read into, see
/// [`Sample::offer`]).
pub const CEILING_SAMPLE_RECORDS: usize = 20_000;

/// `record` with a frame of its own.
fn owned(record: &AuditRecord) -> AuditRecord {
    AuditRecord {
        subject: record.subject.clone(),
        position: record.position,
        timestamp_ms: record.timestamp_ms,
        payload: bytes::Bytes::copy_from_slice(&record.payload),
    }
}

/// Passes over the sample when the ceiling is measured; the fastest is the ceiling. One pass
/// lasts about a second, and on a shared machine one second's rate can be 10% off either way:
/// a ceiling measured in a slow second flattered the audit's ratio to it.
pub const CEILING_PASSES: usize = 3;

/// What the sample's verification alone reached.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerificationCeiling {
    /// Records checked.
    pub sample_records: u64,
    /// Threads they were checked on (the audit's).
    pub threads: usize,
    /// Records checked per second, in the fastest pass.
    pub records_per_s: f64,
    /// Passes over the sample measured.
    pub passes: usize,
}

/// Consecutive records the sample is made of: stretches of the stream, not single records, so
/// that the copies of one outcome (published together on up to three subjects) are in the
/// sample together, as the audit reads them, and a ceiling pass verifies each once too.
pub const CEILING_SAMPLE_STRETCH: usize = 512;

/// An even sample of a stream of records, of at most `capacity`: stretches of
/// [`CEILING_SAMPLE_STRETCH`] consecutive records, each stretch kept with the same chance
/// (reservoir sampling, with a fixed seed so that a range gives one sample).
#[derive(Debug)]
pub struct Sample {
    kept: Vec<Vec<AuditRecord>>,
    /// Stretches kept at most.
    slots: usize,
    stretch: usize,
    seen: u64,
    /// Where the records of the stretch being read go: a slot of `kept`, or nowhere.
    filling: Option<usize>,
    state: u64,
}

impl Sample {
    /// An empty sample of at most `capacity` records.
    pub fn new(capacity: usize) -> Self {
        Self::of_stretches(capacity, CEILING_SAMPLE_STRETCH)
    }

    /// An empty sample of at most `capacity` records, in stretches of `stretch`.
    pub fn of_stretches(capacity: usize, stretch: usize) -> Self {
        let stretch = stretch.clamp(1, capacity.max(1));
        Sample {
            kept: Vec::new(),
            slots: (capacity / stretch).max(1),
            stretch,
            seen: 0,
            filling: None,
            state: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// Offers the next record of the stream. A record kept owns a copy of its frame: a frame
    /// read from a broker is a slice of the buffer the client read it into, and keeping the
    /// slice would keep that whole buffer, so that the sample, spread over the range, held a
    /// buffer per record kept (about 900 MiB over a million NATS records).
    pub fn offer(&mut self, record: &AuditRecord) {
        let stretch = self.stretch as u64;
        if self.seen.is_multiple_of(stretch) {
            // A stretch begins: keep it (in a free slot, or in place of one kept) or not.
            let stretches_seen = self.seen / stretch + 1;
            self.filling = if self.kept.len() < self.slots {
                self.kept.push(Vec::with_capacity(self.stretch));
                Some(self.kept.len() - 1)
            } else {
                let slot = self.next_random() % stretches_seen;
                usize::try_from(slot).ok().filter(|s| *s < self.slots)
            };
            if let Some(slot) = self.filling {
                self.kept[slot].clear();
            }
        }
        self.seen += 1;
        if let Some(slot) = self.filling {
            self.kept[slot].push(owned(record));
        }
    }

    /// Records kept.
    pub fn len(&self) -> usize {
        self.kept.iter().map(Vec::len).sum()
    }

    /// Whether nothing was kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The records kept, stretch after stretch (the stretches in no particular order).
    pub fn records(&self) -> Vec<AuditRecord> {
        self.kept.iter().flatten().cloned().collect()
    }

    /// Checks the sample again on `threads` [`CEILING_PASSES`] times and keeps the fastest
    /// pass; `None` when the sample is empty. Each pass verifies as the audit did: a copy of
    /// an outcome verified earlier in the pass is not verified again, one verified before it
    /// is (the context forgets them first).
    pub fn measure(&self, context: &CheckContext, threads: usize) -> Option<VerificationCeiling> {
        let records = self.records();
        if records.is_empty() {
            return None;
        }
        let mut best = 0.0_f64;
        let mut checked_per_pass = 0;
        for _ in 0..CEILING_PASSES {
            context.forget_verified();
            let started = Instant::now();
            let checked = check_parallel(context, &records, threads);
            let elapsed = started.elapsed().as_secs_f64().max(1e-9);
            checked_per_pass = checked.len();
            best = best.max(checked.len() as f64 / elapsed);
        }
        Some(VerificationCeiling {
            sample_records: checked_per_pass as u64,
            threads: threads.max(1),
            records_per_s: best,
            passes: CEILING_PASSES,
        })
    }

    /// xorshift64*: enough to spread a sample, not for anything secret.
    fn next_random(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use dcpipe_connectors::bus::Position;

    fn record(n: u64) -> AuditRecord {
        AuditRecord {
            subject: "txn.submit.oi01".to_owned(),
            position: Position {
                partition: 0,
                offset: n,
            },
            timestamp_ms: 0,
            payload: Bytes::new(),
        }
    }

    fn offsets(sample: &Sample) -> Vec<u64> {
        let mut offsets: Vec<u64> = sample.records().iter().map(|r| r.position.offset).collect();
        offsets.sort_unstable();
        offsets
    }

    #[test]
    fn a_kept_record_owns_its_frame_not_the_buffer_it_was_read_into() {
        // As a broker's client hands frames out: slices of one read buffer.
        let buffer = Bytes::from(vec![7_u8; 64 * 1024]);
        let inside = buffer.as_ptr_range();
        let mut sample = Sample::of_stretches(10, 2);
        for n in 0..20_u64 {
            let start = usize::try_from(n).expect("small") * 1_000;
            let mut read = record(n);
            read.payload = buffer.slice(start..start + 900);
            sample.offer(&read);
        }
        assert_eq!(sample.len(), 10);
        for kept in sample.records() {
            assert_eq!(kept.payload.len(), 900);
            assert!(kept.payload.iter().all(|&b| b == 7));
            assert!(
                !inside.contains(&kept.payload.as_ptr()),
                "record {} still points into the read buffer",
                kept.position.offset
            );
        }
    }

    #[test]
    fn a_stream_shorter_than_the_sample_is_kept_whole() {
        let mut sample = Sample::new(100);
        for n in 0..40 {
            sample.offer(&record(n));
        }
        assert_eq!(offsets(&sample), (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn a_longer_stream_is_sampled_evenly_and_the_same_way_each_time() {
        let run = || {
            let mut sample = Sample::of_stretches(1_000, 2);
            for n in 0..100_000 {
                sample.offer(&record(n));
            }
            sample
        };
        let sample = run();
        assert_eq!(sample.len(), 1_000);
        let kept = offsets(&sample);
        kept.windows(2)
            .for_each(|w| assert!(w[0] < w[1], "a record kept twice"));
        // Whole stretches of consecutive records: 0-1, 2-3, …
        for stretch in kept.chunks(2) {
            assert_eq!(stretch[0] % 2, 0, "{stretch:?}");
            assert_eq!(stretch[1], stretch[0] + 1, "{stretch:?}");
        }
        // Each tenth of the stream holds about a tenth of the sample.
        for tenth in 0..10u64 {
            let range = tenth * 10_000..(tenth + 1) * 10_000;
            let inside = kept.iter().filter(|n| range.contains(n)).count();
            assert!((60..=140).contains(&inside), "tenth {tenth}: {inside}");
        }
        assert_eq!(offsets(&run()), kept);
    }

    #[test]
    fn the_sample_is_checked_again_and_timed_on_the_audits_threads() {
        use crate::audit::{RevocationHistory, TimedVerifier};
        use crate::pki::{AlgorithmChoice, DemoPkiOptions, PkiDirectory};
        use std::sync::Arc;

        let pki = PkiDirectory::generate(&DemoPkiOptions::new(
            2,
            2,
            AlgorithmChoice::P256,
            1_800_000_000_000,
        ))
        .expect("demo PKI");
        let context = CheckContext::new(TimedVerifier::new(
            Arc::clone(pki.trust_store()),
            RevocationHistory::new(),
        ));
        let empty = Sample::new(10);
        assert!(empty.is_empty());
        assert_eq!(empty.measure(&context, 2), None);
        let mut sample = Sample::of_stretches(10, 5);
        for n in 0..25 {
            sample.offer(&record(n));
        }
        let ceiling = sample.measure(&context, 2).expect("measured");
        assert_eq!(ceiling.sample_records, 10);
        assert_eq!(ceiling.threads, 2);
        assert_eq!(ceiling.passes, CEILING_PASSES);
        assert!(ceiling.records_per_s > 0.0);
    }
}
