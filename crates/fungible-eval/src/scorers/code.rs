//! The `code` scorer: the answer's Python code, followed by the item's tests, run by
//! `python3` inside a bubblewrap (`bwrap`) sandbox (HumanEval style).
//!
//! Model-written code is treated as hostile: an answer can be written by anyone who can
//! reach the model. What it runs in ([`bwrap_args`] has the exact flags):
//!
//! - **namespaces**: its own user namespace (uid/gid 65534 inside, no capabilities, no
//!   nested user namespaces on bwrap >= 0.8), PID namespace (a fresh `/proc` that shows only
//!   the sandbox's own processes), network namespace (only a loopback with nothing on it:
//!   no internet, no host services such as Redis on 127.0.0.1), IPC, UTS (hostname
//!   `sandbox`) and cgroup namespaces, and a new session (no terminal to inject into);
//! - **filesystem**: an empty root remounted read-only, with `/usr` (and the `/bin`, `/lib*`
//!   links or directories) bound read-only, from `/etc` only `ld.so.cache`, `alternatives`
//!   and `localtime` (no `passwd`, no `hosts`), a fresh `/proc`, a minimal `/dev`, a private
//!   `/tmp`, and a fresh temporary directory as `/scratch`, its working directory and `HOME`
//!   and the only host directory it can write. `/root`, `/home`, the checkout and the host's
//!   `/tmp` are not there;
//! - **environment**: `PATH`, `HOME` and `LANG` only; nothing of fungible's environment
//!   (provider keys, the admin key) is passed, and no fungible process is visible;
//! - **limits** (`prlimit`, hard limits it cannot raise): address space
//!   ([`CodeLimits::memory_mib`]), file size (10 MiB) and process count
//!   ([`CodeLimits::max_processes`], counted per user in the sandbox's user namespace). The
//!   Linux process limit never applies to uid 0, so when fungible runs as root `setpriv`
//!   starts `bwrap` as uid 65534 (`nobody`) and the scratch directory is handed to it;
//! - **lifetime**: the PID namespace's init is coreutils' `timeout` (`--as-pid-1`: no bwrap
//!   init in between), which runs the interpreter and kills it at the wall-clock timeout.
//!   When it exits the kernel kills every process left in the namespace, `setsid` daemons
//!   included, before bwrap sees it exit, so once a run returns nothing of it is left. A
//!   backstop a little later kills bwrap itself (`--die-with-parent` then kills the init).
//!
//! There is no seccomp filter: the sandbox reaches the kernel's system calls, so a kernel
//! exploit is out of its scope. If `bwrap` is missing or its self-check (run once per
//! process, per `bwrap` path and interpreter) fails, the scorer refuses with
//! [`SandboxError`] and runs nothing: model-written code is never run unconfined.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::sync::OnceCell;

use super::Score;
use crate::dataset::CodeTests;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The uid and gid the code runs as, inside the sandbox and (when fungible is root) outside.
const NOBODY: u32 = 65534;
const NOBODY_ID: &str = "65534";
/// The file-size limit, in bytes.
const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;
/// How long the self-check may take (bwrap and Python starting, on a loaded machine).
const SELF_CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after the timeout bwrap itself is killed, should the `timeout` inside not have
/// ended the run (it does unless the machine stalls).
const BACKSTOP: Duration = Duration::from_secs(10);
/// After bwrap ended: how long until its output pipes close (at once: every process of the
/// sandbox is gone by then; a backstop).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The sandbox's environment, whole.
const SANDBOX_ENV: [(&str, &str); 3] = [
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("HOME", "/scratch"),
    ("LANG", "C.UTF-8"),
];

