//! A bounds-checked reader for the TPM 2.0 canonical (big-endian) marshalling and the few
//! structures this crate needs: TPMT_PUBLIC, TPMS_ATTEST and TPMT_SIGNATURE.
//!
//! TPM 2.0 Part 1 §18 ("Marshalling") and Part 2 (the structure definitions cited on each
//! item). Every read checks the remaining length first; malformed input is an
//! [`AttestError`] with [`Failure::Malformed`], never a panic.

use crate::{AttestError, Failure};

/// TPM_ALG_RSA (Part 2 §6.3).
pub const ALG_RSA: u16 = 0x0001;
/// TPM_ALG_SHA1.
pub const ALG_SHA1: u16 = 0x0004;
/// TPM_ALG_AES.
pub const ALG_AES: u16 = 0x0006;
/// TPM_ALG_KEYEDHASH.
pub const ALG_KEYEDHASH: u16 = 0x0008;
/// TPM_ALG_SHA256.
pub const ALG_SHA256: u16 = 0x000B;
/// TPM_ALG_SHA384.
pub const ALG_SHA384: u16 = 0x000C;
/// TPM_ALG_SHA512.
pub const ALG_SHA512: u16 = 0x000D;
/// TPM_ALG_NULL.
pub const ALG_NULL: u16 = 0x0010;
/// TPM_ALG_SM3_256.
pub const ALG_SM3_256: u16 = 0x0012;
/// TPM_ALG_RSASSA.
pub const ALG_RSASSA: u16 = 0x0014;
/// TPM_ALG_RSAES.
pub const ALG_RSAES: u16 = 0x0015;
/// TPM_ALG_RSAPSS.
pub const ALG_RSAPSS: u16 = 0x0016;
/// TPM_ALG_OAEP.
pub const ALG_OAEP: u16 = 0x0017;
/// TPM_ALG_ECDSA.
pub const ALG_ECDSA: u16 = 0x0018;
/// TPM_ALG_ECDH.
pub const ALG_ECDH: u16 = 0x0019;
/// TPM_ALG_ECDAA.
pub const ALG_ECDAA: u16 = 0x001A;
/// TPM_ALG_SM2.
pub const ALG_SM2: u16 = 0x001B;
/// TPM_ALG_ECSCHNORR.
pub const ALG_ECSCHNORR: u16 = 0x001C;
/// TPM_ALG_ECMQV.
pub const ALG_ECMQV: u16 = 0x001D;
/// TPM_ALG_ECC.
pub const ALG_ECC: u16 = 0x0023;
/// TPM_ALG_SYMCIPHER.
pub const ALG_SYMCIPHER: u16 = 0x0025;
/// TPM_ALG_CFB.
pub const ALG_CFB: u16 = 0x0043;

/// TPM_ECC_NIST_P256 (Part 2 §6.4).
pub const ECC_NIST_P256: u16 = 0x0003;

/// TPM_GENERATED_VALUE (Part 2 §6.2): the magic of every TPMS_ATTEST.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_CERTIFY (Part 2 §6.9).
pub const ST_ATTEST_CERTIFY: u16 = 0x8017;

/// TPMA_OBJECT bits (Part 2 §8.3).
pub mod attr {
    /// fixedTPM: the object cannot be duplicated out of this TPM.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// stClear.
    pub const ST_CLEAR: u32 = 1 << 2;
    /// fixedParent: the object cannot be duplicated to another parent.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// sensitiveDataOrigin: the TPM generated the sensitive part.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// userWithAuth.
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// restricted: signs only TPM-generated data (or decrypts only TPM formats).
    pub const RESTRICTED: u32 = 1 << 16;
    /// decrypt.
    pub const DECRYPT: u32 = 1 << 17;
    /// sign / encrypt.
    pub const SIGN: u32 = 1 << 18;
}

fn malformed(what: &str) -> AttestError {
    AttestError::new(Failure::Malformed, format!("TPM structure: {what}"))
}

