//! Kubernetes authentication and authorization (contract §6), in-process with the kube client:
//!
//! - [`KubeAuthenticator::authenticate`]: `authentication.k8s.io/v1` TokenReview, with the configured
//!   audiences; an identity only when the API server says `authenticated: true` (and, with audiences,
//!   names one of ours).
//! - [`KubeAuthenticator::authorize`]: `authorization.k8s.io/v1` SubjectAccessReview (verb `create` for
//!   writes, `get` for reads, on `auditrecords` of our API group; non-resource URL `/metrics` verb `get`
//!   for scrapes), so cluster RBAC decides; or a static allow-list of users and groups.
//! - [`CachedAuthenticator`] in front: decisions cached briefly, keyed by SHA-256 of the token.
//!
//! The token is sent to the API server and nowhere else: not logged, not in errors, not in metrics.

mod cache;

pub use cache::{CacheSettings, CachedAuthenticator};

use async_trait::async_trait;
use ds_domain::ports::{Access, AuthError, Authenticator, Identity};
use ds_metrics::labels::Review;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use std::path::Path;
use std::time::Duration;

/// The API group and resource that SubjectAccessReviews ask about (RBAC rules name them).
pub const API_GROUP: &str = "audit.kubernaut.ai";
pub const RESOURCE: &str = "auditrecords";
/// The resource of legal holds (contract §9), in the same API group.
pub const HOLDS_RESOURCE: &str = "legalholds";
/// The non-resource URL a scrape is authorized for, with verb [`METRICS_VERB`].
pub const METRICS_PATH: &str = "/metrics";
pub const METRICS_VERB: &str = "get";

/// Everything this crate asks of the Kubernetes API, as RBAC sees it: (API group, resource, verb).
/// The service's ClusterRole in deploy/rbac grants exactly these (a test compares them).
pub const API_CALLS: &[(&str, &str, &str)] = &[
    (
        <TokenReview as k8s_openapi::Resource>::GROUP,
        <TokenReview as k8s_openapi::Resource>::URL_PATH_SEGMENT,
        "create",
    ),
    (
        <SubjectAccessReview as k8s_openapi::Resource>::GROUP,
        <SubjectAccessReview as k8s_openapi::Resource>::URL_PATH_SEGMENT,
        "create",
    ),
];

/// The resource and verb a SubjectAccessReview asks about for `access` (`None`: the non-resource
/// URL of the metrics).
pub fn resource_verb(access: Access) -> Option<(&'static str, &'static str)> {
    match access {
        Access::Write => Some((RESOURCE, "create")),
        Access::Read => Some((RESOURCE, "get")),
        Access::HoldCreate => Some((HOLDS_RESOURCE, "create")),
        Access::HoldRelease => Some((HOLDS_RESOURCE, "delete")),
        Access::HoldList => Some((HOLDS_RESOURCE, "list")),
        Access::Metrics => None,
    }
}

/// How access is decided once the caller is known.
#[derive(Debug, Clone)]
pub enum Authorization {
    /// Ask the API server (cluster RBAC decides).
    SubjectAccessReview,
    /// Static lists; an entry is a username (`system:serviceaccount:ns:name`) or `group:<name>`.
    AllowList {
        writers: Vec<String>,
        readers: Vec<String>,
        metrics: Vec<String>,
        /// Who may place, release and list legal holds.
        holders: Vec<String>,
    },
}

/// Errors of building the client.
#[derive(Debug, thiserror::Error)]
pub enum KubeAuthError {
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("cannot find the Kubernetes API (in-cluster or $KUBECONFIG): {0}")]
    Infer(String),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(String),
}

/// The adapter.
#[derive(Clone)]
pub struct KubeAuthenticator {
    client: kube::Client,
    /// Bounds each review, kube's own retries of 429/503 included.
    timeout: Duration,
    audiences: Vec<String>,
    authorization: Authorization,
    /// Reviews in flight at once: a flood of fresh tokens cannot become a flood of reviews.
    reviews: std::sync::Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for KubeAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeAuthenticator")
            .field("audiences", &self.audiences)
            .field("authorization", &self.authorization)
            .finish_non_exhaustive()
    }
}

