//! The store against both backends: every case runs once on SQLite and once on PostgreSQL
//! (a fresh database each), as `<case>::sqlite` and `<case>::postgres`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use devid_core::{CaId, DeviceId, ErrorKind, RevocationReason, Serial, UnixTime};
use devid_store::{
    AuditEvent, CaKind, CaRecord, CertEventKind, CertStatus, ChallengeRecord, Completion, CredentialRecord,
    CrlSink, DeviceMeta, DeviceRecord, DeviceStatus, Intent, OcspResponderRecord, PendingCert, PgStore,
    Redeem, SealedNonce, SqliteStore, Store, TokenKeyRecord,
};
use devid_testkit::db::{Backend, TestDb};

/// Generate `mod <case> { fn sqlite(); fn postgres(); }` for each `async fn <case>(Backend)`.
macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    super::$case(super::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    super::$case(super::Backend::Postgres).await
                }
            }
        )*
    };
}

both_backends!(
    ping_and_backend,
    ca_hierarchy,
    devices,
    device_paging,
    issuance_round_trip,
    certificate_for_csr_is_newest,
    certificate_paging,
    token_is_single_use,
    concurrent_redeems_one_wins,
    concurrent_completions_agree,
    quarantined_device_cannot_redeem,
    revoke,
    quarantine_revokes_everything_and_release_restores,
    quarantine_during_issuance_revokes_the_new_certificate,
    events_record_issuance_and_revocation,
    ocsp_responders_newest_first,
    crl_rebuild_streams_revoked_unexpired_and_numbers_grow,
    crl_rebuild_is_one_node_at_a_time,
    credentials_and_token_keys,
    serial_collision,
    migrations_run_twice,
    device_batch_insert,
    audit_chain_is_dense_and_verifiable,
    groups_challenges_and_lineage,
    nodes_are_counted,
    list_filters,
    batched_intents_answer_each_item,
    batched_token_intents_answer_each_item,
    sealed_nonces_and_service_secrets,
    batched_sealed_intents_register_devices,
    batched_completions_answer_each_item,
    certificate_bytes_are_stored_once,
    certificates_name_devices_that_exist,
);

// --- fixtures ---

const T0: i64 = 1_800_000_000;

fn t(n: i64) -> UnixTime {
    UnixTime(T0 + n)
}

fn ev() -> AuditEvent {
    AuditEvent::new(t(0), "test", "test.act", "subject", serde_json::json!({"k": "v"}))
}

async fn open(db: &TestDb) -> Arc<dyn Store> {
    devid_store::connect(&db.url).await.unwrap()
}

fn ca(id: &str, kind: CaKind, parent: Option<&str>, created: i64) -> CaRecord {
    CaRecord {
        id: CaId::new(id).unwrap(),
        kind,
        parent: parent.map(|p| CaId::new(p).unwrap()),
        cert_der: format!("cert of {id}").into_bytes(),
        key_ref: Some(format!("soft:{id}")),
        ski: id.as_bytes().to_vec(),
        not_before: t(created),
        not_after: t(created + 86_400 * 365),
        active: true,
        created_at: t(created),
    }
}

/// A root and an issuing CA named `root-<n>` and `issuing-<n>`.
fn hierarchy(n: u32, created: i64) -> (CaRecord, CaRecord) {
    let root = format!("root-{n}");
    (
        ca(&root, CaKind::Root, None, created),
        ca(&format!("issuing-{n}"), CaKind::Issuing, Some(&root), created),
    )
}

async fn with_ca(store: &dyn Store) -> CaId {
    let (root, issuing) = hierarchy(1, 0);
    store.put_ca_hierarchy(&root, &issuing, false, &ev()).await.unwrap();
    issuing.id
}

fn device(id: &str, token_hash: Option<&[u8]>) -> DeviceRecord {
    DeviceRecord {
        id: DeviceId::new(id).unwrap(),
        status: DeviceStatus::Registered,
        token_hash: token_hash.map(<[u8]>::to_vec),
        token_used_at: None,
        created_at: t(1),
        updated_at: t(1),
    }
}

fn serial(n: u64) -> Serial {
    // 20 octets with a non-zero top octet, like Serial::random, so hex order = numeric order.
    let mut b = [0x11u8; 20];
    b[12..].copy_from_slice(&n.to_be_bytes());
    Serial::from_bytes(&b).unwrap()
}

fn pending(serial: &Serial, issuer: &CaId, device: &DeviceId, csr: &[u8], created: i64) -> PendingCert {
    PendingCert {
        serial: serial.clone(),
        issuer: issuer.clone(),
        device: device.clone(),
        not_before: t(created),
        not_after: t(created + 86_400),
        csr_sha256: csr.to_vec(),
        tbs_der: [b"tbs:".as_slice(), serial.as_bytes()].concat(),
        created_at: t(created),
        predecessor: None,
    }
}

/// An unredeemed x509 challenge of group `g` with nonce hash `[n; 32]`, expiring at `expires`.
fn challenge_record(n: u8, expires: i64) -> ChallengeRecord {
    ChallengeRecord {
        nonce_hash: vec![n; 32],
        group: "g".into(),
        method: "x509".into(),
        state: None,
        expires_at: t(expires),
        redeemed_at: None,
    }
}

fn kind<T>(r: Result<T, devid_store::StoreError>) -> ErrorKind {
    match r {
        Ok(_) => panic!("expected an error, got Ok"),
        Err(e) => e.kind(),
    }
}

// --- cases ---

async fn ping_and_backend(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    store.ping().await.unwrap();
    let expected = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(store.backend(), expected);
    drop(store);
    db.cleanup().await;
}

async fn ca_hierarchy(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    assert_eq!(store.active_ca(CaKind::Root).await.unwrap(), None);
    assert!(store.list_cas().await.unwrap().is_empty());

    // The first hierarchy.
    let (root1, issuing1) = hierarchy(1, 0);
    store.put_ca_hierarchy(&root1, &issuing1, false, &ev()).await.unwrap();
    assert_eq!(store.get_ca(&root1.id).await.unwrap(), Some(root1.clone()));
    assert_eq!(store.get_ca(&issuing1.id).await.unwrap(), Some(issuing1.clone()));
    assert_eq!(store.get_ca(&CaId::new("nope").unwrap()).await.unwrap(), None);
    assert_eq!(store.active_ca(CaKind::Root).await.unwrap(), Some(root1.clone()));
    assert_eq!(store.active_ca(CaKind::Issuing).await.unwrap(), Some(issuing1.clone()));

    // Without replace: a CA exists.
    let (root2, issuing2) = hierarchy(2, 10);
    assert_eq!(kind(store.put_ca_hierarchy(&root2, &issuing2, false, &ev()).await), ErrorKind::Conflict);
    assert_eq!(store.list_cas().await.unwrap().len(), 2);

    // Kinds must be root then issuing.
    assert_eq!(kind(store.put_ca_hierarchy(&issuing2, &root2, true, &ev()).await), ErrorKind::InvalidInput);

    // Replace: the old pair stays, inactive; the new pair is active.
    store.put_ca_hierarchy(&root2, &issuing2, true, &ev()).await.unwrap();
    assert_eq!(store.active_ca(CaKind::Root).await.unwrap(), Some(root2.clone()));
    assert_eq!(store.active_ca(CaKind::Issuing).await.unwrap(), Some(issuing2.clone()));
    let old = store.get_ca(&root1.id).await.unwrap().unwrap();
    assert!(!old.active);
    let ids: Vec<(String, bool)> =
        store.list_cas().await.unwrap().into_iter().map(|c| (c.id.to_string(), c.active)).collect();
    assert_eq!(
        ids,
        [("root-1", false), ("issuing-1", false), ("root-2", true), ("issuing-2", true)]
            .map(|(i, a)| (i.to_string(), a))
    );

    // Replacing with ids that exist collides, and the transaction leaves everything as it was.
    let (root3, _) = hierarchy(3, 20);
    assert_eq!(kind(store.put_ca_hierarchy(&root3, &issuing2, true, &ev()).await), ErrorKind::Conflict);
    assert_eq!(store.active_ca(CaKind::Root).await.unwrap(), Some(root2.clone()));
    assert_eq!(store.active_ca(CaKind::Issuing).await.unwrap(), Some(issuing2.clone()));
    assert_eq!(store.get_ca(&root3.id).await.unwrap(), None);

    // A root held offline has no key reference.
    let (mut root4, issuing4) = hierarchy(4, 30);
    root4.key_ref = None;
    store.put_ca_hierarchy(&root4, &issuing4, true, &ev()).await.unwrap();
    assert_eq!(store.active_ca(CaKind::Root).await.unwrap(), Some(root4));

    drop(store);
    db.cleanup().await;
}

async fn devices(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let d1 = device("sensor-1", Some(&[1; 32]));
    store.insert_device(&d1, &DeviceMeta::default(), &ev()).await.unwrap();
    assert_eq!(store.get_device(&d1.id).await.unwrap(), Some(d1.clone()));
    assert_eq!(store.get_device(&DeviceId::new("nope").unwrap()).await.unwrap(), None);

    // The same id again; another id with the same token hash.
    let e = store.insert_device(&device("sensor-1", None), &DeviceMeta::default(), &ev()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.to_string().contains("sensor-1"), "{e}");
    assert_eq!(
        kind(store.insert_device(&device("sensor-2", Some(&[1; 32])), &DeviceMeta::default(), &ev()).await),
        ErrorKind::Conflict
    );

    // Devices without a token; one with every field set.
    store.insert_device(&device("sensor-2", None), &DeviceMeta::default(), &ev()).await.unwrap();
    store.insert_device(&device("sensor-3", None), &DeviceMeta::default(), &ev()).await.unwrap();
    let full = DeviceRecord {
        status: DeviceStatus::Quarantined,
        token_used_at: Some(t(5)),
        updated_at: t(6),
        ..device("sensor-4", Some(&[4; 32]))
    };
    store.insert_device(&full, &DeviceMeta::default(), &ev()).await.unwrap();
    assert_eq!(store.get_device(&full.id).await.unwrap(), Some(full.clone()));

    assert_eq!(store.device_by_token_hash(&[1; 32]).await.unwrap(), Some(d1.clone()));
    assert_eq!(store.device_by_token_hash(&[4; 32]).await.unwrap(), Some(full.clone()));
    assert_eq!(store.device_by_token_hash(&[9; 32]).await.unwrap(), None);
    // Several hashes in one read: the devices found, in any order; unknown hashes have no row.
    let mut found = store.devices_by_token_hashes(&[vec![4; 32], vec![9; 32], vec![1; 32]]).await.unwrap();
    found.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    assert_eq!(found, vec![d1.clone(), full.clone()]);
    assert_eq!(store.devices_by_token_hashes(&[vec![9; 32]]).await.unwrap(), vec![]);
    assert_eq!(store.devices_by_token_hashes(&[]).await.unwrap(), vec![]);

    drop(store);
    db.cleanup().await;
}

