//! The latency model: TTFT and TPOT (milliseconds) from the router's features, trained
//! online from the requests the picker routed. See the [module docs](super) for why it
//! is a location-scale ridge regression.

use std::collections::VecDeque;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// One endpoint's features for a request: the router's `PredictionRequest`, with its
/// JSON names (`latencypredictorclient/types.go`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Features {
    /// The endpoint's KV-cache use, a fraction (0..1).
    pub kv_cache_percentage: f64,
    /// Prompt tokens.
    pub input_token_length: u64,
    /// Requests waiting in the engine.
    pub num_request_waiting: u64,
    /// Requests the picker has in flight there (the router's in-flight load).
    pub num_request_running: u64,
    /// 1 at scheduling, 0 in training entries (as the router sends them).
    pub num_tokens_generated: u64,
    /// Matched prefix blocks over the prompt's blocks.
    pub prefix_cache_score: f64,
    /// Multimodal encoder input size (0: encoder features are not built in llmd).
    pub encoder_input_size: u64,
    /// Portion of it in the endpoint's encoder cache.
    pub encoder_matched_size: u64,
    /// The endpoint's `endpointRoleLabel` value (`prefill`, `decode` or empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_type: String,
    /// Prompt tokens in flight there, not yet prefilled.
    pub prefill_tokens_in_flight: i64,
    /// Always 0 at dispatch, as in the router.
    pub decode_tokens_in_flight: i64,
}

/// One observed request: the router's `TrainingEntry`. An entry trains TTFT when
/// `actual_ttft_ms > 0` and TPOT when `actual_tpot_ms > 0` (as the Python server reads
/// them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingEntry {
    /// The features at dispatch.
    #[serde(flatten)]
    pub features: Features,
    /// Observed TTFT (ms), 0 when this entry trains TPOT.
    pub actual_ttft_ms: f64,
    /// Observed mean TPOT (ms), 0 when this entry trains TTFT.
    pub actual_tpot_ms: f64,
    /// When it was observed, RFC 3339 (Go's `time.Time` JSON).
    #[serde(default)]
    pub timestamp: String,
}

/// One prediction (ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Predicted time to first token.
    #[serde(rename = "ttft_ms")]
    pub ttft: f64,
    /// Predicted time per output token (0 while the TPOT model is untrained).
    #[serde(rename = "tpot_ms")]
    pub tpot: f64,
}

/// The router's `BulkPredictionRequest` (`POST /predict/bulk/strict`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BulkPredictionRequest {
    /// One row per endpoint.
    pub requests: Vec<Features>,
}

/// The router's `BulkTrainingRequest` (`POST /add_training_data_bulk`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BulkTrainingRequest {
    /// Observed requests.
    pub entries: Vec<TrainingEntry>,
}

/// Where predictions come from: the in-process [`OnlineLatencyModel`], or (a seam for) the
/// router's external predictor service.
pub trait LatencyPredictor: Send + Sync + std::fmt::Debug {
    /// One prediction per row, or an error for all of them (the router's strict bulk
    /// call: predictions are used only when every endpoint has one). `need_tpot`: fail
    /// unless TPOT is trained too (streaming mode scores TPOT headroom).
    fn predict_bulk_strict(&self, rows: &[Features], need_tpot: bool) -> Result<Vec<Prediction>, String>;

    /// Learns from observed requests.
    fn add_training_data_bulk(&self, entries: &[TrainingEntry]);
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    /// The conditional mean (the router chart's `LATENCY_OBJECTIVE_TYPE=mean`).
    Mean,
    /// A conditional quantile in (0, 1) (the predictor server's default:
    /// `LATENCY_OBJECTIVE_TYPE=quantile`, `LATENCY_QUANTILE_ALPHA=0.9`).
    Quantile(f64),
}

/// The model's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelConfig {
    /// Mean or quantile (default p90, the predictor server's default).
    pub objective: Objective,
    /// Samples kept per target, newest first out last (`LATENCY_MAX_SAMPLE_SIZE`, 1000).
    pub max_samples: usize,
    /// Samples a target needs before it predicts (32).
    pub min_samples: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { objective: Objective::Quantile(0.9), max_samples: 1000, min_samples: 32 }
    }
}

