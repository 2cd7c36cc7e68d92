#![allow(clippy::unwrap_used)]
//! The one checkpoint loader end to end: a directory with a real `tokenizer.json` and a
//! chat template in `tokenizer_config.json`, turned into the token ids of raw requests.

use llmd_openai::{ChatMessage, PromptRenderer};
use serde_json::json;

/// A word-level tokenizer whose post-processor prepends `<s>` (id 0).
fn tokenizer_json() -> String {
    let words = ["<s>", "<unk>", "user", "system", "assistant", "hi", "there", "be", "brief"];
    let vocab: serde_json::Map<String, serde_json::Value> =
        words.iter().enumerate().map(|(i, w)| (w.to_string(), json!(i))).collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}},
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    })
    .to_string()
}

#[test]
fn a_checkpoint_directory_renders_and_tokenizes_requests() {
    let dir = std::env::temp_dir().join(format!("llmd-openai-renderer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({"bos_token": "<s>", "chat_template":
            "{{ bos_token }}{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}assistant{% endif %}"})
        .to_string(),
    )
    .unwrap();
    let r = PromptRenderer::from_dir(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let msgs = [ChatMessage::new("system", "be brief"), ChatMessage::new("user", "hi")];
    assert_eq!(r.render_chat(&msgs, true).unwrap(), "<s>system be brief user hi assistant");
    // The template writes `<s>`; encoding adds nothing more.
    assert_eq!(r.tokenize_chat(&msgs, true).unwrap(), vec![0, 3, 7, 8, 2, 5, 4]);

    let chat = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi there"},
        {"type": "image_url", "image_url": {"url": "x"}}]}], "add_generation_prompt": false});
    assert_eq!(r.tokenize_request("/v1/chat/completions", &chat), Some(vec![0, 2, 5, 6]));
    // Completions get the post-processor's `<s>`; unknown words map to `<unk>`.
    assert_eq!(r.tokenize_request("/v1/completions", &json!({"prompt": "hi stranger"})), Some(vec![0, 5, 1]));
    assert_eq!(r.tokenize_request("/v1/completions", &json!({"prompt": [5, 6]})), Some(vec![5, 6]));
    assert_eq!(r.tokenizer.decode(&[0, 5, 6], true).unwrap(), "hi there");
}