async fn device_paging(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    // Inserted out of order; ids sort byte-wise.
    let mut ids: Vec<String> = (0..25).rev().map(|i| format!("dev-{i:02}")).collect();
    for id in &ids {
        store.insert_device(&device(id, None), &DeviceMeta::default(), &ev()).await.unwrap();
    }
    ids.sort();

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store.list_devices(cursor.as_deref(), 10).await.unwrap();
        sizes.push(page.items.len());
        if let Some(next) = &page.next {
            assert_eq!(Some(next.as_str()), page.items.last().map(|d| d.id.as_str()));
        }
        seen.extend(page.items.into_iter().map(|d| d.id.to_string()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!(seen, ids);

    // Exactly `limit` left: no next page.
    let page = store.list_devices(Some("dev-14"), 10).await.unwrap();
    assert_eq!(page.items.len(), 10);
    assert_eq!(page.next, None);
    // A cursor between keys and past the end.
    let page = store.list_devices(Some("dev-19x"), 10).await.unwrap();
    assert_eq!(page.items.first().map(|d| d.id.as_str()), Some("dev-20"));
    let page = store.list_devices(Some("zzz"), 10).await.unwrap();
    assert!(page.items.is_empty() && page.next.is_none());
    // Limits are clamped to 1..=1000.
    let page = store.list_devices(None, 0).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.next.as_deref(), Some("dev-00"));
    let page = store.list_devices(None, u32::MAX).await.unwrap();
    assert_eq!(page.items.len(), 25);
    assert_eq!(page.next, None);

    drop(store);
    db.cleanup().await;
}

async fn issuance_round_trip(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    let token = [7u8; 32];
    let dev = device("sensor-1", Some(&token));
    store.insert_device(&dev, &DeviceMeta::default(), &ev()).await.unwrap();

    // Step 4: the intent, redeeming the token.
    let s = serial(1);
    let p = pending(&s, &issuer, &dev.id, &[0xcc; 32], 100);
    store.record_intent(&p, Redeem::Token(&token)).await.unwrap();
    let c = store.get_certificate(&s).await.unwrap().unwrap();
    assert_eq!(c.status, CertStatus::Pending);
    assert_eq!(c.cert_der, None);
    assert_eq!(c.tbs_der, p.tbs_der);
    assert_eq!(
        (c.serial.clone(), c.issuer.clone(), c.device.clone()),
        (s.clone(), issuer.clone(), dev.id.clone())
    );
    assert_eq!((c.not_before, c.not_after, c.created_at), (p.not_before, p.not_after, p.created_at));
    assert_eq!(c.csr_sha256, p.csr_sha256);
    assert_eq!(c.revocation, None);
    let d = store.get_device(&dev.id).await.unwrap().unwrap();
    assert_eq!(d.token_used_at, Some(t(100)));
    assert_eq!(d.updated_at, t(100));
    // Redeeming the token enrolls the device, in the same update.
    assert_eq!(d.status, DeviceStatus::Enrolled);

    // Step 6: the signed certificate; bytes come back identical (including 0x00 and 0xff).
    let der: Vec<u8> = (0..=255u8).cycle().take(1500).collect();
    let issued = store.complete_issuance(&s, &der, t(101), &ev()).await.unwrap();
    assert_eq!(issued.status, CertStatus::Issued);
    assert_eq!(issued.cert_der.as_deref(), Some(der.as_slice()));
    assert_eq!(issued.tbs_der, p.tbs_der);
    assert_eq!(store.get_certificate(&s).await.unwrap(), Some(issued.clone()));
    // Step 6 finds the device enrolled already and leaves its row alone.
    let d = store.get_device(&dev.id).await.unwrap().unwrap();
    assert_eq!(d.status, DeviceStatus::Enrolled);
    assert_eq!(d.updated_at, t(100));

    // Completing again keeps the first certificate.
    let again = store.complete_issuance(&s, b"other", t(102), &ev()).await.unwrap();
    assert_eq!(again, issued);
    // Unknown serial.
    assert_eq!(kind(store.complete_issuance(&serial(99), b"x", t(102), &ev()).await), ErrorKind::NotFound);
    assert_eq!(store.get_certificate(&serial(99)).await.unwrap(), None);

    // A renewal (no token) for the same device.
    let s2 = serial(2);
    store.record_intent(&pending(&s2, &issuer, &dev.id, &[0xdd; 32], 200), Redeem::Nothing).await.unwrap();
    store.complete_issuance(&s2, b"second", t(201), &ev()).await.unwrap();
    let all = store.list_certificates(Some(&dev.id), None, 10).await.unwrap();
    assert_eq!(all.items.iter().map(|c| c.serial.clone()).collect::<Vec<_>>(), [s, s2]);

    drop(store);
    db.cleanup().await;
}

async fn certificate_for_csr_is_newest(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    let a = device("dev-a", None);
    let b = device("dev-b", None);
    let b_meta = DeviceMeta {
        labels: Some(r#"{"line":"7"}"#.into()),
        method: Some("x509".into()),
        secret: Some(vec![0, 1, 0xff]),
        ..DeviceMeta::default()
    };
    store.insert_device(&a, &DeviceMeta::default(), &ev()).await.unwrap();
    store.insert_device(&b, &b_meta, &ev()).await.unwrap();
    let csr = [0xab; 32];
    assert_eq!(store.certificate_for_csr(&a.id, &csr).await.unwrap(), None);
    // The joined read: the device and its metadata, and no certificate yet.
    assert_eq!(
        store.device_for_csr(&a.id, &csr).await.unwrap(),
        Some((a.clone(), DeviceMeta::default(), None))
    );
    assert_eq!(store.device_for_csr(&b.id, &csr).await.unwrap(), Some((b.clone(), b_meta.clone(), None)));
    assert_eq!(store.device_for_csr(&DeviceId::new("nobody").unwrap(), &csr).await.unwrap(), None);

    // Older with a higher serial, newer with a lower serial: newest by time wins.
    store.record_intent(&pending(&serial(9), &issuer, &a.id, &csr, 10), Redeem::Nothing).await.unwrap();
    store.record_intent(&pending(&serial(5), &issuer, &a.id, &csr, 20), Redeem::Nothing).await.unwrap();
    // Same time: the higher serial wins.
    store
        .record_intent(&pending(&serial(3), &issuer, &a.id, &[0x01; 32], 30), Redeem::Nothing)
        .await
        .unwrap();
    store
        .record_intent(&pending(&serial(4), &issuer, &a.id, &[0x01; 32], 30), Redeem::Nothing)
        .await
        .unwrap();
    // The same CSR from another device.
    store.record_intent(&pending(&serial(7), &issuer, &b.id, &csr, 40), Redeem::Nothing).await.unwrap();
    store.complete_issuance(&serial(5), b"five", t(21), &ev()).await.unwrap();

    let c = store.certificate_for_csr(&a.id, &csr).await.unwrap().unwrap();
    assert_eq!(c.serial, serial(5));
    assert_eq!(c.cert_der.as_deref(), Some(b"five".as_slice()));
    let c = store.certificate_for_csr(&a.id, &[0x01; 32]).await.unwrap().unwrap();
    assert_eq!(c.serial, serial(4));
    let c = store.certificate_for_csr(&b.id, &csr).await.unwrap().unwrap();
    assert_eq!(c.serial, serial(7));
    assert_eq!(store.certificate_for_csr(&b.id, &[0x01; 32]).await.unwrap(), None);
    // The joined read answers what certificate_for_csr answers (issued, pending, none),
    // beside the device as stored.
    for (d, meta, h) in [
        (&a, &DeviceMeta::default(), &csr),
        (&a, &DeviceMeta::default(), &[0x01; 32]),
        (&b, &b_meta, &csr),
        (&b, &b_meta, &[0x01; 32]),
    ] {
        let (record, m, prior) = store.device_for_csr(&d.id, h).await.unwrap().expect("the device");
        assert_eq!(record, store.get_device(&d.id).await.unwrap().unwrap());
        assert_eq!(&m, meta);
        assert_eq!(prior, store.certificate_for_csr(&d.id, h).await.unwrap());
    }
    let (_, _, prior) = store.device_for_csr(&a.id, &csr).await.unwrap().unwrap();
    assert_eq!(prior.map(|c| (c.serial, c.status)), Some((serial(5), CertStatus::Issued)));
    let (_, _, prior) = store.device_for_csr(&b.id, &csr).await.unwrap().unwrap();
    assert_eq!(prior.map(|c| (c.serial, c.status, c.cert_der)), Some((serial(7), CertStatus::Pending, None)));

    // Renewal's read: the presented certificate, its device and what the two reads above
    // answer for that device, never another device's certificate for the same CSR.
    store
        .record_intent(&pending(&serial(8), &issuer, &b.id, &[0x02; 32], 41), Redeem::Nothing)
        .await
        .unwrap();
    store.complete_issuance(&serial(8), b"eight", t(42), &ev()).await.unwrap();
    store.revoke(&serial(5), RevocationReason::Superseded, t(43), &ev()).await.unwrap();
    for (presented, d, meta) in [(serial(5), &a, &DeviceMeta::default()), (serial(8), &b, &b_meta)] {
        for h in [&csr, &[0x01; 32], &[0x02; 32], &[0x03; 32]] {
            let got = store.renewal_context(&presented, h).await.unwrap().expect("the certificate");
            let (record, m, prior) = store.device_for_csr(&d.id, h).await.unwrap().unwrap();
            let want = devid_store::RenewalContext {
                current: store.get_certificate(&presented).await.unwrap().unwrap(),
                device: record,
                meta: m,
                prior,
            };
            assert_eq!(got, want);
            assert_eq!(&got.meta, meta);
        }
    }
    let got = store.renewal_context(&serial(5), &csr).await.unwrap().unwrap();
    assert_eq!(
        (got.current.status, got.current.revocation.map(|r| r.1)),
        (CertStatus::Revoked, Some(RevocationReason::Superseded))
    );
    assert_eq!(got.prior.map(|c| c.serial), Some(serial(5)));
    assert_eq!(
        store.renewal_context(&serial(8), &csr).await.unwrap().unwrap().prior.map(|c| c.serial),
        Some(serial(7))
    );
    assert_eq!(store.renewal_context(&serial(8), &[0x01; 32]).await.unwrap().unwrap().prior, None);
    // Unknown serials, and an intent (not a certificate yet): nothing.
    assert_eq!(store.renewal_context(&serial(99), &csr).await.unwrap(), None);
    assert_eq!(store.renewal_context(&serial(7), &csr).await.unwrap(), None);

    // The batched read answers every pair as the single read does, in the pairs' order,
    // across more than one chunk of 1,000 (and with repeated pairs).
    let mut pairs: Vec<(Serial, Vec<u8>)> = Vec::new();
    for s in [5, 8, 99, 7] {
        for h in [&csr, &[0x01; 32], &[0x02; 32], &[0x03; 32]] {
            pairs.push((serial(s), h.to_vec()));
        }
    }
    let mut want = Vec::new();
    for (s, h) in &pairs {
        want.push(store.renewal_context(s, h).await.unwrap());
    }
    assert_eq!(want.iter().filter(|w| w.is_some()).count(), 8);
    let keys: Vec<(Serial, Vec<u8>)> = pairs.iter().cycle().take(1003).cloned().collect();
    let got = store.renewal_contexts(&keys).await.unwrap();
    assert_eq!(got.len(), keys.len());
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g, &want[i % pairs.len()], "pair {i}");
    }
    assert_eq!(store.renewal_contexts(&[]).await.unwrap(), vec![]);
    // And the device read of enrollment, the same way.
    let mut pairs: Vec<(DeviceId, Vec<u8>)> = Vec::new();
    for d in [&a.id, &b.id, &DeviceId::new("nobody").unwrap()] {
        for h in [&csr, &[0x01; 32], &[0x02; 32], &[0x03; 32]] {
            pairs.push((d.clone(), h.to_vec()));
        }
    }
    let mut want = Vec::new();
    for (d, h) in &pairs {
        want.push(store.device_for_csr(d, h).await.unwrap());
    }
    assert_eq!(want.iter().filter(|w| w.is_some()).count(), 8);
    assert_eq!(want.iter().filter(|w| w.as_ref().is_some_and(|(_, _, p)| p.is_some())).count(), 4);
    let keys: Vec<(DeviceId, Vec<u8>)> = pairs.iter().cycle().take(1003).cloned().collect();
    let got = store.device_for_csrs(&keys).await.unwrap();
    assert_eq!(got.len(), keys.len());
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g, &want[i % pairs.len()], "pair {i}");
    }

    drop(store);
    db.cleanup().await;
}

