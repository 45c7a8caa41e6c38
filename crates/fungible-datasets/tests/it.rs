//! Datasets end to end on a real store: recorded traffic and feedback → a curated, stored
//! version → edits → exports in every format, on SQLite and (when
//! FUNGIBLE_TEST_POSTGRES_URL is set) PostgreSQL.

use fungible_datasets::versions::{self, DatasetError};
use fungible_datasets::{Curation, Embed, Example, FeedbackFilter, Format, Selection, Source, Split};
use fungible_store::{Feedback, FeedbackTarget, InferenceRecord, Store};
use fungible_types::{Message, Role, Tool, ToolCall};
use serde_json::{Value, json};

fn record(id: &str, route: &str, question: &str, answer: Option<&str>, tags: Value) -> InferenceRecord {
    let messages = vec![Message::text(Role::System, "Be brief."), Message::text(Role::User, question)];
    InferenceRecord { tags, ..fungible_store::testing::chat_record(id, route, messages, answer) }
}

fn feedback(id: &str, target: &str, boolean: Option<bool>, demonstration: Option<Value>) -> Feedback {
    Feedback {
        id: id.into(),
        time_ms: 2_000,
        target: FeedbackTarget::Inference,
        target_id: target.into(),
        boolean,
        score: None,
        comment: None,
        demonstration,
    }
}

/// Inputs with the same words embed the same; nothing else is near.
struct Words;
impl Embed for Words {
    async fn embed(&self, _model: &str, texts: Vec<String>) -> Result<Vec<Vec<f32>>, String> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut words: Vec<String> =
                    t.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_owned).collect();
                words.sort();
                words.dedup();
                let digest = words.join(" ");
                // A one-hot vector per distinct word set.
                let slot = digest.bytes().fold(0usize, |h, b| (h * 31 + b as usize) % 1024);
                let mut v = vec![0.0; 1024];
                v[slot] = 1.0;
                v
            })
            .collect())
    }
}

async fn stores() -> Vec<(Store, Option<fungible_store::testing::PgSchema>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&fungible_store::sqlite_url(&dir.path().join("s.db"))).await.unwrap();
    let mut out = vec![(sqlite, None, dir)];
    if let Some(schema) = fungible_store::testing::PgSchema::from_env().await.unwrap() {
        let pg = Store::open(schema.url()).await.unwrap();
        out.push((pg, Some(schema), tempfile::tempdir().unwrap()));
    }
    out
}

async fn seed(store: &Store) {
    store
        .insert(&[
            record("01", "support", "How do I reset my password?", Some("Click reset."), json!({"team": "web"})),
            record("02", "support", "Where is my invoice?", Some("No idea."), json!({"team": "billing"})),
            record("03", "support", "How do I reset my password?", Some("Use the link in Settings > Security."), json!({"team": "web"})),
            record("04", "support", "Can I pay by card? My card is 4111 1111 1111 1111", Some("Yes."), json!({"team": "billing"})),
            record("05", "support", "Is there an API?", None, json!({})),
            record("06", "other", "Unrelated?", Some("Yes."), json!({})),
            record("07", "support", "reset my password how do I", Some("Settings."), json!({"team": "web"})),
        ])
        .await
        .unwrap();
    // 01: thumbs down; 03: thumbs up; 02: a demonstration (the recorded answer was bad).
    store.insert_feedback(&feedback("f1", "01", Some(false), None)).await.unwrap();
    store.insert_feedback(&feedback("f2", "03", Some(true), None)).await.unwrap();
    store
        .insert_feedback(&feedback("f3", "02", Some(false), Some(json!("Invoices are under Billing > History."))))
        .await
        .unwrap();
    store.insert_feedback(&feedback("f4", "04", Some(true), None)).await.unwrap();
}

