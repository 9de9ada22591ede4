//! The SoftHSM2 token prepared by `tests/run.sh`.
//!
//! Tests that need a PKCS#11 token call [`token`]; it never skips: without a token the
//! test fails with the commands that create one.

use std::path::{Path, PathBuf};

/// A PKCS#11 token to test against: module path, token label and user PIN.
#[derive(Debug, Clone)]
pub struct HsmToken {
    /// The PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token label.
    pub token: String,
    /// The user PIN.
    pub pin: String,
}

impl HsmToken {
    /// A label unlikely to collide with any other test's: `prefix` and 8 random bytes in
    /// hex. Tests share one token, so each test uses its own object labels.
    pub fn unique_label(&self, prefix: &str) -> String {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("the OS random number generator failed");
        format!("{prefix}-{}", hex::encode(b))
    }
}

/// What to do when no token is configured; also used by benches that need one.
pub const MISSING_TOKEN_HELP: &str = "SoftHSM2 tests need a token; run `bash tests/run.sh` \
(which creates one), or install SoftHSM2 with `apt-get install -y softhsm2` and create one \
with `softhsm2-util --init-token --free --label devid-test --pin 1234 --so-pin 5678` under a \
private SOFTHSM2_CONF (a file with `directories.tokendir = <an empty directory>`), then export \
the four variables SOFTHSM2_CONF, DEVID_TEST_PKCS11_MODULE (e.g. \
/usr/lib/softhsm/libsofthsm2.so), DEVID_TEST_PKCS11_TOKEN (devid-test) and \
DEVID_TEST_PKCS11_PIN (1234)";

fn var(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!("{name} is not set. {MISSING_TOKEN_HELP}"),
    }
}

/// The SoftHSM2 token prepared by `tests/run.sh`, from the environment variables
/// `DEVID_TEST_PKCS11_MODULE`, `DEVID_TEST_PKCS11_TOKEN`, `DEVID_TEST_PKCS11_PIN` and
/// `SOFTHSM2_CONF` (read by SoftHSM2 itself).
///
/// # Panics
/// When a variable is missing, or the module or the SoftHSM2 configuration file does not
/// exist, with a message that says how to create a token.
pub fn token() -> HsmToken {
    let module = PathBuf::from(var("DEVID_TEST_PKCS11_MODULE"));
    let token = var("DEVID_TEST_PKCS11_TOKEN");
    let pin = var("DEVID_TEST_PKCS11_PIN");
    let conf = var("SOFTHSM2_CONF");
    if !module.is_file() {
        panic!(
            "DEVID_TEST_PKCS11_MODULE is set to {}, but that file does not exist \
             (is SoftHSM2 installed? `apt-get install -y softhsm2`; on Debian the module is \
             /usr/lib/softhsm/libsofthsm2.so). {MISSING_TOKEN_HELP}",
            module.display()
        );
    }
    if !Path::new(&conf).is_file() {
        panic!("SOFTHSM2_CONF is set to {conf}, but that file does not exist. {MISSING_TOKEN_HELP}");
    }
    HsmToken { module, token, pin }
}
