use std::process::ExitCode;
#[derive(clap::Args)]
pub struct BenchArgs {}
pub fn run(_a: BenchArgs) -> anyhow::Result<ExitCode> { anyhow::bail!("not yet") }
