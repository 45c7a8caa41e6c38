//! The code scorer's sandbox against hostile answers: each attack that once worked on the
//! unconfined runner (read the host's files and secrets, write outside the scratch
//! directory, reach a loopback service, fork without bound, leave a daemon behind) is
//! performed and must fail; and with no working sandbox nothing runs at all.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fungible_eval::dataset::Dataset;
use fungible_eval::runner::{self, RunError, RunOptions};
use fungible_eval::scorers::{CodeLimits, CodeRun, SandboxError, Scorer, run_python};

/// Generous: the attacks end on their own long before (a loaded CI machine included).
const TIMEOUT: Duration = Duration::from_secs(60);

fn limits() -> CodeLimits {
    CodeLimits {
        timeout: TIMEOUT,
        ..CodeLimits::default()
    }
}

/// A string no other test or process uses.
fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{tag}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

async fn run(source: &str) -> CodeRun {
    let run = run_python(source, &limits())
        .await
        .expect("the sandbox runs");
    assert!(!run.timed_out, "the attack ends on its own: {}", run.output);
    run
}

/// Host processes whose command line contains `marker` (the host's `/proc` shows the
/// sandbox's processes too, under their host pids).
fn host_processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(marker)
        {
            found.push(name);
        }
    }
    found
}

/// A host process holding a secret in its environment, killed when dropped.
struct SecretHolder(std::process::Child);

impl Drop for SecretHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_hosts_user_list_and_home_directories_are_not_there() {
    let source = format!(
        r#"
for path in ["/etc/passwd", "/etc/shadow", "/etc/group", "/root", "/home", "/work", {repo:?}]:
    try:
        open(path, "rb").read()
        print(path, "read")
    except FileNotFoundError:
        print(path, "absent")
    except OSError as e:
        print(path, type(e).__name__)
"#,
        repo = env!("CARGO_MANIFEST_DIR"),
    );
    let run = run(&source).await;
    assert_eq!(run.exit_code, Some(0), "{}", run.output);
    let expected: String = [
        "/etc/passwd",
        "/etc/shadow",
        "/etc/group",
        "/root",
        "/home",
        "/work",
        env!("CARGO_MANIFEST_DIR"),
    ]
    .map(|p| format!("{p} absent"))
    .join("\n");
    assert_eq!(run.output, expected);
}

#[tokio::test]
async fn no_process_or_secret_of_the_host_is_in_reach() {
    // A host process with a provider-key-like secret in its environment, as fungible's own
    // process has; the sandbox must neither see it nor any value of this test's
    // environment (the parent of the sandbox).
    let secret = format!("sk-secret-xyz-{}", unique("key"));
    let mut holder = SecretHolder(
        // One process that waits on its stdin (nothing is ever written), so its
        // environment is not in the middle of an exec when it is read.
        std::process::Command::new("sh")
            .args(["-c", "echo ready && read line"])
            .env("FUNGIBLE_TEST_SECRET", &secret)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Once it said so, it runs with the secret in its environment.
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.0.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready, "ready\n");
    let holder_pid = holder.0.id();
    assert!(
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{holder_pid}/environ")).unwrap())
            .contains(&secret),
        "the secret is readable on the host, so the probe below could find it"
    );
    let source = format!(
        r#"
import os
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
for pid in pids + [{holder_pid}, os.getppid()]:
    try:
        print(pid, open(f"/proc/{{pid}}/environ", "rb").read())
    except OSError as e:
        print(pid, type(e).__name__)
print("environ", dict(os.environ))
print("pids", pids, "me", os.getpid(), "parent", os.getppid())
"#
    );
    let run = run(&source).await;
    assert_eq!(run.exit_code, Some(0), "{}", run.output);
    assert!(!run.output.starts_with("..."), "cut: {}", run.output);
    // Its init (`timeout`) and itself: nothing of the host, the holder included.
    assert!(
        run.output.ends_with("\npids [1, 2] me 2 parent 1"),
        "{}",
        run.output
    );
    assert!(
        run.output
            .contains(&format!("\n{holder_pid} FileNotFoundError\n")),
        "{}",
        run.output
    );
    assert!(!run.output.contains(&secret), "{}", run.output);
    let own = ["/usr/local/bin:/usr/bin:/bin", "/scratch", "C.UTF-8"];
    for (name, value) in std::env::vars() {
        if value.len() >= 12 && !own.contains(&value.as_str()) {
            assert!(
                !run.output.contains(&value),
                "{name} of the parent reached the sandbox: {}",
                run.output
            );
        }
    }
    drop(holder);
}

