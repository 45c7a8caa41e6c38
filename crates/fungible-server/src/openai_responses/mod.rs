//! The OpenAI Responses API front end: `POST /v1/responses` (JSON and SSE),
//! `GET /v1/responses/{id}` and `DELETE /v1/responses/{id}`.
//!
//! A request becomes a canonical [`fungible_types::ChatRequest`]: `instructions` first as a
//! system message, then the conversation of `previous_response_id` (from the in-memory
//! [`ResponseStore`]), then this request's `input`. The answer is rendered as a `response`
//! object, or as the API's typed event stream, and (unless `store` is false) kept so a later
//! request can continue from it.

mod request;
mod response;
mod store;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fungible_types::{AssistantMessage, ContentPart, Message, Role};

use crate::AppState;
use crate::error::{ApiError, ApiFormat};
use response::{EventEncoder, ResponseHead};

pub use request::{ResponsesRequest, parse as parse_request};
pub use store::{ResponseStore, StoredResponse};

pub async fn create_response(State(state): State<AppState>, body: Body) -> Response {
    match handle(state, body).await {
        Ok(response) => response,
        Err(error) => error.into_response_for(ApiFormat::OpenAi),
    }
}

pub async fn get_response(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.responses.get(&id) {
        Some(stored) => json_response(StatusCode::OK, stored.body),
        None => response_not_found(&id).into_response_for(ApiFormat::OpenAi),
    }
}

pub async fn delete_response(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if !state.responses.delete(&id) {
        return response_not_found(&id).into_response_for(ApiFormat::OpenAi);
    }
    let body = serde_json::json!({"id": id, "object": "response", "deleted": true});
    json_response(StatusCode::OK, Bytes::from(serde_json::to_vec(&body).unwrap_or_default()))
}

fn response_not_found(id: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        ..ApiError::invalid_request(None, format!("Response with id '{id}' not found."))
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut http = (status, body).into_response();
    http.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    http
}

async fn handle(state: AppState, body: Body) -> Result<Response, ApiError> {
    let bytes = crate::read_body(body, state.max_body_bytes).await?;
    let ResponsesRequest { mut chat, instructions, previous_response_id, store, echo, unknown } =
        request::parse(&bytes)?;

    // Fields this API does not know go to OpenAI-family servers as they are (they may be
    // that server's own extensions); other vendors would reject them, so they are dropped.
    let (provider, _) = state.gateway.resolve(&chat.model)?;
    if matches!(provider.kind().as_str(), "openai" | "openai_compatible") {
        chat.extra_body = unknown;
    } else if !unknown.is_empty() {
        let fields: Vec<&str> = unknown.keys().map(String::as_str).collect();
        tracing::debug!(
            ?fields,
            provider = provider.kind().as_str(),
            "dropping request fields the Responses API does not define"
        );
    }

    // The conversation so far: the previous response's (its instructions excluded, as in
    // OpenAI's API), then this input.
    let mut conversation: Vec<Message> = match &previous_response_id {
        None => Vec::new(),
        Some(id) => {
            let stored = state.responses.get(id).ok_or_else(|| previous_not_found(id))?;
            Arc::unwrap_or_clone(stored.conversation)
        }
    };
    conversation.append(&mut chat.messages);
    if !conversation.iter().any(|m| !m.role.is_instruction()) {
        return Err(ApiError::invalid_request(
            Some("input".into()),
            "input: must contain at least one message that is not an instruction",
        ));
    }
    if let Some(text) = instructions.filter(|t| !t.is_empty()) {
        chat.messages.push(Message::text(Role::System, text));
    }
    chat.messages.extend(conversation.iter().cloned());

    let head = ResponseHead {
        id: response::new_id("resp_"),
        created_at: response::now_unix(),
        model: chat.model.clone(),
        echo,
    };
    let saver = store.then(|| Saver { store: state.responses.clone(), conversation });

    if !chat.stream {
        let answer = crate::dispatch::chat(&state, &chat).await?;
        let head = ResponseHead { model: answer.model.clone(), ..head };
        let rendered = response::response_body(&head, &answer);
        if let Some(saver) = saver {
            saver.save(&head.id, rendered.body.clone(), &rendered.message);
        }
        return Ok(json_response(StatusCode::OK, rendered.body));
    }

    let upstream = crate::dispatch::chat_stream(&state, &chat).await?;
    let encoder = EventEncoder::new(head);
    Ok(crate::streaming::response(upstream, Saving { encoder, saver }, "text/event-stream"))
}

fn previous_not_found(id: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: Some("previous_response_not_found"),
        ..ApiError::invalid_request(
            Some("previous_response_id".into()),
            format!("Previous response with id '{id}' not found."),
        )
    }
}

/// Keeps a finished response and its conversation in the store.
struct Saver {
    store: ResponseStore,
    /// The conversation the response answered (without instructions).
    conversation: Vec<Message>,
}

impl Saver {
    fn save(self, id: &str, body: Bytes, answer: &AssistantMessage) {
        let mut conversation = self.conversation;
        conversation.push(assistant_turn(answer));
        self.store.insert(id.to_owned(), StoredResponse { body, conversation: Arc::new(conversation) });
    }
}

/// The assistant's answer as a message of the conversation.
fn assistant_turn(answer: &AssistantMessage) -> Message {
    let mut content = Vec::new();
    // A refusal is what the assistant said; a continuation must see it.
    for text in [&answer.content, &answer.refusal].into_iter().flatten() {
        content.push(ContentPart::Text { text: text.clone() });
    }
    let mut message = Message::new(Role::Assistant, content);
    message.tool_calls.clone_from(&answer.tool_calls);
    message.reasoning.clone_from(&answer.reasoning);
    message
}

/// The stream encoder plus what stores the response once it completed (never a failed or
/// abandoned one).
struct Saving {
    encoder: EventEncoder,
    saver: Option<Saver>,
}

impl crate::streaming::FrameEncoder for Saving {
    fn encode(&mut self, event: fungible_types::StreamEvent, out: &mut Vec<Bytes>) -> Result<(), ApiError> {
        self.encoder.encode(event, out);
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Bytes>) -> Result<(), ApiError> {
        let rendered = self.encoder.finish(out);
        if let Some(saver) = self.saver.take() {
            saver.save(self.encoder.id(), rendered.body, &rendered.message);
        }
        Ok(())
    }

    fn fail(&mut self, error: &ApiError, out: &mut Vec<Bytes>) {
        self.encoder.fail(error, out);
    }
}
