//! The field helpers every front end's parser uses on a JSON object: take a field out and
//! deserialize it, with errors that name the field's path as the client wrote it
//! (`messages[2].content[0].text: ...`) in an `invalid_request` of the client's API.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// A JSON object's fields.
pub(crate) type Fields = Map<String, Value>;

/// A 400 about the field at `param`.
pub(crate) fn bad(param: impl Into<String>, message: impl Into<String>) -> ApiError {
    let param = param.into();
    let message = format!("{param}: {}", message.into());
    ApiError::invalid_request(Some(param), message)
}

/// `path.key`, or `key` at the top.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

/// Removes `key` and deserializes it; `null` counts as absent.
pub(crate) fn take<T: DeserializeOwned>(fields: &mut Fields, key: &str) -> Result<Option<T>, ApiError> {
    take_at(fields, key, "")
}

/// Like [`take`] inside an object at `path`.
pub(crate) fn take_at<T: DeserializeOwned>(fields: &mut Fields, key: &str, path: &str) -> Result<Option<T>, ApiError> {
    match fields.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => from_value(value, &join(path, key)).map(Some),
    }
}

/// Deserializes `value`, naming `path` (plus the path inside it) on failure.
pub(crate) fn from_value<T: DeserializeOwned>(value: Value, path: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let full = if inner == "." { path.to_owned() } else { format!("{path}.{inner}").replace(".[", "[") };
        bad(full, e.into_inner().to_string())
    })
}

/// `value` as an object, or a 400 naming `path`.
pub(crate) fn object(value: Value, path: &str) -> Result<Fields, ApiError> {
    match value {
        Value::Object(fields) => Ok(fields),
        _ => Err(bad(path, "must be an object")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn errors_name_the_path_inside_the_field() {
        let mut fields = object(json!({"a": {"b": [1, "x"]}, "n": null}), "").unwrap();
        assert_eq!(take::<u32>(&mut fields, "n").unwrap(), None, "null is absent");
        let err = take_at::<std::collections::BTreeMap<String, Vec<u32>>>(&mut fields, "a", "messages[0]").unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0].a.b[1]"));
        assert!(object(json!([1]), "tools[3]").unwrap_err().message.starts_with("tools[3]: must be an object"));
    }
}
