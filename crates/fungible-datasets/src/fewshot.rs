//! Retrieved few-shot examples (dynamic in-context learning): the cheapest adaptation there
//! is, and the baseline every fine-tuning result is compared with. A route that names a
//! dataset version gets, for each request, the `k` rows whose question is nearest to the
//! request's (cosine distance of local MiniLM embeddings, at most `max_distance`) inserted as
//! earlier turns of the conversation, after its system messages.
//!
//! Only text conversations are used as examples: a row with tool calls, tool results or
//! images is left out of the index (an assistant tool call in the history needs its tool's
//! result after it, which an example does not have).

use std::collections::BTreeMap;
use std::sync::Arc;

use fungible_gateway::routing::config::{ExamplesConfig, RouteConfig};
use fungible_store::Store;
use fungible_types::{ChatRequest, ContentPart, Message, Role};

use crate::curate::{Embed, dot, embed_normalized};
use crate::example::{Example, Split};
use crate::versions::{self, DatasetError};

/// The examples one request got.
#[derive(Debug, Clone, PartialEq)]
pub struct Retrieved {
    /// `NAME@VERSION`.
    pub dataset: String,
    /// Row ids, nearest first, and their distances.
    pub rows: Vec<(String, f32)>,
}

impl Retrieved {
    /// `NAME@VERSION:row,row,...`, as the record's `fungible.examples` tag.
    pub fn tag(&self) -> String {
        let ids: Vec<&str> = self.rows.iter().map(|(id, _)| id.as_str()).collect();
        format!("{}:{}", self.dataset, ids.join(","))
    }
}

/// One dataset version's usable rows, with the embedding of each row's question.
pub struct FewShotIndex {
    /// `NAME@VERSION`.
    pub dataset: String,
    config: ExamplesConfig,
    entries: Vec<Entry>,
}

struct Entry {
    id: String,
    /// The row's conversation without its system messages, then its answer.
    turns: Vec<Message>,
    vector: Vec<f32>,
}

impl FewShotIndex {
    /// Reads the rows of `config.dataset` and embeds their questions; marks the version used
    /// by `used_by` (a route), so that it never changes under the examples served from it.
    pub async fn load<E: Embed>(
        store: &Store,
        config: &ExamplesConfig,
        embedder: &E,
        used_by: &str,
    ) -> Result<FewShotIndex, DatasetError> {
        let (name, version) = versions::parse_reference(&config.dataset)?;
        let version = versions::info(store, &name, version).await?.version;
        let rows: Vec<Example> = versions::rows(store, &name, version)
            .await?
            .into_iter()
            .filter(|r| config.split.as_deref().is_none_or(|s| Split::parse(s) == Some(r.split)))
            .collect();
        let index = FewShotIndex::build(format!("{name}@{version}"), config, rows, embedder)
            .await
            .map_err(DatasetError::Curation)?;
        versions::mark_used(store, &name, version, used_by).await?;
        Ok(index)
    }

    /// An index over `rows` (those that can be examples).
    pub async fn build<E: Embed>(
        dataset: String,
        config: &ExamplesConfig,
        rows: Vec<Example>,
        embedder: &E,
    ) -> Result<FewShotIndex, String> {
        let usable: Vec<(Example, String)> = rows
            .into_iter()
            .filter(|r| text_only(&r.messages) && text_only(std::slice::from_ref(&r.output)))
            .filter_map(|r| fungible_types::last_user_text(&r.messages).map(|q| (r, q)))
            .collect();
        let questions = usable.iter().map(|(_, q)| q.clone()).collect();
        let vectors = embed_normalized(embedder, &config.embedding_model, questions).await?;
        let entries = usable
            .into_iter()
            .zip(vectors)
            .map(|((row, _), vector)| {
                let mut turns: Vec<Message> = row.messages.into_iter().filter(|m| m.role != Role::System).collect();
                turns.push(row.output);
                Entry { id: row.id, turns, vector }
            })
            .collect();
        Ok(FewShotIndex { dataset, config: config.clone(), entries })
    }

    /// Rows that can be examples.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `req` with its nearest examples inserted after its system messages (the nearest last,
    /// next to the question), and which they were; `None` when the request has no text
    /// question or no row is near enough.
    pub async fn augment<E: Embed>(&self, req: &ChatRequest, embedder: &E) -> Result<Option<(ChatRequest, Retrieved)>, String> {
        let Some(question) = fungible_types::last_user_text(&req.messages) else { return Ok(None) };
        if self.entries.is_empty() {
            return Ok(None);
        }
        let query = embed_normalized(embedder, &self.config.embedding_model, vec![question]).await?;
        let Some(query) = query.first() else { return Ok(None) };
        let nearest = self.nearest(query);
        if nearest.is_empty() {
            return Ok(None);
        }
        let mut out = req.clone();
        let at = out.messages.iter().take_while(|m| m.role == Role::System).count();
        let examples = nearest.iter().rev().flat_map(|&(i, _)| self.entries[i].turns.iter().cloned());
        out.messages.splice(at..at, examples);
        let rows = nearest.iter().map(|&(i, d)| (self.entries[i].id.clone(), d)).collect();
        Ok(Some((out, Retrieved { dataset: self.dataset.clone(), rows })))
    }

    /// The `k` nearest entries within `max_distance`, nearest first (ties: dataset order).
    fn nearest(&self, query: &[f32]) -> Vec<(usize, f32)> {
        let mut scored: Vec<(usize, f32)> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, 1.0 - dot(&e.vector, query)))
            .filter(|&(_, d)| d <= self.config.max_distance)
            .collect();
        scored.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        scored.truncate(self.config.k);
        scored
    }
}

