//! The ConvNeXt family built by edgeverify itself: the graph the Hugging Face implementation
//! exports to ONNX (opset 17, fused `LayerNormalization`), with seeded synthetic weights.
//!
//! The graph matches `torch.onnx.export` of `ConvNextForImageClassification` node for node
//! (same op types, order, node and output names; input `pixel_values` `[batch, 3, 224, 224]`,
//! output `logits` `[batch, 1000]`), so its cost on a CPU is the real model's cost. The weights
//! know nothing of ImageNet: accuracy measured with them means nothing, latency and memory do.
//!
//! Weights come from [`SplitMix64`] through integer arithmetic only: every value is a small
//! integer times a power of two, exactly representable in f32, so one seed gives the same
//! bytes on every platform. Their spread keeps activations in a trained network's range:
//! convolution and linear weights have a standard deviation near `1/sqrt(fan_in)`, and layer
//! scales, norm scales and biases sit away from their identity initialisation.

use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use prost::Message;
use serde::{Deserialize, Serialize};
use tract_onnx::pb;

use crate::dataset::SplitMix64;
use crate::model::{imagenet_classes, ModelSpec};
use crate::preprocess::PreprocessSpec;

/// Version of the weight generator and graph layout; part of a synthetic model's identity.
/// Bump it whenever the bytes a given (architecture, seed) produces change.
pub const GENERATOR: &str = "edgeverify-convnext-synthetic/1";

/// The opset of the Hugging Face export this builder reproduces.
pub const OPSET: i64 = 17;

/// Input side in pixels (the family's 224 checkpoints).
pub const IMAGE_SIZE: usize = 224;

/// ImageNet-1k classes.
pub const NUM_CLASSES: usize = 1000;

/// One ConvNeXt family member: blocks per stage and channels per stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    /// Command-line name, e.g. `convnext-tiny`.
    pub name: &'static str,
    /// The Hugging Face checkpoint (or timm name, for the small variants) it mirrors.
    pub checkpoint: &'static str,
    pub depths: [usize; 4],
    pub dims: [usize; 4],
}

/// The family, smallest first (depths and widths of the ConvNeXt paper, arXiv 2201.03545, and
/// of ConvNeXt V2's atto to nano, arXiv 2301.00808, built here with the V1 block).
pub const FAMILY: [Arch; 8] = [
    Arch {
        name: "convnext-atto",
        checkpoint: "timm convnext_atto",
        depths: [2, 2, 6, 2],
        dims: [40, 80, 160, 320],
    },
    Arch {
        name: "convnext-femto",
        checkpoint: "timm convnext_femto",
        depths: [2, 2, 6, 2],
        dims: [48, 96, 192, 384],
    },
    Arch {
        name: "convnext-pico",
        checkpoint: "timm convnext_pico",
        depths: [2, 2, 6, 2],
        dims: [64, 128, 256, 512],
    },
    Arch {
        name: "convnext-nano",
        checkpoint: "timm convnext_nano",
        depths: [2, 2, 8, 2],
        dims: [80, 160, 320, 640],
    },
    Arch {
        name: "convnext-tiny",
        checkpoint: "facebook/convnext-tiny-224",
        depths: [3, 3, 9, 3],
        dims: [96, 192, 384, 768],
    },
    Arch {
        name: "convnext-small",
        checkpoint: "facebook/convnext-small-224",
        depths: [3, 3, 27, 3],
        dims: [96, 192, 384, 768],
    },
    Arch {
        name: "convnext-base",
        checkpoint: "facebook/convnext-base-224",
        depths: [3, 3, 27, 3],
        dims: [128, 256, 512, 1024],
    },
    Arch {
        name: "convnext-large",
        checkpoint: "facebook/convnext-large-224",
        depths: [3, 3, 27, 3],
        dims: [192, 384, 768, 1536],
    },
];

impl Arch {
    /// ConvNeXt-T, the model of the project's first claim.
    pub fn tiny() -> Arch {
        FAMILY[4]
    }

