//! The real binary on the real shared files: agreement with the reference predictions, the
//! report contract, and the `slice` manifest round trip.

mod common;

use std::path::Path;

use serde_json::Value;

/// Runs `edgeverify verify` with a short latency plan and returns the parsed report.
fn verify(args: &[&str], out: &Path) -> Value {
    let mut cmd = common::edgeverify();
    cmd.args(["verify", "--quiet", "--runs", "3", "--warmup", "1", "--threads", "2", "--out"])
        .arg(out)
        .args(args);
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "verify {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(out.join("report.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Fraction of images whose top-1 matches the reference, with the disagreements listed.
fn agreement(report: &Value, reference: &Path) -> (f64, Vec<String>) {
    let want = common::reference_tsv(reference);
    let preds = report["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), want.len(), "every reference image is predicted once");
    let mut disagreements = vec![];
    for p in preds {
        let file = p["file"].as_str().unwrap();
        let (label, top1, _) = &want[file];
        assert_eq!(p["label"].as_u64().unwrap() as usize, *label, "{file} label");
        if p["top5"][0].as_u64().unwrap() as usize != *top1 {
            disagreements.push(format!("{file}: got {} want {top1}", p["top5"][0]));
        }
    }
    (1.0 - disagreements.len() as f64 / preds.len() as f64, disagreements)
}

fn lite0_agrees_with_reference(set: &str) {
    let Some(shared) = common::shared_dir() else { return };
    let out = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet-lite0.toml");
    let slice = shared.join("data").join(set);
    let report = verify(
        &["--model", model.to_str().unwrap(), "--slice", slice.to_str().unwrap()],
        out.path(),
    );
    let reference = shared.join(format!("data/reference/efficientnet-lite0.{set}.tsv"));
    let (agree, diffs) = agreement(&report, &reference);
    eprintln!("{set}: top-1 agreement {:.2}%, disagreements {diffs:?}", agree * 100.0);
    assert!(agree >= 0.995, "{set}: agreement {agree} below 99.5%: {diffs:?}");
    assert!(report["failures"].as_array().unwrap().is_empty());
}

#[test]
fn lite0_on_val_900_agrees_with_the_pillow_onnxruntime_reference() {
    lite0_agrees_with_reference("imagenet-val-900");
}

#[test]
fn lite0_on_calib_300_agrees_with_the_pillow_onnxruntime_reference() {
    // Original-resolution train images: downscaling fidelity matters here.
    lite0_agrees_with_reference("imagenet-train-calib-300");
}

#[test]
fn report_honours_the_contract_and_says_the_claim_is_below() {
    let Some(shared) = common::shared_dir() else { return };
    let out = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet-lite0.toml");
    let slice = shared.join("data/imagenet-val-900");
    let report = verify(
        &["--model", model.to_str().unwrap(), "--slice", slice.to_str().unwrap(), "--limit", "60"],
        out.path(),
    );
    let form = &report["forms"][0];
    assert_eq!(form["form"], "f32");
    let top1 = &form["top1"];
    assert_eq!(top1["evaluated"], 60);
    let (pct, lo, hi) = (
        top1["percent"].as_f64().unwrap(),
        top1["ci95"][0].as_f64().unwrap(),
        top1["ci95"][1].as_f64().unwrap(),
    );
    assert!(lo <= pct && pct <= hi);
    assert!(form["top5"]["percent"].as_f64().unwrap() >= pct);
    for key in ["p50", "p90", "p99", "mean", "runs"] {
        assert!(form["latency_ms"][key].is_number(), "latency_ms.{key}");
    }
    let p = &report["predictions"][0];
    assert!(p["file"].is_string() && p["label"].is_u64() && p["form"] == "f32");
    assert_eq!(p["top5"].as_array().unwrap().len(), 5);
    assert!(report["failures"].is_array());
    assert!(!form["kernels"].as_object().unwrap().is_empty(), "kernel family recorded");
    if lo > 75.1 {
        assert_eq!(form["verdict"]["standing"], "below_interval");
        assert!(form["verdict"]["text"].as_str().unwrap().contains("BELOW"));
    }
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("Claim vs measured") && md.contains("75.1"));
}

#[test]
fn require_claim_exits_3_when_the_claim_is_above_the_interval() {
    let Some(shared) = common::shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A description claiming more than the model can do on these images.
    let onnx = shared.join("models/efficientnet-lite0.onnx");
    let desc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet-lite0.toml"),
    )
    .unwrap()
    .replace("../../shared/models/efficientnet-lite0.onnx", onnx.to_str().unwrap())
    .replace("top1 = 75.1", "top1 = 99.9");
    let model = dir.path().join("overclaimed.toml");
    std::fs::write(&model, desc).unwrap();
    let slice = shared.join("data/imagenet-val-900");
    let mut cmd = common::edgeverify();
    cmd.args([
        "verify",
        "--quiet",
        "--runs",
        "2",
        "--warmup",
        "0",
        "--limit",
        "40",
        "--require-claim",
    ])
    .arg("--model")
    .arg(&model)
    .arg("--slice")
    .arg(&slice)
    .arg("--out")
    .arg(dir.path().join("out"));
    cmd.assert().code(3);
    assert!(dir.path().join("out/report.json").is_file(), "the report is written before exiting 3");
}

