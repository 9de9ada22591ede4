//! P-256 key pairs on a PKCS#11 token (tested with SoftHSM2 2.6).
//!
//! A reference `pkcs11:token=TOKEN;object=LABEL` names the token by its label and the key
//! pair by the `CKA_LABEL` shared by its private and public objects. Private keys are
//! generated on the token as sensitive and non-extractable; they never leave it.
//!
//! Signing hashes the message with SHA-256 in software and asks the token for a raw
//! `CKM_ECDSA` signature (SoftHSM2 2.6 has no `CKM_ECDSA_SHA256`), which is returned
//! DER-encoded.
//!
//! # Sessions and login
//!
//! A PKCS#11 module is initialised once per process: every [`Pkcs11KeyManager`] for the
//! same module path shares one context. Login state in PKCS#11 belongs to the process
//! (per token), not to a session: once any session has logged in, a further `C_Login`
//! answers `CKR_USER_ALREADY_LOGGED_IN` whatever PIN it is given. So that a second manager
//! with a wrong PIN is still refused, the module remembers (as an HMAC under a random
//! per-process key, never the PIN itself) which PIN logged each token in, and checks a
//! manager's PIN against it when the token answers "already logged in".
//!
//! Each manager keeps a small pool of open sessions per token (a `Session` is `Send` but
//! not `Sync`); an open session also keeps the token logged in.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use aws_lc_rs::hmac;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use devid_core::{ErrorKind, KeyRef};
use sha2::Digest as _;
use zeroize::Zeroizing;

use crate::{KeyAlgorithm, KeyManager, KmsError, SignatureAlgorithm, Signer};

/// DER of the named curve OID prime256v1 / secp256r1 (1.2.840.10045.3.1.7), the value of
/// `CKA_EC_PARAMS` for P-256.
const P256_EC_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// Length of the random `CKA_ID` given to a new key pair.
const ID_LEN: usize = 16;
/// Idle sessions kept per token and manager; more are closed when returned.
const MAX_IDLE_SESSIONS: usize = 8;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // None of the guarded state has an invariant a panic could break.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One loaded and initialised PKCS#11 module, shared by every manager of the process.
struct Module {
    path: PathBuf,
    ctx: Pkcs11,
    /// Key of the PIN fingerprints below; random per process.
    pin_mac: hmac::Key,
    /// Per slot, the HMAC of the PIN that logged the user in from this process. The lock
    /// is held across `C_Login` so the record always matches the token's state.
    logins: Mutex<HashMap<Slot, Vec<u8>>>,
}

/// The process-wide registry of modules, by canonical path: a module is initialised
/// once per process (a second `C_Initialize` is an error in PKCS#11).
fn module(path: &Path) -> Result<Arc<Module>, KmsError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();
    let canonical = std::fs::canonicalize(path).map_err(|e| KmsError::Backend {
        kind: ErrorKind::Unavailable,
        detail: format!("PKCS#11 module {}: {e}", path.display()),
    })?;
    let mut modules = lock(MODULES.get_or_init(Default::default));
    if let Some(m) = modules.get(&canonical) {
        return Ok(m.clone());
    }
    let unavailable = |what: &str, e: &dyn fmt::Display| KmsError::Backend {
        kind: ErrorKind::Unavailable,
        detail: format!("{what} PKCS#11 module {}: {e}", path.display()),
    };
    let ctx = Pkcs11::new(&canonical).map_err(|e| unavailable("cannot load", &e))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(unavailable("cannot initialise", &e)),
    }
    let pin_mac = hmac::Key::generate(hmac::HMAC_SHA256, &aws_lc_rs::rand::SystemRandom::new())
        .map_err(|_| internal("random HMAC key"))?;
    let m = Arc::new(Module { path: canonical.clone(), ctx, pin_mac, logins: Mutex::default() });
    modules.insert(canonical, m.clone());
    Ok(m)
}

/// Key pairs on PKCS#11 tokens of one module, chosen per key by token label.
///
/// Configured with the module path and the user PIN; the PIN is kept in memory (zeroised
/// on drop) to log in new sessions, and is never logged or put into an error.
pub struct Pkcs11KeyManager {
    module: Arc<Module>,
    pin: Arc<Zeroizing<String>>,
    tokens: Mutex<HashMap<String, Arc<Token>>>,
}

