//! The HTML view of a report (`report.html`): one self-contained page with the claim-vs-measured
//! panel, the latency distribution per form and the latency-vs-accuracy chart, drawn as inline
//! SVG from the [`Report`] data. The page loads nothing: no script, no stylesheet, no font, and
//! its Content-Security-Policy forbids any fetch, so it opens the same offline.

use std::fmt::Write as _;

use anyhow::Result;

use crate::charts::{self, AccuracyRow, LatencyRow, TradeoffPoint};
use crate::metrics::Accuracy;
use crate::report::{FormReport, Report};

/// The page's `<head>`: charset, a policy that blocks every fetch, and the inline style.
const HEAD: &str = r#"<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font-family: sans-serif; margin: 0; color: #222; background: #fafafa; }
main { max-width: 980px; margin: 0 auto; padding: 16px 24px 48px; background: #fff; }
h1 { font-size: 1.5em; margin: 0.4em 0; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 1.6em; }
figure.chart { margin: 12px 0; }
figure.chart svg { max-width: 100%; height: auto; border: 1px solid #e4e4e4; }
table { border-collapse: collapse; margin: 10px 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #7a3c00; }
.meta, .small { color: #555; font-size: 0.9em; }
code { font-size: 0.9em; word-break: break-all; }
</style>
"#;

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A whole page around `body`, titled `title`.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n{HEAD}<title>{}</title>\n</head>\n<body>\n\
         <main>\n{body}</main>\n</body>\n</html>\n",
        escape(title)
    )
}

/// An inline chart, with an id for tests and readers' links.
pub fn figure(id: &str, svg: &str) -> String {
    format!("<figure class=\"chart\" id=\"{id}\">\n{svg}</figure>\n")
}

/// An accuracy as `85.00% (63.96–94.76), 17/20`, or why there is none.
pub fn accuracy_text(a: Option<&Accuracy>, note: Option<&str>) -> String {
    match a {
        Some(a) => format!(
            "{:.2}% ({:.2}–{:.2}), {}/{}",
            a.percent, a.ci95[0], a.ci95[1], a.correct, a.evaluated
        ),
        None => match note {
            Some(n) if n.starts_with("not measurable") => n.to_string(),
            Some(n) => format!("not measurable: {n}"),
            None => "not measured".to_string(),
        },
    }
}

/// Renders the whole report page.
pub fn render_report(report: &Report) -> Result<String> {
    let mut body = String::new();
    let _ = writeln!(body, "<h1>edgeverify report: {}</h1>", escape(&report.model.name));
    let _ = writeln!(
        body,
        "<p class=\"meta\">Created {} by <code>{}</code>.</p>",
        escape(&report.created),
        escape(&report.command.join(" "))
    );
    claim_section(report, &mut body)?;
    paired_section(report, &mut body);
    latency_section(report, &mut body)?;
    tradeoff_section(report, &mut body)?;
    inputs_section(report, &mut body);
    if !report.notes.is_empty() {
        let _ = writeln!(body, "<h2>Notes</h2>\n<ul>");
        for n in &report.notes {
            let _ = writeln!(body, "<li>{}</li>", escape(n));
        }
        let _ = writeln!(body, "</ul>");
    }
    Ok(page(&format!("edgeverify report: {}", report.model.name), &body))
}

/// Each form against f32 on the same images: the paired drop and logit fidelity.
fn paired_section(report: &Report, body: &mut String) {
    let paired: Vec<&FormReport> = report.forms.iter().filter(|f| f.vs_f32.is_some()).collect();
    if paired.is_empty() {
        return;
    }
    let _ = writeln!(
        body,
        "<section id=\"paired\">\n<h2>Forms compared with f32 on the same images</h2>\n<table>\n\
         <tr><th>form</th><th>images</th><th>top-1 agreement %</th><th>f32 right, form wrong</th>\
         <th>f32 wrong, form right</th><th>top-1 drop, points (95% CI)</th><th>McNemar p</th>\
         <th>logit cosine</th><th>KL (nats)</th></tr>"
    );
    for f in paired {
        let p = f.vs_f32.as_ref().expect("filtered");
        let (drop, pval) = (p.drop_text(), p.mcnemar_text());
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{:.5}</td><td>{:.5}</td></tr>",
            escape(&f.form),
            p.images,
            p.top1_agreement_percent,
            p.f32_right_form_wrong,
            p.f32_wrong_form_right,
            escape(&drop),
            pval,
            p.logit_cosine_mean,
            p.softmax_kl_mean
        );
    }
    let _ = writeln!(
        body,
        "</table>\n<p>A drop is resolved only when its interval excludes 0: with few discordant \
         images, a slice this size cannot tell a small drop from none.</p>\n</section>"
    );
}

fn claim_section(report: &Report, body: &mut String) -> Result<()> {
    let _ = writeln!(body, "<section id=\"claim\">\n<h2>Claim vs measured</h2>");
    let claim = report.model.claim.as_ref();
    match claim {
        Some(c) => {
            let _ = writeln!(
                body,
                "<p>Claim: <b>{:.1}% top-1</b> ({}).</p>",
                c.top1,
                escape(&c.source)
            );
        }
        None => {
            let _ = writeln!(body, "<p>No accuracy claim was given for this model.</p>");
        }
    }
    let rows: Vec<AccuracyRow> = report
        .forms
        .iter()
        .map(|f| AccuracyRow {
            label: f.form.clone(),
            form: f.form.clone(),
            top1: f.top1,
            note: f.accuracy_note.clone().unwrap_or_else(|| "not measured".into()),
        })
        .collect();
    body.push_str(&figure("chart-claim", &charts::claim_panel(&rows, claim.map(|c| c.top1))?));
    let _ = writeln!(
        body,
        "<table>\n<tr><th>form</th><th>top-1 (95% CI)</th><th>top-5 (95% CI)</th>\
         <th>top-1, failed images as wrong</th><th>verdict</th></tr>"
    );
    for f in &report.forms {
        let note = f.accuracy_note.as_deref();
        let failed = f.top1_failures_as_wrong.as_ref().map(|a| accuracy_text(Some(a), None));
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&f.form),
            escape(&accuracy_text(f.top1.as_ref(), note)),
            escape(&accuracy_text(f.top5.as_ref(), note)),
            escape(failed.as_deref().unwrap_or("n/a")),
            escape(
                f.verdict
                    .as_ref()
                    .map(|v| v.text.as_str())
                    .unwrap_or("no verdict (no claim or no accuracy)")
            )
        );
    }
    let _ = writeln!(body, "</table>\n</section>");
    Ok(())
}