async fn certificate_paging(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    let a = device("dev-a", None);
    let b = device("dev-b", None);
    store.insert_device(&a, &DeviceMeta::default(), &ev()).await.unwrap();
    store.insert_device(&b, &DeviceMeta::default(), &ev()).await.unwrap();
    for n in 0..12u64 {
        let dev = if n % 3 == 0 { &b.id } else { &a.id };
        store
            .record_intent(&pending(&serial(n + 1), &issuer, dev, &[n as u8; 32], n as i64), Redeem::Nothing)
            .await
            .unwrap();
    }

    // All certificates, 5 at a time.
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list_certificates(None, cursor.as_deref(), 5).await.unwrap();
        all.extend(page.items.iter().map(|c| c.serial.clone()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(all, (1..=12).map(serial).collect::<Vec<_>>());
    // A cursor in upper case (as a person might type it) pages the same way.
    let upper = serial(3).to_hex().to_uppercase();
    let page = store.list_certificates(None, Some(&upper), 2).await.unwrap();
    assert_eq!(page.items.iter().map(|c| c.serial.clone()).collect::<Vec<_>>(), [serial(4), serial(5)]);

    // One device's, 3 at a time: 8 of them.
    let p1 = store.list_certificates(Some(&a.id), None, 3).await.unwrap();
    assert_eq!(p1.items.len(), 3);
    assert!(p1.items.iter().all(|c| c.device == a.id));
    assert_eq!(p1.next, Some(p1.items[2].serial.to_hex()));
    let p2 = store.list_certificates(Some(&a.id), p1.next.as_deref(), 3).await.unwrap();
    let p3 = store.list_certificates(Some(&a.id), p2.next.as_deref(), 3).await.unwrap();
    assert_eq!((p2.items.len(), p3.items.len(), p3.next.clone()), (3, 2, None));
    let b_all = store.list_certificates(Some(&b.id), None, 1000).await.unwrap();
    assert_eq!(b_all.items.len(), 4);
    let none = store.list_certificates(Some(&DeviceId::new("nobody").unwrap()), None, 10).await.unwrap();
    assert!(none.items.is_empty());

    drop(store);
    db.cleanup().await;
}

async fn token_is_single_use(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    let token = [3u8; 32];
    let dev = device("dev-1", Some(&token));
    let other = device("dev-2", Some(&[4u8; 32]));
    store.insert_device(&dev, &DeviceMeta::default(), &ev()).await.unwrap();
    store.insert_device(&other, &DeviceMeta::default(), &ev()).await.unwrap();

    // Another device's token does not redeem for this one.
    let e = store
        .record_intent(&pending(&serial(1), &issuer, &other.id, &[1; 32], 5), Redeem::Token(&token))
        .await;
    assert_eq!(kind(e), ErrorKind::Conflict);

    store
        .record_intent(&pending(&serial(2), &issuer, &dev.id, &[1; 32], 10), Redeem::Token(&token))
        .await
        .unwrap();
    let e = store
        .record_intent(&pending(&serial(3), &issuer, &dev.id, &[2; 32], 11), Redeem::Token(&token))
        .await;
    assert_eq!(kind(e), ErrorKind::Conflict);
    // Nothing was written by the refused calls.
    assert_eq!(store.get_certificate(&serial(1)).await.unwrap(), None);
    assert_eq!(store.get_certificate(&serial(3)).await.unwrap(), None);
    assert_eq!(store.get_device(&dev.id).await.unwrap().unwrap().token_used_at, Some(t(10)));
    assert_eq!(store.get_device(&other.id).await.unwrap().unwrap().token_used_at, None);

    drop(store);
    db.cleanup().await;
}

async fn concurrent_redeems_one_wins(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    let token = [5u8; 32];
    let dev = device("dev-1", Some(&token));
    store.insert_device(&dev, &DeviceMeta::default(), &ev()).await.unwrap();

    let start = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for n in 0..50u64 {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        let p = pending(&serial(n + 1), &issuer, &dev.id, &[n as u8; 32], 10);
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            store.record_intent(&p, Redeem::Token(&token)).await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => ok += 1,
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
        }
    }
    assert_eq!(ok, 1);
    let certs = store.list_certificates(Some(&dev.id), None, 1000).await.unwrap();
    assert_eq!(certs.items.len(), 1);
    assert_eq!(store.list_certificates(None, None, 1000).await.unwrap().items.len(), 1);

    drop(store);
    db.cleanup().await;
}

async fn concurrent_completions_agree(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    let dev = device("dev-1", None);
    store.insert_device(&dev, &DeviceMeta::default(), &ev()).await.unwrap();
    let s = serial(1);
    store.record_intent(&pending(&s, &issuer, &dev.id, &[1; 32], 10), Redeem::Nothing).await.unwrap();

    let mut tasks = Vec::new();
    for n in 0..10u8 {
        let store = Arc::clone(&store);
        let s = s.clone();
        tasks.push(tokio::spawn(async move { store.complete_issuance(&s, &[n; 8], t(11), &ev()).await }));
    }
    let mut ders = Vec::new();
    for task in tasks {
        ders.push(task.await.unwrap().unwrap().cert_der.unwrap());
    }
    assert!(ders.windows(2).all(|w| w[0] == w[1]), "{ders:?}");
    assert_eq!(store.get_certificate(&s).await.unwrap().unwrap().cert_der, Some(ders[0].clone()));

    drop(store);
    db.cleanup().await;
}

async fn quarantined_device_cannot_redeem(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    let token = [6u8; 32];
    let dev = DeviceRecord { status: DeviceStatus::Quarantined, ..device("dev-q", Some(&token)) };
    store.insert_device(&dev, &DeviceMeta::default(), &ev()).await.unwrap();

    let e = store
        .record_intent(&pending(&serial(1), &issuer, &dev.id, &[1; 32], 10), Redeem::Token(&token))
        .await;
    assert_eq!(kind(e), ErrorKind::Conflict);
    assert_eq!(store.get_device(&dev.id).await.unwrap(), Some(dev.clone()));
    assert_eq!(store.get_certificate(&serial(1)).await.unwrap(), None);

    // A certificate recorded without a token (e.g. before the quarantine) is not handed out
    // when completed: it is stored revoked, and the device stays quarantined.
    store.record_intent(&pending(&serial(2), &issuer, &dev.id, &[2; 32], 10), Redeem::Nothing).await.unwrap();
    assert_eq!(kind(store.complete_issuance(&serial(2), b"der", t(11), &ev()).await), ErrorKind::Forbidden);
    assert_eq!(store.get_certificate(&serial(2)).await.unwrap().unwrap().status, CertStatus::Revoked);
    assert_eq!(store.get_device(&dev.id).await.unwrap().unwrap().status, DeviceStatus::Quarantined);

    drop(store);
    db.cleanup().await;
}

async fn revoke(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    let dev = device("dev-1", None);
    store.insert_device(&dev, &DeviceMeta::default(), &ev()).await.unwrap();

    assert_eq!(
        kind(store.revoke(&serial(1), RevocationReason::KeyCompromise, t(50), &ev()).await),
        ErrorKind::NotFound
    );

    store.record_intent(&pending(&serial(1), &issuer, &dev.id, &[1; 32], 10), Redeem::Nothing).await.unwrap();
    let e = store.revoke(&serial(1), RevocationReason::KeyCompromise, t(50), &ev()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.to_string().contains("not issued"), "{e}");
    assert_eq!(store.get_certificate(&serial(1)).await.unwrap().unwrap().status, CertStatus::Pending);

    let issued = store.complete_issuance(&serial(1), b"der", t(11), &ev()).await.unwrap();
    let revoked = store.revoke(&serial(1), RevocationReason::KeyCompromise, t(50), &ev()).await.unwrap();
    assert_eq!(revoked.status, CertStatus::Revoked);
    assert_eq!(revoked.revocation, Some((t(50), RevocationReason::KeyCompromise)));
    assert_eq!(revoked.cert_der, issued.cert_der);
    assert_eq!(store.get_certificate(&serial(1)).await.unwrap(), Some(revoked.clone()));

    // Idempotent: a second revocation changes nothing, whatever its reason and time.
    let again = store.revoke(&serial(1), RevocationReason::Superseded, t(60), &ev()).await.unwrap();
    assert_eq!(again, revoked);
    // Revoked certificates show up in lists and in the CSR lookup with their revocation.
    let listed = store.list_certificates(Some(&dev.id), None, 10).await.unwrap();
    assert_eq!(listed.items, vec![revoked.clone()]);
    assert_eq!(store.certificate_for_csr(&dev.id, &[1; 32]).await.unwrap(), Some(revoked));
    // Completing a revoked certificate does not un-revoke it.
    let done = store.complete_issuance(&serial(1), b"other", t(70), &ev()).await.unwrap();
    assert_eq!(done.status, CertStatus::Revoked);

    // Every reason round-trips.
    let reasons = [
        RevocationReason::Unspecified,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn,
        RevocationReason::AaCompromise,
    ];
    for (i, reason) in reasons.into_iter().enumerate() {
        let s = serial(100 + i as u64);
        store.record_intent(&pending(&s, &issuer, &dev.id, &[2; 32], 10), Redeem::Nothing).await.unwrap();
        store.complete_issuance(&s, b"der", t(11), &ev()).await.unwrap();
        let r = store.revoke(&s, reason, t(80), &ev()).await.unwrap();
        assert_eq!(r.revocation, Some((t(80), reason)));
    }

    drop(store);
    db.cleanup().await;
}

async fn quarantine_revokes_everything_and_release_restores(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(store.as_ref()).await;
    let (dev, other) = (device("q-1", None), device("q-2", None));
    store.insert_device(&dev, &DeviceMeta::default(), &ev()).await.unwrap();
    store.insert_device(&other, &DeviceMeta::default(), &ev()).await.unwrap();
    // Two issued certificates and one pending for q-1; one issued for q-2.
    for n in 1..=3 {
        store
            .record_intent(&pending(&serial(n), &issuer, &dev.id, b"csr", 10), Redeem::Nothing)
            .await
            .unwrap();
    }
    store.complete_issuance(&serial(1), b"der1", t(11), &ev()).await.unwrap();
    store.complete_issuance(&serial(2), b"der2", t(11), &ev()).await.unwrap();
    store.record_intent(&pending(&serial(9), &issuer, &other.id, b"csr", 10), Redeem::Nothing).await.unwrap();
    store.complete_issuance(&serial(9), b"der9", t(11), &ev()).await.unwrap();

    let unknown = DeviceId::new("nobody").unwrap();
    assert_eq!(
        kind(store.quarantine_device(&unknown, RevocationReason::KeyCompromise, t(20), &ev()).await),
        ErrorKind::NotFound
    );
    assert_eq!(kind(store.release_device(&unknown, t(20), &ev()).await), ErrorKind::NotFound);
    assert_eq!(
        kind(store.revoke_device_certificates(&unknown, RevocationReason::KeyCompromise, t(20), &ev()).await),
        ErrorKind::NotFound
    );

    let mut revoked =
        store.quarantine_device(&dev.id, RevocationReason::KeyCompromise, t(20), &ev()).await.unwrap();
    revoked.sort();
    assert_eq!(revoked, vec![serial(1), serial(2)]);
    assert_eq!(store.get_device(&dev.id).await.unwrap().unwrap().status, DeviceStatus::Quarantined);
    for n in [1, 2] {
        let c = store.get_certificate(&serial(n)).await.unwrap().unwrap();
        assert_eq!(c.status, CertStatus::Revoked);
        assert_eq!(c.revocation, Some((t(20), RevocationReason::KeyCompromise)));
    }
    // The pending one is untouched; the other device's certificate too.
    assert_eq!(store.get_certificate(&serial(3)).await.unwrap().unwrap().status, CertStatus::Pending);
    assert_eq!(store.get_certificate(&serial(9)).await.unwrap().unwrap().status, CertStatus::Issued);
    // Idempotent: nothing more to revoke, status unchanged.
    assert!(
        store
            .quarantine_device(&dev.id, RevocationReason::KeyCompromise, t(21), &ev())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.get_certificate(&serial(1)).await.unwrap().unwrap().revocation,
        Some((t(20), RevocationReason::KeyCompromise))
    );

    assert!(store.release_device(&dev.id, t(30), &ev()).await.unwrap());
    assert_eq!(store.get_device(&dev.id).await.unwrap().unwrap().status, DeviceStatus::Registered);
    assert!(!store.release_device(&dev.id, t(31), &ev()).await.unwrap(), "releasing twice is a no-op");
    // Release does not un-revoke.
    assert_eq!(store.get_certificate(&serial(1)).await.unwrap().unwrap().status, CertStatus::Revoked);

    // Revoking a device's certificates leaves the device's status alone.
    let got = store
        .revoke_device_certificates(&other.id, RevocationReason::Superseded, t(40), &ev())
        .await
        .unwrap();
    assert_eq!(got, vec![serial(9)]);
    assert_eq!(store.get_device(&other.id).await.unwrap().unwrap().status, DeviceStatus::Enrolled);
    db.cleanup().await;
}

async fn quarantine_during_issuance_revokes_the_new_certificate(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(store.as_ref()).await;
    let dev = device("q-race", None);
    store.insert_device(&dev, &DeviceMeta::default(), &ev()).await.unwrap();
    store.record_intent(&pending(&serial(1), &issuer, &dev.id, b"csr", 10), Redeem::Nothing).await.unwrap();
    // Quarantined between step 4 (intent) and step 6 (store the signed certificate).
    assert!(
        store
            .quarantine_device(&dev.id, RevocationReason::KeyCompromise, t(11), &ev())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(kind(store.complete_issuance(&serial(1), b"der1", t(12), &ev()).await), ErrorKind::Forbidden);
    let c = store.get_certificate(&serial(1)).await.unwrap().unwrap();
    assert_eq!(c.status, CertStatus::Revoked, "stored, and revoked: never handed out as good");
    assert_eq!(c.cert_der.as_deref(), Some(b"der1".as_slice()));
    assert_eq!(c.revocation, Some((t(12), RevocationReason::PrivilegeWithdrawn)));
    assert_eq!(store.get_device(&dev.id).await.unwrap().unwrap().status, DeviceStatus::Quarantined);
    db.cleanup().await;
}

async fn serial_collision(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    let token = [8u8; 32];
    let a = device("dev-a", None);
    let b = device("dev-b", Some(&token));
    store.insert_device(&a, &DeviceMeta::default(), &ev()).await.unwrap();
    store.insert_device(&b, &DeviceMeta::default(), &ev()).await.unwrap();

    store.record_intent(&pending(&serial(1), &issuer, &a.id, &[1; 32], 10), Redeem::Nothing).await.unwrap();
    let e = store
        .record_intent(&pending(&serial(1), &issuer, &a.id, &[2; 32], 11), Redeem::Nothing)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.to_string().contains(&serial(1).to_hex()), "{e}");

    // A collision while redeeming a token rolls the redemption back: the token still works.
    let e =
        store.record_intent(&pending(&serial(1), &issuer, &b.id, &[3; 32], 12), Redeem::Token(&token)).await;
    assert_eq!(kind(e), ErrorKind::Conflict);
    assert_eq!(store.get_device(&b.id).await.unwrap().unwrap().token_used_at, None);
    store
        .record_intent(&pending(&serial(2), &issuer, &b.id, &[3; 32], 13), Redeem::Token(&token))
        .await
        .unwrap();

    // The original is untouched.
    let c = store.get_certificate(&serial(1)).await.unwrap().unwrap();
    assert_eq!((c.device, c.csr_sha256), (a.id, vec![1; 32]));

    drop(store);
    db.cleanup().await;
}

/// A DER SEQUENCE of `content`, with a long-form length when it needs one.
fn der_sequence(content: &[u8]) -> Vec<u8> {
    let mut out = vec![0x30];
    match content.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// The `tbs_der` column of certificate `s`, as stored.
async fn stored_tbs_column(db: &TestDb, s: &Serial) -> Vec<u8> {
    use sqlx::Connection;
    let q = "SELECT tbs_der FROM certificates WHERE serial = $1";
    match db.backend() {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(q).bind(s.to_hex()).fetch_one(&mut conn).await.unwrap()
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(q).bind(s.to_hex()).fetch_one(&mut conn).await.unwrap()
        }
    }
}

/// A certificate whose TBSCertificate is its first element is stored without a second copy
/// of it, and read back whole; other bytes are kept as given.
async fn certificate_bytes_are_stored_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    let dev = device("sensor-1", None);
    store.insert_device(&dev, &DeviceMeta::default(), &ev()).await.unwrap();
    for (n, tbs_len) in [(1u64, 60usize), (2, 200), (3, 700)] {
        let s = serial(n);
        let mut p = pending(&s, &issuer, &dev.id, &[n as u8; 32], 100);
        p.tbs_der = der_sequence(&(0..tbs_len).map(|i| i as u8).collect::<Vec<_>>());
        let cert =
            der_sequence(&[p.tbs_der.clone(), der_sequence(&[6, 1, 42]), vec![3, 2, 0, 0xee]].concat());
        store.record_intent(&p, Redeem::Nothing).await.unwrap();
        let issued = store.complete_issuance(&s, &cert, t(101), &ev()).await.unwrap();
        assert_eq!(issued.tbs_der, p.tbs_der);
        let read = store.get_certificate(&s).await.unwrap().unwrap();
        assert_eq!((read.tbs_der, read.cert_der), (p.tbs_der.clone(), Some(cert)));
        assert!(stored_tbs_column(&db, &s).await.is_empty(), "TBS of {tbs_len} bytes stored twice");
        let listed = store.list_certificates(Some(&dev.id), None, 10).await.unwrap();
        assert!(listed.items.iter().any(|c| c.serial == s && c.tbs_der == p.tbs_der));
    }
    // A DER that does not hold the TBS (not a certificate): both kept as given.
    let s = serial(4);
    let p = pending(&s, &issuer, &dev.id, &[4; 32], 100);
    store.record_intent(&p, Redeem::Nothing).await.unwrap();
    store.complete_issuance(&s, &der_sequence(&der_sequence(b"other")), t(101), &ev()).await.unwrap();
    assert_eq!(stored_tbs_column(&db, &s).await, p.tbs_der);
    assert_eq!(store.get_certificate(&s).await.unwrap().unwrap().tbs_der, p.tbs_der);

    drop(store);
    db.cleanup().await;
}

