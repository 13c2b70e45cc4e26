//! The configuration file (TOML): its values, flattened to the keys of [`super::keys::KEYS`].

use super::ConfigError;
use super::keys;
use std::collections::HashMap;
use std::path::Path;

/// The values of a configuration file, by environment variable name.
#[derive(Debug, Default, Clone)]
pub struct FileValues {
    /// Where they came from (for error messages).
    pub path: String,
    pub values: HashMap<&'static str, String>,
}

const FILE_KEY: &str = "DATASTORAGE_CONFIG_FILE";

impl FileValues {
    /// The values of `path`, or none without a file.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        path.map_or_else(|| Ok(Self::default()), Self::read)
    }

    /// Reads and checks `path`: TOML, every key known, every value a string, number, boolean or a list
    /// of them.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            key: FILE_KEY,
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
            key: FILE_KEY,
            reason: format!("{path} is not valid TOML: {}", e.message()),
        })?;
        let mut values = HashMap::new();
        flatten(&table, "", path, &mut values)?;
        Ok(FileValues {
            path: path.to_owned(),
            values,
        })
    }
}

fn flatten(
    table: &toml::Table,
    prefix: &str,
    path: &str,
    out: &mut HashMap<&'static str, String>,
) -> Result<(), ConfigError> {
    for (name, value) in table {
        let dotted = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        if let toml::Value::Table(inner) = value {
            flatten(inner, &dotted, path, out)?;
            continue;
        }
        let key = keys::by_file(&dotted).ok_or_else(|| ConfigError {
            key: FILE_KEY,
            reason: format!(
                "{path}: unknown key `{dotted}`{}",
                suggestion(&dotted)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default()
            ),
        })?;
        let text = scalar(value)
            .or_else(|| match value {
                toml::Value::Array(items) => items
                    .iter()
                    .map(scalar)
                    .collect::<Option<Vec<_>>>()
                    .map(|v| v.join(",")),
                _ => None,
            })
            .ok_or_else(|| ConfigError {
                key: key.env,
                reason: format!(
                    "{path}: `{dotted}` must be a string, number, boolean or a list of them"
                ),
            })?;
        out.insert(key.env, text);
    }
    Ok(())
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The known key closest to a misspelt one: same section and the most leading characters in common,
/// or the same name in another section.
fn suggestion(dotted: &str) -> Option<&'static str> {
    let (section, name) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let common = |a: &str, b: &str| a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    keys::KEYS
        .iter()
        .filter_map(|k| {
            let (s, n) = k.file.rsplit_once('.').unwrap_or(("", k.file));
            let score = if n == name {
                100
            } else if s == section {
                common(n, name)
            } else {
                0
            };
            (score >= 3).then_some((score, k.file))
        })
        .max_by_key(|(score, _)| *score)
        .map(|(_, file)| file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_flatten_to_their_keys() {
        let f = FileValues::parse(
            "[server]\nhttp_addr = \"0.0.0.0:8080\"\n[database]\npool_size = 32\nmigrate_on_start = false\n[limits]\ntrusted_proxies = [\"10.0.0.1\", \"10.0.0.2\"]\nrate_limit_writes_per_second = 12.5\n[embedding.openai]\nmodel = \"m\"\n",
            "test.toml",
        )
        .unwrap();
        assert_eq!(f.values["DATASTORAGE_HTTP_ADDR"], "0.0.0.0:8080");
        assert_eq!(f.values["DATASTORAGE_DB_POOL_SIZE"], "32");
        assert_eq!(f.values["DATASTORAGE_MIGRATE_ON_START"], "false");
        assert_eq!(f.values["DATASTORAGE_TRUSTED_PROXIES"], "10.0.0.1,10.0.0.2");
        assert_eq!(f.values["DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND"], "12.5");
        assert_eq!(f.values["DATASTORAGE_EMBEDDING_OPENAI_MODEL"], "m");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = FileValues::parse("[database]\npool_sise = 3\n", "c.toml").unwrap_err();
        assert!(e.reason.contains("unknown key `database.pool_sise`"), "{e}");
        assert!(
            e.reason.contains("did you mean `database.pool_size`"),
            "{e}"
        );
        let e = FileValues::parse("[server]\nhttp_adr = \"x\"\n", "c.toml").unwrap_err();
        assert!(e.reason.contains("server.http_addr"), "{e}");
        let e = FileValues::parse("[database]\npool_size = { a = 1 }\n", "c.toml");
        // An inline table is a section: its key is unknown.
        assert!(e.unwrap_err().reason.contains("database.pool_size.a"));
        let e = FileValues::parse("[log]\nformat = 1979-05-27\n", "c.toml").unwrap_err();
        assert_eq!(e.key, "DATASTORAGE_LOG_FORMAT");
        let e = FileValues::parse("[log\nformat = 1", "c.toml").unwrap_err();
        assert!(e.reason.contains("c.toml is not valid TOML"), "{e}");
    }
}