#[tokio::test]
async fn writes_outside_the_scratch_directory_never_reach_the_host() {
    let name = unique("escape");
    let targets: Vec<PathBuf> = vec![
        std::env::temp_dir().join(&name),
        Path::new(env!("CARGO_MANIFEST_DIR")).join(&name),
        Path::new("/").join(&name),
        Path::new("/usr").join(&name),
    ];
    let paths: Vec<String> = targets
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .chain([format!("../{name}"), format!("/etc/{name}")])
        .collect();
    let source = format!(
        r#"
for path in {paths:?}:
    try:
        with open(path, "w") as f:
            f.write("escaped")
        print(path, "written")
    except OSError as e:
        print(path, type(e).__name__)
with open("inside.txt", "w") as f:
    f.write("ok")
print("scratch", open("/scratch/inside.txt").read())
"#
    );
    let run = run(&source).await;
    assert_eq!(run.exit_code, Some(0), "{}", run.output);
    assert!(run.output.ends_with("scratch ok"), "{}", run.output);
    for target in &targets {
        assert!(
            !target.exists(),
            "{} was created on the host: {}",
            target.display(),
            run.output
        );
    }
    // The scratch directory's parent on the host (`../`) and /etc are untouched too.
    assert!(!std::env::temp_dir().join(&name).exists());
    assert!(!Path::new("/etc").join(&name).exists());
}

#[tokio::test]
async fn loopback_services_of_the_host_are_out_of_reach() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let source = format!(
        r#"
import socket
for port in ({port}, 6379):
    s = socket.socket()
    s.settimeout(10)
    try:
        s.connect(("127.0.0.1", port))
        print(port, "connected")
    except OSError as e:
        print(port, type(e).__name__)
"#
    );
    let run = run(&source).await;
    assert_eq!(run.exit_code, Some(0), "{}", run.output);
    assert_eq!(
        run.output,
        format!("{port} ConnectionRefusedError\n6379 ConnectionRefusedError")
    );
    // A connection completes before connect() returns, so one would be queued by now.
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the listener saw a connection: {other:?}"),
    }
}

#[tokio::test]
async fn two_hundred_forks_hit_the_process_limit_and_none_survives() {
    let marker = unique("forkbomb");
    let source = format!(
        r#"
import os, sys
ok = failed = 0
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        failed += 1
        continue
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", {marker:?}])
    ok += 1
print("forked", ok, "refused", failed)
"#
    );
    let run = run(&source).await;
    assert_eq!(run.exit_code, Some(0), "{}", run.output);
    let counts: Vec<u32> = run
        .output
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [forked, refused] = counts[..] else {
        panic!("{}", run.output)
    };
    let max = CodeLimits::default().max_processes;
    assert!(forked >= 1 && forked < max, "{}", run.output);
    assert_eq!(forked + refused, 200);
    assert_eq!(host_processes_with(&marker), Vec::<String>::new());
}

#[tokio::test]
async fn a_fork_bomb_is_bounded_and_killed_whole_at_the_timeout() {
    let marker = unique("bomb");
    // Every process forks forever: only the process limit bounds it, only the timeout ends it.
    let source = format!(
        r#"
import os, sys
bomb = "import os\nhit = False\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        if not hit:\n            hit = True\n            print('limit hit', flush=True)\n"
os.execv(sys.executable, [sys.executable, "-c", bomb, {marker:?}])
"#
    );
    let limits = CodeLimits {
        timeout: Duration::from_secs(3),
        ..CodeLimits::default()
    };
    let run = run_python(&source, &limits).await.unwrap();
    assert!(run.timed_out, "{}", run.output);
    assert!(run.output.contains("limit hit"), "{}", run.output);
    // run_python returns once the sandbox's PID namespace is gone.
    assert_eq!(host_processes_with(&marker), Vec::<String>::new());
}

#[tokio::test]
async fn a_setsid_grandchild_does_not_outlive_the_run() {
    let marker = unique("daemon");
    let source = format!(
        r#"
import os, sys
marker = {marker:?}
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.setsid()
    if os.fork() == 0:
        # A daemon: its own session, no pipe of the run kept open.
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", marker])
    os._exit(0)
os.close(w)
os.waitpid(child, 0)
os.read(r, 1)  # the end of the pipe: the daemon has exec'd (its copy is close-on-exec)
running = 0
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            running += marker.encode() in open(f"/proc/{{p}}/cmdline", "rb").read()
        except OSError:
            pass
print("daemons running", running)
"#
    );
    let run = run(&source).await;
    assert_eq!(run.exit_code, Some(0), "{}", run.output);
    assert_eq!(run.output, "daemons running 1");
    assert_eq!(host_processes_with(&marker), Vec::<String>::new());
}

#[tokio::test]
async fn a_program_killed_at_the_timeout_takes_its_children_with_it() {
    let marker = unique("forever");
    let source = format!(
        "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'while True: pass', {marker:?}], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\nprint('started', flush=True)\nwhile True: pass\n"
    );
    let limits = CodeLimits {
        timeout: Duration::from_secs(3),
        ..CodeLimits::default()
    };
    let run = run_python(&source, &limits).await.unwrap();
    assert!(run.timed_out);
    assert_eq!(
        run.output, "started",
        "the child was started before the timeout"
    );
    assert_eq!(host_processes_with(&marker), Vec::<String>::new());
}