#[test]
fn slice_manifest_round_trip_checks_hashes() {
    let Some(shared) = common::shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("slice.json");
    let val = shared.join("data/imagenet-val-900");
    let labels = shared.join("data/ILSVRC2012_val_labels.txt");
    common::edgeverify()
        .args(["slice", "--count", "40", "--seed", "3", "--from"])
        .arg(&val)
        .arg("--labels")
        .arg(&labels)
        .arg("--out")
        .arg(&manifest)
        .assert()
        .success();
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    let images = m["images"].as_array().unwrap();
    assert_eq!(images.len(), 40);
    assert!(images.iter().all(|i| i["sha256"].as_str().unwrap().len() == 64));
    let labels_seen: std::collections::HashSet<_> = images.iter().map(|i| &i["label"]).collect();
    assert!(labels_seen.len() >= 38, "spread across classes: {} labels", labels_seen.len());

    // The same draw again is byte-identical.
    let again = dir.path().join("again.json");
    common::edgeverify()
        .args(["slice", "--count", "40", "--seed", "3", "--from"])
        .arg(&val)
        .arg("--labels")
        .arg(&labels)
        .arg("--out")
        .arg(&again)
        .assert()
        .success();
    assert_eq!(std::fs::read(&manifest).unwrap(), std::fs::read(&again).unwrap());

    // verify accepts the manifest and records that every hash was checked.
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet-lite0.toml");
    let report = verify(
        &["--model", model.to_str().unwrap(), "--slice", manifest.to_str().unwrap()],
        &dir.path().join("out"),
    );
    assert_eq!(report["slice"]["kind"], "manifest");
    assert_eq!(report["slice"]["hashes_checked"], true);
    assert_eq!(report["forms"][0]["top1"]["evaluated"], 40);

    // Copied elsewhere (onto a board), the manifest finds its images through --slice-root,
    // and proves the same slice by the same identity.
    let moved = dir.path().join("elsewhere/deeper/slice.json");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::copy(&manifest, &moved).unwrap();
    let moved_report = verify(
        &[
            "--model",
            model.to_str().unwrap(),
            "--slice",
            moved.to_str().unwrap(),
            "--slice-root",
            val.to_str().unwrap(),
            "--limit",
            "5",
        ],
        &dir.path().join("out-moved"),
    );
    assert_eq!(moved_report["forms"][0]["top1"]["evaluated"], 5);
    assert!(moved_report["failures"].as_array().unwrap().is_empty());
}

#[test]
fn hugging_face_folder_gives_preprocessing_and_labels() {
    let Some(shared) = common::shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("lite0-hf");
    std::fs::create_dir_all(folder.join("onnx")).unwrap();
    std::fs::copy(shared.join("models/efficientnet-lite0.onnx"), folder.join("onnx/model.onnx"))
        .unwrap();
    std::fs::write(
        folder.join("preprocessor_config.json"),
        r#"{"crop_pct": 0.875, "do_normalize": true, "do_rescale": true, "do_resize": true,
            "image_mean": [0.498, 0.498, 0.498], "image_std": [0.502, 0.502, 0.502],
            "image_processor_type": "ConvNextImageProcessor", "resample": 3,
            "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 224}}"#,
    )
    .unwrap();
    let id2label: serde_json::Map<String, Value> =
        (0..1000).map(|i| (i.to_string(), Value::String(format!("class {i}")))).collect();
    let config = serde_json::json!({"_name_or_path": "lite0-as-hf", "id2label": id2label});
    std::fs::write(folder.join("config.json"), config.to_string()).unwrap();
    let slice = shared.join("data/imagenet-val-900");
    let report = verify(
        &["--model", folder.to_str().unwrap(), "--slice", slice.to_str().unwrap(), "--limit", "30"],
        &dir.path().join("out"),
    );
    assert_eq!(report["model"]["described_by"], "hf-folder");
    assert_eq!(report["model"]["name"], "lite0-as-hf");
    assert_eq!(report["model"]["preprocess"]["resize_shortest_edge"], 256);
    assert_eq!(report["model"]["preprocess"]["crop_size"], 224);
    // Same preprocessing as the TOML description, so the same predictions as the reference.
    let want = common::reference_tsv(
        &shared.join("data/reference/efficientnet-lite0.imagenet-val-900.tsv"),
    );
    for p in report["predictions"].as_array().unwrap() {
        assert_eq!(p["top5"][0].as_u64().unwrap() as usize, want[p["file"].as_str().unwrap()].1);
    }
}

#[test]
fn bare_onnx_announces_its_assumed_preprocessing() {
    let Some(shared) = common::shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let output = common::edgeverify()
        .args(["verify", "--quiet", "--runs", "2", "--warmup", "0", "--limit", "5", "--model"])
        .arg(shared.join("models/efficientnet-lite0.onnx"))
        .arg("--slice")
        .arg(shared.join("data/imagenet-val-900"))
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ImageNet-standard preprocessing assumed"), "{stderr}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert!(report["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().contains("assumed")));
    assert!(report["model"]["claim"].is_null());
}

#[test]
fn cpu_isa_cap_selects_the_avx2_kernels_on_an_avx512_host() {
    let Some(shared) = common::shared_dir() else { return };
    if !host_has_avx512() {
        eprintln!("SKIPPED: this host has no AVX-512 to cap");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet-lite0.toml");
    let slice = shared.join("data/imagenet-val-900");
    let report = verify(
        &[
            "--model",
            model.to_str().unwrap(),
            "--slice",
            slice.to_str().unwrap(),
            "--limit",
            "3",
            "--cpu-isa=-avx512f,-avx512vnni",
        ],
        dir.path(),
    );
    let isa = report["environment"]["tract_isa"].as_str().unwrap();
    assert!(isa.contains("avx2") && !isa.contains("avx512"), "{isa}");
    assert_eq!(report["environment"]["tract_cpu_isa_override"], "-avx512f,-avx512vnni");
    let kernels = report["forms"][0]["kernels"].as_object().unwrap();
    assert!(!kernels.is_empty() && kernels.keys().all(|k| !k.starts_with("avx512")), "{kernels:?}");
}

#[cfg(target_arch = "x86_64")]
fn host_has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn host_has_avx512() -> bool {
    false
}
