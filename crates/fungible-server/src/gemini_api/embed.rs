//! `:embedContent` and `:batchEmbedContents`: the Gemini API's embedding methods over the
//! gateway's embeddings (local models, the OpenAI family, Gemini).

use serde_json::{Value, json};

use crate::error::ApiError;

fn bad(param: &str, message: &str) -> ApiError {
    ApiError::invalid_request(Some(param.to_owned()), format!("{param}: {message}"))
}

/// The text of one `Content` (`{"parts": [{"text": ...}]}`): its text parts joined.
fn content_text(content: &Value, path: &str) -> Result<String, ApiError> {
    let parts = content.get("parts").and_then(Value::as_array).ok_or_else(|| bad(&format!("{path}.parts"), "is required"))?;
    let mut text = String::new();
    for (i, part) in parts.iter().enumerate() {
        match part.get("text").and_then(Value::as_str) {
            Some(t) => text.push_str(t),
            None => return Err(bad(&format!("{path}.parts[{i}]"), "only text parts can be embedded")),
        }
    }
    Ok(text)
}

/// The texts to embed, in order.
pub(super) fn parse(body: &[u8], batch: bool) -> Result<Vec<String>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(None, format!("request body is not valid JSON: {e}")))?;
    if !batch {
        let content = value.get("content").ok_or_else(|| bad("content", "is required"))?;
        return Ok(vec![content_text(content, "content")?]);
    }
    let requests = value.get("requests").and_then(Value::as_array).ok_or_else(|| bad("requests", "is required"))?;
    if requests.is_empty() {
        return Err(bad("requests", "must not be empty"));
    }
    requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let path = format!("requests[{i}].content");
            content_text(r.get("content").ok_or_else(|| bad(&path, "is required"))?, &path)
        })
        .collect()
}

pub(super) fn body(vectors: Vec<Vec<f32>>, batch: bool) -> Vec<u8> {
    let value = if batch {
        json!({"embeddings": vectors.into_iter().map(|v| json!({"values": v})).collect::<Vec<_>>()})
    } else {
        json!({"embedding": {"values": vectors.into_iter().next().unwrap_or_default()}})
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_batch_requests_parse() {
        assert_eq!(parse(br#"{"content":{"parts":[{"text":"a"},{"text":"b"}]}}"#, false).unwrap(), ["ab"]);
        let batch = br#"{"requests":[{"model":"models/x","content":{"parts":[{"text":"cat"}]}},{"content":{"parts":[{"text":"dog"}]}}]}"#;
        assert_eq!(parse(batch, true).unwrap(), ["cat", "dog"]);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(parse(b"{}", false).unwrap_err().param.as_deref(), Some("content"));
        let e = parse(br#"{"requests":[{"content":{"parts":[{"inlineData":{}}]}}]}"#, true).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("requests[0].content.parts[0]"));
    }

    #[test]
    fn bodies_have_gemini_shapes() {
        let one: Value = serde_json::from_slice(&body(vec![vec![0.5, 1.0]], false)).unwrap();
        assert_eq!(one, json!({"embedding": {"values": [0.5, 1.0]}}));
        let many: Value = serde_json::from_slice(&body(vec![vec![1.0], vec![2.0]], true)).unwrap();
        assert_eq!(many, json!({"embeddings": [{"values": [1.0]}, {"values": [2.0]}]}));
    }
}
