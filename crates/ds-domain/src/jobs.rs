//! The embedding job lifecycle, as policy: what a worker does with the jobs it claimed, and what a
//! failure costs a job. The SQL is the store's (`ds-store-pg/src/jobs.rs`); the server only spawns the
//! workers.
//!
//! - A worker claims open jobs with a lease (no transaction is held across the provider call).
//! - It embeds their texts in one call. When the call fails for some inputs (the provider refused them,
//!   or answered something unusable), the batch is split in halves until the failing texts are found:
//!   the others are stored, and only the failing jobs are charged an attempt.
//! - A charged job waits an exponential backoff before its next attempt; after `max_attempts` it is
//!   parked: kept, counted, listed and re-queued by `datastorage jobs`.
//! - When the provider is unavailable (down, overloaded, circuit open), nothing is charged: the leases
//!   are released and the worker backs off as a whole.

use crate::digest::Sha256Digest;
use std::time::Duration;

/// How failures are charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPolicy {
    /// Attempts before a job is parked (at least 1).
    pub max_attempts: u32,
    /// The wait after the first failed attempt; it doubles with each further one.
    pub backoff_base: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
    /// How long a claim holds its jobs (longer than a provider call can take).
    pub lease: Duration,
}

impl Default for JobPolicy {
    fn default() -> Self {
        JobPolicy {
            max_attempts: 10,
            backoff_base: Duration::from_secs(30),
            backoff_max: Duration::from_secs(3600),
            lease: Duration::from_secs(60),
        }
    }
}

/// What becomes of a job whose attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Tried again after this wait.
    RetryIn(Duration),
    /// Not tried again until someone re-queues it.
    Park,
}

impl JobPolicy {
    /// The verdict for a job that has now failed `attempts` times in all.
    pub fn after_failure(&self, attempts: u32) -> Verdict {
        if attempts >= self.max_attempts.max(1) {
            return Verdict::Park;
        }
        let doublings = attempts.saturating_sub(1).min(31);
        let wait = self
            .backoff_base
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.backoff_max);
        Verdict::RetryIn(wait.min(self.backoff_max))
    }
}

/// A job a worker holds (under its lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedJob {
    pub digest: Sha256Digest,
    pub text: String,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// A failed attempt to record: the job, the error, and the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedJob {
    pub digest: Sha256Digest,
    pub error: String,
    pub verdict: Verdict,
}

/// A job as `datastorage jobs list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInfo {
    pub digest: Sha256Digest,
    pub model: String,
    pub attempts: u32,
    /// `open`, `parked` or `done`.
    pub state: &'static str,
    /// RFC 3339.
    pub created_at: String,
    pub next_attempt_at: String,
    pub last_error: Option<String>,
    /// The text's first 80 characters.
    pub text: String,
}

/// The parts a failing batch is split into to find its failing inputs: halves, the first one larger.
pub fn halves<T>(items: &[T]) -> (&[T], &[T]) {
    items.split_at(items.len().div_ceil(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_parks_after_the_last_attempt() {
        let p = JobPolicy {
            max_attempts: 5,
            backoff_base: Duration::from_secs(30),
            backoff_max: Duration::from_secs(100),
            lease: Duration::from_secs(60),
        };
        assert_eq!(
            p.after_failure(1),
            Verdict::RetryIn(Duration::from_secs(30))
        );
        assert_eq!(
            p.after_failure(2),
            Verdict::RetryIn(Duration::from_secs(60))
        );
        assert_eq!(
            p.after_failure(3),
            Verdict::RetryIn(Duration::from_secs(100))
        );
        assert_eq!(
            p.after_failure(4),
            Verdict::RetryIn(Duration::from_secs(100))
        );
        assert_eq!(p.after_failure(5), Verdict::Park);
        assert_eq!(p.after_failure(50), Verdict::Park);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let p = JobPolicy {
            max_attempts: u32::MAX,
            ..JobPolicy::default()
        };
        assert_eq!(p.after_failure(40), Verdict::RetryIn(p.backoff_max));
    }

    #[test]
    fn one_attempt_parks_at_the_first_failure() {
        let p = JobPolicy {
            max_attempts: 1,
            ..JobPolicy::default()
        };
        assert_eq!(p.after_failure(1), Verdict::Park);
    }

    #[test]
    fn halves_cover_the_batch() {
        let v = [1, 2, 3, 4, 5];
        assert_eq!(halves(&v), (&v[..3], &v[3..]));
        assert_eq!(halves(&v[..1]), (&v[..1], &v[1..1]));
    }
}
