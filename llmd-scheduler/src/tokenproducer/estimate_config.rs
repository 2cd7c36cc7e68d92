//! The estimate backend's parameters (`estimate` of the `token-producer`), decoded and
//! checked as llm-d-router's `PluginFactory` does: its strict decoder refuses unknown keys
//! (matching the others case-insensitively, as Go's decoder does), integer fields take
//! integer literals only, and the mode strings are validated with the router's messages.

use std::collections::BTreeMap;

use serde_json::Value;

use super::gojson::fold_eq;

/// How a placeholder count is derived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CountMode {
    /// width * height / factor (`"dynamic"`, the default).
    #[default]
    Dynamic,
    /// A constant (`"static"`).
    Static,
}

/// How a video's frames are counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FramesMode {
    /// duration * sampleFPS, merged by temporalPatchSize (`"sampled"`, the default).
    #[default]
    Sampled,
    /// duration * source FPS / frameStride (`"strided"`).
    Strided,
}

/// `estimate.image`: image placeholder estimation. Zero fields use the built-in defaults
/// (640x360, factor 1024, a static count of 1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageEstimate {
    /// `mode`.
    pub mode: CountMode,
    /// `defaultResolution.width`: used when an image's dimensions cannot be decoded.
    pub default_width: i64,
    /// `defaultResolution.height`.
    pub default_height: i64,
    /// `dynamic.factor`: pixels per placeholder token.
    pub factor: i64,
    /// `static.staticToken`: placeholders per image in static mode.
    pub static_token: i64,
}

/// `estimate.video`: video placeholder estimation, min(frames * tokens per frame,
/// maxVideoTokens). Zero fields use the built-in defaults (10 s, 640x360, 2 sampled frames
/// a second, 24 source frames a second, factor 1024, uncapped); the
/// `x-llm-d-video-*` request headers override duration, resolution and source FPS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VideoEstimate {
    /// `tokensPerFrame.mode`.
    pub tokens_per_frame_mode: CountMode,
    /// `tokensPerFrame.dynamic.factor`.
    pub factor: i64,
    /// `tokensPerFrame.static.numTokensPerFrame`.
    pub static_tokens_per_frame: i64,
    /// `frames.mode`.
    pub frames_mode: FramesMode,
    /// `frames.sampled.sampleFPS`.
    pub sample_fps: f64,
    /// `frames.strided.defaultSourceFPS`.
    pub source_fps: f64,
    /// `frames.strided.frameStride`.
    pub frame_stride: i64,
    /// `frames.maxFrames` (0: uncapped).
    pub max_frames: i64,
    /// `frames.minFrames` (0: no floor).
    pub min_frames: i64,
    /// `frames.sampled.temporalPatchSize` (< 2: no merging).
    pub temporal_patch_size: i64,
    /// `defaultResolution.width`.
    pub default_width: i64,
    /// `defaultResolution.height`.
    pub default_height: i64,
    /// `defaultDuration`, seconds.
    pub default_duration: f64,
    /// `maxVideoTokens` (0: uncapped).
    pub max_video_tokens: i64,
}

/// `estimate` parameters: image/video estimators.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EstimateConfig {
    /// Image placeholder estimation.
    pub image: ImageEstimate,
    /// Video placeholder estimation.
    pub video: VideoEstimate,
}

const INVALID: &str = "invalid configuration for 'token-producer' plugin";

// An object parameter's members by field name (Go matches keys case-insensitively, an
// exact key winning); `None` for absent or null. Unknown keys are refused.
fn cfg_object<'v>(
    v: Option<&'v Value>,
    path: &str,
    fields: &[&'static str],
) -> Result<Option<BTreeMap<&'static str, &'v Value>>, String> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(format!("{path}: must be an object")),
    };
    let mut out = BTreeMap::new();
    for (k, val) in obj {
        let Some(&f) = fields.iter().find(|f| fold_eq(k, f)) else {
            return Err(format!("{path}.{k}: unknown parameter"));
        };
        if k == f || !out.contains_key(f) {
            out.insert(f, val);
        }
    }
    Ok(Some(out))
}

fn cfg_int(m: &BTreeMap<&str, &Value>, key: &str, path: &str) -> Result<i64, String> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| format!("{path}.{key}: must be an integer")),
        Some(_) => Err(format!("{path}.{key}: must be an integer")),
    }
}