#[tokio::test]
async fn traffic_and_feedback_become_a_curated_versioned_dataset() {
    for (store, _schema, _dir) in stores().await {
        seed(&store).await;
        let selection = Selection { route: Some("support".into()), ..Selection::default() };
        let curation = Curation { scrub_pii: true, validation_fraction: 0.25, ..Curation::default() };
        let info = versions::build(&store, "support", Some("first cut"), selection.clone(), curation.clone(), Some(&Words))
            .await
            .unwrap();
        assert_eq!(info.version, 1);
        let rows = versions::rows(&store, "support", 1).await.unwrap();
        let by_id = |id: &str| rows.iter().find(|r| r.inference_id.as_deref() == Some(id));

        // 05 failed and 06 is another route: never rows. 01 and 03 ask the same thing: the
        // approved answer (03) stays, with 01's rejected answer as its pair. 07 asks it with
        // the same words in another order: a near duplicate.
        let mut kept: Vec<&str> = rows.iter().filter_map(|r| r.inference_id.as_deref()).collect();
        kept.sort();
        assert_eq!(kept, ["02", "03", "04"]);
        assert_eq!((info.report.curation.exact_duplicates, info.report.curation.near_duplicates), (1, 1));

        let approved = by_id("03").unwrap();
        assert_eq!(approved.source, Source::Recorded);
        assert_eq!(approved.label, Some(1.0));
        assert_eq!(approved.rejected.as_ref().map(Message::joined_text).as_deref(), Some("Click reset."));

        let demonstrated = by_id("02").unwrap();
        assert_eq!(demonstrated.source, Source::Demonstration);
        assert_eq!(demonstrated.output.joined_text(), "Invoices are under Billing > History.");
        assert_eq!(demonstrated.rejected.as_ref().map(Message::joined_text).as_deref(), Some("No idea."));
        assert_eq!(demonstrated.tags.get("team"), Some(&json!("billing")));

        let carded = by_id("04").unwrap();
        assert_eq!(carded.messages[1].joined_text(), "Can I pay by card? My card is [CARD]");
        assert_eq!(info.report.curation.pii.get("card"), Some(&1));

        let s = &info.report.stats;
        assert_eq!((s.rows, s.train_rows + s.validation_rows, s.validation_rows), (3, 3, 1));
        assert_eq!(s.sources.get("demonstration"), Some(&1));
        assert_eq!(s.preference_pairs, 2);
        assert_eq!(s.tags.get("team=web"), Some(&1));

        // The same selection and seed give the same split.
        let again = versions::build(&store, "support", None, selection, curation, Some(&Words)).await.unwrap();
        assert_eq!(again.version, 2);
        let split_of = |rows: &[Example]| {
            let mut v: Vec<(String, Split)> = rows.iter().map(|r| (r.id.clone(), r.split)).collect();
            v.sort();
            v
        };
        assert_eq!(split_of(&rows), split_of(&versions::rows(&store, "support", 2).await.unwrap()));

        // Feedback filters: only demonstrations; only approved answers (01's pair still found).
        let demos = versions::build(
            &store,
            "demos",
            None,
            Selection { feedback: Some(FeedbackFilter::Demonstration), ..Selection::default() },
            Curation { near_duplicates: None, ..Curation::default() },
            None::<&Words>,
        )
        .await
        .unwrap();
        assert_eq!(demos.rows, 1);
        assert_eq!(demos.report.skipped.feedback, 5);
        let good = versions::build(
            &store,
            "good",
            None,
            Selection { feedback: Some(FeedbackFilter::Positive), tags: vec!["team=web".into()], ..Selection::default() },
            Curation { near_duplicates: None, ..Curation::default() },
            None::<&Words>,
        )
        .await
        .unwrap();
        let good_rows = versions::rows(&store, "good", 1).await.unwrap();
        assert_eq!(good_rows.len(), 1);
        assert_eq!(good_rows[0].rejected.as_ref().map(Message::joined_text).as_deref(), Some("Click reset."));
        assert_eq!(good.report.curation.paired, 1);

        // Nothing matches: a clear error, nothing stored.
        let none = versions::build(
            &store,
            "empty",
            None,
            Selection { route: Some("nope".into()), ..Selection::default() },
            Curation::default(),
            Some(&Words),
        )
        .await;
        assert!(matches!(none, Err(DatasetError::Empty(_))), "{none:?}");
        assert!(matches!(versions::info(&store, "empty", None).await, Err(DatasetError::NotFound(_))));
    }
}