/// Serialises create_key in the whole process, not per manager: find-then-generate is not
/// atomic, and a PKCS#11 module's state is per process, so two managers on one module (as
/// parallel tests make) must not generate on one token at once. SoftHSM2 answered
/// CKR_GENERAL_ERROR to concurrent C_GenerateKeyPair from two managers.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

impl fmt::Debug for Pkcs11KeyManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tokens: Vec<String> = lock(&self.tokens).keys().cloned().collect();
        f.debug_struct("Pkcs11KeyManager")
            .field("module", &self.module.path)
            .field("tokens", &tokens)
            .field("pin", &"..redacted..")
            .finish()
    }
}

impl Pkcs11KeyManager {
    /// Load and initialise the module at `module_path` (once per process; later managers
    /// share it) for the user PIN `pin`. Tokens are looked up, and logged in, when a key on
    /// them is first used; see [`Pkcs11KeyManager::check_login`] to fail early.
    pub fn new(module_path: &Path, pin: Zeroizing<String>) -> Result<Self, KmsError> {
        Ok(Pkcs11KeyManager { module: module(module_path)?, pin: Arc::new(pin), tokens: Mutex::default() })
    }

    /// The canonical path of the module.
    pub fn module_path(&self) -> &Path {
        &self.module.path
    }

    /// Find the token labelled `token` and log in to it: NotFound if there is no such
    /// token, Unauthorized if the PIN is refused. Useful at start-up.
    pub fn check_login(&self, token: &str) -> Result<(), KmsError> {
        let t = self.token(token)?;
        let session = t.lease()?;
        drop(session);
        Ok(())
    }

    /// Close the idle pooled sessions of every token (they are reopened, and logged in
    /// again, on demand). When no other session of the process is open on a token, this
    /// logs it out and the token may renumber its object handles; signers find their key
    /// again by label and `CKA_ID`.
    pub fn close_idle_sessions(&self) {
        let tokens: Vec<Arc<Token>> = lock(&self.tokens).values().cloned().collect();
        for t in tokens {
            let sessions = std::mem::take(&mut *lock(&t.pool));
            drop(sessions);
        }
    }

    /// The token for a label, found once and then cached.
    fn token(&self, label: &str) -> Result<Arc<Token>, KmsError> {
        if let Some(t) = lock(&self.tokens).get(label) {
            return Ok(t.clone());
        }
        let ctx = &self.module.ctx;
        let slots = ctx.get_slots_with_token().map_err(|e| KmsError::Backend {
            kind: ErrorKind::Unavailable,
            detail: format!("PKCS#11 module {}: cannot list slots: {e}", self.module.path.display()),
        })?;
        let mut found = None;
        for slot in slots {
            match ctx.get_token_info(slot) {
                Ok(info) if info.label().trim() == label => {
                    if found.is_some() {
                        tracing::warn!(
                            token = label,
                            "several PKCS#11 tokens have this label; using the first"
                        );
                        break;
                    }
                    found = Some(slot);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(slot = %slot, error = %e, "cannot read PKCS#11 token info"),
            }
        }
        let Some(slot) = found else {
            return Err(KmsError::Backend {
                kind: ErrorKind::NotFound,
                detail: format!(
                    "no PKCS#11 token labelled '{label}' in module {}",
                    self.module.path.display()
                ),
            });
        };
        let token = Arc::new(Token {
            module: self.module.clone(),
            label: label.to_string(),
            slot,
            pin: self.pin.clone(),
            pool: Mutex::default(),
        });
        Ok(lock(&self.tokens).entry(label.to_string()).or_insert(token).clone())
    }
}

fn parts(key: &KeyRef) -> Result<(&str, &str), KmsError> {
    match key {
        KeyRef::Pkcs11 { token, object } => Ok((token, object)),
        KeyRef::Soft { .. } => Err(KmsError::NotConfigured { key: key.to_string() }),
    }
}

impl KeyManager for Pkcs11KeyManager {
    fn create_key(
        &self,
        key: &KeyRef,
        alg: KeyAlgorithm,
        replace: bool,
    ) -> Result<Arc<dyn Signer>, KmsError> {
        let (token, object) = parts(key)?;
        match alg {
            KeyAlgorithm::EcdsaP256 => {}
        }
        let token = self.token(token)?;
        let mut id = [0u8; ID_LEN];
        aws_lc_rs::rand::fill(&mut id).map_err(|_| internal("random CKA_ID"))?;
        let _guard = lock(&CREATE_LOCK);
        let (private, point) = token.run("key generation", |s| {
            let mut old = find(s, ObjectClass::PRIVATE_KEY, object, None)?;
            old.extend(find(s, ObjectClass::PUBLIC_KEY, object, None)?);
            if !old.is_empty() {
                if !replace {
                    return Err(OpError::Kms(KmsError::Exists { key: key.to_string() }));
                }
                for h in old {
                    s.destroy_object(h)?;
                }
            }
            let label = object.as_bytes().to_vec();
            let public = [
                Attribute::Token(true),
                Attribute::Verify(true),
                Attribute::EcParams(P256_EC_PARAMS.to_vec()),
                Attribute::Label(label.clone()),
                Attribute::Id(id.to_vec()),
            ];
            let private = [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Label(label),
                Attribute::Id(id.to_vec()),
            ];
            let (pub_h, priv_h) = s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)?;
            Ok((priv_h, ec_point(s, pub_h)?))
        })?;
        tracing::info!(key = %key, replace, "created PKCS#11 key pair");
        Ok(Arc::new(Pkcs11Signer {
            key_ref: key.clone(),
            spki: crate::soft::spki_from_point(&point)?,
            token,
            id: id.to_vec(),
            private: Mutex::new(private),
        }))
    }

