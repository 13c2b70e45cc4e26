//! Lenient deserialization: turns a JSON object into a typed struct while collecting *every* type error
//! as a [`Violation`], instead of stopping at the first one as serde does.
//!
//! Required fields are `Option`s in the typed structs (garde's `required` rule reports them), so serde
//! only ever fails on a value of the wrong type. When it does, each field is tried alone to find every
//! bad one with its exact path (`stepStatuses[3].retryCount`), the bad fields are dropped and the rest is
//! deserialized. The slow path runs only for invalid input.

use crate::error::Violation;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// The JSON field names of a struct, read from its `Deserialize` impl (serde passes them to
/// `deserialize_struct`), so that the list can never drift from the struct.
pub fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Introspect<'a>(&'a mut &'static [&'static str]);
    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("introspection")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> Deserializer<'de> for Introspect<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Introspect(&mut fields));
    fields
}

/// Deserializes `map` (only the keys that `T` defines should be in it) into `T`, reporting every value of
/// the wrong type with its JSON path. Returns the value (with the bad fields absent) and the violations.
pub fn from_map<T: DeserializeOwned>(mut map: Map<String, Value>) -> (Option<T>, Vec<Violation>) {
    if let Ok(t) = serde_json::from_value::<T>(Value::Object(map.clone())) {
        return (Some(t), Vec::new());
    }
    // Slow path, only for bad input: try each field alone to find every bad one and its exact path.
    let mut violations = Vec::new();
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let mut only = Map::new();
        if let Some(v) = map.get(&key) {
            only.insert(key.clone(), v.clone());
        }
        if let Err(e) = serde_path_to_error::deserialize::<_, T>(Value::Object(only)) {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            let constraint = if message.contains("unknown variant") {
                "enum"
            } else {
                "type"
            };
            let field = if path.is_empty() || path == "." {
                key.clone()
            } else {
                path
            };
            violations.push(Violation::new(field, constraint, message));
            map.remove(&key);
        }
    }
    match serde_json::from_value::<T>(Value::Object(map)) {
        Ok(t) => (Some(t), violations),
        Err(e) => {
            violations.push(Violation::new(".", "type", e.to_string()));
            (None, violations)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        step_count: Option<i64>,
        name: Option<String>,
        flag: Option<bool>,
    }

    #[test]
    fn field_names_come_from_serde() {
        assert_eq!(field_names::<Probe>(), &["stepCount", "name", "flag"]);
    }

    #[test]
    fn every_type_error_is_reported_and_good_fields_survive() {
        let map = serde_json::json!({"stepCount": "three", "name": "ok", "flag": 7});
        let Value::Object(map) = map else {
            unreachable!()
        };
        let (value, violations) = from_map::<Probe>(map);
        let value = value.unwrap();
        assert_eq!(value.name.as_deref(), Some("ok"));
        assert!(value.step_count.is_none() && value.flag.is_none());
        let mut fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        fields.sort();
        assert_eq!(fields, ["flag", "stepCount"]);
        assert!(violations.iter().all(|v| v.constraint == "type"));
    }
}
