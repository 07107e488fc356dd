//! `edgeverify compare`: merges the `report.json` of runs on several boards, forms and thread
//! counts into one latency/accuracy trade-off table (Markdown and HTML) and one chart, with the
//! Pareto-optimal run-forms marked. Runs over different slices or models are refused unless
//! the user says otherwise: their accuracies are not comparable.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::charts::{self, TradeoffPoint};
use crate::html::{self, escape};
use crate::metrics::Accuracy;
use crate::report::{self, Report, REPORT_FORMAT};

/// Arguments of `edgeverify compare` (kept beside the command so that the CLI module only
/// dispatches to it).
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// report.json files written by `edgeverify verify` (a folder stands for its report.json).
    #[arg(required = true, value_name = "REPORT.json")]
    pub reports: Vec<PathBuf>,
    /// Folder for compare.md, compare.html and compare.svg (created if needed).
    #[arg(long, default_value = "out/compare")]
    pub out: PathBuf,
    /// Compare runs over different slices (report.slice.sha256) anyway.
    #[arg(long)]
    pub allow_different_slices: bool,
    /// Compare runs of different models (report.model.sha256) anyway.
    #[arg(long)]
    pub allow_different_models: bool,
}

/// One report and where it was read from.
pub struct Run {
    pub path: PathBuf,
    pub report: Report,
}

/// One form of one run: a row of the trade-off table and a point of the chart.
#[derive(Debug, Clone)]
pub struct TradeoffRow {
    /// The report it comes from, as given on the command line.
    pub source: String,
    /// CPU model and architecture, with the TRACT_CPU_ISA override if any.
    pub board: String,
    pub form: String,
    pub threads: usize,
    pub top1: Option<Accuracy>,
    pub accuracy_note: Option<String>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    /// p10 and p90 of the timed runs.
    pub spread_ms: Option<(f64, f64)>,
    pub timed_runs: Option<usize>,
    pub emulated: bool,
    /// Whether no other row is at least as fast and at least as accurate, and better in one.
    pub pareto: bool,
}

/// The merged runs: rows sorted by p50 latency (rows without one last), plus what the reader
/// must know (differences that were allowed, the model and slice compared).
pub struct Comparison {
    pub rows: Vec<TradeoffRow>,
    pub notes: Vec<String>,
    /// The claimed top-1 when every run carries the same claim.
    pub claim_top1: Option<f64>,
    pub models: Vec<String>,
    pub slices: Vec<String>,
}

/// Which of `points` (p50 latency in ms, top-1 in %) are Pareto-optimal: no other point is at
/// least as fast and at least as accurate while strictly better in one. Points that are `None`
/// (not measurable) are never optimal and dominate nothing. Equal points are all optimal.
pub fn pareto_optimal(points: &[Option<(f64, f64)>]) -> Vec<bool> {
    points
        .iter()
        .map(|p| {
            let Some((ms, top1)) = *p else { return false };
            !points.iter().flatten().any(|&(other_ms, other_top1)| {
                other_ms <= ms && other_top1 >= top1 && (other_ms < ms || other_top1 > top1)
            })
        })
        .collect()
}

/// Reads an `edgeverify verify` report; a folder stands for its `report.json`. Errors name
/// the file and what it is instead.
pub fn load_report(path: &Path) -> Result<Report> {
    let file = if path.is_dir() { path.join("report.json") } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "cannot read report {} (pass report.json files written by `edgeverify verify`)",
            file.display()
        )
    })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON, so not an edgeverify report", file.display()))?;
    match value.get("format").and_then(|f| f.as_str()) {
        Some(REPORT_FORMAT) => {}
        Some(other) => bail!(
            "{}: format is {other:?}, expected {REPORT_FORMAT:?}: not an edgeverify report \
             this version can read",
            file.display()
        ),
        None => bail!(
            "{} is not an edgeverify report: it has no \"format\": {REPORT_FORMAT:?} field \
             (pass report.json files written by `edgeverify verify`)",
            file.display()
        ),
    }
    serde_json::from_value(value).with_context(|| {
        format!("{}: an {REPORT_FORMAT} report with missing or malformed fields", file.display())
    })
}

