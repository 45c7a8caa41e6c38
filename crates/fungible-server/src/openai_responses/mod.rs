//! The OpenAI Responses API front end: `POST /v1/responses` (JSON and SSE),
//! `GET /v1/responses/{id}` and `DELETE /v1/responses/{id}`.
//!
//! A request becomes a canonical [`fungible_types::ChatRequest`]: `instructions` first as a
//! system message, then the conversation of `previous_response_id` (from the
//! [`ResponseStore`], in memory or in Redis, and only the calling key's own), then this
//! request's `input`. The answer is rendered as a `response`
//! object, or as the API's typed event stream, and (unless `store` is false) kept so a later
//! request can continue from it.

pub(crate) mod events;
mod request;
pub(crate) mod response;
mod store;

use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use fungible_types::{AssistantMessage, ContentPart, Message, Role};

use crate::AppState;
use crate::error::{ApiError, ApiFormat};
use crate::principal::{DataScope, Principal};
use events::EventEncoder;
use response::ResponseHead;

pub use request::{ResponsesRequest, parse as parse_request};
pub use store::{DEFAULT_RETENTION, ResponseStore, StoredResponse};

pub async fn create_response(State(state): State<AppState>, context: crate::dispatch::Context, caller: Caller, body: Body) -> Response {
    match handle(state, &context, owner_scope(&caller), body).await {
        Ok(response) => response,
        Err(error) => error.into_response_for(ApiFormat::OpenAi),
    }
}

type Caller = Option<Extension<Principal>>;

/// Whose stored responses a caller reaches: its own key's (see [`ResponseStore`]).
fn owner_scope(caller: &Caller) -> DataScope {
    DataScope::owner_of(caller.as_ref().map(|Extension(p)| p))
}

fn store_failed(e: store::StoreError) -> ApiError {
    tracing::error!("{e}");
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        kind: "server_error",
        ..ApiError::invalid_request(None, "stored responses are unavailable right now")
    }
}

pub async fn get_response(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Response {
    match state.responses.get(&id, &owner_scope(&caller)).await {
        Ok(Some(stored)) => crate::json_response(StatusCode::OK, stored.body),
        Ok(None) => response_not_found(&id).into_response_for(ApiFormat::OpenAi),
        Err(e) => store_failed(e).into_response_for(ApiFormat::OpenAi),
    }
}

pub async fn delete_response(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Response {
    match state.responses.delete(&id, &owner_scope(&caller)).await {
        Ok(true) => {}
        Ok(false) => return response_not_found(&id).into_response_for(ApiFormat::OpenAi),
        Err(e) => return store_failed(e).into_response_for(ApiFormat::OpenAi),
    }
    let body = serde_json::json!({"id": id, "object": "response", "deleted": true});
    crate::json_response(StatusCode::OK, Bytes::from(serde_json::to_vec(&body).unwrap_or_default()))
}

fn response_not_found(id: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        ..ApiError::invalid_request(None, format!("Response with id '{id}' not found."))
    }
}


async fn handle(state: AppState, context: &crate::dispatch::RequestContext, owner: DataScope, body: Body) -> Result<Response, ApiError> {
    // The body is dropped once parsed: only the canonical request lives on.
    let ResponsesRequest { mut chat, instructions, previous_response_id, store, echo, unknown } =
        request::parse(&crate::read_body(body, state.max_body_bytes).await?)?;

    // Fields this API does not know go to OpenAI-family servers as they are (they may be
    // that server's own extensions); other vendors would reject them, so the gateway drops
    // them for any other target, at the call.
    state.gateway.resolve(&chat.model)?;
    if !unknown.is_empty() {
        chat.extra_body = unknown;
        chat.extra_body_vendor = Some(fungible_types::VendorFamily::OpenAi);
    }

    // The conversation so far: the previous response's (its instructions excluded, as in
    // OpenAI's API), then this input.
    let mut conversation: Vec<Message> = match &previous_response_id {
        None => Vec::new(),
        Some(id) => {
            // Another key's response is as absent as a deleted one: its conversation never
            // goes upstream in this request.
            let stored = state.responses.get(id, &owner).await.map_err(store_failed)?.ok_or_else(|| previous_not_found(id))?;
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
    let owner = match owner {
        DataScope::Key(key_id) => Some(key_id),
        DataScope::All => None,
    };
    let saver = store.then(|| Saver { store: state.responses.clone(), conversation, owner });

    if !chat.stream {
        let answer = crate::dispatch::chat(&state, context, &chat).await?;
        let head = ResponseHead { model: answer.model.clone(), ..head };
        let rendered = response::response_body(&head, &answer);
        if let Some(saver) = saver {
            saver.save(head.id.clone(), rendered.body.clone(), &rendered.message).await;
        }
        return Ok(crate::json_response(StatusCode::OK, rendered.body));
    }

    let upstream = crate::dispatch::chat_stream(&state, context, &chat).await?;
    let encoder = EventEncoder::new(head);
    Ok(crate::streaming::response(upstream, Saving { encoder, saver, saving: None }, "text/event-stream"))
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
    /// The key that made it.
    owner: Option<String>,
}

impl Saver {
    /// Stores the response; done before the client has its last byte, so a follow-up sent
    /// at once finds it (on any instance, with a shared store). A store that fails is logged:
    /// the answer still reaches the client, and only continuing it will fail.
    fn save(self, id: String, body: Bytes, answer: &AssistantMessage) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut conversation = self.conversation;
        conversation.push(assistant_turn(answer));
        let stored = StoredResponse { body, conversation: Arc::new(conversation), owner: self.owner };
        let store = self.store;
        async move {
            if let Err(e) = store.insert(id, stored).await {
                tracing::error!("could not store a response: {e}");
            }
        }
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
    /// The store write `finish` started, awaited before the closing frames go out.
    saving: Option<futures::future::BoxFuture<'static, ()>>,
}

impl crate::streaming::FrameEncoder for Saving {
    fn encode(&mut self, event: fungible_types::StreamEvent, out: &mut Vec<Bytes>) -> Result<(), ApiError> {
        self.encoder.encode(event, out);
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Bytes>) -> Result<(), ApiError> {
        let rendered = self.encoder.finish(out);
        if let Some(saver) = self.saver.take() {
            self.saving = Some(Box::pin(saver.save(self.encoder.id().to_owned(), rendered.body, &rendered.message)));
        }
        Ok(())
    }

    fn before_closing(&mut self) -> Option<futures::future::BoxFuture<'static, ()>> {
        self.saving.take()
    }

    fn fail(&mut self, error: &ApiError, out: &mut Vec<Bytes>) {
        self.encoder.fail(error, out);
    }
}