/// Every certificate names a device that exists. The authority records an intent only for
/// a device it has just read, and devices are never deleted; should an intent for an
/// unknown device come anyway, its certificate is refused. PostgreSQL checks it when the
/// certificate is stored (step 6: its intents have no foreign keys since migration 0011),
/// SQLite already when the intent is recorded.
async fn certificates_name_devices_that_exist(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    let ghost = DeviceId::new("ghost").unwrap();
    let s = serial(1);
    let p = pending(&s, &issuer, &ghost, &[1; 32], 100);
    match (backend, store.record_intent(&p, Redeem::Nothing).await) {
        (Backend::Sqlite, Err(_)) => {}
        (Backend::Postgres, Ok(())) => {
            let cert =
                der_sequence(&[p.tbs_der.clone(), der_sequence(&[6, 1, 42]), vec![3, 2, 0, 0xee]].concat());
            let done = store.complete_issuance(&s, &cert, t(101), &ev()).await;
            assert!(done.is_err(), "a certificate for an unknown device was stored");
            let left = store.get_certificate(&s).await.unwrap().unwrap();
            assert_eq!((left.status, left.cert_der), (CertStatus::Pending, None));
        }
        (b, r) => panic!("{b:?}: recording an intent for an unknown device gave {r:?}"),
    }
    assert!(
        store
            .list_certificates(Some(&ghost), None, 10)
            .await
            .unwrap()
            .items
            .iter()
            .all(|c| c.cert_der.is_none())
    );

    drop(store);
    db.cleanup().await;
}

async fn migrations_run_twice(backend: Backend) {
    let db = TestDb::new(backend).await;
    let first = open(&db).await;
    first.insert_device(&device("dev-1", None), &DeviceMeta::default(), &ev()).await.unwrap();
    // A second store on the same database while the first is open, then after it is gone.
    let second = open(&db).await;
    assert!(second.get_device(&DeviceId::new("dev-1").unwrap()).await.unwrap().is_some());
    drop(first);
    drop(second);
    let third = open(&db).await;
    assert!(third.get_device(&DeviceId::new("dev-1").unwrap()).await.unwrap().is_some());
    drop(third);
    db.cleanup().await;
}

// --- single-backend cases ---

#[tokio::test]
async fn unreachable_postgres_is_unavailable() {
    let started = Instant::now();
    let e = PgStore::connect("postgres://devid:s3cret-pw@127.0.0.1:1/devid").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("127.0.0.1:1/devid"), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
}

/// PostgreSQL: the issuance path's reads (batched by lists of keys, and of a lone key) and
/// its writes answer the same whatever the pool size: with one connection (no keyed
/// connections: a read-only transaction planned the same way), with two and four (one and
/// two keyed, for the reads only), and with six and the default (three and six keyed, the
/// writes there too).
#[tokio::test]
async fn keyed_connections_answer_with_every_pool_size() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    for (n, id) in [(1u8, "r-1"), (2, "r-2"), (3, "r-3")] {
        store.insert_device(&device(id, Some(&[n; 32])), &DeviceMeta::default(), &ev()).await.unwrap();
        store
            .record_intent(&pending(&serial(n.into()), &issuer, &dev_id(id), b"c", 10), Redeem::Nothing)
            .await
            .unwrap();
        store.complete_issuance(&serial(n.into()), b"der", t(11), &ev()).await.unwrap();
    }
    let challenge = challenge_record(7, 100);
    store.insert_challenges(std::slice::from_ref(&challenge), None).await.unwrap();
    drop(store);
    // 1: no keyed pool; 2 and 4: keyed reads only; 6 and the default: the group commit's
    // writes on the keyed connections too (`BEGIN READ WRITE` on read-only sessions).
    let (meta, issued) = (DeviceMeta::default(), ev());
    for (k, size) in [Some(1), Some(2), Some(4), Some(6), None].into_iter().enumerate() {
        let pool = devid_store::PoolSize(size.and_then(std::num::NonZeroU32::new));
        let store = devid_store::connect_with(&db.url, pool).await.unwrap();
        for round in 0..8u8 {
            // The step-1 reads of a lone key, then a token enrollment's writes (redeemed,
            // durable and relaxed), as the group commit makes them.
            let tag = u8::try_from(k).unwrap() * 8 + round;
            let hash = [0x80 | tag; 32];
            let id = dev_id(&format!("w-{tag}"));
            store.insert_device(&device(id.as_str(), Some(&hash)), &meta, &ev()).await.unwrap();
            let found = store.device_by_token_hash(&hash).await.unwrap().expect("by token");
            assert_eq!(found.id, id, "pool {size:?}");
            assert_eq!(
                store.get_challenge(&[7; 32]).await.unwrap(),
                Some(challenge.clone()),
                "pool {size:?}"
            );
            let (d, _, prior) = store.device_for_csr(&id, b"csr-w").await.unwrap().expect("device for csr");
            assert_eq!((d.id, prior), (id.clone(), None), "pool {size:?}");
            let s = serial(1_000 + u64::from(tag));
            let p = pending(&s, &issuer, &id, b"csr-w", 20);
            let intent = Intent { pending: &p, redeem: Redeem::Token(&hash), register: None };
            let answers = store.record_intents(std::slice::from_ref(&intent), round % 2 == 0).await.unwrap();
            assert!(answers.iter().all(Result::is_ok), "pool {size:?}: {answers:?}");
            let done = Completion { serial: &s, cert_der: b"der-w", audit: &issued };
            let stored = store.complete_issuances(std::slice::from_ref(&done), t(21)).await.unwrap();
            assert_eq!(stored.len(), 1, "pool {size:?}");
            assert_eq!(stored[0].as_ref().unwrap().serial, s, "pool {size:?}");
            let ctx = store.renewal_context(&s, b"csr-w").await.unwrap().expect("renewal context");
            assert_eq!((ctx.current.serial, ctx.device.id), (s.clone(), id), "pool {size:?}");
            // The token is spent: the same intent again is refused, on any connection.
            let again = store.record_intents(std::slice::from_ref(&intent), false).await;
            assert!(!matches!(again.as_deref(), Ok([Ok(())])), "pool {size:?}: {again:?}");
            // More calls than the connections, so that each connection is used again.
            let mut ids: Vec<String> = store
                .devices_by_token_hashes(&[vec![3; 32], vec![9; 32], vec![1; 32]])
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.id.as_str().to_string())
                .collect();
            ids.sort();
            assert_eq!(ids, ["r-1", "r-3"], "pool {size:?}");
            let mut serials: Vec<Serial> = store
                .certificates_by_serial(&[serial(2), serial(99), serial(1)])
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.serial)
                .collect();
            serials.sort_by_key(|s| s.to_hex());
            assert_eq!(serials, [serial(1), serial(2)], "pool {size:?}");
            let got = store.get_challenges(&[vec![6; 32], vec![7; 32]]).await.unwrap();
            assert_eq!(got, vec![challenge.clone()], "pool {size:?}");
        }
    }
    db.cleanup().await;
}

#[tokio::test]
async fn closed_stores_are_unavailable() {
    let db = TestDb::new(Backend::Postgres).await;
    let pg = PgStore::connect(&db.url).await.unwrap();
    pg.ping().await.unwrap();
    pg.close().await;
    assert_eq!(kind(pg.ping().await), ErrorKind::Unavailable);
    db.cleanup().await;

    let db = TestDb::new(Backend::Sqlite).await;
    let lite = SqliteStore::connect(&db.url).await.unwrap();
    lite.ping().await.unwrap();
    lite.close().await;
    assert_eq!(kind(lite.ping().await), ErrorKind::Unavailable);
    assert_eq!(
        kind(lite.insert_device(&device("d", None), &DeviceMeta::default(), &ev()).await),
        ErrorKind::Unavailable
    );
    db.cleanup().await;
}

#[tokio::test]
async fn unopenable_sqlite_file_is_unavailable() {
    let e = SqliteStore::connect("sqlite:/nonexistent-devid-dir/sub/devid.db").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
}

#[tokio::test]
async fn connect_dispatches_on_the_url() {
    assert_eq!(kind(devid_store::connect("mysql://x/y").await), ErrorKind::InvalidInput);

    // In memory: one shared connection, so what is written is read back.
    let store = devid_store::connect("sqlite::memory:").await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    let issuer = with_ca(&*store).await;
    let dev = device("dev-1", Some(&[1; 32]));
    store.insert_device(&dev, &DeviceMeta::default(), &ev()).await.unwrap();
    store
        .record_intent(&pending(&serial(1), &issuer, &dev.id, &[1; 32], 10), Redeem::Token(&[1; 32]))
        .await
        .unwrap();
    let c = store.complete_issuance(&serial(1), b"der", t(11), &ev()).await.unwrap();
    assert_eq!(store.get_certificate(&serial(1)).await.unwrap(), Some(c));
    assert_eq!(store.list_devices(None, 10).await.unwrap().items.len(), 1);
}

#[tokio::test]
async fn sqlite_file_is_created_and_persists() {
    let db = TestDb::new(Backend::Sqlite).await;
    let path = db.url.strip_prefix("sqlite:").unwrap().to_string();
    assert!(!std::path::Path::new(&path).exists());
    let store = SqliteStore::connect(&db.url).await.unwrap();
    store.insert_device(&device("dev-1", None), &DeviceMeta::default(), &ev()).await.unwrap();
    store.close().await;
    assert!(std::path::Path::new(&path).exists());
    let store = SqliteStore::connect(&db.url).await.unwrap();
    assert!(store.get_device(&DeviceId::new("dev-1").unwrap()).await.unwrap().is_some());
    store.close().await;
    db.cleanup().await;
}

async fn events_record_issuance_and_revocation(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(store.as_ref()).await;
    assert_eq!(store.last_event_seq().await.unwrap(), 0);
    let dev = device("ev-1", None);
    store.insert_device(&dev, &DeviceMeta::default(), &ev()).await.unwrap();
    for n in 1..=2 {
        store
            .record_intent(&pending(&serial(n), &issuer, &dev.id, b"csr", 10), Redeem::Nothing)
            .await
            .unwrap();
        store.complete_issuance(&serial(n), b"der", t(11), &ev()).await.unwrap();
    }
    store.revoke(&serial(1), RevocationReason::KeyCompromise, t(12), &ev()).await.unwrap();
    store.revoke(&serial(1), RevocationReason::KeyCompromise, t(13), &ev()).await.unwrap(); // idempotent: no event
    store.quarantine_device(&dev.id, RevocationReason::PrivilegeWithdrawn, t(14), &ev()).await.unwrap();
    let events = store.events_after(0, 100).await.unwrap();
    let got: Vec<(Serial, CertEventKind, i64)> =
        events.iter().map(|e| (e.serial.clone(), e.kind, e.at.0)).collect();
    assert_eq!(
        got,
        vec![
            (serial(1), CertEventKind::Issued, T0 + 11),
            (serial(2), CertEventKind::Issued, T0 + 11),
            (serial(1), CertEventKind::Revoked, T0 + 12),
            (serial(2), CertEventKind::Revoked, T0 + 14),
        ]
    );
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(events.iter().all(|e| e.issuer == issuer));
    let last = store.last_event_seq().await.unwrap();
    assert_eq!(last, events[3].seq);
    assert_eq!(store.events_after(events[1].seq, 100).await.unwrap().len(), 2);
    assert_eq!(store.events_after(events[0].seq, 1).await.unwrap().len(), 1);
    assert!(store.events_after(last, 100).await.unwrap().is_empty());
    db.cleanup().await;
}

async fn ocsp_responders_newest_first(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(store.as_ref()).await;
    assert_eq!(store.latest_ocsp_responder(&issuer).await.unwrap(), None);
    let r = |id: &str, not_after: i64| OcspResponderRecord {
        id: id.into(),
        issuer: issuer.clone(),
        cert_der: id.as_bytes().to_vec(),
        key_ref: format!("soft:{id}"),
        not_before: t(0),
        not_after: t(not_after),
        created_at: t(0),
    };
    store.put_ocsp_responder(&r("a", 100)).await.unwrap();
    store.put_ocsp_responder(&r("b", 300)).await.unwrap();
    store.put_ocsp_responder(&r("c", 200)).await.unwrap();
    assert_eq!(store.latest_ocsp_responder(&issuer).await.unwrap(), Some(r("b", 300)));
    assert_eq!(kind(store.put_ocsp_responder(&r("b", 400)).await), ErrorKind::Conflict);
    let valid: Vec<String> =
        store.ocsp_responders(&issuer, t(150)).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(valid, vec!["b".to_string(), "c".to_string()], "valid at T0+150, newest first");
    db.cleanup().await;
}

/// A sink that records what it is given and "signs" by listing the serials.
#[derive(Default)]
struct ListSink {
    number: u64,
    /// The store's size hint.
    expected: Option<u64>,
    entries: Vec<(Serial, i64, RevocationReason)>,
    pause: Duration,
}

impl CrlSink for ListSink {
    fn begin(&mut self, crl_number: u64, expected_entries: u64) -> Result<(), String> {
        self.number = crl_number;
        self.expected = Some(expected_entries);
        Ok(())
    }
    fn entry(
        &mut self,
        serial: &Serial,
        revoked_at: UnixTime,
        reason: RevocationReason,
    ) -> Result<(), String> {
        self.entries.push((serial.clone(), revoked_at.0, reason));
        Ok(())
    }
    fn finish(&mut self) -> Result<(UnixTime, UnixTime, Vec<u8>), String> {
        std::thread::sleep(self.pause);
        let mut der = format!("crl#{}:", self.number).into_bytes();
        for (s, _, _) in &self.entries {
            der.extend_from_slice(s.to_hex().as_bytes());
        }
        Ok((t(50), t(150), der))
    }
}