    fn signer(&self, key: &KeyRef) -> Result<Arc<dyn Signer>, KmsError> {
        let (token, object) = parts(key)?;
        let token = self.token(token)?;
        let (private, id, point) = token.run("key lookup", |s| {
            let private = match find(s, ObjectClass::PRIVATE_KEY, object, None)?[..] {
                [h] => h,
                [] => return Err(OpError::Kms(KmsError::NotFound { key: key.to_string() })),
                _ => {
                    return Err(kms(
                        ErrorKind::Conflict,
                        format!("several private keys are labelled '{key}'"),
                    ));
                }
            };
            let mut id = None;
            for a in s.get_attributes(private, &[AttributeType::KeyType, AttributeType::Id])? {
                match a {
                    Attribute::KeyType(t) if t != KeyType::EC => {
                        return Err(kms(ErrorKind::InvalidInput, format!("'{key}' is not an EC key")));
                    }
                    Attribute::Id(v) => id = Some(v),
                    _ => {}
                }
            }
            let id = id.unwrap_or_default();
            let public = match find(s, ObjectClass::PUBLIC_KEY, object, Some(&id))?[..] {
                [h] => h,
                [] => {
                    return Err(kms(
                        ErrorKind::NotFound,
                        format!("'{key}' has a private key but no public key object with the same CKA_ID"),
                    ));
                }
                _ => {
                    return Err(kms(
                        ErrorKind::Conflict,
                        format!("several public keys are labelled '{key}'"),
                    ));
                }
            };
            Ok((private, id, ec_point(s, public)?))
        })?;
        Ok(Arc::new(Pkcs11Signer {
            key_ref: key.clone(),
            spki: crate::soft::spki_from_point(&point)?,
            token,
            id,
            private: Mutex::new(private),
        }))
    }

    fn exists(&self, key: &KeyRef) -> Result<bool, KmsError> {
        let (token, object) = parts(key)?;
        let token = self.token(token)?;
        token.run("key lookup", |s| Ok(!find(s, ObjectClass::PRIVATE_KEY, object, None)?.is_empty()))
    }
}

/// A token of one manager: its slot and a pool of logged-in R/W sessions.
struct Token {
    module: Arc<Module>,
    label: String,
    slot: Slot,
    pin: Arc<Zeroizing<String>>,
    pool: Mutex<Vec<Session>>,
}

/// Why an operation in a session failed.
enum OpError {
    /// The token said no.
    Ck(CkError),
    /// A decision of ours (exists, not found, ...).
    Kms(KmsError),
}