fn latency_section(report: &Report, body: &mut String) -> Result<()> {
    let lm = &report.latency_method;
    let _ = writeln!(body, "<section id=\"latency\">\n<h2>Latency</h2>");
    let _ = writeln!(
        body,
        "<p>Measured apart from the accuracy pass: batch {}, {} thread(s), {} warm-up run(s), up \
         to {} timed runs or {} s; input: {}.</p>",
        lm.batch,
        lm.threads,
        lm.plan.warmup_runs,
        lm.plan.runs,
        lm.plan.max_seconds,
        escape(&lm.input)
    );
    let rows: Vec<LatencyRow> = report
        .forms
        .iter()
        .map(|f| LatencyRow {
            label: f.form.clone(),
            form: f.form.clone(),
            samples_ms: f.latency_ms.as_ref().map(|l| l.samples_ms.clone()),
            note: f.latency_note.clone().unwrap_or_else(|| "not measured".into()),
        })
        .collect();
    body.push_str(&figure("chart-latency", &charts::latency_distribution(&rows)?));
    let _ = writeln!(
        body,
        "<table>\n<tr><th>form</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th>\
         <th>mean ± sd ms</th><th>runs</th><th>throughput img/s</th><th>load ms</th></tr>"
    );
    for f in &report.forms {
        let _ = writeln!(body, "{}", latency_row(f));
        if let Some(b) = &f.stock_tract {
            let l = &b.latency_ms;
            let _ = writeln!(
                body,
                "<tr><td>{}, stock tract (baseline)</td><td class=\"num\">{:.2}</td>\
                 <td class=\"num\">{:.2}</td><td class=\"num\">{:.2}</td>\
                 <td class=\"num\">{:.2} ± {:.2}</td><td class=\"num\">{}</td><td>n/a</td>\
                 <td class=\"num\">{:.0}</td></tr>",
                escape(&f.form),
                l.p50,
                l.p90,
                l.p99,
                l.mean,
                l.stdev,
                l.runs,
                b.load_ms
            );
        }
    }
    let _ = writeln!(body, "</table>");
    let ratios = report.latency_ratios();
    if !ratios.is_empty() {
        let _ = writeln!(
            body,
            "<p>Ratios of p50 latency, the forms timed in turn in the same rounds: {}.</p>",
            escape(&ratios.join("; "))
        );
    }
    let _ = writeln!(body, "</section>");
    Ok(())
}

