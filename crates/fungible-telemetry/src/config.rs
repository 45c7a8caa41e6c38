//! `[telemetry]`: where spans go and what they carry. Off unless an endpoint is configured,
//! in the file or through the standard OpenTelemetry environment variables.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// `[telemetry]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TelemetrySection {
    /// Set to false to export nothing even when the environment names an endpoint; true
    /// alone exports to the default local collector (`http://localhost:4318`).
    enabled: Option<bool>,
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is appended), or the full traces
    /// URL when it already ends in `/v1/traces`.
    otlp_endpoint: Option<String>,
    /// `service.name` of the exported resource. Default: `$OTEL_SERVICE_NAME`, else `fungible`.
    service_name: Option<String>,
    /// Export message contents (`gen_ai.input.messages`, `gen_ai.output.messages`,
    /// `gen_ai.system_instructions`) and the user. Default: false.
    capture_content: Option<bool>,
    /// Share of new traces exported, 0.0 to 1.0 (a caller's sampled flag is followed).
    /// Default: 1.0.
    sample_ratio: Option<f64>,
    /// Inferences waiting to be exported; beyond it spans are dropped and counted.
    queue_capacity: Option<usize>,
    /// Most spans in one export request.
    batch_size: Option<usize>,
    /// Longest wait for a batch to fill, in milliseconds.
    flush_interval_ms: Option<u64>,
    /// Deadline of one export request, in seconds.
    export_timeout_secs: Option<u64>,
}

/// A validated `[telemetry]`.
#[derive(Clone)]
pub struct TelemetryConfig {
    /// The full OTLP/HTTP traces URL.
    pub endpoint: String,
    /// Headers sent with every export (from `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`). The values
    /// are secrets: never formatted.
    pub headers: BTreeMap<String, String>,
    pub service_name: String,
    pub capture_content: bool,
    pub sample_ratio: f64,
    pub queue_capacity: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub export_timeout: Duration,
}

impl std::fmt::Debug for TelemetryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryConfig")
            .field("endpoint", &self.endpoint)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("service_name", &self.service_name)
            .field("capture_content", &self.capture_content)
            .field("sample_ratio", &self.sample_ratio)
            .field("queue_capacity", &self.queue_capacity)
            .field("batch_size", &self.batch_size)
            .field("flush_interval", &self.flush_interval)
            .field("export_timeout", &self.export_timeout)
            .finish()
    }
}

impl TelemetryConfig {
    /// A config exporting to `endpoint` (a base or full traces URL) with the defaults.
    pub fn new(endpoint: &str) -> Result<TelemetryConfig, TelemetryConfigError> {
        Ok(TelemetryConfig {
            endpoint: traces_url(endpoint, "telemetry.otlp_endpoint")?,
            headers: BTreeMap::new(),
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            capture_content: false,
            sample_ratio: 1.0,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            batch_size: DEFAULT_BATCH_SIZE,
            flush_interval: Duration::from_millis(DEFAULT_FLUSH_INTERVAL_MS),
            export_timeout: Duration::from_secs(DEFAULT_EXPORT_TIMEOUT_SECS),
        })
    }

