//! What an ONNX graph is and costs, read from the graph itself: ops per type, parameters,
//! multiply-accumulates and every node's output shape, by a small shape inference over the
//! ops image classifiers like ConvNeXt are exported with.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use tract_onnx::pb;

/// A graph's structure and cost at a fixed batch.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphStats {
    /// Nodes per op type.
    pub op_counts: BTreeMap<String, usize>,
    /// Elements of all initializers (the weights).
    pub parameters: u64,
    /// Multiply-accumulates of Conv, MatMul and Gemm for one forward pass: what papers call
    /// "FLOPs" (ConvNeXt-T: 4.5 G).
    pub macs: u64,
    /// Every node in graph order with its first output's shape.
    pub nodes: Vec<NodeShape>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeShape {
    pub name: String,
    pub op_type: String,
    pub output: String,
    pub shape: Vec<usize>,
}

/// Infers every node's output shape with symbolic input dims set to `batch`, and counts.
pub fn graph_stats(proto: &pb::ModelProto, batch: usize) -> Result<GraphStats> {
    let graph = proto.graph.as_ref().context("ONNX model has no graph")?;
    let mut shapes: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut parameters = 0u64;
    for t in &graph.initializer {
        let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        parameters += dims.iter().product::<usize>() as u64;
        shapes.insert(&t.name, dims);
    }
    for input in &graph.input {
        if !shapes.contains_key(input.name.as_str()) {
            shapes.insert(&input.name, input_dims(input, batch)?);
        }
    }

    let mut stats = GraphStats { op_counts: BTreeMap::new(), parameters, macs: 0, nodes: vec![] };
    for node in &graph.node {
        let inputs = node
            .input
            .iter()
            .map(|name| {
                shapes.get(name.as_str()).cloned().with_context(|| {
                    format!("node {}: input {name:?} is produced by no earlier node", node.name)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (shape, macs) = infer(node, &inputs)
            .with_context(|| format!("node {} ({})", node.name, node.op_type))?;
        *stats.op_counts.entry(node.op_type.clone()).or_default() += 1;
        stats.macs += macs;
        let output = node.output.first().cloned().unwrap_or_default();
        stats.nodes.push(NodeShape {
            name: node.name.clone(),
            op_type: node.op_type.clone(),
            output: output.clone(),
            shape: shape.clone(),
        });
        shapes.insert(node.output.first().map(String::as_str).unwrap_or_default(), shape);
    }
    Ok(stats)
}

fn input_dims(info: &pb::ValueInfoProto, batch: usize) -> Result<Vec<usize>> {
    use pb::tensor_shape_proto::dimension::Value;
    use pb::type_proto::Value as TypeValue;
    let Some(TypeValue::TensorType(t)) = info.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        bail!("graph input {:?} is not a tensor", info.name);
    };
    let shape = t.shape.as_ref().with_context(|| format!("input {:?} has no shape", info.name))?;
    Ok(shape
        .dim
        .iter()
        .map(|d| match d.value {
            Some(Value::DimValue(v)) if v > 0 => v as usize,
            _ => batch,
        })
        .collect())
}

fn ints<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a [i64]> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.ints.as_slice())
}

fn int(node: &pb::NodeProto, name: &str, default: i64) -> i64 {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i).unwrap_or(default)
}

/// Output shape and multiply-accumulates of one node.
fn infer(node: &pb::NodeProto, inputs: &[Vec<usize>]) -> Result<(Vec<usize>, u64)> {
    let first = || inputs.first().cloned().context("no input");
    Ok(match node.op_type.as_str() {
        "Conv" => conv(node, inputs)?,
        "MatMul" => matmul(inputs)?,
        "Gemm" => gemm(node, inputs)?,
        "Transpose" => {
            let x = first()?;
            let perm: Vec<usize> = match ints(node, "perm") {
                Some(p) => p.iter().map(|&a| a as usize).collect(),
                None => (0..x.len()).rev().collect(),
            };
            (perm.iter().map(|&a| x[a]).collect(), 0)
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" => {
            let b = inputs.get(1).context("binary op with one input")?;
            (broadcast(&first()?, b)?, 0)
        }
        "LayerNormalization" | "Erf" | "Sqrt" | "Relu" | "Sigmoid" | "Identity" => (first()?, 0),
        "ReduceMean" => {
            let x = first()?;
            let rank = x.len() as i64;
            let axes: Vec<usize> = match ints(node, "axes") {
                Some(a) => a.iter().map(|&a| (if a < 0 { a + rank } else { a }) as usize).collect(),
                None => (0..x.len()).collect(),
            };
            let keep = int(node, "keepdims", 1) != 0;
            let shape = x
                .iter()
                .enumerate()
                .filter_map(|(i, &d)| match (axes.contains(&i), keep) {
                    (false, _) => Some(d),
                    (true, true) => Some(1),
                    (true, false) => None,
                })
                .collect();
            (shape, 0)
        }
        "Constant" => {
            let t = node
                .attribute
                .iter()
                .find(|a| a.name == "value")
                .and_then(|a| a.t.as_ref())
                .context("Constant without a tensor `value`")?;
            (t.dims.iter().map(|&d| d as usize).collect(), 0)
        }
        other => bail!("op {other} is not supported by edgeverify's graph statistics"),
    })
}

