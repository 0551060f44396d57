//! Robustness curves as hand-written SVG: axes, ticks, labels, a legend, one `<polyline>`
//! per series (line charts) or one `<circle>` per point (scatter).
//!
//! Written by hand rather than with `plotters`, whose text rendering needs system fonts
//! (fontconfig) at build and run time; SVG text is drawn by the viewer, so this module
//! has no dependencies and runs anywhere.

use std::fmt::Write as _;
use std::path::Path;

use crate::Result;
use tulip_adversarial::Norm;

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

/// What a chart shows, named in the line under its title: the run (or grid of runs), the
/// model and the number of images. Empty fields are left out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subject {
    /// Run name (or the grid's, for a chart of several runs).
    pub run: String,
    /// Model, e.g. `resnet22`.
    pub model: String,
    /// Images behind the chart (0: not said).
    pub images: usize,
}

impl Subject {
    /// `run · model · N images`, without the empty fields.
    pub fn caption(&self) -> String {
        let images = (self.images > 0).then(|| format!("{} images", self.images));
        [Some(self.run.clone()), Some(self.model.clone()), images]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

/// How an axis maps values to positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Equal steps for equal differences.
    Linear,
    /// Equal steps for equal ratios (decades).
    Log,
}

/// Largest over smallest positive value above which [`Scale::for_values`] picks a log
/// axis: two decades.
pub const LOG_SPAN: f64 = 100.0;

/// Fraction of an axis's span (in decades on a log axis) added at each end, so that no
/// curve or point lies on the frame.
pub const PADDING: f64 = 0.04;

impl Scale {
    /// [`Scale::Log`] when the positive finite values span more than two decades (largest
    /// over smallest above [`LOG_SPAN`]), else [`Scale::Linear`]. Zero and negative values
    /// do not count: a log axis draws them at its lower end.
    pub fn for_values(values: impl IntoIterator<Item = f64>) -> Scale {
        let (lo, hi) = values
            .into_iter()
            .filter(|v| v.is_finite() && *v > 0.0)
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        if hi > 0.0 && hi / lo > LOG_SPAN {
            Scale::Log
        } else {
            Scale::Linear
        }
    }
}

/// An axis: its scale and its range, padded (see [`Axis::fit`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Axis {
    /// Linear or logarithmic.
    pub scale: Scale,
    /// Lower end (positive on a log axis).
    pub lo: f64,
    /// Upper end.
    pub hi: f64,
}

impl Axis {
    /// The axis for `values` (non-finite ones ignored). Its range is `fixed` if given,
    /// else the values' (on a log axis: their positive ones'); its scale is `scale` if
    /// given, else [`Scale::for_values`] (a log axis with no positive value to place is
    /// linear). The range is then widened by [`PADDING`] of its span at each end, in
    /// decades on a log axis.
    pub fn fit(values: &[f64], fixed: Option<(f64, f64)>, scale: Option<Scale>) -> Axis {
        let finite = || values.iter().copied().filter(|v| v.is_finite());
        let mut scale = scale.unwrap_or_else(|| Scale::for_values(finite()));
        let positive = finite()
            .filter(|v| *v > 0.0)
            .fold(None, |acc: Option<(f64, f64)>, v| {
                Some(acc.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))))
            });
        if scale == Scale::Log {
            let range = match (fixed, positive) {
                (Some((lo, hi)), _) if lo > 0.0 && hi > lo => Some((lo, hi)),
                (Some((_, hi)), Some((lo, _))) if hi > lo => Some((lo, hi)),
                (None, range) => range,
                _ => None,
            };
            if let Some((lo, hi)) = range {
                let (l, h) = if hi > lo {
                    (lo.log10(), hi.log10())
                } else {
                    (lo.log10() - 1.0, hi.log10() + 1.0)
                };
                let pad = PADDING * (h - l);
                return Axis {
                    scale,
                    lo: 10f64.powf(l - pad),
                    hi: 10f64.powf(h + pad),
                };
            }
            scale = Scale::Linear;
        }
        let (lo, hi) = fixed.unwrap_or_else(|| {
            finite().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
        });
        let (lo, hi) = if !(lo.is_finite() && hi.is_finite()) {
            (0.0, 1.0)
        } else if hi - lo <= 0.0 {
            (lo - 0.5 * lo.abs().max(1.0), hi + 0.5 * hi.abs().max(1.0))
        } else {
            (lo, hi)
        };
        let pad = PADDING * (hi - lo);
        Axis {
            scale,
            lo: lo - pad,
            hi: hi + pad,
        }
    }

    /// Where `v` lies along the axis, from 0 (lower end) to 1 (upper end). Values outside
    /// the range are drawn at its ends; on a log axis, zero and negative values at its
    /// lower end.
    pub fn position(&self, v: f64) -> f64 {
        let t = match self.scale {
            Scale::Linear => (v - self.lo) / (self.hi - self.lo),
            Scale::Log if v <= 0.0 => 0.0,
            Scale::Log => (v / self.lo).log10() / (self.hi / self.lo).log10(),
        };
        t.clamp(0.0, 1.0)
    }

    /// The tick values inside the range: about six "nice" ones on a linear axis, the
    /// decades (with 2× and 5× when there are at most two) on a log axis.
    fn ticks(&self) -> Vec<f64> {
        match self.scale {
            Scale::Linear => ticks(self.lo, self.hi),
            Scale::Log => log_ticks(self.lo, self.hi),
        }
    }
}

