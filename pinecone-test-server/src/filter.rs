//! Pinecone metadata filters: `$eq $ne $gt $gte $lt $lte $in $nin $exists $and $or`, and the
//! shorthand `{"field": value}` for `$eq`.

use serde_json::{Map, Value};

use crate::limits::ApiError;

/// Whether `metadata` passes `filter`; a malformed filter is a 400.
pub fn matches(filter: &Value, metadata: Option<&Map<String, Value>>) -> Result<bool, ApiError> {
    let Value::Object(clauses) = filter else {
        return Err(ApiError::invalid("filter must be a JSON object"));
    };
    for (key, cond) in clauses {
        let ok = match key.as_str() {
            "$and" | "$or" => {
                let Value::Array(parts) = cond else {
                    return Err(ApiError::invalid(format!("{key} takes a list of filters")));
                };
                let mut results = Vec::with_capacity(parts.len());
                for p in parts {
                    results.push(matches(p, metadata)?);
                }
                if key == "$and" {
                    results.iter().all(|x| *x)
                } else {
                    results.iter().any(|x| *x)
                }
            }
            field if field.starts_with('$') => {
                return Err(ApiError::invalid(format!(
                    "unknown top-level operator {field}"
                )));
            }
            field => field_matches(metadata.and_then(|m| m.get(field)), cond)?,
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn field_matches(value: Option<&Value>, cond: &Value) -> Result<bool, ApiError> {
    let Value::Object(ops) = cond else {
        return Ok(value.is_some_and(|v| eq(v, cond)));
    };
    for (op, arg) in ops {
        let ok = match op.as_str() {
            "$eq" => value.is_some_and(|v| eq(v, arg)),
            "$ne" => !value.is_some_and(|v| eq(v, arg)),
            "$gt" | "$gte" | "$lt" | "$lte" => {
                let (Some(x), Some(y)) = (value.and_then(Value::as_f64), arg.as_f64()) else {
                    if arg.as_f64().is_none() {
                        return Err(ApiError::invalid(format!("{op} takes a number")));
                    }
                    return Ok(false);
                };
                match op.as_str() {
                    "$gt" => x > y,
                    "$gte" => x >= y,
                    "$lt" => x < y,
                    _ => x <= y,
                }
            }
            "$in" | "$nin" => {
                let Value::Array(options) = arg else {
                    return Err(ApiError::invalid(format!("{op} takes a list")));
                };
                let found = value.is_some_and(|v| options.iter().any(|o| eq(v, o)));
                if op == "$in" { found } else { !found }
            }
            "$exists" => {
                let Some(want) = arg.as_bool() else {
                    return Err(ApiError::invalid("$exists takes a boolean"));
                };
                value.is_some() == want
            }
            other => return Err(ApiError::invalid(format!("unknown operator {other}"))),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Equality as Pinecone applies it: a list of strings matches when it contains the value.
fn eq(value: &Value, want: &Value) -> bool {
    match (value, want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Array(items), w) if !w.is_array() => items.iter().any(|i| i == w),
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn operators() {
        let md = m(json!({"lang": "en", "year": 2020, "tags": ["a", "b"]}));
        let ok = |f: Value| matches(&f, Some(&md)).unwrap();
        assert!(ok(json!({"lang": "en"})));
        assert!(!ok(json!({"lang": {"$ne": "en"}})));
        assert!(ok(json!({"year": {"$gte": 2020, "$lt": 2021}})));
        assert!(ok(json!({"tags": {"$in": ["b"]}})));
        assert!(ok(json!({"missing": {"$exists": false}})));
        assert!(ok(json!({"$or": [{"lang": "fr"}, {"year": 2020}]})));
        assert!(!ok(
            json!({"$and": [{"lang": "en"}, {"year": {"$gt": 2020}}]})
        ));
        assert!(matches(&json!({"year": {"$gt": "x"}}), Some(&md)).is_err());
    }
}
