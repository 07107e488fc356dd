//! ONNX graph surgery for quantization: finding the quantizable ops, the exact
//! LayerNorm → MatMul smoothing rewrite, and writing the standard QDQ form.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tract_onnx::pb;

use super::calibrate::{ActQuant, ActType};

/// ONNX `TensorProto.DataType` codes used here.
const FLOAT: i32 = 1;
const UINT8: i32 = 2;
const INT8: i32 = 3;
const INT32: i32 = 6;

/// What kind of op a quantization target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    Conv,
    DepthwiseConv,
    MatMul,
    Gemm,
}

/// One quantizable op: its activation input, its constant weight and bias.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// The ONNX node name (or `<op_type>#<index>` when unnamed).
    pub name: String,
    pub kind: TargetKind,
    pub node_index: usize,
    pub activation: String,
    pub weight: String,
    pub bias: Option<String>,
    /// The weight axis that indexes output channels (per-channel scales run along it).
    pub weight_axis: usize,
}

fn attr_int(node: &pb::NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

fn attr_float(node: &pb::NodeProto, name: &str) -> Option<f32> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.f)
}

/// The graph's constant tensors by name.
pub fn initializers(graph: &pb::GraphProto) -> HashMap<&str, &pb::TensorProto> {
    graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect()
}

/// Finds Conv, MatMul and Gemm nodes whose weight (and bias) are constant initializers.
pub fn find_targets(graph: &pb::GraphProto) -> Vec<Target> {
    let inits = initializers(graph);
    let mut targets = vec![];
    for (i, node) in graph.node.iter().enumerate() {
        let name =
            if node.name.is_empty() { format!("{}#{i}", node.op_type) } else { node.name.clone() };
        let weight = node.input.get(1).and_then(|w| inits.get(w.as_str()).map(|t| (w, *t)));
        let Some((weight_name, w)) = weight else { continue };
        let bias = node.input.get(2).filter(|b| inits.contains_key(b.as_str())).cloned();
        let (kind, axis) = match node.op_type.as_str() {
            "Conv" if w.dims.len() == 4 => {
                let group = attr_int(node, "group").unwrap_or(1);
                let depthwise = group > 1 && group == w.dims[0] && w.dims[1] == 1;
                if group > 1 && !depthwise {
                    continue;
                }
                (if depthwise { TargetKind::DepthwiseConv } else { TargetKind::Conv }, 0)
            }
            "MatMul" if w.dims.len() == 2 => (TargetKind::MatMul, 1),
            "Gemm" if w.dims.len() == 2 => {
                let plain = attr_int(node, "transA").unwrap_or(0) == 0
                    && attr_float(node, "alpha").unwrap_or(1.0) == 1.0
                    && attr_float(node, "beta").unwrap_or(1.0) == 1.0;
                if !plain {
                    continue;
                }
                (TargetKind::Gemm, if attr_int(node, "transB").unwrap_or(0) == 1 { 0 } else { 1 })
            }
            _ => continue,
        };
        let bias = bias.filter(|b| {
            inits[b.as_str()].dims.len() == 1 && inits[b.as_str()].dims[0] == w.dims[axis]
        });
        targets.push(Target {
            name,
            kind,
            node_index: i,
            activation: node.input[0].clone(),
            weight: weight_name.clone(),
            bias,
            weight_axis: axis,
        });
    }
    targets
}

