//! placeholder
use fungible_types::{ChatRequest, ChatResponse, ProviderError};
use crate::{ChatProvider, EventStream};
#[derive(Debug, Clone)]
pub struct GeminiProvider;
impl ChatProvider for GeminiProvider { async fn chat(&self, _r: &ChatRequest, _m: &str) -> Result<ChatResponse, ProviderError> { unimplemented!() } async fn chat_stream(&self, _r: &ChatRequest, _m: &str) -> Result<EventStream, ProviderError> { unimplemented!() } }