/// A run's model identity: the sha256 of its f32 source file. Quantized forms are built from
/// that source, so their recipes tell forms apart, not models. A report without a source hash
/// (e.g. a synthetic model, identified by architecture, seed and generator) has none here.
pub fn model_identity(report: &Report) -> Option<&str> {
    Some(report.model.sha256.trim()).filter(|s| !s.is_empty())
}

/// Refuses runs over different slices, or of different or unidentified models, unless
/// allowed; returns the notes that say what was allowed.
pub fn check_comparable(
    runs: &[Run],
    allow_slices: bool,
    allow_models: bool,
) -> Result<Vec<String>> {
    let mut notes = vec![];
    let by_slice = group(runs, |r| Some(r.slice.sha256.clone()));
    if by_slice.len() > 1 {
        let listing = listing(runs, |r| {
            format!(
                "slice {} ({}, {} images)",
                short(&r.slice.sha256),
                r.slice.path,
                r.slice.images
            )
        });
        if !allow_slices {
            bail!(
                "cannot compare: the reports are over different slices (report.slice.sha256 \
                 differs):\n{listing}accuracies over different images are not comparable; run \
                 every board on the same slice, or pass --allow-different-slices to compare \
                 anyway"
            );
        }
        notes.push(format!(
            "runs over different slices, compared as asked (--allow-different-slices):\n{listing}"
        ));
    }
    let by_model = group(runs, |r| model_identity(r).map(str::to_string));
    let unidentified = by_model.contains_key(&None);
    if by_model.len() > 1 || unidentified {
        let listing = listing(runs, |r| {
            let id = model_identity(r).map(short).unwrap_or("none recorded");
            format!("model {} (sha256 {id})", r.model.name)
        });
        let what = if unidentified {
            "some reports record no model identity (report.model.sha256 is empty)"
        } else {
            "the reports are of different models (report.model.sha256 differs)"
        };
        if !allow_models {
            bail!(
                "cannot compare: {what}:\n{listing}pass --allow-different-models to compare \
                 anyway"
            );
        }
        notes.push(format!("{what}, compared as asked (--allow-different-models):\n{listing}"));
    }
    Ok(notes)
}

fn group(runs: &[Run], key: impl Fn(&Report) -> Option<String>) -> BTreeMap<Option<String>, usize> {
    let mut groups = BTreeMap::new();
    for run in runs {
        *groups.entry(key(&run.report)).or_insert(0) += 1;
    }
    groups
}