fn latency_row(f: &FormReport) -> String {
    let tp = f
        .throughput
        .as_ref()
        .map(|t| format!("{:.1} (batch {})", t.images_per_second, t.batch))
        .unwrap_or_else(|| "n/a".into());
    let cells = match &f.latency_ms {
        Some(l) => format!(
            "<td class=\"num\">{:.2}</td><td class=\"num\">{:.2}</td><td class=\"num\">{:.2}</td>\
             <td class=\"num\">{:.2} ± {:.2}</td><td class=\"num\">{}</td>",
            l.p50, l.p90, l.p99, l.mean, l.stdev, l.runs
        ),
        None => format!(
            "<td colspan=\"5\" class=\"note\">not measured: {}</td>",
            escape(f.latency_note.as_deref().unwrap_or("no reason recorded"))
        ),
    };
    format!(
        "<tr><td>{}</td>{cells}<td class=\"num\">{}</td><td class=\"num\">{:.0}</td></tr>",
        escape(&f.form),
        escape(&tp),
        f.load_ms
    )
}

fn tradeoff_section(report: &Report, body: &mut String) -> Result<()> {
    let measured: Vec<Option<(f64, f64)>> =
        report.forms.iter().map(|f| Some((f.latency_ms.as_ref()?.p50, f.top1?.percent))).collect();
    let pareto = crate::compare::pareto_optimal(&measured);
    let points: Vec<TradeoffPoint> = report
        .forms
        .iter()
        .zip(pareto)
        .map(|(f, pareto)| TradeoffPoint {
            label: format!("{} · {} thr", f.form, report.latency_method.threads),
            form: f.form.clone(),
            p50_ms: f.latency_ms.as_ref().map(|l| l.p50),
            spread_ms: f.latency_ms.as_ref().and_then(|l| charts::spread_ms(&l.samples_ms)),
            top1: f.top1,
            pareto,
        })
        .collect();
    let _ = writeln!(body, "<section id=\"tradeoff\">\n<h2>Latency vs accuracy</h2>");
    let _ = writeln!(
        body,
        "<p class=\"small\">Each form at its p50 latency and top-1 on this slice. To set runs \
         from several boards, forms and thread counts side by side, use \
         <code>edgeverify compare</code>.</p>"
    );
    let claim = report.model.claim.as_ref().map(|c| c.top1);
    body.push_str(&figure("chart-tradeoff", &charts::tradeoff_chart(&points, claim)?));
    let _ = writeln!(body, "</section>");
    Ok(())
}

fn inputs_section(report: &Report, body: &mut String) {
    let m = &report.model;
    let s = &report.slice;
    let e = &report.environment;
    let _ = writeln!(body, "<section id=\"inputs\">\n<h2>Inputs and environment</h2>\n<ul>");
    let _ = writeln!(
        body,
        "<li>model: <code>{}</code> ({:.1} MB, sha256 <code>{}</code>), described by {}</li>",
        escape(&m.onnx_path),
        m.file_bytes as f64 / 1e6,
        escape(&m.sha256),
        escape(&m.described_by)
    );
    let _ = writeln!(
        body,
        "<li>slice: <code>{}</code> ({}, {} images, labels from {}), identity sha256 \
         <code>{}</code></li>",
        escape(&s.path),
        escape(&s.kind),
        s.images,
        escape(&s.labels_source),
        escape(&s.sha256)
    );
    let _ = writeln!(
        body,
        "<li>CPU: {} ({} logical CPUs), {} {}; tract {} ISA: {}{}</li>",
        escape(&e.cpu_model),
        e.logical_cpus,
        escape(&e.os),
        escape(&e.arch),
        escape(&e.tract_version),
        escape(&e.tract_isa),
        if e.emulated {
            "; <b>emulated</b> (qemu): latency figures are not board figures"
        } else {
            ""
        }
    );
    if let Some(o) = &e.tract_cpu_isa_override {
        let _ = writeln!(body, "<li>TRACT_CPU_ISA override: <code>{}</code></li>", escape(o));
    }
    let _ = writeln!(body, "</ul>");
    if !report.failures.is_empty() {
        let _ = writeln!(body, "<h3>Failed images ({})</h3>\n<ul>", report.failures.len());
        for f in &report.failures {
            let _ =
                writeln!(body, "<li><code>{}</code>: {}</li>", escape(&f.file), escape(&f.reason));
        }
        let _ = writeln!(body, "</ul>");
    }
    let _ = writeln!(body, "</section>");
}
