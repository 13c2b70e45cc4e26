//! The label types. Each is a closed set: an enum, or a value that can only come from code (a
//! `&'static str` the program holds) or from a bounded source (a route the router matched, an HTTP
//! status code). No request can create a series of its own.

use crate::Label;
use ds_domain::kind::Kind;
use metrics::SharedString;

/// Declares an enum label with its Prometheus values; `ALL` lists them (for series made at zero).
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident = $key:literal { $($variant:ident => $value:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as Prometheus shows it.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $value),+ }
            }
        }

        impl Label for $name {
            const NAME: &'static str = $key;
            fn value(&self) -> SharedString {
                SharedString::const_str(self.as_str())
            }
        }
    };
}

label_enum!(
    /// The request's method: one of RFC 9110's (and PATCH), else `OTHER`.
    Method = "method" {
        Get => "GET", Head => "HEAD", Post => "POST", Put => "PUT", Delete => "DELETE",
        Connect => "CONNECT", Options => "OPTIONS", Trace => "TRACE", Patch => "PATCH", Other => "OTHER",
    }
);

impl Method {
    /// The label of a method as the request spelled it.
    pub fn of(method: &str) -> Method {
        Method::ALL
            .iter()
            .copied()
            .find(|m| m.as_str() == method)
            .unwrap_or(Method::Other)
    }
}

label_enum!(
    /// What a written record turned out to be.
    WriteStatus = "status" { Created => "created", Duplicate => "duplicate" }
);

label_enum!(
    /// Why authentication or authorization refused a request.
    AuthFailure = "reason" {
        Missing => "missing", Malformed => "malformed", InvalidToken => "invalid_token",
        Forbidden => "forbidden", Unavailable => "unavailable", TooManyFailures => "too_many_failures",
    }
);

label_enum!(
    /// A review sent to the Kubernetes API.
    Review = "review" { TokenReview => "tokenreview", SubjectAccessReview => "subjectaccessreview" }
);

label_enum!(
    /// Which decision the authentication cache holds.
    Decision = "decision" { Authn => "authn", Authz => "authz" }
);

label_enum!(
    /// A database pool of this replica.
    Pool = "pool" { Primary => "primary", Replica => "replica" }
);

label_enum!(
    /// A pooled connection's state.
    ConnState = "state" { Idle => "idle", InUse => "in_use" }
);

label_enum!(
    /// Why a read meant for the read replica went to the primary.
    Fallback = "reason" { Unusable => "unusable", Unavailable => "unavailable", NotFound => "not_found" }
);

label_enum!(
    /// Why one attempt of a remote embedding provider failed.
    ProviderFailure = "kind" {
        RateLimited => "rate_limited", ServerError => "server_error", Timeout => "timeout",
        Connect => "connect", ClientError => "client_error", Malformed => "malformed",
        InvalidOutput => "invalid_output", CircuitOpen => "circuit_open",
    }
);

impl Label for Kind {
    const NAME: &'static str = "kind";
    fn value(&self) -> SharedString {
        SharedString::const_str(self.as_str())
    }
}

/// The `kind` of a write request: one record's kind, or `batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    One(Kind),
    Batch,
}

impl Label for WriteKind {
    const NAME: &'static str = "kind";
    fn value(&self) -> SharedString {
        match self {
            WriteKind::One(k) => k.value(),
            WriteKind::Batch => SharedString::const_str("batch"),
        }
    }
}

/// The `version` of the running binary.
#[derive(Debug, Clone, Copy)]
pub struct Version(pub &'static str);

impl Label for Version {
    const NAME: &'static str = "version";
    fn value(&self) -> SharedString {
        SharedString::const_str(self.0)
    }
}

/// An embedding provider, as [`ds_domain::ports::Embedder::provider`] names it (a name in code).
#[derive(Debug, Clone, Copy)]
pub struct Provider(pub &'static str);

impl Label for Provider {
    const NAME: &'static str = "provider";
    fn value(&self) -> SharedString {
        SharedString::const_str(self.0)
    }
}

/// A top-level field of a record kind (a name in code: `ds_domain::record::defined_field`), or
/// `unknown` for a field the kind does not define.
#[derive(Debug, Clone, Copy)]
pub struct Field(pub &'static str);

impl Field {
    pub const UNKNOWN: Field = Field("unknown");
}

impl Label for Field {
    const NAME: &'static str = "field";
    fn value(&self) -> SharedString {
        SharedString::const_str(self.0)
    }
}

/// The route pattern the router matched (`/api/v1/audit/records/{id}`), or `unmatched`: never the
/// raw path. Only the HTTP layer makes one, from the router's match.
#[derive(Debug, Clone)]
pub struct Route(SharedString);

impl Route {
    pub const UNMATCHED: &'static str = "unmatched";

    /// The route of a request: the pattern the router matched, else `unmatched`.
    pub fn matched(pattern: Option<String>) -> Route {
        Route(pattern.map_or(
            SharedString::const_str(Route::UNMATCHED),
            SharedString::from,
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Label for Route {
    const NAME: &'static str = "route";
    fn value(&self) -> SharedString {
        self.0.clone()
    }
}

/// An HTTP status code (100 to 999).
#[derive(Debug, Clone, Copy)]
pub struct Status(pub u16);

impl Label for Status {
    const NAME: &'static str = "status";
    fn value(&self) -> SharedString {
        SharedString::from(self.0.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::Method;

    #[test]
    fn method_labels_are_a_closed_set() {
        for m in ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
            assert_eq!(Method::of(m).as_str(), m);
        }
        for m in ["get", "BREW", "X-1234", "", "PROPFIND"] {
            assert_eq!(Method::of(m), Method::Other, "{m}");
        }
    }
}
