//! Helpers for the tests of the HTML views and `compare`: report fixtures derived from a real
//! run, headless Chromium, and reading the charts out of a page.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use edgeverify::latency::LatencyStats;
use edgeverify::metrics::Accuracy;

/// A real report (EfficientNet-Lite0, f32, the first 20 images of imagenet-val-900, 1 thread),
/// as JSON, for tests to derive variants from.
pub fn real_report() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lite0-f32-limit20.report.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The real report turned into a run of `form` on `threads` threads, with the given timed
/// runs and top-1 count out of the report's evaluated images.
pub fn variant(form: &str, threads: usize, samples_ms: Vec<f64>, top1_correct: usize) -> Value {
    let mut r = real_report();
    let evaluated = r["forms"][0]["top1"]["evaluated"].as_u64().unwrap() as usize;
    let f = &mut r["forms"][0];
    f["form"] = json!(form);
    f["top1"] = json!(Accuracy::new(top1_correct, evaluated).unwrap());
    f["latency_ms"] = json!(LatencyStats::from_samples(samples_ms, 2));
    r["latency_method"]["threads"] = json!(threads);
    r["environment"]["threads"] = json!(threads);
    r
}

/// Writes `report` as `<dir>/<name>/report.json` and returns that path.
pub fn write_report(dir: &Path, name: &str, report: &Value) -> PathBuf {
    let path = dir.join(name).join("report.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(report).unwrap()).unwrap();
    path
}

/// The Chromium binary, or `None` (with a message) where it is absent. Under CI (`CI=true`)
/// its absence is an error: `.ci/run` installs it.
pub fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        let out = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().ok()?;
        let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
    });
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but chromium is not installed: .ci/run must apt-get install it");
        }
        eprintln!(
            "SKIPPED: chromium is absent (apt-get install -y chromium), so the page is not \
             rendered in a browser"
        );
    }
    found
}

/// Runs headless Chromium on `page` with a fresh profile, no network use of its own, and
/// `args`; returns stdout. Panics with Chromium's stderr when it fails.
fn run_chromium(chromium: &Path, page: &Path, args: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.canonicalize().unwrap().display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed on {}: {}",
        page.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The DOM Chromium built from `page`, serialized.
pub fn dump_dom(chromium: &Path, page: &Path) -> String {
    run_chromium(chromium, page, &["--dump-dom".to_string()])
}

/// Screenshots `page` at `size` (width, height) into `png` and decodes it as RGB.
pub fn screenshot(chromium: &Path, page: &Path, png: &Path, size: (u32, u32)) -> image::RgbImage {
    run_chromium(
        chromium,
        page,
        &[
            format!("--screenshot={}", png.display()),
            format!("--window-size={},{}", size.0, size.1),
        ],
    );
    eprintln!("screenshot of {}: {}", page.display(), png.display());
    image::open(png).unwrap_or_else(|e| panic!("{}: {e}", png.display())).to_rgb8()
}

/// Pixels within a small distance of `colour`.
pub fn count_near(img: &image::RgbImage, colour: [u8; 3]) -> usize {
    img.pixels()
        .filter(|p| p.0.iter().zip(colour).all(|(&a, b)| (i32::from(a) - i32::from(b)).abs() <= 12))
        .count()
}

/// The `(width, height)` of the `<svg>` inside `<figure ... id="{id}">`, panicking with the
/// page's start when the figure or its size is missing.
pub fn chart_size(html: &str, id: &str) -> (u32, u32) {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no figure {id} in the page: {}", &html[..html.len().min(2000)]));
    let svg_at = at + html[at..].find("<svg").unwrap_or_else(|| panic!("figure {id} has no <svg>"));
    let tag = &html[svg_at..svg_at + html[svg_at..].find('>').unwrap()];
    let attr = |name: &str| -> u32 {
        let start = tag.find(&format!(" {name}=\"")).unwrap_or_else(|| panic!("{tag}: no {name}"));
        let rest = &tag[start + name.len() + 3..];
        rest[..rest.find('"').unwrap()].parse().unwrap()
    };
    (attr("width"), attr("height"))
}

/// Asserts the page loads nothing from anywhere: no script, no external reference.
pub fn assert_self_contained(html: &str) {
    let lower = html.to_lowercase();
    for needle in ["<script", " src=", " href=", "url(", "@import", "<link", "<iframe"] {
        assert!(!lower.contains(needle), "the page contains {needle:?}; it must load nothing");
    }
}
