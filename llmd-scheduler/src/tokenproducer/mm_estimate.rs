//! Multimodal placeholder estimation, as llm-d-router's `mm_estimate.go` and the
//! placeholder half of `estimate.go`: how many pseudo-tokens an image, video or audio item
//! occupies, the request headers describing a video, and the placeholder tokens themselves
//! (the item's XXH64 content hash, truncated to 32 bits, repeated).

use std::collections::BTreeMap;

use super::estimate::MmItem;
use super::estimate_config::{CountMode, FramesMode, ImageEstimate, VideoEstimate};
use super::imageconfig::{B64Stream, decode_config};

/// Bytes per pseudo-token (the scorer's average characters per token).
pub(crate) const BYTES_PER_TOKEN: usize = 4;

// Built-in defaults, applied where neither the request nor the configuration says.
const DEFAULT_IMAGE_WIDTH: i64 = 640;
const DEFAULT_IMAGE_HEIGHT: i64 = 360;
const IMAGE_TOKEN_FACTOR: i64 = 1024;
const DEFAULT_VIDEO_WIDTH: i64 = 640;
const DEFAULT_VIDEO_HEIGHT: i64 = 360;
const DEFAULT_VIDEO_DURATION: f64 = 10.0;
const DEFAULT_VIDEO_SAMPLE_FPS: f64 = 2.0;
const DEFAULT_VIDEO_SOURCE_FPS: f64 = 24.0;
const VIDEO_TOKEN_FACTOR: i64 = 1024;

/// Most pseudo-tokens one prompt's stream may hold. Go has no bound and would try to
/// allocate whatever a header or an image header claims (and run out of memory); here
/// such a request is refused instead. 2^27 tokens is 512 MiB, far past real prompts.
const MAX_STREAM_TOKENS: usize = 1 << 27;

/// XXH64 with seed 0 (`github.com/cespare/xxhash/v2.Sum64`).
pub(crate) fn xxh64(data: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(data, 0)
}

/// Go's `int(f)` on amd64 (CVTTSD2SQ): truncation toward zero, and the "integer
/// indefinite" value `i64::MIN` for NaN and anything outside the `int64` range.
fn go_float_to_int(f: f64) -> i64 {
    // [-2^63, 2^63): the floats that convert exactly-or-truncated.
    let min = i64::MIN as f64;
    if f.is_nan() || !(min..-min).contains(&f) { i64::MIN } else { f as i64 }
}

/// An image's placeholder count from its decoded dimensions (`None`: not decodable, the
/// configured or built-in default resolution). Always >= 1.
pub(crate) fn image_count(cfg: &ImageEstimate, dims: Option<(i64, i64)>) -> i64 {
    if cfg.mode == CountMode::Static {
        return if cfg.static_token > 0 { cfg.static_token } else { 1 };
    }
    let (mut w, mut h) = (cfg.default_width, cfg.default_height);
    if w <= 0 {
        w = DEFAULT_IMAGE_WIDTH;
    }
    if h <= 0 {
        h = DEFAULT_IMAGE_HEIGHT;
    }
    if let Some(d) = dims {
        (w, h) = d;
    }
    let factor = if cfg.factor <= 0 { IMAGE_TOKEN_FACTOR } else { cfg.factor };
    // Go's int arithmetic wraps; the quotient truncates toward zero.
    let n = w.wrapping_mul(h) / factor;
    if n > 0 { n } else { 1 }
}

/// The dimensions of a `data:image/...;base64,` URL's image, if Go can decode its header.
pub(crate) fn image_dims_from_url(url: &str) -> Option<(i64, i64)> {
    if !url.starts_with("data:image/") {
        return None;
    }
    let idx = url.find("base64,")?;
    image_dims_from_payload(&url[idx + "base64,".len()..])
}

/// The dimensions of a bare base64 image payload, if Go can decode its header.
pub(crate) fn image_dims_from_payload(b64: &str) -> Option<(i64, i64)> {
    let (w, h) = decode_config(&mut B64Stream::new(b64))?;
    (w > 0 && h > 0).then_some((w, h))
}

/// Per-request video properties from the `x-llm-d-video-*` headers; zero means not given.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct VideoMeta {
    pub(crate) width: i64,
    pub(crate) height: i64,
    pub(crate) duration: f64,
    pub(crate) fps: f64,
}

/// `strconv.ParseFloat(s, 64)` for the forms requests use: decimal with optional sign,
/// fraction and exponent, and `inf`/`infinity`/`nan` in any case. A finite literal out of
/// range is an error, as in Go. Not accepted here though Go accepts them (exotic): hex
/// floats (`0x1p3`) and `_` digit separators.
fn go_parse_float(s: &str) -> Option<f64> {
    let v: f64 = s.parse().ok()?;
    if v.is_infinite() {
        let word = s.trim_start_matches(['+', '-']).to_ascii_lowercase();
        if word != "inf" && word != "infinity" {
            return None;
        }
    }
    Some(v)
}

