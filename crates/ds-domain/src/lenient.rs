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
///
/// A number with no fractional part is an integer, as in JSON Schema (`2.0` is a valid `integer`):
/// such numbers are read as integers wherever they are.
pub fn from_map<T: DeserializeOwned>(mut map: Map<String, Value>) -> (Option<T>, Vec<Violation>) {
    for v in map.values_mut() {
        integral_numbers_as_integers(v);
    }
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

/// Rewrites every float of `v` that has no fractional part and fits an `i64` as that integer.
fn integral_numbers_as_integers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f)
            {
                // In range and without fraction: the cast is exact.
                *v = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers_as_integers),
        Value::Object(m) => m.values_mut().for_each(integral_numbers_as_integers),
        _ => {}
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
    fn numbers_without_fraction_are_integers_as_in_json_schema() {
        let map = serde_json::json!({"stepCount": 3.0, "name": "ok"});
        let Value::Object(map) = map else {
            unreachable!()
        };
        let (value, violations) = from_map::<Probe>(map);
        assert!(violations.is_empty(), "{violations:?}");
        assert_eq!(value.unwrap().step_count, Some(3));
        for bad in [serde_json::json!(3.5), serde_json::json!(1e19)] {
            let Value::Object(map) = serde_json::json!({ "stepCount": bad }) else {
                unreachable!()
            };
            let (_, violations) = from_map::<Probe>(map);
            assert_eq!(violations.len(), 1, "{bad}");
            assert_eq!(violations[0].constraint, "type");
        }
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