/// The index of every route that has `examples`, as `fungible serve` and `fungible eval` use
/// them: built once at start, then asked for each request. An eval may also add an *arm*: a
/// name of its own (`openai/gpt-4.1-mini+examples`) whose requests get examples and then go
/// to another model, so a model with and without retrieval are compared in one run.
#[derive(Clone, Default)]
pub struct Examples {
    routes: BTreeMap<String, Arc<FewShotIndex>>,
    /// Arm name -> the model its requests go to.
    arms: BTreeMap<String, String>,
}

impl std::fmt::Debug for Examples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.routes.iter().map(|(route, index)| (route, &index.dataset))).finish()
    }
}

impl Examples {
    /// Builds the index of every route in `routes` that has `examples` (a missing dataset or
    /// embedding model is an error naming `models.NAME.examples`) and marks each version used
    /// by `route:NAME`.
    pub async fn load<E: Embed>(store: &Store, embedder: &E, routes: &BTreeMap<String, RouteConfig>) -> Result<Examples, String> {
        let mut out = BTreeMap::new();
        for (route, config) in routes {
            let Some(examples) = &config.examples else { continue };
            let index = FewShotIndex::load(store, examples, embedder, &format!("route:{route}"))
                .await
                .map_err(|e| format!("models.{route}.examples: {e}"))?;
            tracing::info!(route, dataset = %index.dataset, rows = index.len(), "few-shot examples ready");
            out.insert(route.clone(), Arc::new(index));
        }
        Ok(Examples { routes: out, arms: BTreeMap::new() })
    }

    /// Requests for `name` get `index`'s examples and are then sent to `model`.
    pub fn with_arm(mut self, name: String, model: String, index: FewShotIndex) -> Examples {
        self.routes.insert(name.clone(), Arc::new(index));
        self.arms.insert(name, model);
        self
    }

    /// The model an arm's requests go to (`None`: `name` is no arm).
    pub fn arm_model(&self, name: &str) -> Option<&str> {
        self.arms.get(name).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// `req` with its route's nearest examples, when its model is a route with examples and
    /// some are near enough. An embedding failure leaves the request as it was (the answer
    /// matters more than its examples) and is logged.
    pub async fn augment<E: Embed>(&self, req: &ChatRequest, embedder: &E) -> Option<(ChatRequest, Retrieved)> {
        let index = self.routes.get(&req.model)?;
        match index.augment(req, embedder).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(route = %req.model, "no few-shot examples for this request: {e}");
                None
            }
        }
    }
}

/// Whether every message is plain text: no tool calls, tool results, images or audio.
fn text_only(messages: &[Message]) -> bool {
    messages.iter().all(|m| {
        m.role != Role::Tool && m.tool_calls.is_empty() && m.content.iter().all(|p| matches!(p, ContentPart::Text { .. }))
    })
}

#[cfg(test)]
mod tests {
    use fungible_types::ToolCall;

    use super::*;
    use crate::example::Source;

    /// Embeds a text as counts of a few words, so distances are known.
    struct Words;

    impl Embed for Words {
        async fn embed(&self, _model: &str, texts: Vec<String>) -> Result<Vec<Vec<f32>>, String> {
            Ok(texts
                .iter()
                .map(|t| ["refund", "invoice", "password", "weather"].iter().map(|w| t.matches(w).count() as f32 + 0.01).collect())
                .collect())
        }
    }

    fn row(id: &str, question: &str, answer: &str) -> Example {
        Example::new(
            id.to_owned(),
            Source::Manual,
            vec![Message::text(Role::System, "You are support."), Message::text(Role::User, question)],
            Vec::new(),
            Message::text(Role::Assistant, answer),
        )
    }

    fn config(k: usize, max_distance: f32) -> ExamplesConfig {
        ExamplesConfig { dataset: "support".into(), split: Some("train".into()), k, max_distance, embedding_model: "m".into() }
    }

    fn request(question: &str) -> ChatRequest {
        ChatRequest {
            model: "support".into(),
            messages: vec![Message::text(Role::System, "Be brief."), Message::text(Role::User, question)],
            ..ChatRequest::default()
        }
    }

    #[tokio::test]
    async fn the_nearest_rows_become_turns_after_the_system_prompt() {
        let mut tool_row = row("tool", "refund please", "");
        tool_row.output.tool_calls.push(ToolCall { id: "c1".into(), name: "refund".into(), arguments: "{}".into() });
        let rows = vec![
            row("a", "I want a refund", "Refunds take 5 days."),
            row("b", "refund for my invoice", "Send the invoice number."),
            row("c", "reset my password", "Use the reset link."),
            tool_row,
        ];
        let index = FewShotIndex::build("support@1".into(), &config(2, 0.5), rows, &Words).await.unwrap();
        assert_eq!(index.len(), 3, "the row with a tool call is no example");

        let (req, used) = index.augment(&request("can I get a refund"), &Words).await.unwrap().expect("examples");
        assert_eq!(used.rows.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(used.tag(), "support@1:a,b");
        let texts: Vec<(Role, String)> = req.messages.iter().map(|m| (m.role, m.joined_text())).collect();
        assert_eq!(
            texts,
            [
                (Role::System, "Be brief.".into()),
                (Role::User, "refund for my invoice".into()),
                (Role::Assistant, "Send the invoice number.".into()),
                (Role::User, "I want a refund".into()),
                (Role::Assistant, "Refunds take 5 days.".into()),
                (Role::User, "can I get a refund".into()),
            ],
            "the nearest example sits next to the question; the rows' own system prompts are not copied"
        );

        // Nothing near enough, or no text question: the request is left alone.
        assert_eq!(index.augment(&request("what is the weather"), &Words).await.unwrap(), None);
        let mut no_question = request("x");
        no_question.messages.pop();
        assert_eq!(index.augment(&no_question, &Words).await.unwrap(), None);
    }
}
