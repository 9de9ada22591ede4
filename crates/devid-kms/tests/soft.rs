//! The software key store, through its public API.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use devid_core::{ErrorKind, KeyRef};
use devid_kms::soft::{Kek, SoftKeyStore};
use devid_kms::{KeyAlgorithm, KeyManager, Kms, KmsError, SignatureAlgorithm, verify_p256_sha256};
use zeroize::Zeroizing;

const P256: KeyAlgorithm = KeyAlgorithm::EcdsaP256;

fn key(name: &str) -> KeyRef {
    KeyRef::soft(name).expect("valid name")
}

fn raw_kek(byte: u8) -> Kek {
    Kek::Key(Zeroizing::new([byte; 32]))
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

/// A message the size of a TBSCertificate.
fn tbs() -> Vec<u8> {
    (0..300u32).map(|i| (i * 7 + 3) as u8).collect()
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
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SoftKeyStore::open(dir.path(), raw_kek(1)).expect("open");
    let k = key("issuing-ca");
    assert!(!store.exists(&k).expect("exists"));
    let signer = store.create_key(&k, P256, false).expect("create");
    assert!(store.exists(&k).expect("exists"));
    assert_eq!(signer.key_ref(), &k);
    assert_eq!(signer.algorithm(), SignatureAlgorithm::EcdsaP256Sha256);

    let msg = tbs();
    let sig = signer.sign(&msg).expect("sign");
    verify_p256_sha256(signer.public_key_spki_der(), &msg, &sig).expect("verifies");
    assert!(openssl_verifies(signer.public_key_spki_der(), &msg, &sig));
    // The negative control: openssl does check.
    assert!(!openssl_verifies(signer.public_key_spki_der(), b"another message", &sig));
    assert!(matches!(
        verify_p256_sha256(signer.public_key_spki_der(), b"another message", &sig),
        Err(KmsError::BadSignature)
    ));

    // The signer handed out later is the cached one, with the same key.
    let again = store.signer(&k).expect("signer");
    assert_eq!(again.public_key_spki_der(), signer.public_key_spki_der());
}

#[test]
fn file_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SoftKeyStore::open(dir.path(), raw_kek(2)).expect("open");
    let signer = store.create_key(&key("fmt"), P256, false).expect("create");
    let path = dir.path().join("fmt.key");
    assert_eq!(store.key_path("fmt"), path);
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&path).expect("read")).expect("json");
    assert_eq!(v["format"], "devid-soft-key/1");
    assert_eq!(v["algorithm"], "ecdsa-p256");
    assert_eq!(v["kdf"], serde_json::json!({"type": "raw"}));
    assert_eq!(B64.decode(v["nonce"].as_str().expect("nonce")).expect("b64").len(), 12);
    let spki = B64.decode(v["public_key"].as_str().expect("pk")).expect("b64");
    assert_eq!(spki, signer.public_key_spki_der());
    // Nothing else is left in the directory (no temporary files).
    let names: Vec<_> = fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    assert_eq!(names, ["fmt.key"]);
}

