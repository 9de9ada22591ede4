//! Software P-256 keys encrypted at rest.
//!
//! A [`SoftKeyStore`] keeps one JSON file per key, `<dir>/<name>.key`:
//!
//! ```json
//! {"format":"devid-soft-key/1","algorithm":"ecdsa-p256",
//!  "kdf":{"type":"argon2id","m_cost":19456,"t_cost":2,"p_cost":1,"salt":"<b64>"},
//!  "nonce":"<b64, 96 bits>","ciphertext":"<b64 AES-256-GCM(PKCS#8 DER)>",
//!  "public_key":"<b64 SPKI DER>"}
//! ```
//!
//! The private key (PKCS#8 DER) is sealed with AES-256-GCM under a key-encryption key
//! ([`Kek`]): either derived from a passphrase with Argon2id (OWASP parameters, a fresh
//! 16-byte salt per file; `kdf.type = "argon2id"`), or a 32-byte key given directly
//! (`kdf.type = "raw"`). The additional authenticated data binds the format, the key's
//! name and its algorithm, so a file copied or renamed to another name does not decrypt.
//!
//! Files are written atomically (a `0600` temporary file in the same directory, `fsync`,
//! then link or rename), and the directory is created `0700`.
//!
//! Plaintext key material held by this module (the PKCS#8 document and derived
//! key-encryption keys) lives in [`Zeroizing`] buffers; the parsed key inside aws-lc is
//! freed with `OPENSSL_cleanse`, which wipes it.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use devid_core::{Entropy, ErrorKind, KeyRef};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{KeyAlgorithm, KeyManager, KmsError, SignatureAlgorithm, Signer};

/// The `format` field of every key file, version 1.
pub const FORMAT: &str = "devid-soft-key/1";
/// The `algorithm` field for P-256 keys.
const ALG_P256: &str = "ecdsa-p256";
/// Length of the Argon2id salt, per file.
const SALT_LEN: usize = 16;

/// Argon2id cost parameters for deriving a key-encryption key from a passphrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Parallelism.
    pub p_cost: u32,
}

impl Argon2Params {
    /// The OWASP-recommended minimum for Argon2id: 19 MiB, 2 iterations, 1 lane. New key
    /// files always use these.
    pub const OWASP: Argon2Params = Argon2Params { m_cost: 19_456, t_cost: 2, p_cost: 1 };

    // Upper bounds accepted when reading a file, so a corrupted file cannot make the
    // process allocate gigabytes or spin for hours.
    const MAX_M_COST: u32 = 4 * 1024 * 1024; // 4 GiB
    const MAX_T_COST: u32 = 64;
    const MAX_P_COST: u32 = 64;

    fn within_bounds(&self) -> bool {
        self.m_cost <= Self::MAX_M_COST && self.t_cost <= Self::MAX_T_COST && self.p_cost <= Self::MAX_P_COST
    }
}

/// The key-encryption key of a [`SoftKeyStore`].
///
/// Its `Debug` output is redacted; neither variant is ever logged or put into an error.
pub enum Kek {
    /// A passphrase; each key file gets its own AES key, derived with Argon2id and a
    /// fresh random salt.
    Passphrase(Zeroizing<String>),
    /// A 32-byte AES-256 key, used directly.
    Key(Zeroizing<[u8; 32]>),
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(..redacted..)")
    }
}

impl Kek {
    /// Read a key file holding 32 bytes as 64 hex digits or as base64 (surrounding
    /// whitespace ignored). Errors name the file, never its content.
    pub fn from_key_file(path: &Path) -> Result<Kek, KmsError> {
        let mut text = Zeroizing::new(String::new());
        File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(|e| io_error(&format!("cannot read key-encryption key file {}", path.display()), &e))?;
        Kek::parse(&text).map_err(|()| KmsError::Backend {
            kind: ErrorKind::Internal,
            detail: format!(
                "key-encryption key file {} must hold 32 bytes as 64 hex digits or as base64",
                path.display()
            ),
        })
    }

