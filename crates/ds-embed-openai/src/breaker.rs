//! A circuit breaker: after `threshold` consecutive failed calls the circuit opens and calls fail at once
//! for `cooldown` (or longer when the provider asked for it with `Retry-After`); then one trial call is let
//! through (half-open): its success closes the circuit, its failure opens it again.
//!
//! Pure state: the caller passes the time, so the rules are tested without clocks or sleeps.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// A trial call is in flight; other calls are refused until it ends.
    HalfOpen,
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    consecutive_failures: u32,
    state: State,
}

/// Whether a call may go to the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Allowed,
    /// Refused: the circuit is open until then (or a trial call is running).
    Refused {
        retry_at: Option<Instant>,
    },
}

impl Breaker {
    /// `threshold` 0 disables the breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold,
            cooldown,
            consecutive_failures: 0,
            state: State::Closed,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn try_acquire(&mut self, now: Instant) -> Permit {
        match self.state {
            State::Closed => Permit::Allowed,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                Permit::Allowed
            }
            State::Open { until } => Permit::Refused {
                retry_at: Some(until),
            },
            State::HalfOpen => Permit::Refused { retry_at: None },
        }
    }

    pub fn on_success(&mut self) {
        self.consecutive_failures = 0;
        self.state = State::Closed;
    }

    /// A failed call; `retry_after` is the provider's own request to wait, if it made one.
    pub fn on_failure(&mut self, now: Instant, retry_after: Option<Duration>) {
        if self.threshold == 0 {
            return;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.state == State::HalfOpen || self.consecutive_failures >= self.threshold {
            let wait = retry_after.map_or(self.cooldown, |r| r.max(self.cooldown));
            self.state = State::Open { until: now + wait };
        }
    }

    /// A call that ended without telling anything about the provider (e.g. the caller went away):
    /// a half-open trial gives its place to the next call.
    pub fn on_abandoned(&mut self) {
        if self.state == State::HalfOpen {
            self.state = State::Open {
                until: Instant::now(),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_consecutive_failures_and_half_opens_after_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            assert_eq!(b.try_acquire(t0), Permit::Allowed);
            b.on_failure(t0, None);
        }
        assert_eq!(b.state(), State::Closed);
        b.on_failure(t0, None);
        let until = t0 + Duration::from_secs(10);
        assert_eq!(b.state(), State::Open { until });
        assert_eq!(
            b.try_acquire(t0 + Duration::from_secs(9)),
            Permit::Refused {
                retry_at: Some(until)
            }
        );
        // Cool-down over: exactly one trial call.
        assert_eq!(b.try_acquire(until), Permit::Allowed);
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.try_acquire(until), Permit::Refused { retry_at: None });
        b.on_success();
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.try_acquire(until), Permit::Allowed);
    }

    #[test]
    fn a_failed_trial_reopens_at_once_and_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(5));
        b.on_failure(t0, None);
        b.on_success();
        b.on_failure(t0, None);
        assert_eq!(
            b.state(),
            State::Closed,
            "the count restarted after a success"
        );
        b.on_failure(t0, None);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(b.try_acquire(t1), Permit::Allowed);
        b.on_failure(t1, None);
        assert_eq!(
            b.state(),
            State::Open {
                until: t1 + Duration::from_secs(5)
            }
        );
    }

    #[test]
    fn retry_after_longer_than_the_cooldown_is_honoured() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, Duration::from_secs(5));
        b.on_failure(t0, Some(Duration::from_secs(60)));
        assert_eq!(
            b.state(),
            State::Open {
                until: t0 + Duration::from_secs(60)
            }
        );
    }

    #[test]
    fn threshold_zero_never_opens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(0, Duration::from_secs(5));
        for _ in 0..100 {
            b.on_failure(t0, None);
        }
        assert_eq!(b.try_acquire(t0), Permit::Allowed);
    }
}