/// The largest prediction (ms): a bound so predictions stay finite whatever the inputs.
pub const MAX_PREDICTION_MS: f64 = 1e7;

/// Features of the TTFT model.
pub const TTFT_FEATURES: usize = 10;
/// Features of the TPOT model.
pub const TPOT_FEATURES: usize = 7;

fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

fn pod_flags(f: &Features) -> (f64, f64) {
    (f64::from(u8::from(f.pod_type == "prefill")), f64::from(u8::from(f.pod_type == "decode")))
}

/// TTFT's regressors: the prompt and its uncached part (prefill work), the queue and the
/// batch (waiting behind and sharing the GPU with), prefill work in flight ahead of it,
/// KV pressure, and the role. `num_tokens_generated` is left out: the router predicts
/// with 1 and trains with 0, so it carries nothing.
pub fn ttft_row(f: &Features) -> [f64; TTFT_FEATURES] {
    let input = f.input_token_length as f64;
    let prefix = finite(f.prefix_cache_score).clamp(0.0, 1.0);
    let (prefill, decode) = pod_flags(f);
    [
        finite(f.kv_cache_percentage),
        input,
        input * (1.0 - prefix),
        prefix,
        f.num_request_waiting as f64,
        f.num_request_running as f64,
        f.prefill_tokens_in_flight as f64,
        f.encoder_input_size.saturating_sub(f.encoder_matched_size) as f64,
        prefill,
        decode,
    ]
}

/// TPOT's regressors: batch size and KV pressure drive decode steps; prefill work in
/// flight interleaves with them. The prefix score and encoder sizes are left out (the
/// router trains TPOT with them at 0).
pub fn tpot_row(f: &Features) -> [f64; TPOT_FEATURES] {
    let (prefill, decode) = pod_flags(f);
    [
        finite(f.kv_cache_percentage),
        f.input_token_length as f64,
        f.num_request_waiting as f64,
        f.num_request_running as f64,
        f.prefill_tokens_in_flight as f64,
        prefill,
        decode,
    ]
}

// Ridge penalty, in standardized units: a little per sample (negligible once there are
// many) plus a constant that keeps the first few fits tame.
const LAMBDA_PER_SAMPLE: f64 = 1e-3;
const LAMBDA_BASE: f64 = 0.5;

/// A fitted model, with standardization folded into the weights: a prediction is two
/// dot products.
#[derive(Debug, Clone, Copy)]
struct Fit<const N: usize> {
    w: [f64; N],
    b: f64,
    // Scale (mean absolute residual) model, for quantiles.
    ws: [f64; N],
    bs: f64,
    floor: f64,
    // The standardized residuals' quantile; 0 for the mean.
    z: f64,
}

/// Location-scale ridge regression over a sliding window of samples.
#[derive(Debug, Clone)]
struct Regressor<const N: usize> {
    window: VecDeque<([f64; N], f64)>,
    fit: Option<Fit<N>>,
    since_refit: usize,
    refits: u64,
    seen: u64,
}

impl<const N: usize> Regressor<N> {
    fn new() -> Self {
        Regressor { window: VecDeque::new(), fit: None, since_refit: 0, refits: 0, seen: 0 }
    }

    fn push(&mut self, x: [f64; N], y: f64, cfg: &ModelConfig) {
        // Bad observations (a clock step, a parse slip) must not poison the fit.
        if !(y.is_finite() && y > 0.0) || x.iter().any(|v| !v.is_finite()) {
            return;
        }
        self.window.push_back((x, y.min(MAX_PREDICTION_MS)));
        while self.window.len() > cfg.max_samples.max(1) {
            self.window.pop_front();
        }
        self.seen += 1;
        self.since_refit += 1;
        // Every sample while there are few (each one matters), then about every 1% of
        // the window: a refit is O(n·N²), so this bounds its amortized cost.
        let n = self.window.len();
        let every = (n / 100).max(1);
        if n >= cfg.min_samples.max(1) && (self.fit.is_none() || self.since_refit >= every) {
            self.refit(cfg.objective);
        }
    }

