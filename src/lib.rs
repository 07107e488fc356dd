//! edgeverify: checks a published image-classifier accuracy claim on the CPU where the model
//! will run, with the tract inference engine.
//!
//! The pipeline, one module per stage: [`model`] (what to run) → [`dataset`] (which images) →
//! [`preprocess`] (Pillow-faithful tensors) → [`engine`] (tract forms) → [`metrics`] and
//! [`latency`] → [`report`]; [`verify`] wires them, [`cli`] parses the command line.
//! Without weights or images: [`convnext`] builds the ConvNeXt family's graphs with seeded
//! synthetic weights, [`synthetic_images`] draws seeded images, [`graph_stats`] reads a
//! graph's ops, shapes, parameters and cost.

//! [`board`] records clocks and temperatures around the latency runs.

pub mod board;
pub mod charts;
pub mod cli;
pub mod compare;
pub mod convnext;
pub mod dataset;
pub mod depthwise;
pub mod engine;
pub mod fastint8;
pub mod graph_stats;
pub mod html;
pub mod latency;
pub mod layernorm;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod profile;
pub mod quantize;
pub mod report;
pub mod synthetic_images;
pub mod verify;
