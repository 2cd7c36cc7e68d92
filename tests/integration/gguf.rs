//! `llmd up --model FILE.gguf` answering the official `openai` client with the greedy
//! text of the f32 reference (`llmd-engine/tests/fixtures/gguf/smollm2_f32.json`: the
//! chat prompt's tokens decode to "The capital of France is Paris." then end of turn).
//!
//! Needs the SmolLM2 GGUF (`scripts/gguf/fetch_smollm2.sh`, `LLMD_SMOLLM2_GGUF`) and the
//! interop venv: `scripts/test.sh` provides both.

use std::time::Duration;

const CLIENT: &str = r#"
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="unused", timeout=120)
model = client.models.list().data[0].id
chat = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "What is the capital of France?"}],
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