async fn crl_rebuild_streams_revoked_unexpired_and_numbers_grow(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(store.as_ref()).await;
    let dev = device("crl-1", None);
    store.insert_device(&dev, &DeviceMeta::default(), &ev()).await.unwrap();
    // serial 1: revoked, valid until T0+10+86400; serial 2: revoked but expired by `now`;
    // serial 3: issued, not revoked.
    for n in 1..=3 {
        let mut p = pending(&serial(n), &issuer, &dev.id, b"csr", 10);
        if n == 2 {
            p.not_after = t(20);
        }
        store.record_intent(&p, Redeem::Nothing).await.unwrap();
        store.complete_issuance(&serial(n), b"der", t(11), &ev()).await.unwrap();
    }
    store.revoke(&serial(1), RevocationReason::KeyCompromise, t(12), &ev()).await.unwrap();
    store.revoke(&serial(2), RevocationReason::Superseded, t(13), &ev()).await.unwrap();

    let mut sink = ListSink::default();
    let crl = store.rebuild_crl(&issuer, 0, t(30), &mut sink).await.unwrap().expect("built");
    assert_eq!(crl.crl_number, 1);
    assert_eq!(
        sink.entries,
        vec![(serial(1), T0 + 12, RevocationReason::KeyCompromise)],
        "expired ones drop off"
    );
    assert_eq!(sink.expected, Some(1), "the size hint counts what the CRL lists");
    assert_eq!(store.get_crl(&issuer, 0).await.unwrap(), Some(crl.clone()));
    assert_eq!(store.crl_versions().await.unwrap(), vec![(issuer.clone(), 0, 1)]);

    let mut sink = ListSink::default();
    let crl2 = store.rebuild_crl(&issuer, 0, t(30), &mut sink).await.unwrap().expect("built");
    assert_eq!(crl2.crl_number, 2, "the CRL number only grows");
    assert_eq!(store.get_crl(&issuer, 0).await.unwrap().unwrap().crl_number, 2);
    // Shards are numbered independently.
    let crl_s1 =
        store.rebuild_crl(&issuer, 1, t(30), &mut ListSink::default()).await.unwrap().expect("built");
    assert_eq!(crl_s1.crl_number, 1);
    assert_eq!(store.get_crl(&issuer, 7).await.unwrap(), None);
    db.cleanup().await;
}

async fn crl_rebuild_is_one_node_at_a_time(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(store.as_ref()).await;
    match backend {
        Backend::Postgres => {
            // Another node holds the build lock of (issuer, shard 0) in its transaction.
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            let mut tx = conn.begin().await.unwrap();
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(format!("devid-crl:{issuer}:0"))
                .execute(&mut *tx)
                .await
                .unwrap();
            let blocked = store.rebuild_crl(&issuer, 0, t(30), &mut ListSink::default()).await.unwrap();
            assert_eq!(blocked, None, "the other node is building this CRL");
            // Other shards are not blocked.
            assert!(store.rebuild_crl(&issuer, 1, t(30), &mut ListSink::default()).await.unwrap().is_some());
            tx.commit().await.unwrap();
            let built = store.rebuild_crl(&issuer, 0, t(30), &mut ListSink::default()).await.unwrap();
            assert_eq!(built.map(|c| c.crl_number), Some(1));
        }
        Backend::Sqlite => {
            // One writer: concurrent builds queue and number one after the other.
            let other = open(&db).await;
            let (s1, i1) = (store.clone(), issuer.clone());
            let a =
                tokio::spawn(async move { s1.rebuild_crl(&i1, 0, t(30), &mut ListSink::default()).await });
            let b = other.rebuild_crl(&issuer, 0, t(30), &mut ListSink::default()).await.unwrap();
            let a = a.await.unwrap().unwrap();
            let mut numbers = vec![a.unwrap().crl_number, b.unwrap().crl_number];
            numbers.sort();
            assert_eq!(numbers, vec![1, 2]);
        }
    }
    db.cleanup().await;
}

async fn credentials_and_token_keys(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let c = CredentialRecord {
        client_id: "cl_1".into(),
        secret_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        role: "operator".into(),
        name: "line 1".into(),
        created_at: t(1),
        revoked_at: None,
        groups: Some(vec!["g1".into(), "g2".into()]),
    };
    store.insert_credential(&c, &ev()).await.unwrap();
    assert_eq!(kind(store.insert_credential(&c, &ev()).await), ErrorKind::Conflict);
    let bad_role = CredentialRecord { client_id: "cl_2".into(), role: "root".into(), ..c.clone() };
    assert!(store.insert_credential(&bad_role, &ev()).await.is_err(), "roles are checked by the schema");
    assert_eq!(store.get_credential("cl_1").await.unwrap(), Some(c.clone()));
    assert_eq!(store.get_credential("nope").await.unwrap(), None);
    let revoked = store.revoke_credential("cl_1", t(5), &ev()).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(t(5)));
    assert_eq!(
        store.revoke_credential("cl_1", t(9), &ev()).await.unwrap().revoked_at,
        Some(t(5)),
        "first revocation stands"
    );
    assert_eq!(kind(store.revoke_credential("nope", t(9), &ev()).await), ErrorKind::NotFound);
    assert_eq!(store.list_credentials().await.unwrap().len(), 1);

    let k = |kid: &str, created: i64, not_after: i64| TokenKeyRecord {
        kid: kid.into(),
        key_ref: format!("soft:{kid}"),
        public_spki: vec![1, 2, 3],
        created_at: t(created),
        not_after: t(not_after),
    };
    store.put_token_key(&k("a", 1, 100)).await.unwrap();
    store.put_token_key(&k("b", 2, 200)).await.unwrap();
    let kids: Vec<String> = store.token_keys(t(50)).await.unwrap().into_iter().map(|k| k.kid).collect();
    assert_eq!(kids, vec!["b".to_string(), "a".to_string()]);
    let kids: Vec<String> = store.token_keys(t(150)).await.unwrap().into_iter().map(|k| k.kid).collect();
    assert_eq!(kids, vec!["b".to_string()]);

    assert!(!store.is_token_revoked("j1").await.unwrap());
    store.revoke_token("j1", t(100), &ev()).await.unwrap();
    store.revoke_token("j1", t(100), &ev()).await.unwrap();
    assert!(store.is_token_revoked("j1").await.unwrap());
    db.cleanup().await;
}

