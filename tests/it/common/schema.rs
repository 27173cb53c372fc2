//! A JSON checker for the subset of JSON Schema doc/openapi.json uses. Shared by the
//! unit tests in src/http/openapi.rs (included there by path) and the integration suite
//! tests/it/openapi.rs, so both hold the service's answers to the same rules.

use serde_json::Value;

/// The object a `$ref` points at (`#/a/b/c`), or `value` itself.
pub fn resolve<'a>(spec: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => {
            let target = spec
                .pointer(pointer.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("$ref {pointer} points nowhere"));
            resolve(spec, target)
        }
        None => value,
    }
}

/// Checks `value` against `schema` for what this spec uses: `$ref`, `type`, `enum`,
/// `const`, `oneOf`, `properties` (no others allowed where they are listed),
/// `required` and `items`. Returns the first mismatch, with its JSON path.
pub fn fits(spec: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(spec, schema);
    if let Some(options) = schema["oneOf"].as_array() {
        let ok = options
            .iter()
            .filter(|s| fits(spec, s, value, at).is_ok())
            .count();
        return (ok == 1)
            .then_some(())
            .ok_or(format!("{at}: {ok} of oneOf fit {value}"));
    }
    if let Some(values) = schema["enum"].as_array() {
        if !values.contains(value) {
            return Err(format!("{at}: {value} not in {values:?}"));
        }
    }
    if let Some(c) = schema.get("const") {
        if c != value {
            return Err(format!("{at}: {value} is not {c}"));
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let type_ok = types.is_empty()
        || types.contains(&kind)
        || (kind == "integer" && types.contains(&"number"));
    if !type_ok {
        return Err(format!("{at}: {kind} where {types:?} is described"));
    }
    if let (Some(map), Some(props)) = (value.as_object(), schema["properties"].as_object()) {
        for key in map.keys() {
            if !props.contains_key(key) {
                return Err(format!("{at}.{key}: answered but not described"));
            }
        }
        for key in schema["required"].as_array().into_iter().flatten() {
            let key = key.as_str().unwrap();
            if !map.contains_key(key) {
                return Err(format!("{at}.{key}: described as required, not answered"));
            }
        }
        for (key, v) in map {
            fits(spec, &props[key], v, &format!("{at}.{key}"))?;
        }
    }
    if let (Some(items), Some(item)) = (value.as_array(), schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            fits(spec, item, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}
