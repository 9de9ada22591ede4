//! `devid-agent run`: keep a certificate. Enroll when there is none (or it expired and the
//! evidence can be used again), renew at two thirds of the lifetime (with jitter), retry
//! failures with exponential backoff or as the server's `Retry-After` says, and stop
//! cleanly when asked.

use std::future::Future;
use std::time::Duration;

use devid_core::{Clock, Entropy, UnixTime};

use crate::enroll::{EnrollPlan, Outcome, RenewPlan, enroll, renew};
use crate::error::AgentError;
use crate::files::{self, Layout};
use crate::keys::pem_certificates;
use crate::schedule::{renew_at, retry_delay};

/// A long wait is cut into steps of at most this, and the wall clock read again after each
/// (a suspended device or a clock step must not delay the renewal).
pub const MAX_SLEEP: Duration = Duration::from_secs(600);

/// What `run` keeps going.
#[derive(Debug)]
pub struct RunConfig {
    /// The output directory.
    pub layout: Layout,
    /// How to enroll, when there is no certificate (or it expired). `None`: renewal only.
    pub enroll: Option<EnrollPlan>,
    /// How to renew.
    pub renew: RenewPlan,
}

/// The next thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Enroll now.
    Enroll,
    /// Renew now.
    Renew,
    /// Wait until this time, then look again.
    WaitUntil(UnixTime),
}

/// Decide the next step (pure): `current` is the certificate's (serial, notBefore,
/// notAfter) when there is one; `planned` the renewal time drawn for that serial.
pub fn next_step(
    now: UnixTime,
    current: Option<(UnixTime, UnixTime)>,
    planned: Option<UnixTime>,
    can_enroll: bool,
) -> Result<Step, AgentError> {
    match current {
        None if can_enroll => Ok(Step::Enroll),
        None => {
            Err(AgentError::usage("there is no certificate to renew; give --method and its flags to enroll"))
        }
        Some((_, not_after)) if now >= not_after => {
            if can_enroll {
                Ok(Step::Enroll)
            } else {
                Err(AgentError::usage(
                    "the certificate has expired and cannot be renewed; enroll again (a token is single-use)",
                ))
            }
        }
        Some(_) => match planned {
            Some(at) if now < at => Ok(Step::WaitUntil(at)),
            _ => Ok(Step::Renew),
        },
    }
}

/// Run until `shutdown` completes (SIGTERM, Ctrl-C) or a failure that retrying cannot
/// fix. `clock` and `rng` are injected (tests).
pub async fn run(
    cfg: &RunConfig,
    clock: &dyn Clock,
    rng: &dyn Entropy,
    shutdown: impl Future<Output = ()>,
    mut on_issued: impl FnMut(&Outcome),
) -> Result<(), AgentError> {
    tokio::pin!(shutdown);
    // The renewal time drawn for the current certificate (by serial), so the jitter is
    // drawn once per certificate.
    let mut planned: Option<(String, UnixTime)> = None;
    let mut attempt: u32 = 0;
    loop {
        let now = clock.now();
        let current = current_cert(&cfg.layout)?;
        if let Some((serial, nb, na)) = &current
            && planned.as_ref().is_none_or(|(s, _)| s != serial)
        {
            let at = renew_at(*nb, *na, rng);
            tracing::info!(serial = %serial, not_after = %na.to_rfc3339(), renew_at = %at.to_rfc3339(), "certificate loaded");
            planned = Some((serial.clone(), at));
        }
        let step = next_step(
            now,
            current.as_ref().map(|(_, nb, na)| (*nb, *na)),
            planned.as_ref().map(|(_, at)| *at),
            // Without a certificate any evidence may enroll; after expiry only evidence
            // that can be used again (a token is single-use).
            cfg.enroll.as_ref().is_some_and(|p| current.is_none() || p.evidence.is_reusable()),
        )?;
        let result = match step {
            Step::WaitUntil(at) => {
                let wait = Duration::from_secs((at.0 - now.0).max(0) as u64).min(MAX_SLEEP);
                if sleep_or_stop(wait, shutdown.as_mut()).await {
                    return Ok(());
                }
                continue;
            }
            Step::Enroll => match &cfg.enroll {
                Some(plan) => {
                    tracing::info!(method = plan.evidence.method(), "enrolling");
                    enroll(plan, &cfg.layout).await
                }
                None => return Err(AgentError::usage("no enrollment method given")),
            },
            Step::Renew => {
                tracing::info!("renewing");
                renew(&cfg.renew, &cfg.layout).await
            }
        };
        match result {
            Ok(out) => {
                attempt = 0;
                tracing::info!(serial = %out.serial, not_after = %out.not_after, "certificate issued");
                on_issued(&out);
            }
            // A refused enrollment will be refused again; a refused renewal may succeed
            // once an operator acts, and the current certificate is still good meanwhile.
            Err(e) if step == Step::Enroll && !e.is_retryable() => return Err(e),
            Err(e) => {
                let delay = retry_delay(attempt, e.retry_after, rng);
                attempt = attempt.saturating_add(1);
                tracing::warn!(error = %e, retry_in = %humantime::format_duration(delay), "attempt failed");
                if sleep_or_stop(delay, shutdown.as_mut()).await {
                    return Ok(());
                }
            }
        }
    }
}

/// Sleep for `d` unless `shutdown` completes first; true when it did.
async fn sleep_or_stop(d: Duration, shutdown: std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown => true,
    }
}

/// The current certificate's (serial, notBefore, notAfter), when there is one.
fn current_cert(layout: &Layout) -> Result<Option<(String, UnixTime, UnixTime)>, AgentError> {
    if !layout.has_certificate() {
        return Ok(None);
    }
    let pem = files::read_text(&layout.cert())?;
    let Some(der) = pem_certificates(&pem)?.into_iter().next() else {
        return Ok(None);
    };
    let info = files::cert_info(&der)?;
    Ok(Some((info.serial, info.not_before, info.not_after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps() {
        let (nb, na) = (UnixTime(1000), UnixTime(4000));
        assert_eq!(next_step(UnixTime(0), None, None, true).ok(), Some(Step::Enroll));
        assert!(next_step(UnixTime(0), None, None, false).is_err());
        assert_eq!(
            next_step(UnixTime(1500), Some((nb, na)), Some(UnixTime(3000)), false).ok(),
            Some(Step::WaitUntil(UnixTime(3000)))
        );
        assert_eq!(
            next_step(UnixTime(3000), Some((nb, na)), Some(UnixTime(3000)), false).ok(),
            Some(Step::Renew)
        );
        assert_eq!(
            next_step(UnixTime(4000), Some((nb, na)), Some(UnixTime(3000)), true).ok(),
            Some(Step::Enroll)
        );
        assert!(next_step(UnixTime(4000), Some((nb, na)), Some(UnixTime(3000)), false).is_err());
    }

    #[tokio::test]
    async fn sleeping_stops_at_shutdown() {
        let stop = std::future::ready(());
        tokio::pin!(stop);
        let t = std::time::Instant::now();
        assert!(sleep_or_stop(Duration::from_secs(60), stop.as_mut()).await);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