    /// Validates `[telemetry]` against the environment (`env` looks a variable up: pass
    /// `|k| std::env::var(k).ok()` in production). `None`: telemetry is off.
    pub fn from_toml(
        table: Option<toml::Table>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<TelemetryConfig>, TelemetryConfigError> {
        let section: TelemetrySection = match table {
            Some(t) => toml::Value::Table(t)
                .try_into()
                .map_err(|e: toml::de::Error| err("telemetry", e.message()))?,
            None => TelemetrySection::default(),
        };
        let env = |k: &str| {
            env(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if section.enabled == Some(false)
            || env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Ok(None);
        }
        let endpoint = if let Some(url) = &section.otlp_endpoint {
            traces_url(url, "telemetry.otlp_endpoint")?
        } else if let Some(url) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            // The per-signal variable is the full URL, used as is.
            check_url(&url, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")?;
            url
        } else if let Some(url) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            traces_url(&url, "OTEL_EXPORTER_OTLP_ENDPOINT")?
        } else if section.enabled == Some(true) {
            traces_url(DEFAULT_ENDPOINT, "telemetry.otlp_endpoint")?
        } else {
            return Ok(None);
        };
        let mut config = TelemetryConfig::new(&endpoint)?;
        config.endpoint = endpoint;
        let headers_var = [
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ]
        .into_iter()
        .find_map(|k| env(k).map(|v| (k, v)));
        if let Some((var, list)) = headers_var {
            config.headers = parse_headers(&list, var)?;
        }
        if let Some(name) = section.service_name.or_else(|| env("OTEL_SERVICE_NAME")) {
            if name.trim().is_empty() {
                return Err(err("telemetry.service_name", "must not be empty"));
            }
            config.service_name = name;
        }
        config.capture_content = section.capture_content.unwrap_or(false);
        if let Some(ratio) = section.sample_ratio {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(err("telemetry.sample_ratio", "must be between 0.0 and 1.0"));
            }
            config.sample_ratio = ratio;
        }
        for (value, at, target) in [
            (
                section.queue_capacity,
                "telemetry.queue_capacity",
                &mut config.queue_capacity,
            ),
            (
                section.batch_size,
                "telemetry.batch_size",
                &mut config.batch_size,
            ),
        ] {
            match value {
                Some(0) => return Err(err(at, "must be at least 1")),
                Some(n) => *target = n,
                None => {}
            }
        }
        if let Some(ms) = section.flush_interval_ms {
            config.flush_interval = Duration::from_millis(ms);
        }
        match section.export_timeout_secs {
            Some(0) => return Err(err("telemetry.export_timeout_secs", "must be at least 1")),
            Some(s) => config.export_timeout = Duration::from_secs(s),
            None => {}
        }
        Ok(Some(config))
    }
}

pub const DEFAULT_ENDPOINT: &str = "http://localhost:4318";
pub const DEFAULT_SERVICE_NAME: &str = "fungible";
pub const DEFAULT_QUEUE_CAPACITY: usize = 2048;
pub const DEFAULT_BATCH_SIZE: usize = 512;
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 1000;
pub const DEFAULT_EXPORT_TIMEOUT_SECS: u64 = 10;

#[derive(Debug, thiserror::Error)]
#[error("{at}: {message}")]
pub struct TelemetryConfigError {
    pub at: String,
    pub message: String,
}

fn err(at: &str, message: impl Into<String>) -> TelemetryConfigError {
    TelemetryConfigError {
        at: at.to_owned(),
        message: message.into(),
    }
}

fn check_url(url: &str, at: &str) -> Result<(), TelemetryConfigError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| err(at, format!("{url:?} is not a URL")))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(err(
            at,
            "must not hold credentials: put them in OTEL_EXPORTER_OTLP_HEADERS",
        ));
    }
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(()),
        _ => Err(err(
            at,
            format!("{url:?}: expected http://HOST[:PORT] or https://..."),
        )),
    }
}

/// A base URL with `/v1/traces` appended (kept when it is already there).
fn traces_url(url: &str, at: &str) -> Result<String, TelemetryConfigError> {
    check_url(url, at)?;
    let base = url.trim_end_matches('/');
    Ok(if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    })
}

