//! The int8 and f16 forms end to end: accuracy bar on real data, fidelity on the synthetic
//! ConvNeXt-T, the calibration/evaluation overlap refusal, written files reused, and the
//! exactness of the smoothing rewrite.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use edgeverify::engine::{self, Engine};
use edgeverify::quantize::graph;
use prost::Message;
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn verify(args: &[&std::ffi::OsStr], out: &Path) -> Value {
    let output = common::edgeverify()
        .args(["verify", "--quiet", "--runs", "3", "--warmup", "1", "--threads", "2", "--out"])
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "verify failed:\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

fn os<S: AsRef<std::ffi::OsStr> + ?Sized>(s: &S) -> &std::ffi::OsStr {
    s.as_ref()
}

fn form<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["forms"].as_array().unwrap().iter().find(|f| f["form"] == name).unwrap()
}

/// A description of a gunzipped shared ConvNeXt export with ConvNeXt's preprocessing.
fn convnext_description(dir: &Path, onnx: &Path) -> PathBuf {
    let desc = std::fs::read_to_string(repo("models/convnext-tiny-224.toml")).unwrap().replace(
        "onnx = \"convnext-tiny-224.onnx\"",
        &format!("onnx = {:?}", onnx.to_str().unwrap()),
    );
    let path = dir.join("convnext-synthetic.toml");
    std::fs::write(&path, desc).unwrap();
    path
}

/// The first `n` calibration images, linked into a folder.
fn calib_subset(shared: &Path, dir: &Path, n: usize) -> PathBuf {
    let src = shared.join("data/imagenet-train-calib-300");
    let out = dir.join("calib");
    std::fs::create_dir_all(&out).unwrap();
    let mut files: Vec<_> =
        std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().file_name()).collect();
    files.sort();
    for f in files.into_iter().take(n) {
        std::fs::copy(src.join(&f), out.join(&f)).unwrap();
    }
    out
}

#[test]
fn lite0_int8_stays_within_a_point_of_f32_on_val_900() {
    let Some(shared) = common::shared_dir() else { return };
    let out = tempfile::tempdir().unwrap();
    let report = verify(
        &[
            os("--model"),
            repo("models/efficientnet-lite0.toml").as_os_str(),
            os("--slice"),
            shared.join("data/imagenet-val-900").as_os_str(),
            os("--forms"),
            os("f32,int8"),
            os("--calib"),
            shared.join("data/imagenet-train-calib-300").as_os_str(),
        ],
        out.path(),
    );
    let (f32_form, int8) = (form(&report, "f32"), form(&report, "int8"));
    let paired = &int8["vs_f32"];
    let drop = paired["top1_drop_points"].as_f64().unwrap();
    let agreement = paired["top1_agreement_percent"].as_f64().unwrap();
    eprintln!(
        "f32 {} int8 {} drop {drop:.2} agreement {agreement:.2} p {} cosine {}",
        f32_form["top1"]["percent"],
        int8["top1"]["percent"],
        paired["mcnemar_p"],
        paired["logit_cosine_mean"]
    );
    assert!(drop.abs() <= 1.0, "int8 top-1 moved {drop} points from f32");
    assert!(agreement >= 97.0, "int8 agrees with f32 on only {agreement}% of images");
    assert_eq!(int8["top1"]["evaluated"], 900);
    let recipe = &int8["recipe"];
    assert_eq!(recipe["calibration"]["images"], 300);
    assert_eq!(recipe["method"]["method"], "mse");
    assert!(
        recipe["source_sha256"].as_str().unwrap() == report["model"]["sha256"].as_str().unwrap()
    );
    assert!(out.path().join("model.int8.onnx").is_file(), "the quantized model is kept for reuse");
}