#[test]
fn passphrase_with_production_argon2_params() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kek = || Kek::Passphrase(Zeroizing::new("correct horse battery staple".into()));
    let store = SoftKeyStore::open(dir.path(), kek()).expect("open");
    let k = key("owasp");
    let signer = store.create_key(&k, P256, false).expect("create");
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(store.key_path("owasp")).expect("read")).expect("json");
    assert_eq!(v["kdf"]["type"], "argon2id");
    assert_eq!((v["kdf"]["m_cost"].as_u64(), v["kdf"]["t_cost"].as_u64()), (Some(19456), Some(2)));
    assert_eq!(v["kdf"]["p_cost"].as_u64(), Some(1));

    let reopened = SoftKeyStore::open(dir.path(), kek()).expect("reopen");
    let s = reopened.signer(&k).expect("same passphrase");
    assert_eq!(s.public_key_spki_der(), signer.public_key_spki_der());
    let sig = s.sign(b"m").expect("sign");
    verify_p256_sha256(signer.public_key_spki_der(), b"m", &sig).expect("verifies");

    let wrong =
        SoftKeyStore::open(dir.path(), Kek::Passphrase(Zeroizing::new("Tr0ub4dor&3".into()))).expect("open");
    let err = wrong.signer(&k).err().expect("wrong passphrase");
    assert!(matches!(err, KmsError::Decrypt { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
    let text = format!("{err} {err:?}");
    assert!(!text.contains("Tr0ub4dor") && !text.contains("horse"), "{text}");
}

#[test]
fn kek_file_roundtrip_and_modes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let kek_path = tmp.path().join("kek");
    Kek::generate_key_file(&kek_path).expect("generate");
    assert_eq!(mode(&kek_path), 0o600);
    let text = fs::read_to_string(&kek_path).expect("read");
    assert_eq!(text.trim().len(), 64);
    assert!(text.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    // Refuses to overwrite.
    let err = Kek::generate_key_file(&kek_path).expect_err("exists");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(fs::read_to_string(&kek_path).expect("read"), text);

    // The store directory is created 0700, key files are 0600.
    let dir = tmp.path().join("keys").join("nested");
    let store = SoftKeyStore::open(&dir, Kek::from_key_file(&kek_path).expect("load")).expect("open");
    assert_eq!(mode(&dir), 0o700);
    let k = key("ocsp");
    let signer = store.create_key(&k, P256, false).expect("create");
    assert_eq!(mode(&store.key_path("ocsp")), 0o600);
    assert!(format!("{store:?}").contains("redacted"));
    assert!(!format!("{store:?}").contains(text.trim()));

    let reopened = SoftKeyStore::open(&dir, Kek::from_key_file(&kek_path).expect("load")).expect("open");
    let s = reopened.signer(&k).expect("signer");
    assert_eq!(s.public_key_spki_der(), signer.public_key_spki_der());

    // The same key given as base64 (e.g. from an environment variable) works too.
    let bytes = hex::decode(text.trim()).expect("hex");
    let b64 = Kek::from_hex_or_base64(&B64.encode(&bytes)).expect("base64");
    let s = SoftKeyStore::open(&dir, b64).expect("open").signer(&k).expect("signer");
    assert_eq!(s.public_key_spki_der(), signer.public_key_spki_der());

    // Another key: Decrypt.
    let other = SoftKeyStore::open(&dir, raw_kek(0xee)).expect("open");
    let err = other.signer(&k).err().expect("wrong KEK");
    assert!(matches!(err, KmsError::Decrypt { .. }), "{err:?}");
}

#[test]
fn malformed_kek_file_names_the_file_not_the_content() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("bad-kek");
    fs::write(&path, "not-a-key-but-a-secret-looking-string\n").expect("write");
    let err = Kek::from_key_file(&path).expect_err("malformed");
    let text = err.to_string();
    assert!(text.contains("bad-kek"), "{text}");
    assert!(!text.contains("secret-looking"), "{text}");
    // 31 bytes is not a key either.
    fs::write(&path, hex::encode([1u8; 31])).expect("write");
    assert!(Kek::from_key_file(&path).is_err());
    // Missing file.
    let err = Kek::from_key_file(&tmp.path().join("absent")).expect_err("missing");
    assert!(err.to_string().contains("absent"), "{err}");
}

#[test]
fn renamed_file_does_not_decrypt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SoftKeyStore::open(dir.path(), raw_kek(3)).expect("open");
    store.create_key(&key("root"), P256, false).expect("create");
    fs::copy(store.key_path("root"), store.key_path("impostor")).expect("copy");
    let err = store.signer(&key("impostor")).err().expect("renamed");
    assert!(matches!(err, KmsError::Decrypt { .. }), "{err:?}");
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(path).expect("read")).expect("json");
    f(&mut v);
    fs::write(path, serde_json::to_vec(&v).expect("json")).expect("write");
}

