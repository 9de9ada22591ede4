//! Unit tests: one per check, with a software "TPM" (P-256 keys held in the test) that
//! activates the credential the way TPM2_ActivateCredential does (Part 3 §12.5).

use super::credential::{kdfa_sha256, kdfe_sha256};
use super::wire::{self, Reader, attr, put_tpm2b};
use super::*;
use aes::cipher::{AsyncStreamCipher, KeyIvInit};
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    date_time_ymd,
};

/// A deterministic entropy source for tests.
struct Counter(std::sync::atomic::AtomicU64);
impl Entropy for Counter {
    fn fill(&self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            let v = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *b = (v.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8;
        }
    }
}
fn rng() -> Counter {
    Counter(std::sync::atomic::AtomicU64::new(1))
}

const NOW: UnixTime = UnixTime(1_795_305_600); // 2026-11-22

const EK_ATTRS: u32 = attr::FIXED_TPM
    | attr::FIXED_PARENT
    | attr::SENSITIVE_DATA_ORIGIN
    | (1 << 7) // adminWithPolicy
    | attr::RESTRICTED
    | attr::DECRYPT;
const AK_ATTRS: u32 = attr::FIXED_TPM
    | attr::FIXED_PARENT
    | attr::SENSITIVE_DATA_ORIGIN
    | attr::USER_WITH_AUTH
    | attr::RESTRICTED
    | attr::SIGN;
const KEY_ATTRS: u32 =
    attr::FIXED_TPM | attr::FIXED_PARENT | attr::SENSITIVE_DATA_ORIGIN | attr::USER_WITH_AUTH | attr::SIGN;

fn xy(key: &p256::PublicKey) -> (Vec<u8>, Vec<u8>) {
    let p = key.to_encoded_point(false);
    (p.x().unwrap().to_vec(), p.y().unwrap().to_vec())
}

/// TPM2B_PUBLIC of an ECC P-256 key (Part 2 §12.2.4).
fn ecc_public(key: &p256::PublicKey, attrs: u32, name_alg: u16, ek: bool) -> Vec<u8> {
    let (x, y) = xy(key);
    let mut t = Vec::new();
    t.extend_from_slice(&wire::ALG_ECC.to_be_bytes());
    t.extend_from_slice(&name_alg.to_be_bytes());
    t.extend_from_slice(&attrs.to_be_bytes());
    put_tpm2b(&mut t, if ek { &[0x83; 32] } else { &[] }).unwrap();
    if ek {
        t.extend_from_slice(&[0x00, 0x06, 0x00, 0x80, 0x00, 0x43]); // AES-128-CFB
        t.extend_from_slice(&wire::ALG_NULL.to_be_bytes());
    } else {
        t.extend_from_slice(&wire::ALG_NULL.to_be_bytes());
        t.extend_from_slice(&wire::ALG_ECDSA.to_be_bytes());
        t.extend_from_slice(&wire::ALG_SHA256.to_be_bytes());
    }
    t.extend_from_slice(&wire::ECC_NIST_P256.to_be_bytes());
    t.extend_from_slice(&wire::ALG_NULL.to_be_bytes());
    put_tpm2b(&mut t, &x).unwrap();
    put_tpm2b(&mut t, &y).unwrap();
    let mut b = Vec::new();
    put_tpm2b(&mut b, &t).unwrap();
    b
}

fn secret_key(seed: u8) -> p256::SecretKey {
    let mut bytes = [seed; 32];
    bytes[0] = 0x11;
    p256::SecretKey::from_slice(&bytes).unwrap()
}

/// A vendor CA and an EK certificate for `ek` (TCG EK profile: EKU 2.23.133.8.1, a
/// critical SAN), valid 2025..2030.
struct Pki {
    anchor: Vec<u8>,
    ek_cert: Vec<u8>,
}