impl KubeAuthenticator {
    /// A client from `kubeconfig` when given, else inferred (in-cluster service account, then
    /// `$KUBECONFIG`). `timeout` bounds each review (waiting for one of the `max_concurrent` review
    /// slots, connect and read).
    pub async fn connect(
        kubeconfig: Option<&Path>,
        timeout: Duration,
        audiences: Vec<String>,
        authorization: Authorization,
        max_concurrent: usize,
    ) -> Result<Self, KubeAuthError> {
        let mut config = match kubeconfig {
            Some(path) => {
                let bad = |reason: String| KubeAuthError::Kubeconfig {
                    path: path.display().to_string(),
                    reason,
                };
                let kc =
                    kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
                kube::Config::from_custom_kubeconfig(
                    kc,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await
                .map_err(|e| bad(e.to_string()))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| KubeAuthError::Infer(e.to_string()))?,
        };
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        let client =
            kube::Client::try_from(config).map_err(|e| KubeAuthError::Client(e.to_string()))?;
        Ok(KubeAuthenticator {
            client,
            timeout,
            audiences,
            authorization,
            reviews: std::sync::Arc::new(tokio::sync::Semaphore::new(max_concurrent.max(1))),
        })
    }

    /// Runs one review within the budget, in one of the review slots: kube retries 429/503 with
    /// backoff on its own, which must not hold a request for minutes, and waiting for a slot counts
    /// against the same budget.
    async fn bounded<T>(
        &self,
        review: &str,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, AuthError> {
        let budget = self.timeout;
        let run = async {
            let _slot = self.reviews.acquire().await.map_err(|_| {
                AuthError::Unavailable(format!("{review}: the authenticator is closed"))
            })?;
            call.await.map_err(|e| unavailable(review, &e))
        };
        match tokio::time::timeout(budget, run).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(
                    budget_ms = budget.as_millis() as u64,
                    "{review}: no answer in time"
                );
                Err(AuthError::Unavailable(format!(
                    "{review}: the API server did not answer in time"
                )))
            }
        }
    }
}

/// An API server failure: never the caller's fault, never cached.
fn unavailable(review: &str, e: &kube::Error) -> AuthError {
    let reason = match e {
        kube::Error::Api(s) => format!("{review}: the API server answered {}", s.code),
        _ => format!("{review}: the API server did not answer"),
    };
    tracing::warn!(error = %e, "{reason}");
    AuthError::Unavailable(reason)
}

fn allowed_by(list: &[String], who: &Identity) -> bool {
    list.iter().any(|entry| match entry.strip_prefix("group:") {
        Some(group) => who.groups.iter().any(|g| g == group),
        None => *entry == who.username,
    })
}

#[async_trait]
impl Authenticator for KubeAuthenticator {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        ds_metrics::AUTH_REVIEWS
            .with((Review::TokenReview,))
            .increment(1);
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..Default::default()
        };
        let api = Api::<TokenReview>::all(self.client.clone());
        let answer = self
            .bounded("TokenReview", api.create(&PostParams::default(), &review))
            .await?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::Unauthenticated(
                "the bearer token is not valid (unknown, expired or revoked)".into(),
            ));
        }
        if !self.audiences.is_empty() {
            let granted = status.audiences.unwrap_or_default();
            if !granted.iter().any(|a| self.audiences.contains(a)) {
                return Err(AuthError::Unauthenticated(
                    "the bearer token is not for this service's audience".into(),
                ));
            }
        }
        let user = status.user.unwrap_or_default();
        match user.username {
            Some(username) if !username.is_empty() => Ok(Identity {
                username,
                groups: user.groups.unwrap_or_default(),
            }),
            _ => Err(AuthError::Unauthenticated(
                "the token review named no user".into(),
            )),
        }
    }

    async fn authorize(&self, who: &Identity, access: Access) -> Result<bool, AuthError> {
        match &self.authorization {
            Authorization::AllowList {
                writers,
                readers,
                metrics,
                holders,
            } => Ok(match access {
                Access::Write => allowed_by(writers, who),
                Access::Read => allowed_by(readers, who) || allowed_by(writers, who),
                Access::Metrics => allowed_by(metrics, who),
                Access::HoldCreate | Access::HoldRelease | Access::HoldList => {
                    allowed_by(holders, who)
                }
            }),
            Authorization::SubjectAccessReview => {
                ds_metrics::AUTH_REVIEWS
                    .with((Review::SubjectAccessReview,))
                    .increment(1);
                let mut spec = SubjectAccessReviewSpec {
                    user: Some(who.username.clone()),
                    groups: Some(who.groups.clone()),
                    ..Default::default()
                };
                match resource_verb(access) {
                    Some((resource, verb)) => {
                        spec.resource_attributes = Some(ResourceAttributes {
                            group: Some(API_GROUP.into()),
                            resource: Some(resource.into()),
                            verb: Some(verb.into()),
                            ..Default::default()
                        });
                    }
                    None => {
                        spec.non_resource_attributes = Some(NonResourceAttributes {
                            path: Some(METRICS_PATH.into()),
                            verb: Some(METRICS_VERB.into()),
                        });
                    }
                }
                let review = SubjectAccessReview {
                    spec,
                    ..Default::default()
                };
                let api = Api::<SubjectAccessReview>::all(self.client.clone());
                let answer = self
                    .bounded(
                        "SubjectAccessReview",
                        api.create(&PostParams::default(), &review),
                    )
                    .await?;
                Ok(answer
                    .status
                    .is_some_and(|s| s.allowed && s.denied != Some(true)))
            }
        }
    }
}