    /// Number of weights: what the model's parameter count is, computed from its shape.
    pub fn parameter_count(&self) -> u64 {
        let [d0, ..] = self.dims;
        let mut n = (d0 * 3 * 16 + d0) + 2 * d0; // stem conv, stem LayerNorm
        for (stage, (&depth, &dim)) in self.depths.iter().zip(&self.dims).enumerate() {
            if stage > 0 {
                let prev = self.dims[stage - 1];
                n += 2 * prev + dim * prev * 4 + dim; // LayerNorm, conv 2x2/2
            }
            // dwconv 7x7 + bias, LayerNorm, Linear C→4C, Linear 4C→C, layer scale
            n += depth
                * (dim * 49
                    + dim
                    + 2 * dim
                    + (dim * 4 * dim + 4 * dim)
                    + (4 * dim * dim + dim)
                    + dim);
        }
        let last = self.dims[3];
        n += 2 * last + last * NUM_CLASSES + NUM_CLASSES;
        n as u64
    }
}

/// The family member named `name` (`convnext-tiny`, or just `tiny`).
pub fn arch_by_name(name: &str) -> Result<&'static Arch> {
    let wanted = name.trim().to_ascii_lowercase();
    let short = wanted.strip_prefix("convnext-").unwrap_or(&wanted);
    match FAMILY.iter().find(|a| a.name.strip_prefix("convnext-") == Some(short)) {
        Some(a) => Ok(a),
        None => {
            let names: Vec<&str> = FAMILY.iter().map(|a| a.name).collect();
            bail!("unknown architecture {name:?}: expected one of {}", names.join(", "))
        }
    }
}

impl FromStr for Arch {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Arch> {
        arch_by_name(s).copied()
    }
}

/// What identifies a synthetic model: the same triple rebuilds the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyntheticIdentity {
    pub arch: String,
    pub seed: u64,
    pub generator: String,
    /// The Hugging Face checkpoint (or timm model) whose graph this is.
    pub graph_of: String,
}

impl SyntheticIdentity {
    pub fn new(arch: &Arch, seed: u64) -> SyntheticIdentity {
        SyntheticIdentity {
            arch: arch.name.into(),
            seed,
            generator: GENERATOR.into(),
            graph_of: arch.checkpoint.into(),
        }
    }
}

/// Builds `arch` with the weights of `seed` into `dir` as
/// `<arch>-synthetic-seed<seed>.onnx` (kept, so other tools can run the same file) and
/// describes it: ConvNeXt's preprocessing, ImageNet-1k classes, no claim.
pub fn write_model(arch: &Arch, seed: u64, dir: &Path) -> Result<ModelSpec> {
    let path = dir.join(format!("{}-synthetic-seed{seed}.onnx", arch.name));
    let bytes = build_bytes(arch, seed);
    crate::report::write_atomically(&path, &bytes)
        .with_context(|| format!("writing the synthetic model {}", path.display()))?;
    Ok(ModelSpec {
        name: format!("{} graph with synthetic weights (seed {seed})", arch.name),
        onnx_path: path.clone(),
        expected_sha256: None,
        input: Some("pixel_values".into()),
        output: Some("logits".into()),
        // preprocessor_config.json of the facebook/convnext-*-224 checkpoints: crop_pct 0.875
        // of 224, bicubic, ImageNet mean and std. timm's atto to nano crop 0.95 instead, which
        // moves no figure here: the network sees 224x224 either way.
        preprocess: PreprocessSpec::imagenet_standard(),
        classes: imagenet_classes(),
        claim: None,
        assumptions: vec![],
        described_by: "synthetic".into(),
        description_path: path,
    })
}

/// The encoded ONNX file of `arch` with the weights of `seed`.
pub fn build_bytes(arch: &Arch, seed: u64) -> Vec<u8> {
    build(arch, seed).encode_to_vec()
}

