//! `Signer::sign` over a TBSCertificate-sized (300-byte) message: a software key
//! (aws-lc-rs), the `p256` crate for reference, and a key on SoftHSM2 through PKCS#11.
//!
//! The PKCS#11 group needs the test token (see `devid_testkit::hsm::token`):
//! `cargo bench -p devid-kms --bench sign -- --warm-up-time 1 --measurement-time 3`

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use criterion::{Criterion, criterion_group, criterion_main};
use devid_core::KeyRef;
use devid_kms::pkcs11::Pkcs11KeyManager;
use devid_kms::soft::{Kek, SoftKeyStore};
use devid_kms::{KeyAlgorithm, KeyManager, verify_p256_sha256};
use zeroize::Zeroizing;

fn message() -> Vec<u8> {
    (0..300u32).map(|i| (i * 31 + 7) as u8).collect()
}

fn soft_and_reference(c: &mut Criterion) {
    let msg = message();
    let mut g = c.benchmark_group("sign_p256_sha256_300B");

    let dir = tempfile::tempdir().expect("tempdir");
    let mut kek = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(kek.as_mut_slice()).expect("random");
    let store = SoftKeyStore::open(dir.path(), Kek::Key(kek)).expect("open");
    let soft = store
        .create_key(&KeyRef::soft("bench").expect("ref"), KeyAlgorithm::EcdsaP256, false)
        .expect("create");
    verify_p256_sha256(soft.public_key_spki_der(), &msg, &soft.sign(&msg).expect("sign")).expect("verifies");
    g.bench_function("soft (aws-lc-rs)", |b| b.iter(|| soft.sign(black_box(&msg)).expect("sign")));

    // The p256 crate (RFC 6979 deterministic ECDSA), DER output like the others.
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &aws_lc_rs::rand::SystemRandom::new())
            .expect("generate");
    let sk = {
        use p256::pkcs8::DecodePrivateKey;
        p256::ecdsa::SigningKey::from_pkcs8_der(pkcs8.as_ref()).expect("parse")
    };
    g.bench_function("p256 crate (reference)", |b| {
        b.iter(|| {
            use p256::ecdsa::signature::Signer as _;
            let sig: p256::ecdsa::Signature = sk.sign(black_box(&msg));
            sig.to_der()
        })
    });
    g.finish();
}

fn pkcs11(c: &mut Criterion) {
    // Panics with instructions when there is no token.
    let t = devid_testkit::hsm::token();
    let msg = message();
    let m = Pkcs11KeyManager::new(&t.module, Zeroizing::new(t.pin.clone())).expect("module");
    // A fixed label, replaced on each run, so benches do not pile up objects on the token.
    let k = KeyRef::Pkcs11 { token: t.token.clone(), object: "devid-bench-sign".into() };
    let signer = m.create_key(&k, KeyAlgorithm::EcdsaP256, true).expect("create");
    verify_p256_sha256(signer.public_key_spki_der(), &msg, &signer.sign(&msg).expect("sign"))
        .expect("verifies");

    let mut g = c.benchmark_group("sign_p256_sha256_300B");
    g.bench_function("pkcs11 (SoftHSM2)", |b| b.iter(|| signer.sign(black_box(&msg)).expect("sign")));
    g.finish();
}

criterion_group!(benches, soft_and_reference, pkcs11);
criterion_main!(benches);
