//! Record kinds and the lifecycle phase shared by every kind.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The four kinds of audit record (contract §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Remediation,
    #[serde(rename = "aianalysis")]
    AiAnalysis,
    Workflow,
    Execution,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Remediation,
        Kind::AiAnalysis,
        Kind::Workflow,
        Kind::Execution,
    ];

    /// The name used in paths, in the `kind` column and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Remediation => "remediation",
            Kind::AiAnalysis => "aianalysis",
            Kind::Workflow => "workflow",
            Kind::Execution => "execution",
        }
    }

    /// The `message` of a `201 Created` answer for a single write of this kind (contract §2).
    pub fn created_message(self) -> &'static str {
        match self {
            Kind::Remediation => "Audit record created successfully",
            Kind::AiAnalysis => "AI analysis audit record created successfully",
            Kind::Workflow => "Workflow audit record created successfully",
            Kind::Execution => "Execution audit record created successfully",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown kind name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown record kind {0:?}: expected one of remediation, aianalysis, workflow, execution")]
pub struct UnknownKind(pub String);

impl FromStr for Kind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.chars().take(64).collect()))
    }
}

/// Lifecycle phase of a record, and of a workflow step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Phase {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Processing => "Processing",
            Phase::Completed => "Completed",
            Phase::Failed => "Failed",
        }
    }
}

impl FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Pending" => Ok(Phase::Pending),
            "Processing" => Ok(Phase::Processing),
            "Completed" => Ok(Phase::Completed),
            "Failed" => Ok(Phase::Failed),
            other => Err(format!("unknown phase {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip_through_serde_and_from_str() {
        for k in Kind::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
        }
        assert!("AIAnalysis".parse::<Kind>().is_err());
    }
}
