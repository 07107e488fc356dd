//! Helpers shared by the integration tests: where `../shared` is, the unpacked ConvNeXt
//! exports, and one tolerance helper for float comparisons.
#![allow(dead_code)]

pub mod html;

use std::path::{Path, PathBuf};

/// The project's `../shared` folder, or `None` (with a message) where it is absent. Under CI
/// (`CI=true`) a missing `../shared` is an error, not a skip.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if dir.join("data").is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but {} is missing: CI must provide ../shared", dir.display());
    }
    eprintln!("SKIPPED: {} is absent (tests on the shared real data need it)", dir.display());
    None
}

/// Gunzips `../shared/models/<name>.onnx.gz` once into the test cache and returns its path.
pub fn unpacked_model(shared: &Path, name: &str) -> PathBuf {
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("models");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join(format!("{name}.onnx"));
    if out.is_file() {
        return out;
    }
    let gz = shared.join("models").join(format!("{name}.onnx.gz"));
    let file = std::fs::File::open(&gz).unwrap_or_else(|e| panic!("{}: {e}", gz.display()));
    let mut decoder = flate2::read::GzDecoder::new(file);
    let mut tmp = tempfile::NamedTempFile::new_in(&out_dir).unwrap();
    std::io::copy(&mut decoder, &mut tmp).unwrap();
    tmp.persist(&out).unwrap();
    out
}

/// Reads a raw little-endian f32 file.
pub fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Largest absolute difference; panics with the position and both values above `tol`.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let (mut worst, mut at) = (0f32, 0);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        if d > worst || d.is_nan() {
            worst = d;
            at = i;
        }
    }
    assert!(
        worst <= tol,
        "{what}: max |diff| {worst} at {at} (got {}, want {}) exceeds {tol}",
        got[at],
        want[at]
    );
    worst
}

/// The `edgeverify` binary built for these tests.
pub fn edgeverify() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("edgeverify").unwrap()
}

/// Reference predictions: file → (label, top1, top5).
pub fn reference_tsv(path: &Path) -> std::collections::HashMap<String, (usize, usize, Vec<usize>)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let top5 = f[3].split(' ').map(|v| v.parse().unwrap()).collect();
            (f[0].to_string(), (f[1].parse().unwrap(), f[2].parse().unwrap(), top5))
        })
        .collect()
}
