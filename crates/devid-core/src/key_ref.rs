use std::fmt;
use std::str::FromStr;

/// Why a key reference could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key reference '{0}': expected 'soft:NAME' or 'pkcs11:token=LABEL;object=LABEL'")]
pub struct KeyRefError(pub String);

/// A reference to a key held by a key manager. The key itself never leaves it.
///
/// - `soft:NAME`: an encrypted software key named NAME in the key store directory;
/// - `pkcs11:token=TOKEN;object=LABEL`: a key pair on a PKCS#11 token, named after the
///   RFC 7512 PKCS#11 URI attributes `token` and `object` (percent-escapes are not used:
///   labels are restricted to `A–Z a–z 0–9 . _ -` and space).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyRef {
    /// A software key.
    Soft {
        /// The key's name.
        name: String,
    },
    /// A PKCS#11 key pair.
    Pkcs11 {
        /// The token label.
        token: String,
        /// The key object's label (CKA_LABEL), the same on the private and public object.
        object: String,
    },
}

fn label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ' '))
}

impl KeyRef {
    /// A software key reference; the name must be a valid label.
    pub fn soft(name: &str) -> Result<KeyRef, KeyRefError> {
        if label_ok(name) && !name.contains(' ') && !name.starts_with('.') {
            Ok(KeyRef::Soft { name: name.to_string() })
        } else {
            Err(KeyRefError(format!("soft:{name}")))
        }
    }

    /// The scheme: `soft` or `pkcs11`.
    pub fn scheme(&self) -> &'static str {
        match self {
            KeyRef::Soft { .. } => "soft",
            KeyRef::Pkcs11 { .. } => "pkcs11",
        }
    }
}

impl FromStr for KeyRef {
    type Err = KeyRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || KeyRefError(s.to_string());
        if let Some(name) = s.strip_prefix("soft:") {
            return KeyRef::soft(name).map_err(|_| err());
        }
        if let Some(rest) = s.strip_prefix("pkcs11:") {
            let (mut token, mut object) = (None, None);
            for part in rest.split(';') {
                let (k, v) = part.split_once('=').ok_or_else(err)?;
                if !label_ok(v) {
                    return Err(err());
                }
                match k {
                    "token" if token.is_none() => token = Some(v.to_string()),
                    "object" if object.is_none() => object = Some(v.to_string()),
                    _ => return Err(err()),
                }
            }
            return match (token, object) {
                (Some(token), Some(object)) => Ok(KeyRef::Pkcs11 { token, object }),
                _ => Err(err()),
            };
        }
        Err(err())
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::Soft { name } => write!(f, "soft:{name}"),
            KeyRef::Pkcs11 { token, object } => write!(f, "pkcs11:token={token};object={object}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        for s in ["soft:issuing-ca", "pkcs11:token=devid;object=issuing ca"] {
            let k: KeyRef = s.parse().expect("valid");
            assert_eq!(k.to_string(), s);
        }
        let k: KeyRef = "pkcs11:object=o;token=t".parse().expect("either order");
        assert_eq!(k, KeyRef::Pkcs11 { token: "t".into(), object: "o".into() });
    }

    #[test]
    fn rejects() {
        for s in [
            "",
            "soft:",
            "soft:../x",
            "soft:.hidden",
            "soft:a b",
            "hsm:x",
            "pkcs11:token=t",
            "pkcs11:token=t;object=o;token=u",
            "pkcs11:token=t;object=a/b",
            "pkcs11:slot=1;object=o",
        ] {
            assert!(s.parse::<KeyRef>().is_err(), "{s} should be rejected");
        }
    }
}
