//! The one-step installs stay true to the README: the Dockerfile builds with the README's own
//! steps and runs as a non-root user with a health check, the compose file's config is valid,
//! and the setup step names missing build dependencies instead of failing mid-build. (Docker
//! itself does not run on the CI machine: the image is not built here.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_dockerfile_builds_as_the_readme_says_and_runs_unprivileged_with_a_health_check() {
    let dockerfile = read("Dockerfile");
    let readme = read("README.md");
    // The README's quickstart: the models, then a release build of the `fungible` package.
    assert!(readme.contains("scripts/setup-models.sh && cargo run --release -p fungible -- serve"), "the README's first command moved");
    assert!(dockerfile.contains("RUN scripts/setup-models.sh"), "{dockerfile}");
    assert!(dockerfile.contains("cargo build --release -p fungible --bin fungible"), "{dockerfile}");
    // The run stage: not root, a health check on /health, serving beyond loopback.
    let run_stage = dockerfile.rsplit_once("\nFROM ").map(|(_, s)| s).expect("two stages");
    assert!(run_stage.contains("\nUSER fungible\n") && run_stage.contains("useradd --system"), "{run_stage}");
    assert!(run_stage.contains("HEALTHCHECK") && run_stage.contains("http://127.0.0.1:4000/health"), "{run_stage}");
    assert!(run_stage.contains(r#"CMD ["serve", "--host", "0.0.0.0", "--port", "4000"]"#), "{run_stage}");
    assert!(run_stage.contains("FUNGIBLE_MODELS_DIR=/opt/fungible/models"), "{run_stage}");
    // The build context leaves build outputs and local models out.
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l == "target/") && ignore.lines().any(|l| l == "models/"), "{ignore}");
}

#[test]
fn the_compose_files_config_is_valid() {
    let compose = read("docker-compose.yml");
    assert!(compose.contains("./examples/docker/fungible.toml:/etc/fungible/fungible.toml"), "{compose}");
    let out = Command::new(env!("CARGO_BIN_EXE_fungible"))
        .args(["check", "--config"])
        .arg(root().join("examples/docker/fungible.toml"))
        .env("FUNGIBLE_ADMIN_KEY", "an-admin-key-of-some-length")
        .env("OPENAI_API_KEY", "sk-test")
        .env("FUNGIBLE_LOG", "warn")
        .output()
        .expect("fungible check runs");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(said.contains("store:     postgres://fungible@postgres:5432/fungible"), "{said}");
}

#[test]
fn the_setup_step_names_missing_build_dependencies() {
    let script = root().join("scripts/check-build-deps.sh");
    // This machine builds fungible: nothing is missing.
    let out = Command::new("bash").arg(&script).output().expect("bash runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // With nothing on the PATH, it says what is missing and how to get it.
    let out = Command::new("/bin/bash").arg(&script).env_clear().env("PATH", "/nonexistent").output().expect("bash runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("Rust (cargo)") && said.contains("cmake") && said.contains("sudo apt-get install -y cmake"), "{said}");
    assert!(said.contains("--no-default-features"), "{said}");
}