/// A program that, run without a sandbox, would leave `path` on the host.
fn leaves(path: &Path) -> String {
    format!("open({:?}, 'w').write('ran')\n", path.to_string_lossy())
}

#[tokio::test]
async fn without_bwrap_the_scorer_refuses_and_runs_nothing() {
    let evidence = std::env::temp_dir().join(unique("unconfined"));
    let missing = format!("/nonexistent/{}/bwrap", unique("dir"));
    let limits = CodeLimits {
        bwrap: missing.clone().into(),
        ..limits()
    };
    let e = run_python(&leaves(&evidence), &limits).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "the code scorer runs model-written code only inside a sandbox, and bubblewrap (`bwrap`) was not found (no file at {missing}): install it (`apt-get install bubblewrap`, `dnf install bubblewrap`)"
        )
    );
    // Through the scorer as a run uses it: an error, no verdict.
    let item = &Dataset::parse(
        "{\"id\": \"c\", \"prompt\": \"p\", \"tests\": \"def check(f):\\n    pass\\n\", \"entry_point\": \"f\"}\n",
        "t.jsonl",
        None,
    )
    .unwrap()
    .items[0];
    let not_a_backend = NoBackend;
    let ctx = fungible_eval::scorers::ScoreContext {
        backend: &not_a_backend,
        embedding_model: "none",
        code_limits: limits.clone(),
        judge_max_tokens: 1,
    };
    let answer = format!("```python\ndef f():\n    pass\n{}```", leaves(&evidence));
    let scored = Scorer::parse("code")
        .unwrap()
        .score(item, &answer, &ctx)
        .await;
    assert_eq!(scored, Err(e.to_string()));
    // A name that is not on PATH says so.
    let e = run_python(
        "pass\n",
        &CodeLimits {
            bwrap: "bwrap-not-installed-here".into(),
            ..limits.clone()
        },
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("(`bwrap-not-installed-here` is not on PATH)"),
        "{e}"
    );
    assert!(!evidence.exists(), "the code ran");
}

#[tokio::test]
async fn a_sandbox_that_fails_its_self_check_is_refused() {
    let evidence = std::env::temp_dir().join(unique("unconfined"));
    // A `bwrap` that does nothing and fails, and an interpreter the sandbox does not have.
    for limits in [
        CodeLimits {
            bwrap: "/bin/false".into(),
            ..limits()
        },
        CodeLimits {
            python: "python-not-installed-here".into(),
            ..limits()
        },
    ] {
        let e = run_python(&leaves(&evidence), &limits).await.unwrap_err();
        assert!(matches!(e, SandboxError::SelfCheck(_)), "{e:?}");
        let message = e.to_string();
        assert!(
            message.starts_with(
                "the code scorer's sandbox failed its self-check, so no model-written code is run: `"
            ),
            "{message}"
        );
        assert!(message.contains("user namespaces"), "{message}");
        if limits.python != "python3" {
            assert!(message.contains("python-not-installed-here"), "{message}");
        }
    }
    assert!(!evidence.exists(), "the code ran");
}

#[tokio::test]
async fn a_run_with_the_code_scorer_and_no_sandbox_asks_no_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = Dataset::parse(
        "{\"id\": \"c\", \"prompt\": \"p\", \"tests\": \"def check(f):\\n    pass\\n\", \"entry_point\": \"f\"}\n",
        "t.jsonl",
        None,
    )
    .unwrap();
    let mut opts = RunOptions::new(vec!["any".into()], dir.path().join("run"));
    opts.code_limits.bwrap = "/nonexistent/bwrap".into();
    let backend = std::sync::Arc::new(NoBackend);
    let e = runner::run(&data, backend, opts).await.unwrap_err();
    assert!(
        matches!(e, RunError::Sandbox(SandboxError::Missing { .. })),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("install it (`apt-get install bubblewrap`"),
        "{e}"
    );
    assert!(!dir.path().join("run/results.jsonl").exists());
}

/// A backend that must not be called.
struct NoBackend;

impl fungible_eval::backend::ChatBackend for NoBackend {
    fn chat(
        &self,
        _req: fungible_types::ChatRequest,
    ) -> fungible_eval::backend::BoxFuture<
        '_,
        Result<fungible_eval::backend::Answer, fungible_eval::backend::CallError>,
    > {
        panic!("a model was asked")
    }

    fn embed(
        &self,
        _model: &str,
        _inputs: Vec<String>,
    ) -> fungible_eval::backend::BoxFuture<
        '_,
        Result<Vec<Vec<f32>>, fungible_eval::backend::CallError>,
    > {
        panic!("a model was asked")
    }
}
