//! Tuning jobs end to end against the mock's OpenAI, Mistral and Together fine-tuning APIs:
//! plan (nothing sent), launch, poll to the end, serve the model under its alias and in a
//! route, a failed and a cancelled job, a restart mid-job, and bad input that uploads nothing.

use fungible_datasets::{Example, Source, Split, versions};
use fungible_gateway::{ConfigFile, Gateway, GatewayConfig};
use fungible_mock::{Fallback, MockUpstream};
use fungible_store::Store;
use fungible_tune::{LaunchRequest, Method, Status, TuneError, Tuner};
use fungible_types::{Message, Role};
use serde_json::Map;

struct World {
    mock: MockUpstream,
    store: Store,
    config: GatewayConfig,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let mock = MockUpstream::start(Fallback::Fail).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&fungible_store::sqlite_url(&dir.path().join("s.db"))).await.unwrap();
    let toml = format!(
        "[providers.openai]\nbase_url = \"{0}/v1\"\n[providers.mistral]\nbase_url = \"{0}/mistral/v1\"\n[providers.together]\nbase_url = \"{0}/v1\"\n\
         [providers.fireworks]\nbase_url = \"{0}/fireworks/inference/v1\"\n[tune]\nfireworks_account = \"acme\"\n\
         [providers.nokey]\nkind = \"openai\"\nbase_url = \"{0}/v1\"\napi_key_env = \"NOKEY_API_KEY\"\n[models.support]\ntarget = \"openai/gpt-4.1-mini\"\n",
        mock.url()
    );
    let file = ConfigFile::parse(&toml, "t.toml").unwrap();
    let env = |k: &str| match k {
        "OPENAI_API_KEY" => Some("sk-test-openai-0123456789".to_owned()),
        "MISTRAL_API_KEY" => Some("mistral-test-0123456789".to_owned()),
        "TOGETHER_API_KEY" => Some("together-test-0123456789".to_owned()),
        "FIREWORKS_API_KEY" => Some("fw-test-0123456789".to_owned()),
        _ => None,
    };
    let config = GatewayConfig::resolve(file, &env).unwrap();
    // Twelve rows, two of them validation.
    let rows: Vec<(Example, Option<Split>)> = (0..12)
        .map(|i| {
            let mut e = Example::new(
                format!("r{i}"),
                Source::Manual,
                vec![Message::text(Role::User, format!("What is {i} + {i}?"))],
                vec![],
                fungible_datasets::assistant(Some(format!("{}", i + i)), vec![]),
            );
            e.rejected = Some(fungible_datasets::assistant(Some("No idea.".into()), vec![]));
            (e, Some(if i < 10 { Split::Train } else { Split::Validation }))
        })
        .collect();
    versions::put_rows(&store, "sums", rows).await.unwrap();
    World { mock, store, config, _dir: dir }
}

fn request(provider: &str, model: &str) -> LaunchRequest {
    LaunchRequest {
        provider: provider.into(),
        model: model.into(),
        dataset: "sums".into(),
        method: Method::Sft,
        hyperparameters: Map::new(),
        suffix: Some("sums".into()),
        alias: None,
        eval: None,
    }
}

async fn run_to_the_end(tuner: &Tuner, id: &str) -> fungible_tune::Job {
    for _ in 0..10 {
        tuner.poll_due().await.unwrap();
        let job = tuner.job(id).await.unwrap();
        if job.status.is_terminal() {
            return job;
        }
    }
    panic!("job {id} did not finish in 10 polls");
}

