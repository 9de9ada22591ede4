//! The agent's side of the x509 and symmetric methods checked against devid-attest's
//! verifiers: what the agent signs or proves is what the server accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use devid_agent::keys::{DeviceKey, FactoryKey, certificate_pem, pem_certificates};
use devid_attest::x509::{IdSource, X509Policy, verify};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, date_time_ymd,
};

#[test]
fn factory_signatures_verify_with_the_x509_attestor() {
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    root_params.distinguished_name.push(DnType::CommonName, "Factory Root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    root_params.not_before = date_time_ymd(2020, 1, 1);
    root_params.not_after = date_time_ymd(2040, 1, 1);
    let root_der = root_params.self_signed(&root_key).unwrap().der().to_vec();
    let root = Issuer::new(root_params, root_key);
    let policy = X509Policy {
        anchors: vec![root_der.clone()],
        crls: vec![],
        id_source: IdSource::SubjectSerialNumber,
    };

    let key = DeviceKey::generate().unwrap();
    let csr = key.csr(None).unwrap();
    let binding = devid_attest::binding(&[3; 32], &csr.der);
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_RSA_SHA256,
        &rcgen::PKCS_ED25519,
    ] {
        let dev_key = KeyPair::generate_for(alg).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CustomDnType(vec![2, 5, 4, 5]), "SN-42");
        p.not_before = date_time_ymd(2024, 1, 1);
        p.not_after = date_time_ymd(2039, 1, 1);
        let dev_der = p.signed_by(&dev_key, &root).unwrap().der().to_vec();

        // As the CLI reads them: a PEM chain file and a PKCS#8 PEM key file.
        let chain_pem = certificate_pem(&dev_der) + &certificate_pem(&root_der);
        let chain = pem_certificates(&chain_pem).unwrap();
        let factory = FactoryKey::from_pkcs8_pem(&dev_key.serialize_pem()).unwrap();
        let sig = factory.sign(&binding).unwrap();
        let now = devid_core::UnixTime(1_780_272_000);
        let a = verify(&policy, &chain, &sig, &binding, now).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(a.device_id, "SN-42");
    }
}

#[test]
fn symmetric_proofs_verify_with_the_symmetric_attestor() {
    let master = [0x11u8; 32];
    let device_key = devid_attest::symmetric::derive_device_key(&master, "sensor-9");
    let binding = [0x22u8; 32];
    let proof = devid_attest::symmetric::proof(&device_key, &binding);
    assert!(devid_attest::symmetric::verify_group(&master, "sensor-9", &binding, &proof).is_ok());
}
