//! The report: one serde structure (data first), written atomically as `report.json`, and the
//! views rendered from it (`report.md`; `report.html` is rendered by [`crate::html`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::convnext::SyntheticIdentity;
use crate::latency::{Environment, LatencyPlan, LatencyStats};
use crate::metrics::{Accuracy, Verdict};
use crate::model::Claim;
use crate::preprocess::PreprocessSpec;

pub const REPORT_FORMAT: &str = "edgeverify-report/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub format: String,
    /// UTC, RFC 3339.
    pub created: String,
    /// The command line that produced the report.
    pub command: Vec<String>,
    pub model: ModelInfo,
    pub slice: SliceInfo,
    pub forms: Vec<FormReport>,
    pub latency_method: LatencyMethod,
    pub environment: Environment,
    pub predictions: Vec<Prediction>,
    pub failures: Vec<Failure>,
    /// Preprocessing throughput of this run.
    pub preprocessing: PreprocessingInfo,
    /// What a reader must know to read the figures right (assumptions, slice caveats).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub onnx_path: String,
    /// sha256 of the f32 source file: the model's identity.
    pub sha256: String,
    pub file_bytes: u64,
    pub described_by: String,
    pub input: String,
    pub output: String,
    pub num_classes: usize,
    pub preprocess: PreprocessSpec,
    pub claim: Option<Claim>,
    /// Set when the weights are synthetic (built by edgeverify): then this, not the sha256
    /// alone, is the model's identity, and no accuracy figure means anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<SyntheticIdentity>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SliceInfo {
    pub path: String,
    pub kind: String,
    pub labels_source: String,
    /// Images the slice lists, failures included.
    pub images: usize,
    /// sha256 over the ordered `(file, label, content sha256)` list: the slice's identity.
    pub sha256: String,
    /// Whether every image's content hash was checked against a manifest.
    pub hashes_checked: bool,
}

/// `"name ×count, ..."`: kernels or ops with how many nodes use each.
fn counts_text(counts: &BTreeMap<String, usize>) -> String {
    counts.iter().map(|(k, n)| format!("{k} ×{n}")).collect::<Vec<_>>().join(", ")
}

/// Ops listed per form in report.md's profile tables (report.json has them all).
const PROFILE_ROWS: usize = 12;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FormReport {
    pub form: String,
    /// `null` when not measurable (`accuracy_note` says why).
    pub top1: Option<Accuracy>,
    pub top5: Option<Accuracy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy_note: Option<String>,
    /// The same counts with every failed image counted as wrong.
    pub top1_failures_as_wrong: Option<Accuracy>,
    pub top5_failures_as_wrong: Option<Accuracy>,
    pub verdict: Option<Verdict>,
    pub latency_ms: Option<LatencyStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_note: Option<String>,
    pub throughput: Option<Throughput>,
    pub load_ms: f64,
    /// Matrix-multiplication kernels tract chose for this form, with use counts.
    pub kernels: BTreeMap<String, usize>,
    /// How the form was quantized (int8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipe: Option<crate::quantize::Recipe>,
    /// This form against f32 on the same images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_f32: Option<crate::metrics::PairedComparison>,
    /// Their families (`arm64simd`, `arm64fp16`, `armv7neon`, `fma`, ...): which instruction
    /// set did the arithmetic.
    #[serde(default)]
    pub kernel_families: Vec<String>,
    /// Where the time goes per op (`--profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::profile::Profile>,
    /// edgeverify's own ops in this form's plan, with node counts (empty: stock tract's plan).
    #[serde(default)]
    pub own_ops: BTreeMap<String, usize>,
    /// The same file as stock tract runs it, timed in the same rounds as this form (f32, when
    /// the form has own ops): the baseline the own ops are measured against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stock_tract: Option<StockBaseline>,
}

