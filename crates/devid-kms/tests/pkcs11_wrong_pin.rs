//! A wrong PIN refused by the token itself (`CKR_PIN_INCORRECT`).
//!
//! PKCS#11 login state belongs to the process: once any session in it has logged in,
//! `C_Login` answers `CKR_USER_ALREADY_LOGGED_IN` without looking at the PIN. This file
//! is its own test binary (its own process) with a single test, so nothing has logged in
//! to the token before it and the token really checks the PIN.

use devid_core::{ErrorKind, KeyRef};
use devid_kms::pkcs11::Pkcs11KeyManager;
use devid_kms::{KeyAlgorithm, KeyManager};
use devid_testkit::hsm;
use zeroize::Zeroizing;

#[test]
fn wrong_pin_is_refused_by_the_token() {
    let t = hsm::token();
    let wrong_pin = format!("{}9", t.pin);
    let m = Pkcs11KeyManager::new(&t.module, Zeroizing::new(wrong_pin.clone())).expect("module");
    let k = KeyRef::Pkcs11 { token: t.token.clone(), object: t.unique_label("wrong-pin") };
    for err in [
        m.check_login(&t.token).err(),
        m.exists(&k).err(),
        m.create_key(&k, KeyAlgorithm::EcdsaP256, false).err(),
    ] {
        let err = err.expect("a wrong PIN must be refused");
        assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("PKCS#11 login failed for token '{}'", t.token)), "{text}");
        // The token's own verdict, not the in-process comparison.
        assert!(text.contains("refused by the token"), "{text}");
        assert!(!text.contains(&wrong_pin), "{text}");
    }

    // The right PIN then works in the same process.
    let good = Pkcs11KeyManager::new(&t.module, Zeroizing::new(t.pin.clone())).expect("module");
    good.check_login(&t.token).expect("correct PIN");
    assert!(!good.exists(&k).expect("exists"));
    // And once logged in, the wrong PIN is still refused (by the in-process check).
    let err = m.check_login(&t.token).expect_err("still wrong");
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
}
