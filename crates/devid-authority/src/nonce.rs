//! Stateless enrollment challenges (PROTOCOL.md §1): a nonce that carries its own expiry
//! and is authenticated by the service, so that making one writes nothing to the store and
//! redeeming one needs no lookup first.
//!
//! The 32 octets of a nonce:
//!
//! ```text
//! random (12) || expires_at (4, seconds since the epoch, big-endian) || tag (16)
//! tag = HMAC-SHA256(K, "devid-challenge-v1" || 0x00 || random || expires_at
//!                      || group || 0x00 || method)[..16]
//! ```
//!
//! `K` is 256 random bits shared by every node (sealed by the key manager in the store,
//! [`devid_store::Store::service_secret`]). A nonce is accepted only for the group and the
//! method it was made for, until its expiry; it stays single-use because step 4 inserts its
//! hash into `challenges`, unique, in the intent's transaction (the row is purged an hour
//! after the nonce expires, when no one can present it any more). 96 random bits keep
//! nonces distinct (a collision is expected after about 2^48 of them), and a forged nonce
//! has one chance in 2^128 of carrying the right 128-bit tag.
//!
//! The TPM method keeps its challenges in the store, since they carry state between the two
//! requests (the credential made for the AK).

use aws_lc_rs::hmac;
use devid_core::UnixTime;

use crate::attested::NONCE_LEN;

const RANDOM_LEN: usize = 12;
const EXPIRY_LEN: usize = 4;
const TAG_LEN: usize = NONCE_LEN - RANDOM_LEN - EXPIRY_LEN;
const LABEL: &[u8] = b"devid-challenge-v1\0";

/// The name of the key's row in `service_secrets`, also the context it is sealed under.
pub(crate) const SECRET_NAME: &str = "challenge-key";

/// The key that authenticates stateless challenges.
pub(crate) struct ChallengeKey(hmac::Key);

impl std::fmt::Debug for ChallengeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChallengeKey(..redacted..)")
    }
}

impl ChallengeKey {
    /// A key from its 32 octets.
    pub(crate) fn new(secret: &[u8]) -> ChallengeKey {
        ChallengeKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    fn tag(&self, head: &[u8], group: &str, method: &str) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(LABEL);
        ctx.update(head);
        ctx.update(group.as_bytes());
        ctx.update(b"\0");
        ctx.update(method.as_bytes());
        ctx.sign()
    }

    /// A nonce for `group` and `method` that expires at `expires_at`, from 12 random octets.
    /// `None` if the expiry does not fit in 32 bits (after 2106).
    pub(crate) fn seal(
        &self,
        random: &[u8; RANDOM_LEN],
        expires_at: UnixTime,
        group: &str,
        method: &str,
    ) -> Option<[u8; NONCE_LEN]> {
        let expiry = u32::try_from(expires_at.0).ok()?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..RANDOM_LEN].copy_from_slice(random);
        nonce[RANDOM_LEN..RANDOM_LEN + EXPIRY_LEN].copy_from_slice(&expiry.to_be_bytes());
        let tag = self.tag(&nonce[..RANDOM_LEN + EXPIRY_LEN], group, method);
        nonce[RANDOM_LEN + EXPIRY_LEN..].copy_from_slice(&tag.as_ref()[..TAG_LEN]);
        Some(nonce)
    }

    /// The expiry of a nonce this key made for `group` and `method`; `None` for any other
    /// nonce (another key's, another group's or method's, a stored challenge's, altered).
    /// The tag is compared in constant time.
    pub(crate) fn open(&self, nonce: &[u8], group: &str, method: &str) -> Option<UnixTime> {
        if nonce.len() != NONCE_LEN {
            return None;
        }
        let (head, tag) = nonce.split_at(RANDOM_LEN + EXPIRY_LEN);
        let expected = self.tag(head, group, method);
        aws_lc_rs::constant_time::verify_slices_are_equal(&expected.as_ref()[..TAG_LEN], tag).ok()?;
        let mut expiry = [0u8; EXPIRY_LEN];
        expiry.copy_from_slice(&head[RANDOM_LEN..]);
        Some(UnixTime(i64::from(u32::from_be_bytes(expiry))))
    }
}

/// Random octets for [`ChallengeKey::seal`].
pub(crate) fn random(rng: &dyn devid_core::Entropy) -> [u8; RANDOM_LEN] {
    let mut r = [0u8; RANDOM_LEN];
    rng.fill(&mut r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_opens_only_for_its_key_group_and_method_unaltered() {
        let key = ChallengeKey::new(&[7; 32]);
        let at = UnixTime(1_800_000_000);
        let n = key.seal(&[1; 12], at, "line-7", "x509").unwrap();
        assert_eq!(key.open(&n, "line-7", "x509"), Some(at));
        assert_eq!(key.open(&n, "line-8", "x509"), None, "another group");
        assert_eq!(key.open(&n, "line-7", "symmetric"), None, "another method");
        // The separator keeps group and method apart: ("line-7x", "509") is not ("line-7", "x509").
        assert_eq!(key.open(&n, "line-7x", "509"), None);
        assert_eq!(ChallengeKey::new(&[8; 32]).open(&n, "line-7", "x509"), None, "another key");
        for i in 0..NONCE_LEN {
            let mut altered = n;
            altered[i] ^= 0x01;
            assert_eq!(key.open(&altered, "line-7", "x509"), None, "octet {i} altered");
        }
        assert_eq!(key.open(&n[..31], "line-7", "x509"), None, "too short");
        assert_eq!(key.open(&[0; 32], "line-7", "x509"), None, "a random (stored) nonce");
        // Different random octets, different nonces; the expiry is in clear.
        let m = key.seal(&[2; 12], at, "line-7", "x509").unwrap();
        assert_ne!(m, n);
        assert_eq!(&n[12..16], &1_800_000_000u32.to_be_bytes());
    }

    #[test]
    fn an_expiry_past_2106_is_refused() {
        let key = ChallengeKey::new(&[7; 32]);
        assert!(key.seal(&[1; 12], UnixTime(i64::from(u32::MAX) + 1), "g", "x509").is_none());
        assert!(key.seal(&[1; 12], UnixTime(-1), "g", "x509").is_none());
    }
}