/// Limits of one code run, and the programs that make the sandbox.
#[derive(Debug, Clone)]
pub struct CodeLimits {
    pub timeout: Duration,
    /// Address space, in MiB.
    pub memory_mib: u64,
    /// Processes (and threads) the code may have at once, its interpreter included.
    pub max_processes: u32,
    /// The Python interpreter, as found inside the sandbox (on `/usr/local/bin:/usr/bin:/bin`;
    /// only `/usr` is visible there, so a pyenv or venv interpreter elsewhere is not).
    pub python: String,
    /// The bubblewrap binary: a path, or a name looked up on `PATH`.
    pub bwrap: PathBuf,
}

impl Default for CodeLimits {
    fn default() -> CodeLimits {
        CodeLimits {
            timeout: DEFAULT_TIMEOUT,
            memory_mib: 1024,
            max_processes: 64,
            python: "python3".into(),
            bwrap: "bwrap".into(),
        }
    }
}

/// Why the code scorer will not run code. Lowercase messages that name what is missing and
/// how to get it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SandboxError {
    /// A program the sandbox is made with is not installed.
    #[error(
        "the code scorer runs model-written code only inside a sandbox, and {program} was not found ({looked}): {install}"
    )]
    Missing {
        program: &'static str,
        looked: String,
        install: &'static str,
    },
    /// The sandbox could not run a trivial program.
    #[error(
        "the code scorer's sandbox failed its self-check, so no model-written code is run: {0} (bubblewrap needs user namespaces: sysctl user.max_user_namespaces > 0, and on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0; `timeout`, `prlimit` and the interpreter must be under /usr)"
    )]
    SelfCheck(String),
    /// The run's own files or process.
    #[error("the code scorer could not {0}")]
    Io(String),
}

/// A sandbox that passed its self-check: how to start it on this machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    /// `bwrap`, resolved to a path.
    pub bwrap: PathBuf,
    /// `setpriv` when fungible runs as root (the code's processes must not be host uid 0
    /// for the process limit to hold), else `None`.
    pub setpriv: Option<PathBuf>,
    /// bwrap >= 0.8 can forbid nested user namespaces (`--disable-userns`).
    pub disable_userns: bool,
    /// How the host's `/bin`, `/sbin` and `/lib*` appear: links into `/usr` (merged /usr)
    /// or read-only directories.
    pub top_dirs: Vec<TopDir>,
}

/// A top-level system directory beside `/usr`.
#[derive(Debug, Clone, PartialEq)]
pub enum TopDir {
    /// `/lib -> usr/lib`: the same link in the sandbox.
    Link { path: PathBuf, target: PathBuf },
    /// A real directory: bound read-only.
    Dir(PathBuf),
}

/// The system directories beside `/usr` that programs load from.
const TOP_DIRS: [&str; 6] = ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/// The only files of `/etc` the sandbox sees (the dynamic loader's cache, Debian's
/// alternatives links, the time zone); none holds a secret or a user list.
const ETC_FILES: [&str; 3] = ["/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime"];

/// bwrap's arguments, up to the command: the namespaces, the filesystem and the
/// environment. `scratch` is the one host directory bound writable (as `/scratch`).
pub fn bwrap_args(sandbox: &Sandbox, scratch: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
    ]
    .map(OsString::from)
    .into();
    if sandbox.disable_userns {
        args.push("--disable-userns".into());
    }
    args.extend(
        [
            "--uid",
            NOBODY_ID,
            "--gid",
            NOBODY_ID,
            "--cap-drop",
            "ALL",
            "--as-pid-1",
            "--die-with-parent",
            "--new-session",
            "--hostname",
            "sandbox",
        ]
        .map(OsString::from),
    );
    for (name, value) in SANDBOX_ENV {
        args.extend(["--setenv", name, value].map(OsString::from));
    }
    args.extend(["--ro-bind", "/usr", "/usr"].map(OsString::from));
    for dir in &sandbox.top_dirs {
        match dir {
            TopDir::Link { path, target } => {
                args.extend(["--symlink".into(), target.into(), path.into()]);
            }
            TopDir::Dir(path) => args.extend(["--ro-bind".into(), path.into(), path.into()]),
        }
    }
    for file in ETC_FILES {
        args.extend(["--ro-bind-try", file, file].map(OsString::from));
    }
    args.extend(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"].map(OsString::from));
    args.extend(["--bind".into(), scratch.into(), "/scratch".into()]);
    args.extend(["--chdir", "/scratch", "--remount-ro", "/"].map(OsString::from));
    args
}