impl From<CkError> for OpError {
    fn from(e: CkError) -> Self {
        OpError::Ck(e)
    }
}

fn kms(kind: ErrorKind, detail: String) -> OpError {
    OpError::Kms(KmsError::Backend { kind, detail })
}

/// Errors after which a session is not reused; the operation is retried once in a fresh
/// session (which logs in again if the token was logged out).
fn session_is_broken(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(RvError::SessionHandleInvalid | RvError::SessionClosed | RvError::UserNotLoggedIn, _)
    )
}

/// A session borrowed from a token's pool; returned on drop unless discarded.
struct Lease<'a> {
    token: &'a Token,
    session: Option<Session>,
}

impl Lease<'_> {
    fn discard(mut self) {
        self.session = None;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let mut pool = lock(&self.token.pool);
            if pool.len() < MAX_IDLE_SESSIONS {
                pool.push(s);
            }
        }
    }
}

impl Token {
    fn lease(&self) -> Result<Lease<'_>, KmsError> {
        let pooled = lock(&self.pool).pop();
        let session = match pooled {
            Some(s) => s,
            None => self.open_session()?,
        };
        Ok(Lease { token: self, session: Some(session) })
    }

    fn open_session(&self) -> Result<Session, KmsError> {
        let session = self.module.ctx.open_rw_session(self.slot).map_err(|e| KmsError::Backend {
            kind: ErrorKind::Unavailable,
            detail: format!("cannot open a session on PKCS#11 token '{}': {e}", self.label),
        })?;
        self.login(&session)?;
        Ok(session)
    }

    /// Log the user in (a no-op if this process already did, with the same PIN).
    fn login(&self, session: &Session) -> Result<(), KmsError> {
        let refused = |why: &str| KmsError::Backend {
            kind: ErrorKind::Unauthorized,
            detail: format!("PKCS#11 login failed for token '{}': {why}", self.label),
        };
        let pin = AuthPin::from(self.pin.as_str());
        let mut logins = lock(&self.module.logins);
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) => {
                let tag = hmac::sign(&self.module.pin_mac, self.pin.as_bytes());
                logins.insert(self.slot, tag.as_ref().to_vec());
                tracing::debug!(token = %self.label, "logged in to PKCS#11 token");
                Ok(())
            }
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => match logins.get(&self.slot) {
                // The token does not check the PIN again: we do.
                Some(tag) => hmac::verify(&self.module.pin_mac, self.pin.as_bytes(), tag)
                    .map_err(|_| refused("incorrect PIN (not the PIN this process logged in with)")),
                // Logged in by other code of this process: nothing to compare with.
                None => Ok(()),
            },
            Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange, _)) => {
                Err(refused("incorrect PIN (refused by the token)"))
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(refused("the PIN is locked")),
            Err(CkError::Pkcs11(RvError::PinExpired, _)) => Err(refused("the PIN has expired")),
            Err(e) => Err(KmsError::Backend {
                kind: ErrorKind::Unavailable,
                detail: format!("PKCS#11 login to token '{}' failed: {e}", self.label),
            }),
        }
    }

    /// Run `op` in a pooled session, retrying once in a fresh session if the session
    /// turned out to be unusable.
    fn run<T>(&self, what: &str, op: impl Fn(&Session) -> Result<T, OpError>) -> Result<T, KmsError> {
        let mut retried = false;
        loop {
            let lease = self.lease()?;
            let result = match &lease.session {
                Some(s) => op(s),
                None => return Err(internal("empty session lease")),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(OpError::Kms(e)) => return Err(e),
                Err(OpError::Ck(e)) if session_is_broken(&e) && !retried => {
                    tracing::debug!(token = %self.label, error = %e, "PKCS#11 session unusable; retrying");
                    lease.discard();
                    retried = true;
                }
                Err(OpError::Ck(e)) => {
                    if session_is_broken(&e) {
                        lease.discard();
                    }
                    return Err(self.ck_error(what, &e));
                }
            }
        }
    }

    fn ck_error(&self, what: &str, e: &CkError) -> KmsError {
        let kind = match e {
            CkError::Pkcs11(rv, _) => match rv {
                RvError::UserNotLoggedIn | RvError::PinIncorrect | RvError::PinLocked => {
                    ErrorKind::Unauthorized
                }
                RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid => ErrorKind::NotFound,
                RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::SessionCount
                | RvError::HostMemory => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            _ => ErrorKind::Internal,
        };
        KmsError::Backend { kind, detail: format!("PKCS#11 {what} on token '{}' failed: {e}", self.label) }
    }
}