#[tokio::test]
async fn edits_go_to_a_copy_once_a_version_is_used() {
    for (store, _schema, _dir) in stores().await {
        let row = |id: &str, q: &str, a: &str| {
            (Example::new(id.into(), Source::Manual, vec![Message::text(Role::User, q)], vec![], fungible_datasets::assistant(Some(a.into()), vec![])), None)
        };
        let info = versions::put_rows(&store, "manual", vec![row("a", "1+1?", "2"), row("b", "2+2?", "4")]).await.unwrap();
        assert_eq!((info.version, info.rows), (1, 2));
        // Unused: edited in place.
        let info = versions::put_rows(&store, "manual", vec![row("a", "1+1?", "two")]).await.unwrap();
        assert_eq!((info.version, info.rows), (1, 2));
        assert_eq!(versions::rows(&store, "manual", 1).await.unwrap()[0].output.joined_text(), "two");
        // A split given is kept; a replaced row keeps its own unless one is given.
        versions::put_rows(&store, "manual", vec![(row("b", "2+2?", "4").0, Some(Split::Validation))]).await.unwrap();
        versions::put_rows(&store, "manual", vec![row("b", "2+2?", "four")]).await.unwrap();
        let b = versions::rows(&store, "manual", 1).await.unwrap().into_iter().find(|r| r.id == "b").unwrap();
        assert_eq!((b.split, b.output.joined_text().as_str()), (Split::Validation, "four"));

        versions::mark_used(&store, "manual", 1, "ftjob_123").await.unwrap();
        // Marking a use again, or from several instances at once (a route's examples at
        // start), is no error and one use.
        let (x, y, z) = tokio::join!(
            versions::mark_used(&store, "manual", 1, "route:support"),
            versions::mark_used(&store, "manual", 1, "route:support"),
            versions::mark_used(&store, "manual", 1, "ftjob_123"),
        );
        x.unwrap();
        y.unwrap();
        z.unwrap();
        assert_eq!(versions::info(&store, "manual", Some(1)).await.unwrap().used_by, ["ftjob_123", "route:support"]);
        let info = versions::put_rows(&store, "manual", vec![row("c", "3+3?", "6")]).await.unwrap();
        assert_eq!((info.version, info.rows), (2, 3), "a used version is copied, then edited");
        let info = versions::remove_row(&store, "manual", "a").await.unwrap();
        assert_eq!((info.version, info.rows), (2, 2));
        assert_eq!(versions::info(&store, "manual", Some(1)).await.unwrap().rows, 2, "version 1 never changed");
        assert_eq!(info.report.stats.rows, 2);
        assert!(matches!(versions::remove_row(&store, "manual", "zzz").await, Err(DatasetError::NoRow { .. })));

        // Bad rows and names are refused.
        let bad = Example::new("x".into(), Source::Manual, vec![Message::text(Role::System, "no user")], vec![], fungible_datasets::assistant(Some("a".into()), vec![]));
        assert!(matches!(versions::put_rows(&store, "manual", vec![(bad, None)]).await, Err(DatasetError::BadInput(_))));
        assert!(matches!(versions::put_rows(&store, "../etc", vec![row("a", "q", "a")]).await, Err(DatasetError::BadInput(_))));
    }
}

fn tool_row() -> Example {
    let mut call = fungible_datasets::assistant(None, vec![ToolCall { id: "call_abcdefghijkl".into(), name: "get_weather".into(), arguments: "{\"city\":\"Paris\"}".into() }]);
    call.content.clear();
    let mut result = Message::text(Role::Tool, "{\"temp\": 21}");
    result.tool_call_id = Some("call_abcdefghijkl".into());
    Example::new(
        "tools".into(),
        Source::Manual,
        vec![Message::text(Role::System, "You are a weather bot."), Message::text(Role::User, "Weather in Paris?"), call, result],
        vec![Tool::new("get_weather", Some("Current weather.".into()), json!({"type": "object", "properties": {"city": {"type": "string"}}}))],
        fungible_datasets::assistant(Some("21 °C in Paris.".into()), vec![]),
    )
}

