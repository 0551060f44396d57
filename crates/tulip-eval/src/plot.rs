//! Robustness curves as hand-written SVG: axes, ticks, labels, a legend, one `<polyline>`
//! per series (line charts) or one `<circle>` per point (scatter).
//!
//! Written by hand rather than with `plotters`, whose text rendering needs system fonts
//! (fontconfig) at build and run time; SVG text is drawn by the viewer, so this module
//! has no dependencies and runs anywhere.

use std::fmt::Write as _;
use std::path::Path;

use crate::report::DistanceNorm;
use crate::Result;

/// One named curve (or point cloud).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// `(x, y)` points; non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series from a name and points.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
        }
    }
}

/// Titles and ranges of a chart. A range left `None` is fitted to the data.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// x-axis label.
    pub x_label: String,
    /// y-axis label.
    pub y_label: String,
    /// x range.
    pub x_range: Option<(f64, f64)>,
    /// y range.
    pub y_range: Option<(f64, f64)>,
}

const WIDTH: f64 = 680.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// A line chart: one polyline per series.
pub fn line_chart(chart: &Chart, series: &[Series]) -> String {
    let frame = Frame::new(chart, series.iter().flat_map(|s| s.points.iter()));
    let mut svg = frame.begin(chart);
    for (k, s) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let pts: Vec<String> = finite(&s.points)
            .map(|(x, y)| format!("{:.2},{:.2}", frame.px(x), frame.py(y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{}"/>"#,
            pts.join(" ")
        );
    }
    frame.legend(&mut svg, series, false);
    svg.push_str("</g>\n</svg>\n");
    svg
}

/// Fraction of images misclassified against the perturbation budget ε, one curve per
/// attack or run (e.g. from [`crate::misclassification_curve`]); y from 0 to 1.
pub fn robustness_curves(norm: DistanceNorm, series: &[Series]) -> String {
    let chart = Chart {
        title: format!("Misclassified fraction vs {} budget", norm.label()),
        x_label: format!("ε ({} norm)", norm.label()),
        y_label: "fraction misclassified".into(),
        x_range: None,
        y_range: Some((0.0, 1.0)),
    };
    line_chart(&chart, series)
}

/// Scatter plot of certified lower bound (y) against attack L2 distance (x), with the
/// line y = x: every point must lie on or below it (see
/// [`crate::certificate_violations`]). `points` are `(attack distance, bound)`.
pub fn certified_scatter(points: &[(f64, f64)]) -> String {
    let hi = finite(points)
        .map(|(x, y)| x.max(y))
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let chart = Chart {
        title: "Certified lower bound vs attack distance".into(),
        x_label: "attack distance (L2)".into(),
        y_label: "certified lower bound (L2)".into(),
        x_range: Some((0.0, hi)),
        y_range: Some((0.0, hi)),
    };
    let frame = Frame::new(&chart, std::iter::empty());
    let mut svg = frame.begin(&chart);
    let (x0, x1) = frame.x;
    let _ = writeln!(
        svg,
        r##"<line x1="{:.2}" y1="{:.2}" x2="{:.2}" y2="{:.2}" stroke="#555" stroke-dasharray="5,4"/>"##,
        frame.px(x0),
        frame.py(x0),
        frame.px(x1),
        frame.py(x1)
    );
    for (x, y) in finite(points) {
        let _ = writeln!(
            svg,
            r#"<circle cx="{:.2}" cy="{:.2}" r="2.2" fill="{}" fill-opacity="0.6"/>"#,
            frame.px(x),
            frame.py(y),
            COLOURS[0]
        );
    }
    let legend = [
        Series::new("images", Vec::new()),
        Series::new("y = x", Vec::new()),
    ];
    frame.legend(&mut svg, &legend, true);
    svg.push_str("</g>\n</svg>\n");
    svg
}

/// Writes an SVG document to `path`, atomically.
///
/// # Errors
/// The file cannot be written.
pub fn write_svg(path: &Path, svg: &str) -> Result<()> {
    crate::error::write_file(path, svg.as_bytes())
}

fn finite(points: &[(f64, f64)]) -> impl Iterator<Item = (f64, f64)> + '_ {
    points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
}