/// Titles, ranges and scales of a chart. A range left `None` is fitted to the data, a
/// scale left `None` chosen from it ([`Scale::for_values`]); either way the range is
/// padded ([`Axis::fit`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// Smaller line under the title (e.g. [`Subject::caption`]); empty for none.
    pub subtitle: String,
    /// x-axis label.
    pub x_label: String,
    /// y-axis label.
    pub y_label: String,
    /// x range.
    pub x_range: Option<(f64, f64)>,
    /// y range.
    pub y_range: Option<(f64, f64)>,
    /// x scale.
    pub x_scale: Option<Scale>,
    /// y scale.
    pub y_scale: Option<Scale>,
}

const WIDTH: f64 = 680.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 55.0;
const COLOURS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22",
];

/// A line chart: one polyline per series.
pub fn line_chart(chart: &Chart, series: &[Series]) -> String {
    let frame = Frame::new(chart, series.iter().flat_map(|s| s.points.iter().copied()));
    let mut svg = frame.begin(chart);
    for (k, s) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        // Past the palette, the colours come back dashed.
        let dash = if k >= COLOURS.len() {
            r#" stroke-dasharray="6,3""#
        } else {
            ""
        };
        let pts: Vec<String> = finite(&s.points)
            .map(|(x, y)| format!("{:.2},{:.2}", frame.px(x), frame.py(y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.8"{dash} points="{}"/>"#,
            pts.join(" ")
        );
    }
    frame.legend(&mut svg, series, false);
    svg.push_str("</g>\n</svg>\n");
    svg
}

/// Fraction of images misclassified against the perturbation budget ε, one curve per
/// attack or run (e.g. from [`crate::misclassification_curve`]); y from 0 to 1, ε on a
/// log axis when the distances span more than two decades.
pub fn robustness_curves(norm: Norm, series: &[Series]) -> String {
    robustness_curves_for(norm, &Subject::default(), series)
}

/// [`robustness_curves`] with the run, model and image count under the title.
pub fn robustness_curves_for(norm: Norm, subject: &Subject, series: &[Series]) -> String {
    let chart = Chart {
        title: format!("Misclassified fraction vs {} budget", norm.label()),
        subtitle: subject.caption(),
        x_label: format!("ε ({} norm)", norm.label()),
        y_label: "fraction misclassified".into(),
        y_range: Some((0.0, 1.0)),
        y_scale: Some(Scale::Linear),
        ..Chart::default()
    };
    line_chart(&chart, series)
}

/// Scatter plot of certified lower bound (y) against attack L2 distance (x), with the
/// line y = x: every point must lie on or below it (see
/// [`crate::certificate_violations`]). `points` are `(attack distance, bound)`. Both
/// axes share one range and scale, logarithmic when the values span more than two
/// decades (bounds are often orders of magnitude below the distances).
pub fn certified_scatter(points: &[(f64, f64)]) -> String {
    certified_scatter_for(&Subject::default(), points)
}

/// [`certified_scatter`] with the run, model and image count under the title.
pub fn certified_scatter_for(subject: &Subject, points: &[(f64, f64)]) -> String {
    let values: Vec<f64> = finite(points).flat_map(|(x, y)| [x, y]).collect();
    let scale = Scale::for_values(values.iter().copied());
    // Linear: from 0, so the y = x line starts at the origin.
    let fixed = match scale {
        Scale::Linear => Some((
            0.0,
            values
                .iter()
                .copied()
                .fold(0.0f64, f64::max)
                .max(f64::MIN_POSITIVE),
        )),
        Scale::Log => None,
    };
    let axis = Axis::fit(&values, fixed, Some(scale));
    let chart = Chart {
        title: "Certified lower bound vs attack distance".into(),
        subtitle: subject.caption(),
        x_label: "attack distance (L2)".into(),
        y_label: "certified lower bound (L2)".into(),
        ..Chart::default()
    };
    let frame = Frame { x: axis, y: axis };
    let mut svg = frame.begin(&chart);
    let _ = writeln!(
        svg,
        r##"<line x1="{:.2}" y1="{:.2}" x2="{:.2}" y2="{:.2}" stroke="#555" stroke-dasharray="5,4"/>"##,
        frame.px(axis.lo),
        frame.py(axis.lo),
        frame.px(axis.hi),
        frame.py(axis.hi)
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

/// The two axes and their mapping to the plot area.
struct Frame {
    x: Axis,
    y: Axis,
}

impl Frame {
    fn new(chart: &Chart, points: impl Iterator<Item = (f64, f64)>) -> Self {
        let (xs, ys): (Vec<f64>, Vec<f64>) = points
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .unzip();
        Self {
            x: Axis::fit(&xs, chart.x_range, chart.x_scale),
            y: Axis::fit(&ys, chart.y_range, chart.y_scale),
        }
    }

    fn px(&self, x: f64) -> f64 {
        LEFT + self.x.position(x) * (WIDTH - LEFT - RIGHT)
    }

    fn py(&self, y: f64) -> f64 {
        HEIGHT - BOTTOM - self.y.position(y) * (HEIGHT - TOP - BOTTOM)
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
            r#"<text x="{:.1}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            (LEFT + WIDTH - RIGHT) / 2.0,
            escape(&chart.title)
        );
        if !chart.subtitle.is_empty() {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="40" text-anchor="middle" fill="#444">{}</text>"##,
                (LEFT + WIDTH - RIGHT) / 2.0,
                escape(&chart.subtitle)
            );
        }
        let (bottom, right) = (HEIGHT - BOTTOM, WIDTH - RIGHT);
        for t in self.x.ticks() {
            let x = self.px(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.2}" y1="{TOP}" x2="{x:.2}" y2="{bottom}" stroke="#e6e6e6"/><line x1="{x:.2}" y1="{bottom}" x2="{x:.2}" y2="{:.1}" stroke="black"/><text x="{x:.2}" y="{:.1}" text-anchor="middle">{}</text>"##,
                bottom + 5.0,
                bottom + 18.0,
                tick_label(t)
            );
        }
        for t in self.y.ticks() {
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
        let log = |a: &Axis| {
            if a.scale == Scale::Log {
                ", log scale"
            } else {
                ""
            }
        };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}{}</text>"#,
            (LEFT + right) / 2.0,
            HEIGHT - 12.0,
            escape(&chart.x_label),
            log(&self.x)
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}{}</text>"#,
            (TOP + bottom) / 2.0,
            escape(&chart.y_label),
            log(&self.y)
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
            let dash = if k >= COLOURS.len() {
                r#" stroke-dasharray="6,3""#
            } else {
                ""
            };
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
                    r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="2"{dash}/>"#,
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

/// The powers of ten inside `[lo, hi]` (every k-th of them past eight), with 2× and 5×
/// added when there are at most two.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return vec![lo];
    }
    let (first, last) = (
        (lo.log10() - 1e-9).ceil() as i32,
        (hi.log10() + 1e-9).floor() as i32,
    );
    let decades = (last - first + 1).max(0) as usize;
    let every = decades.div_ceil(8).max(1);
    let mut t: Vec<f64> = (first..=last)
        .step_by(every)
        .map(|k| 10f64.powi(k))
        .collect();
    if decades <= 2 {
        t = (first - 1..=last)
            .flat_map(|k| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(k)))
            .filter(|v| (lo..=hi).contains(v))
            .collect();
    }
    t
}

