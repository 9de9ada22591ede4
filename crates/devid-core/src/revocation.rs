use std::fmt;
use std::str::FromStr;

/// A revocation reason, RFC 5280 §5.3.1:
///
/// ```text
/// CRLReason ::= ENUMERATED {
///      unspecified             (0),
///      keyCompromise           (1),
///      cACompromise            (2),
///      affiliationChanged      (3),
///      superseded              (4),
///      cessationOfOperation    (5),
///      certificateHold         (6),
///           -- value 7 is not used
///      removeFromCRL           (8),
///      privilegeWithdrawn      (9),
///      aACompromise           (10) }
/// ```
///
/// `certificateHold` and `removeFromCRL` are not offered: devid's quarantine is a device
/// state, and a revocation is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    /// unspecified (0).
    Unspecified,
    /// keyCompromise (1).
    KeyCompromise,
    /// cACompromise (2).
    CaCompromise,
    /// affiliationChanged (3).
    AffiliationChanged,
    /// superseded (4).
    Superseded,
    /// cessationOfOperation (5).
    CessationOfOperation,
    /// privilegeWithdrawn (9).
    PrivilegeWithdrawn,
    /// aACompromise (10).
    AaCompromise,
}

const ALL: [(RevocationReason, &str, u8); 8] = [
    (RevocationReason::Unspecified, "unspecified", 0),
    (RevocationReason::KeyCompromise, "keyCompromise", 1),
    (RevocationReason::CaCompromise, "cACompromise", 2),
    (RevocationReason::AffiliationChanged, "affiliationChanged", 3),
    (RevocationReason::Superseded, "superseded", 4),
    (RevocationReason::CessationOfOperation, "cessationOfOperation", 5),
    (RevocationReason::PrivilegeWithdrawn, "privilegeWithdrawn", 9),
    (RevocationReason::AaCompromise, "aACompromise", 10),
];

impl RevocationReason {
    /// The CRLReason code.
    pub fn code(self) -> u8 {
        ALL.iter().find(|(r, _, _)| *r == self).map(|e| e.2).unwrap_or(0)
    }
    /// The reason for a CRLReason code, if devid offers it.
    pub fn from_code(code: u8) -> Option<Self> {
        ALL.iter().find(|e| e.2 == code).map(|e| e.0)
    }
    /// The RFC 5280 name, e.g. `keyCompromise`.
    pub fn name(self) -> &'static str {
        ALL.iter().find(|(r, _, _)| *r == self).map(|e| e.1).unwrap_or("unspecified")
    }
}

impl FromStr for RevocationReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL.iter().find(|e| e.1.eq_ignore_ascii_case(s)).map(|e| e.0).ok_or_else(|| {
            let names: Vec<&str> = ALL.iter().map(|e| e.1).collect();
            format!("unknown revocation reason '{s}'; one of: {}", names.join(", "))
        })
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for (r, name, code) in ALL {
            assert_eq!(r.code(), code);
            assert_eq!(RevocationReason::from_code(code), Some(r));
            assert_eq!(name.parse::<RevocationReason>(), Ok(r));
        }
        assert_eq!(RevocationReason::from_code(6), None);
        assert_eq!(RevocationReason::from_code(7), None);
        assert!("certificateHold".parse::<RevocationReason>().is_err());
    }
}
