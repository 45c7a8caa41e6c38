//! JSON validity and JSON-schema validity of an answer. A Markdown code fence around the
//! JSON is accepted (models add one even when asked not to).

use serde_json::Value;

use super::Score;

/// The answer without a surrounding ```json fence.
pub fn strip_fence(output: &str) -> &str {
    let t = output.trim();
    let Some(rest) = t.strip_prefix("```") else {
        return t;
    };
    let rest = rest.split_once('\n').map_or("", |(_, body)| body);
    rest.trim_end().strip_suffix("```").unwrap_or(rest).trim()
}

fn parse(output: &str) -> Result<Value, Score> {
    serde_json::from_str(strip_fence(output))
        .map_err(|e| Score::pass_fail(false, format!("not JSON: {e}")))
}

pub fn valid(output: &str) -> Score {
    match parse(output) {
        Ok(_) => Score::pass_fail(true, "valid JSON"),
        Err(s) => s,
    }
}

/// Whether the answer and the reference are the same JSON value (object key order and
/// whitespace aside; numbers compared as JSON numbers).
pub fn equal(output: &str, reference: &str) -> Score {
    let value = match parse(output) {
        Ok(v) => v,
        Err(s) => return s,
    };
    match serde_json::from_str::<Value>(strip_fence(reference)) {
        Ok(expected) if expected == value => Score::pass_fail(true, "equal JSON"),
        Ok(_) => Score::pass_fail(false, "different JSON"),
        Err(e) => Score::pass_fail(false, format!("the reference is not JSON: {e}")),
    }
}

pub fn schema(output: &str, schema: &Value) -> Score {
    let value = match parse(output) {
        Ok(v) => v,
        Err(s) => return s,
    };
    // The dataset reader checked the schema compiles.
    let validator = match jsonschema::validator_for(schema) {
        Ok(v) => v,
        Err(e) => return Score::pass_fail(false, format!("the item's schema is invalid: {e}")),
    };
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .take(3)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect();
    if errors.is_empty() {
        Score::pass_fail(true, "valid against the schema")
    } else {
        Score::pass_fail(false, errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_validity_accepts_fenced_json() {
        assert!(valid("{\"a\": 1}").passed);
        assert!(valid("```json\n{\"a\": 1}\n```").passed);
        assert!(!valid("{\"a\": 1").passed);
        assert!(!valid("Sure! {\"a\": 1}").passed);
    }

    #[test]
    fn json_equality_ignores_key_order_and_fences() {
        assert!(equal("```json\n{\"b\": [1, 2], \"a\": \"x\"}\n```", "{\"a\":\"x\",\"b\":[1,2]}").passed);
        assert!(!equal("{\"a\": 1}", "{\"a\": 2}").passed);
        assert!(!equal("{\"a\": [1, 2]}", "{\"a\": [2, 1]}").passed);
        assert!(!equal("not json", "{}").passed);
        let bad_reference = equal("{}", "nope");
        assert!(!bad_reference.passed && bad_reference.detail.contains("reference"));
    }

    #[test]
    fn schema_validity_names_the_failing_field() {
        let s = json!({"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]});
        assert!(schema("{\"age\": 3}", &s).passed);
        let bad = schema("{\"age\": \"three\"}", &s);
        assert!(!bad.passed);
        assert!(bad.detail.contains("/age"), "{}", bad.detail);
        assert!(!schema("{}", &s).passed);
        assert!(!schema("nope", &s).passed);
    }
}