fn listing(runs: &[Run], describe: impl Fn(&Report) -> String) -> String {
    runs.iter().map(|r| format!("  {}: {}\n", r.path.display(), describe(&r.report))).collect()
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn board(report: &Report) -> String {
    let e = &report.environment;
    let mut board = format!("{} ({})", e.cpu_model, e.arch);
    if let Some(isa) = &e.tract_cpu_isa_override {
        let _ = write!(board, ", TRACT_CPU_ISA {isa}");
    }
    board
}

impl Comparison {
    /// Merges the runs' forms into rows, sorted by p50 latency, with the Pareto front marked.
    pub fn new(runs: &[Run], notes: Vec<String>) -> Comparison {
        let mut rows: Vec<TradeoffRow> = runs
            .iter()
            .flat_map(|run| {
                let r = &run.report;
                r.forms.iter().map(move |f| TradeoffRow {
                    source: run.path.display().to_string(),
                    board: board(r),
                    form: f.form.clone(),
                    threads: r.latency_method.threads,
                    top1: f.top1,
                    accuracy_note: f.accuracy_note.clone(),
                    p50_ms: f.latency_ms.as_ref().map(|l| l.p50),
                    p90_ms: f.latency_ms.as_ref().map(|l| l.p90),
                    spread_ms: f.latency_ms.as_ref().and_then(|l| charts::spread_ms(&l.samples_ms)),
                    timed_runs: f.latency_ms.as_ref().map(|l| l.runs),
                    emulated: r.environment.emulated,
                    pareto: false,
                })
            })
            .collect();
        rows.sort_by(|a, b| {
            let key = |r: &TradeoffRow| r.p50_ms.unwrap_or(f64::INFINITY);
            key(a).total_cmp(&key(b))
        });
        let points: Vec<Option<(f64, f64)>> =
            rows.iter().map(|r| Some((r.p50_ms?, r.top1?.percent))).collect();
        for (row, pareto) in rows.iter_mut().zip(pareto_optimal(&points)) {
            row.pareto = pareto;
        }
        let claims: Vec<Option<f64>> =
            runs.iter().map(|r| r.report.model.claim.as_ref().map(|c| c.top1)).collect();
        let claim_top1 =
            claims.first().copied().flatten().filter(|c| claims.iter().all(|o| *o == Some(*c)));
        let mut models: Vec<String> = runs.iter().map(|r| r.report.model.name.clone()).collect();
        models.dedup();
        let mut slices: Vec<String> = runs
            .iter()
            .map(|r| {
                format!(
                    "{} ({} images, sha256 {})",
                    r.report.slice.path,
                    r.report.slice.images,
                    short(&r.report.slice.sha256)
                )
            })
            .collect();
        slices.dedup();
        Comparison { rows, notes, claim_top1, models, slices }
    }

    /// The chart: every row at its p50 latency and top-1, numbered as in the table.
    pub fn chart_svg(&self) -> Result<String> {
        let points: Vec<TradeoffPoint> = self
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| TradeoffPoint {
                label: format!("#{} {} · {} thr", i + 1, r.form, r.threads),
                form: r.form.clone(),
                p50_ms: r.p50_ms,
                spread_ms: r.spread_ms,
                top1: r.top1,
                pareto: r.pareto,
            })
            .collect();
        charts::tradeoff_chart(&points, self.claim_top1)
    }

    /// The table's cells for row `i`: number, board, form, threads, top-1, p50, p90, runs,
    /// Pareto, report.
    fn cells(&self, i: usize) -> [String; 10] {
        let r = &self.rows[i];
        let ms = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "n/a".into());
        let pareto = match (r.p50_ms, r.top1) {
            (Some(_), Some(_)) if r.pareto => "yes",
            (Some(_), Some(_)) => "",
            _ => "n/a",
        };
        let board = if r.emulated { format!("{} (emulated)", r.board) } else { r.board.clone() };
        [
            format!("{}", i + 1),
            board,
            r.form.clone(),
            r.threads.to_string(),
            html::accuracy_text(r.top1.as_ref(), r.accuracy_note.as_deref()),
            ms(r.p50_ms),
            ms(r.p90_ms),
            r.timed_runs.map(|n| n.to_string()).unwrap_or_else(|| "n/a".into()),
            pareto.into(),
            r.source.clone(),
        ]
    }

    const HEADERS: [&'static str; 10] = [
        "#",
        "board",
        "form",
        "threads",
        "top-1 (95% CI)",
        "p50 ms",
        "p90 ms",
        "runs",
        "Pareto",
        "report",
    ];

    /// The trade-off table in Markdown.
    pub fn markdown_table(&self) -> String {
        let mut s = format!("| {} |\n", Self::HEADERS.join(" | "));
        let _ = writeln!(s, "|{}", "---|".repeat(Self::HEADERS.len()));
        for i in 0..self.rows.len() {
            let cells = self.cells(i).map(|c| c.replace('|', "\\|"));
            let _ = writeln!(s, "| {} |", cells.join(" | "));
        }
        s
    }

    fn explanation(&self) -> String {
        "Pareto-optimal: no other run-form has a lower or equal p50 latency and a higher or \
         equal top-1 while being better in one. It is judged on point estimates: where the 95% \
         intervals overlap, the slice cannot tell the accuracies apart."
            .into()
    }

    /// The Markdown view, showing the chart from `svg_file` beside it.
    pub fn to_markdown(&self, svg_file: &str) -> String {
        let mut s = String::from("# edgeverify comparison\n\n");
        let _ =
            writeln!(s, "Model: {}. Slice: {}.\n", self.models.join(", "), self.slices.join("; "));
        if let Some(c) = self.claim_top1 {
            let _ = writeln!(s, "Claim: {c:.1}% top-1.\n");
        }
        s.push_str(&self.markdown_table());
        let _ = writeln!(s, "\n{}\n\n![latency vs top-1]({svg_file})\n", self.explanation());
        for n in &self.notes {
            let _ = writeln!(s, "- {}", n.trim_end().replace('\n', "\n  "));
        }
        s
    }

    /// The self-contained HTML view, chart inline.
    pub fn to_html(&self, svg: &str) -> String {
        let mut body = String::from("<h1>edgeverify comparison</h1>\n");
        let _ = writeln!(
            body,
            "<p>Model: {}. Slice: {}.{}</p>",
            escape(&self.models.join(", ")),
            escape(&self.slices.join("; ")),
            self.claim_top1.map(|c| format!(" Claim: <b>{c:.1}% top-1</b>.")).unwrap_or_default()
        );
        body.push_str(&html::figure("chart-tradeoff", svg));
        let _ = writeln!(
            body,
            "<table>\n<tr>{}</tr>",
            Self::HEADERS.map(|h| format!("<th>{h}</th>")).concat()
        );
        for i in 0..self.rows.len() {
            let cells = self.cells(i);
            let tds: String = cells.iter().map(|c| format!("<td>{}</td>", escape(c))).collect();
            let _ = writeln!(
                body,
                "<tr{}>{tds}</tr>",
                if self.rows[i].pareto { " class=\"pareto\"" } else { "" }
            );
        }
        let _ = writeln!(body, "</table>\n<p class=\"small\">{}</p>", escape(&self.explanation()));
        for n in &self.notes {
            let _ = writeln!(body, "<pre class=\"note\">{}</pre>", escape(n.trim_end()));
        }
        html::page("edgeverify comparison", &body)
    }
}

