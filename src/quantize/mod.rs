//! Post-training int8 quantization, all in Rust: calibrate on images with the f32 model in
//! tract, optionally smooth LayerNorm → MatMul outliers into the weights, and write a standard
//! QDQ ONNX file (per-channel symmetric int8 weights, per-tensor activations, int32 biases)
//! whose recipe travels in its metadata.

pub mod calibrate;
pub mod graph;
pub mod sensitivity;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tract_onnx::pb;

pub use calibrate::{ActType, CalibMethod};
use graph::{Target, TargetKind};

use crate::engine::GraphIo;

/// Metadata key under which the recipe is stored in the quantized ONNX file.
pub const RECIPE_KEY: &str = "edgeverify.quantization";

/// What the user asked of the quantizer.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub method: CalibMethod,
    pub act_type: ActType,
    /// Op names (ONNX node names) to keep in float.
    pub keep_float: Vec<String>,
    /// SmoothQuant migration strength α for LayerNorm → MatMul pairs; `None` disables it.
    pub smooth_alpha: Option<f32>,
    /// Per-layer sensitivity pass on this many calibration images (0: none).
    pub sensitivity_images: usize,
    /// Keep the most sensitive layers in float until the top-1 drop on the sensitivity
    /// images is at most this many points (needs the sensitivity pass).
    pub max_drop: Option<f64>,
}

/// An op left in float, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeptFloat {
    pub name: String,
    pub reason: String,
}

/// Where the calibration images came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CalibrationInfo {
    pub source: String,
    pub images: usize,
    /// Images of the calibration set that could not be used (path and reason).
    pub failed: Vec<(String, String)>,
    /// sha256 over the used images' content hashes, in order.
    pub sha256: String,
    /// Content sha256 of every image used, to refuse an evaluation slice that overlaps.
    pub image_sha256: Vec<String>,
}

/// How a quantized form was made: stored in the ONNX metadata and in the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipe {
    pub format: String,
    pub method: CalibMethod,
    pub activations: ActType,
    pub weights: String,
    pub biases: String,
    pub smoothquant_alpha: Option<f32>,
    /// LayerNorm → MatMul pairs the smoothing rewrite was applied to.
    pub smoothed_pairs: usize,
    pub ops_quantized: Vec<String>,
    pub ops_kept_float: Vec<KeptFloat>,
    /// Op types never quantized: everything but Conv, MatMul and Gemm (LayerNorm, GELU, adds,
    /// pooling) runs in float between dequantize and quantize.
    pub float_op_types: Vec<String>,
    pub calibration: CalibrationInfo,
    /// Layers ranked by what quantizing each alone costs (most costly first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitivity: Vec<sensitivity::LayerCost>,
    /// The automatic keep-float search, when `--max-drop` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_keep_float: Option<sensitivity::AutoKeep>,
    /// sha256 of the f32 source model.
    pub source_sha256: String,
    pub edgeverify_version: String,
}

/// A quantized model and its recipe.
pub struct Quantized {
    pub proto: pb::ModelProto,
    pub recipe: Recipe,
}