/// Data ranges and their mapping to the plot area.
struct Frame {
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn new<'a>(chart: &Chart, points: impl Iterator<Item = &'a (f64, f64)>) -> Self {
        let (mut xr, mut yr) = (
            (f64::INFINITY, f64::NEG_INFINITY),
            (f64::INFINITY, f64::NEG_INFINITY),
        );
        for &(x, y) in points.filter(|(x, y)| x.is_finite() && y.is_finite()) {
            xr = (xr.0.min(x), xr.1.max(x));
            yr = (yr.0.min(y), yr.1.max(y));
        }
        let fix = |r: (f64, f64)| {
            if !r.0.is_finite() {
                (0.0, 1.0)
            } else if r.1 - r.0 <= 0.0 {
                (
                    r.0 - 0.5 * r.0.abs().max(1.0),
                    r.1 + 0.5 * r.1.abs().max(1.0),
                )
            } else {
                r
            }
        };
        Self {
            x: chart.x_range.unwrap_or_else(|| fix(xr)),
            y: chart.y_range.unwrap_or_else(|| fix(yr)),
        }
    }

    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x.0) / (self.x.1 - self.x.0) * (WIDTH - LEFT - RIGHT)
    }

    fn py(&self, y: f64) -> f64 {
        HEIGHT - BOTTOM - (y - self.y.0) / (self.y.1 - self.y.0) * (HEIGHT - TOP - BOTTOM)
    }

    /// The document head: background, title, axes, ticks, grid and axis labels.
    fn begin(&self, chart: &Chart) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<g>"#);
        let _ = writeln!(
            s,
            r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
            (LEFT + WIDTH - RIGHT) / 2.0,
            escape(&chart.title)
        );
        let (bottom, right) = (HEIGHT - BOTTOM, WIDTH - RIGHT);
        for t in ticks(self.x.0, self.x.1) {
            let x = self.px(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.2}" y1="{TOP}" x2="{x:.2}" y2="{bottom}" stroke="#e6e6e6"/><line x1="{x:.2}" y1="{bottom}" x2="{x:.2}" y2="{:.1}" stroke="black"/><text x="{x:.2}" y="{:.1}" text-anchor="middle">{}</text>"##,
                bottom + 5.0,
                bottom + 18.0,
                tick_label(t)
            );
        }
        for t in ticks(self.y.0, self.y.1) {
            let y = self.py(t);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.2}" x2="{right}" y2="{y:.2}" stroke="#e6e6e6"/><line x1="{:.1}" y1="{y:.2}" x2="{LEFT}" y2="{y:.2}" stroke="black"/><text x="{:.1}" y="{:.2}" text-anchor="end">{}</text>"##,
                LEFT - 5.0,
                LEFT - 8.0,
                y + 4.0,
                tick_label(t)
            );
        }
        let _ = writeln!(
            s,
            r#"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="black"/>"#,
            right - LEFT,
            bottom - TOP
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (LEFT + right) / 2.0,
            HEIGHT - 12.0,
            escape(&chart.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            (TOP + bottom) / 2.0,
            escape(&chart.y_label)
        );
        s
    }

    /// Legend to the right of the plot. In a scatter the first entry is a dot and the
    /// second the dashed reference line.
    fn legend(&self, svg: &mut String, series: &[Series], scatter: bool) {
        let x = WIDTH - RIGHT + 15.0;
        for (k, s) in series.iter().enumerate() {
            let y = TOP + 10.0 + 20.0 * k as f64;
            let colour = COLOURS[k % COLOURS.len()];
            let mark = match (scatter, k) {
                (true, 0) => format!(
                    r#"<circle cx="{:.1}" cy="{y:.1}" r="3" fill="{colour}"/>"#,
                    x + 10.0
                ),
                (true, _) => format!(
                    r##"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#555" stroke-dasharray="5,4"/>"##,
                    x + 20.0
                ),
                _ => format!(
                    r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="2"/>"#,
                    x + 20.0
                ),
            };
            let _ = writeln!(
                svg,
                r#"{mark}<text x="{:.1}" y="{:.1}">{}</text>"#,
                x + 26.0,
                y + 4.0,
                escape(&s.name)
            );
        }
    }
}

/// About six "nice" tick values (1, 2 or 5 × 10ᵏ apart) inside `[lo, hi]`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return vec![lo];
    }
    let raw = span / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

fn tick_label(v: f64) -> String {
    let v = if v.abs() < 1e-12 { 0.0 } else { v };
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.len() > 9 {
        format!("{v:.2e}")
    } else {
        s.to_string()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice_and_inside() {
        let labels: Vec<String> = ticks(0.0, 1.0).into_iter().map(tick_label).collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        let t = ticks(0.013, 0.87);
        assert!(t.iter().all(|v| (0.013..=0.87).contains(v)), "{t:?}");
        assert_eq!(tick_label(0.30000000000000004), "0.3");
    }
}
