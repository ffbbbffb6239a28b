//! The report of a run: `results.json`, `timeline.html` (operations per process with nemesis
//! bands, the first violation linked) and, drawn with plotters, `latency.png` (latency of every
//! operation over time) and `rate.png` (completions per second), both with nemesis bands.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Once;

use anyhow::Result;
use plotters::prelude::*;

use crate::checker::Results;
use crate::history::{pairs, Op, OpType};

/// Where Debian's fonts-dejavu-core puts its sans-serif font.
const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub fn write(dir: &Path, ops: &[Op], results: &Results) -> Result<()> {
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_vec_pretty(results)?,
    )?;
    std::fs::write(dir.join("timeline.html"), timeline(ops, results))?;
    let bands = nemesis_bands(ops);
    if let Err(e) = latency_png(&dir.join("latency.png"), ops, &bands) {
        eprintln!("jepsen: latency.png not drawn: {e}");
    }
    if let Err(e) = rate_png(&dir.join("rate.png"), ops, &bands) {
        eprintln!("jepsen: rate.png not drawn: {e}");
    }
    Ok(())
}

/// (start s, end s, label) of every fault, from its `fault` event to the next `heal`.
pub fn nemesis_bands(ops: &[Op]) -> Vec<(f64, f64, String)> {
    let end = ops.last().map_or(0.0, Op::time_s);
    let mut bands = Vec::new();
    let mut open: Option<(f64, String)> = None;
    for op in ops.iter().filter(|o| o.process == "nemesis") {
        match op.f.as_str() {
            "fault" => {
                if let Some((s, l)) = open.take() {
                    bands.push((s, op.time_s(), l));
                }
                let label = op.str("fault").unwrap_or("fault").to_string();
                open = Some((op.time_s(), label));
            }
            "heal" => {
                if let Some((s, l)) = open.take() {
                    bands.push((s, op.time_s(), l));
                }
            }
            _ => {}
        }
    }
    if let Some((s, l)) = open {
        bands.push((s, end, l));
    }
    bands
}

fn color(kind: OpType) -> &'static str {
    match kind {
        OpType::Ok => "#3a3",
        OpType::Fail => "#d33",
        OpType::Info => "#e90",
        OpType::Invoke => "#999",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Pixels per second of history.
const PX_PER_S: f64 = 25.0;
const ROW_PX: f64 = 18.0;

pub fn timeline(ops: &[Op], results: &Results) -> String {
    let end = ops.last().map_or(1.0, Op::time_s).max(1.0);
    let mut procs: Vec<&str> = ops
        .iter()
        .filter(|o| o.process.starts_with('c'))
        .map(|o| o.process.as_str())
        .collect();
    procs.sort_by_key(|p| p[1..].parse::<u32>().unwrap_or(0));
    procs.dedup();
    let width = end * PX_PER_S + 80.0;
    let height = (procs.len() as f64 + 2.0) * ROW_PX + 20.0;
    let first_violations: Vec<u64> = results
        .checks
        .iter()
        .filter_map(|c| c.first_violation)
        .collect();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><meta charset=utf-8><title>{} {}</title>\
         <style>body{{font:13px sans-serif}} td,th{{padding:2px 8px;text-align:left}} \
         .invalid{{color:#c00}} .unknown{{color:#b70}} .valid{{color:#080}}</style>\
         <h1>{} — <span class={v}>{v}</span></h1>",
        esc(&results.scenario),
        results.verdict.as_str(),
        esc(&results.scenario),
        v = results.verdict.as_str()
    );
    let _ = write!(
        h,
        "<p>seed {} · acknowledged {} · completed {} · lost {} · unexpected {} · doubled {} · \
         lease overlaps {} · leader changes {} · unavailability windows {}</p><table>\
         <tr><th>checker<th>verdict<th>count<th>first violation<th>details",
        results.seed,
        results.acknowledged,
        results.completed,
        results.lost,
        results.unexpected,
        results.doubled,
        results.lease_overlaps,
        results.leader_changes,
        results.unavailability_windows.len()
    );
    for c in &results.checks {
        let link = c
            .first_violation
            .map(|i| format!("<a href=\"#op-{i}\">op {i}</a>"))
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td>{}<td class={v}>{v}<td>{}<td>{}<td>{}",
            c.name,
            c.count,
            link,
            esc(&c.details.join("; ")),
            v = c.verdict.as_str()
        );
    }
    h.push_str("</table><p>Bars: one operation from invoke to completion (green ok, red fail, orange info); shaded: faults.</p>");
    let _ = write!(
        h,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\">"
    );
    for (s, e, label) in nemesis_bands(ops) {
        let _ = write!(
            h,
            "<rect x=\"{:.1}\" y=\"0\" width=\"{:.1}\" height=\"{height:.0}\" fill=\"#f66\" opacity=\"0.15\"><title>{}</title></rect>\
             <text x=\"{:.1}\" y=\"12\" font-size=\"10\">{}</text>",
            60.0 + s * PX_PER_S,
            ((e - s) * PX_PER_S).max(1.0),
            esc(&label),
            62.0 + s * PX_PER_S,
            esc(&label)
        );
    }
    for (row, p) in procs.iter().enumerate() {
        let y = 20.0 + row as f64 * ROW_PX;
        let _ = write!(h, "<text x=\"2\" y=\"{:.1}\">{p}</text>", y + 12.0);
        for (inv, done) in pairs(ops).into_iter().filter(|(i, _)| i.process == *p) {
            let kind = done.map_or(OpType::Invoke, |d| d.kind);
            let t1 = done.map_or(end, Op::time_s);
            let target = done.map_or(inv.index, |d| d.index);
            let bad = first_violations.contains(&target);
            let _ = write!(
                h,
                "<a href=\"#op-{target}\"><rect id=\"op-{target}\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"{}><title>{} {} {}</title></rect></a>",
                60.0 + inv.time_s() * PX_PER_S,
                ((t1 - inv.time_s()) * PX_PER_S).max(1.5),
                ROW_PX - 4.0,
                if bad { "#00f" } else { color(kind) },
                if bad { " stroke=\"#00f\" stroke-width=\"3\"" } else { "" },
                esc(&inv.f),
                esc(&inv.value.to_string()),
                esc(&done.map(|d| d.value.to_string()).unwrap_or_default())
            );
        }
    }
    h.push_str("</svg><h2>History of the first violations</h2><pre>");
    for i in &first_violations {
        if let Some(op) = ops.get(*i as usize) {
            let _ = writeln!(
                h,
                "<span id=\"v-{i}\">{}</span>",
                esc(&serde_json::to_string(op).unwrap_or_default())
            );
        }
    }
    h.push_str("</pre>");
    h
}

/// Registers the font once; false when there is none (plots are then drawn without text).
fn font() -> bool {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Ok(bytes) = std::fs::read(FONT_PATH) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
        }
    });
    Path::new(FONT_PATH).exists()
}