#[test]
fn tampered_files_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SoftKeyStore::open(dir.path(), raw_kek(4)).expect("open");
    let flip = |field: &'static str| {
        move |v: &mut serde_json::Value| {
            let mut b = B64.decode(v[field].as_str().expect("field")).expect("b64");
            let last = b.len() - 1;
            b[last] ^= 1;
            v[field] = B64.encode(b).into();
        }
    };
    for (name, field) in [("ct", "ciphertext"), ("nonce", "nonce"), ("pk", "public_key")] {
        store.create_key(&key(name), P256, false).expect("create");
        edit_json(&store.key_path(name), flip(field));
        // A fresh store: the first one caches the signers it created.
        let fresh = SoftKeyStore::open(dir.path(), raw_kek(4)).expect("open");
        let err = fresh.signer(&key(name)).err().expect("tampered");
        assert!(matches!(err, KmsError::Decrypt { .. }), "{field}: {err:?}");
    }

    // Not JSON at all: an internal error naming the file.
    fs::write(store.key_path("junk"), b"{ nope").expect("write");
    let err = store.signer(&key("junk")).err().expect("junk");
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(err.to_string().contains("junk.key"), "{err}");

    // Unknown format version.
    store.create_key(&key("v2"), P256, false).expect("create");
    edit_json(&store.key_path("v2"), |v| v["format"] = "devid-soft-key/2".into());
    let fresh = SoftKeyStore::open(dir.path(), raw_kek(4)).expect("open");
    assert_eq!(fresh.signer(&key("v2")).err().expect("v2").kind(), ErrorKind::Internal);
}

#[test]
fn create_twice_and_replace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SoftKeyStore::open(dir.path(), raw_kek(5)).expect("open");
    let k = key("tokens");
    let first = store.create_key(&k, P256, false).expect("create");
    let err = store.create_key(&k, P256, false).err().expect("exists");
    assert!(matches!(err, KmsError::Exists { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    // The existing key is untouched.
    assert_eq!(store.signer(&k).expect("signer").public_key_spki_der(), first.public_key_spki_der());

    let second = store.create_key(&k, P256, true).expect("replace");
    assert_ne!(second.public_key_spki_der(), first.public_key_spki_der());
    // The cache was updated, and the file holds the new key.
    assert_eq!(store.signer(&k).expect("signer").public_key_spki_der(), second.public_key_spki_der());
    let fresh = SoftKeyStore::open(dir.path(), raw_kek(5)).expect("open");
    assert_eq!(fresh.signer(&k).expect("signer").public_key_spki_der(), second.public_key_spki_der());
    assert_eq!(mode(&store.key_path("tokens")), 0o600);
    assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1, "no temporary files left");
}

#[test]
fn missing_key_and_wrong_scheme() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SoftKeyStore::open(dir.path(), raw_kek(6)).expect("open");
    let err = store.signer(&key("nope")).err().expect("missing");
    assert!(matches!(err, KmsError::NotFound { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::NotFound);

    let hsm = KeyRef::Pkcs11 { token: "t".into(), object: "o".into() };
    for err in [store.signer(&hsm).err(), store.create_key(&hsm, P256, false).err(), store.exists(&hsm).err()]
    {
        assert!(matches!(err, Some(KmsError::NotConfigured { .. })), "{err:?}");
    }
    // A hand-built reference that would escape the directory.
    let evil = KeyRef::Soft { name: "../evil".into() };
    assert_eq!(store.create_key(&evil, P256, false).err().expect("evil").kind(), ErrorKind::InvalidInput);
}

#[test]
fn router_and_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kms = Kms::new().with_soft(SoftKeyStore::open(dir.path(), raw_kek(7)).expect("open"));
    let k = key("shared");
    let signer = kms.create_key(&k, P256, false).expect("create");
    let hsm = KeyRef::Pkcs11 { token: "t".into(), object: "o".into() };
    assert!(matches!(kms.signer(&hsm), Err(KmsError::NotConfigured { .. })));

    let msg = Arc::new(tbs());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (kms, k, msg) = (kms.clone(), k.clone(), msg.clone());
            std::thread::spawn(move || {
                let s = kms.signer(&k).expect("signer");
                (0..20).map(|_| s.sign(&msg).expect("sign")).collect::<Vec<_>>()
            })
        })
        .collect();
    for t in threads {
        for sig in t.join().expect("thread") {
            verify_p256_sha256(signer.public_key_spki_der(), &msg, &sig).expect("verifies");
        }
    }
}
