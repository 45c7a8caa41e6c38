//! `fungible serve` as a child process of the bench: started, waited for, measured
//! (CPU, RSS) and stopped.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{BENCH_KEY, HttpClient};

/// `fungible serve` as a child process, pointed at the mock.
pub(super) struct GatewayProcess {
    pub(super) child: Child,
    port: u16,
}

impl GatewayProcess {
    pub(super) fn start(mock_url: &str, port: u16, workers: Option<usize>, config: &std::path::Path) -> anyhow::Result<GatewayProcess> {
        GatewayProcess::start_with(mock_url, port, workers, config, &[])
    }

    /// [`GatewayProcess::start`] with more environment variables.
    pub(super) fn start_with(
        mock_url: &str,
        port: u16,
        workers: Option<usize>,
        config: &std::path::Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<GatewayProcess> {
        let exe = std::env::current_exe().context("where is the fungible binary?")?;
        let mut command = Command::new(exe);
        command.args(["serve", "--port", &port.to_string(), "--config"]).arg(config);
        if let Some(n) = workers {
            command.args(["--workers", &n.to_string()]);
        }
        let child = command
            .env("OPENAI_API_KEY", BENCH_KEY)
            .env("OPENAI_BASE_URL", format!("{mock_url}/v1"))
            .env("FUNGIBLE_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .context("could not start fungible serve")?;
        Ok(GatewayProcess { child, port })
    }

    pub(super) async fn wait_ready(&mut self, client: &HttpClient) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/health", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("fungible serve exited with {status} (is port {} free?)", self.port);
            }
            let uri: hyper::Uri = url.parse()?;
            if let Ok(Ok(res)) = tokio::time::timeout(Duration::from_secs(1), client.get(uri)).await {
                if res.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("fungible serve did not answer /health within 30 s")
    }

    /// utime + stime of the child, in milliseconds.
    pub(super) fn cpu_ms(&self) -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())) else { return 0.0 };
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        // CLK_TCK is 100 on Linux.
        (ticks(11) + ticks(12)) * 10.0
    }

    /// The peak resident set (VmHWM), in KiB.
    pub(super) fn peak_rss_kib(&self) -> Option<u64> {
        self.status_kib("VmHWM:")
    }

    /// The resident set now (VmRSS), in KiB.
    pub(super) fn rss_kib(&self) -> Option<u64> {
        self.status_kib("VmRSS:")
    }

    /// The anonymous part of the resident set (RssAnon: the heap, stacks), in KiB: VmRSS
    /// less the pages of files mapped, such as the binary's own code.
    pub(super) fn anon_rss_kib(&self) -> Option<u64> {
        self.status_kib("RssAnon:")
    }

    /// A `/proc/<pid>/status` field given in kB, such as `VmRSS:`.
    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    pub(super) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A graceful stop (SIGTERM, as a service manager sends it): the gateway drains its
    /// recorder before it exits.
    /// Returns how it exited, if it could be waited for.
    pub(super) fn terminate(&mut self) -> Option<ExitStatus> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().ok()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
