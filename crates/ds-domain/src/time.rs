//! Timestamps: RFC 3339 with an offset on the wire, UTC with microsecond precision inside.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A point in time, normalised to UTC and truncated to the microsecond, which is what PostgreSQL's
/// `timestamptz` keeps: a value read back equals the value written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some(
                "RFC 3339 with an offset; stored in UTC with microsecond precision",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Timestamp {}

impl Timestamp {
    /// Normalises any UTC instant (truncates below the microsecond).
    pub fn from_utc(t: DateTime<Utc>) -> Self {
        Timestamp(t.trunc_subsecs(6))
    }

    pub fn now() -> Self {
        Self::from_utc(Utc::now())
    }

    /// Parses RFC 3339 (an offset is required, `Z` or `±hh:mm`), exactly as JSON Schema's
    /// `date-time` format: date and time are separated by `T` (or `t`), not by the space that
    /// chrono also takes.
    pub fn parse(s: &str) -> Result<Self, String> {
        if !matches!(s.as_bytes().get(10), Some(b'T' | b't')) {
            return Err(
                "not an RFC 3339 timestamp with offset (date and time separated by `T`)".into(),
            );
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| Self::from_utc(t.with_timezone(&Utc)))
            .map_err(|e| format!("not an RFC 3339 timestamp with offset ({e})"))
    }

    pub fn as_utc(&self) -> DateTime<Utc> {
        self.0
    }

    /// `2025-10-06T10:00:46.123456Z`: always six fractional digits, always `Z`.
    pub fn to_rfc3339(&self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::Micros, true)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_normalised_to_utc_and_nanoseconds_truncated() {
        let t = Timestamp::parse("2025-10-06T12:00:46.123456789+02:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2025-10-06T10:00:46.123456Z");
    }

    #[test]
    fn a_timestamp_without_offset_is_rejected() {
        assert!(Timestamp::parse("2025-10-06T10:00:46").is_err());
        assert!(Timestamp::parse("yesterday").is_err());
    }
}
