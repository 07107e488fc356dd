//! Batch-1 latency of each form at 1 and 2 threads: the synthetic ConvNeXt-T (built by
//! `edgeverify::convnext`) and EfficientNet-Lite0 (../shared, skipped where absent).
//!
//! Forms: f32 as edgeverify runs it (its depthwise conv op) and `f32-stock`, the same file
//! through stock tract; int8 as edgeverify runs it (the `fastint8` rewrite onto integer
//! kernels, the depthwise op) and `int8-qdq-stock`, the same QDQ file through stock tract, the
//! "before" of those rewrites.
//! The int8 models are quantized in the set-up (min-max on 4 smooth pseudo-images: the
//! scales only need to be plausible for timing); loading and quantizing stay outside the
//! timed closures.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use edgeverify::engine::{self, Engine, Form};
use edgeverify::quantize::{self, ActType, CalibMethod, QuantizeOptions};

const SIZE: usize = 224;

/// Smooth deterministic pseudo-images `[3, 224, 224]` f32 in about [-2, 2].
fn pseudo_image(seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(7);
    let mut next = || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 8) as f32 / (1u32 << 24) as f32
    };
    let coarse: Vec<f32> = (0..3 * 28 * 28).map(|_| next() * 4.0 - 2.0).collect();
    (0..3 * SIZE * SIZE)
        .map(|i| {
            let (c, y, x) = (i / (SIZE * SIZE), (i / SIZE) % SIZE, i % SIZE);
            coarse[c * 784 + (y / 8) * 28 + x / 8]
        })
        .collect()
}

/// The engines of one model, by form name.
fn engines(path: &Path) -> Vec<(&'static str, Engine)> {
    let proto = engine::read_proto(path).unwrap();
    let io = engine::graph_io(&proto, path, None, None).unwrap();
    let calib: Vec<Vec<f32>> = (0..4).map(pseudo_image).collect();
    let info = quantize::CalibrationInfo {
        source: "benchmark pseudo-images".into(),
        images: calib.len(),
        failed: vec![],
        sha256: String::new(),
        image_sha256: vec![],
    };
    let opts = QuantizeOptions {
        method: CalibMethod::MinMax,
        act_type: ActType::U8,
        keep_float: vec![],
        smooth_alpha: None,
        sensitivity_images: 0,
        max_drop: None,
    };
    let q =
        quantize::quantize(&proto, &io, path, SIZE, "", &calib, None, info, &opts, |_| {}).unwrap();
    let start = Instant::now();
    let stock_typed = engine::typed_model(&q.proto, &io, path, 1, SIZE).unwrap();
    vec![
        ("f32", Engine::load_f32(path, &io, 1, SIZE).unwrap()),
        ("f32-stock", Engine::load_f32_stock(path, &io, 1, SIZE).unwrap()),
        ("int8", Engine::from_proto(Form::Int8, &q.proto, &io, path, 1, SIZE, start).unwrap()),
        (
            "int8-qdq-stock",
            Engine::from_typed(Form::Int8, stock_typed, path, 1, SIZE, start).unwrap(),
        ),
    ]
}

fn bench_model(c: &mut Criterion, model: &str, path: &Path) {
    let engines = engines(path);
    let input = pseudo_image(99);
    let mut group = c.benchmark_group(format!("latency/{model}"));
    group.sample_size(10).warm_up_time(Duration::from_secs(2));
    for threads in [1, 2] {
        engine::set_threads(threads);
        for (form, engine) in &engines {
            group.bench_function(format!("{form}/{threads}t"), |b| {
                b.iter(|| engine.run(&input).unwrap())
            });
        }
    }
    group.finish();
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let arch = edgeverify::convnext::Arch::tiny();
    let spec = edgeverify::convnext::write_model(&arch, 0, dir.path()).unwrap();
    bench_model(c, "convnext-tiny-synthetic", &spec.onnx_path);

    let lite0: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/efficientnet-lite0.onnx");
    if lite0.is_file() {
        bench_model(c, "efficientnet-lite0", &lite0);
    } else {
        eprintln!("SKIPPED: {} is absent (EfficientNet-Lite0 latency)", lite0.display());
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
