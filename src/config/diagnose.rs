//! From a YAML tree to the typed pipeline, with errors a person can act on: the key path, the
//! line in the file, the closest real key for a misspelt one, and where a value came from.

use serde_yaml_ng::Value;

use super::vars::key_text;
use super::{Origins, Pipeline};
use crate::error::ConfigError;

/// Deserializes the pipeline. A value that a variable or `--set` put in as text where a number
/// or boolean is expected (`batch_rows: ${ROWS}`) is read as YAML once more, as a scalar only.
pub(super) fn deserialize(
    mut value: Value,
    raw: &str,
    origins: &Origins,
) -> Result<Pipeline, ConfigError> {
    let mut coerced = 0;
    loop {
        let err = match serde_path_to_error::deserialize::<_, Pipeline>(value.clone()) {
            Ok(p) => return Ok(p),
            Err(e) => e,
        };
        let path = key_path(err.path());
        if coerced < 64 && origins.of(&path).is_some() && coerce_scalar(&mut value, &path) {
            coerced += 1;
            continue;
        }
        return Err(describe(&path, err.inner(), raw, origins));
    }
}

fn key_path(path: &serde_path_to_error::Path) -> Vec<String> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.clone()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect()
}

/// Replaces the string at `path` with its YAML reading when that is a number or a boolean.
fn coerce_scalar(root: &mut Value, path: &[String]) -> bool {
    let mut node = root;
    for part in path {
        node = match node {
            Value::Mapping(m) => match m
                .iter_mut()
                .find(|(k, _)| key_text(k) == *part)
                .map(|(_, v)| v)
            {
                Some(v) => v,
                None => return false,
            },
            Value::Sequence(items) => {
                match part.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    Some(v) => v,
                    None => return false,
                }
            }
            _ => return false,
        };
    }
    let Value::String(s) = node else { return false };
    match serde_yaml_ng::from_str::<Value>(s) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) => {
            *node = v;
            true
        }
        _ => false,
    }
}

fn describe(
    path: &[String],
    inner: &serde_yaml_ng::Error,
    raw: &str,
    origins: &Origins,
) -> ConfigError {
    let msg = crate::error::one_line(&inner.to_string());
    let unknown = unknown_name(&msg);
    let mut message = msg.clone();
    if let Some(s) = suggest_key(&msg) {
        message.push_str(&format!(" (did you mean `{s}`?)"));
    }
    let mut search: Vec<String> = path.to_vec();
    if let Some(u) = &unknown {
        search.push(u.clone());
    }
    let origin = origins.of(&search).map(str::to_string);
    if origin.is_none()
        && let Some(line) = line_of_path(raw, &search)
    {
        message = format!("line {line}: {message}");
    }
    ConfigError {
        key: (!path.is_empty()).then(|| path.join(".")),
        message,
        origin,
    }
}

/// The line of a key path in the file: each key searched from the line of the one above it.
fn line_of_path(raw: &str, path: &[String]) -> Option<usize> {
    let lines: Vec<&str> = raw.lines().collect();
    let mut from = 0;
    let mut found = None;
    for key in path.iter().filter(|k| k.parse::<usize>().is_err()) {
        let at = lines[from..].iter().position(|l| holds_key(l, key))? + from;
        found = Some(at + 1);
        from = at;
    }
    found
}

fn holds_key(line: &str, key: &str) -> bool {
    let code = line.split(" #").next().unwrap_or(line);
    code.match_indices(key).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + key.len()..].trim_start();
        matches!(before, None | Some(' ' | '{' | ',' | '-' | '"' | '\''))
            && (after.starts_with(':') || after.starts_with("\":") || after.starts_with("':"))
    })
}

/// A YAML syntax error in one line (it carries its own line and column).
pub(super) fn yaml_error(e: &serde_yaml_ng::Error) -> String {
    let mut out = crate::error::one_line(&e.to_string());
    if let Some(s) = suggest_key(&out) {
        out.push_str(&format!(" (did you mean `{s}`?)"));
    }
    out
}

fn unknown_name(msg: &str) -> Option<String> {
    let rest = msg
        .split_once("unknown field `")
        .or_else(|| msg.split_once("unknown variant `"))?
        .1;
    Some(rest.split_once('`')?.0.to_string())
}

/// From "unknown field `x`, expected one of `a`, `b`" picks the expected name closest to x.
fn suggest_key(msg: &str) -> Option<String> {
    let rest = msg
        .split_once("unknown field `")
        .or_else(|| msg.split_once("unknown variant `"))?
        .1;
    let (unknown, expected) = rest.split_once('`')?;
    let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    names
        .into_iter()
        .map(|n| (strsim::normalized_damerau_levenshtein(unknown, n), n))
        .filter(|(score, _)| *score >= 0.5)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| n.to_string())
}
