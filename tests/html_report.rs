//! The HTML views as a person sees them: `report.html` of a real run, a report whose accuracy
//! is not measurable, and a comparison page, each rendered by headless Chromium to a PNG that
//! is checked for the charts (and kept under the test target folder to look at).

mod common;

use std::path::{Path, PathBuf};

use common::html::{
    assert_self_contained, chart_size, chromium, count_near, dump_dom, real_report, screenshot,
    variant, write_report,
};
use edgeverify::charts::CHART_WIDTH;
use edgeverify::report::Report;

const F32_BLUE: [u8; 3] = [31, 119, 180];
const INT8_ORANGE: [u8; 3] = [255, 127, 14];
const CLAIM_RED: [u8; 3] = [214, 39, 40];
const NOTE_BROWN: [u8; 3] = [120, 60, 0];
/// Screenshot sizes: a report page, a comparison page.
const REPORT_WINDOW: (u32, u32) = (1000, 2400);
const COMPARE_WINDOW: (u32, u32) = (1000, 1000);

const REPORT_CHARTS: [&str; 3] = ["chart-claim", "chart-latency", "chart-tradeoff"];

/// Where the screenshots are kept for a person to look at.
fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("edgeverify-html");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every chart of the page is there, drawn at the chart width and a real height.
fn assert_charts_sized(html: &str, ids: &[&str]) {
    for id in ids {
        let (w, h) = chart_size(html, id);
        assert_eq!(w, CHART_WIDTH, "{id} width");
        assert!(h >= 150, "{id} is only {h} px high");
    }
}

/// Chromium built the page with its charts as SVG elements, and the screenshot is the window's
/// size and shows the colours the charts are drawn in.
fn assert_renders(
    page: &Path,
    window: (u32, u32),
    ids: &[&str],
    png_name: &str,
    colours: &[(&str, [u8; 3], usize)],
) {
    let Some(chromium) = chromium() else { return };
    let dom = dump_dom(&chromium, page);
    assert_eq!(dom.matches("<svg").count(), ids.len(), "SVG elements in Chromium's DOM");
    for id in ids {
        assert!(dom.contains(&format!("id=\"{id}\"")), "Chromium's DOM lacks {id}");
    }
    let png = screenshot_dir().join(png_name);
    let img = screenshot(&chromium, page, &png, window);
    assert_eq!(img.dimensions(), window, "{}", png.display());
    let drawn = img.pixels().filter(|p| p.0.iter().any(|&c| c < 200)).count();
    assert!(
        drawn * 100 > img.pixels().len(),
        "{} is nearly blank ({drawn} dark pixels)",
        png.display()
    );
    for (what, colour, at_least) in colours {
        let n = count_near(&img, *colour);
        assert!(
            n >= *at_least,
            "{}: {n} pixels of {what} {colour:?}, expected {at_least}+",
            png.display()
        );
    }
}

#[test]
fn report_html_of_a_real_run_shows_its_charts() {
    let Some(shared) = common::shared_dir() else { return };
    let out = tempfile::tempdir().unwrap();
    common::edgeverify()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["verify", "--model", "models/efficientnet-lite0.toml", "--slice"])
        .arg(shared.join("data/imagenet-val-900"))
        .arg("--out")
        .arg(out.path())
        .args(["--threads", "1", "--limit", "30", "--runs", "10", "--warmup", "1", "--quiet"])
        .assert()
        .success();
    let page = out.path().join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    let report: Report =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();

    assert_charts_sized(&html, &REPORT_CHARTS);
    assert_self_contained(&html);
    let f = &report.forms[0];
    let top1 = f.top1.unwrap();
    let shown = format!(
        "{:.2}% ({:.2}–{:.2}), {}/{}",
        top1.percent, top1.ci95[0], top1.ci95[1], top1.correct, top1.evaluated
    );
    assert!(html.contains(&shown), "the claim panel lacks the measured top-1 {shown}");
    let p50 = format!("p50 {:.2} ms", f.latency_ms.as_ref().unwrap().p50);
    assert!(html.contains(&p50), "the latency chart lacks {p50}");
    let dots =
        html.split("id=\"chart-latency\"").nth(1).unwrap().split("</figure>").next().unwrap();
    assert_eq!(dots.matches("<circle").count(), 10, "one dot per timed run");

    let colours = [("f32 points", F32_BLUE, 400), ("the claim line", CLAIM_RED, 100)];
    assert_renders(&page, REPORT_WINDOW, &REPORT_CHARTS, "report-real-run.png", &colours);
}

#[test]
fn unmeasurable_accuracy_shows_not_measurable() {
    let mut json = real_report();
    let note = "synthetic weights: accuracy is not measurable";
    for key in ["top1", "top5", "top1_failures_as_wrong", "top5_failures_as_wrong", "verdict"] {
        json["forms"][0][key] = serde_json::Value::Null;
    }
    json["forms"][0]["accuracy_note"] = serde_json::json!(note);
    let report: Report = serde_json::from_value(json).unwrap();
    let out = tempfile::tempdir().unwrap();
    report.write(out.path()).unwrap();
    let page = out.path().join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();

    assert_charts_sized(&html, &REPORT_CHARTS);
    assert!(html.contains(&format!("f32: not measurable ({note})")), "claim panel");
    assert!(html.contains(&format!("not measurable: {note}")), "accuracy table");
    assert!(html.contains("f32 · 1 thr: top-1 not measurable"), "trade-off chart");
    assert!(html.contains("no run has both a measurable top-1 and a latency"));

    let colours = [("the not-measurable notes", NOTE_BROWN, 30), ("latency dots", F32_BLUE, 100)];
    assert_renders(&page, REPORT_WINDOW, &REPORT_CHARTS, "report-not-measurable.png", &colours);
}

#[test]
fn comparison_page_shows_the_tradeoff_chart() {
    let dir = tempfile::tempdir().unwrap();
    let runs = [
        write_report(dir.path(), "f32-1t", &variant("f32", 1, vec![41.0, 40.0, 42.5, 40.5], 17)),
        write_report(dir.path(), "f32-2t", &variant("f32", 2, vec![24.0, 25.5, 25.0, 26.0], 17)),
        write_report(dir.path(), "int8-1t", &variant("int8", 1, vec![12.0, 12.5, 13.0, 11.5], 15)),
        write_report(dir.path(), "int8-2t", &variant("int8", 2, vec![10.0, 9.5, 10.5, 11.0], 16)),
    ];
    let out = dir.path().join("cmp");
    common::edgeverify().arg("compare").args(&runs).arg("--out").arg(&out).assert().success();
    let page = out.join("compare.html");
    let html = std::fs::read_to_string(&page).unwrap();

    assert_charts_sized(&html, &["chart-tradeoff"]);
    assert_self_contained(&html);
    for label in ["#1 int8 · 2 thr", "#2 int8 · 1 thr", "#3 f32 · 2 thr", "#4 f32 · 1 thr"] {
        assert!(html.contains(label), "the chart lacks point {label}");
    }
    let colours = [("f32 points", F32_BLUE, 300), ("int8 points", INT8_ORANGE, 300)];
    assert_renders(&page, COMPARE_WINDOW, &["chart-tradeoff"], "compare.png", &colours);
}