    /// Parse 32 bytes given as 64 hex digits or as base64 (surrounding whitespace
    /// ignored), e.g. from an environment variable. The error does not repeat the text.
    pub fn from_hex_or_base64(text: &str) -> Result<Kek, KmsError> {
        Kek::parse(text).map_err(|()| KmsError::Backend {
            kind: ErrorKind::InvalidInput,
            detail: "a key-encryption key must be 32 bytes given as 64 hex digits or as base64".into(),
        })
    }

    fn parse(text: &str) -> Result<Kek, ()> {
        let text = text.trim();
        let mut key = Zeroizing::new([0u8; 32]);
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode_to_slice(text, key.as_mut_slice()).map_err(|_| ())?;
            return Ok(Kek::Key(key));
        }
        let engines = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        for engine in engines {
            let mut buf = Zeroizing::new([0u8; 48]);
            if let Ok(32) = engine.decode_slice(text, buf.as_mut_slice()) {
                key.copy_from_slice(&buf[..32]);
                return Ok(Kek::Key(key));
            }
        }
        Err(())
    }

    /// Write a fresh random 32-byte key, as hex, to a new file with mode `0600`, and
    /// return it. Refuses to overwrite an existing file.
    pub fn generate_key_file(path: &Path) -> Result<Kek, KmsError> {
        Kek::generate_key_file_with(path, &devid_core::OsEntropy)
    }

    /// [`Kek::generate_key_file`] with an injected source of randomness.
    pub fn generate_key_file_with(path: &Path, rng: &dyn Entropy) -> Result<Kek, KmsError> {
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill(key.as_mut_slice());
        let mut text = Zeroizing::new(hex::encode(key.as_slice()));
        text.push('\n');
        let what = format!("cannot write key-encryption key file {}", path.display());
        let mut file =
            OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
                match e.kind() {
                    io::ErrorKind::AlreadyExists => KmsError::Backend {
                        kind: ErrorKind::Conflict,
                        detail: format!("{what}: it already exists (refusing to overwrite)"),
                    },
                    _ => io_error(&what, &e),
                }
            })?;
        file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| io_error(&what, &e))?;
        if let Some(parent) = path.parent() {
            sync_dir(parent);
        }
        Ok(Kek::Key(key))
    }
}

/// The `kdf` object of a key file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum KdfField {
    /// Argon2id over the passphrase.
    Argon2id { m_cost: u32, t_cost: u32, p_cost: u32, salt: String },
    /// The key-encryption key is the AES key.
    Raw,
}

/// A key file (see the module documentation).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: String,
    algorithm: String,
    kdf: KdfField,
    nonce: String,
    ciphertext: String,
    public_key: String,
}

/// Encrypted software P-256 keys in a directory, one file per key. See the
/// [module documentation](self) for the file format.
///
/// Signers are cached per key name, so the (deliberately slow) Argon2id derivation runs
/// once per key per process. A key file replaced by another process is not noticed by a
/// cached signer; replace keys through [`KeyManager::create_key`] on this store.
pub struct SoftKeyStore {
    dir: PathBuf,
    kek: Kek,
    argon2: Argon2Params,
    rng: SystemRandom,
    cache: Mutex<HashMap<String, Arc<SoftSigner>>>,
    seal_key: std::sync::OnceLock<Zeroizing<[u8; 32]>>,
}

impl fmt::Debug for SoftKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftKeyStore").field("dir", &self.dir).field("kek", &self.kek).finish_non_exhaustive()
    }
}

impl SoftKeyStore {
    /// Open (and create with mode `0700` if missing) the key directory `dir`, with the
    /// key-encryption key `kek`.
    pub fn open(dir: impl Into<PathBuf>, kek: Kek) -> Result<Self, KmsError> {
        Self::open_with_params(dir.into(), kek, Argon2Params::OWASP)
    }

