//! Canonical streaming events.
//!
//! A provider turns each vendor SSE event into zero or more [`StreamEvent`]s as it arrives
//! (never buffering the whole stream); a front end turns each into its own API's chunks.

use crate::{FinishReason, Usage};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StreamEvent {
    /// Sent once, first: the vendor's response id and model.
    Start { id: String, model: String, created: u64 },
    TextDelta { text: String },
    ReasoningDelta { text: String },
    /// The signature closing a thinking block (Anthropic), needed to send the block back.
    ReasoningSignature { signature: String },
    /// Encrypted reasoning the vendor returned whole.
    RedactedReasoning { data: String },
    /// A new tool call starts; `index` counts tool calls in this response from 0.
    ToolCallStart { index: u32, id: String, name: String },
    /// A piece of the JSON arguments of tool call `index`.
    ToolCallArgs { index: u32, arguments: String },
    Refusal { text: String },
    /// Usage so far; the last one seen is the total (vendors send partial counts).
    Usage(Usage),
    Finish { reason: FinishReason },
}
