//! The issuance signing path, per certificate: verify the device's CSR, build the leaf
//! TBSCertificate from the profile, sign it through the KMS, verify the signature and
//! assemble the certificate. With the issuing key in the software key store (aws-lc-rs)
//! and on a SoftHSM2 token (PKCS#11).
//!
//! `bash tests/run.sh` prepares the token; to run the bench alone with a token exported:
//! `cargo bench -p devid-ca --bench issue -- --warm-up-time 1 --measurement-time 5`

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use devid_ca::profile::{CaSubject, IssuerInfo, LeafProfile, PublicUrls};
use devid_core::{CaId, DeviceId, KeyRef, OsEntropy, Serial, UnixTime};
use devid_kms::pkcs11::Pkcs11KeyManager;
use devid_kms::soft::{Kek, SoftKeyStore};
use devid_kms::{KeyAlgorithm, KeyManager, Signer};
use zeroize::Zeroizing;

fn now() -> UnixTime {
    UnixTime(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
    )
}

/// An issuing CA certificate for `issuing`, signed by `root`.
fn issuer(root: &dyn Signer, issuing: &dyn Signer) -> IssuerInfo {
    let alg = root.algorithm();
    let subject = |cn: &str| CaSubject { common_name: cn.into(), organization: "bench".into() };
    let root_tbs = devid_ca::profile::root_tbs(
        alg,
        &subject("Bench Root"),
        &Serial::random(&OsEntropy),
        root.public_key_spki_der(),
        now(),
        86400 * 3650,
    )
    .expect("root tbs");
    let root_der = devid_ca::sign::sign_tbs(root, &root_tbs).expect("root");
    let root_info = IssuerInfo::from_cert_der(&root_der).expect("root info");
    let tbs = devid_ca::profile::issuing_tbs(
        &root_info,
        alg,
        &subject("Bench Issuing"),
        &Serial::random(&OsEntropy),
        issuing.public_key_spki_der(),
        now(),
        86400 * 365,
    )
    .expect("issuing tbs");
    IssuerInfo::from_cert_der(&devid_ca::sign::sign_tbs(root, &tbs).expect("issuing")).expect("info")
}

fn issue_one(
    info: &IssuerInfo,
    profile: &LeafProfile,
    signer: &dyn Signer,
    device: &DeviceId,
    csr: &[u8],
) -> Vec<u8> {
    let csr = devid_ca::csr::parse_and_verify(csr).expect("csr");
    let (tbs, _) = devid_ca::profile::leaf_tbs(
        info,
        signer.algorithm(),
        profile,
        &Serial::random(&OsEntropy),
        device,
        &csr.spki_der,
        now(),
    )
    .expect("tbs");
    devid_ca::sign::sign_tbs(signer, &tbs).expect("sign")
}

fn bench(c: &mut Criterion) {
    let (_key, csr) = devid_testkit::pki::csr_p256("bench-device");
    let device = DeviceId::new("bench-device").expect("id");
    let profile = LeafProfile {
        validity_secs: 86400,
        backdate_secs: 60,
        device_uri_prefix: devid_ca::profile::DEFAULT_DEVICE_URI_PREFIX.into(),
        urls: PublicUrls::for_issuer(
            &url::Url::parse("https://ca.example.net").expect("url"),
            &CaId::new("issuing-1").expect("id"),
        ),
        crl_shards: 1,
    };

    let dir = tempfile::tempdir().expect("tmp");
    let mut kek = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(kek.as_mut_slice()).expect("rand");
    let soft = SoftKeyStore::open(dir.path(), Kek::Key(kek)).expect("soft store");
    let root = soft
        .create_key(&KeyRef::soft("root").expect("ref"), KeyAlgorithm::EcdsaP256, false)
        .expect("root key");
    let soft_issuing: Arc<dyn Signer> =
        soft.create_key(&KeyRef::soft("issuing").expect("ref"), KeyAlgorithm::EcdsaP256, false).expect("key");

    let t = devid_testkit::hsm::token();
    let hsm = Pkcs11KeyManager::new(&t.module, Zeroizing::new(t.pin.clone())).expect("PKCS#11 module");
    let hsm_ref: KeyRef = format!("pkcs11:token={};object=bench-issuing", t.token).parse().expect("ref");
    let hsm_issuing: Arc<dyn Signer> =
        hsm.create_key(&hsm_ref, KeyAlgorithm::EcdsaP256, true).expect("HSM key");

    let mut g = c.benchmark_group("issue_leaf");
    g.throughput(Throughput::Elements(1));
    for (name, signer) in [("soft (aws-lc-rs)", soft_issuing), ("pkcs11 (SoftHSM2)", hsm_issuing)] {
        let info = issuer(root.as_ref(), signer.as_ref());
        g.bench_function(name, |b| {
            b.iter(|| issue_one(&info, &profile, signer.as_ref(), &device, black_box(csr.as_bytes())))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
