//! `--set a.b=value`: overrides one key after the file is read; the value is read as YAML.

use serde_yaml_ng::Value;

use super::Origins;
use crate::error::ConfigError;

/// Applies one `key.path=value` override to the pipeline's YAML tree.
pub(super) fn apply(
    root: &mut Value,
    spec: &str,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    let (key, raw_value) = spec.split_once('=').ok_or_else(|| {
        ConfigError::new(format!(
            "invalid --set `{spec}`: expected KEY=VALUE, e.g. embed.batch_tokens=4096"
        ))
    })?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|p| p.is_empty()) {
        return Err(ConfigError::new(format!(
            "invalid --set `{spec}`: the key must be a dotted path such as embed.batch_tokens"
        )));
    }
    let value: Value = if raw_value.is_empty() {
        Value::String(String::new())
    } else {
        serde_yaml_ng::from_str(raw_value).map_err(|e| {
            ConfigError::new(format!(
                "invalid --set `{spec}`: the value is not valid YAML: {e}"
            ))
        })?
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        if !node.is_mapping() {
            if node.is_null() {
                *node = Value::Mapping(Default::default());
            } else {
                return Err(ConfigError::new(format!(
                    "invalid --set `{spec}`: `{}` is not a mapping",
                    parts[..i].join(".")
                )));
            }
        }
        let Value::Mapping(map) = node else {
            unreachable!("made a mapping above")
        };
        let k = Value::String((*part).to_string());
        if i + 1 == parts.len() {
            map.insert(k, value);
            break;
        }
        node = map.entry(k).or_insert(Value::Null);
    }
    origins.add(
        parts.iter().map(|p| p.to_string()).collect(),
        format!("set by --set {spec}"),
    );
    Ok(())
}