#[tokio::test]
async fn a_job_on_each_provider_runs_to_a_served_model() {
    for (provider, model, model_prefix) in [
        ("openai", "gpt-4.1-mini-2025-04-14", "ft:gpt-4.1-mini-2025-04-14:fungible-mock:sums:"),
        ("mistral", "open-mistral-7b", "ft:open-mistral-7b:"),
        ("together", "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", "fungible-mock/Meta-Llama-3.1-8B-Instruct-Reference-sums-"),
        ("fireworks", "llama-v3p1-8b-instruct", "accounts/acme/models/llama-v3p1-8b-instruct-"),
    ] {
        let w = world().await;
        let tuner = Tuner::new(&w.config, w.store.clone());
        let plan = tuner.plan(request(provider, model)).await.unwrap();
        assert_eq!(w.mock.request_count(), 0, "{provider}: planning sends nothing");
        assert_eq!(plan.train_rows + plan.validation_rows, 12, "{provider}");
        assert!(plan.dataset_tokens > 0);
        if provider == "openai" {
            // 3 epochs (auto) at $5 per million.
            assert_eq!(plan.price_per_million, Some(5.0));
            let expected = plan.dataset_tokens as f64 * 3.0 * 5.0 / 1e6;
            assert!((plan.estimated_cost.unwrap() - expected).abs() < 1e-12);
        } else {
            assert_eq!(plan.estimated_cost, None, "{provider}: an unknown price is unknown, not zero");
        }
        assert!(plan.alias.starts_with("sums@ft-"), "{}", plan.alias);

        let job = tuner.launch(plan).await.unwrap();
        assert!(!job.status.is_terminal());
        let uploads: Vec<_> = w.mock.received().into_iter().filter(|r| r.uri.contains("/files") || r.uri.ends_with(":upload")).collect();
        assert_eq!(uploads.len(), 2, "{provider}: training and validation files");
        assert!(String::from_utf8_lossy(&uploads[0].body).contains("What is"), "{provider}: the rows went up");
        let info = versions::info(&w.store, "sums", Some(1)).await.unwrap();
        assert_eq!(info.used_by, [job.id.clone()], "the version is now immutable");

        let done = run_to_the_end(&tuner, &job.id).await;
        assert_eq!(done.status, Status::Succeeded, "{provider}: {done:?}");
        let tuned = done.fine_tuned_model.clone().unwrap();
        assert!(tuned.starts_with(model_prefix), "{provider}: {tuned}");
        assert!(done.trained_tokens.is_some_and(|t| t > 0), "{provider}");
        if provider != "fireworks" {
            // Fireworks reports progress in percent, not steps.
            assert!(!done.losses().is_empty(), "{provider}: steps are reported: {:?}", done.events);
        }
        if !matches!(provider, "together" | "fireworks") {
            // Together reports steps, and its losses only to Weights & Biases.
            assert!(done.losses().iter().any(|(_, train, _)| train.is_some()), "{provider}: {:?}", done.events);
        }
        if provider == "openai" {
            assert!(done.cost.is_some_and(|c| c > 0.0));
        }

        // Served at once: the gateway takes the overlays without a restart.
        let gateway = Gateway::new(&w.config).unwrap();
        gateway.set_overlays(tuner.overlays().await.unwrap());
        let (_, target) = gateway.resolve(&done.alias).unwrap();
        assert_eq!((target.provider.as_str(), target.model.as_str()), (provider, tuned.as_str()));
        assert!(gateway.models().iter().any(|m| m.id == done.alias));

        // Promoted into a configured route: 10% of its first picks.
        tuner.promote(&job.id, "support", 10).await.unwrap();
        gateway.set_overlays(tuner.overlays().await.unwrap());
        let shares: Vec<(String, Option<u32>)> =
            gateway.route_status().into_iter().filter(|s| s.route == "support").map(|s| (s.target.to_string(), s.share)).collect();
        assert_eq!(shares, [("openai/gpt-4.1-mini".to_owned(), None), (format!("{provider}/{tuned}"), Some(10))]);
    }
}

#[tokio::test]
async fn failed_and_cancelled_jobs_end_so_and_serve_nothing() {
    let w = world().await;
    let tuner = Tuner::new(&w.config, w.store.clone());
    let failing = LaunchRequest { suffix: Some("will-fail".into()), ..request("openai", "gpt-4.1-mini-2025-04-14") };
    let job = tuner.launch(tuner.plan(failing).await.unwrap()).await.unwrap();
    let failed = run_to_the_end(&tuner, &job.id).await;
    assert_eq!(failed.status, Status::Failed);
    assert!(failed.error.as_deref().is_some_and(|e| e.contains("too few usable examples")), "{failed:?}");
    assert!(failed.fine_tuned_model.is_none());

    let job = tuner.launch(tuner.plan(request("together", "meta-llama/Llama-3.2-3B-Instruct")).await.unwrap()).await.unwrap();
    let cancelled = tuner.cancel(&job.id).await.unwrap();
    assert_eq!(cancelled.status, Status::Cancelled);
    assert!(matches!(tuner.cancel(&job.id).await, Err(TuneError::BadInput(_))), "a finished job cannot be cancelled");
    assert!(tuner.poll_due().await.unwrap().is_empty(), "finished jobs are not polled");
    assert!(tuner.overlays().await.unwrap().is_empty());
    assert!(matches!(tuner.promote(&job.id, "support", 10).await, Err(TuneError::BadInput(_))));
}

#[tokio::test]
async fn polling_resumes_after_a_restart_and_one_instance_polls_a_job() {
    let w = world().await;
    let first = Tuner::new(&w.config, w.store.clone()).with_lease_ms(60_000);
    let job = first.launch(first.plan(request("openai", "gpt-4.1-nano-2025-04-14")).await.unwrap()).await.unwrap();
    let now = fungible_store::now_ms();
    assert_eq!(first.poll_due_at(now).await.unwrap().len(), 1);
    drop(first); // the instance dies holding the lease

    let second = Tuner::new(&w.config, w.store.clone()).with_lease_ms(60_000);
    let reads = w.mock.received().iter().filter(|r| r.method == "GET" && !r.uri.contains("events")).count();
    assert!(second.poll_due_at(now + 1_000).await.unwrap().is_empty(), "still held by the first");
    assert_eq!(w.mock.received().iter().filter(|r| r.method == "GET" && !r.uri.contains("events")).count(), reads, "not polled twice");
    let mut t = now + 61_000;
    for _ in 0..10 {
        second.poll_due_at(t).await.unwrap();
        t += 1;
        if second.job(&job.id).await.unwrap().status.is_terminal() {
            break;
        }
    }
    assert_eq!(second.job(&job.id).await.unwrap().status, Status::Succeeded, "the second instance took over");
}