/// A `WIDTHxHEIGHT` value (separator `x` or `X`, blanks around the numbers trimmed); zeros
/// when malformed or not positive.
fn parse_resolution(s: &str) -> (i64, i64) {
    let Some(i) = s.find(['x', 'X']) else {
        return (0, 0);
    };
    if i == 0 {
        return (0, 0);
    }
    match (s[..i].trim().parse::<i64>(), s[i + 1..].trim().parse::<i64>()) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => (w, h),
        _ => (0, 0),
    }
}

/// Reads `x-llm-d-video-fps`, `x-llm-d-video-duration-seconds` and
/// `x-llm-d-video-resolution` (lower-case keys); a missing, malformed or non-positive value
/// leaves its field zero.
pub(crate) fn video_meta(headers: &BTreeMap<String, String>) -> VideoMeta {
    let mut meta = VideoMeta::default();
    let positive = |key: &str| headers.get(key).and_then(|s| go_parse_float(s)).filter(|v| *v > 0.0);
    if let Some(v) = positive("x-llm-d-video-fps") {
        meta.fps = v;
    }
    if let Some(v) = positive("x-llm-d-video-duration-seconds") {
        meta.duration = v;
    }
    if let Some(s) = headers.get("x-llm-d-video-resolution") {
        (meta.width, meta.height) = parse_resolution(s);
    }
    meta
}

/// A video's placeholder count: min(frames * tokens per frame, maxVideoTokens), >= 1.
pub(crate) fn video_count(cfg: &VideoEstimate, meta: &VideoMeta) -> i64 {
    let mut tokens = video_frames(cfg, meta).wrapping_mul(video_tokens_per_frame(cfg, meta));
    if cfg.max_video_tokens > 0 && tokens > cfg.max_video_tokens {
        tokens = cfg.max_video_tokens;
    }
    tokens.max(1)
}

// Frame groups: duration*sampleFPS (merged by temporalPatchSize) or
// duration*sourceFPS/frameStride, clamped to [minFrames, maxFrames].
fn video_frames(cfg: &VideoEstimate, meta: &VideoMeta) -> i64 {
    let mut duration = meta.duration;
    if duration <= 0.0 {
        duration = cfg.default_duration;
    }
    if duration <= 0.0 {
        duration = DEFAULT_VIDEO_DURATION;
    }
    let clamp = |mut n: i64| {
        if cfg.min_frames > 0 && n < cfg.min_frames {
            n = cfg.min_frames;
        }
        if cfg.max_frames > 0 && n > cfg.max_frames {
            n = cfg.max_frames;
        }
        n
    };
    if cfg.frames_mode == FramesMode::Strided {
        let mut fps = meta.fps;
        if fps <= 0.0 {
            fps = cfg.source_fps;
        }
        if fps <= 0.0 {
            fps = DEFAULT_VIDEO_SOURCE_FPS;
        }
        let stride = cfg.frame_stride.max(1);
        return clamp(go_float_to_int(duration * fps) / stride);
    }
    let fps = if cfg.sample_fps <= 0.0 { DEFAULT_VIDEO_SAMPLE_FPS } else { cfg.sample_fps };
    let mut n = clamp(go_float_to_int(duration * fps));
    if cfg.temporal_patch_size > 1 {
        n /= cfg.temporal_patch_size;
    }
    n
}

// A constant (static) or width*height/factor (dynamic), >= 1; the header resolution wins.
fn video_tokens_per_frame(cfg: &VideoEstimate, meta: &VideoMeta) -> i64 {
    if cfg.tokens_per_frame_mode == CountMode::Static {
        return if cfg.static_tokens_per_frame > 0 { cfg.static_tokens_per_frame } else { 1 };
    }
    let (mut w, mut h) = (cfg.default_width, cfg.default_height);
    if meta.width > 0 && meta.height > 0 {
        (w, h) = (meta.width, meta.height);
    }
    if w <= 0 {
        w = DEFAULT_VIDEO_WIDTH;
    }
    if h <= 0 {
        h = DEFAULT_VIDEO_HEIGHT;
    }
    let factor = if cfg.factor <= 0 { VIDEO_TOKEN_FACTOR } else { cfg.factor };
    let n = w.wrapping_mul(h) / factor;
    if n > 0 { n } else { 1 }
}

/// A placeholder count (>= 1) from an asset's byte length, for audio.
pub(crate) fn asset_count(len: usize) -> i64 {
    i64::try_from(len.div_ceil(BYTES_PER_TOKEN)).unwrap_or(i64::MAX).max(1)
}

/// Zero-pads `out` to a token boundary.
pub(crate) fn align(out: &mut Vec<u8>) {
    let r = out.len() % BYTES_PER_TOKEN;
    if r != 0 {
        out.resize(out.len() + BYTES_PER_TOKEN - r, 0);
    }
}