/// Stock tract's plan of the same file, timed interleaved with the form it is a baseline for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StockBaseline {
    pub latency_ms: LatencyStats,
    pub load_ms: f64,
    pub kernels: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    pub batch: usize,
    pub images_per_second: f64,
    /// Median wall time of one batch, milliseconds.
    pub batch_p50_ms: f64,
    pub runs: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyMethod {
    #[serde(flatten)]
    pub plan: LatencyPlan,
    pub batch: usize,
    pub threads: usize,
    pub input: String,
    pub peak_rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreprocessingInfo {
    pub images: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    pub threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prediction {
    pub file: String,
    /// Ground truth; `null` for unlabelled (synthetic) images.
    pub label: Option<usize>,
    pub form: String,
    pub top5: Vec<usize>,
    /// The top-5 logits, same order.
    pub top5_logits: Vec<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    pub file: String,
    pub reason: String,
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader never sees a half-written file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| {
        format!("cannot write in {} (check it exists and is writable)", dir.display())
    })?;
    std::io::Write::write_all(&mut tmp, bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // The temporary file is created private (0600); a report is for others to read too.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot set the permissions of {}", path.display()))?;
    }
    tmp.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Checks early that `dir` can hold the report (creating it), so a long run does not fail at
/// its end.
pub fn prepare_output_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!("cannot create output folder {} (choose another with --out)", dir.display())
    })?;
    tempfile::NamedTempFile::new_in(dir).with_context(|| {
        format!("output folder {} is not writable (choose another with --out)", dir.display())
    })?;
    Ok(())
}

