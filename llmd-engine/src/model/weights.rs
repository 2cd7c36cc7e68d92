//! Loading `safetensors` checkpoints: one `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Tensors are converted to `f32` for the CPU kernels.

use std::collections::HashMap;
use std::path::Path;

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::error::{EngineError, Result};

/// A dense row-major `f32` tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor of the given shape; `data.len()` must equal the shape's product.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(EngineError::Weights(format!("shape {shape:?} needs {n} elements, got {}", data.len())));
        }
        Ok(Tensor { shape, data })
    }
}

/// Named tensors of a checkpoint.
#[derive(Debug, Default)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Weights from tensors already in memory (tests, the built-in model).
    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Self {
        Weights { tensors }
    }

    /// Loads every tensor of a checkpoint directory.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<String> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| EngineError::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| EngineError::config("model.safetensors.index.json", "(document)", e.to_string()))?;
            let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
                EngineError::config("model.safetensors.index.json", "weight_map", "missing or not an object")
            })?;
            let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
            files.sort();
            files.dedup();
            files
        } else if dir.join("model.safetensors").exists() {
            vec!["model.safetensors".into()]
        } else {
            return Err(EngineError::Weights(format!(
                "{} has neither model.safetensors nor model.safetensors.index.json",
                dir.display()
            )));
        };
        let mut tensors = HashMap::new();
        for f in files {
            if f.contains('/') || f.contains("..") {
                return Err(EngineError::Weights(format!("shard name {f:?} leaves the checkpoint directory")));
            }
            let path = dir.join(&f);
            let bytes = std::fs::read(&path).map_err(|e| EngineError::io(&path, e))?;
            let st = SafeTensors::deserialize(&bytes).map_err(|e| EngineError::Weights(format!("{f}: {e}")))?;
            for (name, view) in st.tensors() {
                let data =
                    to_f32(view.dtype(), view.data()).map_err(|e| EngineError::Weights(format!("{f}: {name}: {e}")))?;
                tensors.insert(name, Tensor { shape: view.shape().to_vec(), data });
            }
        }
        Ok(Weights { tensors })
    }

    /// Whether a tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes and returns a tensor, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.remove(name).ok_or_else(|| EngineError::Weights(format!("missing tensor {name}")))?;
        if t.shape != shape {
            return Err(EngineError::Weights(format!("{name} has shape {:?}, expected {shape:?}", t.shape)));
        }
        Ok(t)
    }

    /// Like [`take`](Self::take) but `None` when absent.
    pub fn take_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.contains(name) { self.take(name, shape).map(Some) } else { Ok(None) }
    }
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> std::result::Result<Vec<f32>, String> {
    let conv = |width: usize, f: fn([u8; 4]) -> f32| -> Vec<f32> {
        bytes
            .chunks_exact(width)
            .map(|c| {
                let mut b = [0u8; 4];
                b[..width].copy_from_slice(c);
                f(b)
            })
            .collect()
    };
    Ok(match dtype {
        Dtype::F32 => conv(4, f32::from_le_bytes),
        Dtype::F16 => conv(2, |b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
        Dtype::BF16 => conv(2, |b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        other => return Err(format!("dtype {other:?} is not supported (f32, f16, bf16)")),
    })
}
