//! Hugging Face model ids (`ORG/NAME`, optionally `ORG/NAME@REVISION`) resolved to a
//! checkpoint directory in the standard Hugging Face cache, as vLLM and transformers
//! resolve them: files already in the cache are used from it, others are downloaded
//! into it with hf-hub (Hugging Face's Rust client) unless `HF_HUB_OFFLINE` is set.
//!
//! The cache is `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`;
//! its layout is huggingface_hub's (`models--ORG--NAME/refs/REVISION` naming a commit,
//! `snapshots/COMMIT/FILE`), so a cache filled by `huggingface-cli download` or by
//! vLLM serves here unchanged.

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

/// Where and how to resolve ids.
#[derive(Debug, Clone, PartialEq)]
pub struct HubOptions {
    /// The hub cache directory (the one holding `models--…` folders).
    pub cache: PathBuf,
    /// Use only what the cache holds.
    pub offline: bool,
    /// The hub to download from (`HF_ENDPOINT`, as huggingface_hub reads it: a mirror);
    /// `None` is huggingface.co.
    pub endpoint: Option<String>,
    /// The most a resolution that downloads may take. hf-hub's client sets no
    /// per-request timeout, so this bounds the whole wait (the download thread is
    /// left behind when it passes, and the caller fails).
    pub download_timeout: std::time::Duration,
}

impl HubOptions {
    /// The cache and offline mode huggingface_hub would use in this environment.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let cache = var("HF_HUB_CACHE")
            .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
            .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface/hub")))
            .or_else(|| var("HOME").map(|h| h.join(".cache/huggingface/hub")))
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"));
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty());
        HubOptions { cache, offline, endpoint, download_timeout: std::time::Duration::from_secs(3600) }
    }
}

/// Whether `model` reads as a hub id rather than a local path: `ORG/NAME` (letters,
/// digits, `-`, `_`, `.`), optionally `@REVISION`, naming nothing on disk.
pub fn is_model_id(model: &Path) -> bool {
    let Some(s) = model.to_str() else { return false };
    let id = s.split_once('@').map_or(s, |(id, _)| id);
    let ok = |part: &str| {
        !part.is_empty()
            && !part.starts_with('.')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(id.split_once('/'), Some((org, name)) if ok(org) && ok(name)) && !model.exists()
}

/// Files a checkpoint directory needs, and those it may have.
const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
const OPTIONAL: &[&str] =
    &["tokenizer_config.json", "generation_config.json", "chat_template.jinja", "chat_template.json"];
/// Enough for the simulator (`--sim --model ID`): shape, tokenizer, template.
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

fn fail(id: &str, reason: impl Into<String>) -> EngineError {
    EngineError::Hub { id: id.to_string(), reason: reason.into() }
}

/// Fetches one file of a repo, from the cache or (online) the hub.
trait Fetch {
    /// The file's path, or `None` when the repo has no such file.
    fn get(&self, file: &str) -> Result<Option<PathBuf>>;
}

struct CacheOnly {
    repo: hf_hub::CacheRepo,
}

impl Fetch for CacheOnly {
    fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        Ok(self.repo.get(file))
    }
}

struct Online {
    id: String,
    api: hf_hub::api::sync::ApiRepo,
}

impl Fetch for Online {
    fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        // hf-hub answers from the cache first, then downloads into it.
        match self.api.get(file) {
            Ok(p) => Ok(Some(p)),
            // A file the repo does not have: optional ones are simply absent.
            Err(hf_hub::api::sync::ApiError::RequestError(e)) if is_not_found(&e) => Ok(None),
            Err(e) => Err(fail(&self.id, format!("downloading {file}: {e}"))),
        }
    }
}

fn is_not_found(e: &impl std::fmt::Display) -> bool {
    let s = e.to_string();
    s.contains("404") || s.contains("Not Found")
}

