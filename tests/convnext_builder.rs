//! The ConvNeXt builder: its ConvNeXt-T is the shared Hugging Face export's graph (ops, shapes,
//! parameters, cost), it runs in tract, and a seed always gives the same bytes.

mod common;

use std::path::Path;

use edgeverify::convnext::{self, Arch};
use edgeverify::engine::{self, Engine};
use edgeverify::graph_stats::{graph_stats, GraphStats};
use edgeverify::preprocess::{self, PreprocessSpec};
use edgeverify::synthetic_images::SyntheticImages;
use prost::Message;
use sha2::{Digest, Sha256};

fn stats_of_bytes(bytes: &[u8]) -> GraphStats {
    let proto =
        tract_onnx::pb::ModelProto::decode(bytes).expect("the builder writes valid protobuf");
    graph_stats(&proto, 1).unwrap()
}

#[test]
fn built_tiny_is_the_shared_export_graph() {
    let Some(shared) = common::shared_dir() else { return };
    let export = common::unpacked_model(&shared, "convnext-tiny-224-synthetic-op17");
    let want = graph_stats(&engine::read_proto(&export).unwrap(), 1).unwrap();
    let got = stats_of_bytes(&convnext::build_bytes(&Arch::tiny(), 0));

    assert_eq!(got.op_counts, want.op_counts, "op counts per type");
    assert_eq!(got.nodes.len(), want.nodes.len(), "node count");
    for (i, (g, w)) in got.nodes.iter().zip(&want.nodes).enumerate() {
        assert_eq!(
            (&g.op_type, &g.name, &g.shape),
            (&w.op_type, &w.name, &w.shape),
            "node {i}: built {g:?}, export {w:?}"
        );
    }
    assert_eq!(got.parameters, want.parameters, "parameters");
    assert_eq!(got.parameters, 28_589_128);
    assert_eq!(got.macs, want.macs, "multiply-accumulates");
    eprintln!(
        "ConvNeXt-T: {} parameters, {:.3} G multiply-accumulates, {} nodes; same as the export",
        got.parameters,
        got.macs as f64 / 1e9,
        got.nodes.len()
    );
}

#[test]
fn built_family_members_have_their_published_size_and_cost() {
    // ConvNeXt paper, Table 1: T 4.5 G FLOPs (multiply-accumulates), S 8.7 G; timm: atto 0.55,
    // nano 2.46. Published counts (fvcore) add the norms' and activations' few operations per
    // element to the convolutions and matmuls counted here: 2% apart at most. Base and large
    // are left out: 0.35 and 0.8 GB to build in a test.
    for (name, published_gmacs) in [("atto", 0.55), ("nano", 2.46), ("tiny", 4.5), ("small", 8.7)] {
        let arch: Arch = name.parse().unwrap();
        let stats = stats_of_bytes(&convnext::build_bytes(&arch, 0));
        assert_eq!(stats.parameters, arch.parameter_count(), "{name}");
        let gmacs = stats.macs as f64 / 1e9;
        assert!(
            (gmacs / published_gmacs - 1.0).abs() <= 0.02,
            "{name}: {gmacs:.3} G multiply-accumulates, published {published_gmacs}"
        );
        let blocks: usize = arch.depths.iter().sum();
        assert_eq!(stats.op_counts["Erf"], blocks, "{name}: one GELU per block");
        assert_eq!(stats.op_counts["Conv"], blocks + 4, "{name}: dwconvs, stem, 3 downsamplings");
        assert_eq!(stats.nodes.last().unwrap().shape, vec![1, 1000], "{name}: logits");
    }
}

#[test]
fn built_tiny_runs_in_tract_with_sensible_logits() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("convnext-builder");
    std::fs::create_dir_all(&dir).unwrap();
    let spec = convnext::write_model(&Arch::tiny(), 0, &dir).unwrap();
    let proto = engine::read_proto(&spec.onnx_path).unwrap();
    let io =
        engine::graph_io(&proto, &spec.onnx_path, Some("pixel_values"), Some("logits")).unwrap();
    assert_eq!(io.input_dims, vec![None, Some(3), Some(224), Some(224)]);
    let engine = Engine::load_f32(&spec.onnx_path, &io, 1, 224).unwrap();
    assert_eq!(engine.num_classes, 1000);

    let images = SyntheticImages { seed: 0, count: 2 };
    let logits: Vec<Vec<f32>> = (0..2)
        .map(|i| {
            let input =
                preprocess::to_tensor(&images.image(i), &PreprocessSpec::imagenet_standard());
            engine.run(&input.unwrap()).unwrap()
        })
        .collect();
    for (i, l) in logits.iter().enumerate() {
        assert!(l.iter().all(|v| v.is_finite()), "image {i}: non-finite logits");
        let mean = l.iter().sum::<f32>() / l.len() as f32;
        let std = (l.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / l.len() as f32).sqrt();
        eprintln!("image {i}: logits mean {mean:.3} std {std:.3}");
        // A trained classifier's logits spread over a few units; a collapsed or exploding
        // network's over nothing or thousands.
        assert!((0.3..30.0).contains(&std), "image {i}: logit std {std}");
    }
    let diff = logits[0].iter().zip(&logits[1]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff > 0.01, "two different images give the same logits (max diff {diff})");
}

#[test]
fn a_seed_gives_the_same_bytes_and_another_seed_other_weights() {
    let arch: Arch = "atto".parse().unwrap();
    let a = convnext::build_bytes(&arch, 7);
    assert_eq!(a, convnext::build_bytes(&arch, 7), "same seed, different bytes");
    let b = convnext::build_bytes(&arch, 8);
    assert_eq!(a.len(), b.len(), "only weights may differ between seeds");
    assert_ne!(a, b, "different seeds, same bytes");
}

/// The bytes of one (arch, seed) pinned: the same on every platform, changed only together
/// with `convnext::GENERATOR`.
#[test]
fn generator_output_is_pinned() {
    let bytes = convnext::build_bytes(&"atto".parse().unwrap(), 0);
    let sha = format!("{:x}", Sha256::digest(&bytes));
    assert_eq!(
        (convnext::GENERATOR, sha.as_str()),
        (
            "edgeverify-convnext-synthetic/1",
            "3b5a54bd90a400995bd2c76ad93a5cf0d6c9b85966361ff0ff22460b5d6cb4fa"
        ),
        "the synthetic weights changed: if on purpose, bump GENERATOR and pin the new sha256"
    );
}