/// The f32 values of a float initializer.
pub fn f32_values(t: &pb::TensorProto) -> Result<Vec<f32>> {
    if t.data_type != FLOAT {
        bail!("initializer {} is not f32 (data type {})", t.name, t.data_type);
    }
    if !t.float_data.is_empty() {
        return Ok(t.float_data.clone());
    }
    if !t.raw_data.len().is_multiple_of(4) {
        bail!("initializer {} has a truncated payload", t.name);
    }
    Ok(t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn tensor(name: &str, dims: &[i64], data_type: i32, raw: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type,
        raw_data: raw,
        ..Default::default()
    }
}

fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> pb::TensorProto {
    tensor(name, dims, FLOAT, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str, axis: Option<i64>) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: axis
            .map(|a| pb::AttributeProto {
                name: "axis".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: a,
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// Per-channel symmetric int8 quantization of `values` (shape `dims`) along `axis`:
/// returns the int8 values and one scale per channel (`max |w| / 127`).
pub fn quantize_weights(values: &[f32], dims: &[i64], axis: usize) -> (Vec<i8>, Vec<f32>) {
    let channels = dims[axis] as usize;
    let inner: usize = dims[axis + 1..].iter().product::<i64>() as usize;
    let channel_of = |i: usize| (i / inner) % channels;
    let mut absmax = vec![0f32; channels];
    for (i, v) in values.iter().enumerate() {
        let c = channel_of(i);
        absmax[c] = absmax[c].max(v.abs());
    }
    let scales: Vec<f32> = absmax.iter().map(|m| if *m > 0.0 { m / 127.0 } else { 1.0 }).collect();
    let q = values
        .iter()
        .enumerate()
        .map(|(i, v)| (v / scales[channel_of(i)]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, scales)
}

/// How each target is quantized, as the QDQ writer needs it.
pub struct QdqPlan<'a> {
    pub targets: &'a [Target],
    /// Activation quantization per activation tensor name.
    pub activations: &'a BTreeMap<String, ActQuant>,
    pub act_type: ActType,
    /// Target names kept in float.
    pub keep_float: &'a HashSet<String>,
}

/// Writes the QDQ form: `QuantizeLinear → DequantizeLinear` on each quantized op's activation
/// input (shared when several ops read the same tensor), `DequantizeLinear` of per-channel
/// int8 weights and of int32 biases (scale `s_x * s_w[c]`). Float initializers left unused
/// are dropped. Every op is a standard ONNX op (opset >= 13 for per-axis dequantization).
pub fn write_qdq(proto: &pb::ModelProto, plan: &QdqPlan) -> Result<pb::ModelProto> {
    let mut out = proto.clone();
    let opset = out.opset_import.iter().find(|o| o.domain.is_empty()).map(|o| o.version);
    if opset.unwrap_or(0) < 13 {
        bail!("per-channel QDQ needs ONNX opset 13 or later; the model declares {opset:?}");
    }
    let graph = out.graph.as_mut().context("ONNX file has no graph")?;
    let inits: HashMap<String, pb::TensorProto> =
        graph.initializer.iter().map(|t| (t.name.clone(), t.clone())).collect();
    let by_index: HashMap<usize, &Target> = plan
        .targets
        .iter()
        .filter(|t| !plan.keep_float.contains(&t.name))
        .map(|t| (t.node_index, t))
        .collect();

    let mut prologue = vec![];
    let mut nodes = vec![];
    let mut new_inits = vec![];
    let mut dequantized: HashMap<String, String> = HashMap::new();
    for (i, original) in graph.node.iter().enumerate() {
        let Some(target) = by_index.get(&i) else {
            nodes.push(original.clone());
            continue;
        };
        let mut rewritten = original.clone();
        let act = plan.activations.get(&target.activation).with_context(|| {
            format!(
                "no calibration statistics for {} (input of {})",
                target.activation, target.name
            )
        })?;
        let act_dq = match dequantized.get(&target.activation) {
            Some(name) => name.clone(),
            None => {
                let (a, q, dq) = (
                    &target.activation,
                    format!("{}_q", target.activation),
                    format!("{}_dq", target.activation),
                );
                let (scale, zp) = (format!("{a}_scale"), format!("{a}_zero_point"));
                new_inits.push(f32_tensor(&scale, &[], &[act.scale]));
                new_inits.push(match plan.act_type {
                    ActType::U8 => tensor(&zp, &[], UINT8, vec![act.zero_point as u8]),
                    ActType::I8 => tensor(&zp, &[], INT8, vec![act.zero_point as i8 as u8]),
                });
                nodes.push(node(
                    "QuantizeLinear",
                    &format!("{a}_QuantizeLinear"),
                    &[a, &scale, &zp],
                    &q,
                    None,
                ));
                nodes.push(node(
                    "DequantizeLinear",
                    &format!("{a}_DequantizeLinear"),
                    &[&q, &scale, &zp],
                    &dq,
                    None,
                ));
                dequantized.insert(a.clone(), dq.clone());
                dq
            }
        };
        rewritten.input[0] = act_dq;

        let w = &inits[&target.weight];
        let (wq, w_scales) = quantize_weights(&f32_values(w)?, &w.dims, target.weight_axis);
        let channels = w_scales.len() as i64;
        let wname = format!("{}_{}", target.weight, target.name);
        new_inits.push(tensor(
            &format!("{wname}_int8"),
            &w.dims,
            INT8,
            wq.iter().map(|v| *v as u8).collect(),
        ));
        new_inits.push(f32_tensor(&format!("{wname}_scale"), &[channels], &w_scales));
        new_inits.push(tensor(
            &format!("{wname}_zero_point"),
            &[channels],
            INT8,
            vec![0; channels as usize],
        ));
        prologue.push(node(
            "DequantizeLinear",
            &format!("{wname}_DequantizeLinear"),
            &[&format!("{wname}_int8"), &format!("{wname}_scale"), &format!("{wname}_zero_point")],
            &format!("{wname}_dq"),
            Some(target.weight_axis as i64),
        ));
        rewritten.input[1] = format!("{wname}_dq");

        if let Some(bias) = &target.bias {
            let b = f32_values(&inits[bias])?;
            let scales: Vec<f32> = w_scales.iter().map(|s| s * act.scale).collect();
            let bq: Vec<i32> = b
                .iter()
                .zip(&scales)
                .map(|(v, s)| (f64::from(*v) / f64::from(*s)).round() as i32)
                .collect();
            let bname = format!("{bias}_{}", target.name);
            new_inits.push(tensor(
                &format!("{bname}_int32"),
                &[channels],
                INT32,
                bq.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ));
            new_inits.push(f32_tensor(&format!("{bname}_scale"), &[channels], &scales));
            new_inits.push(tensor(
                &format!("{bname}_zero_point"),
                &[channels],
                INT32,
                vec![0; 4 * channels as usize],
            ));
            prologue.push(node(
                "DequantizeLinear",
                &format!("{bname}_DequantizeLinear"),
                &[
                    &format!("{bname}_int32"),
                    &format!("{bname}_scale"),
                    &format!("{bname}_zero_point"),
                ],
                &format!("{bname}_dq"),
                Some(0),
            ));
            rewritten.input[2] = format!("{bname}_dq");
        }
        nodes.push(rewritten);
    }
    prologue.extend(nodes);
    graph.node = prologue;
    graph.initializer.extend(new_inits);
    drop_unused_initializers(graph);
    graph.value_info.clear();
    Ok(out)
}

fn drop_unused_initializers(graph: &mut pb::GraphProto) {
    let used: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .chain(graph.output.iter().map(|o| o.name.clone()))
        .collect();
    let dropped: HashSet<String> = graph
        .initializer
        .iter()
        .filter(|t| !used.contains(&t.name))
        .map(|t| t.name.clone())
        .collect();
    graph.initializer.retain(|t| !dropped.contains(&t.name));
    // Older exports list initializers among the graph inputs too.
    graph.input.retain(|i| !dropped.contains(&i.name));
}

/// A `LayerNormalization → MatMul` pair the smoothing rewrite applies to.
#[derive(Debug, Clone)]
pub struct SmoothPair {
    pub layernorm: usize,
    /// The LayerNorm output, the MatMul's activation.
    pub tensor: String,
    pub matmul: usize,
}

/// Finds fused LayerNormalization outputs consumed only by one MatMul with a constant weight.
pub fn find_smooth_pairs(graph: &pb::GraphProto) -> Vec<SmoothPair> {
    let inits = initializers(graph);
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for input in &n.input {
            consumers.entry(input.as_str()).or_default().push(i);
        }
    }
    let mut pairs = vec![];
    for (i, n) in graph.node.iter().enumerate() {
        if n.op_type != "LayerNormalization" || n.input.len() < 3 || n.output.len() != 1 {
            continue;
        }
        let (gamma, beta) = (n.input[1].as_str(), n.input[2].as_str());
        let private = |name: &str| consumers.get(name).is_some_and(|c| c.len() == 1);
        if !inits.contains_key(gamma)
            || !inits.contains_key(beta)
            || !private(gamma)
            || !private(beta)
        {
            continue;
        }
        let Some([m]) = consumers.get(n.output[0].as_str()).map(|c| c.as_slice()) else { continue };
        let mm = &graph.node[*m];
        let weight_ok = mm.input.get(1).is_some_and(|w| {
            inits.get(w.as_str()).is_some_and(|t| t.dims.len() == 2) && private(w)
        });
        if mm.op_type == "MatMul" && mm.input[0] == n.output[0] && weight_ok {
            pairs.push(SmoothPair { layernorm: i, tensor: n.output[0].clone(), matmul: *m });
        }
    }
    pairs
}

/// Divides the LayerNorm's affine by per-channel factors `s` and multiplies the MatMul weight's
/// rows by them: `LN(x)·W = (LN(x)/s)·(s·W)` exactly, with `s_c = max|y_c|^α / max|W_c|^(1-α)`
/// so activation outliers move into the weights (SmoothQuant).
pub fn smooth(
    proto: &mut pb::ModelProto,
    pairs: &[SmoothPair],
    channel_absmax: &BTreeMap<String, Vec<f32>>,
    alpha: f32,
) -> Result<usize> {
    let graph = proto.graph.as_mut().context("ONNX file has no graph")?;
    let index: HashMap<String, usize> =
        graph.initializer.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
    let mut rewritten = 0;
    for pair in pairs {
        let Some(act_max) = channel_absmax.get(&pair.tensor) else { continue };
        let ln = &graph.node[pair.layernorm];
        let (gamma, beta) = (index[&ln.input[1]], index[&ln.input[2]]);
        let weight = index[&graph.node[pair.matmul].input[1]];
        let w = f32_values(&graph.initializer[weight])?;
        let (k, n) = (
            graph.initializer[weight].dims[0] as usize,
            graph.initializer[weight].dims[1] as usize,
        );
        if act_max.len() != k {
            continue;
        }
        let factors: Vec<f32> = (0..k)
            .map(|c| {
                let wmax = w[c * n..(c + 1) * n].iter().fold(0f32, |m, v| m.max(v.abs()));
                let s = act_max[c].max(1e-5).powf(alpha) / wmax.max(1e-5).powf(1.0 - alpha);
                if s.is_finite() && s > 0.0 {
                    s
                } else {
                    1.0
                }
            })
            .collect();
        let scale_vec = |t: &mut pb::TensorProto, f: &dyn Fn(usize, f32) -> f32| -> Result<()> {
            let v: Vec<f32> = f32_values(t)?.iter().enumerate().map(|(i, x)| f(i, *x)).collect();
            *t = f32_tensor(&t.name.clone(), &t.dims.clone(), &v);
            Ok(())
        };
        scale_vec(&mut graph.initializer[gamma], &|c, x| x / factors[c])?;
        scale_vec(&mut graph.initializer[beta], &|c, x| x / factors[c])?;
        scale_vec(&mut graph.initializer[weight], &|i, x| x * factors[i / n])?;
        rewritten += 1;
    }
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_weights_use_each_channels_range() {
        // [K=2, N=3] MatMul weight, channels along axis 1.
        let w = [1.0, -0.5, 0.011, -2.0, 0.25, 0.02];
        let (q, s) = quantize_weights(&w, &[2, 3], 1);
        assert_eq!(s, vec![2.0 / 127.0, 0.5 / 127.0, 0.02 / 127.0]);
        assert_eq!(q, vec![64, -127, 70, -127, 64, 127]);
    }

    #[test]
    fn conv_weights_are_per_output_channel() {
        let w = [0.5, -1.0, 4.0, 2.0]; // [O=2, I=2, 1, 1]
        let (q, s) = quantize_weights(&w, &[2, 2, 1, 1], 0);
        assert_eq!(s, vec![1.0 / 127.0, 4.0 / 127.0]);
        assert_eq!(q, vec![64, -127, 127, 64]);
    }
}