/// Appends an asset (`appendMMAsset`): aligns the stream, appends `count` copies of the
/// low 32 bits of XXH64(`content`), little-endian, and records the item with its hash in
/// lower-case hex and its token offset and length.
pub(crate) fn append_asset(
    out: &mut Vec<u8>,
    mm: &mut Vec<MmItem>,
    modality: &str,
    content: &str,
    count: i64,
) -> Result<(), String> {
    align(out);
    let offset = out.len() / BYTES_PER_TOKEN;
    let length = usize::try_from(count).unwrap_or(0);
    if length > MAX_STREAM_TOKENS.saturating_sub(offset) {
        return Err(format!(
            "{modality} placeholder count {count} exceeds the estimate's limit of {MAX_STREAM_TOKENS} tokens"
        ));
    }
    let sum = xxh64(content.as_bytes());
    let token = (sum as u32).to_le_bytes();
    out.reserve(length * BYTES_PER_TOKEN);
    for _ in 0..length {
        out.extend_from_slice(&token);
    }
    mm.push(MmItem { modality: modality.to_string(), hash: format!("{sum:x}"), offset, length });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh64_reference_vectors() {
        // XXH64 seed 0 reference values (xxhash's sanity tests / python-xxhash docs).
        assert_eq!(xxh64(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a"), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc"), 0x44BC_2CF5_AD77_0999);
        assert_eq!(xxh64(b"Nobody inspects the spammish repetition"), 0xFBCE_A83C_8A37_8BF1);
    }

    #[test]
    fn go_float_to_int_matches_amd64() {
        assert_eq!(go_float_to_int(29.9), 29);
        assert_eq!(go_float_to_int(-2.5), -2);
        assert_eq!(go_float_to_int(f64::INFINITY), i64::MIN);
        assert_eq!(go_float_to_int(1e19), i64::MIN);
        assert_eq!(go_float_to_int(-1e19), i64::MIN);
    }

    fn headers(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
    }

    // Port of TestParseVideoMetadataHeaders.
    #[test]
    fn parse_video_metadata_headers() {
        let fps = "x-llm-d-video-fps";
        let dur = "x-llm-d-video-duration-seconds";
        let res = "x-llm-d-video-resolution";
        let meta = |w, h, d, f| VideoMeta { width: w, height: h, duration: d, fps: f };
        for (name, h, want) in [
            ("all present", headers(&[(fps, "30"), (dur, "12.5"), (res, "1920x1080")]), meta(1920, 1080, 12.5, 30.0)),
            ("resolution only", headers(&[(res, "640x360")]), meta(640, 360, 0.0, 0.0)),
            ("uppercase separator", headers(&[(res, "1280X720")]), meta(1280, 720, 0.0, 0.0)),
            ("spaces trimmed", headers(&[(res, " 800 x 600 ")]), meta(800, 600, 0.0, 0.0)),
            ("empty", headers(&[]), VideoMeta::default()),
            ("malformed values ignored", headers(&[(fps, "abc"), (dur, ""), (res, "not-a-res")]), VideoMeta::default()),
            ("non-positive ignored", headers(&[(fps, "-1"), (dur, "0"), (res, "0x0")]), VideoMeta::default()),
            ("partial resolution ignored", headers(&[(res, "1920x")]), VideoMeta::default()),
            ("out of range ignored", headers(&[(fps, "1e400"), (dur, "nan")]), VideoMeta::default()),
            ("explicit infinity kept", headers(&[(dur, "+Inf")]), meta(0, 0, f64::INFINITY, 0.0)),
        ] {
            assert_eq!(video_meta(&h), want, "{name}");
        }
    }

    #[test]
    fn infinite_duration_counts_like_go_on_amd64() {
        // int(+Inf * 2) is math.MinInt64 on amd64: the count falls to 1.
        let m = VideoMeta { duration: f64::INFINITY, ..VideoMeta::default() };
        assert_eq!(video_count(&VideoEstimate::default(), &m), 1);
    }

    #[test]
    fn asset_tokens_and_alignment() {
        let mut out = b"user".to_vec();
        out.push(b'x');
        let mut mm = Vec::new();
        append_asset(&mut out, &mut mm, "audio", "AAAAwav", asset_count(7)).expect("appends");
        let sum = xxh64(b"AAAAwav");
        let tok = (sum as u32).to_le_bytes();
        assert_eq!(&out[..8], b"userx\0\0\0");
        assert_eq!(&out[8..], [tok, tok].concat());
        assert_eq!(mm, vec![MmItem { modality: "audio".into(), hash: format!("{sum:x}"), offset: 2, length: 2 }]);
        assert_eq!(asset_count(0), 1);
        let err = append_asset(&mut out, &mut mm, "video", "v", 1 << 40).expect_err("too many");
        assert!(err.contains("exceeds"), "{err}");
    }
}
