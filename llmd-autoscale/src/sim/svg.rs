//! One SVG of several policies' runs over the same trace: replicas paid for over time
//! (with the arrival rate, scaled, in grey), and each interval's 90th percentile TTFT
//! against the objective.

use std::fmt::Write;

use super::SimReport;

const W: f64 = 900.0;
const PANEL: f64 = 220.0;
const LEFT: f64 = 60.0;
const TOP: f64 = 30.0;
const GAP: f64 = 50.0;
const COLOURS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

fn polyline(points: &[(f64, f64)], colour: &str, dash: bool) -> String {
    let pts: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let dash = if dash { r#" stroke-dasharray="4 3""# } else { "" };
    format!(r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5"{dash} points="{}"/>"#, pts.join(" "))
}

/// The chart of `reports` (same trace), titled `title`, with the TTFT objective `slo`.
pub fn render(title: &str, reports: &[SimReport], slo_ttft: f64) -> String {
    let t_max = reports.iter().flat_map(|r| r.timeline.last()).map(|s| s.t).fold(1.0, f64::max);
    let r_max = reports.iter().flat_map(|r| &r.timeline).map(|s| f64::from(s.replicas)).fold(1.0, f64::max) * 1.1;
    let rate_max = reports.iter().flat_map(|r| &r.timeline).map(|s| s.rate).fold(1e-9, f64::max);
    // TTFT on a log scale from 10 ms to 100× the objective.
    let (lo, hi) = (0.01f64.ln(), (slo_ttft * 100.0).ln());
    let x = |t: f64| LEFT + (W - LEFT - 20.0) * t / t_max;
    let y1 = |v: f64| TOP + PANEL * (1.0 - v / r_max);
    let top2 = TOP + PANEL + GAP;
    let y2 = |v: f64| top2 + PANEL * (1.0 - (v.max(0.01).ln() - lo) / (hi - lo)).clamp(0.0, 1.0);
    let h = top2 + PANEL + 40.0 + 18.0 * reports.len() as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="18" font-weight="bold">{title}</text>"#
    );
    for (top, label) in
        [(TOP, "replicas (grey: arrival rate, scaled)"), (top2, "TTFT p90 per interval, log scale (dashed: objective)")]
    {
        let _ = write!(
            s,
            r##"<rect x="{LEFT}" y="{top}" width="{}" height="{PANEL}" fill="none" stroke="#999"/><text x="{}" y="{}">{label}</text>"##,
            W - LEFT - 20.0,
            LEFT + 4.0,
            top + 14.0
        );
    }
    for k in 0..=4 {
        let v = r_max * f64::from(k) / 4.0;
        let _ = write!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"#, LEFT - 4.0, y1(v) + 4.0);
    }
    for v in [0.01f64, 0.1, 1.0, 10.0, 100.0].into_iter().filter(|v| v.ln() <= hi) {
        let _ = write!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{v}s</text>"#, LEFT - 4.0, y2(v) + 4.0);
    }
    let _ =
        write!(s, r#"<text x="{}" y="{:.0}" text-anchor="end">{:.0} s</text>"#, W - 20.0, top2 + PANEL + 16.0, t_max);
    if let Some(r) = reports.first() {
        let rate: Vec<(f64, f64)> = r.timeline.iter().map(|p| (x(p.t), y1(p.rate / rate_max * r_max * 0.9))).collect();
        s.push_str(&polyline(&rate, "#bbb", false));
    }
    s.push_str(&polyline(&[(x(0.0), y2(slo_ttft)), (x(t_max), y2(slo_ttft))], "#444", true));
    for (i, r) in reports.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let reps: Vec<(f64, f64)> = r.timeline.iter().map(|p| (x(p.t), y1(f64::from(p.replicas)))).collect();
        s.push_str(&polyline(&reps, c, false));
        let ttft: Vec<(f64, f64)> =
            r.timeline.iter().filter(|p| p.ttft_p90.is_finite()).map(|p| (x(p.t), y2(p.ttft_p90))).collect();
        s.push_str(&polyline(&ttft, c, false));
        let ly = top2 + PANEL + 34.0 + 18.0 * i as f64;
        let _ = write!(
            s,
            r#"<rect x="{LEFT}" y="{:.0}" width="12" height="12" fill="{c}"/><text x="{}" y="{ly:.0}">{}: TTFT within {slo_ttft} s for {:.1} % of requests, {:.0} replica-seconds, {} scaling actions</text>"#,
            ly - 10.0,
            LEFT + 18.0,
            r.policy,
            r.attainment * 100.0,
            r.replica_seconds,
            r.actions
        );
    }
    s.push_str("</svg>\n");
    s
}
