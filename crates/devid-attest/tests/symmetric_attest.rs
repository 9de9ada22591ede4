//! Derived symmetric key attestation against a vector computed independently with openssl.
#![allow(clippy::unwrap_used)]

use devid_attest::Failure;
use devid_attest::symmetric::{derive_device_key, proof, verify_device, verify_group};

// The vector was made with OpenSSL 3 (RFC 2104 HMAC-SHA256), not with this crate:
//
//   MK=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
//   printf 'sensor-0001' | openssl dgst -sha256 -mac HMAC -macopt hexkey:$MK
//     -> DEVICE_KEY
//   printf 'a5%.0s' $(seq 32) | xxd -r -p > bind.bin        # 32 bytes of 0xa5
//   openssl dgst -sha256 -mac HMAC -macopt hexkey:$DEVICE_KEY bind.bin
//     -> PROOF
const MASTER: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const DEVICE_ID: &str = "sensor-0001";
const DEVICE_KEY: &str = "59b933b4b16f5310678dc477663ba266c69217b282272db41b60ae94b179bed1";
const BINDING: [u8; 32] = [0xa5; 32];
const PROOF: &str = "3b399473484a5c003266422ff304a92b0721d83c60fb7b78a6e363d8fa259b34";

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn derivation_and_proof_match_openssl() {
    assert_eq!(derive_device_key(&h(MASTER), DEVICE_ID).to_vec(), h(DEVICE_KEY));
    assert_eq!(proof(&h(DEVICE_KEY), &BINDING).to_vec(), h(PROOF));
}

#[test]
fn group_and_device_proofs_verify() {
    let a = verify_group(&h(MASTER), DEVICE_ID, &BINDING, &h(PROOF)).unwrap();
    assert_eq!(a.device_id, DEVICE_ID);
    assert_eq!(a.summary["method"], "symmetric");
    assert_eq!(a.summary["key"], "group");
    let text = a.summary.to_string();
    assert!(!text.contains(DEVICE_KEY) && !text.contains(MASTER), "no secret in the summary: {text}");

    let a = verify_device(&h(DEVICE_KEY), DEVICE_ID, &BINDING, &h(PROOF)).unwrap();
    assert_eq!(a.device_id, DEVICE_ID);
    assert_eq!(a.summary["key"], "device");
}

#[test]
fn refusals() {
    let master = h(MASTER);
    let good = h(PROOF);
    // Another device id: its key differs, so the proof does not verify.
    assert_eq!(verify_group(&master, "sensor-0002", &BINDING, &good).unwrap_err().failure, Failure::BadProof);
    // Another binding (another nonce or CSR).
    assert_eq!(verify_group(&master, DEVICE_ID, &[0x5a; 32], &good).unwrap_err().failure, Failure::BadProof);
    // A flipped bit.
    let mut bad = good.clone();
    bad[31] ^= 1;
    assert_eq!(verify_group(&master, DEVICE_ID, &BINDING, &bad).unwrap_err().failure, Failure::BadProof);
    // Another master key.
    let other = vec![7u8; 32];
    assert_eq!(verify_group(&other, DEVICE_ID, &BINDING, &good).unwrap_err().failure, Failure::BadProof);
    // Wrong length.
    assert_eq!(
        verify_group(&master, DEVICE_ID, &BINDING, &good[..31]).unwrap_err().failure,
        Failure::Malformed
    );
    // An invalid id.
    assert_eq!(verify_group(&master, "a/b", &BINDING, &good).unwrap_err().failure, Failure::NoDeviceId);
    assert_eq!(verify_device(&h(DEVICE_KEY), "", &BINDING, &good).unwrap_err().failure, Failure::NoDeviceId);
    // Keys that are too short.
    assert_eq!(verify_group(&[1; 8], DEVICE_ID, &BINDING, &good).unwrap_err().failure, Failure::Malformed);
    assert_eq!(verify_device(&[], DEVICE_ID, &BINDING, &good).unwrap_err().failure, Failure::Malformed);
}