/// A cursor over marshalled TPM data; every read is bounds-checked.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// The bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The current offset.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// `n` raw bytes.
    pub fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], AttestError> {
        let end = self.pos.checked_add(n).ok_or_else(|| malformed(what))?;
        let out = self.buf.get(self.pos..end).ok_or_else(|| malformed(&format!("{what}: truncated")))?;
        self.pos = end;
        Ok(out)
    }

    /// A UINT8.
    pub fn u8(&mut self, what: &str) -> Result<u8, AttestError> {
        let b = self.bytes(1, what)?;
        Ok(b[0])
    }

    /// A big-endian UINT16.
    pub fn u16(&mut self, what: &str) -> Result<u16, AttestError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian UINT32.
    pub fn u32(&mut self, what: &str) -> Result<u32, AttestError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A big-endian UINT64.
    pub fn u64(&mut self, what: &str) -> Result<u64, AttestError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A TPM2B: a UINT16 size followed by that many bytes (Part 2 §10.4).
    pub fn tpm2b(&mut self, what: &str) -> Result<&'a [u8], AttestError> {
        let n = self.u16(what)?;
        self.bytes(usize::from(n), what)
    }

    /// Fails unless every byte was read.
    pub fn finish(&self, what: &str) -> Result<(), AttestError> {
        if self.remaining() == 0 { Ok(()) } else { Err(malformed(&format!("{what}: trailing bytes"))) }
    }
}

/// The contents of a TPM2B that must be the whole input (TPM2B_PUBLIC, TPM2B_ATTEST, …).
pub fn unwrap_tpm2b<'a>(buf: &'a [u8], what: &str) -> Result<&'a [u8], AttestError> {
    let mut r = Reader::new(buf);
    let inner = r.tpm2b(what)?;
    r.finish(what)?;
    Ok(inner)
}

/// TPMT_SYM_DEF_OBJECT (Part 2 §11.1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymDef {
    /// The algorithm (TPM_ALG_AES…, or TPM_ALG_NULL).
    pub algorithm: u16,
    /// The key size in bits (0 when the algorithm is NULL).
    pub key_bits: u16,
    /// The mode (TPM_ALG_CFB…; NULL when the algorithm is NULL).
    pub mode: u16,
}

/// A signing or key-exchange scheme with its hash (TPMT_RSA_SCHEME, TPMT_ECC_SCHEME,
/// Part 2 §11.2.4.2 and §11.2.5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    /// The scheme (TPM_ALG_ECDSA, TPM_ALG_RSASSA… or TPM_ALG_NULL).
    pub scheme: u16,
    /// Its hash (TPM_ALG_NULL when the scheme has none).
    pub hash: u16,
}

/// The algorithm-specific parameters and unique field of a TPMT_PUBLIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyDetail {
    /// TPMS_RSA_PARMS + TPM2B_PUBLIC_KEY_RSA (Part 2 §12.2.3.5).
    Rsa {
        /// The key size in bits.
        key_bits: u16,
        /// The public exponent (0 on the wire means 2^16 + 1; normalised here).
        exponent: u32,
        /// The modulus, big-endian.
        modulus: Vec<u8>,
    },
    /// TPMS_ECC_PARMS + TPMS_ECC_POINT (Part 2 §12.2.3.6, §11.2.5.2).
    Ecc {
        /// TPM_ECC_CURVE.
        curve: u16,
        /// The KDF scheme (TPMT_KDF_SCHEME).
        kdf: u16,
        /// The x coordinate as marshalled.
        x: Vec<u8>,
        /// The y coordinate as marshalled.
        y: Vec<u8>,
    },
}

/// A parsed TPMT_PUBLIC (Part 2 §12.2.4) of an RSA or ECC key, with its marshalled bytes
/// (the Name is computed over exactly those bytes, Part 1 §16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Public {
    /// The marshalled TPMT_PUBLIC (the contents of the TPM2B_PUBLIC).
    pub raw: Vec<u8>,
    /// type (TPM_ALG_RSA or TPM_ALG_ECC).
    pub alg: u16,
    /// nameAlg.
    pub name_alg: u16,
    /// objectAttributes (TPMA_OBJECT).
    pub attributes: u32,
    /// authPolicy.
    pub auth_policy: Vec<u8>,
    /// parameters.symmetric.
    pub symmetric: SymDef,
    /// parameters.scheme.
    pub scheme: Scheme,
    /// The key itself.
    pub detail: KeyDetail,
}

impl Public {
    /// Parses a TPM2B_PUBLIC (a UINT16 size, then the TPMT_PUBLIC); nothing may follow.
    pub fn from_tpm2b(buf: &[u8]) -> Result<Public, AttestError> {
        Public::from_tpmt(unwrap_tpm2b(buf, "TPM2B_PUBLIC")?)
    }