type Bands = [(f64, f64, String)];

fn latency_png(path: &Path, ops: &[Op], bands: &Bands) -> Result<()> {
    let text = font();
    let points: Vec<(f64, f64, OpType)> = pairs(ops)
        .into_iter()
        .filter_map(|(i, d)| {
            d.map(|d| {
                (
                    i.time_s(),
                    (d.time_ns.saturating_sub(i.time_ns)) as f64 / 1e6,
                    d.kind,
                )
            })
        })
        .collect();
    let x_max = ops.last().map_or(1.0, Op::time_s).max(1.0);
    let y_max = points.iter().map(|p| p.1).fold(10.0, f64::max) * 1.1;
    let root = BitMapBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(10);
    if text {
        builder
            .caption("latency (ms) over time (s)", ("sans-serif", 20))
            .x_label_area_size(30)
            .y_label_area_size(50);
    }
    let mut chart = builder.build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    if text {
        chart.configure_mesh().disable_mesh().draw()?;
    }
    draw_bands(&mut chart, bands, y_max)?;
    for (kind, c) in [
        (OpType::Ok, RGBColor(0x33, 0xaa, 0x33)),
        (OpType::Info, RGBColor(0xee, 0x99, 0x00)),
        (OpType::Fail, RGBColor(0xdd, 0x33, 0x33)),
    ] {
        chart.draw_series(
            points
                .iter()
                .filter(|p| p.2 == kind)
                .map(|p| Circle::new((p.0, p.1), 2, c.filled())),
        )?;
    }
    root.present()?;
    Ok(())
}

fn rate_png(path: &Path, ops: &[Op], bands: &Bands) -> Result<()> {
    let text = font();
    let x_max = ops.last().map_or(1.0, Op::time_s).max(1.0);
    let buckets = x_max.ceil() as usize + 1;
    let mut ok = vec![0u32; buckets];
    let mut other = vec![0u32; buckets];
    for op in ops.iter().filter(|o| o.process.starts_with('c')) {
        let b = op.time_s() as usize;
        match op.kind {
            OpType::Ok => ok[b] += 1,
            OpType::Fail | OpType::Info => other[b] += 1,
            OpType::Invoke => {}
        }
    }
    let y_max = ok.iter().chain(&other).copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let root = BitMapBackend::new(path, (1200, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(10);
    if text {
        builder
            .caption(
                "completions per second: ok (green), info/fail (orange)",
                ("sans-serif", 20),
            )
            .x_label_area_size(30)
            .y_label_area_size(50);
    }
    let mut chart = builder.build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    if text {
        chart.configure_mesh().disable_mesh().draw()?;
    }
    draw_bands(&mut chart, bands, y_max)?;
    chart.draw_series(LineSeries::new(
        ok.iter().enumerate().map(|(i, v)| (i as f64, *v as f64)),
        RGBColor(0x33, 0xaa, 0x33).stroke_width(2),
    ))?;
    chart.draw_series(LineSeries::new(
        other.iter().enumerate().map(|(i, v)| (i as f64, *v as f64)),
        RGBColor(0xee, 0x99, 0x00).stroke_width(2),
    ))?;
    root.present()?;
    Ok(())
}

fn draw_bands<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    bands: &Bands,
    y_max: f64,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .draw_series(bands.iter().map(|(s, e, _)| {
            Rectangle::new(
                [(*s, 0.0), (*e, y_max)],
                RGBColor(0xff, 0x66, 0x66).mix(0.2).filled(),
            )
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
