//! edgeverify: checks a published image-classifier accuracy claim on the CPU where the model
//! will run, with the tract inference engine.
//!
//! The pipeline, one module per stage: [`model`] (what to run) → [`dataset`] (which images) →
//! [`preprocess`] (Pillow-faithful tensors) → [`engine`] (tract forms) → [`metrics`] and
//! [`latency`] (with [`board`]: clocks and temperatures) → [`report`]; [`verify`] wires them,
//! [`cli`] parses the command line.

pub mod board;
pub mod cli;
pub mod dataset;
pub mod engine;
pub mod latency;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod report;
pub mod verify;