fn pki(ek: &p256::SecretKey, ca_seed: u8, not_after_year: i32) -> Pki {
    let ca_key = KeyPair::try_from(secret_key(ca_seed).to_pkcs8_der().unwrap().as_bytes()).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(rcgen::DnType::CommonName, format!("TPM vendor CA {ca_seed}"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    ca.not_before = date_time_ymd(2020, 1, 1);
    ca.not_after = date_time_ymd(2040, 1, 1);
    let anchor = ca.self_signed(&ca_key).unwrap().der().to_vec();
    let issuer = Issuer::new(ca, ca_key);

    let ek_pair = KeyPair::try_from(ek.to_pkcs8_der().unwrap().as_bytes()).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(vec![2, 23, 133, 8, 1])];
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyAgreement];
    p.not_before = date_time_ymd(2025, 1, 1);
    p.not_after = date_time_ymd(not_after_year, 1, 1);
    // subjectAltName: directoryName { 2.23.133.2.1 = "id:00001014" }, critical.
    let name = [
        &[
            0x30, 0x1c, 0xa4, 0x1a, 0x30, 0x18, 0x31, 0x16, 0x30, 0x14, 0x06, 0x05, 0x67, 0x81, 0x05, 0x02,
            0x01,
        ][..],
        &[0x0c, 0x0b],
        b"id:00001014",
    ]
    .concat();
    let mut san = CustomExtension::from_oid_content(&[2, 5, 29, 17], name);
    san.set_criticality(true);
    p.custom_extensions = vec![san];
    let ek_cert = p.signed_by(&ek_pair, &issuer).unwrap().der().to_vec();
    Pki { anchor, ek_cert }
}

/// Everything a device would send, made with software keys.
struct Device {
    ek: p256::SecretKey,
    ak: p256::ecdsa::SigningKey,
    key: p256::SecretKey,
    pki: Pki,
    ek_public: Vec<u8>,
    ak_public: Vec<u8>,
    key_public: Vec<u8>,
}

fn device() -> Device {
    let ek = secret_key(1);
    let ak_secret = secret_key(2);
    let key = secret_key(3);
    let pki = pki(&ek, 9, 2030);
    Device {
        ek_public: ecc_public(&ek.public_key(), EK_ATTRS, wire::ALG_SHA256, true),
        ak_public: ecc_public(&ak_secret.public_key(), AK_ATTRS, wire::ALG_SHA256, false),
        key_public: ecc_public(&key.public_key(), KEY_ATTRS, wire::ALG_SHA256, false),
        ak: p256::ecdsa::SigningKey::from(&ak_secret),
        ek,
        key,
        pki,
    }
}

fn policy(d: &Device) -> TpmPolicy {
    TpmPolicy { ek_anchors: vec![d.pki.anchor.clone()] }
}

/// TPM2_ActivateCredential in software (Part 3 §12.5; Part 1 §24): recover the seed with
/// the EK private key, check the HMAC, decrypt the credential.
fn activate(ek: &p256::SecretKey, ak_name: &[u8], ch: &CredentialChallenge) -> Option<Vec<u8>> {
    let point = wire::unwrap_tpm2b(&ch.encrypted_secret, "s").ok()?;
    let mut r = Reader::new(point);
    let (ex, ey) = (r.tpm2b("x").ok()?, r.tpm2b("y").ok()?);
    let eph = p256::PublicKey::from_sec1_bytes(&[&[4u8][..], ex, ey].concat()).ok()?;
    let z = (eph.to_projective() * *ek.to_nonzero_scalar()).to_affine().to_encoded_point(false);
    let (ekx, _) = xy(&ek.public_key());
    let seed = kdfe_sha256(z.x().unwrap(), b"IDENTITY\0", ex, &ekx, 256);
    let id = wire::unwrap_tpm2b(&ch.credential_blob, "id").ok()?;
    let mut r = Reader::new(id);
    let hmac = r.tpm2b("hmac").ok()?;
    let enc = r.bytes(r.remaining(), "enc").ok()?;
    let hkey = kdfa_sha256(&seed, b"INTEGRITY\0", &[], &[], 256);
    let mut mac = Hmac::<Sha256>::new_from_slice(&hkey).unwrap();
    mac.update(enc);
    mac.update(ak_name);
    mac.verify_slice(hmac).ok()?;
    let sym = kdfa_sha256(&seed, b"STORAGE\0", ak_name, &[], 128);
    let mut plain = enc.to_vec();
    cfb_mode::Decryptor::<aes::Aes128>::new_from_slices(&sym, &[0u8; 16]).unwrap().decrypt(&mut plain);
    Some(wire::unwrap_tpm2b(&plain, "secret").ok()?.to_vec())
}

/// TPMS_ATTEST of TPM2_Certify (Part 2 §10.12.12) wrapped in a TPM2B_ATTEST.
fn certify_info(magic: u32, ty: u16, extra: &[u8], name: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&magic.to_be_bytes());
    a.extend_from_slice(&ty.to_be_bytes());
    put_tpm2b(&mut a, &[0, 0x0b, 1, 2, 3]).unwrap();
    put_tpm2b(&mut a, extra).unwrap();
    a.extend_from_slice(&[0u8; 17 + 8]);
    put_tpm2b(&mut a, name).unwrap();
    put_tpm2b(&mut a, &[0, 0x0b, 4, 5, 6]).unwrap();
    let mut b = Vec::new();
    put_tpm2b(&mut b, &a).unwrap();
    b
}