    /// For tests only: cheap Argon2id parameters, so that passphrase tests stay fast.
    #[cfg(test)]
    pub(crate) fn open_for_tests(dir: impl Into<PathBuf>, kek: Kek) -> Result<Self, KmsError> {
        Self::open_with_params(dir.into(), kek, Argon2Params { m_cost: 64, t_cost: 1, p_cost: 1 })
    }

    fn open_with_params(dir: PathBuf, kek: Kek, argon2: Argon2Params) -> Result<Self, KmsError> {
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {
                if m.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        dir = %dir.display(),
                        "the software key directory is accessible to group or others; 0700 is recommended"
                    );
                }
            }
            Ok(_) => {
                return Err(KmsError::Backend {
                    kind: ErrorKind::Internal,
                    detail: format!("software key store {} is not a directory", dir.display()),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|e| {
                    io_error(&format!("cannot create software key store {}", dir.display()), &e)
                })?;
                // The mode given to mkdir is filtered by the umask: set it explicitly.
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| io_error(&format!("cannot set the mode of {}", dir.display()), &e))?;
            }
            Err(e) => {
                return Err(io_error(&format!("cannot open software key store {}", dir.display()), &e));
            }
        }
        Ok(SoftKeyStore {
            dir,
            kek,
            argon2,
            rng: SystemRandom::new(),
            cache: Mutex::new(HashMap::new()),
            seal_key: std::sync::OnceLock::new(),
        })
    }

    /// The AES-256 key that seals secrets kept in the database: from a raw KEK by HMAC-SHA256
    /// with a fixed label (RFC 5869 §2.2 extract step, as a one-block KDF); from a
    /// passphrase by Argon2id over the installation's random `seal.salt` (made once, 0600).
    /// Derived once per process.
    fn seal_key(&self) -> Result<&Zeroizing<[u8; 32]>, KmsError> {
        if let Some(k) = self.seal_key.get() {
            return Ok(k);
        }
        let key = match &self.kek {
            Kek::Key(k) => {
                let mac = aws_lc_rs::hmac::sign(
                    &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, k.as_slice()),
                    b"devid-seal-v1",
                );
                let mut out = Zeroizing::new([0u8; 32]);
                out.copy_from_slice(mac.as_ref());
                out
            }
            Kek::Passphrase(pass) => {
                let path = self.dir.join("seal.salt");
                let salt = match fs::read(&path) {
                    Ok(s) if s.len() == SALT_LEN => s,
                    Ok(_) => {
                        return Err(KmsError::Backend {
                            kind: ErrorKind::Internal,
                            detail: format!("{} is not {SALT_LEN} bytes", path.display()),
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        let mut salt = [0u8; SALT_LEN];
                        self.rng.fill(&mut salt).map_err(|_| internal("random salt"))?;
                        let mut f =
                            OpenOptions::new()
                                .write(true)
                                .create_new(true)
                                .mode(0o600)
                                .open(&path)
                                .map_err(|e| io_error(&format!("cannot create {}", path.display()), &e))?;
                        f.write_all(&salt)
                            .and_then(|()| f.sync_all())
                            .map_err(|e| io_error(&format!("cannot write {}", path.display()), &e))?;
                        salt.to_vec()
                    }
                    Err(e) => return Err(io_error(&format!("cannot read {}", path.display()), &e)),
                };
                derive_argon2id(pass, &salt, self.argon2)?
            }
        };
        Ok(self.seal_key.get_or_init(|| key))
    }

    /// See [`KeyManager::seal`]. Layout: version byte 1, 12-byte nonce, ciphertext and tag.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, KmsError> {
        let key = self.seal_key()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| internal("random nonce"))?;
        let sealing =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_slice()).map_err(|_| internal("AES key"))?);
        let mut buf = plaintext.to_vec();
        sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(format!("devid-seal-v1:{context}").as_bytes()),
                &mut buf,
            )
            .map_err(|_| internal("AES-GCM seal failed"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// See [`KeyManager::unseal`].
    pub fn unseal(&self, context: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let key = self.seal_key()?;
        let fail = || KmsError::Decrypt { key: format!("sealed secret ({context})") };
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != 1 {
            return Err(fail());
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN]).map_err(|_| fail())?;
        let sealing =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_slice()).map_err(|_| internal("AES key"))?);
        let mut buf = Zeroizing::new(sealed[1 + NONCE_LEN..].to_vec());
        let n = sealing
            .open_in_place(
                nonce,
                Aad::from(format!("devid-seal-v1:{context}").as_bytes()),
                buf.as_mut_slice(),
            )
            .map_err(|_| fail())?
            .len();
        buf.truncate(n);
        Ok(buf)
    }

    /// The key directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the file of the key `name`.
    pub fn key_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    fn name_of<'k>(&self, key: &'k KeyRef) -> Result<&'k str, KmsError> {
        match key {
            KeyRef::Soft { name } => {
                // KeyRef::soft() validates names, but the enum can be built directly:
                // never let a name escape the directory.
                if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\', '\0']) {
                    return Err(KmsError::Backend {
                        kind: ErrorKind::InvalidInput,
                        detail: format!("invalid software key name in '{key}'"),
                    });
                }
                Ok(name)
            }
            KeyRef::Pkcs11 { .. } => Err(KmsError::NotConfigured { key: key.to_string() }),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SoftSigner>>> {
        // The map holds no invariant a panic could break.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The AES-256 key for one file, from the KEK and the file's `kdf` field.
    fn file_key(&self, kdf: &KdfField, key: &KeyRef) -> Result<Zeroizing<[u8; 32]>, KmsError> {
        match (&self.kek, kdf) {
            (Kek::Key(k), KdfField::Raw) => Ok(k.clone()),
            (Kek::Passphrase(pass), KdfField::Argon2id { m_cost, t_cost, p_cost, salt }) => {
                let params = Argon2Params { m_cost: *m_cost, t_cost: *t_cost, p_cost: *p_cost };
                if !params.within_bounds() {
                    return Err(malformed(key, "Argon2id parameters out of range"));
                }
                let salt = B64.decode(salt).map_err(|_| malformed(key, "bad salt"))?;
                derive_argon2id(pass, &salt, params)
            }
            // A passphrase store reading a raw-key file or the other way round: the wrong
            // key-encryption key for this file.
            _ => Err(KmsError::Decrypt { key: key.to_string() }),
        }
    }

    fn read_file(&self, key: &KeyRef, name: &str) -> Result<KeyFile, KmsError> {
        let path = self.key_path(name);
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => KmsError::NotFound { key: key.to_string() },
            _ => io_error(&format!("cannot read key file {}", path.display()), &e),
        })?;
        let file: KeyFile = serde_json::from_slice(&bytes).map_err(|e| KmsError::Backend {
            kind: ErrorKind::Internal,
            detail: format!(
                "malformed key file {} ({:?} error at line {} column {})",
                path.display(),
                e.classify(),
                e.line(),
                e.column()
            ),
        })?;
        if file.format != FORMAT {
            return Err(malformed(key, "unknown format"));
        }
        if file.algorithm != ALG_P256 {
            return Err(malformed(key, "unsupported algorithm"));
        }
        Ok(file)
    }

    fn load(&self, key: &KeyRef, name: &str) -> Result<Arc<SoftSigner>, KmsError> {
        let file = self.read_file(key, name)?;
        let aes = self.file_key(&file.kdf, key)?;
        let nonce = B64.decode(&file.nonce).map_err(|_| malformed(key, "bad nonce"))?;
        let nonce = Nonce::try_assume_unique_for_key(&nonce).map_err(|_| malformed(key, "bad nonce"))?;
        let public_key = B64.decode(&file.public_key).map_err(|_| malformed(key, "bad public_key"))?;
        let mut buf =
            Zeroizing::new(B64.decode(&file.ciphertext).map_err(|_| malformed(key, "bad ciphertext"))?);
        let sealing =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, aes.as_slice()).map_err(|_| internal("AES key"))?);
        let pkcs8 = sealing
            .open_in_place(nonce, Aad::from(aad(name).as_bytes()), buf.as_mut_slice())
            .map_err(|_| KmsError::Decrypt { key: key.to_string() })?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8)
            .map_err(|_| malformed(key, "the decrypted private key is not a P-256 PKCS#8 key"))?;
        let spki = spki_from_point(pair.public_key().as_ref())?;
        if spki != public_key {
            // The ciphertext authenticated, so public_key is what was altered.
            return Err(KmsError::Decrypt { key: key.to_string() });
        }
        Ok(Arc::new(SoftSigner { key_ref: key.clone(), pair, spki, rng: self.rng.clone() }))
    }

    fn create(&self, key: &KeyRef, name: &str, replace: bool) -> Result<Arc<SoftSigner>, KmsError> {
        let pkcs8 = Zeroizing::new(
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.rng)
                .map_err(|_| internal("P-256 key generation failed"))?
                .as_ref()
                .to_vec(),
        );
        self.store_pkcs8(key, name, &pkcs8, replace)
    }

    /// Encrypt and write the PKCS#8 key `pkcs8` under `name`.
    fn store_pkcs8(
        &self,
        key: &KeyRef,
        name: &str,
        pkcs8: &[u8],
        replace: bool,
    ) -> Result<Arc<SoftSigner>, KmsError> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8)
            .map_err(|_| internal("the generated P-256 key does not parse"))?;
        let spki = spki_from_point(pair.public_key().as_ref())?;

        let (kdf, aes) = match &self.kek {
            Kek::Key(k) => (KdfField::Raw, k.clone()),
            Kek::Passphrase(pass) => {
                let mut salt = [0u8; SALT_LEN];
                self.rng.fill(&mut salt).map_err(|_| internal("random salt"))?;
                let p = self.argon2;
                let aes = derive_argon2id(pass, &salt, p)?;
                let kdf = KdfField::Argon2id {
                    m_cost: p.m_cost,
                    t_cost: p.t_cost,
                    p_cost: p.p_cost,
                    salt: B64.encode(salt),
                };
                (kdf, aes)
            }
        };
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| internal("random nonce"))?;
        let sealing =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, aes.as_slice()).map_err(|_| internal("AES key"))?);
        let mut buf = Zeroizing::new(pkcs8.to_vec());
        sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(name).as_bytes()),
                &mut *buf,
            )
            .map_err(|_| internal("AES-GCM seal failed"))?;
        let file = KeyFile {
            format: FORMAT.into(),
            algorithm: ALG_P256.into(),
            kdf,
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(buf.as_slice()),
            public_key: B64.encode(&spki),
        };
        let mut json = serde_json::to_vec_pretty(&file).map_err(|_| internal("serialize key file"))?;
        json.push(b'\n');
        self.write_atomically(key, name, &json, replace)?;
        Ok(Arc::new(SoftSigner { key_ref: key.clone(), pair, spki, rng: self.rng.clone() }))
    }

    /// Write `bytes` as the file of `name`: a `0600` temporary file in the directory,
    /// fsync, then hard-link (no overwrite) or rename (replace) it into place.
    fn write_atomically(
        &self,
        key: &KeyRef,
        name: &str,
        bytes: &[u8],
        replace: bool,
    ) -> Result<(), KmsError> {
        let path = self.key_path(name);
        let mut suffix = [0u8; 8];
        self.rng.fill(&mut suffix).map_err(|_| internal("random file name"))?;
        // Key names never start with '.', so temporary files cannot collide with keys.
        let tmp = self.dir.join(format!(".{name}.key.tmp-{}", hex::encode(suffix)));
        let what = format!("cannot write key file {}", path.display());
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| io_error(&what, &e))?;
            f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| io_error(&what, &e))?;
            drop(f);
            if replace {
                fs::rename(&tmp, &path).map_err(|e| io_error(&what, &e))
            } else {
                // link(2) fails if the target exists: an atomic "create if absent".
                fs::hard_link(&tmp, &path).map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => KmsError::Exists { key: key.to_string() },
                    _ => io_error(&what, &e),
                })
            }
        })();
        if !replace || result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        sync_dir(&self.dir);
        Ok(())
    }
}

