use std::fmt;

use crate::Entropy;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Device ids are 1–128 characters of `A–Z a–z 0–9 . _ : -`, starting with a letter or digit.
    #[error("device id must be 1-128 characters of A-Z a-z 0-9 . _ : - and start with a letter or digit")]
    DeviceId,
    /// Serial numbers are 1–20 bytes of hex, positive and non-zero (RFC 5280 §4.1.2.2).
    #[error("serial number must be 1-20 bytes of hex, positive and non-zero")]
    Serial,
    /// CA ids are 1–64 characters of `a–z 0–9 -`.
    #[error("CA id must be 1-64 characters of a-z 0-9 -")]
    CaId,
}

/// A device's identifier. The character set is restricted so that the id can be put into
/// a URI SAN, a subject CN and a file name without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct DeviceId(String);

impl DeviceId {
    /// Validate and wrap a device id.
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        let ok_len = !s.is_empty() && s.len() <= 128;
        let ok_first = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        let ok_chars = s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
        if ok_len && ok_first && ok_chars { Ok(DeviceId(s)) } else { Err(IdError::DeviceId) }
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DeviceId::new(s).map_err(serde::de::Error::custom)
    }
}

/// The identifier of a CA in the store (e.g. `root`, `issuing`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct CaId(String);