/// Bulk pre-registration: one transaction per call, existing ids left alone (and not
/// reported as created), labels and the batch id stored, a resubmission creates nothing.
async fn device_batch_insert(backend: Backend) {
    use devid_store::BatchDevice;
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    store
        .insert_device(&device("pre-existing", Some(&[9; 32])), &DeviceMeta::default(), &ev())
        .await
        .unwrap();
    let row = |i: u32| BatchDevice {
        id: DeviceId::new(format!("bulk-{i:05}")).unwrap(),
        token_hash: Some([&i.to_be_bytes()[..], &[1u8; 28]].concat()),
        labels: i.is_multiple_of(2).then(|| format!(r#"{{"line":"{i}"}}"#)),
        group: None,
        method: None,
    };
    // More than one statement's worth, so the chunking inside a call is exercised too.
    let n = devid_store::BATCH_STATEMENT_ROWS as u32 + 500;
    let mut batch: Vec<BatchDevice> = (0..n).map(row).collect();
    batch.push(BatchDevice {
        id: DeviceId::new("pre-existing").unwrap(),
        token_hash: None,
        labels: None,
        group: None,
        method: None,
    });
    let created = store.insert_device_batch("b-1", &batch, t(5), &ev()).await.unwrap();
    assert_eq!(created.len(), n as usize);
    assert!(!created.iter().any(|d| d.as_str() == "pre-existing"));

    // The existing device is untouched: same token, no batch id, no labels.
    let pre = DeviceId::new("pre-existing").unwrap();
    assert_eq!(store.get_device(&pre).await.unwrap().unwrap().token_hash, Some(vec![9; 32]));
    assert_eq!(store.device_meta(&pre).await.unwrap().unwrap(), devid_store::DeviceMeta::default());

    let d = store.get_device(&DeviceId::new("bulk-00002").unwrap()).await.unwrap().unwrap();
    assert_eq!(d.status, DeviceStatus::Registered);
    assert_eq!(d.created_at, t(5));
    assert_eq!(d.token_hash, row(2).token_hash);
    let meta = store.device_meta(&d.id).await.unwrap().unwrap();
    assert_eq!(meta.labels.as_deref(), Some(r#"{"line":"2"}"#));
    assert_eq!(meta.batch_id.as_deref(), Some("b-1"));
    let odd = store.device_meta(&DeviceId::new("bulk-00003").unwrap()).await.unwrap().unwrap();
    assert_eq!((odd.labels, odd.batch_id.as_deref()), (None, Some("b-1")));
    assert_eq!(store.device_meta(&DeviceId::new("nope").unwrap()).await.unwrap(), None);

    // Resubmitting the same batch, or part of it with new rows: only the new rows are created.
    assert!(store.insert_device_batch("b-1", &batch, t(6), &ev()).await.unwrap().is_empty());
    let mut part: Vec<BatchDevice> = (10..20).map(row).collect();
    part.push(row(n));
    let created = store.insert_device_batch("b-1", &part, t(7), &ev()).await.unwrap();
    assert_eq!(created, vec![DeviceId::new(format!("bulk-{n:05}")).unwrap()]);
    let all = store.list_devices(None, 1000).await.unwrap();
    assert_eq!(all.items.len(), 1000);
    assert!(store.insert_device_batch("b-1", &[], t(8), &ev()).await.unwrap().is_empty());
    db.cleanup().await;
}

/// Acts append in their own transaction; concurrent appends get dense sequence numbers and
/// one unbroken chain; a refused act leaves no entry.
async fn audit_chain_is_dense_and_verifiable(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    assert_eq!(store.audit_head().await.unwrap(), (0, vec![0; 32]));
    store.insert_device(&device("a-1", None), &DeviceMeta::default(), &ev()).await.unwrap();
    // A refused act (duplicate id) rolls its entry back with it.
    assert!(store.insert_device(&device("a-1", None), &DeviceMeta::default(), &ev()).await.is_err());
    let mut tasks = Vec::new();
    for n in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let e = AuditEvent::new(t(n), format!("actor-{n}"), "auth.failure", "x", serde_json::json!({}));
            store.append_audit(&e).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let entries = store.audit_entries(0, 1000).await.unwrap();
    assert_eq!(entries.len(), 21);
    let mut prev = devid_store::audit::GENESIS_HASH.to_vec();
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.seq, i as i64 + 1);
        assert_eq!(e.prev_hash, prev);
        assert_eq!(e.hash, devid_store::audit::entry_hash(&prev, e.seq, &e.event).to_vec());
        prev = e.hash.clone();
    }
    assert_eq!(store.audit_head().await.unwrap(), (21, prev));
    assert_eq!(store.audit_entries(19, 1000).await.unwrap().len(), 2);
    assert_eq!(entries[0].event.details, r#"{"k":"v"}"#);
    db.cleanup().await;
}

/// Groups round-trip (anchors, sealed key), refuse duplicates and deletion while devices
/// belong to them; a challenge is redeemed once, not after it expires; ensure_device is
/// idempotent; a renewal records its predecessor.
async fn groups_challenges_and_lineage(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    let g = devid_store::GroupRecord {
        name: "line-7".into(),
        methods: vec!["x509".into(), "symmetric".into()],
        registration: "optional".into(),
        id_source: "subject-serial".into(),
        validity_secs: Some(3600),
        trust_anchors: vec![b"anchor-1".to_vec(), b"".to_vec(), b"anchor-3".to_vec()],
        crls: vec![],
        master_key: Some(b"sealed".to_vec()),
        rate_per_minute: Some(60),
        created_at: t(1),
        updated_at: t(1),
    };
    store.put_group(&g, false, &ev()).await.unwrap();
    assert_eq!(kind(store.put_group(&g, false, &ev()).await), ErrorKind::Conflict);
    assert_eq!(store.get_group("line-7").await.unwrap().unwrap(), g);
    let g2 = devid_store::GroupRecord {
        registration: "required".into(),
        updated_at: t(2),
        created_at: t(2),
        ..g.clone()
    };
    store.put_group(&g2, true, &ev()).await.unwrap();
    let got = store.get_group("line-7").await.unwrap().unwrap();
    assert_eq!((got.registration.as_str(), got.created_at, got.updated_at), ("required", t(1), t(2)));
    assert_eq!(store.list_groups().await.unwrap().len(), 1);
    assert!(store.get_group("nope").await.unwrap().is_none());

    let meta =
        DeviceMeta { group: Some("line-7".into()), method: Some("x509".into()), ..DeviceMeta::default() };
    let dev = device("g-dev", None);
    assert!(store.ensure_device(&dev, &meta, &ev()).await.unwrap());
    assert!(!store.ensure_device(&dev, &meta, &ev()).await.unwrap());
    assert_eq!(store.device_meta(&dev.id).await.unwrap().unwrap().group.as_deref(), Some("line-7"));
    assert_eq!(kind(store.delete_group("line-7", &ev()).await), ErrorKind::Conflict);
    assert_eq!(kind(store.delete_group("nope", &ev()).await), ErrorKind::NotFound);

    // A device naming a group that does not exist (deleted after the caller checked it) is
    // NotFound on every insert path, and nothing is written.
    let gone = DeviceMeta { group: Some("gone".into()), ..DeviceMeta::default() };
    let lost = device("lost-1", None);
    assert_eq!(kind(store.insert_device(&lost, &gone, &ev()).await), ErrorKind::NotFound);
    assert_eq!(kind(store.ensure_device(&lost, &gone, &ev()).await), ErrorKind::NotFound);
    let row = devid_store::BatchDevice {
        id: lost.id.clone(),
        token_hash: None,
        labels: None,
        group: Some("gone".into()),
        method: None,
    };
    assert_eq!(kind(store.insert_device_batch("b-gone", &[row], t(3), &ev()).await), ErrorKind::NotFound);
    let p = pending(&serial(900), &issuer, &lost.id, &[9; 32], 3);
    let reg = AuditEvent::new(t(3), "device:lost-1", "device.register", "lost-1", serde_json::json!({}));
    let intent = Intent { pending: &p, redeem: Redeem::Nothing, register: Some((&gone, &reg)) };
    let outcome = store.record_intents(std::slice::from_ref(&intent), false).await;
    let refused = match outcome {
        Err(e) => e.kind(),
        Ok(mut per_item) => kind(per_item.remove(0)),
    };
    assert_eq!(refused, ErrorKind::NotFound);
    assert!(store.get_device(&lost.id).await.unwrap().is_none());
    assert!(store.get_certificate(&p.serial).await.unwrap().is_none(), "no intent without its device");

    // A device that names a group while it is being deleted: the deletion is a Conflict
    // (on PostgreSQL the device's uncommitted insert holds the group's row, so the delete
    // passes its member check, waits, and then fails on the foreign key).
    let doomed = devid_store::GroupRecord { name: "doomed".into(), ..g.clone() };
    store.put_group(&doomed, false, &ev()).await.unwrap();
    if backend == Backend::Postgres {
        let mut holder = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
        sqlx::query(
            "INSERT INTO devices (id, status, created_at, updated_at, group_name) \
             VALUES ('late-1', 'registered', 1, 1, 'doomed')",
        )
        .execute(&mut holder)
        .await
        .unwrap();
        let deleting = {
            let store = store.clone();
            tokio::spawn(async move { store.delete_group("doomed", &ev()).await })
        };
        let mut watcher = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND query LIKE 'DELETE FROM enrollment_groups%'",
            )
            .fetch_one(&mut watcher)
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the group's deletion never waited for the device's insert");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
        assert_eq!(kind(deleting.await.unwrap()), ErrorKind::Conflict);
    } else {
        let late = DeviceMeta { group: Some("doomed".into()), ..DeviceMeta::default() };
        store.insert_device(&device("late-1", None), &late, &ev()).await.unwrap();
        assert_eq!(kind(store.delete_group("doomed", &ev()).await), ErrorKind::Conflict);
    }
    assert!(store.get_group("doomed").await.unwrap().is_some());

    let c = ChallengeRecord { group: "line-7".into(), ..challenge_record(7, 300) };
    store.insert_challenge(&c, Some(t(0))).await.unwrap();
    assert_eq!(store.get_challenge(&[7; 32]).await.unwrap().unwrap(), c);
    // Expired at the intent's time: refused.
    let late = PendingCert { created_at: t(301), ..pending(&serial(1), &issuer, &dev.id, &[1; 32], 301) };
    assert_eq!(kind(store.record_intent(&late, Redeem::Nonce(&[7; 32])).await), ErrorKind::Conflict);
    store
        .record_intent(&pending(&serial(1), &issuer, &dev.id, &[1; 32], 10), Redeem::Nonce(&[7; 32]))
        .await
        .unwrap();
    assert_eq!(
        kind(
            store
                .record_intent(&pending(&serial(2), &issuer, &dev.id, &[2; 32], 11), Redeem::Nonce(&[7; 32]))
                .await
        ),
        ErrorKind::Conflict
    );
    assert!(store.get_challenge(&[7; 32]).await.unwrap().unwrap().redeemed_at.is_some());
    // Kept while no purge is asked for, even expired; purged once one is.
    let c3 = devid_store::ChallengeRecord { nonce_hash: vec![9; 32], ..c.clone() };
    store.insert_challenge(&c3, None).await.unwrap();
    assert!(store.get_challenge(&[7; 32]).await.unwrap().is_some());
    let c2 = devid_store::ChallengeRecord { nonce_hash: vec![8; 32], ..c.clone() };
    store.insert_challenge(&c2, Some(t(400))).await.unwrap();
    assert!(store.get_challenge(&[7; 32]).await.unwrap().is_none());

    // Lineage.
    store.complete_issuance(&serial(1), b"der1", t(11), &ev()).await.unwrap();
    let renewal =
        PendingCert { predecessor: Some(serial(1)), ..pending(&serial(3), &issuer, &dev.id, &[3; 32], 20) };
    store.record_intent(&renewal, Redeem::Nothing).await.unwrap();
    assert_eq!(store.get_certificate(&serial(3)).await.unwrap().unwrap().predecessor, Some(serial(1)));
    db.cleanup().await;
}

/// Heartbeats count the live nodes.
async fn nodes_are_counted(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    assert_eq!(store.node_heartbeat("a", t(100), t(85)).await.unwrap(), 1);
    assert_eq!(store.node_heartbeat("b", t(101), t(86)).await.unwrap(), 2);
    assert_eq!(store.node_heartbeat("a", t(110), t(95)).await.unwrap(), 2);
    // b stops; 15 s later only a is live.
    assert_eq!(store.node_heartbeat("a", t(130), t(115)).await.unwrap(), 1);
    db.cleanup().await;
}

/// Lists filter by group, status and label (devices) and by status, expiry and group
/// (certificates), and keep paging by key under a filter.
async fn list_filters(backend: Backend) {
    use devid_store::{CertFilter, DeviceFilter};
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    let g = devid_store::GroupRecord {
        name: "g1".into(),
        methods: vec!["token".into()],
        registration: "required".into(),
        id_source: "claimed".into(),
        validity_secs: None,
        trust_anchors: vec![],
        crls: vec![],
        master_key: None,
        rate_per_minute: None,
        created_at: t(0),
        updated_at: t(0),
    };
    store.put_group(&g, false, &ev()).await.unwrap();
    let labels = [r#"{"line":"7","site":"x_1%"}"#, r#"{"line":"8"}"#, r#"{"a":"line","b":"7"}"#];
    for (i, l) in labels.iter().enumerate() {
        let meta = DeviceMeta {
            labels: Some(l.to_string()),
            group: (i < 2).then(|| "g1".to_string()),
            ..DeviceMeta::default()
        };
        store.insert_device(&device(&format!("f-{i}"), None), &meta, &ev()).await.unwrap();
    }
    let ids = |p: devid_store::Page<DeviceRecord>| {
        p.items.into_iter().map(|d| d.id.to_string()).collect::<Vec<_>>()
    };
    let f = |group: Option<&str>, label: Option<(&str, &str)>| DeviceFilter {
        group: group.map(str::to_string),
        status: None,
        label: label.map(|(k, v)| (k.to_string(), v.to_string())),
    };
    assert_eq!(
        ids(store.list_devices_filtered(&f(Some("g1"), None), None, 10).await.unwrap()),
        ["f-0", "f-1"]
    );
    assert_eq!(
        ids(store.list_devices_filtered(&f(None, Some(("line", "7"))), None, 10).await.unwrap()),
        ["f-0"]
    );
    assert_eq!(
        ids(store.list_devices_filtered(&f(None, Some(("site", "x_1%"))), None, 10).await.unwrap()),
        ["f-0"]
    );
    assert!(
        store.list_devices_filtered(&f(None, Some(("site", "x%"))), None, 10).await.unwrap().items.is_empty(),
        "no wildcards"
    );
    assert!(
        store.list_devices_filtered(&f(None, Some(("b", "line"))), None, 10).await.unwrap().items.is_empty()
    );
    assert!(store.list_devices_filtered(&f(Some("g2"), None), None, 10).await.unwrap().items.is_empty());
    let page = store.list_devices_filtered(&f(Some("g1"), None), None, 1).await.unwrap();
    assert_eq!(page.next.as_deref(), Some("f-0"));
    assert_eq!(
        ids(store.list_devices_filtered(&f(Some("g1"), None), page.next.as_deref(), 1).await.unwrap()),
        ["f-1"]
    );
    let quarantined = DeviceFilter { status: Some(DeviceStatus::Quarantined), ..DeviceFilter::default() };
    assert!(store.list_devices_filtered(&quarantined, None, 10).await.unwrap().items.is_empty());

    for (n, dev, exp) in [(1u64, "f-0", 100), (2, "f-1", 200), (3, "f-2", 300)] {
        let d = DeviceId::new(dev).unwrap();
        let p = PendingCert { not_after: t(exp), ..pending(&serial(n), &issuer, &d, &[n as u8; 32], 10) };
        store.record_intent(&p, Redeem::Nothing).await.unwrap();
        store.complete_issuance(&serial(n), b"der", t(11), &ev()).await.unwrap();
    }
    store.revoke(&serial(2), RevocationReason::KeyCompromise, t(12), &ev()).await.unwrap();
    let serials = |p: devid_store::Page<devid_store::CertRecord>| {
        p.items.into_iter().map(|c| c.serial).collect::<Vec<_>>()
    };
    let cf = |status, before: Option<i64>, group: Option<&str>| CertFilter {
        device: None,
        status,
        expiring_before: before.map(t),
        group: group.map(str::to_string),
    };
    assert_eq!(
        serials(
            store
                .list_certificates_filtered(&cf(Some(CertStatus::Issued), None, None), None, 10)
                .await
                .unwrap()
        ),
        [serial(1), serial(3)]
    );
    assert_eq!(
        serials(store.list_certificates_filtered(&cf(None, Some(250), None), None, 10).await.unwrap()),
        [serial(1), serial(2)]
    );
    assert_eq!(
        serials(
            store
                .list_certificates_filtered(&cf(Some(CertStatus::Issued), Some(250), Some("g1")), None, 10)
                .await
                .unwrap()
        ),
        [serial(1)]
    );
    db.cleanup().await;
}

/// `record_intents`: one transaction, but each item gets its own answer: a token presented
/// twice in the batch redeems once, a used token, another device's token, a quarantined
/// device, a nonce named twice and an expired nonce are refused and write nothing; the
/// rest are recorded. An admitted item that registers its device inserts it enrolled with
/// its metadata and one audit entry (once for two items of one new device); a refused one
/// inserts nothing; one whose device exists leaves that device as it was.
async fn batched_intents_answer_each_item(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    token_devices(&*store, &issuer, "b", 5).await;
    store
        .insert_challenges(
            &[
                challenge_record(7, 100),
                challenge_record(8, 9),
                challenge_record(9, 100),
                challenge_record(10, 100),
                challenge_record(11, 100),
            ],
            Some(t(0)),
        )
        .await
        .unwrap();
    // Read back together: the challenges found, in any order; an unknown hash has no row.
    let mut read = store.get_challenges(&[vec![8; 32], vec![6; 32], vec![7; 32]]).await.unwrap();
    read.sort_by(|a, b| a.nonce_hash.cmp(&b.nonce_hash));
    assert_eq!(read, vec![challenge_record(7, 100), challenge_record(8, 9)]);
    assert_eq!(store.get_challenges(&[]).await.unwrap(), vec![]);
    let plain = device("b-6", None);
    store.insert_device(&plain, &DeviceMeta::default(), &ev()).await.unwrap();
    // The group the new devices register in.
    let group = optional_group("g");
    store.put_group(&group, false, &ev()).await.unwrap();

    let ps: Vec<PendingCert> = (1..=13)
        .map(|n| pending(&serial(n), &issuer, &dev_id(if n == 2 { "b-1" } else { "b-6" }), b"c", 10))
        .collect();
    let mk = |i: usize, dev: &str| PendingCert { device: dev_id(dev), ..ps[i].clone() };
    let items_owned = [
        (mk(0, "b-1"), 1u8, 'T'), // ok
        (mk(1, "b-1"), 1, 'T'),   // same token again in the batch: refused
        (mk(2, "b-2"), 1, 'T'),   // b-1's token for b-2: refused
        (mk(3, "b-3"), 3, 'T'),   // used: refused
        (mk(4, "b-4"), 4, 'T'),   // quarantined: refused
        (mk(5, "b-6"), 7, 'N'),   // ok
        (mk(6, "b-6"), 7, 'N'),   // same nonce again: refused
        (mk(7, "b-6"), 8, 'N'),   // expired: refused
        (mk(8, "b-5"), 0, '-'),   // nothing to redeem: ok
        (mk(9, "n-1"), 9, 'R'),   // a new device, registered: ok
        (mk(10, "n-1"), 10, 'R'), // the same new device again: ok, inserted once
        (mk(11, "n-2"), 8, 'R'),  // expired: refused, the device is not inserted
        (mk(12, "b-5"), 11, 'R'), // an existing device: ok, the device is left as it was
    ];
    let hashes: Vec<[u8; 32]> = items_owned.iter().map(|(_, h, _)| [*h; 32]).collect();
    let meta = DeviceMeta { group: Some("g".into()), ..DeviceMeta::default() };
    let registration = |id: &str| {
        AuditEvent::new(t(10), format!("device:{id}"), "device.register", id, serde_json::json!({}))
    };
    let registrations: Vec<AuditEvent> =
        items_owned.iter().map(|(p, _, _)| registration(p.device.as_str())).collect();
    let items: Vec<Intent<'_>> = items_owned
        .iter()
        .zip(&hashes)
        .zip(&registrations)
        .map(|(((p, _, k), h), a)| {
            let r = match k {
                'T' => Redeem::Token(h),
                'N' | 'R' => Redeem::Nonce(h),
                _ => Redeem::Nothing,
            };
            Intent { pending: p, redeem: r, register: (*k == 'R').then_some((&meta, a)) }
        })
        .collect();
    let (head, _) = store.audit_head().await.unwrap();
    let results = store.record_intents(&items, false).await.unwrap();
    let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, false, false, false, false, true, false, false, true, true, true, false, true]);
    for r in results.iter().filter(|r| r.is_err()) {
        assert_eq!(r.as_ref().unwrap_err().kind(), ErrorKind::Conflict);
    }
    for (n, written) in (1..=13).zip(ok) {
        assert_eq!(store.get_certificate(&serial(n)).await.unwrap().is_some(), written, "serial {n}");
    }
    assert_eq!(store.get_device(&dev_id("b-1")).await.unwrap().unwrap().token_used_at, Some(t(10)));
    assert_eq!(store.get_device(&dev_id("b-2")).await.unwrap().unwrap().token_used_at, None);
    // The registrations: n-1 inserted once, enrolled, in group g, with one audit entry;
    // n-2 (its nonce refused) not at all; b-5 unchanged.
    let n1 = store.get_device(&dev_id("n-1")).await.unwrap().unwrap();
    assert_eq!(
        (n1.status, n1.created_at, n1.updated_at, n1.token_hash),
        (DeviceStatus::Enrolled, t(10), t(10), None)
    );
    assert_eq!(store.device_meta(&dev_id("n-1")).await.unwrap().unwrap().group.as_deref(), Some("g"));
    assert!(store.get_device(&dev_id("n-2")).await.unwrap().is_none());
    assert_eq!(store.get_device(&dev_id("b-5")).await.unwrap().unwrap().status, DeviceStatus::Registered);
    assert_eq!(store.device_meta(&dev_id("b-5")).await.unwrap().unwrap().group, None);
    let appended = store.audit_entries(head, 100).await.unwrap();
    let appended: Vec<(i64, &str, &str)> =
        appended.iter().map(|e| (e.seq, e.event.action.as_str(), e.event.subject.as_str())).collect();
    assert_eq!(appended, [(head + 1, "device.register", "n-1")]);
    assert_eq!(store.audit_head().await.unwrap().0, head + 1);
    // A serial collision fails the batch as a whole: nothing of it is written.
    let dup = [Intent::new(&ps[0], Redeem::Nothing), Intent::new(&ps[1], Redeem::Token(&[2; 32]))];
    assert_eq!(kind(store.record_intents(&dup, true).await), ErrorKind::Conflict);
    assert_eq!(store.get_device(&dev_id("b-2")).await.unwrap().unwrap().token_used_at, None);
    db.cleanup().await;
}

/// `record_intents` with a batch of token redemptions and renewals only (on PostgreSQL one
/// statement redeems and records them all): each item is answered as in the general path.
/// A token presented twice in the batch redeems once; another device's token, a used token
/// and a quarantined device's token are refused and write nothing; an item that redeems
/// nothing is recorded. A serial collision in such a batch fails it whole: no token of it
/// stays redeemed.
async fn batched_token_intents_answer_each_item(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    token_devices(&*store, &issuer, "k", 6).await;
    let p = |n: u64, dev: &str| pending(&serial(n), &issuer, &dev_id(dev), b"c", 10);
    let ps = [p(1, "k-1"), p(2, "k-1"), p(3, "k-2"), p(4, "k-3"), p(5, "k-4"), p(6, "k-5"), p(7, "k-6")];
    let items = [
        Intent::new(&ps[0], Redeem::Token(&[1; 32])), // ok
        Intent::new(&ps[1], Redeem::Token(&[1; 32])), // the same token again: refused
        Intent::new(&ps[2], Redeem::Token(&[1; 32])), // k-1's token for k-2: refused
        Intent::new(&ps[3], Redeem::Token(&[3; 32])), // used: refused
        Intent::new(&ps[4], Redeem::Token(&[4; 32])), // quarantined: refused
        Intent::new(&ps[5], Redeem::Nothing),         // nothing to redeem: ok
        Intent::new(&ps[6], Redeem::Token(&[6; 32])), // ok
    ];
    let results = store.record_intents(&items, false).await.unwrap();
    let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, false, false, false, false, true, true]);
    for r in results.iter().filter(|r| r.is_err()) {
        let err = r.as_ref().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert!(err.to_string().contains("enrollment token already used"), "{err}");
    }
    for (n, written) in (1..=7).zip(ok) {
        assert_eq!(store.get_certificate(&serial(n)).await.unwrap().is_some(), written, "serial {n}");
    }
    for (id, used, status) in [
        ("k-1", Some(t(10)), DeviceStatus::Enrolled),
        ("k-2", None, DeviceStatus::Registered),
        ("k-4", None, DeviceStatus::Quarantined),
        ("k-5", None, DeviceStatus::Registered),
        ("k-6", Some(t(10)), DeviceStatus::Enrolled),
    ] {
        let d = store.get_device(&dev_id(id)).await.unwrap().unwrap();
        assert_eq!((d.token_used_at, d.status), (used, status), "{id}");
    }
    // A serial collision (serial 1 is recorded) fails the batch: k-2's valid token, redeemed
    // by the same statement, is not redeemed after all.
    let again = [p(1, "k-5"), p(8, "k-2")];
    let dup = [Intent::new(&again[0], Redeem::Nothing), Intent::new(&again[1], Redeem::Token(&[2; 32]))];
    assert_eq!(kind(store.record_intents(&dup, false).await), ErrorKind::Conflict);
    assert_eq!(store.get_device(&dev_id("k-2")).await.unwrap().unwrap().token_used_at, None);
    assert!(store.get_certificate(&serial(8)).await.unwrap().is_none());
    // The same with a certificate's serial: complete serial 6, then name it again.
    store.complete_issuance(&serial(6), b"der", t(11), &ev()).await.unwrap();
    let again = [p(6, "k-5"), p(9, "k-2")];
    let dup = [Intent::new(&again[0], Redeem::Nothing), Intent::new(&again[1], Redeem::Token(&[2; 32]))];
    assert_eq!(kind(store.record_intents(&dup, false).await), ErrorKind::Conflict);
    assert_eq!(store.get_device(&dev_id("k-2")).await.unwrap().unwrap().token_used_at, None);
    // And k-2's token still works on its own.
    store.record_intent(&p(10, "k-2"), Redeem::Token(&[2; 32])).await.unwrap();
    assert_eq!(store.get_device(&dev_id("k-2")).await.unwrap().unwrap().token_used_at, Some(t(10)));
    db.cleanup().await;
}