#[test]
fn calibration_images_overlapping_the_slice_are_refused() {
    let Some(shared) = common::shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let val = shared.join("data/imagenet-val-900");
    let output = common::edgeverify()
        .args(["verify", "--quiet", "--forms", "f32,int8", "--limit", "20", "--model"])
        .arg(repo("models/efficientnet-lite0.toml"))
        .arg("--slice")
        .arg(&val)
        .arg("--calib")
        .arg(&val)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("also in the evaluation slice"), "{err}");
    assert!(err.contains("ILSVRC2012_val_"), "the duplicated evaluation files are named: {err}");
    assert!(!dir.path().join("report.json").exists());
}

#[test]
fn synthetic_convnext_quantizes_runs_and_stays_faithful() {
    let Some(shared) = common::shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let onnx = common::unpacked_model(&shared, "convnext-tiny-224-synthetic-op17");
    let model = convnext_description(dir.path(), &onnx);
    let calib = calib_subset(&shared, dir.path(), 8);
    let report = verify(
        &[
            os("--model"),
            model.as_os_str(),
            os("--slice"),
            shared.join("data/imagenet-val-900").as_os_str(),
            os("--limit"),
            os("4"),
            os("--forms"),
            os("f32,int8"),
            os("--calib"),
            calib.as_os_str(),
            os("--smooth"),
            os("0.5"),
        ],
        &dir.path().join("out"),
    );
    let int8 = form(&report, "int8");
    let cosine = int8["vs_f32"]["logit_cosine_mean"].as_f64().unwrap();
    eprintln!("synthetic ConvNeXt-T int8 vs f32: {}", int8["vs_f32"]);
    assert!(cosine >= 0.99, "logit cosine {cosine}");
    let recipe = &int8["recipe"];
    assert_eq!(recipe["smoothed_pairs"], 18, "every block's LayerNorm -> pwconv1 pair");
    let quantized = recipe["ops_quantized"].as_array().unwrap().len();
    assert_eq!(quantized, 22 + 36 + 1, "every Conv, MatMul and the Gemm");
    for float in ["LayerNormalization", "Erf"] {
        assert!(recipe["float_op_types"].as_array().unwrap().iter().any(|t| t == float));
    }
}