impl CaId {
    /// Validate and wrap a CA id.
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        if !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            Ok(CaId(s))
        } else {
            Err(IdError::CaId)
        }
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The value of each hex digit (either case); 0xff for any other byte.
const HEX_DIGIT: [u8; 256] = {
    let mut t = [0xff_u8; 256];
    let mut i = 0;
    while i < 16 {
        t[b"0123456789abcdef"[i] as usize] = i as u8;
        t[b"0123456789ABCDEF"[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Decode `2 × out.len()` hex digits into `out`; false if any is not a hex digit. A table
/// lookup per digit and one test at the end: a CRL build decodes a million serials, and
/// the `hex` crate's digit-by-digit decoding took 5.8 % of such a build's samples
/// (`bench/RESULTS.md`, eighteenth machine).
fn decode_hex(digits: &[u8], out: &mut [u8]) -> bool {
    if digits.len() != 2 * out.len() {
        return false;
    }
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (hi, lo) = (HEX_DIGIT[usize::from(pair[0])], HEX_DIGIT[usize::from(pair[1])]);
        bad |= hi | lo;
        *o = (hi << 4) | lo;
    }
    bad & 0xf0 == 0
}

/// A certificate serial number: the big-endian content octets of a positive DER INTEGER,
/// minimal (no redundant leading zero), at most 20 octets (RFC 5280 §4.1.2.2:
/// "Certificate users MUST be able to handle serialNumber values up to 20 octets").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// A fresh random serial of 159 bits: 20 octets whose top bit is clear (so the INTEGER
    /// is positive without a padding octet) and whose first octet is non-zero (so the
    /// encoding is exactly 20 octets). Issuers MUST use unpredictable serials
    /// (CA/Browser Forum BR §7.1: at least 64 bits from a CSPRNG).
    pub fn random(rng: &dyn Entropy) -> Serial {
        let mut b = [0u8; 20];
        loop {
            rng.fill(&mut b);
            b[0] &= 0x7f;
            if b[0] != 0 {
                return Serial(b.to_vec());
            }
        }
    }

    /// A serial for a certificate issued at `unix_ms` (milliseconds since the Unix epoch):
    /// 20 octets, the first 6 the time (big-endian, capped at 2^47 − 1 so the INTEGER stays
    /// positive without a padding octet, and a first octet of zero, before November 2004,
    /// raised to 1 so the encoding is exactly 20 octets), the other 14 (112 bits) from the
    /// CSPRNG. CA/Browser Forum BR §7.1 asks for "at least 64 bits of output from a CSPRNG"
    /// and non-sequential serials; RFC 5280 §4.1.2.2 for a positive integer of at most 20
    /// octets, unique per issuer (112 random bits per millisecond; the store's primary key
    /// refuses a repeat).
    ///
    /// Why the time first: the store indexes certificates by serial. Serials that grow with
    /// time are inserted at the right edge of that B-tree, into pages that are already in
    /// memory and already logged since the last checkpoint. Fully random serials put every
    /// insert on a random leaf: on a 10,000,000-certificate PostgreSQL store each issuance
    /// then read a cold page and wrote it whole into the WAL (1.2–1.4 full-page images per
    /// certificate, three times the WAL of a small store).
    pub fn timed(unix_ms: i64, rng: &dyn Entropy) -> Serial {
        let mut random = [0u8; Serial::TIMED_RANDOM];
        rng.fill(&mut random);
        Serial::timed_from(unix_ms, &random)
    }

    /// The random octets of a [`Serial::timed`].
    pub const TIMED_RANDOM: usize = 14;

    /// [`Serial::timed`] with its random octets drawn beforehand (a batch at a time).
    pub fn timed_from(unix_ms: i64, random: &[u8; Serial::TIMED_RANDOM]) -> Serial {
        const MAX_MS: u64 = (1 << 47) - 1;
        let mut b = [0u8; 20];
        let ms = u64::try_from(unix_ms).unwrap_or(0).min(MAX_MS);
        b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        b[0] = b[0].max(1);
        b[6..].copy_from_slice(random);
        Serial(b.to_vec())
    }

    /// Wrap big-endian bytes; leading zero octets are removed, then the value must be
    /// positive, non-zero and at most 20 octets.
    pub fn from_bytes(bytes: &[u8]) -> Result<Serial, IdError> {
        let first = bytes.iter().position(|&b| b != 0).ok_or(IdError::Serial)?;
        let v = &bytes[first..];
        // A positive INTEGER whose top bit is set needs a 0x00 pad octet in DER; the
        // content (without the pad) may then be 20 octets only if the pad is counted out.
        if v.len() > 20 || (v.len() == 20 && v[0] & 0x80 != 0) {
            return Err(IdError::Serial);
        }
        Ok(Serial(v.to_vec()))
    }

    /// Parse lowercase or uppercase hex, with optional `:` separators.
    pub fn from_hex(s: &str) -> Result<Serial, IdError> {
        // The common case (the store's own form: no separators, even length) decodes on the
        // stack: CRL builds parse a million of these.
        if !s.is_empty() && s.len() <= 42 && s.len().is_multiple_of(2) && !s.contains(':') {
            let mut buf = [0u8; 21];
            let n = s.len() / 2;
            if !decode_hex(s.as_bytes(), &mut buf[..n]) {
                return Err(IdError::Serial);
            }
            return Serial::from_bytes(&buf[..n]);
        }
        let clean: String = s.chars().filter(|c| *c != ':').collect();
        if clean.is_empty() || clean.len() > 42 {
            return Err(IdError::Serial);
        }
        let padded = if clean.len() % 2 == 1 { format!("0{clean}") } else { clean };
        let bytes = hex::decode(padded).map_err(|_| IdError::Serial)?;
        Serial::from_bytes(&bytes)
    }

    /// The big-endian magnitude octets.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lowercase hex of the magnitude, the form used in the store and the API.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(std::sync::atomic::AtomicU8);
    impl Entropy for Counter {
        fn fill(&self, buf: &mut [u8]) {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            buf.fill(n);
        }
    }

    #[test]
    fn device_ids() {
        assert!(DeviceId::new("sensor-0001").is_ok());
        assert!(DeviceId::new("a:b.c_d-e").is_ok());
        assert!(DeviceId::new("").is_err());
        assert!(DeviceId::new("-x").is_err());
        assert!(DeviceId::new("a b").is_err());
        assert!(DeviceId::new("a/b").is_err());
        assert!(DeviceId::new("x".repeat(129)).is_err());
        assert!(DeviceId::new("x".repeat(128)).is_ok());
    }

    #[test]
    fn random_serial_is_positive_20_octets_and_skips_zero_first_octet() {
        // First fill is all 0x00 (first octet zero: rejected), second is all 0x01.
        let rng = Counter(std::sync::atomic::AtomicU8::new(0));
        let s = Serial::random(&rng);
        assert_eq!(s.as_bytes().len(), 20);
        assert_eq!(s.as_bytes()[0], 0x01);
        // 0xff fills get their top bit cleared.
        let rng = Counter(std::sync::atomic::AtomicU8::new(0xff));
        let s = Serial::random(&rng);
        assert_eq!(s.as_bytes()[0], 0x7f);
    }

    #[test]
    fn timed_serials_lead_with_the_time_and_stay_positive_20_octets() {
        let rng = Counter(std::sync::atomic::AtomicU8::new(0xff));
        // 2026-12-06T00:00:00.123Z.
        let ms = 1_796_515_200_123_i64;
        let s = Serial::timed(ms, &rng);
        assert_eq!(s.as_bytes().len(), 20);
        assert_eq!(&s.as_bytes()[..6], &ms.to_be_bytes()[2..]);
        assert_eq!(&s.as_bytes()[6..], &[0xff; 14]);
        // Later issuance sorts after, whatever the random part (the store's text key is
        // lowercase hex of fixed length, so it sorts the same way).
        let zero = Counter(std::sync::atomic::AtomicU8::new(0));
        let later = Serial::timed(ms + 1, &zero);
        assert!(later > s && later.to_hex() > s.to_hex());
        // Out-of-range clocks: still positive and 20 octets.
        for t in [i64::MIN, -1, 0, 1, i64::MAX] {
            let s = Serial::timed(t, &rng);
            assert_eq!(s.as_bytes().len(), 20, "{t}");
            assert!(s.as_bytes()[0] >= 1 && s.as_bytes()[0] <= 0x7f, "{t}");
            assert_eq!(Serial::from_bytes(s.as_bytes()), Ok(s.clone()));
        }
        assert_eq!(Serial::timed(i64::MAX, &rng).as_bytes()[..6], [0x7f, 0xff, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn serial_hex_round_trip_and_limits() {
        let s = Serial::from_hex("00:0A:bc").expect("valid");
        assert_eq!(s.to_hex(), "0abc");
        assert_eq!(Serial::from_hex(&s.to_hex()), Ok(s));
        assert!(Serial::from_hex("00").is_err());
        assert!(Serial::from_hex("zz").is_err());
        // Every byte that is neither a hex digit nor the separator is refused, in either
        // place of a pair.
        for b in 0..=255u8 {
            let ok = b.is_ascii_hexdigit() || b == b':';
            for s in [[b'0', b'1', b'0', b], [b'0', b'1', b, b'0']] {
                let got = std::str::from_utf8(&s).ok().map(Serial::from_hex);
                if let Some(got) = got {
                    assert_eq!(got.is_ok(), ok, "{s:?}");
                }
            }
        }
        // Bytes from 0x80 up reach the decoder only inside a multi-byte character (a `&str`
        // is UTF-8), which the loop above cannot build from one byte: refused too.
        assert!(Serial::from_hex("01\u{e9}").is_err(), "two UTF-8 bytes where a digit pair goes");
        assert!(Serial::from_hex("\u{e9}01").is_err());
        let mixed = Serial::from_hex("7fAbCdEf0123456789aBcDeF0123456789abcdef").expect("mixed case");
        assert_eq!(mixed.to_hex(), "7fabcdef0123456789abcdef0123456789abcdef");
        assert!(Serial::from_hex(&"7f".repeat(20)).is_ok());
        assert!(Serial::from_hex(&"80".repeat(20)).is_err());
        assert!(Serial::from_hex(&"01".repeat(21)).is_err());
    }

    #[test]
    fn ca_ids() {
        assert!(CaId::new("issuing-2026").is_ok());
        assert!(CaId::new("Issuing").is_err());
        assert!(CaId::new("").is_err());
    }
}
