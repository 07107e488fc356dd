//! Bad input: each case gives a clear error naming the file and the fix, or, for a bad image,
//! a listed and counted failure.

mod common;

use std::path::{Path, PathBuf};

use prost::Message;
use serde_json::Value;
use tract_onnx::pb;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs verify and returns (exit code, stderr).
fn run(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = common::edgeverify()
        .args(["verify", "--quiet", "--runs", "2", "--warmup", "0"])
        .args(args)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn os<S: AsRef<std::ffi::OsStr> + ?Sized>(s: &S) -> &std::ffi::OsStr {
    s.as_ref()
}

/// A folder with the first `n` shared val images and a val.txt for them.
fn small_slice(shared: &Path, dir: &Path, n: usize) -> Vec<(String, usize)> {
    let val = shared.join("data/imagenet-val-900");
    let lines = std::fs::read_to_string(val.join("val.txt")).unwrap();
    let mut entries = vec![];
    for line in lines.lines().take(n) {
        let (file, label) = line.split_once(' ').unwrap();
        std::fs::copy(val.join(file), dir.join(file)).unwrap();
        entries.push((file.to_string(), label.parse().unwrap()));
    }
    entries
}

fn write_val_txt(dir: &Path, entries: &[(String, usize)]) {
    let text: String = entries.iter().map(|(f, l)| format!("{f} {l}\n")).collect();
    std::fs::write(dir.join("val.txt"), text).unwrap();
}

#[test]
fn missing_model_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let (code, err) =
        run(&[os("--model"), missing.as_os_str(), os("--slice"), dir.path().as_os_str()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nope.toml") && err.contains("no such file"), "{err}");
}

#[test]
fn a_file_that_is_not_onnx_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake.onnx");
    std::fs::write(&fake, b"this is not a protobuf at all, just text").unwrap();
    let (code, err) =
        run(&[os("--model"), fake.as_os_str(), os("--slice"), dir.path().as_os_str()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("fake.onnx") && err.contains("not a readable ONNX model"), "{err}");
}

#[test]
fn an_empty_onnx_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    let (code, err) =
        run(&[os("--model"), empty.as_os_str(), os("--slice"), dir.path().as_os_str()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("empty.onnx") && err.contains("has no graph"), "{err}");
}

#[test]
fn bad_images_are_listed_counted_and_excluded_visibly() {
    let Some(shared) = common::shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut entries = small_slice(&shared, dir.path(), 3);
    let good = std::fs::read(dir.path().join(&entries[0].0)).unwrap();
    std::fs::write(dir.path().join("truncated.JPEG"), &good[..good.len() / 3]).unwrap();
    std::fs::write(dir.path().join("garbage.JPEG"), b"definitely not an image").unwrap();
    let mut corrupt = good.clone();
    for b in corrupt[600..900].iter_mut() {
        *b = 0xFF;
    }
    std::fs::write(dir.path().join("corrupt.JPEG"), &corrupt).unwrap();
    for f in ["truncated.JPEG", "garbage.JPEG", "corrupt.JPEG", "absent.JPEG"] {
        entries.push((f.into(), 1));
    }
    write_val_txt(dir.path(), &entries);
    let out = dir.path().join("out");
    let (code, err) = run(&[
        os("--model"),
        repo("models/efficientnet-lite0.toml").as_os_str(),
        os("--slice"),
        dir.path().as_os_str(),
        os("--out"),
        out.as_os_str(),
    ]);
    assert_eq!(code, 0, "{err}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let failures: Vec<(String, String)> = report["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["file"].as_str().unwrap().into(), f["reason"].as_str().unwrap().into()))
        .collect();
    let failed: Vec<&str> = failures.iter().map(|(f, _)| f.as_str()).collect();
    for f in ["truncated.JPEG", "garbage.JPEG", "absent.JPEG"] {
        assert!(failed.contains(&f), "{f} not in failures {failures:?}");
    }
    let reason =
        |name: &str| failures.iter().find(|(f, _)| f == name).map(|(_, r)| r.clone()).unwrap();
    assert!(reason("truncated.JPEG").contains("truncated"), "{failures:?}");
    assert!(reason("garbage.JPEG").contains("not a JPEG or PNG"), "{failures:?}");
    assert!(err.contains("truncated.JPEG"), "a bad image is named on stderr: {err}");
    // Excluded from the denominator, and counted as wrong in the second figure.
    let form = &report["forms"][0];
    let evaluated = form["top1"]["evaluated"].as_u64().unwrap() as usize;
    assert_eq!(evaluated + failures.len(), entries.len());
    assert_eq!(
        form["top1_failures_as_wrong"]["evaluated"].as_u64().unwrap() as usize,
        entries.len()
    );
}

#[test]
fn label_out_of_range_is_an_error() {
    let Some(shared) = common::shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut entries = small_slice(&shared, dir.path(), 2);
    entries[1].1 = 1000;
    write_val_txt(dir.path(), &entries);
    let (code, err) = run(&[
        os("--model"),
        repo("models/efficientnet-lite0.toml").as_os_str(),
        os("--slice"),
        dir.path().as_os_str(),
        os("--out"),
        dir.path().join("out").as_os_str(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("label 1000") && err.contains(&entries[1].0), "{err}");
}

#[test]
fn label_file_that_does_not_match_the_folder_is_an_error() {
    let Some(shared) = common::shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let entries = small_slice(&shared, dir.path(), 3);
    let labels = dir.path().join("other-labels.txt");
    std::fs::write(&labels, format!("{} {}\n", entries[0].0, entries[0].1)).unwrap();
    let (code, err) = run(&[
        os("--model"),
        repo("models/efficientnet-lite0.toml").as_os_str(),
        os("--slice"),
        dir.path().as_os_str(),
        os("--labels"),
        labels.as_os_str(),
        os("--out"),
        dir.path().join("out").as_os_str(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("does not match") && err.contains("other-labels.txt"), "{err}");
}

#[test]
fn empty_slice_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("val.txt"), "").unwrap();
    let Some(_) = common::shared_dir() else { return };
    let (code, err) = run(&[
        os("--model"),
        repo("models/efficientnet-lite0.toml").as_os_str(),
        os("--slice"),
        dir.path().as_os_str(),
        os("--out"),
        dir.path().join("out").as_os_str(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn unwritable_output_folder_fails_before_the_run() {
    let Some(shared) = common::shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let out = blocker.join("out");
    let (code, err) = run(&[
        os("--model"),
        repo("models/efficientnet-lite0.toml").as_os_str(),
        os("--slice"),
        shared.join("data/imagenet-val-900").as_os_str(),
        os("--out"),
        out.as_os_str(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("output folder") && err.contains("--out"), "{err}");
}

#[test]
fn crop_size_that_does_not_fit_the_model_names_the_fix() {
    let Some(shared) = common::shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let desc = std::fs::read_to_string(repo("models/efficientnet-lite0.toml"))
        .unwrap()
        .replace(
            "../../shared/models/efficientnet-lite0.onnx",
            shared.join("models/efficientnet-lite0.onnx").to_str().unwrap(),
        )
        .replace("crop_size = 224", "crop_size = 200");
    let model = dir.path().join("wrong-crop.toml");
    std::fs::write(&model, desc).unwrap();
    let (code, err) = run(&[
        os("--model"),
        model.as_os_str(),
        os("--slice"),
        shared.join("data/imagenet-val-900").as_os_str(),
        os("--out"),
        dir.path().join("out").as_os_str(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("crop_size") && err.contains("efficientnet-lite0.onnx"), "{err}");
}

/// A one-node ONNX model (`Identity`) with the given input shape.
fn identity_model(path: &Path, dims: &[i64]) {
    use pb::tensor_shape_proto::{dimension::Value as Dim, Dimension};
    use pb::type_proto::{Tensor, Value as TypeValue};
    let value_info = |name: &str| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(TypeValue::TensorType(Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension { value: Some(Dim::DimValue(d)), ..Default::default() })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
        graph: Some(pb::GraphProto {
            name: "identity".into(),
            node: vec![pb::NodeProto {
                op_type: "Identity".into(),
                input: vec!["x".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            input: vec![value_info("x")],
            output: vec![value_info("y")],
            ..Default::default()
        }),
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

#[test]
fn an_output_that_is_not_logits_is_refused() {
    let Some(shared) = common::shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("identity.onnx");
    identity_model(&model, &[1, 3, 224, 224]);
    let (code, err) = run(&[
        os("--model"),
        model.as_os_str(),
        os("--slice"),
        shared.join("data/imagenet-val-900").as_os_str(),
        os("--out"),
        dir.path().join("out").as_os_str(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("identity.onnx") && err.contains("expected [1, N]"), "{err}");
}

#[test]
fn a_model_wanting_another_channel_count_is_refused() {
    let Some(shared) = common::shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("gray.onnx");
    identity_model(&model, &[1, 1, 224, 224]);
    let (code, err) = run(&[
        os("--model"),
        model.as_os_str(),
        os("--slice"),
        shared.join("data/imagenet-val-900").as_os_str(),
        os("--out"),
        dir.path().join("out").as_os_str(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("gray.onnx") && err.contains("1 channels"), "{err}");
}

#[test]
fn a_run_where_no_image_could_be_evaluated_fails_after_writing_the_report() {
    let Some(_) = common::shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.JPEG"), b"not an image").unwrap();
    write_val_txt(dir.path(), &[("broken.JPEG".into(), 3), ("gone.JPEG".into(), 4)]);
    let out = dir.path().join("out");
    let (code, err) = run(&[
        os("--model"),
        repo("models/efficientnet-lite0.toml").as_os_str(),
        os("--slice"),
        dir.path().as_os_str(),
        os("--out"),
        out.as_os_str(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no image could be evaluated"), "{err}");
    assert!(err.contains("gone.JPEG"), "a missing image is named on stderr: {err}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["failures"].as_array().unwrap().len(), 2);
}

#[test]
fn require_claim_refuses_a_model_without_a_claim() {
    let Some(shared) = common::shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(&[
        os("--model"),
        shared.join("models/efficientnet-lite0.onnx").as_os_str(),
        os("--slice"),
        shared.join("data/imagenet-val-900").as_os_str(),
        os("--require-claim"),
        os("--out"),
        dir.path().as_os_str(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--require-claim") && err.contains("no accuracy claim"), "{err}");
}

#[test]
fn bad_flag_values_are_usage_errors() {
    for args in [
        vec!["verify", "--threads", "0"],
        vec!["verify", "--runs", "0"],
        vec!["verify", "--smooth", "2"],
        vec!["verify", "--cpu-isa=-avx9000"],
        vec!["verify", "--max-drop", "1"],
        vec!["verify", "--max-seconds=-1"],
        vec!["verify", "--forms", "f32", "--calib", "calib"],
        vec!["verify", "--max-seconds", "nan"],
        vec!["verify", "--max-seconds", "1e30"],
        vec!["quantize", "--model", "x.toml"],
        vec!["slice", "--from", ".", "--out", "m.json", "--count", "0"],
    ] {
        let out = common::edgeverify().args(&args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