/// Stateless challenges (`Redeem::Sealed`): redeemed by inserting their hash, once, until
/// they expire (a second redemption, in the batch or later, and an expired one are refused
/// and write nothing); a stored challenge's hash is not redeemable that way. Expired rows
/// are purged without new challenges. A service secret is stored by its first caller;
/// later callers get that one.
async fn sealed_nonces_and_service_secrets(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    store.insert_device(&device("s-1", None), &DeviceMeta::default(), &ev()).await.unwrap();
    let stored = challenge_record(5, 100);
    store.insert_challenges(std::slice::from_ref(&stored), None).await.unwrap();
    let sealed = |h: &'static [u8], expires: i64| {
        Redeem::Sealed(SealedNonce { hash: h, group: "g", method: "x509", expires_at: t(expires) })
    };
    let ps: Vec<PendingCert> =
        (1..=5).map(|n| pending(&serial(n), &issuer, &dev_id("s-1"), b"c", 10)).collect();
    let items = [
        Intent::new(&ps[0], sealed(&[1; 32], 100)), // ok
        Intent::new(&ps[1], sealed(&[1; 32], 100)), // the same nonce again: refused
        Intent::new(&ps[2], sealed(&[2; 32], 10)),  // expired at the intent's time: refused
        Intent::new(&ps[3], sealed(&[5; 32], 100)), // a stored challenge's hash: refused
        Intent::new(&ps[4], sealed(&[3; 32], 200)), // ok
    ];
    let results = store.record_intents(&items, false).await.unwrap();
    let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, false, false, false, true]);
    for r in results.iter().filter(|r| r.is_err()) {
        assert_eq!(r.as_ref().unwrap_err().kind(), ErrorKind::Conflict);
    }
    for (n, written) in (1..=5).zip(ok) {
        assert_eq!(store.get_certificate(&serial(n)).await.unwrap().is_some(), written, "serial {n}");
    }
    let row = store.get_challenge(&[1; 32]).await.unwrap().unwrap();
    assert_eq!(
        (row.group.as_str(), row.method.as_str(), row.state, row.expires_at, row.redeemed_at),
        ("g", "x509", None, t(100), Some(t(10)))
    );
    assert!(store.get_challenge(&[2; 32]).await.unwrap().is_none(), "an expired nonce writes nothing");
    assert_eq!(store.get_challenge(&[5; 32]).await.unwrap().unwrap(), stored, "the stored one is untouched");
    // Later, one at a time: a redeemed nonce stays redeemed.
    let again = pending(&serial(6), &issuer, &dev_id("s-1"), b"c", 11);
    assert_eq!(kind(store.record_intent(&again, sealed(&[1; 32], 100)).await), ErrorKind::Conflict);
    assert!(store.get_certificate(&serial(6)).await.unwrap().is_none());
    // A purge without new challenges: what expired before t(150) goes.
    store.insert_challenges(&[], Some(t(150))).await.unwrap();
    assert!(store.get_challenge(&[1; 32]).await.unwrap().is_none());
    assert!(store.get_challenge(&[5; 32]).await.unwrap().is_none());
    assert!(store.get_challenge(&[3; 32]).await.unwrap().is_some(), "not expired yet");

    // Service secrets: the first candidate stays.
    assert_eq!(store.service_secret("k", b"first", t(1)).await.unwrap(), b"first");
    assert_eq!(store.service_secret("k", b"second", t(2)).await.unwrap(), b"first");
    assert_eq!(store.service_secret("other", b"third", t(3)).await.unwrap(), b"third");
    // Concurrent callers all get one and the same.
    let mut tasks = Vec::new();
    for n in 0..8u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { store.service_secret("race", &[n; 4], t(4)).await.unwrap() }));
    }
    let mut got = Vec::new();
    for task in tasks {
        got.push(task.await.unwrap());
    }
    got.dedup();
    assert_eq!(got.len(), 1, "{got:?}");
    db.cleanup().await;
}

/// `record_intents` with a batch of stateless challenges (and renewals) that registers new
/// devices, as attested enrollments in a group with optional registration make: a new
/// device is inserted once, enrolled, with its
/// first item's metadata and one audit entry, in item order; an item whose nonce is refused
/// registers nothing; an existing device is left as it was. A batch naming a deleted group,
/// or with a serial collision, fails whole: no nonce stays redeemed and no device inserted.
async fn batched_sealed_intents_register_devices(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    let group = optional_group("g");
    store.put_group(&group, false, &ev()).await.unwrap();
    store.insert_device(&device("old", None), &DeviceMeta::default(), &ev()).await.unwrap();
    // Nonce 9 is redeemed already.
    let p = |n: u64, dev: &str| pending(&serial(n), &issuer, &dev_id(dev), b"c", 10);
    let sealed = |h: &'static [u8], expires: i64| {
        Redeem::Sealed(SealedNonce { hash: h, group: "g", method: "x509", expires_at: t(expires) })
    };
    store.record_intent(&p(50, "old"), sealed(&[9; 32], 100)).await.unwrap();
    let meta = |label: &str| DeviceMeta {
        labels: Some(format!("{{\"line\":\"{label}\"}}")),
        group: Some("g".into()),
        ..DeviceMeta::default()
    };
    let (m1, m1b, m2, m3, m4) = (meta("a"), meta("b"), meta("c"), meta("d"), meta("e"));
    let registration = |id: &str| {
        AuditEvent::new(t(10), format!("device:{id}"), "device.register", id, serde_json::json!({}))
    };
    let (a1, a1b, a2, a3, a4, a5) = (
        registration("n-1"),
        registration("n-1"),
        registration("n-2"),
        registration("n-3"),
        registration("old"),
        registration("n-4"),
    );
    let ps = [p(1, "n-1"), p(2, "n-1"), p(3, "n-2"), p(4, "n-3"), p(5, "old"), p(6, "old"), p(7, "n-4")];
    let items = [
        Intent { pending: &ps[0], redeem: sealed(&[1; 32], 100), register: Some((&m1, &a1)) }, // ok: n-1
        Intent { pending: &ps[1], redeem: sealed(&[2; 32], 100), register: Some((&m1b, &a1b)) }, // ok, n-1 once
        Intent { pending: &ps[2], redeem: sealed(&[3; 32], 10), register: Some((&m2, &a2)) },    // expired
        Intent { pending: &ps[3], redeem: sealed(&[9; 32], 100), register: Some((&m3, &a3)) },   // used
        Intent { pending: &ps[4], redeem: sealed(&[4; 32], 100), register: Some((&m4, &a4)) },   // exists
        Intent::new(&ps[5], Redeem::Nothing),                                                    // ok
        Intent { pending: &ps[6], redeem: sealed(&[1; 32], 100), register: Some((&m1, &a5)) },   // again
    ];
    let (head, _) = store.audit_head().await.unwrap();
    let results = store.record_intents(&items, false).await.unwrap();
    let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, true, false, false, true, true, false]);
    for r in results.iter().filter(|r| r.is_err()) {
        assert_eq!(r.as_ref().unwrap_err().kind(), ErrorKind::Conflict);
    }
    for (n, written) in (1..=7).zip(ok) {
        assert_eq!(store.get_certificate(&serial(n)).await.unwrap().is_some(), written, "serial {n}");
    }
    let n1 = store.get_device(&dev_id("n-1")).await.unwrap().unwrap();
    assert_eq!((n1.status, n1.created_at, n1.token_hash), (DeviceStatus::Enrolled, t(10), None));
    assert_eq!(store.device_meta(&dev_id("n-1")).await.unwrap().unwrap(), m1);
    for gone in ["n-2", "n-3", "n-4"] {
        assert!(store.get_device(&dev_id(gone)).await.unwrap().is_none(), "{gone}");
    }
    let old = store.get_device(&dev_id("old")).await.unwrap().unwrap();
    assert_eq!(old.status, DeviceStatus::Registered);
    assert_eq!(store.device_meta(&dev_id("old")).await.unwrap().unwrap(), DeviceMeta::default());
    let appended = store.audit_entries(head, 100).await.unwrap();
    let appended: Vec<(i64, &str, &str)> =
        appended.iter().map(|e| (e.seq, e.event.action.as_str(), e.event.subject.as_str())).collect();
    assert_eq!(appended, [(head + 1, "device.register", "n-1")]);
    assert_eq!(store.audit_head().await.unwrap().0, head + 1);
    assert!(store.get_challenge(&[2; 32]).await.unwrap().is_some());
    assert!(store.get_challenge(&[3; 32]).await.unwrap().is_none(), "an expired nonce writes nothing");

    // A deleted group: the batch fails whole.
    let lost = DeviceMeta { group: Some("gone".into()), ..DeviceMeta::default() };
    let (q1, q2) = (p(8, "n-5"), p(9, "n-6"));
    let (e5, e6) = (registration("n-5"), registration("n-6"));
    let batch = [
        Intent { pending: &q1, redeem: sealed(&[5; 32], 100), register: Some((&m2, &e5)) },
        Intent { pending: &q2, redeem: sealed(&[6; 32], 100), register: Some((&lost, &e6)) },
    ];
    assert_eq!(kind(store.record_intents(&batch, false).await), ErrorKind::NotFound);
    // A serial collision (serial 1 is recorded): likewise.
    let q3 = p(1, "n-7");
    let e7 = registration("n-7");
    let batch = [
        Intent { pending: &q1, redeem: sealed(&[5; 32], 100), register: Some((&m2, &e5)) },
        Intent { pending: &q3, redeem: sealed(&[7; 32], 100), register: Some((&m2, &e7)) },
    ];
    assert_eq!(kind(store.record_intents(&batch, false).await), ErrorKind::Conflict);
    for gone in ["n-5", "n-6", "n-7"] {
        assert!(store.get_device(&dev_id(gone)).await.unwrap().is_none(), "{gone}");
    }
    for h in [5u8, 6, 7] {
        assert!(store.get_challenge(&[h; 32]).await.unwrap().is_none(), "nonce {h}");
    }
    assert!(store.get_certificate(&serial(8)).await.unwrap().is_none());
    assert_eq!(store.audit_head().await.unwrap().0, head + 1);
    // Nonce 5 and device n-5 are still good on their own.
    store
        .record_intents(
            &[Intent { pending: &q1, redeem: sealed(&[5; 32], 100), register: Some((&m2, &e5)) }],
            false,
        )
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(store.get_device(&dev_id("n-5")).await.unwrap().unwrap().status, DeviceStatus::Enrolled);
    assert_eq!(store.audit_head().await.unwrap().0, head + 2);
    db.cleanup().await;
}