/// TPMT_SIGNATURE (ECDSA, SHA-256) by `key` over the contents of a TPM2B_ATTEST.
fn sign(key: &p256::ecdsa::SigningKey, attest_tpm2b: &[u8]) -> Vec<u8> {
    let sig: p256::ecdsa::Signature = key.sign(&attest_tpm2b[2..]);
    let (r, s) = sig.split_bytes();
    let mut t = Vec::new();
    t.extend_from_slice(&wire::ALG_ECDSA.to_be_bytes());
    t.extend_from_slice(&wire::ALG_SHA256.to_be_bytes());
    put_tpm2b(&mut t, &r).unwrap();
    put_tpm2b(&mut t, &s).unwrap();
    t
}

fn key_name(key_public: &[u8]) -> Vec<u8> {
    name_of(&Public::from_tpm2b(key_public).unwrap()).unwrap()
}

fn spki_of(key: &p256::SecretKey) -> Vec<u8> {
    key.public_key().to_public_key_der().unwrap().as_bytes().to_vec()
}

/// start + software activation: the pending state and the activated secret.
fn started(d: &Device) -> (PendingTpm, Vec<u8>) {
    let (pending, ch) = start(&policy(d), &d.pki.ek_cert, &d.ek_public, &d.ak_public, &rng(), NOW).unwrap();
    let secret = activate(&d.ek, &pending.ak_name, &ch).expect("activation");
    (pending, secret)
}

#[test]
fn start_then_finish_accepts_a_good_device() {
    let d = device();
    let (pending, secret) = started(&d);
    assert_eq!(secret.len(), SECRET_LEN);
    let ek_spki = Certificate::from_der(&d.pki.ek_cert).unwrap().tbs_certificate.subject_public_key_info;
    let h = Sha256::digest(ek_spki.to_der().unwrap());
    assert_eq!(pending.device_id, format!("tpm-{}", hex::encode(&h[..16])));
    assert_eq!(pending.summary["ek_type"], "ecc-p256");
    assert_eq!(pending.summary["ak_name"], hex::encode(&pending.ak_name));
    assert!(pending.summary["ek_issuer"].as_str().unwrap().contains("TPM vendor CA 9"));

    // The stored JSON round-trips and holds no secret.
    let json = serde_json::to_string(&pending).unwrap();
    assert!(!json.contains(&hex::encode(&secret)));
    let pending: PendingTpm = serde_json::from_str(&json).unwrap();

    let binding = crate::binding(&[7; 32], b"csr");
    let info =
        certify_info(wire::TPM_GENERATED_VALUE, wire::ST_ATTEST_CERTIFY, &binding, &key_name(&d.key_public));
    let sig = sign(&d.ak, &info);
    let got = finish(&pending, &secret, &d.key_public, &info, &sig, &binding, &spki_of(&d.key)).unwrap();
    assert_eq!(got.device_id, pending.device_id);
    assert_eq!(got.summary["key_name"], hex::encode(key_name(&d.key_public)));
}

#[test]
fn start_refuses_an_untrusted_anchor() {
    let d = device();
    let other = pki(&d.ek, 10, 2030);
    let e = start(
        &TpmPolicy { ek_anchors: vec![other.anchor] },
        &d.pki.ek_cert,
        &d.ek_public,
        &d.ak_public,
        &rng(),
        NOW,
    )
    .unwrap_err();
    assert_eq!(e.failure, Failure::UntrustedChain, "{e}");
    let e =
        start(&TpmPolicy::default(), &d.pki.ek_cert, &d.ek_public, &d.ak_public, &rng(), NOW).unwrap_err();
    assert_eq!(e.failure, Failure::UntrustedChain);
}

#[test]
fn start_refuses_an_expired_or_future_ek_certificate() {
    let d = device();
    let p = pki(&d.ek, 9, 2026);
    let e = start(
        &TpmPolicy { ek_anchors: vec![p.anchor.clone()] },
        &p.ek_cert,
        &d.ek_public,
        &d.ak_public,
        &rng(),
        NOW,
    )
    .unwrap_err();
    assert_eq!(e.failure, Failure::Expired, "{e}");
    let e = start(&policy(&d), &d.pki.ek_cert, &d.ek_public, &d.ak_public, &rng(), UnixTime(1_600_000_000))
        .unwrap_err();
    assert_eq!(e.failure, Failure::Expired, "{e}");
}