impl Report {
    /// Writes `report.md`, `report.html` and `report.json` into `dir`; each file appears whole
    /// or not at all, and the JSON (the data) is written last so its presence means the run
    /// completed.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_atomically(&dir.join("report.md"), self.to_markdown().as_bytes())?;
        write_atomically(&dir.join("report.html"), crate::html::render_report(self)?.as_bytes())?;
        let json = serde_json::to_string_pretty(self)?;
        write_atomically(&dir.join("report.json"), json.as_bytes())?;
        Ok(())
    }

    /// The summary table printed on stdout.
    pub fn summary_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<5} {:>8} {:>17} {:>8} {:>17} {:>9} {:>9} {:>9}",
            "form", "top-1 %", "95% CI", "top-5 %", "95% CI", "p50 ms", "p90 ms", "p99 ms"
        );
        for f in &self.forms {
            let acc = |a: &Option<Accuracy>| match a {
                Some(a) => {
                    (format!("{:.2}", a.percent), format!("{:.2}-{:.2}", a.ci95[0], a.ci95[1]))
                }
                None => ("n/a".into(), "".into()),
            };
            let (t1, c1) = acc(&f.top1);
            let (t5, c5) = acc(&f.top5);
            let lat = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "n/a".into());
            let l = f.latency_ms.as_ref();
            let _ = writeln!(
                s,
                "{:<5} {:>8} {:>17} {:>8} {:>17} {:>9} {:>9} {:>9}",
                f.form,
                t1,
                c1,
                t5,
                c5,
                lat(l.map(|l| l.p50)),
                lat(l.map(|l| l.p90)),
                lat(l.map(|l| l.p99))
            );
        }
        if self.environment.emulated {
            let _ = writeln!(s, "emulated (qemu): the latency columns are not board figures");
        }
        for f in &self.forms {
            if let Some(v) = &f.verdict {
                let _ = writeln!(s, "verdict ({}): {}", f.form, v.text);
            }
            if let (None, Some(note)) = (&f.top1, &f.accuracy_note) {
                let _ = writeln!(s, "accuracy ({}): {note}", f.form);
            }
        }
        if let Some(id) = &self.model.synthetic {
            let _ = writeln!(
                s,
                "model: SYNTHETIC {} (seed {}, {}); latency and memory are real, accuracy is not",
                id.arch, id.seed, id.generator
            );
        }
        if !self.failures.is_empty() {
            let _ =
                writeln!(s, "{} image(s) failed; see report.json `failures`", self.failures.len());
        }
        s
    }

    /// The Markdown view.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.model;
        let _ = writeln!(s, "# edgeverify report: {}\n", m.name);
        let _ = writeln!(s, "Created {} by `{}`.\n", self.created, self.command.join(" "));
        let _ = writeln!(s, "## Claim vs measured\n");
        if let Some(id) = &m.synthetic {
            let _ = writeln!(
                s,
                "**Synthetic model**: the {} graph ({}) with seeded synthetic weights (seed {}, \
                 generator `{}`). Latency, throughput and memory below are real figures for this \
                 CPU; accuracy is not measurable and no claim is checked.\n",
                id.arch, id.graph_of, id.seed, id.generator
            );
        }
        match &m.claim {
            Some(c) => {
                let _ = writeln!(s, "Claim: **{:.1}% top-1** ({}).\n", c.top1, c.source);
            }
            None if m.synthetic.is_none() => {
                let _ = writeln!(s, "No accuracy claim was given for this model.\n");
            }
            None => {}
        }
        let _ = writeln!(
            s,
            "| form | top-1 % (95% CI) | top-5 % (95% CI) | failures as wrong: top-1 % | verdict |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|");
        for f in &self.forms {
            let acc = |a: &Option<Accuracy>| match a {
                Some(a) => format!(
                    "{:.2} ({:.2}-{:.2}), {}/{}",
                    a.percent, a.ci95[0], a.ci95[1], a.correct, a.evaluated
                ),
                None => format!("n/a: {}", f.accuracy_note.as_deref().unwrap_or("not measured")),
            };
            let failed = f
                .top1_failures_as_wrong
                .map(|a| format!("{:.2} ({:.2}-{:.2})", a.percent, a.ci95[0], a.ci95[1]))
                .unwrap_or_else(|| "n/a".into());
            let verdict = f.verdict.as_ref().map(|v| v.text.as_str()).unwrap_or("no claim");
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                f.form,
                acc(&f.top1),
                acc(&f.top5),
                failed,
                verdict
            );
        }
        let _ = writeln!(s);
        self.markdown_paired(&mut s);
        self.markdown_latency(&mut s);
        self.markdown_inputs(&mut s);
        if !self.notes.is_empty() {
            let _ = writeln!(s, "## Notes\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
            let _ = writeln!(s);
        }
        s
    }

    fn markdown_paired(&self, s: &mut String) {
        let paired: Vec<&FormReport> = self.forms.iter().filter(|f| f.vs_f32.is_some()).collect();
        if paired.is_empty() {
            return;
        }
        let _ = writeln!(s, "## Forms compared with f32 on the same images\n");
        let _ = writeln!(s, "| form | images | top-1 agreement % | f32 right, form wrong | f32 wrong, form right | top-1 drop, points (95% CI) | McNemar p | logit cosine | KL (nats) | max abs logit diff |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
        for f in paired {
            let p = f.vs_f32.as_ref().expect("filtered");
            let (drop, pval) = (p.drop_text(), p.mcnemar_text());
            let [b, c] = p.discordant_text();
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {} | {} | {} | {} | {:.5} | {:.5} | {:.4} |",
                f.form,
                p.images,
                p.top1_agreement_percent,
                b,
                c,
                drop,
                pval,
                p.logit_cosine_mean,
                p.softmax_kl_mean,
                p.logit_max_abs_diff
            );
        }
        let _ = writeln!(
            s,
            "\nA paired drop is resolved only when its interval excludes 0; with few discordant \
             images (the two middle columns) a slice this size cannot tell a small drop from none.\n"
        );
        for f in &self.forms {
            if let Some(r) = &f.recipe {
                let _ = writeln!(
                    s,
                    "Recipe ({}): {} calibration on {} images ({}), activations {:?}, weights {}, \
                     {} ops quantized, {} kept in float{}; float ops: {}.\n",
                    f.form,
                    r.method,
                    r.calibration.images,
                    r.calibration.source,
                    r.activations,
                    r.weights,
                    r.ops_quantized.len(),
                    r.ops_kept_float.len(),
                    r.smoothquant_alpha
                        .map(|a| format!(", SmoothQuant alpha {a} on {} pairs", r.smoothed_pairs))
                        .unwrap_or_default(),
                    r.float_op_types.join(", ")
                );
                if !r.sensitivity.is_empty() {
                    let _ = writeln!(
                        s,
                        "Most sensitive layers (quantized alone, on {} calibration images):\n",
                        r.auto_keep_float
                            .as_ref()
                            .map(|a| a.images.to_string())
                            .unwrap_or_else(|| "the first".into())
                    );
                    for l in r.sensitivity.iter().take(10) {
                        let _ = writeln!(
                            s,
                            "- `{}`: KL {:.5}, top-1 changed on {:.1}%",
                            l.name, l.softmax_kl_mean, l.top1_changed_percent
                        );
                    }
                    let _ = writeln!(s);
                }
            }
        }
    }

    /// `"int8 / f32 0.63"`-style p50 ratios: each other form against f32, and f32 against
    /// stock tract's plan of the same file.
    pub fn latency_ratios(&self) -> Vec<String> {
        let p50 = |f: &FormReport| f.latency_ms.as_ref().map(|l| l.p50);
        let Some(f32_form) = self.forms.iter().find(|f| f.form == "f32") else { return vec![] };
        let mut ratios = vec![];
        if let (Some(ours), Some(stock)) = (p50(f32_form), &f32_form.stock_tract) {
            ratios.push(format!("f32 / f32 stock tract {:.3}", ours / stock.latency_ms.p50));
        }
        for f in self.forms.iter().filter(|f| f.form != "f32") {
            if let (Some(a), Some(b)) = (p50(f), p50(f32_form)) {
                ratios.push(format!("{} / f32 {:.3}", f.form, a / b));
            }
        }
        ratios
    }

    fn markdown_latency(&self, s: &mut String) {
        let lm = &self.latency_method;
        let _ = writeln!(s, "## Latency\n");
        let _ = writeln!(
            s,
            "Measured apart from the accuracy pass: batch {}, {} thread(s), {} warm-up run(s), up \
             to {} timed runs or {} s per form, the forms timed in turn (one run of each per \
             round, so that load from other processes falls on all alike); input: {}.\n",
            lm.batch, lm.threads, lm.plan.warmup_runs, lm.plan.runs, lm.plan.max_seconds, lm.input
        );
        let _ = writeln!(s, "| form | p50 ms | p90 ms | p99 ms | mean ± sd ms | runs | throughput img/s | load ms | kernels |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for f in &self.forms {
            let kernels = counts_text(&f.kernels);
            let tp = f
                .throughput
                .as_ref()
                .map(|t| format!("{:.1} (batch {})", t.images_per_second, t.batch))
                .unwrap_or_else(|| "n/a".into());
            match &f.latency_ms {
                Some(l) => {
                    let _ = writeln!(
                        s,
                        "| {} | {:.2} | {:.2} | {:.2} | {:.2} ± {:.2} | {} | {} | {:.0} | {} |",
                        f.form,
                        l.p50,
                        l.p90,
                        l.p99,
                        l.mean,
                        l.stdev,
                        l.runs,
                        tp,
                        f.load_ms,
                        kernels
                    );
                }
                None => {
                    let note = f.latency_note.as_deref().unwrap_or("not measured");
                    let _ = writeln!(
                        s,
                        "| {} | n/a: {note} | | | | | {tp} | {:.0} | {kernels} |",
                        f.form, f.load_ms
                    );
                }
            }
            if let Some(b) = &f.stock_tract {
                let l = &b.latency_ms;
                let kernels = counts_text(&b.kernels);
                let _ = writeln!(
                    s,
                    "| {}, stock tract (baseline) | {:.2} | {:.2} | {:.2} | {:.2} ± {:.2} | {} | n/a \
                     | {:.0} | {} |",
                    f.form, l.p50, l.p90, l.p99, l.mean, l.stdev, l.runs, b.load_ms, kernels
                );
            }
        }
        let ratios = self.latency_ratios();
        if !ratios.is_empty() {
            let _ = writeln!(
                s,
                "\nRatios of p50 latency, timed in the same rounds: {}.",
                ratios.join("; ")
            );
        }
        for f in self.forms.iter().filter(|f| !f.own_ops.is_empty()) {
            let ops = counts_text(&f.own_ops);
            let _ = writeln!(s, "\n{}: edgeverify's own ops in tract's plan: {}.", f.form, ops);
        }
        self.markdown_profiles(s);
        let e = &self.environment;
        let _ = writeln!(s, "\n## Environment\n");
        let _ = writeln!(
            s,
            "- CPU: {} ({} logical CPUs), {} {}",
            e.cpu_model, e.logical_cpus, e.os, e.arch
        );
        let _ = writeln!(s, "- tract {} ISA: {}", e.tract_version, e.tract_isa);
        if let Some(o) = &e.tract_cpu_isa_override {
            let _ = writeln!(s, "- TRACT_CPU_ISA override: `{o}`");
        }
        if e.emulated {
            let _ = writeln!(s, "- **Emulated** (qemu): latency figures are not board figures.");
        }
        if let Some(board) = &e.board_model {
            let _ = writeln!(s, "- board: {board}");
        }
        if !e.arm_cores.is_empty() {
            let _ = writeln!(s, "- cores: {}", e.arm_cores.join(", "));
        }
        for (knob, value) in &e.tract_knobs {
            let _ = writeln!(s, "- tract knob `{knob}={value}`");
        }
        let families: Vec<String> = self
            .forms
            .iter()
            .map(|f| format!("{}: {}", f.form, f.kernel_families.join("+")))
            .collect();
        let _ = writeln!(s, "- kernel families: {}", families.join("; "));
        let _ = writeln!(s, "- before the latency runs: {}", e.board_before_latency.summary());
        if let Some(after) = &e.board_after_latency {
            let _ = writeln!(s, "- after the latency runs: {}", after.summary());
        }
        if let Some(c) = &e.contention {
            let _ = writeln!(
                s,
                "- other processes during the latency runs: {:.1} CPU-s in {:.1} s, {:.0}% of \
                 the CPUs",
                c.other_cpu_seconds,
                c.wall_seconds,
                c.other_share * 100.0
            );
        }
        for why in &e.board_before_latency.unavailable {
            let _ = writeln!(s, "- not recorded: {why}");
        }
        if let Some(rss) = lm.peak_rss_bytes {
            let _ = writeln!(s, "- peak RSS: {:.1} MiB", rss as f64 / 1048576.0);
        }
        let _ = writeln!(s);
    }

    /// The top ops of each profiled form (`--profile`).
    fn markdown_profiles(&self, s: &mut String) {
        for f in &self.forms {
            let Some(p) = &f.profile else { continue };
            let _ = writeln!(
                s,
                "\n### Profile: {} ({:.1} ms per run in ops, mean of {} runs)\n",
                f.form, p.total_ms, p.runs
            );
            let _ = writeln!(s, "| op | nodes | ms | share |");
            let _ = writeln!(s, "|---|---|---|---|");
            for op in p.ops.iter().take(PROFILE_ROWS) {
                let _ =
                    writeln!(s, "| {} | {} | {:.2} | {:.1}% |", op.op, op.count, op.ms, op.percent);
            }
        }
    }

    fn markdown_inputs(&self, s: &mut String) {
        let m = &self.model;
        let sl = &self.slice;
        let _ = writeln!(s, "## Inputs\n");
        let _ = writeln!(
            s,
            "- model: `{}` ({}, {:.1} MB, sha256 `{}`), described by {}",
            m.onnx_path,
            m.name,
            m.file_bytes as f64 / 1e6,
            m.sha256,
            m.described_by
        );
        let p = &m.preprocess;
        let _ = writeln!(
            s,
            "- preprocessing: shortest edge {} ({:?}), center crop {}, rescale {:.6}, mean {:?}, std {:?}",
            p.resize_shortest_edge, p.filter, p.crop_size, p.rescale_factor, p.mean, p.std
        );
        let _ = writeln!(
            s,
            "- slice: `{}` ({}, {} images, labels from {}), identity sha256 `{}`{}",
            sl.path,
            sl.kind,
            sl.images,
            sl.labels_source,
            sl.sha256,
            if sl.hashes_checked {
                ", every image's hash checked against the manifest"
            } else {
                ""
            }
        );
        let pp = &self.preprocessing;
        let _ = writeln!(
            s,
            "- preprocessing throughput: {:.0} images/s on {} threads ({} images in {:.2} s)",
            pp.images_per_second, pp.threads, pp.images, pp.seconds
        );
        if !self.failures.is_empty() {
            let _ = writeln!(s, "\n### Failed images ({})\n", self.failures.len());
            for f in &self.failures {
                let _ = writeln!(s, "- `{}`: {}", f.file, f.reason);
            }
        }
        let _ = writeln!(s);
    }
}

#[cfg(test)]
mod tests {
    #[cfg(unix)]
    #[test]
    fn written_files_are_readable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.md");
        super::write_atomically(&path, b"# report\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"# report\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
    }
}