    // Index loops read as the linear algebra they are.
    #[allow(clippy::needless_range_loop)]
    fn refit(&mut self, objective: Objective) {
        self.since_refit = 0;
        let n = self.window.len();
        if n == 0 {
            return;
        }
        let nf = n as f64;
        let mut mean = [0.0; N];
        let mut ybar = 0.0;
        for (x, y) in &self.window {
            for j in 0..N {
                mean[j] += x[j];
            }
            ybar += y;
        }
        mean.iter_mut().for_each(|m| *m /= nf);
        ybar /= nf;
        let mut var = [0.0; N];
        for (x, _) in &self.window {
            for j in 0..N {
                var[j] += (x[j] - mean[j]).powi(2);
            }
        }
        // A feature that did not vary in the window gets no weight: it cannot be told
        // apart from the intercept, and must not extrapolate when it does vary later.
        let mut inv = [0.0; N];
        for j in 0..N {
            let sd = (var[j] / nf).sqrt();
            if sd > 1e-9 * (1.0 + mean[j].abs()) {
                inv[j] = 1.0 / sd;
            }
        }
        let z_of = |x: &[f64; N]| -> [f64; N] { std::array::from_fn(|j| (x[j] - mean[j]) * inv[j]) };
        let lambda = LAMBDA_PER_SAMPLE * nf + LAMBDA_BASE;
        let mut a = [[0.0; N]; N];
        let mut rhs = [0.0; N];
        for (x, y) in &self.window {
            let z = z_of(x);
            for j in 0..N {
                rhs[j] += z[j] * (y - ybar);
                for k in 0..=j {
                    a[j][k] += z[j] * z[k];
                }
            }
        }
        for j in 0..N {
            a[j][j] += lambda;
            for k in 0..j {
                a[k][j] = a[j][k];
            }
        }
        let Some(chol) = cholesky(a) else { return };
        let w = solve(&chol, rhs);
        let resid: Vec<f64> = self
            .window
            .iter()
            .map(|(x, y)| y - ybar - z_of(x).iter().zip(&w).map(|(z, w)| z * w).sum::<f64>())
            .collect();
        let (mut ws, mut bs, mut floor, mut zq) = ([0.0; N], 0.0, 0.0, 0.0);
        if let Objective::Quantile(q) = objective {
            // Residual spread grows with load: model it (mean absolute residual, same
            // regressors), then take the quantile of residuals in units of it.
            bs = resid.iter().map(|r| r.abs()).sum::<f64>() / nf;
            let mut rhs2 = [0.0; N];
            for ((x, _), r) in self.window.iter().zip(&resid) {
                let z = z_of(x);
                for j in 0..N {
                    rhs2[j] += z[j] * (r.abs() - bs);
                }
            }
            ws = solve(&chol, rhs2);
            floor = (0.25 * bs).max(1e-6);
            let mut u: Vec<f64> = self
                .window
                .iter()
                .zip(&resid)
                .map(|((x, _), r)| {
                    let s = bs + z_of(x).iter().zip(&ws).map(|(z, w)| z * w).sum::<f64>();
                    r / s.max(floor)
                })
                .collect();
            u.sort_by(f64::total_cmp);
            zq = quantile_sorted(&u, q);
        }
        // Fold the standardization into the weights.
        let fold = |w: &[f64; N], b: f64| -> ([f64; N], f64) {
            let wf: [f64; N] = std::array::from_fn(|j| w[j] * inv[j]);
            (wf, b - (0..N).map(|j| wf[j] * mean[j]).sum::<f64>())
        };
        let (w, b) = fold(&w, ybar);
        let (ws, bs) = fold(&ws, bs);
        self.fit = Some(Fit { w, b, ws, bs, floor, z: zq });
        self.refits += 1;
    }

    /// The prediction, `None` until fitted; `terms` counts the multiply-adds.
    #[allow(clippy::needless_range_loop)]
    fn predict(&self, x: &[f64; N], terms: &mut u64) -> Option<f64> {
        let f = self.fit.as_ref()?;
        let mut mu = f.b;
        for j in 0..N {
            mu += f.w[j] * x[j];
        }
        *terms += N as u64;
        let p = if f.z == 0.0 {
            mu
        } else {
            let mut s = f.bs;
            for j in 0..N {
                s += f.ws[j] * x[j];
            }
            *terms += N as u64;
            mu + f.z * s.max(f.floor)
        };
        // Finite and non-negative whatever the inputs: NaN (∞ − ∞) reads as the slowest.
        Some(if p.is_nan() { MAX_PREDICTION_MS } else { p.clamp(0.0, MAX_PREDICTION_MS) })
    }
}