#[test]
fn start_refuses_an_ek_public_that_is_not_the_certified_key() {
    let d = device();
    let other = ecc_public(&secret_key(5).public_key(), EK_ATTRS, wire::ALG_SHA256, true);
    let e = start(&policy(&d), &d.pki.ek_cert, &other, &d.ak_public, &rng(), NOW).unwrap_err();
    assert_eq!(e.failure, Failure::UntrustedChain, "{e}");
}

#[test]
fn start_refuses_an_ek_that_is_not_a_restricted_decryption_key() {
    let d = device();
    let ek = ecc_public(&d.ek.public_key(), EK_ATTRS & !attr::RESTRICTED, wire::ALG_SHA256, true);
    let e = start(&policy(&d), &d.pki.ek_cert, &ek, &d.ak_public, &rng(), NOW).unwrap_err();
    assert_eq!(e.failure, Failure::BadAttributes, "{e}");
    let ek = ecc_public(&d.ek.public_key(), EK_ATTRS, wire::ALG_SHA1, true);
    let e = start(&policy(&d), &d.pki.ek_cert, &ek, &d.ak_public, &rng(), NOW).unwrap_err();
    assert_eq!(e.failure, Failure::UnsupportedAlgorithm, "{e}");
}

#[test]
fn start_refuses_ak_attributes_one_by_one() {
    let d = device();
    let ak = secret_key(2).public_key();
    for (what, attrs) in [
        ("fixedTPM", AK_ATTRS & !attr::FIXED_TPM),
        ("fixedParent", AK_ATTRS & !attr::FIXED_PARENT),
        ("sensitiveDataOrigin", AK_ATTRS & !attr::SENSITIVE_DATA_ORIGIN),
        ("restricted", AK_ATTRS & !attr::RESTRICTED),
        ("sign", AK_ATTRS & !attr::SIGN),
        ("decrypt", AK_ATTRS | attr::DECRYPT),
    ] {
        let ak_public = ecc_public(&ak, attrs, wire::ALG_SHA256, false);
        let e = start(&policy(&d), &d.pki.ek_cert, &d.ek_public, &ak_public, &rng(), NOW).unwrap_err();
        assert_eq!(e.failure, Failure::BadAttributes, "{what}: {e}");
    }
}

#[test]
fn start_refuses_malformed_inputs() {
    let d = device();
    let p = policy(&d);
    assert_eq!(
        start(&p, b"not a cert", &d.ek_public, &d.ak_public, &rng(), NOW).unwrap_err().failure,
        Failure::Malformed
    );
    for n in 0..d.ek_public.len() {
        let e = start(&p, &d.pki.ek_cert, &d.ek_public[..n], &d.ak_public, &rng(), NOW).unwrap_err();
        assert_eq!(e.failure, Failure::Malformed);
    }
    for n in 0..d.ak_public.len() {
        let e = start(&p, &d.pki.ek_cert, &d.ek_public, &d.ak_public[..n], &rng(), NOW).unwrap_err();
        assert_eq!(e.failure, Failure::Malformed);
    }
    for n in 0..d.pki.ek_cert.len() {
        assert!(start(&p, &d.pki.ek_cert[..n], &d.ek_public, &d.ak_public, &rng(), NOW).is_err());
    }
}

#[test]
fn the_credential_is_bound_to_the_ak_name() {
    let d = device();
    let (_, ch) = start(&policy(&d), &d.pki.ek_cert, &d.ek_public, &d.ak_public, &rng(), NOW).unwrap();
    let other_name = key_name(&d.key_public);
    assert!(activate(&d.ek, &other_name, &ch).is_none(), "another object's name must fail the HMAC");
    assert!(activate(&secret_key(6), &key_name(&d.ak_public), &ch).is_none(), "another EK must fail");
}

struct Enroll {
    pending: PendingTpm,
    secret: Vec<u8>,
    key_public: Vec<u8>,
    info: Vec<u8>,
    sig: Vec<u8>,
    binding: [u8; 32],
    spki: Vec<u8>,
}

impl Enroll {
    fn new(d: &Device) -> Enroll {
        let (pending, secret) = started(d);
        let binding = crate::binding(&[7; 32], b"csr");
        let info = certify_info(
            wire::TPM_GENERATED_VALUE,
            wire::ST_ATTEST_CERTIFY,
            &binding,
            &key_name(&d.key_public),
        );
        let sig = sign(&d.ak, &info);
        Enroll {
            pending,
            secret,
            key_public: d.key_public.clone(),
            info,
            sig,
            binding,
            spki: spki_of(&d.key),
        }
    }
    fn run(&self) -> Result<Attested, AttestError> {
        finish(
            &self.pending,
            &self.secret,
            &self.key_public,
            &self.info,
            &self.sig,
            &self.binding,
            &self.spki,
        )
    }
}

