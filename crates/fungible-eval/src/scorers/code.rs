//! The `code` scorer: the answer's Python code, followed by the item's tests, run by
//! `python3` in a sandboxed subprocess (HumanEval style).
//!
//! The sandbox: a fresh temporary directory as working directory and `HOME`, an emptied
//! environment, isolated mode (`-I`: no user site-packages, no `PYTHON*` variables), a
//! virtual-memory limit and a file-size limit set with `ulimit` by a `sh` wrapper (the
//! workspace forbids `unsafe`, so no `pre_exec`), its own process group killed whole on a
//! wall-clock timeout, and stdout/stderr captured and truncated. It is not a security
//! boundary against hostile code (no network or syscall filtering): run untrusted models'
//! code in a container.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::Score;
use crate::dataset::CodeTests;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of one code run.
#[derive(Debug, Clone)]
pub struct CodeLimits {
    pub timeout: Duration,
    /// Virtual memory, in MiB.
    pub memory_mib: u64,
    /// The Python interpreter.
    pub python: String,
}

impl Default for CodeLimits {
    fn default() -> CodeLimits {
        CodeLimits {
            timeout: DEFAULT_TIMEOUT,
            memory_mib: 1024,
            python: "python3".into(),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeRun {
    /// `None` when it was killed (timeout or signal).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// stdout then stderr, truncated.
    pub output: String,
}

const MAX_OUTPUT: usize = 2000;

/// The code in an answer: its first ```python block, else its first fenced block, else the
/// whole answer.
pub fn extract_code(answer: &str) -> String {
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut rest = answer;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let (lang, body) = after.split_once('\n').unwrap_or((after, ""));
        match body.find("```") {
            Some(end) => {
                blocks.push((lang.trim().to_ascii_lowercase(), body[..end].to_owned()));
                rest = &body[end + 3..];
            }
            None => {
                // An unclosed fence (the answer was cut by max_tokens): take what is there.
                blocks.push((lang.trim().to_ascii_lowercase(), body.to_owned()));
                break;
            }
        }
    }
    blocks
        .iter()
        .find(|(lang, _)| lang == "python" || lang == "py" || lang == "python3")
        .or(blocks.first())
        .map(|(_, body)| body.clone())
        .unwrap_or_else(|| answer.to_owned())
}

/// The program run for an answer: the prefix (HumanEval's prompt) unless the answer defines
/// the function whole... in which case the prefix still comes first for its imports and is
/// overridden by the answer's definition; then the tests and `check(entry_point)`.
pub fn program(answer: &str, tests: &CodeTests) -> String {
    let code = extract_code(answer);
    let mut program = String::new();
    if let Some(prefix) = &tests.prefix {
        program.push_str(prefix);
        let defines = tests
            .entry_point
            .as_ref()
            .is_some_and(|e| code.contains(&format!("def {e}(")));
        if defines || !prefix.ends_with('\n') {
            program.push('\n');
        }
        if defines {
            // The prompt's stub (signature + docstring) is a complete function; the answer's
            // definition replaces it.
            program.push_str("    pass\n\n");
        }
    }
    program.push_str(&code);
    program.push_str("\n\n");
    program.push_str(&tests.tests);
    if let Some(entry) = &tests.entry_point {
        program.push_str(&format!("\n\ncheck({entry})\n"));
    }
    program
}

/// Runs `source` with the limits; `Err` only when the interpreter could not be started.
pub async fn run_python(source: &str, limits: &CodeLimits) -> Result<CodeRun, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let file = dir.path().join("program.py");
    tokio::fs::write(&file, source)
        .await
        .map_err(|e| format!("writing the program: {e}"))?;
    let kib = limits.memory_mib.saturating_mul(1024);
    let script = format!("ulimit -v {kib} && ulimit -f 10240 && exec \"$0\" -I -B program.py");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(&limits.python)
        .current_dir(dir.path())
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", dir.path())
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("could not start sh/{}: {e}", limits.python))?;
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let collect = async {
        let (out, err, status) = tokio::join!(read_pipe(stdout), read_pipe(stderr), child.wait());
        (out, err, status)
    };
    let finished = tokio::time::timeout(limits.timeout, collect).await;
    let (timed_out, exit_code, out, err) = match finished {
        Ok((out, err, status)) => (false, status.ok().and_then(|s| s.code()), out, err),
        Err(_) => {
            if let Some(pid) = pid {
                kill_group(pid).await;
            }
            let _ = child.kill().await;
            (true, None, Vec::new(), Vec::new())
        }
    };
    let mut output = String::from_utf8_lossy(&out).into_owned();
    output.push_str(&String::from_utf8_lossy(&err));
    Ok(CodeRun {
        exit_code,
        timed_out,
        output: tail(&output, MAX_OUTPUT),
    })
}

