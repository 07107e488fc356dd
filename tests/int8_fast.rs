//! The int8 fast path (`edgeverify::fastint8`) against the plain QDQ graph it rewrites: same
//! logits within a tolerance, and the matmuls really on tract's integer kernels.

mod common;

use std::path::Path;
use std::time::Instant;

use edgeverify::engine::{self, Engine, Form};

/// Deterministic inputs `[1, 3, 224, 224]` in about [-2, 2], smooth enough to look like images.
fn input(seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    let mut next = || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 8) as f32 / (1u32 << 24) as f32
    };
    let coarse: Vec<f32> = (0..3 * 28 * 28).map(|_| next() * 4.0 - 2.0).collect();
    let mut out = Vec::with_capacity(3 * 224 * 224);
    for c in 0..3 {
        for y in 0..224 {
            for x in 0..224 {
                out.push(coarse[c * 784 + (y / 8) * 28 + x / 8] + 0.1 * (next() - 0.5));
            }
        }
    }
    out
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Quantizes `onnx` with `edgeverify quantize` on a few calibration images into `dir`.
fn quantized(shared: &Path, onnx: &Path, dir: &Path) -> std::path::PathBuf {
    let calib = dir.join("calib");
    std::fs::create_dir_all(&calib).unwrap();
    let source = shared.join("data/imagenet-train-calib-300");
    let mut files: Vec<_> = std::fs::read_dir(&source)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpeg")))
        .collect();
    files.sort();
    for f in files.iter().take(8) {
        std::fs::copy(f, calib.join(f.file_name().unwrap())).unwrap();
    }
    let written = dir.join("model.int8.onnx");
    common::edgeverify()
        .args(["quantize", "--quiet", "--model"])
        .arg(onnx)
        .arg("--calib")
        .arg(&calib)
        .arg("--out")
        .arg(&written)
        .assert()
        .success();
    written
}

#[test]
fn fast_int8_matches_the_plain_qdq_graph_on_synthetic_convnext() {
    let Some(shared) = common::shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let onnx = common::unpacked_model(&shared, "convnext-tiny-224-synthetic-op17");
    let path = quantized(&shared, &onnx, dir.path());
    let proto = engine::read_proto(&path).unwrap();
    let io = engine::graph_io(&proto, &path, None, None).unwrap();

    let plain_typed = engine::typed_model(&proto, &io, &path, 1, 224).unwrap();
    let mut typed = plain_typed.clone().into_decluttered().unwrap();
    let summary = edgeverify::fastint8::rewrite(&mut typed).unwrap();
    assert_eq!(summary.integer_matmuls, 36 + 1, "every pointwise MatMul and the classifier");
    assert!(summary.fake_quant > 0, "the depthwise convs' inputs keep their quantization");

    let start = Instant::now();
    let plain = Engine::from_typed(Form::Int8, plain_typed, &path, 1, 224, start).unwrap();
    let fast = Engine::from_proto(Form::Int8, &proto, &io, &path, 1, 224, start).unwrap();
    assert!(
        fast.kernels.keys().any(|k| k.contains("i32")),
        "integer kernels expected, got {:?}",
        fast.kernels
    );
    assert!(!plain.kernels.keys().any(|k| k.contains("i32")), "{:?}", plain.kernels);

    for seed in 0..3 {
        let x = input(seed);
        let (want, got) = (plain.run(&x).unwrap(), fast.run(&x).unwrap());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        // A different f32 summation order flips a few quantizer roundings by one level, and
        // these propagate: measured max difference about 2% of the logit range.
        let worst = common::assert_close("fast vs plain QDQ logits", &got, &want, 0.05 * scale);
        let cos = cosine(&got, &want);
        eprintln!("seed {seed}: max |diff| {worst} (logit range {scale}), cosine {cos}");
        assert!(cos > 0.999, "seed {seed}: cosine {cos}");
        assert_eq!(engine::top_k(&got, 1), engine::top_k(&want, 1), "seed {seed}: top-1");
    }
}
