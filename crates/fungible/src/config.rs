//! The whole config file, read once and validated section by section into one typed
//! [`Config`] before any command opens a store, a cache or an exporter. Each library crate
//! owns its section's validation (`fungible-gateway`: providers, models, routing, local,
//! auth, state, tune; `fungible-store`: store, prices; `fungible-telemetry`; `fungible-cache`)
//! and every error names the config path it is about.

use std::path::Path;

use anyhow::Context;
use fungible_cache::CacheConfig;
use fungible_gateway::routing::balance::Strategy;
use fungible_gateway::{ConfigFile, GatewayConfig};
use fungible_store::{PriceTable, StoreConfig};
use fungible_telemetry::TelemetryConfig;

use crate::ConfigArgs;

/// Every section of the config file, validated.
pub struct Config {
    /// Providers, models and routes, local models, server limits, `[auth]`, `[state]`, `[tune]`.
    pub gateway: GatewayConfig,
    /// `[store]`: where inferences are recorded.
    pub store: StoreConfig,
    /// `[prices]` over the built-in price table.
    pub prices: PriceTable,
    /// `[telemetry]`: `None` when no OTLP endpoint is set (in the file or `OTEL_*`).
    pub telemetry: Option<TelemetryConfig>,
    /// `[cache]`: the response cache (`enabled` is false when the section is absent).
    pub cache: CacheConfig,
}

impl Config {
    /// Reads `--config` (or `./fungible.toml` when it exists; no file is an empty config)
    /// and validates it against the process environment.
    pub fn load(args: &ConfigArgs) -> anyhow::Result<Config> {
        let default = Path::new("fungible.toml");
        let file = match &args.config {
            Some(path) => ConfigFile::read(path)?,
            None if default.exists() => ConfigFile::read(default)?,
            None => ConfigFile::default(),
        };
        Config::from_file(file, &|k| std::env::var(k).ok())
    }

    /// Validates a parsed file; `env` looks a variable up.
    pub fn from_file(mut file: ConfigFile, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let store = StoreConfig::from_toml(file.store.take())?;
        let prices = PriceTable::from_toml(file.prices.take())?;
        let telemetry = TelemetryConfig::from_toml(file.telemetry.take(), env)?;
        let cache_table = file.cache.take();
        let gateway = GatewayConfig::resolve(file, env)?;
        let cache = CacheConfig::from_toml(cache_table, gateway.auth.redis.as_deref())?;
        if !store.enabled
            && let Some(route) = gateway.routes.iter().find_map(|(name, r)| r.examples.as_ref().map(|_| name))
        {
            anyhow::bail!("models.{route}.examples: examples come from a dataset in the store, and [store] enabled = false");
        }
        if !store.enabled
            && let Some((route, strategy)) = gateway
                .routes
                .iter()
                .find_map(|(name, r)| matches!(r.strategy, Strategy::Learned | Strategy::Adaptive).then_some((name, r.strategy)))
        {
            anyhow::bail!(
                "models.{route}.strategy: a{} route learns from the store (its router, its feedback), and [store] enabled = false",
                if strategy == Strategy::Adaptive { "n adaptive" } else { " learned" }
            );
        }
        for (name, route) in &gateway.routes {
            for (i, c) in route.shadow.iter().enumerate() {
                fungible_eval::scorers::Scorer::parse(&c.score).with_context(|| format!("models.{name}.shadow[{i}].score"))?;
            }
        }
        Ok(Config { gateway, store, prices, telemetry, cache })
    }

}

/// `[cache] semantic.embedding_model` must name a model the gateway serves.
pub fn check_cache_model(cache: &CacheConfig, gateway: &fungible_gateway::Gateway) -> anyhow::Result<()> {
    if cache.enabled
        && let Some(semantic) = &cache.semantic
    {
        gateway
            .resolve(&semantic.embedding_model)
            .map(drop)
            .with_context(|| format!("cache.semantic.embedding_model: {:?}", semantic.embedding_model))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> anyhow::Result<Config> {
        Config::from_file(ConfigFile::parse(text, "test.toml")?, &|k| (k == "OPENAI_API_KEY").then(|| "sk-test".to_owned()))
    }

    #[test]
    fn every_section_is_validated_with_its_path() {
        for (text, path) in [
            ("[telemetry]\notlp_endpoint = \"not a url\"\n", "telemetry.otlp_endpoint"),
            ("[telemetry]\nsample_ratio = 2.0\notlp_endpoint = \"http://127.0.0.1:4318\"\n", "telemetry.sample_ratio"),
            ("[store]\nbatch_size = 0\n", "store.batch_size"),
            ("[cache]\nttl_secs = 0\n", "cache.ttl_secs"),
            ("[prices.\"openai/x\"]\ninput = -1.0\noutput = 1.0\n", "prices"),
            ("[server]\nmax_body_bytes = 0\n", "server.max_body_bytes"),
            ("[tune]\npoll_interval_secs = 0\n", "tune.poll_interval_secs"),
            ("[models.s]\ntarget = \"openai/m\"\nexamples = { dataset = \"support@x\" }\n", "models.s.examples.dataset"),
            ("[models.s]\ntarget = \"openai/m\"\nexamples = { dataset = \"support\", k = 0 }\n", "models.s.examples.k"),
            (
                "[store]\nenabled = false\n[models.s]\ntarget = \"openai/m\"\nexamples = { dataset = \"support\" }\n",
                "models.s.examples: examples come from a dataset in the store",
            ),
            (
                "[store]\nenabled = false\n[models.s]\nstrategy = \"adaptive\"\ntargets = [{ target = \"openai/a\" }, { target = \"openai/b\" }]\n",
                "models.s.strategy: an adaptive route learns from the store",
            ),
            (
                "[store]\nenabled = false\n[models.s]\nstrategy = \"learned\"\ntargets = [{ target = \"openai/a\" }, { target = \"openai/b\" }]\n",
                "models.s.strategy: a learned route learns from the store",
            ),
        ] {
            let err = format!("{:#}", config(text).err().unwrap_or_else(|| panic!("{text} was accepted")));
            assert!(err.contains(path), "{text}: {err}");
        }
    }

    #[test]
    fn the_cache_shares_the_state_redis() {
        let c = config("[state]\nredis = \"redis://10.0.0.9:6379\"\n[cache]\nbackend = \"redis\"\n").unwrap();
        assert!(c.cache.enabled);
        assert!(
            matches!(&c.cache.backend, fungible_cache::BackendConfig::Redis { url, .. } if url == "redis://10.0.0.9:6379"),
            "{:?}",
            c.cache.backend
        );
        let c = config("").unwrap();
        assert!(!c.cache.enabled && c.telemetry.is_none() && c.store.enabled);
    }
}