    /// Parses a marshalled TPMT_PUBLIC; nothing may follow.
    pub fn from_tpmt(buf: &[u8]) -> Result<Public, AttestError> {
        let mut r = Reader::new(buf);
        let alg = r.u16("TPMT_PUBLIC.type")?;
        let name_alg = r.u16("TPMT_PUBLIC.nameAlg")?;
        let attributes = r.u32("TPMT_PUBLIC.objectAttributes")?;
        let auth_policy = r.tpm2b("TPMT_PUBLIC.authPolicy")?.to_vec();
        let (symmetric, scheme, detail) = match alg {
            ALG_RSA => {
                let symmetric = sym_def_object(&mut r)?;
                let scheme = asym_scheme(&mut r, "TPMT_RSA_SCHEME")?;
                let key_bits = r.u16("TPMS_RSA_PARMS.keyBits")?;
                let exponent = match r.u32("TPMS_RSA_PARMS.exponent")? {
                    0 => 65537,
                    e => e,
                };
                let modulus = r.tpm2b("TPM2B_PUBLIC_KEY_RSA")?.to_vec();
                (symmetric, scheme, KeyDetail::Rsa { key_bits, exponent, modulus })
            }
            ALG_ECC => {
                let symmetric = sym_def_object(&mut r)?;
                let scheme = asym_scheme(&mut r, "TPMT_ECC_SCHEME")?;
                let curve = r.u16("TPMS_ECC_PARMS.curveID")?;
                let kdf = r.u16("TPMT_KDF_SCHEME")?;
                if kdf != ALG_NULL {
                    r.u16("TPMT_KDF_SCHEME.hashAlg")?;
                }
                let x = r.tpm2b("TPMS_ECC_POINT.x")?.to_vec();
                let y = r.tpm2b("TPMS_ECC_POINT.y")?.to_vec();
                (symmetric, scheme, KeyDetail::Ecc { curve, kdf, x, y })
            }
            ALG_KEYEDHASH | ALG_SYMCIPHER => {
                return Err(AttestError::new(
                    Failure::UnsupportedAlgorithm,
                    format!("TPMT_PUBLIC of type {alg:#06x} is not an asymmetric key"),
                ));
            }
            other => return Err(malformed(&format!("TPMT_PUBLIC.type {other:#06x}"))),
        };
        r.finish("TPMT_PUBLIC")?;
        Ok(Public { raw: buf.to_vec(), alg, name_alg, attributes, auth_policy, symmetric, scheme, detail })
    }

    /// Whether every bit of `bits` is set in objectAttributes.
    pub fn has(&self, bits: u32) -> bool {
        self.attributes & bits == bits
    }
}

/// TPMT_SYM_DEF_OBJECT (Part 2 §11.1.7): algorithm, then keyBits and mode unless NULL.
fn sym_def_object(r: &mut Reader<'_>) -> Result<SymDef, AttestError> {
    let algorithm = r.u16("TPMT_SYM_DEF_OBJECT.algorithm")?;
    if algorithm == ALG_NULL {
        return Ok(SymDef { algorithm, key_bits: 0, mode: ALG_NULL });
    }
    let key_bits = r.u16("TPMT_SYM_DEF_OBJECT.keyBits")?;
    let mode = r.u16("TPMT_SYM_DEF_OBJECT.mode")?;
    Ok(SymDef { algorithm, key_bits, mode })
}

/// TPMT_RSA_SCHEME / TPMT_ECC_SCHEME (Part 2 §11.2.4.2, §11.2.5.6): the selector, then the
/// TPMU_ASYM_SCHEME member it selects (Part 2 §11.2.3.5).
fn asym_scheme(r: &mut Reader<'_>, what: &str) -> Result<Scheme, AttestError> {
    let scheme = r.u16(what)?;
    let hash = match scheme {
        ALG_NULL | ALG_RSAES => ALG_NULL,
        ALG_RSASSA | ALG_RSAPSS | ALG_OAEP | ALG_ECDSA | ALG_ECDH | ALG_SM2 | ALG_ECSCHNORR | ALG_ECMQV => {
            r.u16(what)?
        }
        ALG_ECDAA => {
            let h = r.u16(what)?;
            r.u16(what)?; // count
            h
        }
        other => return Err(malformed(&format!("{what}: scheme {other:#06x}"))),
    };
    Ok(Scheme { scheme, hash })
}

