//! `[telemetry]` for `serve`: starts the OpenTelemetry exporter when an OTLP endpoint is
//! configured (in the file or the standard `OTEL_*` environment variables).

use anyhow::Context;
use fungible_telemetry::{Telemetry, TelemetryConfig};

/// Starts the exporter on the current runtime; `None` when telemetry is off.
pub fn start(config: Option<&TelemetryConfig>) -> anyhow::Result<Option<Telemetry>> {
    let Some(config) = config else {
        return Ok(None);
    };
    let telemetry = Telemetry::start(config).context("could not start OpenTelemetry export")?;
    tracing::info!(
        endpoint = %config.endpoint,
        service = %config.service_name,
        capture_content = config.capture_content,
        sample_ratio = config.sample_ratio,
        "exporting OpenTelemetry spans"
    );
    Ok(Some(telemetry))
}