impl Sandbox {
    /// The command that runs `python ARGS` in the sandbox with the limits, in `scratch`.
    fn command(&self, scratch: &Path, limits: &CodeLimits, python_args: &[&str]) -> Command {
        let mut cmd = match &self.setpriv {
            Some(setpriv) => {
                let mut cmd = Command::new(setpriv);
                cmd.arg(format!("--reuid={NOBODY}"))
                    .arg(format!("--regid={NOBODY}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(&self.bwrap);
                cmd
            }
            None => Command::new(&self.bwrap),
        };
        let bytes = limits.memory_mib.saturating_mul(1024 * 1024);
        // `timeout 0` would mean no timeout.
        let seconds = limits.timeout.max(Duration::from_millis(1)).as_secs_f64();
        cmd.args(bwrap_args(self, scratch))
            .args(["timeout", "--signal=KILL"])
            .arg(format!("{seconds}s"))
            .arg("prlimit")
            .arg(format!("--as={bytes}"))
            .arg(format!("--fsize={MAX_FILE_BYTES}"))
            .arg(format!("--nproc={}", limits.max_processes.max(2)))
            .arg(&limits.python)
            .args(["-I", "-B"])
            .args(python_args)
            // Nothing of fungible's environment reaches bwrap, so none reaches the code.
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Out of the terminal's process group: a Ctrl-C reaches fungible, which ends
            // the sandbox with it (`--die-with-parent`, `kill_on_drop`).
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeRun {
    /// `None` when it was killed at the timeout (a signal otherwise shows as 128 + signal).
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

/// The sandbox for these limits, checked once per process (per `bwrap` and interpreter):
/// `Err` when it is unavailable here, and then no code may be run.
pub async fn check_sandbox(limits: &CodeLimits) -> Result<Arc<Sandbox>, SandboxError> {
    type Checked = Arc<OnceCell<Result<Arc<Sandbox>, SandboxError>>>;
    static CHECKS: LazyLock<Mutex<HashMap<(PathBuf, String), Checked>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    let cell = {
        let mut checks = CHECKS.lock().unwrap_or_else(|e| e.into_inner());
        checks
            .entry((limits.bwrap.clone(), limits.python.clone()))
            .or_default()
            .clone()
    };
    cell.get_or_init(|| async { self_check(limits).await.map(Arc::new) })
        .await
        .clone()
}

/// Finds the programs, then runs `print(6 * 7)` in the sandbox exactly as code is run.
async fn self_check(limits: &CodeLimits) -> Result<Sandbox, SandboxError> {
    let bwrap = find_program(&limits.bwrap).ok_or_else(|| SandboxError::Missing {
        program: "bubblewrap (`bwrap`)",
        looked: looked_for(&limits.bwrap),
        install: "install it (`apt-get install bubblewrap`, `dnf install bubblewrap`)",
    })?;
    let setpriv = if running_as_root()? {
        let name = Path::new("setpriv");
        Some(find_program(name).ok_or_else(|| SandboxError::Missing {
            program: "`setpriv` (fungible runs as root, and the sandbox is started as uid 65534 so that its process limit holds)",
            looked: looked_for(name),
            install: "install util-linux (`apt-get install util-linux`)",
        })?)
    } else {
        None
    };
    let sandbox = Sandbox {
        disable_userns: bwrap_version(&bwrap).await >= Some((0, 8)),
        bwrap,
        setpriv,
        top_dirs: top_dirs(),
    };
    let limits = CodeLimits {
        timeout: SELF_CHECK_TIMEOUT,
        ..limits.clone()
    };
    let run = run_sandboxed(&sandbox, None, &limits)
        .await
        .map_err(|e| match e {
            SandboxError::Io(what) => SandboxError::SelfCheck(format!("could not {what}")),
            other => other,
        })?;
    if run.timed_out {
        return Err(SandboxError::SelfCheck(format!(
            "`{}` did not finish in {}s",
            sandbox.bwrap.display(),
            SELF_CHECK_TIMEOUT.as_secs()
        )));
    }
    if run.exit_code != Some(0) || run.output != "42" {
        let code = run
            .exit_code
            .map_or("was killed".to_owned(), |c| format!("exited with {c}"));
        let said = if run.output.is_empty() {
            String::new()
        } else {
            format!(": {}", run.output)
        };
        return Err(SandboxError::SelfCheck(format!(
            "`{}` {code}{said}",
            sandbox.bwrap.display()
        )));
    }
    Ok(sandbox)
}

/// `name` if it is a path to a file, else the first `PATH` entry that has it.
fn find_program(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_owned());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn looked_for(name: &Path) -> String {
    if name.components().count() > 1 {
        format!("no file at {}", name.display())
    } else {
        format!("`{}` is not on PATH", name.display())
    }
}

/// Whether this process's effective uid is 0 (`/proc/self` belongs to it).
fn running_as_root() -> Result<bool, SandboxError> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .map_err(|e| SandboxError::SelfCheck(format!("reading /proc/self: {e}")))
}

/// `bwrap --version` ("bubblewrap 0.8.0") as (major, minor); `None` when it says nothing
/// readable (then the flags of older versions are used).
async fn bwrap_version(bwrap: &Path) -> Option<(u32, u32)> {
    let out = Command::new(bwrap)
        .arg("--version")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// How `/bin`, `/sbin` and `/lib*` are on this host.
fn top_dirs() -> Vec<TopDir> {
    TOP_DIRS
        .iter()
        .map(Path::new)
        .filter_map(|path| match std::fs::read_link(path) {
            Ok(target) => Some(TopDir::Link {
                path: path.to_owned(),
                target,
            }),
            Err(_) if path.is_dir() => Some(TopDir::Dir(path.to_owned())),
            Err(_) => None,
        })
        .collect()
}

/// Runs `source` in the sandbox with the limits; `Err` when the sandbox is unavailable
/// (nothing was run) or the run's files or process could not be made.
pub async fn run_python(source: &str, limits: &CodeLimits) -> Result<CodeRun, SandboxError> {
    let sandbox = check_sandbox(limits).await?;
    run_sandboxed(&sandbox, Some(source), limits).await
}

/// Runs `source` as `program.py` (or, with `None`, the self-check's `print(6 * 7)`).
async fn run_sandboxed(
    sandbox: &Sandbox,
    source: Option<&str>,
    limits: &CodeLimits,
) -> Result<CodeRun, SandboxError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| SandboxError::Io(format!("{what}: {e}"))
    };
    let dir = tempfile::Builder::new()
        .prefix("fungible-code-")
        .tempdir()
        .map_err(io("make a temporary directory"))?;
    let python_args: &[&str] = match source {
        Some(source) => {
            tokio::fs::write(dir.path().join("program.py"), source)
                .await
                .map_err(io("write the program"))?;
            &["program.py"]
        }
        None => &["-c", "print(6 * 7)"],
    };
    if sandbox.setpriv.is_some() {
        // The code runs as uid 65534 on the host too: its scratch directory is its own.
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY))
            .map_err(io("hand the scratch directory to uid 65534"))?;
    }
    let mut child = sandbox
        .command(dir.path(), limits, python_args)
        .spawn()
        .map_err(io(&format!("start {}", sandbox.bwrap.display())))?;
    let stdout = tokio::spawn(read_pipe(child.stdout.take()));
    let stderr = tokio::spawn(read_pipe(child.stderr.take()));
    let started = Instant::now();
    let (timed_out, exit_code) = match tokio::time::timeout(limits.timeout + BACKSTOP, child.wait())
        .await
    {
        Ok(status) => {
            let code = status.ok().and_then(|s| s.code());
            // `timeout --signal=KILL` exits 137 when it killed the program at the time
            // limit (a program that exits 137 or 124 itself sooner is not a timeout).
            let timed_out = started.elapsed() >= limits.timeout && matches!(code, Some(124 | 137));
            (timed_out, if timed_out { None } else { code })
        }
        Err(_) => {
            // SIGKILL to bwrap: `--die-with-parent` kills the sandbox's init, and with it
            // every process in its PID namespace.
            let _ = child.start_kill();
            let _ = child.wait().await;
            (true, None)
        }
    };
    let (out, err) = tokio::time::timeout(DRAIN_TIMEOUT, async {
        (
            stdout.await.unwrap_or_default(),
            stderr.await.unwrap_or_default(),
        )
    })
    .await
    .map_err(|_| {
        SandboxError::Io(format!(
            "see the sandbox end: its output was still open {}s after it was stopped",
            DRAIN_TIMEOUT.as_secs()
        ))
    })?;
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

/// Scores an answer; `Err` when the sandbox is unavailable (then nothing was run).
pub async fn score(
    answer: &str,
    tests: &CodeTests,
    limits: &CodeLimits,
) -> Result<Score, SandboxError> {
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
    async fn the_environment_is_the_sandboxs_own_and_output_captured() {
        // PWD is set by bwrap's --chdir, LC_CTYPE by Python's locale coercion.
        let run = run_python(
            "import os\nprint(sorted((k, v) for k, v in os.environ.items() if k not in ('LC_CTYPE', 'PWD')), os.getcwd() == os.environ['HOME'])\n",
            &CodeLimits::default(),
        )
        .await
        .unwrap();
        assert_eq!(run.exit_code, Some(0), "{}", run.output);
        assert_eq!(
            run.output,
            "[('HOME', '/scratch'), ('LANG', 'C.UTF-8'), ('PATH', '/usr/local/bin:/usr/bin:/bin')] True"
        );
    }

    #[test]
    fn the_scratch_directory_is_the_only_host_directory_bound_writable() {
        let sandbox = Sandbox {
            bwrap: "/usr/bin/bwrap".into(),
            setpriv: None,
            disable_userns: true,
            top_dirs: vec![
                TopDir::Link {
                    path: "/lib".into(),
                    target: "usr/lib".into(),
                },
                TopDir::Dir("/lib64".into()),
            ],
        };
        let args: Vec<String> = bwrap_args(&sandbox, Path::new("/tmp/fungible-code-x"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let after = |flag: &str| -> Vec<&str> {
            args.iter()
                .enumerate()
                .filter(|(_, a)| *a == flag)
                .map(|(i, _)| args[i + 1].as_str())
                .collect()
        };
        assert_eq!(after("--bind"), ["/tmp/fungible-code-x"]);
        for writable in ["--bind-try", "--dev-bind", "--dev-bind-try", "--bind-data"] {
            assert!(after(writable).is_empty(), "{writable} in {args:?}");
        }
        assert_eq!(after("--ro-bind"), ["/usr", "/lib64"]);
        assert_eq!(
            after("--ro-bind-try"),
            ["/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime"]
        );
        assert_eq!(after("--symlink"), ["usr/lib"]);
        assert_eq!(
            args[args.len() - 2..],
            ["--remount-ro", "/"],
            "last: {args:?}"
        );
        for flag in [
            "--unshare-user",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--as-pid-1",
            "--die-with-parent",
            "--new-session",
            "--disable-userns",
        ] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing: {args:?}");
        }
        assert_eq!(after("--uid"), ["65534"]);
        assert_eq!(after("--cap-drop"), ["ALL"]);
    }
}