/// Handles of the objects of a class with a label (and a `CKA_ID`, if given).
fn find(
    s: &Session,
    class: ObjectClass,
    label: &str,
    id: Option<&[u8]>,
) -> Result<Vec<ObjectHandle>, CkError> {
    let mut template = vec![Attribute::Class(class), Attribute::Label(label.as_bytes().to_vec())];
    if let Some(id) = id {
        template.push(Attribute::Id(id.to_vec()));
    }
    s.find_objects(&template)
}

/// The uncompressed P-256 point of a public-key object. `CKA_EC_POINT` is a DER OCTET
/// STRING around the point (PKCS#11 2.40 §2.3.3; SoftHSM2 follows it); a bare point is
/// accepted too.
fn ec_point(s: &Session, public: ObjectHandle) -> Result<Vec<u8>, OpError> {
    let (mut point, mut params) = (None, None);
    for a in s.get_attributes(public, &[AttributeType::EcPoint, AttributeType::EcParams])? {
        match a {
            Attribute::EcPoint(v) => point = Some(v),
            Attribute::EcParams(v) => params = Some(v),
            _ => {}
        }
    }
    if params.as_deref() != Some(&P256_EC_PARAMS[..]) {
        return Err(kms(ErrorKind::InvalidInput, "the public key is not on P-256".into()));
    }
    let Some(point) = point else {
        return Err(kms(ErrorKind::Internal, "the public key has no CKA_EC_POINT".into()));
    };
    if point.len() == 65 && point[0] == 0x04 {
        return Ok(point);
    }
    use der::Decode;
    let inner = der::asn1::OctetStringRef::from_der(&point)
        .map_err(|e| kms(ErrorKind::Internal, format!("malformed CKA_EC_POINT: {e}")))?;
    Ok(inner.as_bytes().to_vec())
}

/// A key pair on a token. The private-key handle is cached and looked up again (by label
/// and `CKA_ID`) if the token no longer knows it.
struct Pkcs11Signer {
    key_ref: KeyRef,
    token: Arc<Token>,
    id: Vec<u8>,
    private: Mutex<ObjectHandle>,
    spki: Vec<u8>,
}

impl Pkcs11Signer {
    fn object(&self) -> &str {
        match &self.key_ref {
            KeyRef::Pkcs11 { object, .. } => object,
            KeyRef::Soft { name } => name,
        }
    }
}

impl Signer for Pkcs11Signer {
    fn key_ref(&self) -> &KeyRef {
        &self.key_ref
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::EcdsaP256Sha256
    }
    fn public_key_spki_der(&self) -> &[u8] {
        &self.spki
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KmsError> {
        let digest = sha2::Sha256::digest(msg);
        let raw = self.token.run("signing", |s| {
            let handle = *lock(&self.private);
            match s.sign(&Mechanism::Ecdsa, handle, &digest) {
                Err(CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _)) => {
                    // Handles may be renumbered once every session has been closed. Find
                    // the same key (label and CKA_ID) again; a replaced key has a new ID.
                    let Some(&h) = find(s, ObjectClass::PRIVATE_KEY, self.object(), Some(&self.id))?.first()
                    else {
                        return Err(kms(
                            ErrorKind::NotFound,
                            format!("key '{}' was deleted or replaced on the token", self.key_ref),
                        ));
                    };
                    *lock(&self.private) = h;
                    Ok(s.sign(&Mechanism::Ecdsa, h, &digest)?)
                }
                other => Ok(other?),
            }
        })?;
        let sig = p256::ecdsa::Signature::from_slice(&raw).map_err(|_| KmsError::Backend {
            kind: ErrorKind::Internal,
            detail: format!("PKCS#11 token returned a malformed ECDSA signature for '{}'", self.key_ref),
        })?;
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

fn internal(what: &str) -> KmsError {
    KmsError::Backend { kind: ErrorKind::Internal, detail: format!("PKCS#11: {what}") }
}
