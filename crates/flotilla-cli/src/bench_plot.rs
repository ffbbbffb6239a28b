//! The PNG of `flotilla bench submit --png FILE`: throughput against requests in flight (left)
//! and latency percentiles against requests in flight (right), one line per API and batch size.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One measured point, as the submit bench reports it.
pub struct PlotPoint {
    /// The line it belongs to, for example "unary batch=1".
    pub series: String,
    pub in_flight: usize,
    pub tasks_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers the font once; false when there is none (plots are then drawn without text).
/// `flotilla simulate`'s chart uses it too.
pub(crate) fn font() -> bool {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Ok(bytes) = std::fs::read(FONT_PATH) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
        }
    });
    Path::new(FONT_PATH).exists()
}

/// Fails at once (before a long run) when `path` cannot be written: its directory is missing.
pub fn check_writable(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(anyhow!(
            "invalid --png {}: directory {} does not exist",
            path.display(),
            dir.display()
        ));
    }
    Ok(())
}

/// Draws `points` to `path` (PNG, 1400x560).
pub fn submit_png(path: &Path, points: &[PlotPoint]) -> Result<()> {
    if points.is_empty() {
        return Err(anyhow!("no points to draw"));
    }
    let text = font();
    let mut series: Vec<&str> = points.iter().map(|p| p.series.as_str()).collect();
    series.dedup();
    series.sort();
    series.dedup();
    let x_max = points.iter().map(|p| p.in_flight).max().unwrap_or(1) as f64 * 1.5;
    let rate_max = points.iter().map(|p| p.tasks_per_sec).fold(1.0, f64::max) * 1.15;
    let lat_min = points
        .iter()
        .map(|p| p.p50_ms)
        .fold(f64::MAX, f64::min)
        .max(0.01)
        / 1.5;
    let lat_max = points.iter().map(|p| p.p99_ms).fold(0.1, f64::max) * 1.5;

    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(700);
    let colour = |i: usize| Palette99::pick(i).to_rgba();

    // Throughput.
    let mut b = ChartBuilder::on(&left);
    b.margin(15);
    if text {
        b.caption("submit: tasks/s vs requests in flight", ("sans-serif", 20))
            .x_label_area_size(35)
            .y_label_area_size(70);
    }
    let mut chart = b
        .build_cartesian_2d((0.8f64..x_max).log_scale(), 0.0..rate_max)
        .map_err(|e| anyhow!("{e}"))?;
    if text {
        chart
            .configure_mesh()
            .x_desc("requests in flight")
            .y_desc("tasks/s")
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    for (i, s) in series.iter().enumerate() {
        let line: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.series == *s)
            .map(|p| (p.in_flight as f64, p.tasks_per_sec))
            .collect();
        let c = colour(i);
        let drawn = chart
            .draw_series(LineSeries::new(line.clone(), c.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?;
        if text {
            drawn
                .label(s.to_string())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        }
        chart
            .draw_series(line.iter().map(|p| Circle::new(*p, 4, c.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }

    // Latency: p50 (circles, thin) and p99 (triangles, thick), log scale.
    let mut b = ChartBuilder::on(&right);
    b.margin(15);
    if text {
        b.caption(
            "submit latency ms: p50 (thin) and p99 (thick)",
            ("sans-serif", 20),
        )
        .x_label_area_size(35)
        .y_label_area_size(70);
    }
    let mut chart = b
        .build_cartesian_2d((0.8f64..x_max).log_scale(), (lat_min..lat_max).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    if text {
        chart
            .configure_mesh()
            .x_desc("requests in flight")
            .y_desc("ms")
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    for (i, s) in series.iter().enumerate() {
        let c = colour(i);
        let of = |f: fn(&PlotPoint) -> f64| -> Vec<(f64, f64)> {
            points
                .iter()
                .filter(|p| p.series == *s)
                .map(|p| (p.in_flight as f64, f(p)))
                .collect()
        };
        let (p50, p99) = (of(|p| p.p50_ms), of(|p| p.p99_ms));
        chart
            .draw_series(LineSeries::new(p50.clone(), c.stroke_width(1)))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(p50.iter().map(|p| Circle::new(*p, 4, c.filled())))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(LineSeries::new(p99.clone(), c.stroke_width(3)))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(p99.iter().map(|p| TriangleMarker::new(*p, 6, c.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PNG is written, decodes as a PNG of the promised size, and is not blank.
    #[test]
    fn draws_a_png_of_the_points() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("submit.png");
        let mut points = Vec::new();
        for (series, scale) in [("unary batch=1", 1.0), ("stream batch=100", 20.0)] {
            for (in_flight, rate) in [(1, 900.0), (8, 6_000.0), (64, 30_000.0)] {
                points.push(PlotPoint {
                    series: series.into(),
                    in_flight,
                    tasks_per_sec: rate * scale,
                    p50_ms: 1.1 + in_flight as f64 / 10.0,
                    p99_ms: 3.0 + in_flight as f64 / 5.0,
                });
            }
        }
        submit_png(&path, &points).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG signature");
        // IHDR: width and height, big-endian, at bytes 16..24.
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!((w, h), (1400, 560));
        assert!(
            bytes.len() > 5_000,
            "lines were drawn: {} bytes",
            bytes.len()
        );
        assert!(
            submit_png(&path, &[]).is_err(),
            "nothing to draw is an error"
        );
        assert!(check_writable(&path).is_ok());
        let err = check_writable(&tmp.path().join("missing/x.png")).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
