//! Helpers shared by the end-to-end tests.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use llmd::cluster::Replica;
use llmd::engine::LatencyModel;

/// A simulated replica whose prefill costs 100 µs per uncached token.
pub(crate) fn sim() -> Replica {
    let latency = LatencyModel {
        step_overhead: Duration::from_micros(500),
        per_prefill_token: Duration::from_micros(100),
        per_decode_seq: Duration::from_micros(50),
        per_context_token: Duration::ZERO,
        per_transfer_token: Duration::ZERO,
        per_onboard_token: Duration::ZERO,
        per_disk_token: Duration::ZERO,
    };
    Replica::simulated("llmd-sim", latency, 2048).unwrap()
}

/// Polls `cond` every 10 ms for at most `limit`: the other side is a process, a file
/// poller or a subscriber on the real clock, with nothing to await.
pub(crate) async fn eventually(limit: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Checks `cond` every 10 ms for `window`; false at the first check that fails. For
/// invariants that must hold while another process keeps acting (an election step).
pub(crate) async fn holds_for(window: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < window {
        if !cond().await {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Sends signal `name` (`TERM`, `INT`) to `child`.
pub(crate) fn signal(child: &std::process::Child, name: &str) {
    let ok = std::process::Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
}

/// Waits for `child` to exit, at most `limit`.
pub(crate) fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < limit, "still running {limit:?} after the signal");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `llmd`, killed when dropped.
pub(crate) struct Llmd {
    pub(crate) child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Llmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Llmd {
    /// The next stdout line starting with `prefix` (others are skipped), within `limit`.
    pub(crate) fn line_starting(&self, prefix: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if l.starts_with(prefix) => return Some(l),
                Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
        None
    }
}

/// Starts `llmd ARGS` and waits for a stdout line starting with `ready`; returns the
/// process and that line, or `None` when it exited first (a port taken, say).
pub(crate) fn start_llmd(args: &[String], ready: &str) -> Option<(Llmd, String)> {
    start_llmd_env(args, &[], ready)
}

/// [`start_llmd`] with extra environment variables.
pub(crate) fn start_llmd_env(args: &[String], env: &[(&str, &str)], ready: &str) -> Option<(Llmd, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("VLLM_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut p = Llmd { child, lines };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match p.lines.recv_timeout(Duration::from_millis(100)) {
            Ok(l) if l.starts_with(ready) => return Some((p, l)),
            Ok(_) => {}
            Err(_) if p.child.try_wait().unwrap().is_some() => return None,
            Err(_) => assert!(Instant::now() < deadline, "llmd {args:?} did not start"),
        }
    }
}

/// `$LLMD_PYTHON`, else the workspace's `.venv`; a test that needs it fails without it.
pub(crate) fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("LLMD_PYTHON") {
        return p.into();
    }
    let venv = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no $LLMD_PYTHON and no {}: run scripts/test.sh (it creates .venv from scripts/interop/requirements.txt)",
        venv.display()
    );
    venv
}

/// Runs `scripts/interop/openai_client_check.py` (the official `openai` client) against
/// `base` (`http://host:port/v1`) for `model`, and asserts every check passed.
pub(crate) async fn openai_client_check(base: &str, model: &str) {
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/interop/openai_client_check.py");
    let out = tokio::process::Command::new(python()).arg(&script).arg(base).arg(model).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("checks passed"), "{stdout}");
}
