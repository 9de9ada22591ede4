//! Core types shared by every devid crate. No I/O lives here, except the two injected
//! sources of the outside world: [`Clock`] (time) and [`Entropy`] (randomness).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod clock;
mod error;
mod ids;
mod key_ref;
mod revocation;

pub use clock::{Clock, Entropy, FixedClock, OsEntropy, SystemClock, UnixTime, Validity};
pub use error::ErrorKind;
pub use ids::{CaId, DeviceId, IdError, Serial};
pub use key_ref::{KeyRef, KeyRefError};
pub use revocation::RevocationReason;