impl KeyManager for SoftKeyStore {
    fn create_key(
        &self,
        key: &KeyRef,
        alg: KeyAlgorithm,
        replace: bool,
    ) -> Result<Arc<dyn Signer>, KmsError> {
        let name = self.name_of(key)?;
        match alg {
            KeyAlgorithm::EcdsaP256 => {}
        }
        if !replace && self.key_path(name).exists() {
            // Cheap early answer; write_atomically still refuses atomically.
            return Err(KmsError::Exists { key: key.to_string() });
        }
        let signer = self.create(key, name, replace)?;
        self.cache().insert(name.to_string(), signer.clone());
        tracing::info!(key = %key, replace, "created software key");
        Ok(signer)
    }

    fn signer(&self, key: &KeyRef) -> Result<Arc<dyn Signer>, KmsError> {
        let name = self.name_of(key)?;
        if let Some(s) = self.cache().get(name) {
            return Ok(s.clone());
        }
        // Decrypt outside the lock: Argon2id takes a while. Two threads may both decrypt
        // the same key once; the result is the same.
        let signer = self.load(key, name)?;
        let signer = self.cache().entry(name.to_string()).or_insert(signer).clone();
        Ok(signer)
    }

    fn exists(&self, key: &KeyRef) -> Result<bool, KmsError> {
        let name = self.name_of(key)?;
        let path = self.key_path(name);
        path.try_exists().map_err(|e| io_error(&format!("cannot check key file {}", path.display()), &e))
    }
}

