//! Engine-level agreement: tract's logits against onnxruntime's on a fixed input batch, for
//! the three shared models, free of any preprocessing.

mod common;

use std::path::Path;

use edgeverify::engine::{self, Engine};

/// Runs the four reference inputs one at a time and compares with onnxruntime's logits.
fn check(model: &Path, reference: &str, shared: &Path) {
    let dir = shared.join("data/reference/logits");
    let input = common::read_f32(&dir.join("input.f32"));
    let want = common::read_f32(&dir.join(reference));
    let proto = engine::read_proto(model).unwrap();
    let io = engine::graph_io(&proto, model, None, None).unwrap();
    let engine = Engine::load_f32(model, &io, 1, 224).unwrap();
    assert_eq!(engine.num_classes, 1000);
    let per_image = 3 * 224 * 224;
    for i in 0..4 {
        let got = engine.run(&input[i * per_image..(i + 1) * per_image]).unwrap();
        let worst = common::assert_close(
            &format!("{} image {i}", model.display()),
            &got,
            &want[i * 1000..(i + 1) * 1000],
            1e-4,
        );
        eprintln!("{} image {i}: max |diff| {worst:e}", model.display());
    }
}

#[test]
fn efficientnet_lite0_matches_onnxruntime() {
    let Some(shared) = common::shared_dir() else { return };
    check(&shared.join("models/efficientnet-lite0.onnx"), "efficientnet-lite0.logits.f32", &shared);
}

#[test]
fn convnext_tiny_opset17_matches_onnxruntime() {
    let Some(shared) = common::shared_dir() else { return };
    let model = common::unpacked_model(&shared, "convnext-tiny-224-synthetic-op17");
    check(&model, "convnext-tiny-224-synthetic-op17.logits.f32", &shared);
}

#[test]
fn convnext_tiny_opset13_matches_onnxruntime() {
    let Some(shared) = common::shared_dir() else { return };
    let model = common::unpacked_model(&shared, "convnext-tiny-224-synthetic-op13");
    check(&model, "convnext-tiny-224-synthetic-op13.logits.f32", &shared);
}