fn cfg_float(m: &BTreeMap<&str, &Value>, key: &str, path: &str) -> Result<f64, String> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(0.0),
        Some(Value::Number(n)) => n.as_f64().ok_or_else(|| format!("{path}.{key}: must be a number")),
        Some(_) => Err(format!("{path}.{key}: must be a number")),
    }
}

fn cfg_str<'v>(m: &BTreeMap<&str, &'v Value>, key: &str, path: &str) -> Result<&'v str, String> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("{path}.{key}: must be a string")),
    }
}

fn cfg_resolution(m: &BTreeMap<&str, &Value>, path: &str) -> Result<(i64, i64), String> {
    let path = format!("{path}.defaultResolution");
    match cfg_object(m.get("defaultResolution").copied(), &path, &["width", "height"])? {
        None => Ok((0, 0)),
        Some(r) => Ok((cfg_int(&r, "width", &path)?, cfg_int(&r, "height", &path)?)),
    }
}

fn count_mode(s: &str, path: &str) -> Result<CountMode, String> {
    match s {
        "" | "dynamic" => Ok(CountMode::Dynamic),
        "static" => Ok(CountMode::Static),
        _ => Err(format!("{INVALID}: {path}.mode must be \"dynamic\" or \"static\"")),
    }
}

impl EstimateConfig {
    /// From the `estimate` parameter object (`Null` = defaults), with llm-d-router's
    /// validation: unknown keys are refused naming their path (e.g.
    /// `estimate.image.mod: unknown parameter`), integers must be integers, and the modes
    /// must be `"dynamic"`/`"static"` (image, video tokens per frame) or
    /// `"sampled"`/`"strided"` (video frames).
    pub fn from_params(v: &Value) -> Result<Self, String> {
        let mut cfg = EstimateConfig::default();
        let Some(est) = cfg_object(Some(v), "estimate", &["image", "video"])? else {
            return Ok(cfg);
        };
        let p = "estimate.image";
        if let Some(img) =
            cfg_object(est.get("image").copied(), p, &["mode", "defaultResolution", "static", "dynamic"])?
        {
            let i = &mut cfg.image;
            (i.default_width, i.default_height) = cfg_resolution(&img, p)?;
            let sp = format!("{p}.static");
            if let Some(s) = cfg_object(img.get("static").copied(), &sp, &["staticToken"])? {
                i.static_token = cfg_int(&s, "staticToken", &sp)?;
            }
            let dp = format!("{p}.dynamic");
            if let Some(d) = cfg_object(img.get("dynamic").copied(), &dp, &["factor"])? {
                i.factor = cfg_int(&d, "factor", &dp)?;
            }
            i.mode = count_mode(cfg_str(&img, "mode", p)?, p)?;
        }
        let p = "estimate.video";
        let fields = ["defaultResolution", "defaultDuration", "tokensPerFrame", "frames", "maxVideoTokens"];
        if let Some(vid) = cfg_object(est.get("video").copied(), p, &fields)? {
            let c = &mut cfg.video;
            (c.default_width, c.default_height) = cfg_resolution(&vid, p)?;
            c.default_duration = cfg_float(&vid, "defaultDuration", p)?;
            c.max_video_tokens = cfg_int(&vid, "maxVideoTokens", p)?;
            let tp = format!("{p}.tokensPerFrame");
            if let Some(t) = cfg_object(vid.get("tokensPerFrame").copied(), &tp, &["mode", "static", "dynamic"])? {
                let sp = format!("{tp}.static");
                if let Some(s) = cfg_object(t.get("static").copied(), &sp, &["numTokensPerFrame"])? {
                    c.static_tokens_per_frame = cfg_int(&s, "numTokensPerFrame", &sp)?;
                }
                let dp = format!("{tp}.dynamic");
                if let Some(d) = cfg_object(t.get("dynamic").copied(), &dp, &["factor"])? {
                    c.factor = cfg_int(&d, "factor", &dp)?;
                }
                c.tokens_per_frame_mode = count_mode(cfg_str(&t, "mode", &tp)?, &tp)?;
            }
            let fp = format!("{p}.frames");
            let ff = ["mode", "minFrames", "maxFrames", "sampled", "strided"];
            if let Some(f) = cfg_object(vid.get("frames").copied(), &fp, &ff)? {
                c.min_frames = cfg_int(&f, "minFrames", &fp)?;
                c.max_frames = cfg_int(&f, "maxFrames", &fp)?;
                let sp = format!("{fp}.sampled");
                if let Some(s) = cfg_object(f.get("sampled").copied(), &sp, &["sampleFPS", "temporalPatchSize"])? {
                    c.sample_fps = cfg_float(&s, "sampleFPS", &sp)?;
                    c.temporal_patch_size = cfg_int(&s, "temporalPatchSize", &sp)?;
                }
                let st = format!("{fp}.strided");
                if let Some(s) = cfg_object(f.get("strided").copied(), &st, &["defaultSourceFPS", "frameStride"])? {
                    c.source_fps = cfg_float(&s, "defaultSourceFPS", &st)?;
                    c.frame_stride = cfg_int(&s, "frameStride", &st)?;
                }
                c.frames_mode = match cfg_str(&f, "mode", &fp)? {
                    "" | "sampled" => FramesMode::Sampled,
                    "strided" => FramesMode::Strided,
                    _ => return Err(format!("{INVALID}: {fp}.mode must be \"sampled\" or \"strided\"")),
                };
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // --- Parameters (TestPluginFactory_Validation, the estimate cases) --------------------

    #[test]
    fn parameters() {
        assert_eq!(EstimateConfig::from_params(&Value::Null), Ok(EstimateConfig::default()));
        assert_eq!(EstimateConfig::from_params(&json!({})), Ok(EstimateConfig::default()));
        let c = EstimateConfig::from_params(&json!({"image": {"mode": "static", "static": {"staticToken": 8}}}))
            .expect("estimate image static mode parses");
        assert_eq!(c.image, ImageEstimate { mode: CountMode::Static, static_token: 8, ..ImageEstimate::default() });
        let c = EstimateConfig::from_params(&json!({"video": {"defaultResolution": {"width": 640, "height": 480},
            "defaultDuration": 2.5, "maxVideoTokens": 9, "tokensPerFrame": {"mode": "static", "static": {"numTokensPerFrame": 3},
            "dynamic": {"factor": 7}}, "frames": {"mode": "strided", "minFrames": 1, "maxFrames": 2,
            "sampled": {"sampleFPS": 1.5, "temporalPatchSize": 2}, "strided": {"defaultSourceFPS": 30, "frameStride": 4}}}}))
        .expect("full video config");
        assert_eq!(
            c.video,
            VideoEstimate {
                tokens_per_frame_mode: CountMode::Static,
                factor: 7,
                static_tokens_per_frame: 3,
                frames_mode: FramesMode::Strided,
                sample_fps: 1.5,
                source_fps: 30.0,
                frame_stride: 4,
                max_frames: 2,
                min_frames: 1,
                temporal_patch_size: 2,
                default_width: 640,
                default_height: 480,
                default_duration: 2.5,
                max_video_tokens: 9,
            }
        );
        // Go's decoder matches keys case-insensitively.
        let c = EstimateConfig::from_params(&json!({"Image": {"MODE": "static"}})).expect("folded keys");
        assert_eq!(c.image.mode, CountMode::Static);
        for (p, want) in [
            (
                json!({"image": {"mode": "bogus"}}),
                "invalid configuration for 'token-producer' plugin: estimate.image.mode must be \"dynamic\" or \"static\"",
            ),
            (
                json!({"video": {"tokensPerFrame": {"mode": "x"}}}),
                "invalid configuration for 'token-producer' plugin: estimate.video.tokensPerFrame.mode must be \"dynamic\" or \"static\"",
            ),
            (
                json!({"video": {"frames": {"mode": "dynamic"}}}),
                "invalid configuration for 'token-producer' plugin: estimate.video.frames.mode must be \"sampled\" or \"strided\"",
            ),
            (json!({"image": {"mod": "static"}}), "estimate.image.mod: unknown parameter"),
            (json!({"audio": {}}), "estimate.audio: unknown parameter"),
            (
                json!({"video": {"frames": {"sampled": {"fps": 2}}}}),
                "estimate.video.frames.sampled.fps: unknown parameter",
            ),
            (
                json!({"image": {"static": {"staticToken": 1.5}}}),
                "estimate.image.static.staticToken: must be an integer",
            ),
            (json!({"image": {"mode": 1}}), "estimate.image.mode: must be a string"),
            (json!({"video": {"defaultDuration": "10s"}}), "estimate.video.defaultDuration: must be a number"),
            (json!({"image": []}), "estimate.image: must be an object"),
            (json!("x"), "estimate: must be an object"),
        ] {
            assert_eq!(EstimateConfig::from_params(&p), Err(want.to_string()), "{p}");
        }
    }
}
