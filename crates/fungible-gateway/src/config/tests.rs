use super::*;
#[cfg(feature = "local")]
use fungible_providers::local::WeightType;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    move |k| map.get(k).cloned()
}

fn resolve(toml: &str, env: &[(&str, &str)]) -> Result<GatewayConfig, ConfigError> {
    GatewayConfig::resolve(ConfigFile::parse(toml, "test.toml")?, &env_of(env))
}

#[test]
fn configured_header_values_never_print() {
    let toml = "[providers.corp]\nbase_url = \"http://127.0.0.1:9/v1\"\nheaders = { x-corp-auth = \"sekrit-header-123\" }\n";
    let file = ConfigFile::parse(toml, "test.toml").unwrap();
    assert!(!format!("{file:?}").contains("sekrit"), "{file:?}");
    let cfg = GatewayConfig::resolve(file, &env_of(&[])).unwrap();
    let corp = cfg.providers.iter().find(|p| p.name == "corp").expect("provider");
    assert_eq!(corp.headers[0].0, "x-corp-auth");
    assert_eq!(corp.headers[0].1.expose(), "sekrit-header-123");
    assert!(!format!("{cfg:?}").contains("sekrit"), "{cfg:?}");
}

#[test]
fn zero_config_enables_providers_whose_key_is_set() {
    let cfg = resolve("", &[("ANTHROPIC_API_KEY", "sk-ant"), ("GOOGLE_API_KEY", "g")]).unwrap();
    let names: Vec<_> = cfg.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["anthropic", "gemini"]);
    assert_eq!(cfg.port, 4000);
    assert_eq!(cfg.host, "127.0.0.1");
}

