//! Exponential backoff with jitter, and the attempt limit after which an event is
//! dead-lettered.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// When to retry a failed publish and when to give up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Delay before the first retry (default 500 ms).
    #[serde(with = "crate::duration_serde")]
    pub initial_backoff: Duration,
    /// Upper bound of the delay (default 5 minutes).
    #[serde(with = "crate::duration_serde")]
    pub max_backoff: Duration,
    /// Growth factor per attempt (default 2.0).
    pub multiplier: f64,
    /// Fraction of the delay that is randomised, 0.0 to 1.0 (default 0.2): the delay is
    /// drawn uniformly from `[d * (1 - jitter), d]`, so relays that failed together do not
    /// retry together.
    pub jitter: f64,
    /// Failed attempts after which an event is dead-lettered (default 10; at least 1).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.2,
            max_attempts: 10,
        }
    }
}

impl RetryPolicy {
    /// Delays growing from `initial` to at most `max` (default multiplier and jitter), and
    /// dead-lettering after `max_attempts` failures.
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = outbox_core::RetryPolicy::backoff(
    ///     Duration::from_millis(100),
    ///     Duration::from_secs(30),
    ///     20,
    /// );
    /// assert!(policy.validate().is_ok());
    /// assert_eq!(policy.multiplier, 2.0);
    /// ```
    pub fn backoff(initial: Duration, max: Duration, max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            initial_backoff: initial,
            max_backoff: max,
            max_attempts,
            ..RetryPolicy::default()
        }
    }

    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &str, why: &str| Err(crate::relay::invalid("retry policy", field, why));
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return bad("multiplier", "must be a finite number >= 1.0");
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad("jitter", "must be between 0.0 and 1.0");
        }
        if self.initial_backoff > self.max_backoff {
            return bad("initial_backoff", "must not exceed max_backoff");
        }
        Ok(())
    }

    /// The un-jittered delay after failed attempt number `attempt` (1-based).
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(63) as i32;
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exp);
        let capped = secs.min(self.max_backoff.as_secs_f64());
        Duration::try_from_secs_f64(capped).unwrap_or(self.max_backoff)
    }

    /// The delay after failed attempt number `attempt`, with jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        let cut = base.mul_f64(self.jitter * fastrand::f64());
        base.saturating_sub(cut)
    }

    /// Whether an event that has now failed `attempts` times is given up.
    pub fn exhausted(&self, attempts: u32) -> bool {
        attempts >= self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_caps() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.0,
            max_attempts: 5,
        };
        let d: Vec<u128> = (1..=6).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.base_delay(u32::MAX), Duration::from_secs(1));
        assert!(!p.exhausted(4));
        assert!(p.exhausted(5));
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let p = RetryPolicy {
            jitter: 0.5,
            ..RetryPolicy::default()
        };
        for _ in 0..1000 {
            let d = p.delay(3);
            assert!(d <= p.base_delay(3) && d >= p.base_delay(3) / 2, "{d:?}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let bad_jitter = RetryPolicy {
            jitter: 1.5,
            ..RetryPolicy::default()
        };
        let no_attempts = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        for (policy, field) in [(bad_jitter, "`jitter`"), (no_attempts, "`max_attempts`")] {
            let err = policy.validate().unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