/// Resolves `id` to a checkpoint directory (a snapshot in the cache) holding its
/// config, tokenizer and chat template, and with `weights` its safetensors (one file
/// or every shard of the index).
pub fn resolve(id: &str, opts: &HubOptions, weights: bool) -> Result<PathBuf> {
    if opts.offline {
        return resolve_now(id, opts, weights);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (id2, opts2) = (id.to_string(), opts.clone());
    std::thread::Builder::new()
        .name("llmd-hub".into())
        .spawn(move || {
            let _ = tx.send(resolve_now(&id2, &opts2, weights));
        })
        .map_err(|e| fail(id, format!("starting the download thread: {e}")))?;
    match rx.recv_timeout(opts.download_timeout) {
        Ok(r) => r,
        Err(_) => Err(fail(id, format!("not resolved within {:?}", opts.download_timeout))),
    }
}

fn resolve_now(id: &str, opts: &HubOptions, weights: bool) -> Result<PathBuf> {
    let (name, revision) = match id.split_once('@') {
        Some((n, r)) => (n, r.to_string()),
        None => (id, "main".to_string()),
    };
    let repo = hf_hub::Repo::with_revision(name.to_string(), hf_hub::RepoType::Model, revision);
    let cache = hf_hub::Cache::new(opts.cache.clone());
    let fetch: Box<dyn Fetch> = if opts.offline {
        Box::new(CacheOnly { repo: cache.repo(repo) })
    } else {
        let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(cache).with_progress(false);
        if let Some(e) = &opts.endpoint {
            builder = builder.with_endpoint(e.clone());
        }
        let api = builder.build().map_err(|e| fail(id, format!("starting the hub client: {e}")))?;
        Box::new(Online { id: id.to_string(), api: api.repo(repo) })
    };
    let missing = |file: &str| {
        if opts.offline {
            fail(id, format!("{file} is not in the cache at {} and HF_HUB_OFFLINE is set", opts.cache.display()))
        } else {
            fail(id, format!("the repository has no {file}"))
        }
    };
    let mut dir: Option<PathBuf> = None;
    for file in REQUIRED {
        let p = fetch.get(file)?.ok_or_else(|| missing(file))?;
        dir.get_or_insert_with(|| p.parent().map(Path::to_path_buf).unwrap_or_default());
    }
    for file in OPTIONAL {
        fetch.get(file)?;
    }
    if weights {
        match fetch.get(WEIGHTS_INDEX)? {
            Some(index) => {
                let text = std::fs::read_to_string(&index).map_err(|e| EngineError::io(&index, e))?;
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| fail(id, format!("{WEIGHTS_INDEX}: {e}")))?;
                let mut shards: Vec<&str> = v
                    .get("weight_map")
                    .and_then(|m| m.as_object())
                    .ok_or_else(|| fail(id, format!("{WEIGHTS_INDEX} has no weight_map")))?
                    .values()
                    .filter_map(|f| f.as_str())
                    .collect();
                shards.sort_unstable();
                shards.dedup();
                for shard in shards {
                    fetch.get(shard)?.ok_or_else(|| missing(shard))?;
                }
            }
            None => {
                fetch.get("model.safetensors")?.ok_or_else(|| missing("model.safetensors"))?;
            }
        }
    }
    dir.ok_or_else(|| fail(id, "no files resolved"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache laid out as huggingface_hub lays it out, holding `files` of `id` at a
    /// commit that `refs/main` names.
    fn cache_with(root: &Path, id: &str, files: &[(&str, &str)]) -> PathBuf {
        let repo = root.join(format!("models--{}", id.replace('/', "--")));
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        let snap = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        for (name, body) in files {
            std::fs::write(snap.join(name), body).unwrap();
        }
        snap
    }

    #[test]
    fn ids_resolve_offline_from_a_hub_cache() {
        let root = std::env::temp_dir().join(format!("llmd-hub-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let snap = cache_with(
            &root,
            "acme/tiny",
            &[
                ("config.json", "{}"),
                ("tokenizer.json", "{}"),
                (WEIGHTS_INDEX, r#"{"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}"#),
                ("model-1.safetensors", ""),
                ("model-2.safetensors", ""),
            ],
        );
        let opts = HubOptions {
            cache: root.clone(),
            offline: true,
            endpoint: None,
            download_timeout: std::time::Duration::ZERO,
        };
        assert_eq!(resolve("acme/tiny", &opts, true).unwrap(), snap);
        // A shard missing from the cache, offline: named in the error.
        std::fs::remove_file(snap.join("model-2.safetensors")).unwrap();
        let e = resolve("acme/tiny", &opts, true).unwrap_err().to_string();
        assert!(e.contains("acme/tiny") && e.contains("model-2.safetensors") && e.contains("HF_HUB_OFFLINE"), "{e}");
        // Without weights (the simulator) it still resolves.
        assert_eq!(resolve("acme/tiny", &opts, false).unwrap(), snap);
        let e = resolve("acme/other", &opts, false).unwrap_err().to_string();
        assert!(e.contains("config.json is not in the cache"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Bad hubs on loopback: one that accepts and never answers is cut by the deadline,
    /// one that resets every connection fails the download with its cause.
    #[test]
    fn silent_and_resetting_hubs_fail_within_the_deadline() {
        use std::net::TcpListener;
        let serve = |answer: bool| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for s in l.incoming().flatten() {
                    if answer {
                        drop(s); // closed at once: a reset mid-request
                    } else {
                        held.push(s); // kept open, never answered
                    }
                }
            });
            format!("http://{addr}")
        };
        let root = std::env::temp_dir().join(format!("llmd-hub-bad-{}", std::process::id()));
        let opts = |endpoint: String| HubOptions {
            cache: root.clone(),
            offline: false,
            endpoint: Some(endpoint),
            download_timeout: std::time::Duration::from_millis(500),
        };
        let e = resolve("acme/tiny", &opts(serve(false)), true).unwrap_err().to_string();
        assert!(e.contains("acme/tiny") && e.contains("not resolved within"), "{e}");
        let e = resolve("acme/tiny", &opts(serve(true)), true).unwrap_err().to_string();
        assert!(e.contains("downloading config.json"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn only_org_slash_name_reads_as_an_id() {
        assert!(is_model_id(Path::new("HuggingFaceTB/SmolLM2-135M-Instruct")));
        assert!(is_model_id(Path::new("Qwen/Qwen2.5-0.5B@main")));
        for path in ["model", "./a/b", "/abs/x", "a/b/c", "../x", "a/.b", "org/na me"] {
            assert!(!is_model_id(Path::new(path)), "{path}");
        }
    }
}
