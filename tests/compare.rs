//! `edgeverify compare` through the real binary: the Pareto marking over two forms and two
//! thread counts, the refusals (different slices, different or unidentified models) and what
//! it says about input that is not a report.

mod common;

use std::path::{Path, PathBuf};

use common::html::{real_report, variant, write_report};
use predicates::str::contains;
use serde_json::json;

/// Four runs derived from a real report: f32 and int8, one and two threads. Two threads are
/// faster for both forms at equal accuracy, so the one-thread runs are dominated; int8 on two
/// threads is the fastest, f32 on two threads the most accurate of the rest.
fn four_runs(dir: &Path) -> Vec<PathBuf> {
    vec![
        write_report(dir, "f32-1t", &variant("f32", 1, vec![41.0, 40.0, 42.5, 40.5], 17)),
        write_report(dir, "f32-2t", &variant("f32", 2, vec![24.0, 25.5, 25.0, 26.0], 17)),
        write_report(dir, "int8-1t", &variant("int8", 1, vec![12.0, 12.5, 13.0, 11.5], 15)),
        write_report(dir, "int8-2t", &variant("int8", 2, vec![10.0, 9.5, 10.5, 11.0], 16)),
    ]
}

/// The table's rows as (form, threads, p50, Pareto) from compare.md.
fn table_rows(markdown: &str) -> Vec<(String, String, String, String)> {
    markdown
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| #"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            let cell = |i: usize| cells[i].to_string();
            (cell(2), cell(3), cell(5), cell(8))
        })
        .collect()
}

fn compare(args: &[PathBuf], out: &Path) -> assert_cmd::assert::Assert {
    common::edgeverify().arg("compare").args(args).arg("--out").arg(out).assert()
}

#[test]
fn pareto_marks_over_two_forms_and_two_thread_counts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    compare(&four_runs(dir.path()), &out).success().stdout(contains("| Pareto |"));

    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    let rows = table_rows(&md);
    let s = |v: &str| v.to_string();
    assert_eq!(
        rows,
        vec![
            (s("int8"), s("2"), s("10.25"), s("yes")),
            (s("int8"), s("1"), s("12.25"), s("")),
            (s("f32"), s("2"), s("25.25"), s("yes")),
            (s("f32"), s("1"), s("40.75"), s("")),
        ],
        "{md}"
    );
    assert!(md.contains("![latency vs top-1](compare.svg)"), "{md}");
    let svg = std::fs::read_to_string(out.join("compare.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("#3 f32 · 2 thr"), "{svg}");
    let html = std::fs::read_to_string(out.join("compare.html")).unwrap();
    assert_eq!(html.matches("<tr class=\"pareto\">").count(), 2, "{html}");
}

#[test]
fn different_slices_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let mut runs = four_runs(dir.path());
    let mut other = variant("f32", 2, vec![30.0, 31.0, 29.0], 18);
    other["slice"]["sha256"] = json!("0123456789abcdef".repeat(4));
    runs[1] = write_report(dir.path(), "other-slice", &other);
    let out = dir.path().join("cmp");

    compare(&runs, &out)
        .code(1)
        .stderr(contains("different slices"))
        .stderr(contains("other-slice/report.json: slice 0123456789ab"))
        .stderr(contains("f32-1t/report.json"))
        .stderr(contains("--allow-different-slices"));
    assert!(!out.join("compare.md").exists(), "nothing is written on refusal");

    common::edgeverify()
        .arg("compare")
        .args(&runs)
        .arg("--out")
        .arg(&out)
        .arg("--allow-different-slices")
        .assert()
        .success();
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("runs over different slices, compared as asked"), "{md}");
}

#[test]
fn different_or_unidentified_models_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_report(dir.path(), "a", &real_report());
    let mut other = real_report();
    other["model"]["sha256"] = json!("f".repeat(64));
    let other = write_report(dir.path(), "b", &other);
    let out = dir.path().join("cmp");
    compare(&[base.clone(), other.clone()], &out)
        .code(1)
        .stderr(contains("different models"))
        .stderr(contains("--allow-different-models"));

    let mut unidentified = real_report();
    unidentified["model"]["sha256"] = json!("");
    let unidentified = write_report(dir.path(), "c", &unidentified);
    compare(&[base.clone(), unidentified.clone()], &out)
        .code(1)
        .stderr(contains("record no model identity"))
        .stderr(contains("c/report.json: model EfficientNet-Lite0 (sha256 none recorded)"));

    common::edgeverify()
        .arg("compare")
        .args([&base, &other, &unidentified])
        .arg("--out")
        .arg(&out)
        .arg("--allow-different-models")
        .assert()
        .success();
}

#[test]
fn unmeasurable_accuracy_is_listed_not_ranked() {
    let dir = tempfile::tempdir().unwrap();
    let mut synthetic = variant("f32", 2, vec![20.0, 21.0, 22.0], 10);
    synthetic["forms"][0]["top1"] = json!(null);
    synthetic["forms"][0]["accuracy_note"] = json!("synthetic weights");
    let runs = vec![
        write_report(dir.path(), "measured", &variant("f32", 1, vec![40.0, 41.0], 17)),
        write_report(dir.path(), "synthetic", &synthetic),
    ];
    let out = dir.path().join("cmp");
    compare(&runs, &out).success();
    let rows = table_rows(&std::fs::read_to_string(out.join("compare.md")).unwrap());
    assert_eq!(rows[0].3, "n/a", "the faster run has no top-1, so no Pareto standing");
    assert_eq!(rows[1].3, "yes", "with it out of the ranking, the measured run is optimal");
    let svg = std::fs::read_to_string(out.join("compare.svg")).unwrap();
    assert!(svg.contains("#1 f32 · 2 thr: top-1 not measurable"), "{svg}");
}

#[test]
fn input_that_is_not_a_report_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_report(dir.path(), "good", &real_report());
    let out = dir.path().join("cmp");

    let missing = dir.path().join("nowhere/report.json");
    compare(&[good.clone(), missing], &out)
        .code(1)
        .stderr(contains("cannot read report"))
        .stderr(contains("nowhere/report.json"));

    let not_json = dir.path().join("notes.txt");
    std::fs::write(&not_json, "measured by hand: 81%").unwrap();
    compare(&[good.clone(), not_json], &out).code(1).stderr(contains("notes.txt is not JSON"));

    let other_json = write_report(dir.path(), "other", &json!({"accuracy": 81.0}));
    compare(&[good.clone(), other_json], &out)
        .code(1)
        .stderr(contains("other/report.json is not an edgeverify report"));

    let mut future = real_report();
    future["format"] = json!("edgeverify-report/9");
    let future = write_report(dir.path(), "future", &future);
    compare(&[good, future], &out)
        .code(1)
        .stderr(contains("future/report.json: format is \"edgeverify-report/9\""));
}

#[test]
fn a_folder_stands_for_its_report() {
    let dir = tempfile::tempdir().unwrap();
    write_report(dir.path(), "run", &real_report());
    let out = dir.path().join("cmp");
    compare(&[dir.path().join("run")], &out).success().stdout(contains("| f32 | 1 |"));
}

#[test]
fn the_same_report_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_report(dir.path(), "run", &real_report());
    let out = dir.path().join("cmp");
    compare(&[path, dir.path().join("run")], &out)
        .code(1)
        .stderr(contains("are the same report (identical content): give each run once"));
    assert!(!out.join("compare.md").exists());
}