#[test]
fn base_url_comes_from_the_environment() {
    let cfg = resolve("", &[("OPENAI_API_KEY", "k"), ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")]).unwrap();
    assert_eq!(cfg.providers[0].base_url, "http://127.0.0.1:9/v1");
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let err = resolve("[providers.openai]\nbase_urll = \"x\"\n", &[]).unwrap_err().to_string();
    assert!(err.contains("base_urll"), "{err}");
    assert!(err.contains("test.toml"), "{err}");
}

#[test]
fn auth_and_state_sections_are_validated() {
    let cfg = resolve("", &[]).unwrap();
    assert!(!cfg.auth.enabled);
    assert!(cfg.auth.admin_key.is_none());
    assert_eq!(cfg.auth.open_routes, ["/health", "/openapi.json"]);

    let toml = "[auth]\nenabled = true\nkey_cache_ms = 250\n[state]\nredis = \"redis://127.0.0.1:6379\"\n";
    let cfg = resolve(toml, &[("FUNGIBLE_ADMIN_KEY", "0123456789abcdef0")]).unwrap();
    assert!(cfg.auth.enabled);
    assert_eq!(cfg.auth.admin_key.as_ref().map(|k| k.expose()), Some("0123456789abcdef0"));
    assert_eq!(cfg.auth.key_cache, Duration::from_millis(250));
    assert_eq!(cfg.auth.redis.as_deref(), Some("redis://127.0.0.1:6379"));

    // A short admin key is refused without echoing it.
    let err = resolve("", &[("FUNGIBLE_ADMIN_KEY", "short-secret")]).unwrap_err().to_string();
    assert!(err.contains("FUNGIBLE_ADMIN_KEY is shorter than 16"), "{err}");
    assert!(!err.contains("short-secret"), "{err}");
    let err = resolve("[auth]\nopen_routes = [\"/admin/keys\"]\n", &[]).unwrap_err().to_string();
    assert!(err.starts_with("auth.open_routes"), "{err}");
    let err = resolve("[state]\nredis = \"localhost\"\n", &[]).unwrap_err().to_string();
    assert!(err.starts_with("state.redis"), "{err}");
    let err = resolve("[auth]\nenable = true\n", &[]).unwrap_err().to_string();
    assert!(err.contains("enable"), "{err}");
}

#[test]
fn server_connection_settings_have_defaults_and_are_validated() {
    let cfg = resolve("", &[]).unwrap();
    assert_eq!(cfg.connections, ConnectionLimits::default());
    assert_eq!(cfg.connections.header_read_timeout, Duration::from_secs(10));
    assert_eq!(cfg.connections.max_connections, 4096);
    assert!(cfg.allowed_hosts.is_empty());

    let toml = "[server]\nheader_read_timeout_ms = 500\nbody_read_timeout_ms = 700\nidle_timeout_ms = 900\nmax_connections = 8\nshutdown_timeout_ms = 1100\nallowed_hosts = [\"Gateway.Internal\", \"*.example.com\"]\n";
    let cfg = resolve(toml, &[]).unwrap();
    assert_eq!(
        cfg.connections,
        ConnectionLimits {
            header_read_timeout: Duration::from_millis(500),
            body_read_timeout: Duration::from_millis(700),
            idle_timeout: Duration::from_millis(900),
            max_connections: 8,
            shutdown_timeout: Duration::from_millis(1100),
        }
    );
    assert_eq!(cfg.allowed_hosts, ["gateway.internal", "*.example.com"]);

    let err = resolve("[server]\nmax_connections = 0\n", &[]).unwrap_err().to_string();
    assert_eq!(err, "server.max_connections: must be greater than 0");
    let err = resolve("[server]\nheader_read_timeout_ms = 0\n", &[]).unwrap_err().to_string();
    assert_eq!(err, "server.header_read_timeout_ms: must be greater than 0");
    let err = resolve("[server]\nallowed_hosts = [\"localhost\", \"http://gw.example\"]\n", &[]).unwrap_err().to_string();
    assert!(err.starts_with("server.allowed_hosts[1]: \"http://gw.example\" is not a host name"), "{err}");
}

#[test]
fn the_inflight_budget_defaults_to_256_mib_and_fits_two_of_the_largest_bodies() {
    assert_eq!(resolve("", &[]).unwrap().max_inflight_body_bytes, 256 << 20);
    // Raising the body limit raises the default budget with it.
    let cfg = resolve("[server]\nmax_body_bytes = 268435456\n", &[]).unwrap();
    assert_eq!(cfg.max_inflight_body_bytes, 512 << 20);
    let cfg = resolve("[server]\nmax_body_bytes = 1024\nmax_inflight_body_bytes = 4096\n", &[]).unwrap();
    assert_eq!(cfg.max_inflight_body_bytes, 4096);
    let err = resolve("[server]\nmax_inflight_body_bytes = 1048576\n", &[]).unwrap_err().to_string();
    assert!(err.starts_with("server.max_inflight_body_bytes: must be at least twice server.max_body_bytes (67108864)"), "{err}");
}

#[test]
fn custom_provider_needs_a_base_url() {
    let err = resolve("[providers.myvllm]\n", &[]).unwrap_err().to_string();
    assert_eq!(err, "providers.myvllm.base_url: required for a provider that is not built in");
}

#[test]
fn alias_to_a_disabled_provider_fails_at_start() {
    let err = resolve("[models.fast]\ntarget = \"groq/llama\"\n", &[]).unwrap_err().to_string();
    assert!(err.starts_with("models.fast.target: provider \"groq\" is not enabled"), "{err}");
}

#[test]
fn alias_resolves_to_configured_compatible_provider() {
    let toml = r#"
        [providers.local]
        base_url = "http://localhost:8000/v1"
        models = ["qwen"]
        [models.fast]
        target = "local/qwen"
    "#;
    let cfg = resolve(toml, &[]).unwrap();
    let fast = cfg.aliases().find(|(alias, _)| *alias == "fast").map(|(_, t)| t.clone());
    assert_eq!(fast, Some(Target { provider: "local".into(), model: "qwen".into() }));
    assert_eq!(cfg.providers[0].kind, ProviderKind::OpenAiCompatible);
    assert!(cfg.providers[0].api_key.is_none());
}

#[test]
fn target_keeps_slashes_in_the_model() {
    let t = Target::parse("openrouter/anthropic/claude-sonnet-4.5").unwrap();
    assert_eq!(t.provider, "openrouter");
    assert_eq!(t.model, "anthropic/claude-sonnet-4.5");
    assert!(Target::parse("gpt-5").is_none());
    assert!(Target::parse("/x").is_none());
}

#[test]
fn bad_kind_is_named() {
    let err = resolve("[providers.x]\nkind = \"azure\"\nbase_url = \"http://h\"\n", &[]).unwrap_err().to_string();
    assert!(err.starts_with("providers.x.kind: unknown kind \"azure\""), "{err}");
}

#[cfg(feature = "local")]
#[test]
fn local_models_come_from_the_models_dir() {
    let dir = std::env::temp_dir().join(format!("fungible-cfg-local-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(fungible_providers::local::DEFAULT_CHAT_FILE), b"x").unwrap();
    std::fs::write(dir.join("other.gguf"), b"x").unwrap();
    let toml = format!("[local]\nmodels_dir = {:?}\nchat_models = {{ other = \"other.gguf\" }}\n", dir.display().to_string());
    let cfg = resolve(&toml, &[]).unwrap();
    let local = cfg.local.unwrap();
    let names: Vec<_> = local.chat_models.keys().cloned().collect();
    assert_eq!(names, ["other", "smollm2-135m-instruct"]);
    assert!(local.embedding_models.is_empty());

    let toml = format!("[local]\nmodels_dir = {:?}\nchat_models = {{ gone = \"gone.gguf\" }}\n", dir.display().to_string());
    let err = resolve(&toml, &[]).unwrap_err().to_string();
    assert!(err.starts_with("local.chat_models.gone: "), "{err}");

    // Weights: converted to Q8_0 unless told otherwise; a type llama.cpp is not asked to
    // convert to is refused at start, naming the ones it can.
    let with = |weights: &str| {
        let toml = format!("[local]\nmodels_dir = {:?}\n{weights}", dir.display().to_string());
        resolve(&toml, &[]).map(|cfg| cfg.local.unwrap().weights)
    };
    assert_eq!(with("").unwrap(), Some(WeightType::Q8_0));
    assert_eq!(with("weights = \"keep\"\n").unwrap(), None);
    assert_eq!(with("weights = \"F16\"\n").unwrap(), Some(WeightType::F16));
    let err = with("weights = \"q4_k_m\"\n").unwrap_err().to_string();
    assert!(err.starts_with("local.weights: \"q4_k_m\" is not a weight type"), "{err}");
    assert!(err.contains("q8_0, q4_0, f16, or \"keep\""), "{err}");

    // Defaults for what a request leaves out: per model, checked at start.
    let defaults = |extra: &str| {
        let toml = format!("[local]\nmodels_dir = {:?}\n{extra}", dir.display().to_string());
        resolve(&toml, &[]).map(|cfg| cfg.local.unwrap())
    };
    // Adapters: merged and at most 4 loaded unless told otherwise; none loaded is refused.
    let local = defaults("").unwrap();
    assert!(local.merge_adapters);
    assert_eq!(local.max_loaded_adapters, 4);
    let local = defaults("merge_adapters = false\nmax_loaded_adapters = 2\n").unwrap();
    assert!(!local.merge_adapters);
    assert_eq!(local.max_loaded_adapters, 2);
    let err = defaults("max_loaded_adapters = 0\n").unwrap_err().to_string();
    assert_eq!(err, "local.max_loaded_adapters: must be at least 1");
    let local = defaults("max_tokens = 256\n[local.defaults.smollm2-135m-instruct]\ntemperature = 0.4\n").unwrap();
    assert_eq!(local.max_tokens, Some(256));
    assert_eq!(local.defaults["smollm2-135m-instruct"].temperature, Some(0.4));
    let err = defaults("[local.defaults.smollm2-135m-instruct]\ntop_p = 2.0\n").unwrap_err().to_string();
    assert_eq!(err, "local.defaults.smollm2-135m-instruct: top_p must be between 0 and 1, got 2");
    let err = defaults("[local.defaults.nope]\ntemperature = 0.1\n").unwrap_err().to_string();
    assert!(err.starts_with("local.defaults.nope: no local chat model is named \"nope\""), "{err}");
    let err = defaults("max_tokens = 0\n").unwrap_err().to_string();
    assert!(err.starts_with("local.max_tokens: "), "{err}");
    let err = defaults("[local.defaults.smollm2-135m-instruct]\ntempreature = 0.1\n").unwrap_err().to_string();
    assert!(err.contains("tempreature"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_models_dir_serves_no_local_model() {
    let cfg = resolve("", &[("FUNGIBLE_MODELS_DIR", "/nonexistent/fungible-models")]).unwrap();
    assert!(cfg.local.is_none());
    #[cfg(feature = "local")]
    {
        let err = resolve("[local]\nslots = 0\n", &[]).unwrap_err().to_string();
        assert_eq!(err, "local.slots: must be greater than 0");
    }
}

#[cfg(not(feature = "local"))]
#[test]
fn without_the_local_feature_a_local_section_that_asks_for_models_is_refused() {
    for (toml, at) in [
        ("[local]\nchat_models = { qwen = \"q.gguf\" }\n", "local.chat_models"),
        ("[local]\nembedding_models = { bge = \"bge\" }\n", "local.embedding_models"),
        ("[local.defaults.smollm2-135m-instruct]\ntemperature = 0.1\n", "local.defaults"),
        ("[local]\npreload = true\n", "local.preload"),
        ("[local]\nenabled = true\n", "local.enabled"),
    ] {
        let err = resolve(toml, &[]).unwrap_err().to_string();
        assert_eq!(err, format!("{at}: this build has no local inference: rebuild with --features local"));
    }
    // Tuning alone, or a section switched off, serves nothing and is no error.
    for toml in ["[local]\nslots = 2\npreload = false\n", "[local]\nenabled = false\nchat_models = { q = \"q.gguf\" }\n"] {
        assert!(resolve(toml, &[]).unwrap().local.is_none(), "{toml}");
    }
}

#[test]
fn example_config_loads() {
    let text = include_str!("../../../../fungible.example.toml");
    let file = ConfigFile::parse(text, "fungible.example.toml").unwrap();
    let cfg = GatewayConfig::resolve(file, &env_of(&[])).unwrap();
    assert!(cfg.aliases().any(|(alias, _)| alias == "fast"));
    assert_eq!(cfg.routes["smart"].targets.len(), 2);
    assert_eq!(cfg.routes["ab"].sticky, Some(crate::routing::config::Sticky::User));
}

#[test]
fn the_ui_section_is_validated_and_its_secret_never_printed() {
    let cfg = resolve("", &[]).unwrap();
    assert!(cfg.ui.enabled && cfg.ui.secret.is_none());
    assert_eq!(cfg.ui.session, Duration::from_secs(12 * 3600));
    assert_eq!(cfg.ui.eval_runs_dir, std::path::PathBuf::from("eval-runs"));
    let secret = "a-ui-secret-that-is-long-enough-0123456789";
    let cfg = resolve("[ui]\nsession_hours = 1\nsecret_env = \"MY_UI_SECRET\"\n", &[("MY_UI_SECRET", secret)]).unwrap();
    assert_eq!(cfg.ui.secret.as_ref().map(|s| s.expose()), Some(secret));
    assert_eq!(cfg.ui.session, Duration::from_secs(3600));
    let err = resolve("", &[("FUNGIBLE_UI_SECRET", "too-short-secret")]).unwrap_err().to_string();
    assert_eq!(err, "ui.secret_env: FUNGIBLE_UI_SECRET is shorter than 32 characters");
    for (toml, at) in [("[ui]\nsession_hours = 0\n", "ui.session_hours"), ("[ui]\nsession_hours = 721\n", "ui.session_hours"), ("[ui]\nsecret_env = \" \"\n", "ui.secret_env")] {
        let err = resolve(toml, &[]).unwrap_err().to_string();
        assert!(err.starts_with(at), "{toml}: {err}");
    }
    assert!(!resolve("[ui]\nenabled = false\n", &[]).unwrap().ui.enabled);
}