/// Quantizes `proto` (the f32 model at `path`) calibrated on `calib` (each `[3, size, size]`
/// f32, preprocessed like evaluation images).
#[allow(clippy::too_many_arguments)]
pub fn quantize(
    proto: &pb::ModelProto,
    io: &GraphIo,
    path: &Path,
    size: usize,
    source_sha256: &str,
    calib: &[Vec<f32>],
    calib_labels: Option<&[usize]>,
    calibration: CalibrationInfo,
    opts: &QuantizeOptions,
    mut progress: impl FnMut(&str),
) -> Result<Quantized> {
    if calib.is_empty() {
        bail!("no calibration image could be used: pass --calib a folder or manifest of images");
    }
    let mut source = proto.clone();
    let graph = proto.graph.as_ref().context("ONNX file has no graph")?;
    let targets = graph::find_targets(graph);
    let keep: HashSet<String> = opts.keep_float.iter().cloned().collect();
    check_names(&keep, &targets, path)?;

    let mut smoothed_pairs = 0;
    if let Some(alpha) = opts.smooth_alpha {
        let pairs = graph::find_smooth_pairs(graph);
        if !pairs.is_empty() {
            let tensors: Vec<String> = pairs.iter().map(|p| p.tensor.clone()).collect();
            let absmax = calibrate::collect_channel_absmax(
                &source,
                io,
                path,
                size,
                &tensors,
                calib,
                || progress("smoothing statistics"),
            )?;
            smoothed_pairs = graph::smooth(&mut source, &pairs, &absmax, alpha)?;
        }
    }

    let mut tensors: Vec<String> = targets.iter().map(|t| t.activation.clone()).collect();
    tensors.sort();
    tensors.dedup();
    let hists = calibrate::collect_histograms(&source, io, path, size, &tensors, calib, || {
        progress("calibration")
    })?;
    let activations: BTreeMap<String, calibrate::ActQuant> = hists
        .iter()
        .map(|(name, h)| (name.clone(), calibrate::choose(h, opts.method, opts.act_type)))
        .collect();
    let mut keep = keep;
    let (ranking, auto) = if opts.sensitivity_images > 0 {
        let n = opts.sensitivity_images.min(calib.len());
        let ctx = sensitivity::Context {
            source: &source,
            io,
            path,
            size,
            targets: &targets,
            activations: &activations,
            act_type: opts.act_type,
            images: &calib[..n],
            labels: calib_labels.map(|l| &l[..n]),
        };
        let ranking = sensitivity::rank(&ctx, &keep, &mut progress)?;
        let auto = match opts.max_drop {
            Some(budget) => {
                Some(sensitivity::auto_keep(&ctx, &ranking, &mut keep, budget, &mut progress)?)
            }
            None => None,
        };
        (ranking, auto)
    } else {
        if opts.max_drop.is_some() {
            bail!("--max-drop needs the sensitivity pass: give --sensitivity N (images, e.g. 64)");
        }
        (vec![], None)
    };
    let plan = graph::QdqPlan {
        targets: &targets,
        activations: &activations,
        act_type: opts.act_type,
        keep_float: &keep,
    };
    let mut quantized = graph::write_qdq(&source, &plan)?;

    let recipe = Recipe {
        format: "edgeverify-quantization/1".into(),
        method: opts.method,
        activations: opts.act_type,
        weights: "int8, symmetric, per output channel (scale max|w|/127)".into(),
        biases: "int32 (scale s_x * s_w) for Conv and Gemm; MatMul biases are separate float Adds"
            .into(),
        smoothquant_alpha: opts.smooth_alpha,
        smoothed_pairs,
        ops_quantized: targets.iter().filter(|t| !keep.contains(&t.name)).map(describe).collect(),
        ops_kept_float: targets
            .iter()
            .filter(|t| keep.contains(&t.name))
            .map(|t| KeptFloat {
                name: describe(t),
                reason: if opts.keep_float.contains(&t.name) {
                    "--keep-float".into()
                } else {
                    "--max-drop: among the most sensitive layers".into()
                },
            })
            .collect(),
        float_op_types: float_op_types(graph),
        calibration,
        sensitivity: ranking,
        auto_keep_float: auto,
        source_sha256: source_sha256.into(),
        edgeverify_version: env!("CARGO_PKG_VERSION").into(),
    };
    quantized.metadata_props.retain(|p| p.key != RECIPE_KEY);
    quantized.metadata_props.push(pb::StringStringEntryProto {
        key: RECIPE_KEY.into(),
        value: serde_json::to_string(&recipe)?,
    });
    quantized.producer_name = "edgeverify".into();
    quantized.producer_version = env!("CARGO_PKG_VERSION").into();
    Ok(Quantized { proto: quantized, recipe })
}

fn describe(t: &Target) -> String {
    let kind = match t.kind {
        TargetKind::Conv => "Conv",
        TargetKind::DepthwiseConv => "depthwise Conv",
        TargetKind::MatMul => "MatMul",
        TargetKind::Gemm => "Gemm",
    };
    format!("{} ({kind})", t.name)
}

fn float_op_types(graph: &pb::GraphProto) -> Vec<String> {
    let mut types: Vec<String> = graph
        .node
        .iter()
        .map(|n| n.op_type.clone())
        .filter(|t| !["Conv", "MatMul", "Gemm", "Constant"].contains(&t.as_str()))
        .collect();
    types.sort();
    types.dedup();
    types
}

fn check_names(keep: &HashSet<String>, targets: &[Target], path: &Path) -> Result<()> {
    let names: HashSet<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    for k in keep {
        if !names.contains(k.as_str()) {
            let similar: Vec<&str> =
                names.iter().copied().filter(|n| n.contains(k.as_str())).take(5).collect();
            bail!(
                "--keep-float {k:?}: model {} has no quantizable op of that name{}; run \
                 `edgeverify quantize --list-ops` to see them",
                path.display(),
                if similar.is_empty() {
                    String::new()
                } else {
                    format!(" (did you mean {similar:?}?)")
                }
            );
        }
    }
    Ok(())
}

/// Reads the recipe a quantized ONNX file carries, if it was written by edgeverify.
pub fn recipe_of(proto: &pb::ModelProto) -> Option<Recipe> {
    proto
        .metadata_props
        .iter()
        .find(|p| p.key == RECIPE_KEY)
        .and_then(|p| serde_json::from_str(&p.value).ok())
}

/// Encodes a model to ONNX protobuf bytes.
pub fn encode(proto: &pb::ModelProto) -> Vec<u8> {
    use prost::Message;
    proto.encode_to_vec()
}