/// `key=value,key2=value2` with percent-encoded values (the OTLP exporter spec). Errors name
/// the entry by position, never by value: values are secrets.
fn parse_headers(list: &str, var: &str) -> Result<BTreeMap<String, String>, TelemetryConfigError> {
    let mut headers = BTreeMap::new();
    for (i, entry) in list
        .split(',')
        .enumerate()
        .filter(|(_, e)| !e.trim().is_empty())
    {
        let Some((name, value)) = entry.split_once('=') else {
            return Err(err(var, format!("entry {} is not key=value", i + 1)));
        };
        let name = name.trim().to_ascii_lowercase();
        let value = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8()
            .map_err(|_| err(var, format!("the value of entry {} is not UTF-8", i + 1)))?
            .into_owned();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(err(
                var,
                format!("entry {}: {name:?} is not a header name", i + 1),
            ));
        }
        if http::HeaderValue::from_str(&value).is_err() {
            return Err(err(
                var,
                format!(
                    "entry {} ({name}): the value is not a valid header value",
                    i + 1
                ),
            ));
        }
        headers.insert(name, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(
        toml: &str,
        env: &[(&str, &str)],
    ) -> Result<Option<TelemetryConfig>, TelemetryConfigError> {
        let table: toml::Table = toml::from_str(toml).expect("toml");
        let table = table.get("telemetry").and_then(|t| t.as_table()).cloned();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TelemetryConfig::from_toml(table, &move |k: &str| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn off_unless_configured() {
        assert!(resolve("", &[]).expect("valid").is_none());
        assert!(
            resolve("[telemetry]\ncapture_content = true\n", &[])
                .expect("valid")
                .is_none()
        );
    }

    #[test]
    fn endpoint_from_file_or_environment() {
        let c = resolve(
            "[telemetry]\notlp_endpoint = \"http://collector:4318/\"\n",
            &[],
        )
        .expect("valid")
        .expect("on");
        assert_eq!(c.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(c.service_name, "fungible");
        assert!(!c.capture_content);
        let c = resolve(
            "",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otel.example.com"),
                ("OTEL_SERVICE_NAME", "gw"),
            ],
        )
        .expect("valid")
        .expect("on");
        assert_eq!(c.endpoint, "https://otel.example.com/v1/traces");
        assert_eq!(c.service_name, "gw");
        let c = resolve(
            "",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:9999/custom"),
            ],
        )
        .expect("valid")
        .expect("on");
        assert_eq!(
            c.endpoint, "http://b:9999/custom",
            "the per-signal URL is used as is"
        );
        let c = resolve("[telemetry]\nenabled = true\n", &[])
            .expect("valid")
            .expect("on");
        assert_eq!(c.endpoint, "http://localhost:4318/v1/traces");
        assert!(
            resolve(
                "[telemetry]\nenabled = false\n",
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318")]
            )
            .expect("valid")
            .is_none()
        );
        assert!(
            resolve(
                "",
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                    ("OTEL_SDK_DISABLED", "true")
                ]
            )
            .expect("valid")
            .is_none()
        );
    }

    #[test]
    fn headers_are_parsed_and_never_shown() {
        let c = resolve(
            "",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "Authorization=Bearer%20sekrit-123, x-team = blue",
                ),
            ],
        )
        .expect("valid")
        .expect("on");
        assert_eq!(c.headers["authorization"], "Bearer sekrit-123");
        assert_eq!(c.headers["x-team"], "blue");
        assert!(!format!("{c:?}").contains("sekrit"), "{c:?}");
        let e = resolve(
            "",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,sekrit-no-equals"),
            ],
        )
        .err()
        .expect("invalid");
        assert_eq!(
            e.to_string(),
            "OTEL_EXPORTER_OTLP_HEADERS: entry 2 is not key=value"
        );
    }

    #[test]
    fn errors_name_their_path() {
        let e = |toml: &str| resolve(toml, &[]).err().expect("invalid").to_string();
        assert!(
            e("[telemetry]\nbogus = 1\n").starts_with("telemetry: unknown field `bogus`"),
            "{}",
            e("[telemetry]\nbogus = 1\n")
        );
        assert!(
            e("[telemetry]\notlp_endpoint = \"localhost:4318\"\n")
                .starts_with("telemetry.otlp_endpoint: ")
        );
        assert_eq!(
            e("[telemetry]\nenabled = true\nsample_ratio = 1.5\n"),
            "telemetry.sample_ratio: must be between 0.0 and 1.0"
        );
        assert_eq!(
            e("[telemetry]\nenabled = true\nqueue_capacity = 0\n"),
            "telemetry.queue_capacity: must be at least 1"
        );
        assert_eq!(
            e("[telemetry]\nenabled = true\nexport_timeout_secs = 0\n"),
            "telemetry.export_timeout_secs: must be at least 1"
        );
    }
}
