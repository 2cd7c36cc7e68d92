//! Real models from files and ids:
//! - `llmd up --model FILE.gguf` answering the official `openai` client with the greedy
//!   text both oracles give (`llmd-engine/tests/fixtures/gguf/smollm2.json` from
//!   llama.cpp and `smollm2_f32.json` from the f32 reference: the last chat prompt's
//!   tokens decode to "The capital of France is Paris." then end of turn, every token
//!   at least 0.86 logits ahead of the next; the bare question's first token is a
//!   0.08-logit tie that 8-bit rounding decides either way); needs the SmolLM2 GGUF
//!   (`scripts/gguf/fetch_smollm2.sh`, `LLMD_SMOLLM2_GGUF`) and the interop venv,
//!   which `scripts/test.sh` provides;
//! - `llmd serve --model ORG/NAME` from a Hugging Face cache, offline.

use std::time::Duration;

const CLIENT: &str = r#"
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="unused", timeout=120)
model = client.models.list().data[0].id
chat = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    temperature=0, max_tokens=32)
print("CHAT", repr(chat.choices[0].message.content), chat.choices[0].finish_reason)
text = client.completions.create(model=model, prompt="The capital of France is", temperature=0, max_tokens=5)
print("COMPLETION", repr(text.choices[0].text))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SmolLM2 GGUF (LLMD_SMOLLM2_GGUF) and the interop venv: run scripts/test.sh"]
async fn llmd_up_serves_a_gguf_model_to_the_openai_client() {
    let gguf = std::env::var("LLMD_SMOLLM2_GGUF").expect("LLMD_SMOLLM2_GGUF: run scripts/gguf/fetch_smollm2.sh");
    let args: Vec<String> = ["up", "--model", &gguf, "--replicas", "1", "--port", "0"].map(String::from).to_vec();
    let (mut up, line) = crate::common::start_llmd(&args, "llmd up:").expect("llmd up started");
    let base =
        line.split("http://").nth(1).and_then(|s| s.split("/v1").next()).map(|a| format!("http://{a}/v1")).unwrap();
    let run = tokio::process::Command::new(crate::common::python()).arg("-c").arg(CLIENT).arg(&base).output();
    let out = tokio::time::timeout(Duration::from_secs(300), run).await.expect("client finished").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("CHAT 'The capital of France is Paris.' stop"), "{stdout}");
    // llama.cpp's and the reference's first five greedy tokens.
    assert!(stdout.contains("COMPLETION ' Paris.\\n\\nThe'"), "{stdout}");
    crate::common::signal(&up.child, "TERM");
    let status = crate::common::wait_exit(&mut up.child, Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}

/// `llmd serve --model ORG/NAME` resolves the id through a Hugging Face cache laid out
/// as huggingface_hub lays it out (here filled from a test checkpoint), offline, and
/// serves the model under the id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hugging_face_id_is_served_from_the_cache_offline() {
    let fixture = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("llmd-engine/tests/fixtures/llama-gqa-tied-bf16-sharded");
    let home = std::env::temp_dir().join(format!("llmd-hf-home-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let repo = home.join("hub/models--acme--tiny-llama");
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for f in std::fs::read_dir(&fixture).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, snap.join(f.file_name().unwrap())).unwrap();
    }
    let args: Vec<String> = ["serve", "--model", "acme/tiny-llama", "--port", "0"].map(String::from).to_vec();
    let env = [("HF_HOME", home.to_str().unwrap()), ("HF_HUB_OFFLINE", "1"), ("HF_HUB_CACHE", "")];
    let (mut serve, line) = crate::common::start_llmd_env(&args, &env, "llmd serve:").expect("llmd serve started");
    assert!(line.contains("\"acme/tiny-llama\""), "{line}");
    let base = line.split("http://").nth(1).and_then(|s| s.split("/v1").next()).unwrap().to_string();
    let body = serde_json::json!({"model": "acme/tiny-llama", "prompt": "Hello", "max_tokens": 4, "temperature": 0});
    let r = reqwest::Client::new()
        .post(format!("http://{base}/v1/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    crate::common::signal(&serve.child, "TERM");
    let status = crate::common::wait_exit(&mut serve.child, Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    // Offline with the id missing from the cache: an error naming the id and the file.
    let args: Vec<String> = ["serve", "--model", "acme/absent", "--port", "0"].map(String::from).to_vec();
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_llmd")).args(&args).envs(env.iter().copied()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("acme/absent") && err.contains("HF_HUB_OFFLINE"), "{err}");
    std::fs::remove_dir_all(&home).unwrap();
}