fn tick_label(v: f64) -> String {
    let v = if v.abs() < 1e-12 { 0.0 } else { v };
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e6) {
        // 1e-5, 2.5e-7: the mantissa without trailing zeros.
        let s = format!("{v:.2e}");
        let (mantissa, exponent) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e{exponent}");
    }
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
        // Small values keep their digits (a fixed-point label would read 0).
        assert_eq!(tick_label(1e-5), "1e-5");
        assert_eq!(tick_label(2.5e-7), "2.5e-7");
        assert_eq!(tick_label(0.001), "0.001");
    }

    #[test]
    fn an_axis_is_logarithmic_only_beyond_two_decades() {
        assert_eq!(Scale::for_values([0.01, 0.5, 3.0]), Scale::Log);
        assert_eq!(Scale::for_values([0.1, 5.0]), Scale::Linear);
        assert_eq!(Scale::for_values([0.01, 1.0]), Scale::Linear, "exactly two");
        // Zero, negative and non-finite values do not count.
        assert_eq!(Scale::for_values([0.0, 0.001, 0.5]), Scale::Log);
        assert_eq!(
            Scale::for_values([-100.0, 0.0, 1.0, 2.0, f64::INFINITY, f64::NAN]),
            Scale::Linear
        );
        assert_eq!(Scale::for_values([]), Scale::Linear);
        assert_eq!(Scale::for_values([1e-5, 1e-5]), Scale::Linear);
        // A log axis with nothing positive to place falls back to linear.
        let a = Axis::fit(&[0.0, 0.0], None, Some(Scale::Log));
        assert_eq!(a.scale, Scale::Linear);
    }

    #[test]
    fn every_range_is_padded_so_nothing_lies_on_the_frame() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12 * b.abs().max(1.0);
        // Linear, fitted: 4 % of the span (2) at each end.
        let a = Axis::fit(&[1.0, 2.0, 3.0], None, None);
        assert_eq!(a.scale, Scale::Linear);
        assert!(close(a.lo, 1.0 - 2.0 * PADDING) && close(a.hi, 3.0 + 2.0 * PADDING));
        // Linear, fixed (a fraction from 0 to 1): padded too.
        let f = Axis::fit(&[0.0, 1.0], Some((0.0, 1.0)), Some(Scale::Linear));
        assert!(close(f.lo, -PADDING) && close(f.hi, 1.0 + PADDING));
        for axis in [a, f] {
            assert_eq!((axis.position(axis.lo), axis.position(axis.hi)), (0.0, 1.0));
        }
        assert!(f.position(0.0) > 0.03 && f.position(1.0) < 0.97);
        // Log: padded in decades; zero is drawn at the lower end.
        let l = Axis::fit(&[0.0, 1e-3, 10.0], None, None);
        assert_eq!(l.scale, Scale::Log);
        let pad = PADDING * 4.0;
        assert!(close(l.lo, 10f64.powf(-3.0 - pad)) && close(l.hi, 10f64.powf(1.0 + pad)));
        assert_eq!(l.position(0.0), 0.0);
        assert!(close(l.position(1e-3), pad / (4.0 + 2.0 * pad)));
        assert!(close(l.position(0.1), 0.5), "midway in decades");
        assert!(l.position(10.0) < 0.97);
        assert_eq!(l.ticks(), [1e-3, 1e-2, 0.1, 1.0, 10.0]);
        // A fixed range with a non-positive lower end starts at the smallest value.
        let lf = Axis::fit(&[1e-4, 0.5], Some((0.0, 1.0)), Some(Scale::Log));
        assert!(lf.lo < 1e-4 && lf.lo > 1e-5 && lf.hi > 1.0);
        // One value: widened, then padded.
        let one = Axis::fit(&[2.0], None, None);
        assert!(one.lo < 2.0 && one.hi > 2.0);
        // Nothing to fit: the unit range, padded.
        let none = Axis::fit(&[f64::NAN], None, None);
        assert!(close(none.lo, -PADDING) && close(none.hi, 1.0 + PADDING));
    }

    #[test]
    fn log_ticks_are_decades_or_one_two_five() {
        assert_eq!(log_ticks(0.5e-6, 2e-1), [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1]);
        assert_eq!(log_ticks(0.15, 12.0), [0.2, 0.5, 1.0, 2.0, 5.0, 10.0]);
        let many = log_ticks(1e-20, 1.0);
        assert!(many.len() <= 9 && many.len() >= 5, "{many:?}");
    }

    /// The numbers after `attr="` in `svg`, for each occurrence.
    fn attribute(svg: &str, attr: &str) -> Vec<f64> {
        let key = format!(" {attr}=\"");
        svg.match_indices(&key)
            .map(|(i, _)| {
                let rest = &svg[i + key.len()..];
                rest[..rest.find('"').unwrap()].parse().unwrap()
            })
            .collect()
    }

    #[test]
    fn plots_name_their_subject_and_keep_the_data_off_the_frame() {
        let subject = Subject {
            run: "best-seed1".into(),
            model: "resnet22".into(),
            images: 1000,
        };
        assert_eq!(subject.caption(), "best-seed1 · resnet22 · 1000 images");
        let partial = Subject {
            run: "grid".into(),
            ..Subject::default()
        };
        assert_eq!(partial.caption(), "grid");

        // Bounds four decades below the distances: both axes log, every point inside.
        let points = [(0.3, 2e-5), (1.5, 4e-5), (0.05, 1e-6), (0.0, 3e-5)];
        let svg = certified_scatter_for(&subject, &points);
        assert!(svg.contains("best-seed1 · resnet22 · 1000 images"), "{svg}");
        assert_eq!(svg.matches("log scale").count(), 2);
        let (cx, cy) = (attribute(&svg, "cx"), attribute(&svg, "cy"));
        let (right, bottom) = (WIDTH - RIGHT, HEIGHT - BOTTOM);
        // The last circle is the legend's.
        for (&x, &y) in cx.iter().zip(&cy).take(points.len()) {
            assert!((LEFT..=right).contains(&x) && (TOP..=bottom).contains(&y));
            assert!(y > TOP + 1.0 && y < bottom - 1.0, "{y} on the frame");
        }
        // Only the already misclassified image (distance 0) sits at the log axis's end.
        assert_eq!(
            cx.iter().take(points.len()).filter(|&&x| x == LEFT).count(),
            1
        );

        // Distances within one decade: linear, from 0.
        let lin = certified_scatter(&[(0.5, 0.1), (1.0, 0.2)]);
        assert!(!lin.contains("log scale"));

        // Curves at fraction 0 and 1 are drawn inside the frame, not on it.
        let curves = robustness_curves_for(
            Norm::L2,
            &subject,
            &[Series::new(
                "a",
                vec![(0.0, 0.0), (0.001, 0.0), (0.001, 1.0), (2.0, 1.0)],
            )],
        );
        assert!(curves.contains("ε (L2 norm), log scale"));
        let line = curves.lines().find(|l| l.starts_with("<polyline")).unwrap();
        let pts = &line[line.find("points=\"").unwrap() + 8..line.rfind('"').unwrap()];
        for p in pts.split(' ') {
            let (x, y) = p.split_once(',').unwrap();
            let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!((LEFT..=right).contains(&x));
            assert!(y > TOP + 5.0 && y < bottom - 5.0, "{y} on the frame");
        }
    }
}