/// A parsed TPMS_ATTEST of type TPM_ST_ATTEST_CERTIFY (Part 2 §10.12.12, §10.12.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifyInfo {
    /// qualifiedSigner: the qualified name of the signing key.
    pub qualified_signer: Vec<u8>,
    /// extraData: the qualifying data the caller passed to TPM2_Certify.
    pub extra_data: Vec<u8>,
    /// attested.certify.name: the Name of the certified object.
    pub name: Vec<u8>,
    /// attested.certify.qualifiedName.
    pub qualified_name: Vec<u8>,
}

impl CertifyInfo {
    /// Parses a marshalled TPMS_ATTEST (the contents of a TPM2B_ATTEST); it must carry
    /// TPM_GENERATED_VALUE and TPM_ST_ATTEST_CERTIFY, and nothing may follow.
    pub fn parse(buf: &[u8]) -> Result<CertifyInfo, AttestError> {
        let mut r = Reader::new(buf);
        let magic = r.u32("TPMS_ATTEST.magic")?;
        if magic != TPM_GENERATED_VALUE {
            return Err(malformed("TPMS_ATTEST.magic is not TPM_GENERATED_VALUE"));
        }
        let ty = r.u16("TPMS_ATTEST.type")?;
        if ty != ST_ATTEST_CERTIFY {
            return Err(malformed(&format!("TPMS_ATTEST.type {ty:#06x} is not TPM_ST_ATTEST_CERTIFY")));
        }
        let qualified_signer = r.tpm2b("TPMS_ATTEST.qualifiedSigner")?.to_vec();
        let extra_data = r.tpm2b("TPMS_ATTEST.extraData")?.to_vec();
        // TPMS_CLOCK_INFO (Part 2 §10.11.1): clock, resetCount, restartCount, safe.
        r.u64("TPMS_CLOCK_INFO.clock")?;
        r.u32("TPMS_CLOCK_INFO.resetCount")?;
        r.u32("TPMS_CLOCK_INFO.restartCount")?;
        r.u8("TPMS_CLOCK_INFO.safe")?;
        r.u64("TPMS_ATTEST.firmwareVersion")?;
        let name = r.tpm2b("TPMS_CERTIFY_INFO.name")?.to_vec();
        let qualified_name = r.tpm2b("TPMS_CERTIFY_INFO.qualifiedName")?.to_vec();
        r.finish("TPMS_ATTEST")?;
        Ok(CertifyInfo { qualified_signer, extra_data, name, qualified_name })
    }
}

/// A parsed TPMT_SIGNATURE (Part 2 §11.3.4) of the two kinds this crate verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// TPMS_SIGNATURE_ECDSA (Part 2 §11.3.2): hash, r, s.
    Ecdsa {
        /// The hash algorithm of the signed digest.
        hash: u16,
        /// r, big-endian.
        r: Vec<u8>,
        /// s, big-endian.
        s: Vec<u8>,
    },
    /// TPMS_SIGNATURE_RSASSA (Part 2 §11.3.1): hash, signature.
    RsaSsa {
        /// The hash algorithm of the signed digest.
        hash: u16,
        /// The PKCS#1 v1.5 signature.
        sig: Vec<u8>,
    },
}

impl Signature {
    /// Parses a marshalled TPMT_SIGNATURE; nothing may follow.
    pub fn parse(buf: &[u8]) -> Result<Signature, AttestError> {
        let mut r = Reader::new(buf);
        let alg = r.u16("TPMT_SIGNATURE.sigAlg")?;
        let sig = match alg {
            ALG_ECDSA => {
                let hash = r.u16("TPMS_SIGNATURE_ECDSA.hash")?;
                let sr = r.tpm2b("TPMS_SIGNATURE_ECDSA.signatureR")?.to_vec();
                let ss = r.tpm2b("TPMS_SIGNATURE_ECDSA.signatureS")?.to_vec();
                Signature::Ecdsa { hash, r: sr, s: ss }
            }
            ALG_RSASSA => {
                let hash = r.u16("TPMS_SIGNATURE_RSASSA.hash")?;
                let sig = r.tpm2b("TPMS_SIGNATURE_RSASSA.sig")?.to_vec();
                Signature::RsaSsa { hash, sig }
            }
            ALG_RSAPSS | ALG_ECDAA | ALG_SM2 | ALG_ECSCHNORR | ALG_NULL => {
                return Err(AttestError::new(
                    Failure::UnsupportedAlgorithm,
                    format!("TPMT_SIGNATURE.sigAlg {alg:#06x} is not ECDSA or RSASSA"),
                ));
            }
            other => return Err(malformed(&format!("TPMT_SIGNATURE.sigAlg {other:#06x}"))),
        };
        r.finish("TPMT_SIGNATURE")?;
        Ok(sig)
    }
}