fn conv(node: &pb::NodeProto, inputs: &[Vec<usize>]) -> Result<(Vec<usize>, u64)> {
    let (x, w) = match inputs {
        [x, w, ..] if x.len() == 4 && w.len() == 4 => (x, w),
        _ => bail!("expected 4-d input and weight, got {inputs:?}"),
    };
    let group = int(node, "group", 1) as usize;
    let strides = ints(node, "strides").unwrap_or(&[1, 1]);
    let pads = ints(node, "pads").unwrap_or(&[0, 0, 0, 0]);
    let dilations = ints(node, "dilations").unwrap_or(&[1, 1]);
    if x[1] != w[1] * group {
        bail!("input has {} channels, weight expects {} x group {group}", x[1], w[1]);
    }
    let mut out = vec![x[0], w[0]];
    for axis in 0..2 {
        let padded = x[2 + axis] as i64 + pads[axis] + pads[axis + 2];
        let span = dilations[axis] * (w[2 + axis] as i64 - 1) + 1;
        out.push(((padded - span) / strides[axis] + 1) as usize);
    }
    let macs = out.iter().product::<usize>() * w[1] * w[2] * w[3];
    Ok((out, macs as u64))
}

fn matmul(inputs: &[Vec<usize>]) -> Result<(Vec<usize>, u64)> {
    let (a, b) = match inputs {
        [a, b] if a.len() >= 2 && b.len() >= 2 => (a, b),
        _ => bail!("expected two inputs of rank 2 or more, got {inputs:?}"),
    };
    let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
    let (k2, n) = (b[b.len() - 2], b[b.len() - 1]);
    if k != k2 {
        bail!("inner dimensions differ: {a:?} x {b:?}");
    }
    let mut out = broadcast(&a[..a.len() - 2], &b[..b.len() - 2])?;
    out.extend([m, n]);
    let macs = out.iter().product::<usize>() * k;
    Ok((out, macs as u64))
}

fn gemm(node: &pb::NodeProto, inputs: &[Vec<usize>]) -> Result<(Vec<usize>, u64)> {
    let (a, b) = match inputs {
        [a, b, ..] if a.len() == 2 && b.len() == 2 => (a, b),
        _ => bail!("expected 2-d inputs, got {inputs:?}"),
    };
    let (m, k) = if int(node, "transA", 0) != 0 { (a[1], a[0]) } else { (a[0], a[1]) };
    let (k2, n) = if int(node, "transB", 0) != 0 { (b[1], b[0]) } else { (b[0], b[1]) };
    if k != k2 {
        bail!("inner dimensions differ: {a:?} x {b:?}");
    }
    Ok((vec![m, n], (m * n * k) as u64))
}

/// Numpy-style broadcast of two shapes.
fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| if i + s.len() >= rank { s[i + s.len() - rank] } else { 1 };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            (x, y) => bail!("shapes {a:?} and {b:?} do not broadcast ({x} vs {y})"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_follows_numpy() {
        assert_eq!(broadcast(&[1, 56, 56, 96], &[96]).unwrap(), vec![1, 56, 56, 96]);
        assert_eq!(broadcast(&[], &[3, 1]).unwrap(), vec![3, 1]);
        assert!(broadcast(&[2, 3], &[4]).is_err());
    }

    #[test]
    fn conv_shape_and_cost() {
        let node = pb::NodeProto {
            op_type: "Conv".into(),
            attribute: vec![
                pb::AttributeProto {
                    name: "strides".into(),
                    ints: vec![4, 4],
                    ..Default::default()
                },
                pb::AttributeProto { name: "group".into(), i: 1, ..Default::default() },
            ],
            ..Default::default()
        };
        let (shape, macs) = conv(&node, &[vec![1, 3, 224, 224], vec![96, 3, 4, 4]]).unwrap();
        assert_eq!(shape, vec![1, 96, 56, 56]);
        assert_eq!(macs, 96 * 56 * 56 * 3 * 16);
    }

    #[test]
    fn matmul_on_channels_last_activations() {
        let (shape, macs) = matmul(&[vec![1, 56, 56, 96], vec![96, 384]]).unwrap();
        assert_eq!(shape, vec![1, 56, 56, 384]);
        assert_eq!(macs, 56 * 56 * 96 * 384);
    }
}
