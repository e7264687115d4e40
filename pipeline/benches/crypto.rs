//! Costs of the PKI's hot paths: message signatures (sign and verify a 100-byte message) for
//! P-256 and SM2, and chain verification without and with the verified-chain cache.
//!
//! `verify_100B/sm2` is the RustCrypto `sm2` crate's verifier, kept as the yardstick;
//! `verify_100B/sm2_fast` is what `PublicKey::verify` runs (`pki::sm2_verify`).
//!
//! Run with `cargo bench -p dcpipe-pipeline --bench crypto`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use dcpipe_pipeline::pki::{
    Algorithm, AlgorithmChoice, CertificateTemplate, CertifiedKey, ChainVerifier, DemoPkiOptions,
    PkiDirectory, PrivateKey, RevocationSet, Role, SM2_DISTINGUISHING_ID, TrustStore, sha256, sm3,
};
use sm2::dsa::signature::Verifier as _;

const MESSAGE_BYTES: usize = 100;
const YEAR_MS: i64 = 365 * 24 * 3600 * 1000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn message() -> Vec<u8> {
    (0..MESSAGE_BYTES).map(|i| (i * 7) as u8).collect()
}

fn signatures(c: &mut Criterion) {
    let message = message();
    for algorithm in Algorithm::ALL {
        let key = PrivateKey::generate(algorithm).expect("key");
        let signature = key.sign(&message).expect("sign");
        c.bench_function(&format!("sign_100B/{algorithm}"), |b| {
            b.iter(|| key.sign(black_box(&message)).expect("sign"))
        });
        let name = match algorithm {
            Algorithm::EcdsaP256Sha256 => "p256",
            Algorithm::Sm2Sm3 => "sm2_fast",
        };
        c.bench_function(&format!("verify_100B/{name}"), |b| {
            b.iter(|| {
                key.public_key()
                    .verify(black_box(&message), black_box(&signature))
                    .expect("valid")
            })
        });
        if algorithm == Algorithm::Sm2Sm3 {
            let crate_key = sm2::dsa::VerifyingKey::from_sec1_bytes(
                SM2_DISTINGUISHING_ID,
                key.public_key().sec1_point(),
            )
            .expect("key");
            let crate_signature = sm2::dsa::Signature::from_slice(&signature).expect("signature");
            c.bench_function("verify_100B/sm2", |b| {
                b.iter(|| {
                    crate_key
                        .verify(black_box(&message), black_box(&crate_signature))
                        .expect("valid")
                })
            });
        }
    }
}

/// A root → institution CA → terminal chain, all in `algorithm`, and a verifier over it.
fn chain(algorithm: Algorithm, now: i64) -> (ChainVerifier, Vec<u8>) {
    let (from, until) = (now - YEAR_MS, now + YEAR_MS);
    let root = CertifiedKey::self_signed_root(algorithm, from, until).expect("root");
    let ca = root
        .issue_with_new_key(
            &CertificateTemplate::for_role(Role::InstitutionCa, "oi01", "oi01", from, until),
            algorithm,
        )
        .expect("ca");
    let leaf = ca
        .issue_with_new_key(
            &CertificateTemplate::for_role(Role::Terminal, "w-oi01-000001", "oi01", from, until),
            algorithm,
        )
        .expect("leaf");
    let mut store = TrustStore::new(root.certificate().clone()).expect("store");
    store
        .add_institution_ca(ca.certificate().clone())
        .expect("ca accepted");
    let verifier = ChainVerifier::new(Arc::new(store), Arc::new(RevocationSet::new()));
    (verifier, leaf.certificate().der().to_vec())
}

fn chains(c: &mut Criterion) {
    let now = now_ms();
    for algorithm in Algorithm::ALL {
        let (verifier, leaf) = chain(algorithm, now);
        c.bench_function(&format!("chain_verify_uncached/{algorithm}"), |b| {
            b.iter(|| {
                verifier
                    .verify_uncached(black_box(&leaf), now, Role::Terminal)
                    .expect("valid")
            })
        });
        c.bench_function(&format!("chain_verify_cached/{algorithm}"), |b| {
            b.iter(|| {
                verifier
                    .verify(black_box(&leaf), now, Role::Terminal)
                    .expect("valid")
            })
        });
    }
}

fn digests(c: &mut Criterion) {
    let data = vec![0x5a; 1024];
    c.bench_function("digest_1KiB/sha256", |b| {
        b.iter(|| sha256(black_box(&data)))
    });
    c.bench_function("digest_1KiB/sm3", |b| b.iter(|| sm3(black_box(&data))));
}

fn demo_pki(c: &mut Criterion) {
    let mut group = c.benchmark_group("demo_pki_generate");
    group.sample_size(10);
    for choice in [
        AlgorithmChoice::P256,
        AlgorithmChoice::Sm2,
        AlgorithmChoice::Mixed,
    ] {
        let options = DemoPkiOptions::new(4, 4000, choice, now_ms());
        group.bench_function(format!("4x1000_wallets/{choice}"), |b| {
            b.iter(|| PkiDirectory::generate(black_box(&options)).expect("generate"))
        });
    }
    group.finish();
}

criterion_group!(benches, signatures, chains, digests, demo_pki);
criterion_main!(benches);
