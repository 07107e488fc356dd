//! Per-layer sensitivity: what quantizing each layer alone costs on a few calibration images,
//! and the automatic search that keeps the costliest layers in float until a top-1 budget holds.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tract_onnx::pb;

use super::calibrate::{ActQuant, ActType};
use super::graph::{self, Target};
use crate::engine::{self, Engine, Form, GraphIo};
use crate::metrics::softmax_kl;

/// What quantizing one layer alone (every other layer in float) does to the output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerCost {
    pub name: String,
    /// Mean KL(softmax f32 ‖ softmax with this layer quantized), nats.
    pub softmax_kl_mean: f64,
    /// Share of images whose top-1 changes, percent.
    pub top1_changed_percent: f64,
}

/// The outcome of `--max-drop`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoKeep {
    pub budget_points: f64,
    /// The drop measured with the final choice, points.
    pub measured_drop_points: f64,
    /// How the drop was measured: against labels, or as top-1 disagreement with f32 (an upper
    /// bound on the accuracy drop) when the calibration images have no labels.
    pub measured_as: String,
    pub images: usize,
    pub kept_float: Vec<String>,
    pub budget_met: bool,
}

/// What a sensitivity measurement needs.
pub struct Context<'a> {
    pub source: &'a pb::ModelProto,
    pub io: &'a GraphIo,
    pub path: &'a Path,
    pub size: usize,
    pub targets: &'a [Target],
    pub activations: &'a BTreeMap<String, ActQuant>,
    pub act_type: ActType,
    pub images: &'a [Vec<f32>],
    pub labels: Option<&'a [usize]>,
}

impl Context<'_> {
    fn logits(&self, keep: &HashSet<String>) -> Result<Vec<Vec<f32>>> {
        let plan = graph::QdqPlan {
            targets: self.targets,
            activations: self.activations,
            act_type: self.act_type,
            keep_float: keep,
        };
        let proto = graph::write_qdq(self.source, &plan)?;
        let engine = Engine::from_proto(
            Form::Int8,
            &proto,
            self.io,
            self.path,
            1,
            self.size,
            Instant::now(),
        )?;
        self.images.iter().map(|i| engine.run(i)).collect()
    }

    fn f32_logits(&self) -> Result<Vec<Vec<f32>>> {
        let all: HashSet<String> = self.targets.iter().map(|t| t.name.clone()).collect();
        self.logits(&all)
    }
}

fn top1(l: &[f32]) -> usize {
    engine::top_k(l, 1)[0]
}

/// Ranks the layers not already kept in float by the KL their quantization alone causes.
pub fn rank(
    ctx: &Context,
    keep: &HashSet<String>,
    progress: &mut impl FnMut(&str),
) -> Result<Vec<LayerCost>> {
    let reference = ctx.f32_logits()?;
    let all: HashSet<String> = ctx.targets.iter().map(|t| t.name.clone()).collect();
    let mut costs = vec![];
    for t in ctx.targets.iter().filter(|t| !keep.contains(&t.name)) {
        let mut others = all.clone();
        others.remove(&t.name);
        let logits = ctx.logits(&others)?;
        let n = logits.len() as f64;
        let kl = reference.iter().zip(&logits).map(|(a, b)| softmax_kl(a, b)).sum::<f64>() / n;
        let changed = reference.iter().zip(&logits).filter(|(a, b)| top1(a) != top1(b)).count();
        costs.push(LayerCost {
            name: t.name.clone(),
            softmax_kl_mean: kl,
            top1_changed_percent: 100.0 * changed as f64 / n,
        });
        progress("sensitivity");
    }
    costs.sort_by(|a, b| b.softmax_kl_mean.total_cmp(&a.softmax_kl_mean));
    Ok(costs)
}

/// Adds the most sensitive layers to `keep`, one at a time, until the top-1 drop on the
/// sensitivity images is within `budget` points.
pub fn auto_keep(
    ctx: &Context,
    ranking: &[LayerCost],
    keep: &mut HashSet<String>,
    budget: f64,
    progress: &mut impl FnMut(&str),
) -> Result<AutoKeep> {
    let reference = ctx.f32_logits()?;
    let n = reference.len() as f64;
    let drop = |logits: &[Vec<f32>]| -> f64 {
        match ctx.labels {
            Some(labels) => {
                let right = |ls: &[Vec<f32>]| {
                    ls.iter().zip(labels).filter(|(l, y)| top1(l) == **y).count() as f64
                };
                100.0 * (right(&reference) - right(logits)) / n
            }
            None => {
                100.0
                    * reference.iter().zip(logits).filter(|(a, b)| top1(a) != top1(b)).count()
                        as f64
                    / n
            }
        }
    };
    let mut kept = vec![];
    let mut measured = drop(&ctx.logits(keep)?);
    for layer in ranking {
        if measured <= budget {
            break;
        }
        keep.insert(layer.name.clone());
        kept.push(layer.name.clone());
        measured = drop(&ctx.logits(keep)?);
        progress("auto keep-float");
    }
    Ok(AutoKeep {
        budget_points: budget,
        measured_drop_points: measured,
        measured_as: if ctx.labels.is_some() {
            "top-1 drop against the calibration images' labels".into()
        } else {
            "top-1 disagreement with f32 (no labels): an upper bound on the drop".into()
        },
        images: ctx.images.len(),
        kept_float: kept,
        budget_met: measured <= budget,
    })
}