/// A decrypted software key. The key lives inside aws-lc, which wipes it with
/// `OPENSSL_cleanse` when the signer is dropped.
struct SoftSigner {
    key_ref: KeyRef,
    pair: EcdsaKeyPair,
    spki: Vec<u8>,
    rng: SystemRandom,
}

impl Signer for SoftSigner {
    fn key_ref(&self) -> &KeyRef {
        &self.key_ref
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::EcdsaP256Sha256
    }
    fn public_key_spki_der(&self) -> &[u8] {
        &self.spki
    }
    fn may_block(&self) -> bool {
        false
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KmsError> {
        let sig = self.pair.sign(&self.rng, msg).map_err(|_| KmsError::Backend {
            kind: ErrorKind::Internal,
            detail: format!("signing with '{}' failed", self.key_ref),
        })?;
        Ok(sig.as_ref().to_vec())
    }
}

/// The additional authenticated data of a key file: format, name and algorithm.
fn aad(name: &str) -> String {
    format!("{FORMAT}\0{name}\0{ALG_P256}")
}

/// Argon2id(passphrase, salt) → 32-byte key.
fn derive_argon2id(pass: &str, salt: &[u8], p: Argon2Params) -> Result<Zeroizing<[u8; 32]>, KmsError> {
    let params = argon2::Params::new(p.m_cost, p.t_cost, p.p_cost, Some(32))
        .map_err(|e| internal(&format!("Argon2id parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(pass.as_bytes(), salt, out.as_mut_slice())
        .map_err(|e| internal(&format!("Argon2id: {e}")))?;
    Ok(out)
}

/// The DER SubjectPublicKeyInfo of an uncompressed P-256 point.
pub(crate) fn spki_from_point(point: &[u8]) -> Result<Vec<u8>, KmsError> {
    use p256::pkcs8::EncodePublicKey;
    let pk = p256::PublicKey::from_sec1_bytes(point).map_err(|_| internal("invalid P-256 public point"))?;
    let doc = pk.to_public_key_der().map_err(|_| internal("cannot encode the public key"))?;
    Ok(doc.as_bytes().to_vec())
}

fn internal(what: &str) -> KmsError {
    KmsError::Backend { kind: ErrorKind::Internal, detail: format!("software key store: {what}") }
}

fn malformed(key: &KeyRef, what: &str) -> KmsError {
    KmsError::Backend { kind: ErrorKind::Internal, detail: format!("malformed key file for '{key}': {what}") }
}

fn io_error(what: &str, e: &io::Error) -> KmsError {
    let kind = match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::NotFound | io::ErrorKind::InvalidData => {
            ErrorKind::Internal
        }
        _ => ErrorKind::Unavailable,
    };
    KmsError::Backend { kind, detail: format!("{what}: {e}") }
}

/// fsync a directory so a rename or link in it is durable. Best effort: some file
/// systems refuse to fsync directories.
fn sync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), error = %e, "fsync of directory failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify_p256_sha256;

    fn pass(p: &str) -> Kek {
        Kek::Passphrase(Zeroizing::new(p.to_string()))
    }

    fn key(name: &str) -> KeyRef {
        KeyRef::soft(name).expect("valid name")
    }

    #[test]
    fn passphrase_roundtrip_and_wrong_passphrase() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SoftKeyStore::open_for_tests(dir.path(), pass("correct horse")).expect("open");
        let k = key("ca");
        let signer = store.create_key(&k, KeyAlgorithm::EcdsaP256, false).expect("create");
        let sig = signer.sign(b"hello").expect("sign");
        verify_p256_sha256(signer.public_key_spki_der(), b"hello", &sig).expect("verify");

        let text = fs::read_to_string(store.key_path("ca")).expect("read");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["kdf"]["type"], "argon2id");
        assert_eq!(B64.decode(v["kdf"]["salt"].as_str().expect("salt")).expect("b64").len(), 16);

