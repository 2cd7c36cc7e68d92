//! The engine embedded in a program, with no HTTP server and no async runtime: build the
//! built-in model, start the engine thread, submit prompts from plain threads and print
//! what comes back.
//!
//! Run it with `cargo run -p llmd-engine --example embedded`.

use std::thread;

use llmd_engine::{ByteTokenizer, EngineBuilder, EngineHandle, HandleConfig, NewRequest, SamplingParams, Tokenize};

const PROMPTS: [&str; 3] = ["Hello", "The quick brown fox", "Paged attention"];

pub(crate) fn main() -> Result<(), llmd_engine::EngineError> {
    let built = EngineBuilder::builtin().num_blocks(128).max_model_len(256).build()?;
    let handle = EngineHandle::spawn(built.engine, HandleConfig::default())?;

    // One thread per prompt, all sharing the engine: their requests are batched together.
    let workers: Vec<_> = PROMPTS
        .iter()
        .enumerate()
        .map(|(i, prompt)| {
            let handle = handle.clone();
            thread::spawn(move || -> Result<String, llmd_engine::EngineError> {
                let stream = handle.submit(NewRequest {
                    id: format!("req-{i}"),
                    prompt: ByteTokenizer.encode(prompt, true)?,
                    params: SamplingParams { max_tokens: 16, temperature: 0.0, ..Default::default() },
                    keys: Default::default(),
                    kv_transfer: Default::default(),
                })?;
                // The stream is an iterator of outputs; the last one says why it ended.
                let mut text = String::new();
                let mut reason = "unfinished";
                for out in stream {
                    text.push_str(&out.text);
                    if let Some(f) = out.finished {
                        reason = f.as_str();
                    }
                }
                Ok(format!("{prompt:?} -> {text:?} ({reason})"))
            })
        })
        .collect();
    for w in workers {
        match w.join() {
            Ok(line) => println!("{}", line?),
            Err(_) => eprintln!("a worker thread panicked"),
        }
    }
    handle.shutdown();
    Ok(())
}
