//! Glue between garde and the contract's error format: garde's messages are produced through an
//! [`I18n`](garde::i18n::I18n) that prefixes each message with the machine-readable constraint name, so
//! a report becomes a list of [`Violation`]s with field path, constraint and message.

use crate::error::Violation;
use garde::i18n::{
    I18n, InvalidCreditCard, InvalidEmail, InvalidPhoneNumber, InvalidUrl, IpKind, with_i18n,
};
use std::borrow::Cow;
use std::fmt::Display;

/// Separates the constraint name from the human message inside a garde error message.
const SEP: char = '\u{1f}';

/// Builds a garde error for a custom rule.
pub fn err(constraint: &str, message: impl Display) -> garde::Error {
    garde::Error::new(format!("{constraint}{SEP}{message}"))
}

struct ContractI18n;

fn m(constraint: &str, message: String) -> Cow<'static, str> {
    Cow::Owned(format!("{constraint}{SEP}{message}"))
}

impl I18n for ContractI18n {
    fn length_lower_than(&self, min: usize) -> Cow<'static, str> {
        if min == 1 {
            m("required", "must not be empty".into())
        } else {
            m("minLength", format!("must be at least {min} long"))
        }
    }
    fn length_greater_than(&self, max: usize) -> Cow<'static, str> {
        m("maxLength", format!("must be at most {max} long"))
    }
    fn range_lower_than(&self, min: &dyn Display) -> Cow<'static, str> {
        m("minimum", format!("must be at least {min}"))
    }
    fn range_greater_than(&self, max: &dyn Display) -> Cow<'static, str> {
        m("maximum", format!("must be at most {max}"))
    }
    fn credit_card_invalid(&self, reason: InvalidCreditCard) -> Cow<'static, str> {
        m("format", format!("{reason}"))
    }
    fn pattern_no_match(&self, pattern: &dyn Display) -> Cow<'static, str> {
        m("pattern", format!("must match {pattern}"))
    }
    fn contains_missing(&self, pattern: &dyn Display) -> Cow<'static, str> {
        m("contains", format!("must contain {pattern}"))
    }
    fn url_invalid(&self, reason: InvalidUrl) -> Cow<'static, str> {
        m("format", format!("{reason}"))
    }
    fn prefix_missing(&self, pattern: &dyn Display) -> Cow<'static, str> {
        m("prefix", format!("must start with {pattern}"))
    }
    fn suffix_missing(&self, pattern: &dyn Display) -> Cow<'static, str> {
        m("suffix", format!("must end with {pattern}"))
    }
    fn phone_number_invalid(&self, reason: InvalidPhoneNumber) -> Cow<'static, str> {
        m("format", format!("{reason}"))
    }
    fn ip_invalid(&self, kind: IpKind) -> Cow<'static, str> {
        m("format", format!("not a valid {kind} address"))
    }
    fn matches_field_mismatch(&self, field: &dyn Display) -> Cow<'static, str> {
        m("matches", format!("must match {field}"))
    }
    fn email_invalid(&self, reason: InvalidEmail) -> Cow<'static, str> {
        m("format", format!("{reason}"))
    }
    fn ascii_invalid(&self) -> Cow<'static, str> {
        m("ascii", "must be ASCII".into())
    }
    fn alphanumeric_invalid(&self) -> Cow<'static, str> {
        m("alphanumeric", "must be alphanumeric".into())
    }
    fn required_not_set(&self) -> Cow<'static, str> {
        m("required", "is required".into())
    }
}

/// `step_statuses[0].retry_count` → `stepStatuses[0].retryCount`: garde reports Rust field names, the
/// contract speaks JSON (camelCase) names.
fn camel_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper = false;
    for c in path.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Validates `value` with garde and the contract's messages.
pub fn run<T: garde::Validate<Context = ()>>(value: &T) -> Vec<Violation> {
    match with_i18n(ContractI18n, || value.validate()) {
        Ok(()) => Vec::new(),
        Err(report) => report
            .iter()
            .map(|(path, error)| {
                let msg = error.message();
                let (constraint, message) = msg.split_once(SEP).unwrap_or(("invalid", msg));
                Violation::new(camel_path(&path.to_string()), constraint, message)
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_camel_case() {
        assert_eq!(
            camel_path("step_statuses[10].retry_count"),
            "stepStatuses[10].retryCount"
        );
        assert_eq!(camel_path("name"), "name");
    }
}
