//! `[telemetry]` for `serve`: starts the OpenTelemetry exporter when an OTLP endpoint is
//! configured (in the file or the standard `OTEL_*` environment variables).

use std::path::Path;

use anyhow::Context;
use fungible_gateway::ConfigFile;
use fungible_telemetry::{Telemetry, TelemetryConfig};

use crate::ConfigArgs;

/// Starts the exporter on the current runtime; `None` when telemetry is off.
pub fn start(args: &ConfigArgs) -> anyhow::Result<Option<Telemetry>> {
    let default = Path::new("fungible.toml");
    let file = match &args.config {
        Some(path) => ConfigFile::read(path)?,
        None if default.exists() => ConfigFile::read(default)?,
        None => ConfigFile::default(),
    };
    let Some(config) = TelemetryConfig::from_toml(file.telemetry, &|k| std::env::var(k).ok())?
    else {
        return Ok(None);
    };
    let telemetry = Telemetry::start(&config).context("could not start OpenTelemetry export")?;
    tracing::info!(
        endpoint = %config.endpoint,
        service = %config.service_name,
        capture_content = config.capture_content,
        sample_ratio = config.sample_ratio,
        "exporting OpenTelemetry spans"
    );
    Ok(Some(telemetry))
}
