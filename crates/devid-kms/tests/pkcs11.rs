//! The PKCS#11 key manager against a real SoftHSM2 token (prepared by `tests/run.sh`; see
//! `devid_testkit::hsm::token`). Tests share the token, so each uses its own labels.

use std::fs;
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use devid_core::{ErrorKind, KeyRef};
use devid_kms::pkcs11::Pkcs11KeyManager;
use devid_kms::{KeyAlgorithm, KeyManager, Kms, KmsError, SignatureAlgorithm, verify_p256_sha256};
use devid_testkit::hsm::{self, HsmToken};
use zeroize::Zeroizing;

const P256: KeyAlgorithm = KeyAlgorithm::EcdsaP256;

/// The tests take the shared token one at a time. SoftHSM2's file object store is not safe
/// for one test's C_GenerateKeyPair beside another's work on the same token in the same
/// process: a wrong-PIN login next to it gave CKR_GENERAL_ERROR (2 runs in 15), and so did
/// the other tests' creating, replacing and looking up keys (CKR_TEMPLATE_INCONSISTENT or
/// CKR_GENERAL_ERROR, 1 run in 30). Concurrency within one manager is still tested, by
/// `concurrent_signing`'s threads. The whole file takes well under a second.
static TOKEN_USE: Mutex<()> = Mutex::new(());

fn alone() -> MutexGuard<'static, ()> {
    TOKEN_USE.lock().unwrap_or_else(PoisonError::into_inner)
}

fn manager(t: &HsmToken) -> Pkcs11KeyManager {
    Pkcs11KeyManager::new(&t.module, Zeroizing::new(t.pin.clone())).expect("load the module")
}

fn key(t: &HsmToken, object: &str) -> KeyRef {
    KeyRef::Pkcs11 { token: t.token.clone(), object: object.to_string() }
}

/// A message the size of a TBSCertificate.
fn tbs() -> Vec<u8> {
    (0..300u32).map(|i| (i * 13 + 1) as u8).collect()
}

