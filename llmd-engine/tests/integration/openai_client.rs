//! The official `openai` Python client against a real server on 127.0.0.1
//! (`scripts/interop/openai_client_check.py`): models, completions and chat, plain and
//! streaming, logprobs, usage, and typed errors.
//!
//! Needs a Python with `scripts/interop/requirements.txt` (`$LLMD_PYTHON`, or the
//! workspace `.venv`), so it is `#[ignore]`d: plain `cargo test` lists it as ignored;
//! `scripts/test.sh` creates the venv and runs it. Run that way, a missing interpreter is
//! a failure.

use std::path::PathBuf;

use llmd_engine::server::{Server, ServerConfig};
use llmd_engine::{EngineBuilder, KvDtype, builtin};

/// `$LLMD_PYTHON`, else the workspace's `.venv`; the test fails without either.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("LLMD_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "no $LLMD_PYTHON and no {}: run scripts/test.sh (it creates .venv from scripts/interop/requirements.txt)",
        venv.display()
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the interop venv: run scripts/test.sh, or set LLMD_PYTHON"]
async fn the_openai_python_client_works() {
    let python = python();
    let built = EngineBuilder::builtin().num_blocks(256).max_model_len(1024).kv_dtype(KvDtype::F16).build().unwrap();
    let server = Server::start(built.engine, built.template, ServerConfig::default()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/interop/openai_client_check.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&base)
        .arg(builtin::BUILTIN_MODEL_NAME)
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "openai client check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("checks passed"), "{stdout}");
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}