/// The ONNX model of `arch` with the weights of `seed`: input `pixel_values`
/// `[batch, 3, 224, 224]` f32 NCHW, output `logits` `[batch, 1000]` f32.
pub fn build(arch: &Arch, seed: u64) -> pb::ModelProto {
    let mut g = GraphBuilder { nodes: vec![], initializers: vec![], weights: Weights::new(seed) };
    let mut x = g.stem(arch.dims[0]);
    for stage in 0..4 {
        if stage > 0 {
            x = g.downsample(&x, stage, arch.dims[stage - 1], arch.dims[stage]);
        }
        for layer in 0..arch.depths[stage] {
            x = g.block(&x, stage, layer, arch.dims[stage]);
        }
    }
    g.head(&x, arch.dims[3]);

    let graph = pb::GraphProto {
        name: "main_graph".into(),
        node: g.nodes,
        initializer: g.initializers,
        input: vec![value_info("pixel_values", &[None, Some(3), Some(224), Some(224)])],
        output: vec![value_info("logits", &[None, Some(NUM_CLASSES as i64)])],
        doc_string: format!(
            "{} graph ({}), synthetic weights: seed {seed}, {GENERATOR}",
            arch.name, arch.checkpoint
        ),
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: OPSET }],
        // The generator, not the crate version: the bytes depend on (arch, seed, generator) only.
        producer_name: "edgeverify".into(),
        producer_version: GENERATOR.into(),
        graph: Some(graph),
        metadata_props: [
            ("edgeverify.arch", arch.name.to_string()),
            ("edgeverify.seed", seed.to_string()),
            ("edgeverify.generator", GENERATOR.to_string()),
            ("edgeverify.weights", "synthetic: no ImageNet knowledge".to_string()),
        ]
        .into_iter()
        .map(|(key, value)| pb::StringStringEntryProto { key: key.into(), value })
        .collect(),
        ..Default::default()
    }
}

/// Seeded weight values, drawn in the order the graph creates its tensors.
struct Weights {
    rng: SplitMix64,
}

impl Weights {
    fn new(seed: u64) -> Weights {
        Weights { rng: SplitMix64(seed) }
    }

    /// `n` bell-shaped values with standard deviation `2^-shift`: each is the sum of four
    /// uniform integers in `-3..=3` (variance 4 · 48/12 = 16, so 4 grid steps) times the grid
    /// step `2^-(shift + 2)`. One draw per value: four 16-bit lanes, each mapped onto `0..7`
    /// by multiply-and-shift (bias below 2^-16, irrelevant for weights).
    fn bell(&mut self, n: usize, shift: i32) -> Vec<f32> {
        let step = power_of_two(-(shift + 2));
        (0..n)
            .map(|_| {
                let bits = self.rng.next_u64();
                let units: i64 = (0..4)
                    .map(|lane| ((((bits >> (16 * lane)) & 0xFFFF) * 7) >> 16) as i64 - 3)
                    .sum();
                units as f32 * step
            })
            .collect()
    }

    /// `n` values uniform on `low + k · step`, `k` in `0..levels`.
    fn uniform(&mut self, n: usize, low: f32, step: f32, levels: u64) -> Vec<f32> {
        (0..n).map(|_| low + self.rng.below(levels) as f32 * step).collect()
    }

    /// Convolution or linear weights for `fan_in` inputs per output.
    fn for_fan_in(&mut self, n: usize, fan_in: usize) -> Vec<f32> {
        self.bell(n, std_shift(fan_in))
    }

    /// Biases: standard deviation 1/16, grid 1/64.
    fn bias(&mut self, n: usize) -> Vec<f32> {
        self.bell(n, 4)
    }

    /// LayerNorm scales: uniform on 0.5, 0.625, …, 1.5 (identity would be all ones).
    fn norm_scale(&mut self, n: usize) -> Vec<f32> {
        self.uniform(n, 0.5, 0.125, 9)
    }

    /// Layer scales: uniform on 0.25, 0.375, …, 0.75. Training starts them at 1e-6, which makes
    /// every block an identity; a trained ConvNeXt-T's sit in this range.
    fn layer_scale(&mut self, n: usize) -> Vec<f32> {
        self.uniform(n, 0.25, 0.125, 5)
    }
}

/// `s` with `2^-s` nearest to `1/sqrt(fan_in)` in log scale: the smallest `s` with
/// `fan_in < 2 · 4^s`.
fn std_shift(fan_in: usize) -> i32 {
    let mut s = 0;
    while fan_in >= 2 << (2 * s) {
        s += 1;
    }
    s
}

/// `2^e` as f32, built from its bits, exact.
fn power_of_two(e: i32) -> f32 {
    assert!((-126..=127).contains(&e), "2^{e} is outside f32's normal range");
    f32::from_bits(((127 + e) as u32) << 23)
}

/// A square convolution: channels in and out, kernel side, stride, padding on every side, and
/// groups (1, or the channel count for a depthwise one).
#[derive(Debug, Clone, Copy)]
struct ConvShape {
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    group: usize,
}

