//! The HTTP transport under async-openai: one tower service that sends a request, retries it on 429,
//! 5xx, timeouts and connection failures with exponential backoff and full jitter, honours
//! `Retry-After` (seconds or HTTP date), and keeps the whole call within a time budget.
//!
//! It replaces async-openai's default retry layer (fixed backoff, no jitter, no budget, `Retry-After`
//! unbounded). When it gives up on a retryable failure it returns a [`TransportError`] (boxed in
//! `OpenAIError::Boxed`) that keeps the failure's kind and the provider's `Retry-After`, which the
//! circuit breaker needs; any other answer (success, or a 4xx the provider meant) goes back to
//! async-openai as it came.

use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use rand::Rng;
use reqwest::{Response, StatusCode, header};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

/// Retry settings of one provider call.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Additional attempts after the first (0 disables retries).
    pub max_retries: u32,
    /// The first backoff ceiling; each retry doubles it.
    pub base_delay: Duration,
    /// The largest backoff ceiling.
    pub max_delay: Duration,
    /// The whole call (attempts and waits) ends by then; a `Retry-After` beyond it ends the call at once.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            budget: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: a uniform wait in `[0, min(max_delay, base_delay * 2^retry)]`.
    pub fn backoff(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry))
            .min(self.max_delay);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }
}

/// Why an attempt failed, as counted in `datastorage_embedding_provider_errors_total{kind}` (the
/// metric's label type).
pub use ds_metrics::labels::ProviderFailure as FailureKind;

/// A call that still failed after its retries.
#[derive(Debug, thiserror::Error)]
#[error("{detail} (after {attempts} attempt(s))")]
pub struct TransportError {
    pub kind: FailureKind,
    /// The HTTP status of a refusal (a 4xx other than 408/429), which is not retried.
    pub status: Option<u16>,
    /// What the provider asked for with `Retry-After`, if it did.
    pub retry_after: Option<Duration>,
    pub attempts: u32,
    pub detail: String,
}

pub(crate) fn count_failure(kind: FailureKind) {
    ds_metrics::EMBEDDING_PROVIDER_ERRORS
        .with((crate::OPENAI, kind))
        .increment(1);
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[derive(Clone)]
pub(crate) struct RetryingTransport {
    pub(crate) http: reqwest::Client,
    pub(crate) policy: RetryPolicy,
}

enum Attempt {
    Done(Result<Response, OpenAIError>),
    Retry {
        kind: FailureKind,
        retry_after: Option<Duration>,
        detail: String,
    },
}

impl RetryingTransport {
    async fn attempt(&self, request: &HttpRequestFactory, remaining: Duration) -> Attempt {
        let built = match request.build().await {
            Ok(r) => r,
            Err(e) => return Attempt::Done(Err(e)),
        };
        match tokio::time::timeout(remaining, self.http.execute(built)).await {
            Err(_) => Attempt::Retry {
                kind: FailureKind::Timeout,
                retry_after: None,
                detail: format!("no answer within the remaining budget of {remaining:?}"),
            },
            Ok(Err(e)) if e.is_timeout() => Attempt::Retry {
                kind: FailureKind::Timeout,
                retry_after: None,
                detail: "the provider did not answer in time".into(),
            },
            Ok(Err(e)) if e.is_connect() => Attempt::Retry {
                kind: FailureKind::Connect,
                retry_after: None,
                detail: "cannot connect to the provider".into(),
            },
            Ok(Err(e)) => Attempt::Done(Err(OpenAIError::Reqwest(e))),
            Ok(Ok(response)) => {
                let status = response.status();
                if status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status.is_server_error()
                {
                    let retry_after = response
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, SystemTime::now()));
                    let kind = match status {
                        StatusCode::TOO_MANY_REQUESTS => FailureKind::RateLimited,
                        StatusCode::REQUEST_TIMEOUT => FailureKind::Timeout,
                        _ => FailureKind::ServerError,
                    };
                    Attempt::Retry {
                        kind,
                        retry_after,
                        detail: format!("the provider answered {status}"),
                    }
                } else if status.is_client_error() {
                    // A refusal: not retried, and it says nothing about the provider's health. The
                    // provider's own message (bounded) says why.
                    count_failure(FailureKind::ClientError);
                    let body = response.text().await.unwrap_or_default();
                    let message: String = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                        .unwrap_or(body)
                        .chars()
                        .take(300)
                        .collect();
                    Attempt::Done(Err(OpenAIError::Boxed(Box::new(TransportError {
                        kind: FailureKind::ClientError,
                        status: Some(status.as_u16()),
                        retry_after: None,
                        attempts: 1,
                        detail: format!("the provider refused the request ({status}): {message}"),
                    }))))
                } else {
                    Attempt::Done(Ok(response))
                }
            }
        }
    }

    async fn send(self, request: HttpRequestFactory) -> Result<Response, OpenAIError> {
        let deadline = Instant::now() + self.policy.budget;
        let mut retries = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let (kind, retry_after, detail) = match self.attempt(&request, remaining).await {
                Attempt::Done(result) => return result,
                Attempt::Retry {
                    kind,
                    retry_after,
                    detail,
                } => (kind, retry_after, detail),
            };
            count_failure(kind);
            let give_up = |detail: String| {
                Err(OpenAIError::Boxed(Box::new(TransportError {
                    kind,
                    status: None,
                    retry_after,
                    attempts: retries + 1,
                    detail,
                })))
            };
            if retries >= self.policy.max_retries {
                return give_up(detail);
            }
            // Never sooner than the provider asked; never past the budget.
            let delay =
                retry_after.unwrap_or_else(|| self.policy.backoff(retries, &mut rand::rng()));
            if Instant::now() + delay >= deadline {
                return give_up(format!(
                    "{detail}; the next attempt (in {delay:?}) would end after the call's budget of {:?}",
                    self.policy.budget
                ));
            }
            retries += 1;
            ds_metrics::EMBEDDING_PROVIDER_RETRIES
                .with((crate::OPENAI,))
                .increment(1);
            tracing::debug!(
                kind = kind.as_str(),
                retry = retries,
                delay_ms = delay.as_millis() as u64,
                "retrying the embedding provider"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

type SendFuture = Pin<Box<dyn Future<Output = Result<Response, OpenAIError>> + Send + 'static>>;

impl tower::Service<HttpRequestFactory> for RetryingTransport {
    type Response = Response;
    type Error = OpenAIError;
    type Future = SendFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequestFactory) -> Self::Future {
        Box::pin(self.clone().send(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_within_a_doubling_capped_ceiling() {
        let p = RetryPolicy {
            max_retries: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            budget: Duration::from_secs(60),
        };
        let mut rng = rand::rng();
        for (retry, ceiling) in [
            (0, 100),
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1000),
            (30, 1000),
        ] {
            let samples: Vec<Duration> = (0..200).map(|_| p.backoff(retry, &mut rng)).collect();
            assert!(samples.iter().all(|d| *d <= Duration::from_millis(ceiling)));
            // Jitter: not every caller waits the same time.
            assert!(samples.iter().any(|d| *d != samples[0]), "retry {retry}");
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_784_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }
}
