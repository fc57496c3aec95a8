//! `${VAR}` and `${VAR:-default}` inside scalar values; `$${` writes a literal `${`.
//!
//! References are swapped for inert placeholders before the YAML is parsed (so `${...}` also
//! works inside flow mappings such as `{ path: ${OUT} }`), and replaced by their values after,
//! inside string scalars only: a value that holds `: `, `,` or a newline stays one value and can
//! never add or change keys. Each substituted key remembers its variables, so an error its value
//! causes names them. Keys are never substituted.

use serde_yaml_ng::Value;

use super::Origins;
use crate::error::ConfigError;

const OPEN: &str = "__embedflow_ref_";
const CLOSE: &str = "__";

/// One reference in the file.
#[derive(Debug)]
struct Reference {
    /// As written: `${NAME}`, `${NAME:-default}`, or `$${` for a literal.
    text: String,
    name: Option<String>,
    default: Option<String>,
    line: usize,
}

/// The file's references, found before parsing.
#[derive(Debug, Default)]
pub(super) struct References(Vec<Reference>);

impl References {
    /// Replaces every reference in `raw` with a placeholder, checking their syntax.
    pub(super) fn protect(raw: &str) -> Result<(String, References), ConfigError> {
        let mut refs = Vec::new();
        let mut out = String::with_capacity(raw.len());
        for (lineno, line) in raw.split_inclusive('\n').enumerate() {
            let line_no = lineno + 1;
            let mut rest = line;
            while let Some(pos) = rest.find("${") {
                let escaped = pos > 0 && rest.as_bytes()[pos - 1] == b'$';
                let start = if escaped { pos - 1 } else { pos };
                out.push_str(&rest[..start]);
                if escaped {
                    out.push_str(&placeholder(refs.len()));
                    refs.push(Reference {
                        text: "$${".into(),
                        name: None,
                        default: None,
                        line: line_no,
                    });
                    rest = &rest[pos + 2..];
                    continue;
                }
                let after = &rest[pos + 2..];
                let end = after.find('}').ok_or_else(|| {
                    ConfigError::new(format!(
                        "line {line_no}: unterminated `${{` (write `$${{` for a literal)"
                    ))
                })?;
                let inner = &after[..end];
                let (name, default) = match inner.split_once(":-") {
                    Some((n, d)) => (n, Some(d.to_string())),
                    None => (inner, None),
                };
                let valid = !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.starts_with(|c: char| c.is_ascii_digit());
                if !valid {
                    return Err(ConfigError::new(format!(
                        "line {line_no}: `${{{inner}}}` is not a valid variable reference"
                    )));
                }
                out.push_str(&placeholder(refs.len()));
                refs.push(Reference {
                    text: format!("${{{inner}}}"),
                    name: Some(name.to_string()),
                    default,
                    line: line_no,
                });
                rest = &after[end + 1..];
            }
            out.push_str(rest);
        }
        Ok((out, References(refs)))
    }

    /// Puts the references back as written (for keys and messages).
    pub(super) fn restore(&self, text: &str) -> String {
        self.rewrite(text, |r| Ok(r.text.clone()), &mut Vec::new())
            .unwrap_or_else(|_| text.to_string())
    }

    /// Replaces placeholders with values, collecting the variables used.
    fn resolve(&self, text: &str, vars: &mut Vec<String>) -> Result<String, ConfigError> {
        self.rewrite(
            text,
            |r| {
                let Some(name) = &r.name else {
                    return Ok("${".to_string());
                };
                match (std::env::var(name), &r.default) {
                    (Ok(v), None) => Ok(v),
                    (Ok(v), Some(_)) if !v.is_empty() => Ok(v),
                    (_, Some(d)) => Ok(d.clone()),
                    (Err(_), None) => Err(ConfigError::new(format!(
                        "line {}: environment variable {name} is not set (use ${{{name}:-default}} for a default)",
                        r.line
                    ))),
                }
            },
            vars,
        )
    }

    fn rewrite(
        &self,
        text: &str,
        mut value: impl FnMut(&Reference) -> Result<String, ConfigError>,
        vars: &mut Vec<String>,
    ) -> Result<String, ConfigError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(pos) = rest.find(OPEN) {
            let after = &rest[pos + OPEN.len()..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let reference = after[..digits]
                .parse::<usize>()
                .ok()
                .filter(|_| after[digits..].starts_with(CLOSE))
                .and_then(|i| self.0.get(i));
            out.push_str(&rest[..pos]);
            match reference {
                Some(r) => {
                    out.push_str(&value(r)?);
                    if let Some(n) = &r.name {
                        vars.push(n.clone());
                    }
                    rest = &after[digits + CLOSE.len()..];
                }
                None => {
                    out.push_str(OPEN);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}

fn placeholder(i: usize) -> String {
    format!("{OPEN}{i}{CLOSE}")
}

/// Replaces the references in every string scalar under `value` and restores them in keys.
pub(super) fn substitute(
    value: &mut Value,
    refs: &References,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    let mut path = Vec::new();
    walk(value, &mut path, refs, origins)
}

fn walk(
    value: &mut Value,
    path: &mut Vec<String>,
    refs: &References,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    match value {
        Value::String(s) if s.contains(OPEN) => {
            let mut vars = Vec::new();
            let replaced = refs.resolve(s, &mut vars).map_err(|mut e| {
                if !path.is_empty() {
                    e.key = Some(path.join("."));
                }
                e
            })?;
            if !vars.is_empty() {
                let names: Vec<String> = vars.iter().map(|v| format!("${{{v}}}")).collect();
                origins.add(
                    path.clone(),
                    format!("its value comes from {}", names.join(" and ")),
                );
            }
            *s = replaced;
        }
        Value::Mapping(map) => {
            let entries = std::mem::take(map);
            for (mut k, mut v) in entries {
                if let Value::String(key) = &mut k
                    && key.contains(OPEN)
                {
                    *key = refs.restore(key);
                }
                path.push(key_text(&k));
                walk(&mut v, path, refs, origins)?;
                path.pop();
                map.insert(k, v);
            }
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                walk(v, path, refs, origins)?;
                path.pop();
            }
        }
        Value::Tagged(t) => walk(&mut t.value, path, refs, origins)?,
        _ => {}
    }
    Ok(())
}

/// A mapping key as text, for key paths.
pub(super) fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

/// Substitutes one string on its own (no file around it).
pub fn substitute_text(text: &str) -> Result<String, ConfigError> {
    let (protected, refs) = References::protect(text)?;
    refs.resolve(&protected, &mut Vec::new())
}