/// Builds the node list and initializers, naming everything as the Hugging Face export does.
struct GraphBuilder {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    weights: Weights,
}

/// LayerNorm epsilon of the stem, blocks and downsampling layers; the pooled norm uses 1e-12.
const LN_EPS: f32 = 1e-6;
const POOLED_LN_EPS: f32 = 1e-12;

impl GraphBuilder {
    /// Adds a node named `name` (`/…/Op`), its single output `name_output_0`; returns that.
    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
    ) -> String {
        let output = format!("{name}_output_0");
        self.nodes.push(pb::NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            attribute: attrs,
            ..Default::default()
        });
        output
    }

    fn initializer(&mut self, name: &str, dims: &[usize], values: Vec<f32>) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), values.len(), "{name}");
        self.initializers.push(pb::TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.into()
    }

    /// A scalar f32 `Constant` node, as the exporter writes GELU's constants.
    fn constant(&mut self, name: &str, value: f32) -> String {
        let tensor = pb::TensorProto {
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: value.to_le_bytes().to_vec(),
            ..Default::default()
        };
        self.node("Constant", name, &[], vec![attr_tensor("value", tensor)])
    }

    /// Conv with bias, weights `param.weight` `[cout, cin / group, k, k]` and `param.bias`.
    fn conv(&mut self, name: &str, x: &str, param: &str, c: ConvShape) -> String {
        let ConvShape { cin, cout, k, stride, pad, group } = c;
        let fan_in = cin / group * k * k;
        let w = self.weights.for_fan_in(cout * fan_in, fan_in);
        let w = self.initializer(&format!("{param}.weight"), &[cout, cin / group, k, k], w);
        let b = self.weights.bias(cout);
        let b = self.initializer(&format!("{param}.bias"), &[cout], b);
        let (k, s, p) = (k as i64, stride as i64, pad as i64);
        let attrs = vec![
            attr_ints("dilations", &[1, 1]),
            attr_int("group", group as i64),
            attr_ints("kernel_shape", &[k, k]),
            attr_ints("pads", &[p, p, p, p]),
            attr_ints("strides", &[s, s]),
        ];
        self.node("Conv", &format!("{name}/Conv"), &[x, &w, &b], attrs)
    }

    /// LayerNormalization over the last axis with fresh scale and bias `param.weight/bias`.
    fn layer_norm(
        &mut self,
        name: &str,
        x: &str,
        param: &str,
        channels: usize,
        eps: f32,
    ) -> String {
        let scale = self.weights.norm_scale(channels);
        let scale = self.initializer(&format!("{param}.weight"), &[channels], scale);
        let bias = self.weights.bias(channels);
        let bias = self.initializer(&format!("{param}.bias"), &[channels], bias);
        let attrs = vec![attr_int("axis", -1), attr_float("epsilon", eps)];
        self.node(
            "LayerNormalization",
            &format!("{name}/LayerNormalization"),
            &[x, &scale, &bias],
            attrs,
        )
    }

    fn transpose(&mut self, name: &str, x: &str, perm: [i64; 4]) -> String {
        self.node("Transpose", name, &[x], vec![attr_ints("perm", &perm)])
    }

    /// HF's channels-first LayerNorm as exported: NCHW → NHWC, LayerNorm, → NCHW.
    fn channels_first_norm(&mut self, name: &str, x: &str, param: &str, channels: usize) -> String {
        let t = self.transpose(&format!("{name}/Transpose"), x, [0, 2, 3, 1]);
        let n = self.layer_norm(name, &t, param, channels, LN_EPS);
        self.transpose(&format!("{name}/Transpose_1"), &n, [0, 3, 1, 2])
    }

    /// Linear on the last axis as exported: MatMul with the transposed weight, then bias Add.
    fn linear(&mut self, name: &str, x: &str, param: &str, cin: usize, cout: usize) -> String {
        let w = self.weights.for_fan_in(cin * cout, cin);
        let w = self.initializer(&format!("{param}.weight_t"), &[cin, cout], w);
        let b = self.weights.bias(cout);
        let b = self.initializer(&format!("{param}.bias"), &[cout], b);
        let y = self.node("MatMul", &format!("{name}/MatMul"), &[x, &w], vec![]);
        self.node("Add", &format!("{name}/Add"), &[&b, &y], vec![])
    }

    /// Exact GELU as exported: `x * (1 + erf(x / sqrt 2)) * 0.5`.
    fn gelu(&mut self, name: &str, x: &str) -> String {
        let sqrt2 = self.constant(&format!("{name}/Constant"), std::f32::consts::SQRT_2);
        let div = self.node("Div", &format!("{name}/Div"), &[x, &sqrt2], vec![]);
        let erf = self.node("Erf", &format!("{name}/Erf"), &[&div], vec![]);
        let one = self.constant(&format!("{name}/Constant_1"), 1.0);
        let plus = self.node("Add", &format!("{name}/Add"), &[&erf, &one], vec![]);
        let mul = self.node("Mul", &format!("{name}/Mul"), &[x, &plus], vec![]);
        let half = self.constant(&format!("{name}/Constant_2"), 0.5);
        self.node("Mul", &format!("{name}/Mul_1"), &[&mul, &half], vec![])
    }

    /// Patchify stem: conv 4x4/4 from 3 channels, then channels-first LayerNorm.
    fn stem(&mut self, dim: usize) -> String {
        let patchify = ConvShape { cin: 3, cout: dim, k: 4, stride: 4, pad: 0, group: 1 };
        let x = self.conv(
            "/convnext/embeddings/patch_embeddings",
            "pixel_values",
            "convnext.embeddings.patch_embeddings",
            patchify,
        );
        self.channels_first_norm(
            "/convnext/embeddings/layernorm",
            &x,
            "convnext.embeddings.layernorm",
            dim,
        )
    }

    /// Downsampling before `stage`: channels-first LayerNorm, conv 2x2/2 to `dim` channels.
    fn downsample(&mut self, x: &str, stage: usize, prev: usize, dim: usize) -> String {
        let name = format!("/convnext/encoder/stages.{stage}/downsampling_layer");
        let param = format!("convnext.encoder.stages.{stage}.downsampling_layer");
        let n = self.channels_first_norm(&format!("{name}.0"), x, &format!("{param}.0"), prev);
        let shape = ConvShape { cin: prev, cout: dim, k: 2, stride: 2, pad: 0, group: 1 };
        self.conv(&format!("{name}.1"), &n, &format!("{param}.1"), shape)
    }

    /// One block: depthwise 7x7 → LayerNorm → Linear ×4 → GELU → Linear → layer scale →
    /// residual add.
    fn block(&mut self, x: &str, stage: usize, layer: usize, dim: usize) -> String {
        let name = format!("/convnext/encoder/stages.{stage}/layers.{layer}");
        let param = format!("convnext.encoder.stages.{stage}.layers.{layer}");
        let gamma = self.weights.layer_scale(dim);
        let gamma = self.initializer(&format!("{param}.layer_scale_parameter"), &[dim], gamma);

        let depthwise = ConvShape { cin: dim, cout: dim, k: 7, stride: 1, pad: 3, group: dim };
        let y = self.conv(&format!("{name}/dwconv"), x, &format!("{param}.dwconv"), depthwise);
        let y = self.transpose(&format!("{name}/Transpose"), &y, [0, 2, 3, 1]);
        let y = self.layer_norm(
            &format!("{name}/layernorm"),
            &y,
            &format!("{param}.layernorm"),
            dim,
            LN_EPS,
        );
        let y =
            self.linear(&format!("{name}/pwconv1"), &y, &format!("{param}.pwconv1"), dim, 4 * dim);
        let y = self.gelu(&format!("{name}/act"), &y);
        let y =
            self.linear(&format!("{name}/pwconv2"), &y, &format!("{param}.pwconv2"), 4 * dim, dim);
        let y = self.node("Mul", &format!("{name}/Mul"), &[&gamma, &y], vec![]);
        let y = self.transpose(&format!("{name}/Transpose_1"), &y, [0, 3, 1, 2]);
        self.node("Add", &format!("{name}/Add"), &[x, &y], vec![])
    }

    /// Global average pool, LayerNorm, classifier (Gemm, output `logits`).
    fn head(&mut self, x: &str, dim: usize) {
        let pooled = self.node(
            "ReduceMean",
            "/convnext/ReduceMean",
            &[x],
            vec![attr_ints("axes", &[-2, -1]), attr_int("keepdims", 0)],
        );
        let normed = self.layer_norm(
            "/convnext/layernorm",
            &pooled,
            "convnext.layernorm",
            dim,
            POOLED_LN_EPS,
        );
        let w = self.weights.for_fan_in(NUM_CLASSES * dim, dim);
        let w = self.initializer("classifier.weight", &[NUM_CLASSES, dim], w);
        let b = self.weights.bias(NUM_CLASSES);
        let b = self.initializer("classifier.bias", &[NUM_CLASSES], b);
        let attrs = vec![attr_float("alpha", 1.0), attr_float("beta", 1.0), attr_int("transB", 1)];
        self.node("Gemm", "/classifier/Gemm", &[&normed, &w, &b], attrs);
        let last = self.nodes.last_mut().expect("just pushed");
        last.output = vec!["logits".into()];
    }
}