/// Verify with `openssl dgst -sha256 -verify`, the independent verifier.
fn openssl_verifies(spki_der: &[u8], msg: &[u8], sig_der: &[u8]) -> bool {
    use p256::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = p256::PublicKey::from_public_key_der(spki_der)
        .expect("SPKI")
        .to_public_key_pem(LineEnding::LF)
        .expect("PEM");
    fs::write(dir.path().join("pub.pem"), pem).expect("write");
    fs::write(dir.path().join("sig.der"), sig_der).expect("write");
    fs::write(dir.path().join("msg"), msg).expect("write");
    let out = Command::new("/usr/bin/openssl")
        .current_dir(dir.path())
        .args(["dgst", "-sha256", "-verify", "pub.pem", "-signature", "sig.der", "msg"])
        .output()
        .expect("run /usr/bin/openssl (apt-get install -y openssl)");
    let ok = out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verified OK");
    if !ok {
        eprintln!(
            "openssl: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ok
}

#[test]
fn create_sign_verify_with_aws_lc_and_openssl() {
    let _token = alone();
    let t = hsm::token();
    let m = manager(&t);
    let k = key(&t, &t.unique_label("ca"));
    assert!(!m.exists(&k).expect("exists"));
    let signer = m.create_key(&k, P256, false).expect("create");
    assert!(m.exists(&k).expect("exists"));
    assert_eq!(signer.key_ref(), &k);
    assert_eq!(signer.algorithm(), SignatureAlgorithm::EcdsaP256Sha256);

    let msg = tbs();
    for _ in 0..3 {
        let sig = signer.sign(&msg).expect("sign");
        verify_p256_sha256(signer.public_key_spki_der(), &msg, &sig).expect("verifies");
        assert!(openssl_verifies(signer.public_key_spki_der(), &msg, &sig));
    }
    let sig = signer.sign(&msg).expect("sign");
    assert!(!openssl_verifies(signer.public_key_spki_der(), b"something else", &sig));

    // A signer looked up later (by a new manager) has the same public key.
    let other = manager(&t);
    let s2 = other.signer(&k).expect("signer");
    assert_eq!(s2.public_key_spki_der(), signer.public_key_spki_der());
    let sig = s2.sign(&msg).expect("sign");
    verify_p256_sha256(signer.public_key_spki_der(), &msg, &sig).expect("verifies");
    assert!(openssl_verifies(signer.public_key_spki_der(), &msg, &sig));
}

/// The key template: what the token actually stored, read back with raw cryptoki.
#[test]
fn private_key_is_sensitive_and_not_extractable() {
    let _token = alone();
    let t = hsm::token();
    let m = manager(&t);
    let label = t.unique_label("attrs");
    m.create_key(&key(&t, &label), P256, false).expect("create");

    let ctx = Pkcs11::new(&t.module).expect("module");
    // Already initialised by the manager in this process: that is fine.
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| ctx.get_token_info(*s).expect("info").label().trim() == t.token)
        .expect("token");
    let session = ctx.open_ro_session(slot).expect("session");
    match session.login(UserType::User, Some(&AuthPin::from(t.pin.as_str()))) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    let find = |class| {
        session
            .find_objects(&[Attribute::Class(class), Attribute::Label(label.as_bytes().to_vec())])
            .expect("find")
    };
    let (privs, pubs) = (find(ObjectClass::PRIVATE_KEY), find(ObjectClass::PUBLIC_KEY));
    assert_eq!((privs.len(), pubs.len()), (1, 1));
    let attrs = session
        .get_attributes(
            privs[0],
            &[
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Sign,
                AttributeType::Id,
            ],
        )
        .expect("attributes");
    let mut id = None;
    for a in attrs {
        match a {
            Attribute::Token(v) | Attribute::Private(v) | Attribute::Sensitive(v) | Attribute::Sign(v) => {
                assert!(v, "{a:?}")
            }
            Attribute::Extractable(v) => assert!(!v, "extractable"),
            Attribute::Id(v) => id = Some(v),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(id.expect("CKA_ID").len(), 16);
    let pub_attrs = session
        .get_attributes(pubs[0], &[AttributeType::Token, AttributeType::Verify, AttributeType::EcParams])
        .expect("attributes");
    assert!(pub_attrs.contains(&Attribute::Token(true)));
    assert!(pub_attrs.contains(&Attribute::Verify(true)));
    assert!(
        pub_attrs
            .contains(&Attribute::EcParams(vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]))
    );
}

#[test]
fn create_twice_is_exists_and_replace_replaces() {
    let _token = alone();
    let t = hsm::token();
    let m = manager(&t);
    let k = key(&t, &t.unique_label("twice"));
    let first = m.create_key(&k, P256, false).expect("create");
    let err = m.create_key(&k, P256, false).err().expect("exists");
    assert!(matches!(err, KmsError::Exists { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(m.signer(&k).expect("signer").public_key_spki_der(), first.public_key_spki_der());

    let second = m.create_key(&k, P256, true).expect("replace");
    assert_ne!(second.public_key_spki_der(), first.public_key_spki_der());
    let looked_up = m.signer(&k).expect("signer");
    assert_eq!(looked_up.public_key_spki_der(), second.public_key_spki_der());
    let msg = tbs();
    let sig = looked_up.sign(&msg).expect("sign");
    verify_p256_sha256(second.public_key_spki_der(), &msg, &sig).expect("verifies");

    // The old signer's key is gone: it must not sign with the new key.
    let err = first.sign(&msg).expect_err("old key destroyed");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[test]
fn unknown_object_and_unknown_token() {
    let _token = alone();
    let t = hsm::token();
    let m = manager(&t);
    let k = key(&t, &t.unique_label("absent"));
    assert!(!m.exists(&k).expect("exists"));
    let err = m.signer(&k).err().expect("absent");
    assert!(matches!(err, KmsError::NotFound { .. }), "{err:?}");

    let label = "no-such-token-devid";
    let k = KeyRef::Pkcs11 { token: label.into(), object: "x".into() };
    for err in [m.signer(&k).err(), m.exists(&k).err(), m.create_key(&k, P256, false).err()] {
        let err = err.expect("unknown token");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains(label), "{err}");
    }
    assert_eq!(m.check_login(label).expect_err("unknown token").kind(), ErrorKind::NotFound);
}

/// In this process the token is already logged in (another manager holds a session), so
/// C_Login answers CKR_USER_ALREADY_LOGGED_IN whatever the PIN: the manager must compare
/// PINs itself. (The token's own refusal, CKR_PIN_INCORRECT, is tested in a fresh process
/// by tests/pkcs11_wrong_pin.rs.)
#[test]
fn wrong_pin_when_the_token_is_already_logged_in() {
    let _token = alone();
    let t = hsm::token();
    let good = manager(&t);
    good.check_login(&t.token).expect("correct PIN");
    let k = key(&t, &t.unique_label("pin"));
    good.create_key(&k, P256, false).expect("create");

    let wrong_pin = format!("{}9", t.pin);
    let bad = Pkcs11KeyManager::new(&t.module, Zeroizing::new(wrong_pin.clone())).expect("module");
    assert!(!format!("{bad:?}").contains(&wrong_pin));
    for err in [bad.signer(&k).err(), bad.exists(&k).err(), bad.check_login(&t.token).err()] {
        let err = err.expect("wrong PIN");
        assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("PKCS#11 login failed for token '{}'", t.token)), "{text}");
        assert!(!text.contains(&wrong_pin), "{text}");
    }
    // The good manager is unaffected.
    assert!(good.exists(&k).expect("exists"));
    good.signer(&k).expect("signer").sign(b"x").expect("sign");
}

#[test]
fn concurrent_signing() {
    let _token = alone();
    let t = hsm::token();
    let kms = Kms::new().with_pkcs11(manager(&t));
    let k = key(&t, &t.unique_label("threads"));
    let signer = kms.create_key(&k, P256, false).expect("create");
    let msg = Arc::new(tbs());
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (s, msg) = (signer.clone(), msg.clone());
            std::thread::spawn(move || (0..10).map(|_| s.sign(&msg).expect("sign")).collect::<Vec<_>>())
        })
        .collect();
    for th in threads {
        for sig in th.join().expect("thread") {
            verify_p256_sha256(signer.public_key_spki_der(), &msg, &sig).expect("verifies");
        }
    }
    // The router sends soft: references nowhere.
    let soft = KeyRef::soft("x").expect("ref");
    assert!(matches!(kms.signer(&soft), Err(KmsError::NotConfigured { .. })));
}

#[test]
fn soft_references_are_not_configured() {
    let _token = alone();
    let t = hsm::token();
    let m = manager(&t);
    let soft = KeyRef::soft("x").expect("ref");
    assert!(matches!(m.create_key(&soft, P256, false), Err(KmsError::NotConfigured { .. })));
    assert!(matches!(m.exists(&soft), Err(KmsError::NotConfigured { .. })));
}
