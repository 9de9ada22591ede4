//! The CRL encoder: build and sign a CRL of 1,000,000 revoked certificates with an
//! in-memory aws-lc-rs signer. The product target is ≤ 2 s for 1M revoked certificates
//! including the store's stream; the encoder should be a small part of that.
//!
//! `cargo bench -p devid-ca --bench crl`

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use devid_ca::crl::{CrlBuilder, CrlEntry, CrlParams};
use devid_ca::profile::{CaSubject, IssuerInfo};
use devid_core::{OsEntropy, RevocationReason, Serial, UnixTime};
use devid_kms::{SignatureAlgorithm, Signer};
use devid_testkit::signer::MemSigner;

const ENTRIES: usize = 1_000_000;

fn now() -> UnixTime {
    UnixTime(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
    )
}

/// An issuing CA certificate for `issuing`, signed by a fresh root.
fn issuer(issuing: &MemSigner) -> IssuerInfo {
    let root = MemSigner::new();
    let alg = SignatureAlgorithm::EcdsaP256Sha256;
    let subject = |cn: &str| CaSubject { common_name: cn.into(), organization: "bench".into() };
    let root_tbs = devid_ca::profile::root_tbs(
        alg,
        &subject("Bench Root"),
        &Serial::random(&OsEntropy),
        &root.spki,
        now(),
        86400 * 3650,
    )
    .expect("root tbs");
    let root_der = devid_ca::sign::sign_tbs(&root, &root_tbs).expect("root");
    let root_info = IssuerInfo::from_cert_der(&root_der).expect("root info");
    let tbs = devid_ca::profile::issuing_tbs(
        &root_info,
        alg,
        &subject("Bench Issuing"),
        &Serial::random(&OsEntropy),
        &issuing.spki,
        now(),
        86400 * 365,
    )
    .expect("issuing tbs");
    IssuerInfo::from_cert_der(&devid_ca::sign::sign_tbs(&root, &tbs).expect("issuing")).expect("info")
}

/// The store's rows: random 20-octet serials, revocation times spread over a year, and a
/// mix of reasons (a quarter with none, a quarter unspecified).
struct Row {
    serial: Serial,
    revoked_at: UnixTime,
    reason: Option<RevocationReason>,
}

fn rows(t: UnixTime) -> Vec<Row> {
    let reasons = [
        None,
        Some(RevocationReason::Unspecified),
        Some(RevocationReason::KeyCompromise),
        Some(RevocationReason::CessationOfOperation),
    ];
    (0..ENTRIES)
        .map(|i| Row {
            serial: Serial::random(&OsEntropy),
            revoked_at: t.plus(-((i as i64 * 31) % (365 * 86400))),
            reason: reasons[i % reasons.len()],
        })
        .collect()
}

fn build(info: &IssuerInfo, signer: &dyn Signer, rows: &[Row], t: UnixTime, hint: bool) -> Vec<u8> {
    let params = CrlParams { crl_number: 1, this_update: t, next_update: t.plus(86400), idp: None };
    let mut b = CrlBuilder::new(info, signer.algorithm(), params).expect("builder");
    if hint {
        b.reserve(rows.len());
    }
    for r in rows {
        b.push(&CrlEntry { serial: &r.serial, revoked_at: r.revoked_at, reason: r.reason }).expect("push");
    }
    b.finish(signer).expect("finish")
}

fn bench(c: &mut Criterion) {
    let signer = MemSigner::new();
    let info = issuer(&signer);
    let t = now();
    let rows = rows(t);

    // One run split into its phases: encoding the entries, and finish (headers, SHA-256
    // for the signature, SHA-256 again for the verification, framing check).
    let params = CrlParams { crl_number: 1, this_update: t, next_update: t.plus(86400), idp: None };
    let started = Instant::now();
    let mut b = CrlBuilder::new(&info, signer.algorithm(), params).expect("builder");
    for r in &rows {
        b.push(&CrlEntry { serial: &r.serial, revoked_at: r.revoked_at, reason: r.reason }).expect("push");
    }
    let pushed = started.elapsed();
    let crl = b.finish(&signer).expect("finish");
    let total = started.elapsed();
    println!(
        "CRL of {ENTRIES} entries: {} bytes ({:.1} MiB, {:.1} bytes/entry); push {pushed:.0?}, finish {:.0?}",
        crl.len(),
        crl.len() as f64 / (1024.0 * 1024.0),
        crl.len() as f64 / ENTRIES as f64,
        total - pushed,
    );
    drop(crl);

    let mut g = c.benchmark_group("crl_1m");
    // ~0.1 s per iteration: flat sampling, 10 samples, a few seconds per benchmark.
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(ENTRIES as u64));
    g.bench_function("build+sign (aws-lc-rs)", |b| {
        b.iter(|| build(&info, &signer, black_box(&rows), t, false).len())
    });
    g.bench_function("build+sign, reserve hint (aws-lc-rs)", |b| {
        b.iter(|| build(&info, &signer, black_box(&rows), t, true).len())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