#[test]
fn quantize_writes_standard_qdq_that_verify_reuses() {
    let Some(shared) = common::shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let calib = calib_subset(&shared, dir.path(), 16);
    let written = dir.path().join("lite0.int8.onnx");
    common::edgeverify()
        .args(["quantize", "--quiet", "--calib-method", "percentile:99.99", "--model"])
        .arg(repo("models/efficientnet-lite0.toml"))
        .arg("--calib")
        .arg(&calib)
        .arg("--out")
        .arg(&written)
        .assert()
        .success();

    let proto = edgeverify::engine::read_proto(&written).unwrap();
    let standard: HashSet<&str> = [
        "QuantizeLinear",
        "DequantizeLinear",
        "Conv",
        "Gemm",
        "Clip",
        "Add",
        "Pad",
        "Reshape",
        "Constant",
        "Concat",
        "ConstantOfShape",
        "Slice",
        "Transpose",
        "Cast",
        "Shape",
        "Gather",
        "GlobalAveragePool",
        "Unsqueeze",
    ]
    .into();
    for n in &proto.graph.as_ref().unwrap().node {
        assert!(
            n.domain.is_empty() && standard.contains(n.op_type.as_str()),
            "{} {}",
            n.domain,
            n.op_type
        );
    }
    let recipe = edgeverify::quantize::recipe_of(&proto).expect("recipe in the metadata");
    assert_eq!(recipe.calibration.images, 16);
    assert_eq!(recipe.method.to_string(), "percentile:99.99");

    let report = verify(
        &[
            os("--model"),
            repo("models/efficientnet-lite0.toml").as_os_str(),
            os("--slice"),
            shared.join("data/imagenet-val-900").as_os_str(),
            os("--limit"),
            os("30"),
            os("--forms"),
            os("f32,int8"),
            os("--int8-model"),
            written.as_os_str(),
        ],
        &dir.path().join("out"),
    );
    let int8 = form(&report, "int8");
    assert_eq!(int8["recipe"]["calibration"]["images"], 16);
    for view in ["report.md", "report.html"] {
        let text = std::fs::read_to_string(dir.path().join("out").join(view)).unwrap();
        assert!(text.contains("Forms compared with f32"), "{view} shows the paired comparison");
    }
    assert!(int8["vs_f32"]["top1_agreement_percent"].as_f64().unwrap() >= 90.0);

    // The same file against another model is refused.
    let output = common::edgeverify()
        .args(["verify", "--quiet", "--forms", "f32,int8", "--limit", "2", "--model"])
        .arg(common::unpacked_model(&shared, "convnext-tiny-224-synthetic-op17"))
        .arg("--slice")
        .arg(shared.join("data/imagenet-val-900"))
        .arg("--int8-model")
        .arg(&written)
        .arg("--out")
        .arg(dir.path().join("out2"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("quantized from a model with sha256"));
}

#[test]
fn f16_form_matches_f32_and_says_why_latency_is_absent() {
    let Some(shared) = common::shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let report = verify(
        &[
            os("--model"),
            repo("models/efficientnet-lite0.toml").as_os_str(),
            os("--slice"),
            shared.join("data/imagenet-val-900").as_os_str(),
            os("--limit"),
            os("6"),
            os("--forms"),
            os("f32,f16"),
        ],
        dir.path(),
    );
    let f16 = form(&report, "f16");
    assert!(f16["vs_f32"]["top1_agreement_percent"].as_f64().unwrap() >= 80.0, "{}", f16["vs_f32"]);
    assert!(f16["vs_f32"]["logit_cosine_mean"].as_f64().unwrap() > 0.99);
    let native = report["environment"]["tract_isa"]
        .as_str()
        .unwrap()
        .split(',')
        .any(|f| f == "fp16" || f == "avx512fp16");
    if !native {
        assert!(f16["latency_ms"].is_null());
        assert!(f16["latency_note"].as_str().unwrap().contains("no native f16"));
    }
}

#[test]
fn smoothing_rewrite_is_exact_in_float() {
    let Some(shared) = common::shared_dir() else { return };
    let onnx = common::unpacked_model(&shared, "convnext-tiny-224-synthetic-op17");
    let proto = engine::read_proto(&onnx).unwrap();
    let io = engine::graph_io(&proto, &onnx, None, None).unwrap();
    let pairs = graph::find_smooth_pairs(proto.graph.as_ref().unwrap());
    assert_eq!(pairs.len(), 18);
    // Arbitrary per-channel maxima: the rewrite must be exact whatever the factors.
    let mut rng = edgeverify::dataset::SplitMix64(11);
    let mut absmax = BTreeMap::new();
    for p in &pairs {
        let mm = &proto.graph.as_ref().unwrap().node[p.matmul];
        let w = proto
            .graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .find(|t| t.name == mm.input[1])
            .unwrap();
        let k = w.dims[0] as usize;
        absmax.insert(
            p.tensor.clone(),
            (0..k).map(|_| 0.1 + (rng.next_u64() % 1000) as f32 / 50.0).collect(),
        );
    }
    let mut smoothed = proto.clone();
    assert_eq!(graph::smooth(&mut smoothed, &pairs, &absmax, 0.5).unwrap(), 18);
    let a = Engine::from_proto(
        engine::Form::F32,
        &proto,
        &io,
        &onnx,
        1,
        224,
        std::time::Instant::now(),
    )
    .unwrap();
    let b = Engine::from_proto(
        engine::Form::F32,
        &smoothed,
        &io,
        &onnx,
        1,
        224,
        std::time::Instant::now(),
    )
    .unwrap();
    let input = common::read_f32(&shared.join("data/reference/logits/input.f32"));
    let x = &input[..3 * 224 * 224];
    let worst = common::assert_close(
        "smoothed vs original logits",
        &b.run(x).unwrap(),
        &a.run(x).unwrap(),
        2e-3,
    );
    eprintln!("smoothing rewrite: max |logit diff| {worst:e}");
    assert!(smoothed.encode_to_vec() != proto.encode_to_vec(), "the rewrite changed the weights");
}
