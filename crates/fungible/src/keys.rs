//! `fungible keys create|list|show|update|revoke`: virtual keys, through a running gateway's
//! admin API (`--url`, and the admin key from `FUNGIBLE_ADMIN_KEY`).

use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value, json};

#[derive(Args)]
pub struct KeysArgs {
    /// The gateway's address.
    #[arg(
        long,
        env = "FUNGIBLE_URL",
        default_value = "http://127.0.0.1:4000",
        global = true
    )]
    url: String,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it (it is shown this once).
    Create(Settings),
    /// List every key (id, prefix, name, limits, spend).
    List {
        /// Print the admin API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one key as JSON, with its spend in the current budget period.
    Show { id: String },
    /// Change a key's settings (only the ones given).
    Update {
        id: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Revoke a key: every instance refuses it within `[auth] key_cache_ms`.
    Revoke { id: String },
}

#[derive(Args)]
struct Settings {
    #[arg(long)]
    name: Option<String>,
    /// A model or route the key may use; repeat for more; globs like `openai/*`.
    #[arg(long = "model")]
    models: Vec<String>,
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens (input + output) per minute.
    #[arg(long)]
    tpm: Option<u64>,
    /// Budget in USD per `--period`.
    #[arg(long)]
    budget: Option<f64>,
    /// daily, monthly or total.
    #[arg(long, default_value = "monthly")]
    period: String,
    /// Days until the key expires.
    #[arg(long)]
    expires_in_days: Option<u64>,
    /// A tag; repeat for more.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Metadata as KEY=VALUE; repeat for more.
    #[arg(long = "meta")]
    metadata: Vec<String>,
}

impl Settings {
    fn body(&self) -> anyhow::Result<Value> {
        let mut body = Map::new();
        if let Some(name) = &self.name {
            body.insert("name".into(), json!(name));
        }
        if !self.models.is_empty() {
            body.insert("models".into(), json!(self.models));
        }
        if let Some(rpm) = self.rpm {
            body.insert("rpm".into(), json!(rpm));
        }
        if let Some(tpm) = self.tpm {
            body.insert("tpm".into(), json!(tpm));
        }
        if let Some(usd) = self.budget {
            if !matches!(self.period.as_str(), "daily" | "monthly" | "total") {
                bail!(
                    "--period: expected daily, monthly or total, not {:?}",
                    self.period
                );
            }
            body.insert("budget".into(), json!({"usd": usd, "period": self.period}));
        }
        if let Some(days) = self.expires_in_days {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as i64;
            body.insert("expires_ms".into(), json!(now + days as i64 * 86_400_000));
        }
        if !self.tags.is_empty() {
            body.insert("tags".into(), json!(self.tags));
        }
        if !self.metadata.is_empty() {
            let mut meta = Map::new();
            for pair in &self.metadata {
                let (k, v) = pair
                    .split_once('=')
                    .with_context(|| format!("--meta {pair:?}: expected KEY=VALUE"))?;
                meta.insert(k.to_owned(), json!(v));
            }
            body.insert("metadata".into(), Value::Object(meta));
        }
        Ok(Value::Object(body))
    }
}

pub fn keys(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let admin = std::env::var("FUNGIBLE_ADMIN_KEY")
        .ok()
        .filter(|k| !k.is_empty())
        .context("set FUNGIBLE_ADMIN_KEY to the gateway's admin key")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let base = args.url.trim_end_matches('/').to_owned();
    runtime.block_on(async move {
        match args.command {
            KeysCommand::Create(settings) => {
                let key =
                    call(&base, &admin, "POST", "/admin/keys", Some(settings.body()?)).await?;
                println!("{}", key["key"].as_str().unwrap_or_default());
                eprintln!(
                    "created {} (the key above is shown only now; store it safely)",
                    key["id"].as_str().unwrap_or_default()
                );
            }
            KeysCommand::List { json } => {
                let list = call(&base, &admin, "GET", "/admin/keys", None).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else {
                    print_list(&list);
                }
            }
            KeysCommand::Show { id } => {
                let key = call(&base, &admin, "GET", &format!("/admin/keys/{id}"), None).await?;
                println!("{}", serde_json::to_string_pretty(&key)?);
            }
            KeysCommand::Update { id, settings } => {
                let key = call(
                    &base,
                    &admin,
                    "PATCH",
                    &format!("/admin/keys/{id}"),
                    Some(settings.body()?),
                )
                .await?;
                println!("{}", serde_json::to_string_pretty(&key)?);
            }
            KeysCommand::Revoke { id } => {
                call(&base, &admin, "DELETE", &format!("/admin/keys/{id}"), None).await?;
                println!("revoked {id}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn print_list(list: &Value) {
    println!(
        "{:<22} {:<10} {:<16} {:>6} {:>8} {:>22} {:>10}  STATUS",
        "ID", "PREFIX", "NAME", "RPM", "TPM", "BUDGET", "SPENT"
    );
    for key in list["data"].as_array().into_iter().flatten() {
        let text = |v: &Value| match v {
            Value::Null => "-".to_owned(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let budget = match &key["budget"] {
            Value::Object(b) => format!("${} {}", text(&b["usd"]), text(&b["period"])),
            _ => "-".to_owned(),
        };
        let status = if !key["revoked_ms"].is_null() {
            "revoked"
        } else {
            "active"
        };
        println!(
            "{:<22} {:<10} {:<16} {:>6} {:>8} {:>22} {:>10.4}  {status}",
            text(&key["id"]),
            text(&key["prefix"]),
            text(&key["name"]),
            text(&key["rpm"]),
            text(&key["tpm"]),
            budget,
            key["spend"]["spent"].as_f64().unwrap_or(0.0),
        );
    }
}

/// One admin API call; an error answer becomes an error with the API's message.
async fn call(
    base: &str,
    admin: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("{base}{path}");
    let request = hyper::Request::builder()
        .method(method)
        .uri(&url)
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .with_context(|| format!("bad URL {url}"))?;
    let response = client
        .request(request)
        .await
        .with_context(|| format!("could not reach {base}"))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        let message = value["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        bail!("{method} {path}: {status}: {message}");
    }
    Ok(value)
}
