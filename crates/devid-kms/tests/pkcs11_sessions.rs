//! Signers survive the token logging the process out.
//!
//! When the last session of a process on a token closes, SoftHSM2 logs the process out
//! and renumbers object handles: a cached private-key handle then answers
//! `CKR_OBJECT_HANDLE_INVALID`. This is its own test binary (its own process) with a single
//! test, so no other test keeps a session open.

use devid_core::{ErrorKind, KeyRef};
use devid_kms::pkcs11::Pkcs11KeyManager;
use devid_kms::{KeyAlgorithm, KeyManager, verify_p256_sha256};
use devid_testkit::hsm;
use zeroize::Zeroizing;

#[test]
fn signer_survives_all_sessions_closing() {
    let t = hsm::token();
    let m = Pkcs11KeyManager::new(&t.module, Zeroizing::new(t.pin.clone())).expect("module");
    let k = KeyRef::Pkcs11 { token: t.token.clone(), object: t.unique_label("sessions") };
    let signer = m.create_key(&k, KeyAlgorithm::EcdsaP256, false).expect("create");
    let sig = signer.sign(b"before").expect("sign");
    verify_p256_sha256(signer.public_key_spki_der(), b"before", &sig).expect("verifies");

    m.close_idle_sessions();
    let sig = signer.sign(b"after").expect("sign after the token logged us out");
    verify_p256_sha256(signer.public_key_spki_der(), b"after", &sig).expect("verifies");

    // A replaced key is not silently swapped in: its CKA_ID differs.
    m.close_idle_sessions();
    let replacement = m.create_key(&k, KeyAlgorithm::EcdsaP256, true).expect("replace");
    let err = signer.sign(b"old").expect_err("the old key is gone");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let sig = replacement.sign(b"new").expect("sign");
    verify_p256_sha256(replacement.public_key_spki_der(), b"new", &sig).expect("verifies");
}