fn lines(jsonl: &str) -> Vec<Value> {
    jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn each_format_is_what_its_provider_documents() {
    let mut rows: Vec<Example> = (0..12)
        .map(|i| {
            let mut e = Example::new(
                format!("r{i}"),
                Source::Recorded,
                vec![Message::text(Role::User, format!("Question {i}?"))],
                vec![],
                fungible_datasets::assistant(Some(format!("Answer {i}.")), vec![]),
            );
            e.rejected = Some(fungible_datasets::assistant(Some("Dunno.".into()), vec![]));
            e
        })
        .collect();
    rows.push(tool_row());

    // OpenAI SFT: messages end with the answer; earlier assistant turns are not trained on.
    let openai = fungible_datasets::export::export(&rows, None, Format::OpenAi, false).unwrap();
    let last = lines(&openai.jsonl).pop().unwrap();
    assert_eq!(last["messages"][2]["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(last["messages"][2]["weight"], 0);
    assert_eq!(last["messages"][3]["role"], "tool");
    assert_eq!(last["messages"][4], json!({"role": "assistant", "content": "21 °C in Paris."}));
    assert_eq!(last["tools"][0]["type"], "function");
    assert_eq!(lines(&openai.jsonl)[0], json!({"messages": [{"role": "user", "content": "Question 0?"}, {"role": "assistant", "content": "Answer 0."}]}));

    // DPO: the tool row has no rejected answer, so it must be skipped or fail the export.
    let err = fungible_datasets::export::export(&rows, None, Format::OpenAiDpo, false).unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert!(err.problems[0].problem.contains("rejected"), "{err}");
    let dpo = fungible_datasets::export::export(&rows, None, Format::OpenAiDpo, true).unwrap();
    assert_eq!(dpo.rows, 12);
    assert_eq!(
        lines(&dpo.jsonl)[0],
        json!({"input": {"messages": [{"role": "user", "content": "Question 0?"}]}, "preferred_output": [{"role": "assistant", "content": "Answer 0."}], "non_preferred_output": [{"role": "assistant", "content": "Dunno."}]})
    );

    // Mistral: tool call ids of exactly 9 characters, calls and results still matching.
    let mistral = lines(&fungible_datasets::export::export(&rows, None, Format::Mistral, false).unwrap().jsonl).pop().unwrap();
    let id = mistral["messages"][2]["tool_calls"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 9);
    assert_eq!(mistral["messages"][3]["tool_call_id"], json!(id));

    // Vertex: system instruction apart, user/model contents, function call and response.
    let vertex = lines(&fungible_datasets::export::export(&rows, None, Format::Vertex, false).unwrap().jsonl).pop().unwrap();
    assert_eq!(vertex["systemInstruction"]["parts"][0]["text"], "You are a weather bot.");
    let roles: Vec<&str> = vertex["contents"].as_array().unwrap().iter().map(|c| c["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "model", "user", "model"]);
    assert_eq!(vertex["contents"][1]["parts"][0]["functionCall"]["name"], "get_weather");
    assert!(vertex["contents"][2]["parts"][0]["functionResponse"].is_object());
    assert!(vertex["tools"][0]["functionDeclarations"].is_array());

    // Together: the conversation must alternate.
    let mut doubled = rows[0].clone();
    doubled.messages.push(Message::text(Role::User, "and again?"));
    let err = fungible_datasets::export::export(&[doubled], None, Format::Together, false).unwrap_err();
    assert!(err.problems[0].problem.contains("alternate"), "{err}");

    // Limits: OpenAI takes at least 10 rows and at most 65,536 tokens a row.
    let err = fungible_datasets::export::export(&rows[..3], None, Format::OpenAi, false).unwrap_err();
    assert!(err.file_problems[0].contains("at least 10 rows"), "{err}");
    let mut long = rows.clone();
    long[0].tokens = 70_000;
    let err = fungible_datasets::export::export(&long, None, Format::OpenAi, false).unwrap_err();
    assert_eq!(err.problems[0].row_id, "r0");
    assert!(fungible_datasets::export::export(&long, None, Format::Vertex, false).is_ok(), "Vertex takes 131,072");

    // Splits: only the rows of one.
    let mut split_rows = rows.clone();
    split_rows[0].split = Split::Validation;
    let validation = fungible_datasets::export::export(&split_rows, Some(Split::Validation), Format::Fungible, false).unwrap();
    assert_eq!(validation.rows, 1);
    let fungible_row = &lines(&validation.jsonl)[0];
    assert_eq!((fungible_row["id"].as_str(), fungible_row["split"].as_str()), (Some("r0"), Some("validation")));
    assert_eq!(fungible_row["rejected"], json!({"role": "assistant", "content": "Dunno."}));
}