/// Devices `{prefix}-1` to `{prefix}-{n}`, registered with the tokens `[i; 32]`; the token of
/// `{prefix}-3` is already used (serial 100) and `{prefix}-4` is quarantined.
async fn token_devices(store: &dyn Store, issuer: &CaId, prefix: &str, n: u8) {
    for i in 1..=n {
        let id = format!("{prefix}-{i}");
        store.insert_device(&device(&id, Some(&[i; 32])), &DeviceMeta::default(), &ev()).await.unwrap();
    }
    let used = dev_id(&format!("{prefix}-3"));
    store
        .record_intent(&pending(&serial(100), issuer, &used, b"c0", 5), Redeem::Token(&[3; 32]))
        .await
        .unwrap();
    let quarantined = dev_id(&format!("{prefix}-4"));
    store.quarantine_device(&quarantined, RevocationReason::KeyCompromise, t(6), &ev()).await.unwrap();
}

/// An x509 group with optional registration (attested devices may enroll unregistered).
fn optional_group(name: &str) -> devid_store::GroupRecord {
    devid_store::GroupRecord {
        name: name.into(),
        methods: vec!["x509".into()],
        registration: "optional".into(),
        id_source: "subject-serial".into(),
        validity_secs: None,
        trust_anchors: vec![],
        crls: vec![],
        master_key: None,
        rate_per_minute: None,
        created_at: t(1),
        updated_at: t(1),
    }
}

fn dev_id(id: &str) -> DeviceId {
    DeviceId::new(id).unwrap()
}

/// `complete_issuances`: every pending serial is issued with its audit entry in item order
/// (the chain stays dense and verifiable), a serial named twice keeps one DER, a serial
/// already issued answers the stored certificate, a quarantined device's certificate is
/// stored revoked and refused, an unknown serial is not found.
async fn batched_completions_answer_each_item(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = open(&db).await;
    let issuer = with_ca(&*store).await;
    for id in ["c-1", "c-2", "c-3"] {
        store.insert_device(&device(id, None), &DeviceMeta::default(), &ev()).await.unwrap();
    }
    for (n, d) in [(1, "c-1"), (2, "c-2"), (3, "c-3"), (4, "c-1")] {
        store
            .record_intent(&pending(&serial(n), &issuer, &dev_id(d), b"c", 10), Redeem::Nothing)
            .await
            .unwrap();
    }
    store.complete_issuance(&serial(4), b"first", t(11), &ev()).await.unwrap();
    store.quarantine_device(&dev_id("c-3"), RevocationReason::KeyCompromise, t(11), &ev()).await.unwrap();
    let head_before = store.audit_head().await.unwrap().0;
    let events: Vec<AuditEvent> = (0..6)
        .map(|i| {
            AuditEvent::new(
                t(12),
                "device:x",
                "certificate.issue",
                format!("item-{i}"),
                serde_json::json!({}),
            )
        })
        .collect();
    let serials = [serial(1), serial(2), serial(2), serial(3), serial(4), serial(99)];
    let ders: [&[u8]; 6] = [b"d1", b"d2", b"d2-again", b"d3", b"d4", b"d99"];
    let items: Vec<Completion<'_>> =
        (0..6).map(|i| Completion { serial: &serials[i], cert_der: ders[i], audit: &events[i] }).collect();
    let results = store.complete_issuances(&items, t(12)).await.unwrap();
    assert_eq!(results[0].as_ref().unwrap().cert_der.as_deref(), Some(b"d1".as_slice()));
    assert_eq!(results[0].as_ref().unwrap().status, CertStatus::Issued);
    assert_eq!(results[1].as_ref().unwrap().cert_der.as_deref(), Some(b"d2".as_slice()));
    assert_eq!(
        results[2].as_ref().unwrap().cert_der.as_deref(),
        Some(b"d2".as_slice()),
        "a serial is handed out once"
    );
    assert_eq!(kind(results[3].clone()), ErrorKind::Forbidden);
    let c3 = store.get_certificate(&serial(3)).await.unwrap().unwrap();
    assert_eq!(c3.status, CertStatus::Revoked);
    assert_eq!(results[4].as_ref().unwrap().cert_der.as_deref(), Some(b"first".as_slice()));
    assert_eq!(kind(results[5].clone()), ErrorKind::NotFound);
    assert_eq!(store.get_device(&dev_id("c-2")).await.unwrap().unwrap().status, DeviceStatus::Enrolled);
    // Exactly the two certificates issued by the batch were audited, in item order, and the
    // whole chain verifies.
    let entries = store.audit_entries(head_before, 100).await.unwrap();
    let subjects: Vec<&str> = entries.iter().map(|e| e.event.subject.as_str()).collect();
    assert_eq!(subjects, ["item-0", "item-1"]);
    let all = store.audit_entries(0, 1000).await.unwrap();
    let mut prev = devid_store::audit::GENESIS_HASH.to_vec();
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.seq, i as i64 + 1);
        assert_eq!(e.prev_hash, prev);
        assert_eq!(e.hash, devid_store::audit::entry_hash(&prev, e.seq, &e.event).to_vec());
        prev = e.hash.clone();
    }
    assert_eq!(store.audit_head().await.unwrap(), (all.len() as i64, prev));
    db.cleanup().await;
}

/// How many sessions of `db` wait for a lock: polled until it reaches `n` (10 s at most).
async fn wait_for_lock_waiters(db: &TestDb, n: i64) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if waiting >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{waiting} sessions wait for a lock, expected {n}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// PostgreSQL only (SQLite has one writer at a time, so nothing interleaves): a quarantine
/// that overlaps the completion of its device's certificate leaves that certificate revoked,
/// in both orders.
///
/// A third session holds the audit head, where both transactions end. The first one stops
/// there with its other writes done and uncommitted; the second runs as far as it can (to
/// the audit head too without the fix, to the lock the fix makes it wait on with it):
/// - completion first: its certificate row is written when the quarantine revokes the
///   device's certificates;
/// - quarantine first: the device is quarantined, uncommitted, when the completion looks at
///   the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quarantine_overlapping_a_completion_leaves_no_valid_certificate() {
    use sqlx::Connection;
    let db = TestDb::new(Backend::Postgres).await;
    let store = open(&db).await;
    let issuer = with_ca(store.as_ref()).await;
    for (n, completion_first) in [(1u64, true), (2, false)] {
        let token = [n as u8; 32];
        let dev = device(&format!("overlap-{n}"), Some(&token));
        store.insert_device(&dev, &DeviceMeta::default(), &ev()).await.unwrap();
        // The token's redemption enrolls the device: the completion has no device row to update.
        store
            .record_intent(&pending(&serial(n), &issuer, &dev.id, b"csr", 10), Redeem::Token(&token))
            .await
            .unwrap();

        let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
        sqlx::query("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE").execute(&mut holder).await.unwrap();
        let complete = {
            let store = store.clone();
            move || {
                tokio::spawn(async move { store.complete_issuance(&serial(n), b"der", t(12), &ev()).await })
            }
        };
        let quarantine = {
            let (store, id) = (store.clone(), dev.id.clone());
            move || {
                tokio::spawn(async move {
                    store.quarantine_device(&id, RevocationReason::KeyCompromise, t(13), &ev()).await
                })
            }
        };
        let (completed, quarantined) = if completion_first {
            let c = complete();
            wait_for_lock_waiters(&db, 1).await;
            let q = quarantine();
            wait_for_lock_waiters(&db, 2).await;
            (c, q)
        } else {
            let q = quarantine();
            wait_for_lock_waiters(&db, 1).await;
            let c = complete();
            wait_for_lock_waiters(&db, 2).await;
            (c, q)
        };
        sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
        let completed = completed.await.unwrap();
        let revoked = quarantined.await.unwrap().unwrap();

        let c = store.get_certificate(&serial(n)).await.unwrap().unwrap();
        assert_eq!(c.status, CertStatus::Revoked, "completion first: {completion_first}");
        assert_eq!(store.get_device(&dev.id).await.unwrap().unwrap().status, DeviceStatus::Quarantined);
        if completion_first {
            // Stored first, then revoked by the quarantine, which reports it.
            assert_eq!(completed.unwrap().serial, serial(n));
            assert_eq!(revoked, vec![serial(n)]);
        } else {
            // Stored revoked by the completion, which refuses it.
            assert_eq!(kind(completed), ErrorKind::Forbidden);
            assert!(revoked.is_empty());
        }
    }
    drop(store);
    db.cleanup().await;
}

/// `issuance_intents` is written and emptied by every issuance; PostgreSQL reclaims a
/// deleted row's space only in a VACUUM, which autovacuum runs at most once a minute (or
/// never, where it is off). The store vacuums the table itself after every 10,000 deleted
/// intents, so the table stops growing: 25,000 more issuances after the first 25,000 leave
/// it at about the size it had, where without the VACUUM it doubles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_intents_stop_growing_as_the_store_vacuums_them() {
    use sqlx::Connection;
    let db = TestDb::new(Backend::Postgres).await;
    let store = open(&db).await;
    let issuer = with_ca(store.as_ref()).await;
    let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
    // Only the store's own VACUUM, whatever the server's autovacuum does.
    sqlx::query("ALTER TABLE issuance_intents SET (autovacuum_enabled = false)")
        .execute(&mut c)
        .await
        .unwrap();
    let meta = DeviceMeta::default();
    let (registered, issued) = (ev(), ev());
    let mut n = 0u64;
    let mut issue = async |batches: u64| {
        for _ in 0..batches {
            let pending: Vec<PendingCert> = (n..n + 1000)
                .map(|i| {
                    pending(&serial(i), &issuer, &DeviceId::new(format!("churn-{i}")).unwrap(), b"csr", 10)
                })
                .collect();
            n += 1000;
            let items: Vec<Intent<'_>> = pending
                .iter()
                .map(|p| Intent { pending: p, redeem: Redeem::Nothing, register: Some((&meta, &registered)) })
                .collect();
            assert!(store.record_intents(&items, false).await.unwrap().iter().all(Result::is_ok));
            let done: Vec<Completion<'_>> = pending
                .iter()
                .map(|p| Completion { serial: &p.serial, cert_der: b"der", audit: &issued })
                .collect();
            assert!(store.complete_issuances(&done, t(11)).await.unwrap().iter().all(Result::is_ok));
        }
    };
    let vacuums = async |c: &mut sqlx::PgConnection| -> i64 {
        sqlx::query_scalar("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'issuance_intents'")
            .fetch_one(c)
            .await
            .unwrap()
    };
    let size = async |c: &mut sqlx::PgConnection| -> i64 {
        sqlx::query_scalar("SELECT pg_relation_size('issuance_intents')").fetch_one(c).await.unwrap()
    };
    // Wait until the VACUUMs the store started have ended (the statistics lag a little).
    async fn settle(c: &mut sqlx::PgConnection) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let running: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'VACUUM%issuance_intents' AND state = 'active'",
            )
            .fetch_one(&mut *c)
            .await
            .unwrap();
            if running == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "a VACUUM of issuance_intents still runs after 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }

    issue(25).await;
    settle(&mut c).await;
    let (vacuumed, first) = (vacuums(&mut c).await, size(&mut c).await);
    assert!(vacuumed >= 2, "25,000 deleted intents, {vacuumed} VACUUMs");
    issue(25).await;
    settle(&mut c).await;
    let (vacuumed, second) = (vacuums(&mut c).await, size(&mut c).await);
    assert!(vacuumed >= 4, "50,000 deleted intents, {vacuumed} VACUUMs");
    println!(
        "issuance_intents: {first} bytes after 25,000 issuances, {second} after 50,000; {vacuumed} VACUUMs"
    );
    assert!(
        second * 2 < first * 3,
        "issuance_intents grew from {first} to {second} bytes over 25,000 more issuances"
    );
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM issuance_intents").fetch_one(&mut c).await.unwrap();
    assert_eq!(left, 0);
    let _ = c.close().await;
}