#[tokio::test]
async fn bad_launches_are_refused_before_anything_is_uploaded() {
    let w = world().await;
    let tuner = Tuner::new(&w.config, w.store.clone());
    let refused = |r: Result<fungible_tune::Plan, TuneError>| match r {
        Err(TuneError::BadInput(m)) => m,
        Err(TuneError::Dataset(e)) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let m = refused(tuner.plan(request("anthropic", "claude")).await);
    assert!(m.contains("not configured"), "{m}");
    let m = refused(tuner.plan(request("nokey", "gpt-4.1-mini")).await);
    assert!(m.contains("no API key"), "{m}");
    let m = refused(tuner.plan(LaunchRequest { method: Method::Dpo, ..request("mistral", "open-mistral-7b") }).await);
    assert!(m.contains("DPO"), "{m}");
    let m = refused(tuner.plan(LaunchRequest { dataset: "nope".into(), ..request("openai", "gpt-4.1-mini") }).await);
    assert!(m.contains("nope"), "{m}");
    let m = refused(tuner.plan(LaunchRequest { suffix: Some("no spaces please".into()), ..request("openai", "gpt-4.1-mini") }).await);
    assert!(m.contains("suffix"), "{m}");
    // Too few rows for OpenAI once split: 3 rows.
    let few: Vec<(Example, Option<Split>)> = (0..3)
        .map(|i| {
            let e = Example::new(format!("f{i}"), Source::Manual, vec![Message::text(Role::User, "q")], vec![], fungible_datasets::assistant(Some("a".into()), vec![]));
            (e, Some(Split::Train))
        })
        .collect();
    versions::put_rows(&w.store, "few", few).await.unwrap();
    let m = refused(tuner.plan(LaunchRequest { dataset: "few".into(), ..request("openai", "gpt-4.1-mini") }).await);
    assert!(m.contains("at least 10 rows"), "{m}");
    let m = refused(tuner.plan(LaunchRequest { alias: Some("support".into()), ..request("openai", "gpt-4.1-mini") }).await);
    assert!(m.contains("is a route"), "{m}");
    assert_eq!(w.mock.request_count(), 0, "nothing left the machine");

    // An alias another job serves under is refused.
    let mine = LaunchRequest { alias: Some("mine".into()), ..request("openai", "gpt-4.1-mini") };
    tuner.launch(tuner.plan(mine.clone()).await.unwrap()).await.unwrap();
    let m = refused(tuner.plan(mine).await);
    assert!(m.contains("another job"), "{m}");

    // A version edited between the plan and the launch is not launched.
    let rows: Vec<(Example, Option<Split>)> = (0..12)
        .map(|i| (Example::new(format!("e{i}"), Source::Manual, vec![Message::text(Role::User, format!("q{i}"))], vec![], fungible_datasets::assistant(Some("a".into()), vec![])), Some(Split::Train)))
        .collect();
    versions::put_rows(&w.store, "fresh", rows.clone()).await.unwrap();
    let plan = tuner.plan(LaunchRequest { dataset: "fresh@1".into(), ..request("openai", "gpt-4.1-mini") }).await.unwrap();
    versions::put_rows(&w.store, "fresh", vec![(Example { output: fungible_datasets::assistant(Some("changed".into()), vec![]), ..rows[0].0.clone() }, None)]).await.unwrap();
    let before = w.mock.request_count();
    let err = tuner.launch(plan).await.unwrap_err();
    assert!(err.to_string().contains("changed since it was planned"), "{err}");
    assert_eq!(w.mock.request_count(), before, "nothing uploaded");
    assert!(versions::info(&w.store, "fresh", Some(1)).await.unwrap().used_by.is_empty(), "the mark was taken back");

    // Fireworks tunes under an account.
    let mut config = w.config.clone();
    config.tune_fireworks_account = None;
    let m = refused(Tuner::new(&config, w.store.clone()).plan(request("fireworks", "llama-v3p1-8b-instruct")).await);
    assert!(m.contains("fireworks_account"), "{m}");

    // A provider that refuses the key: the provider's words, never the key.
    let mut config = w.config.clone();
    for p in &mut config.providers {
        if p.name == "openai" {
            p.api_key = Some(fungible_providers::Secret::new(" "));
        }
    }
    let tuner = Tuner::new(&config, w.store.clone());
    let err = tuner.launch(tuner.plan(request("openai", "gpt-4.1-mini")).await.unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    assert_eq!(versions::info(&w.store, "sums", Some(1)).await.unwrap().used_by.len(), 1, "only the launched job uses it");
}