#[test]
fn finish_refuses_a_wrong_secret() {
    let d = device();
    let mut en = Enroll::new(&d);
    en.secret[0] ^= 1;
    assert_eq!(en.run().unwrap_err().failure, Failure::BadProof);
    en.secret.truncate(5);
    assert_eq!(en.run().unwrap_err().failure, Failure::BadProof);
}

#[test]
fn finish_refuses_a_key_that_can_leave_the_tpm() {
    let d = device();
    for attrs in [KEY_ATTRS & !attr::FIXED_TPM, KEY_ATTRS & !attr::FIXED_PARENT] {
        let mut en = Enroll::new(&d);
        en.key_public = ecc_public(&d.key.public_key(), attrs, wire::ALG_SHA256, false);
        en.info = certify_info(
            wire::TPM_GENERATED_VALUE,
            wire::ST_ATTEST_CERTIFY,
            &en.binding,
            &key_name(&en.key_public),
        );
        en.sig = sign(&d.ak, &en.info);
        assert_eq!(en.run().unwrap_err().failure, Failure::BadAttributes);
    }
}

#[test]
fn finish_refuses_a_key_that_is_not_the_csr_key() {
    let d = device();
    let mut en = Enroll::new(&d);
    en.spki = spki_of(&secret_key(7));
    assert_eq!(en.run().unwrap_err().failure, Failure::BindingMismatch);
}

#[test]
fn finish_refuses_another_binding() {
    let d = device();
    let mut en = Enroll::new(&d);
    en.binding = crate::binding(&[8; 32], b"csr");
    assert_eq!(en.run().unwrap_err().failure, Failure::BindingMismatch);
}

#[test]
fn finish_refuses_a_certification_of_another_object() {
    let d = device();
    let mut en = Enroll::new(&d);
    en.info = certify_info(
        wire::TPM_GENERATED_VALUE,
        wire::ST_ATTEST_CERTIFY,
        &en.binding,
        &key_name(&d.ak_public),
    );
    en.sig = sign(&d.ak, &en.info);
    assert_eq!(en.run().unwrap_err().failure, Failure::BindingMismatch);
}

#[test]
fn finish_refuses_a_signature_not_by_the_ak() {
    let d = device();
    let mut en = Enroll::new(&d);
    en.sig = sign(&p256::ecdsa::SigningKey::from(&d.key), &en.info);
    assert_eq!(en.run().unwrap_err().failure, Failure::BadProof);
    // A signed attestation altered afterwards.
    let mut en = Enroll::new(&d);
    let last = en.info.len() - 1;
    en.info[last] ^= 1;
    assert_eq!(en.run().unwrap_err().failure, Failure::BadProof);
}

#[test]
fn finish_refuses_attestations_that_are_not_tpm_generated_certify() {
    let d = device();
    let mut en = Enroll::new(&d);
    en.info = certify_info(0xdead_beef, wire::ST_ATTEST_CERTIFY, &en.binding, &key_name(&d.key_public));
    en.sig = sign(&d.ak, &en.info);
    assert_eq!(en.run().unwrap_err().failure, Failure::Malformed);
    en.info = certify_info(wire::TPM_GENERATED_VALUE, 0x8018, &en.binding, &key_name(&d.key_public));
    en.sig = sign(&d.ak, &en.info);
    assert_eq!(en.run().unwrap_err().failure, Failure::Malformed);
}

#[test]
fn finish_never_panics_on_truncated_or_mutated_evidence() {
    let d = device();
    let en = Enroll::new(&d);
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..3000 {
        let mut e = Enroll::new_copy(&en);
        let field = match i % 4 {
            0 => &mut e.key_public,
            1 => &mut e.info,
            2 => &mut e.sig,
            _ => &mut e.spki,
        };
        if next() % 2 == 0 {
            let n = (next() as usize) % field.len();
            field.truncate(n);
        } else {
            let at = (next() as usize) % field.len();
            field[at] ^= (next() as u8) | 1;
        }
        assert!(e.run().is_err(), "mutation {i} accepted");
    }
}

impl Enroll {
    fn new_copy(o: &Enroll) -> Enroll {
        Enroll {
            pending: o.pending.clone(),
            secret: o.secret.clone(),
            key_public: o.key_public.clone(),
            info: o.info.clone(),
            sig: o.sig.clone(),
            binding: o.binding,
            spki: o.spki.clone(),
        }
    }
}