/// Runs `edgeverify compare`: reads the reports, checks they compare, writes compare.md,
/// compare.html and compare.svg into `args.out`.
pub fn run(args: &CompareArgs) -> Result<Comparison> {
    // The same run given twice would give duplicate rows, both marked Pareto-optimal.
    let mut seen: std::collections::HashMap<String, &std::path::PathBuf> = Default::default();
    for path in &args.reports {
        let file = if path.is_dir() { path.join("report.json") } else { path.clone() };
        let Ok(sha) = crate::dataset::sha256_file(&file) else { continue };
        if let Some(first) = seen.insert(sha, path) {
            anyhow::bail!(
                "reports {} and {} are the same report (identical content): give each run once",
                first.display(),
                path.display()
            );
        }
    }
    let runs = args
        .reports
        .iter()
        .map(|path| Ok(Run { path: path.clone(), report: load_report(path)? }))
        .collect::<Result<Vec<_>>>()?;
    let notes = check_comparable(&runs, args.allow_different_slices, args.allow_different_models)?;
    for n in &notes {
        log::warn!("{}", n.trim_end());
    }
    let comparison = Comparison::new(&runs, notes);
    report::prepare_output_dir(&args.out)?;
    let svg = comparison.chart_svg()?;
    report::write_atomically(&args.out.join("compare.svg"), svg.as_bytes())?;
    report::write_atomically(&args.out.join("compare.html"), comparison.to_html(&svg).as_bytes())?;
    report::write_atomically(
        &args.out.join("compare.md"),
        comparison.to_markdown("compare.svg").as_bytes(),
    )?;
    Ok(comparison)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_front_keeps_the_undominated() {
        let points = [
            Some((40.0, 83.0)), // dominated by the 25 ms point (as accurate, faster)
            Some((25.0, 83.0)),
            Some((15.0, 80.0)), // faster, less accurate: optimal
            Some((20.0, 79.0)), // dominated by 15 ms / 80 %
            None,
            Some((50.0, 84.0)), // slowest but most accurate: optimal
        ];
        assert_eq!(pareto_optimal(&points), vec![false, true, true, false, false, true]);
    }

    #[test]
    fn equal_points_are_both_optimal() {
        assert_eq!(pareto_optimal(&[Some((10.0, 80.0)), Some((10.0, 80.0))]), vec![true, true]);
        assert_eq!(pareto_optimal(&[None]), vec![false]);
    }
}