/// The `q` quantile of sorted values, linearly interpolated.
fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    match v.len() {
        0 => 0.0,
        1 => v[0],
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
        }
    }
}

/// Lower Cholesky factor of a symmetric positive-definite matrix.
fn cholesky<const N: usize>(a: [[f64; N]; N]) -> Option<[[f64; N]; N]> {
    let mut l = [[0.0; N]; N];
    for i in 0..N {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            if i == j {
                let d = a[i][i] - s;
                if d.is_nan() || d <= 0.0 || d.is_infinite() {
                    return None;
                }
                l[i][i] = d.sqrt();
            } else {
                l[i][j] = (a[i][j] - s) / l[j][j];
            }
        }
    }
    Some(l)
}

fn solve<const N: usize>(l: &[[f64; N]; N], b: [f64; N]) -> [f64; N] {
    let mut y = [0.0; N];
    for i in 0..N {
        y[i] = (b[i] - (0..i).map(|k| l[i][k] * y[k]).sum::<f64>()) / l[i][i];
    }
    let mut x = [0.0; N];
    for i in (0..N).rev() {
        x[i] = (y[i] - (i + 1..N).map(|k| l[k][i] * x[k]).sum::<f64>()) / l[i][i];
    }
    x
}

/// The model's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelStats {
    /// TTFT samples in the window.
    pub ttft_samples: usize,
    /// TPOT samples in the window.
    pub tpot_samples: usize,
    /// TTFT samples ever taken.
    pub ttft_seen: u64,
    /// TPOT samples ever taken.
    pub tpot_seen: u64,
    /// TTFT refits.
    pub ttft_refits: u64,
    /// TPOT refits.
    pub tpot_refits: u64,
    /// Multiply-adds spent predicting, in all (the cost of a prediction is fixed:
    /// `2 × (TTFT_FEATURES + TPOT_FEATURES)` for a quantile, half that for the mean).
    pub predict_terms: u64,
}

#[derive(Debug)]
struct Targets {
    ttft: Regressor<TTFT_FEATURES>,
    tpot: Regressor<TPOT_FEATURES>,
}

/// The in-process model: one location-scale ridge regression per target over the last
/// `max_samples` observations, refitted as samples arrive (on the training path, never
/// while predicting). Deterministic given the sequence of samples.
#[derive(Debug)]
pub struct OnlineLatencyModel {
    cfg: ModelConfig,
    targets: RwLock<Targets>,
    predict_terms: AtomicU64,
}