/// Reads a pipe to its end, keeping at most 64 KiB (the rest is read and dropped, so a
/// chatty program never blocks on a full pipe).
async fn read_pipe<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else { return kept };
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if kept.len() < 64 * 1024 {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
    kept
}

/// SIGKILL to the whole process group (what the program may have forked too).
async fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

fn tail(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

pub async fn score(answer: &str, tests: &CodeTests, limits: &CodeLimits) -> Result<Score, String> {
    let run = run_python(&program(answer, tests), limits).await?;
    Ok(if run.timed_out {
        Score::pass_fail(
            false,
            format!("timed out after {:.1}s", limits.timeout.as_secs_f64()),
        )
    } else if run.exit_code == Some(0) {
        Score::pass_fail(true, "tests passed")
    } else {
        let last = run
            .output
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        let code = run
            .exit_code
            .map_or("killed".to_owned(), |c| format!("exit {c}"));
        Score::pass_fail(false, format!("tests failed ({code}): {last}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tests(entry: &str, test: &str, prefix: Option<&str>) -> CodeTests {
        CodeTests {
            tests: test.into(),
            entry_point: Some(entry.into()),
            prefix: prefix.map(Into::into),
        }
    }

    #[test]
    fn code_is_taken_from_the_python_block() {
        assert_eq!(
            extract_code("Here:\n```\nx\n```\n```python\ny = 1\n```"),
            "y = 1\n"
        );
        assert_eq!(extract_code("```py\nz\n"), "z\n");
        assert_eq!(extract_code("def f(): pass"), "def f(): pass");
    }

    #[tokio::test]
    async fn passing_and_failing_code() {
        let t = tests("add", "def check(c):\n    assert c(2, 3) == 5\n", None);
        let limits = CodeLimits::default();
        let ok = score(
            "```python\ndef add(a, b):\n    return a + b\n```",
            &t,
            &limits,
        )
        .await
        .unwrap();
        assert!(ok.passed, "{}", ok.detail);
        let bad = score(
            "```python\ndef add(a, b):\n    return a - b\n```",
            &t,
            &limits,
        )
        .await
        .unwrap();
        assert!(!bad.passed);
        assert!(bad.detail.contains("AssertionError"), "{}", bad.detail);
        let broken = score("def add(a, b) return", &t, &limits).await.unwrap();
        assert!(broken.detail.contains("SyntaxError"), "{}", broken.detail);
    }

    #[tokio::test]
    async fn humaneval_answers_work_as_a_body_or_a_whole_function() {
        let prompt = "import math\n\ndef root(x):\n    \"\"\"Square root.\"\"\"\n";
        let t = tests(
            "root",
            "def check(c):\n    assert c(9) == 3\n",
            Some(prompt),
        );
        let limits = CodeLimits::default();
        let whole = score(
            "```python\ndef root(x):\n    return math.isqrt(x)\n```",
            &t,
            &limits,
        )
        .await
        .unwrap();
        assert!(whole.passed, "{}", whole.detail);
        let body = score("    return math.isqrt(x)\n", &t, &limits)
            .await
            .unwrap();
        assert!(body.passed, "{}", body.detail);
    }

    #[tokio::test]
    async fn a_program_that_runs_forever_is_killed_at_the_timeout() {
        let limits = CodeLimits {
            timeout: Duration::from_millis(500),
            ..CodeLimits::default()
        };
        // It forks a child that would outlive it: the whole group is killed.
        let source = "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'while True: pass'])\nwhile True: pass\n";
        let start = std::time::Instant::now();
        let run = run_python(source, &limits).await.unwrap();
        assert!(run.timed_out);
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn memory_is_limited() {
        let limits = CodeLimits {
            memory_mib: 256,
            ..CodeLimits::default()
        };
        let run = run_python("x = bytearray(1024 * 1024 * 1024)\n", &limits)
            .await
            .unwrap();
        assert_ne!(run.exit_code, Some(0));
        assert!(run.output.contains("MemoryError"), "{}", run.output);
    }

    #[tokio::test]
    async fn the_environment_is_emptied_and_output_captured() {
        // The interpreter itself, not a wrapper such as a pyenv shim (which sets its own
        // variables before starting Python).
        let real = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .unwrap();
        let limits = CodeLimits {
            python: String::from_utf8(real.stdout).unwrap().trim().to_owned(),
            ..CodeLimits::default()
        };
        // PWD is set by `sh` (to the temporary directory), LC_CTYPE by Python's locale coercion.
        let run = run_python("import os\nprint(sorted(k for k in os.environ if k not in ('LC_CTYPE', 'PWD')), os.getcwd() == os.environ['HOME'])\n", &limits)
            .await
            .unwrap();
        assert_eq!(run.exit_code, Some(0));
        assert_eq!(run.output, "['HOME', 'LANG', 'PATH'] True");
    }
}