fn value_info(name: &str, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => Value::DimValue(*v),
                None => Value::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attr(name: &str, kind: pb::attribute_proto::AttributeType) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: kind as i32, ..Default::default() }
}

fn attr_int(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto { i: value, ..attr(name, pb::attribute_proto::AttributeType::Int) }
}

fn attr_ints(name: &str, values: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        ints: values.to_vec(),
        ..attr(name, pb::attribute_proto::AttributeType::Ints)
    }
}

fn attr_float(name: &str, value: f32) -> pb::AttributeProto {
    pb::AttributeProto { f: value, ..attr(name, pb::attribute_proto::AttributeType::Float) }
}

fn attr_tensor(name: &str, value: pb::TensorProto) -> pb::AttributeProto {
    pb::AttributeProto { t: Some(value), ..attr(name, pb::attribute_proto::AttributeType::Tensor) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_are_the_published_ones() {
        // ConvNeXt paper, Table 1 (one decimal): T 28.6 M, S 50.2 M, B 88.6 M, L 197.8 M;
        // timm's model table (two decimals): atto 3.70, femto 5.22, pico 9.05, nano 15.59.
        let millions = |name: &str| name.parse::<Arch>().unwrap().parameter_count() as f64 / 1e6;
        assert_eq!(Arch::tiny().parameter_count(), 28_589_128);
        for (name, published, half_digit) in [
            ("small", 50.2, 0.05),
            ("base", 88.6, 0.05),
            ("large", 197.8, 0.05),
            ("atto", 3.70, 0.005),
            ("femto", 5.22, 0.005),
            ("pico", 9.05, 0.005),
            ("nano", 15.59, 0.005),
        ] {
            let got = millions(name);
            assert!(
                (got - published).abs() <= half_digit,
                "{name}: {got} M, published {published}"
            );
        }
    }

    #[test]
    fn architecture_names_parse_with_or_without_prefix() {
        assert_eq!("convnext-tiny".parse::<Arch>().unwrap(), Arch::tiny());
        assert_eq!("Small".parse::<Arch>().unwrap().depths, [3, 3, 27, 3]);
        let err = "convnext-huge".parse::<Arch>().unwrap_err().to_string();
        assert!(err.contains("convnext-atto") && err.contains("convnext-large"), "{err}");
    }

    #[test]
    fn std_shift_rounds_in_log_scale() {
        // 1/sqrt(48) = 0.144 → 1/8; 1/sqrt(384) = 0.051 → 1/16; 1/sqrt(3072) = 0.018 → 1/64.
        assert_eq!(std_shift(48), 3);
        assert_eq!(std_shift(384), 4);
        assert_eq!(std_shift(768), 5);
        assert_eq!(std_shift(3072), 6);
    }

    #[test]
    fn bell_values_sit_on_the_grid_with_the_intended_spread() {
        let values = Weights::new(3).bell(20_000, 4);
        let step = 1.0 / 64.0;
        assert!(values.iter().all(|v| (v / step).fract() == 0.0 && v.abs() <= 12.0 * step));
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let std = (values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 0.002 && (std - 1.0 / 16.0).abs() < 0.002, "mean {mean} std {std}");
    }

    #[test]
    fn powers_of_two_are_exact() {
        assert_eq!(power_of_two(-6), 1.0 / 64.0);
        assert_eq!(power_of_two(0), 1.0);
        assert_eq!(power_of_two(3), 8.0);
    }
}