impl OnlineLatencyModel {
    /// An untrained model.
    pub fn new(cfg: ModelConfig) -> Self {
        OnlineLatencyModel {
            cfg,
            targets: RwLock::new(Targets { ttft: Regressor::new(), tpot: Regressor::new() }),
            predict_terms: AtomicU64::new(0),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Its counters.
    pub fn stats(&self) -> ModelStats {
        let t = self.targets.read().unwrap_or_else(|p| p.into_inner());
        ModelStats {
            ttft_samples: t.ttft.window.len(),
            tpot_samples: t.tpot.window.len(),
            ttft_seen: t.ttft.seen,
            tpot_seen: t.tpot.seen,
            ttft_refits: t.ttft.refits,
            tpot_refits: t.tpot.refits,
            predict_terms: self.predict_terms.load(Ordering::Relaxed),
        }
    }

    /// Whether TTFT (and, with `need_tpot`, TPOT) predictions are available.
    pub fn ready(&self, need_tpot: bool) -> bool {
        let t = self.targets.read().unwrap_or_else(|p| p.into_inner());
        t.ttft.fit.is_some() && (!need_tpot || t.tpot.fit.is_some())
    }
}

impl LatencyPredictor for OnlineLatencyModel {
    fn predict_bulk_strict(&self, rows: &[Features], need_tpot: bool) -> Result<Vec<Prediction>, String> {
        let t = self.targets.read().unwrap_or_else(|p| p.into_inner());
        let min = self.cfg.min_samples;
        if t.ttft.fit.is_none() {
            return Err(format!("TTFT model not trained yet ({} of {min} samples)", t.ttft.window.len()));
        }
        if need_tpot && t.tpot.fit.is_none() {
            return Err(format!("TPOT model not trained yet ({} of {min} samples)", t.tpot.window.len()));
        }
        let mut terms = 0;
        let out = rows
            .iter()
            .map(|f| Prediction {
                ttft: t.ttft.predict(&ttft_row(f), &mut terms).unwrap_or(0.0),
                tpot: t.tpot.predict(&tpot_row(f), &mut terms).unwrap_or(0.0),
            })
            .collect();
        self.predict_terms.fetch_add(terms, Ordering::Relaxed);
        Ok(out)
    }

    fn add_training_data_bulk(&self, entries: &[TrainingEntry]) {
        let mut t = self.targets.write().unwrap_or_else(|p| p.into_inner());
        for e in entries {
            if e.actual_ttft_ms > 0.0 {
                t.ttft.push(ttft_row(&e.features), e.actual_ttft_ms, &self.cfg);
            }
            if e.actual_tpot_ms > 0.0 {
                t.tpot.push(tpot_row(&e.features), e.actual_tpot_ms, &self.cfg);
            }
        }
    }
}

/// RFC 3339 (UTC, millisecond precision) of a Unix time in seconds: Go's `time.Time`
/// JSON, for training entries sent to the router's predictor.
pub fn rfc3339(unix_secs: f64) -> String {
    let total_ms = (finite(unix_secs).max(0.0) * 1000.0) as i64;
    let (secs, ms) = (total_ms.div_euclid(1000), total_ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

#[cfg(test)]
mod tests {
    use llmd_kvcache::rng::SplitMix64;

    use super::*;

    /// A standard normal draw (Box-Muller).
    fn normal(rng: &mut SplitMix64) -> f64 {
        let u1 = rng.next_f64().max(1e-12);
        let u2 = rng.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn random_features(rng: &mut SplitMix64) -> Features {
        Features {
            kv_cache_percentage: rng.next_f64(),
            input_token_length: 100 + (rng.next_f64() * 3900.0) as u64,
            num_request_waiting: (rng.next_f64() * 10.0) as u64,
            num_request_running: (rng.next_f64() * 32.0) as u64,
            num_tokens_generated: 1,
            prefix_cache_score: rng.next_f64(),
            prefill_tokens_in_flight: (rng.next_f64() * 8000.0) as i64,
            ..Default::default()
        }
    }

    // The synthetic law of the brief.
    fn true_ttft(f: &Features) -> f64 {
        20.0 + 0.05 * f.input_token_length as f64 + 30.0 * f.num_request_waiting as f64
    }

    fn true_tpot(f: &Features) -> f64 {
        8.0 + 0.5 * f.num_request_running as f64 + 10.0 * f.kv_cache_percentage
    }

    const SIGMA: f64 = 5.0;

    fn train(model: &OnlineLatencyModel, n: usize, seed: u64) {
        let mut rng = SplitMix64::new(seed);
        for _ in 0..n {
            let f = random_features(&mut rng);
            let ttft = true_ttft(&f) + SIGMA * normal(&mut rng);
            let tpot = true_tpot(&f) + 0.5 * normal(&mut rng);
            let e = |ttft, tpot| TrainingEntry {
                features: Features { num_tokens_generated: 0, ..f.clone() },
                actual_ttft_ms: ttft,
                actual_tpot_ms: tpot,
                timestamp: String::new(),
            };
            model.add_training_data_bulk(&[e(ttft, 0.0), e(0.0, tpot)]);
        }
    }

    fn mean_abs_error(model: &OnlineLatencyModel, seed: u64) -> (f64, f64) {
        let mut rng = SplitMix64::new(seed);
        let rows: Vec<Features> = (0..500).map(|_| random_features(&mut rng)).collect();
        let p = model.predict_bulk_strict(&rows, true).unwrap();
        let n = rows.len() as f64;
        let ttft = rows.iter().zip(&p).map(|(f, p)| (p.ttft - true_ttft(f)).abs()).sum::<f64>() / n;
        let tpot = rows.iter().zip(&p).map(|(f, p)| (p.tpot - true_tpot(f)).abs()).sum::<f64>() / n;
        (ttft, tpot)
    }

    #[test]
    fn the_mean_model_learns_a_linear_law_from_few_samples() {
        let model = OnlineLatencyModel::new(ModelConfig { objective: Objective::Mean, ..Default::default() });
        assert!(model.predict_bulk_strict(&[Features::default()], false).is_err(), "untrained");
        train(&model, 31, 1);
        assert!(!model.ready(false), "31 samples: one short of the minimum");
        train(&model, 1, 2);
        assert!(model.ready(true));
        // TTFT spans ~25..~520 ms with σ = 5 ms noise.
        let (ttft32, tpot32) = mean_abs_error(&model, 99);
        eprintln!("MAE after 32: ttft {ttft32:.3} tpot {tpot32:.3}");
        assert!(ttft32 < 6.0 && tpot32 < 1.0, "after 32 samples: {ttft32:.2} ms, {tpot32:.2} ms");
        train(&model, 168, 3);
        let (ttft200, tpot200) = mean_abs_error(&model, 99);
        eprintln!("MAE after 200: ttft {ttft200:.3} tpot {tpot200:.3}");
        assert!(ttft200 < 1.5 && tpot200 < 0.2, "after 200 samples: {ttft200:.2} ms, {tpot200:.2} ms");
        train(&model, 800, 4);
        let (ttft1000, tpot1000) = mean_abs_error(&model, 99);
        eprintln!("MAE after 1000: ttft {ttft1000:.3} tpot {tpot1000:.3}");
        assert!(ttft1000 < 0.7, "after 1000 samples: {ttft1000:.2} ms");
        let s = model.stats();
        assert_eq!((s.ttft_samples, s.ttft_seen), (1000, 1000));
        // Refits: one per sample from the 32nd to the 200th, then every n/100 samples:
        // 350 for 1000 samples.
        assert_eq!(s.ttft_refits, 350, "{s:?}");
    }

    #[test]
    fn the_quantile_model_covers_its_quantile() {
        let model = OnlineLatencyModel::new(ModelConfig::default());
        train(&model, 1000, 7);
        let mut rng = SplitMix64::new(8);
        let rows: Vec<Features> = (0..4000).map(|_| random_features(&mut rng)).collect();
        let p = model.predict_bulk_strict(&rows, true).unwrap();
        let covered = rows.iter().zip(&p).filter(|(f, p)| true_ttft(f) + SIGMA * normal(&mut rng) <= p.ttft).count();
        let coverage = covered as f64 / rows.len() as f64;
        eprintln!("p90 coverage {coverage:.4}");
        assert!((0.87..=0.93).contains(&coverage), "p90 coverage {coverage:.3}");
        // p90 of N(μ, 5): μ + 6.4 ms.
        let lift = rows.iter().zip(&p).map(|(f, p)| p.ttft - true_ttft(f)).sum::<f64>() / rows.len() as f64;
        eprintln!("p90 lift {lift:.3} (ideal {:.3})", 1.2816 * SIGMA);
        assert!((lift - 1.2816 * SIGMA).abs() < 1.0, "lift {lift:.2}");
    }

    #[test]
    fn heteroscedastic_spread_is_followed() {
        // Noise grows with the queue: p90 must lift more where the queue is long.
        let model = OnlineLatencyModel::new(ModelConfig::default());
        let mut rng = SplitMix64::new(11);
        for _ in 0..1000 {
            let f = random_features(&mut rng);
            let y = true_ttft(&f) + (1.0 + 4.0 * f.num_request_waiting as f64) * normal(&mut rng);
            model.add_training_data_bulk(&[TrainingEntry { features: f, actual_ttft_ms: y, ..Default::default() }]);
        }
        let at = |waiting| Features { num_request_waiting: waiting, input_token_length: 1000, ..Default::default() };
        let p = model.predict_bulk_strict(&[at(0), at(9)], false).unwrap();
        let lift0 = p[0].ttft - true_ttft(&at(0));
        let lift9 = p[1].ttft - true_ttft(&at(9));
        assert!(lift9 > 3.0 * lift0.max(0.1), "lift at 0: {lift0:.2}, at 9: {lift9:.2}");
    }

    #[test]
    fn prediction_cost_is_a_fixed_number_of_multiply_adds() {
        let model = OnlineLatencyModel::new(ModelConfig::default());
        train(&model, 1000, 5);
        let before = model.stats().predict_terms;
        let rows = vec![Features::default(); 50];
        model.predict_bulk_strict(&rows, true).unwrap();
        // Two dot products per target per endpoint, independent of the 1000 samples held.
        let per_endpoint = 2 * (TTFT_FEATURES + TPOT_FEATURES) as u64;
        assert_eq!(model.stats().predict_terms - before, 50 * per_endpoint);
        assert_eq!(per_endpoint, 34);
        // Predicting never refits.
        let refits = model.stats().ttft_refits;
        model.predict_bulk_strict(&rows, true).unwrap();
        assert_eq!(model.stats().ttft_refits, refits);
    }

    #[test]
    fn training_is_deterministic_and_ignores_bad_samples() {
        let a = OnlineLatencyModel::new(ModelConfig::default());
        let b = OnlineLatencyModel::new(ModelConfig::default());
        train(&a, 300, 21);
        train(&b, 300, 21);
        b.add_training_data_bulk(&[
            TrainingEntry { actual_ttft_ms: f64::NAN, ..Default::default() },
            TrainingEntry { actual_ttft_ms: -3.0, ..Default::default() },
            TrainingEntry { actual_ttft_ms: f64::INFINITY, ..Default::default() },
        ]);
        let rows = [Features { input_token_length: 777, num_request_waiting: 3, ..Default::default() }];
        assert_eq!(a.predict_bulk_strict(&rows, true), b.predict_bulk_strict(&rows, true));
        assert_eq!(a.stats().ttft_seen, b.stats().ttft_seen);
    }

    #[test]
    fn a_window_forgets_an_old_regime() {
        let model = OnlineLatencyModel::new(ModelConfig { max_samples: 200, ..Default::default() });
        let f = Features { input_token_length: 1000, ..Default::default() };
        for i in 0..400 {
            let y = if i < 200 { 100.0 } else { 300.0 } + (i % 7) as f64;
            model.add_training_data_bulk(&[TrainingEntry {
                features: f.clone(),
                actual_ttft_ms: y,
                ..Default::default()
            }]);
        }
        let p = model.predict_bulk_strict(&[f], false).unwrap()[0].ttft;
        assert!((300.0..=310.0).contains(&p), "{p}");
    }

    #[test]
    fn wire_names_are_the_routers() {
        let f = Features { input_token_length: 5, pod_type: "prefill".into(), ..Default::default() };
        let v = serde_json::to_value(TrainingEntry { features: f, actual_ttft_ms: 1.5, ..Default::default() }).unwrap();
        for k in [
            "kv_cache_percentage",
            "input_token_length",
            "num_request_waiting",
            "num_request_running",
            "num_tokens_generated",
            "prefix_cache_score",
            "encoder_input_size",
            "encoder_matched_size",
            "pod_type",
            "prefill_tokens_in_flight",
            "decode_tokens_in_flight",
            "actual_ttft_ms",
            "actual_tpot_ms",
            "timestamp",
        ] {
            assert!(v.get(k).is_some(), "{k} in {v}");
        }
        // pod_type is omitted when empty (Go's omitempty).
        assert!(serde_json::to_value(Features::default()).unwrap().get("pod_type").is_none());
        let p: Prediction = serde_json::from_str(r#"{"ttft_ms": 12.5, "tpot_ms": 3.0, "quantile": 0.9}"#).unwrap();
        assert_eq!(p, Prediction { ttft: 12.5, tpot: 3.0 });
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000.25), "2023-11-14T22:13:20.250Z");
        assert_eq!(rfc3339(951_782_400.0), "2000-02-29T00:00:00.000Z");
    }
}
