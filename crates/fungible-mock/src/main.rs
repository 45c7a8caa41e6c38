//! `fungible-mock`: the mock upstream as a process, for end-to-end runs with the vendors'
//! official SDKs and for benchmarks.
//!
//! ```text
//! fungible-mock --addr 127.0.0.1:18080 --fixtures tests/fixtures
//! fungible-mock --addr 127.0.0.1:18080 --fixed-json body.json --fixed-sse body.sse
//! fungible-mock --addr 127.0.0.1:18080 --fixtures tests/fixtures --fail-rate 0.3 --seed 42
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use fungible_mock::{Chaos, Fallback, MockUpstream};

const USAGE: &str =
    "usage: fungible-mock --addr HOST:PORT (--fixtures DIR | --fixed-json FILE --fixed-sse FILE) [--fail-rate 0..1 [--seed N]]";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fungible-mock: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let mut addr: Option<SocketAddr> = None;
    let mut fixtures: Option<PathBuf> = None;
    let mut fixed_json: Option<PathBuf> = None;
    let mut fixed_sse: Option<PathBuf> = None;
    let mut fail_rate: Option<f64> = None;
    let mut seed: u64 = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--addr" => addr = Some(value()?.parse().map_err(|e| format!("--addr: {e}"))?),
            "--fixtures" => fixtures = Some(value()?.into()),
            "--fixed-json" => fixed_json = Some(value()?.into()),
            "--fixed-sse" => fixed_sse = Some(value()?.into()),
            "--fail-rate" => {
                let rate: f64 = value()?.parse().map_err(|e| format!("--fail-rate: {e}"))?;
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!("--fail-rate: expected 0 to 1, got {rate}"));
                }
                fail_rate = Some(rate);
            }
            "--seed" => seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let addr = addr.ok_or_else(|| format!("--addr is required\n{USAGE}"))?;
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let fallback = match (fixtures, fixed_json, fixed_sse) {
        (Some(dir), None, None) => Fallback::Fixtures(dir),
        (None, Some(json), Some(sse)) => Fallback::Fixed { json: read(&json)?.into(), sse: read(&sse)?.into() },
        _ => return Err(USAGE.to_owned()),
    };
    let mock = MockUpstream::start_on(addr, fallback, false).await.map_err(|e| format!("bind {addr}: {e}"))?;
    if let Some(rate) = fail_rate {
        mock.set_chaos(Some(Chaos::new(rate, seed)));
    }
    eprintln!("fungible-mock listening on {}", mock.url());
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    Ok(())
}
