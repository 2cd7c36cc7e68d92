//! `llmd autoscale`.

/// `llmd autoscale simulate` prints the comparison table and writes the SVG; a bad
/// trace name is a clear error.
#[test]
fn simulate_prints_the_policies_and_writes_the_svg() {
    let svg = std::env::temp_dir().join(format!("llmd-autoscale-{}.svg", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args(["autoscale", "simulate", "--trace", "step", "--duration", "600", "--peak", "3"])
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    for policy in ["| oracle", "| static |", "| threshold |", "| saturation |", "| model |"] {
        assert!(table.contains(policy), "{policy} missing:\n{table}");
    }
    let text = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    assert!(text.starts_with("<svg") && text.contains("model:"), "{text}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args(["autoscale", "simulate", "--trace", "weekly"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected one of"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