        let again = SoftKeyStore::open_for_tests(dir.path(), pass("correct horse")).expect("open");
        let s2 = again.signer(&k).expect("signer");
        assert_eq!(s2.public_key_spki_der(), signer.public_key_spki_der());
        let sig = s2.sign(b"again").expect("sign");
        verify_p256_sha256(signer.public_key_spki_der(), b"again", &sig).expect("verify");

        let wrong = SoftKeyStore::open_for_tests(dir.path(), pass("battery staple")).expect("open");
        let err = wrong.signer(&k).err().expect("wrong passphrase must fail");
        assert!(matches!(err, KmsError::Decrypt { .. }), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::Unauthorized);
        assert!(!err.to_string().contains("correct horse"));
        assert!(!err.to_string().contains("battery staple"));

        // A raw-key store cannot read a passphrase file.
        let raw = SoftKeyStore::open(dir.path(), Kek::Key(Zeroizing::new([7u8; 32]))).expect("open");
        assert!(matches!(raw.signer(&k), Err(KmsError::Decrypt { .. })));
    }

    #[test]
    fn sealed_secrets_open_only_in_their_context() {
        for kek in [pass("seal pass"), Kek::Key(Zeroizing::new([7; 32]))] {
            let dir = tempfile::tempdir().unwrap();
            let store = SoftKeyStore::open_for_tests(dir.path(), kek).unwrap();
            let sealed = store.seal("group:a", b"master key").unwrap();
            assert!(!sealed.windows(10).any(|w| w == b"master key"));
            assert_eq!(store.unseal("group:a", &sealed).unwrap().as_slice(), b"master key");
            assert!(store.unseal("group:b", &sealed).is_err(), "context is bound");
            let mut bad = sealed.clone();
            *bad.last_mut().unwrap() ^= 1;
            assert!(store.unseal("group:a", &bad).is_err());
            assert!(store.unseal("group:a", &[1, 2, 3]).is_err());
            assert_ne!(store.seal("group:a", b"master key").unwrap(), sealed, "fresh nonce");
        }
    }

    #[test]
    fn each_file_gets_a_fresh_salt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SoftKeyStore::open_for_tests(dir.path(), pass("p")).expect("open");
        store.create_key(&key("a"), KeyAlgorithm::EcdsaP256, false).expect("a");
        store.create_key(&key("b"), KeyAlgorithm::EcdsaP256, false).expect("b");
        let salt = |n: &str| {
            let v: serde_json::Value =
                serde_json::from_slice(&fs::read(store.key_path(n)).expect("read")).expect("json");
            v["kdf"]["salt"].as_str().expect("salt").to_string()
        };
        assert_ne!(salt("a"), salt("b"));
    }

    #[test]
    fn key_file_holds_no_plaintext() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("gen");
        let pkcs8 = pkcs8.as_ref();
        // The private scalar: the OCTET STRING inside ECPrivateKey.
        let scalar = {
            use p256::pkcs8::DecodePrivateKey;
            p256::SecretKey::from_pkcs8_der(pkcs8).expect("parse").to_bytes().to_vec()
        };
        for kek in [pass("p"), Kek::Key(Zeroizing::new([9u8; 32]))] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = SoftKeyStore::open_for_tests(dir.path(), kek).expect("open");
            let k = key("plain");
            let signer = store.store_pkcs8(&k, "plain", pkcs8, false).expect("store");
            let file = fs::read(store.key_path("plain")).expect("read");
            let v: serde_json::Value = serde_json::from_slice(&file).expect("json");
            let ct = B64.decode(v["ciphertext"].as_str().expect("ct")).expect("b64");
            assert_eq!(ct.len(), pkcs8.len() + 16, "PKCS#8 plus the GCM tag");
            for haystack in [&file[..], &ct[..]] {
                for needle in
                    [pkcs8, &scalar[..], B64.encode(pkcs8).as_bytes(), hex::encode(&scalar).as_bytes()]
                {
                    assert!(!haystack.windows(needle.len()).any(|w| w == needle), "plaintext leaked");
                }
            }
            // And it decrypts back to the same key.
            let fresh = SoftKeyStore::open_for_tests(
                dir.path(),
                match &store.kek {
                    Kek::Passphrase(p) => Kek::Passphrase(p.clone()),
                    Kek::Key(k) => Kek::Key(k.clone()),
                },
            )
            .expect("open");
            let again = fresh.signer(&k).expect("signer");
            assert_eq!(again.public_key_spki_der(), signer.public_key_spki_der());
        }
    }

    #[test]
    fn production_params_are_owasp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SoftKeyStore::open(dir.path(), pass("p")).expect("open");
        assert_eq!(store.argon2, Argon2Params { m_cost: 19_456, t_cost: 2, p_cost: 1 });
    }

    #[test]
    fn kek_parsing() {
        let hex64 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let Kek::Key(k) = Kek::from_hex_or_base64(&format!("  {hex64}\n")).expect("hex") else {
            panic!("expected a key")
        };
        assert_eq!(hex::encode(k.as_slice()), hex64);
        let b64 = B64.encode(k.as_slice());
        let Kek::Key(k2) = Kek::from_hex_or_base64(&b64).expect("b64") else { panic!("key") };
        assert_eq!(k2.as_slice(), k.as_slice());
        for bad in ["", "abcd", &hex64[..62], &B64.encode([1u8; 31]), "zz"] {
            let e = Kek::from_hex_or_base64(bad).expect_err("bad");
            assert!(bad.is_empty() || !e.to_string().contains(bad), "{e}");
        }
        assert_eq!(format!("{:?}", Kek::Key(k)), "Kek(..redacted..)");
        assert_eq!(format!("{:?}", pass("secret")), "Kek(..redacted..)");
    }
}