/// Appends a TPM2B (UINT16 size, then the bytes). The caller guarantees `data` fits.
pub fn put_tpm2b(out: &mut Vec<u8>, data: &[u8]) -> Result<(), AttestError> {
    let n = u16::try_from(data.len()).map_err(|_| malformed("TPM2B too large"))?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(data);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic xorshift generator: the fuzz below needs no external crate.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn ecc_public() -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&ALG_ECC.to_be_bytes());
        t.extend_from_slice(&ALG_SHA256.to_be_bytes());
        t.extend_from_slice(&0x0005_0072u32.to_be_bytes());
        put_tpm2b(&mut t, &[]).unwrap();
        t.extend_from_slice(&ALG_NULL.to_be_bytes());
        t.extend_from_slice(&ALG_ECDSA.to_be_bytes());
        t.extend_from_slice(&ALG_SHA256.to_be_bytes());
        t.extend_from_slice(&ECC_NIST_P256.to_be_bytes());
        t.extend_from_slice(&ALG_NULL.to_be_bytes());
        put_tpm2b(&mut t, &[7; 32]).unwrap();
        put_tpm2b(&mut t, &[9; 32]).unwrap();
        let mut b = Vec::new();
        put_tpm2b(&mut b, &t).unwrap();
        b
    }

    #[test]
    fn parses_an_ecc_public() {
        let p = Public::from_tpm2b(&ecc_public()).unwrap();
        assert_eq!(p.alg, ALG_ECC);
        assert_eq!(p.scheme, Scheme { scheme: ALG_ECDSA, hash: ALG_SHA256 });
        assert!(p.has(attr::FIXED_TPM | attr::RESTRICTED | attr::SIGN));
        assert_eq!(
            p.detail,
            KeyDetail::Ecc { curve: ECC_NIST_P256, kdf: ALG_NULL, x: vec![7; 32], y: vec![9; 32] }
        );
    }

    #[test]
    fn truncations_and_trailing_bytes_are_malformed() {
        let good = ecc_public();
        for n in 0..good.len() {
            let e = Public::from_tpm2b(&good[..n]).unwrap_err();
            assert_eq!(e.failure, Failure::Malformed, "prefix {n}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(Public::from_tpm2b(&long).unwrap_err().failure, Failure::Malformed);
    }

    #[test]
    fn random_and_mutated_inputs_never_panic() {
        let good = ecc_public();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for i in 0..20_000 {
            let input: Vec<u8> = if i % 2 == 0 {
                let n = (rng.next() % 160) as usize;
                (0..n).map(|_| rng.next() as u8).collect()
            } else {
                let mut m = good.clone();
                for _ in 0..(1 + rng.next() % 4) {
                    let at = (rng.next() as usize) % m.len();
                    m[at] = rng.next() as u8;
                }
                m.truncate((rng.next() as usize) % (m.len() + 1));
                m
            };
            let _ = Public::from_tpm2b(&input);
            let _ = Public::from_tpmt(&input);
            let _ = CertifyInfo::parse(&input);
            let _ = Signature::parse(&input);
            let _ = unwrap_tpm2b(&input, "x");
        }
    }

    #[test]
    fn reader_reports_truncation() {
        let mut r = Reader::new(&[0, 5, 1, 2]);
        assert_eq!(r.tpm2b("x").unwrap_err().failure, Failure::Malformed);
        let mut r = Reader::new(&[0xff; 3]);
        assert!(r.u32("x").is_err());
        assert_eq!(r.u16("x").unwrap(), 0xffff);
        assert_eq!(r.position(), 2);
        assert!(r.finish("x").is_err());
    }

    #[test]
    fn signature_kinds() {
        let mut s = Vec::new();
        s.extend_from_slice(&ALG_ECDSA.to_be_bytes());
        s.extend_from_slice(&ALG_SHA256.to_be_bytes());
        put_tpm2b(&mut s, &[1; 32]).unwrap();
        put_tpm2b(&mut s, &[2; 32]).unwrap();
        assert!(matches!(Signature::parse(&s).unwrap(), Signature::Ecdsa { hash: ALG_SHA256, .. }));
        let pss = [ALG_RSAPSS.to_be_bytes(), ALG_SHA256.to_be_bytes(), [0, 0]].concat();
        assert_eq!(Signature::parse(&pss).unwrap_err().failure, Failure::UnsupportedAlgorithm);
    }
}
