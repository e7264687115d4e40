//! Codec throughput on the hot path: a transaction envelope with two ~500-byte DER
//! certificates (about 1.3 KB framed), and a payment outcome (about 200 bytes).

#[path = "../tests/fixtures/mod.rs"]
mod fixtures;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dcpipe_schemas::{Message, PaymentOutcome, TransactionEnvelope, decode, encode, encode_into};

fn bench_message<M: Message + PartialEq + std::fmt::Debug>(
    c: &mut Criterion,
    name: &str,
    message: &M,
) {
    let frame = encode(message).expect("fixture encodes");
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("encode ({} B)", frame.len()), |b| {
        b.iter(|| encode(black_box(message)).expect("encodes"))
    });
    let mut buffer = Vec::with_capacity(frame.len());
    group.bench_function("encode_into reused buffer", |b| {
        b.iter(|| {
            buffer.clear();
            encode_into(black_box(message), &mut buffer).expect("encodes");
        })
    });
    group.bench_function(format!("decode ({} B)", frame.len()), |b| {
        b.iter(|| decode::<M>(black_box(&frame)).expect("decodes"))
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    bench_message::<TransactionEnvelope>(
        c,
        "transaction_envelope",
        &fixtures::transaction_envelope(),
    );
    bench_message::<PaymentOutcome>(c, "payment_outcome", &fixtures::payment_outcome());
}

criterion_group!(benches, codec);
criterion_main!(benches);
