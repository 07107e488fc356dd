//! `edgeverify verify` without a model: the synthetic ConvNeXt on synthetic images, with real
//! latency and no accuracy figure; and the choices around it (real file present, bad flags).

mod common;

use std::path::Path;

use serde_json::Value;

/// Runs `edgeverify verify ARGS` in `cwd` with the smallest latency plan; returns the output.
fn verify_in(cwd: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = common::edgeverify();
    cmd.current_dir(cwd)
        .args(["verify", "--runs", "3", "--warmup", "0", "--max-seconds", "1", "--threads", "1"])
        .args(args);
    cmd.output().unwrap()
}

fn read_report(out: &Path) -> Value {
    let text = std::fs::read_to_string(out.join("report.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn assert_synthetic_report(report: &Value, arch: &str, seed: u64, images: usize) {
    let id = &report["model"]["synthetic"];
    assert_eq!(id["arch"], arch, "{id}");
    assert_eq!(id["seed"], seed, "{id}");
    assert_eq!(id["generator"], edgeverify::convnext::GENERATOR, "{id}");
    assert_eq!(report["slice"]["kind"], "synthetic");
    assert_eq!(report["slice"]["images"], images);
    let forms = report["forms"].as_array().unwrap();
    assert!(!forms.is_empty());
    for f in forms {
        for field in ["top1", "top5", "top1_failures_as_wrong", "verdict"] {
            assert!(f[field].is_null(), "{field} must be null on synthetic weights: {f}");
        }
        assert_eq!(f["accuracy_note"], "not measurable: synthetic weights");
        if f["latency_ms"].is_null() {
            // Only f16 on a CPU without native f16 arithmetic skips its latency, and says why.
            assert_eq!(f["form"], "f16", "{f}");
            assert!(f["latency_note"].as_str().unwrap().contains("no native f16"), "{f}");
            continue;
        }
        assert!(f["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{f}");
        assert!(f["throughput"]["images_per_second"].as_f64().unwrap() > 0.0, "{f}");
        if f["form"] != "f32" {
            // Fidelity to f32 is a real figure even on synthetic inputs.
            let cosine = f["vs_f32"]["logit_cosine_mean"].as_f64().unwrap();
            assert!(cosine > 0.99, "{} logit cosine {cosine}", f["form"]);
            assert!(f["vs_f32"]["top1_drop_points"].is_null(), "no labels, no drop: {f}");
        }
    }
    let predictions = report["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), images * forms.len());
    assert!(predictions.iter().all(|p| p["label"].is_null()), "synthetic images have no label");
    assert!(report["latency_method"]["peak_rss_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn default_run_measures_the_synthetic_convnext_tiny() {
    let cwd = tempfile::tempdir().unwrap();
    let out = cwd.path().join("out");
    let output = verify_in(cwd.path(), &["--images", "2"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "stderr:\n{stderr}\nstdout:\n{stdout}");
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("no real ConvNeXt-T at models/convnext-tiny-224.onnx"))
        .collect();
    assert_eq!(said.len(), 1, "one line on stderr says why the run is synthetic:\n{stderr}");
    assert!(said[0].contains("export_convnext_onnx.py"), "{}", said[0]);
    assert!(stdout.contains("not measurable: synthetic weights"), "{stdout}");

    let report = read_report(&out);
    assert_synthetic_report(&report, "convnext-tiny", 0, 2);
    assert!(report["model"]["claim"].is_null());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("**Synthetic model**"), "{md}");
}

#[test]
fn arch_and_seed_pick_the_family_member() {
    let cwd = tempfile::tempdir().unwrap();
    let out = cwd.path().join("atto");
    let output = verify_in(
        cwd.path(),
        &["--arch", "convnext-atto", "--seed", "3", "--images", "1", "--out", "atto"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("no real ConvNeXt-T"), "--arch is an explicit choice:\n{stderr}");
    assert_synthetic_report(&read_report(&out), "convnext-atto", 3, 1);
    assert!(out.join("convnext-atto-synthetic-seed3.onnx").is_file());
}

#[test]
fn real_convnext_at_the_default_path_needs_a_slice() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir(cwd.path().join("models")).unwrap();
    std::fs::write(cwd.path().join("models/convnext-tiny-224.onnx"), b"").unwrap();
    let output = verify_in(cwd.path(), &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("models/convnext-tiny-224.onnx") && stderr.contains("--slice"),
        "the error names the file found and the flag missing:\n{stderr}"
    );
    assert!(!cwd.path().join("out/report.json").exists());
}

#[test]
fn synthetic_run_refuses_a_slice_and_unknown_architectures() {
    let cwd = tempfile::tempdir().unwrap();
    let output = verify_in(cwd.path(), &["--arch", "atto", "--slice", "images"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--slice images") && stderr.contains("--model"), "{stderr}");

    let output = verify_in(cwd.path(), &["--arch", "convnext-huge"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("convnext-atto") && stderr.contains("convnext-large"), "{stderr}");

    let output = verify_in(cwd.path(), &["--arch", "tiny", "--model", "m.toml"]);
    assert_eq!(output.status.code(), Some(2), "--arch and --model exclude each other");
}
