//! Hand-written SVG charts (no plotting dependency): accuracy against latency (`eval --svg`),
//! one labelled point per variant on a log latency axis; and speed against batch size
//! (`bench --svg`), one line per variant.

use std::fmt::Write;

/// One point of the chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Text next to the point.
    pub label: String,
    /// Latency in milliseconds (x, log scale).
    pub latency_ms: f64,
    /// Top-1 accuracy in percent (y).
    pub top1: f64,
}

const W: f64 = 900.0;
const H: f64 = 560.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// An SVG document plotting top-1 against latency.
pub fn accuracy_vs_latency(title: &str, points: &[Point]) -> String {
    let finite: Vec<&Point> = points
        .iter()
        .filter(|p| p.latency_ms > 0.0 && p.latency_ms.is_finite() && p.top1.is_finite())
        .collect();
    let (mut x0, mut x1) = finite.iter().fold((f64::INFINITY, 0.0f64), |(a, b), p| {
        (a.min(p.latency_ms), b.max(p.latency_ms))
    });
    let (mut y0, mut y1) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.top1), b.max(p.top1))
        });
    if finite.is_empty() {
        (x0, x1, y0, y1) = (1.0, 10.0, 0.0, 100.0);
    }
    // A 1-2-5 tick range on x, multiples of 5 points on y, with a margin.
    let ticks = log_ticks(x0 / 1.2, x1 * 1.2);
    let (lx0, lx1) = (ticks[0].log10(), ticks[ticks.len() - 1].log10());
    let (y0, y1) = (
        ((y0 - 2.0) / 5.0).floor() * 5.0,
        ((y1 + 2.0) / 5.0).ceil() * 5.0,
    );
    let px = |ms: f64| LEFT + (ms.log10() - lx0) / (lx1 - lx0) * (W - LEFT - RIGHT);
    let py = |t: f64| H - BOTTOM - (t - y0) / (y1 - y0) * (H - TOP - BOTTOM);
    let mut s = open_svg(W, title);
    // Grid and ticks.
    for &v in &ticks {
        let x = px(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            H - BOTTOM
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            H - BOTTOM + 18.0,
            trim_number(v)
        );
    }
    let mut t = y0;
    while t <= y1 + 1e-9 {
        let y = py(t);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            W - RIGHT
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{t}</text>"#,
            LEFT - 8.0,
            y + 4.0
        );
        t += 5.0;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="#333"/>"##,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">latency per image (ms, log scale)</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">top-1 accuracy (%)</text>"#,
        (TOP + H - BOTTOM) / 2.0
    );
    for p in finite {
        let (x, y) = (px(p.latency_ms), py(p.top1));
        let _ = writeln!(
            s,
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="#1f77b4"><title>{}: {:.1}% at {:.2} ms</title></circle>"##,
            escape(&p.label),
            p.top1,
            p.latency_ms
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="10">{}</text>"#,
            x + 6.0,
            y - 4.0,
            escape(&p.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The start of an SVG document `width` x [`H`] on white, with `title` centred on top.
fn open_svg(width: f64, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{H}" viewBox="0 0 {width} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    s
}

/// One variant's measurements over batch sizes, for [`speed_vs_batch`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The variant.
    pub label: String,
    /// `(batch size, ms per image, GFLOP/s)`, by increasing batch size.
    pub points: Vec<(usize, f64, f64)>,
}

/// Colours that stay distinguishable for a dozen lines or so.
const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// An SVG document with two panels over batch size (log scale): milliseconds per image (log
/// scale) and achieved GFLOP/s, one line per variant.
pub fn speed_vs_batch(title: &str, series: &[Series]) -> String {
    const PW: f64 = 440.0;
    const GAP: f64 = 40.0;
    let width = LEFT + 2.0 * PW + GAP + RIGHT + 150.0;
    let mut s = open_svg(width, title);
    let all: Vec<&(usize, f64, f64)> = series.iter().flat_map(|x| &x.points).collect();
    let batches = log_ticks(
        all.iter().map(|p| p.0 as f64).fold(f64::INFINITY, f64::min),
        all.iter().map(|p| p.0 as f64).fold(0.0, f64::max),
    );
    let ms = log_ticks(
        all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min) / 1.2,
        all.iter().map(|p| p.1).fold(0.0, f64::max) * 1.2,
    );
    let top = all.iter().map(|p| p.2).fold(0.0, f64::max);
    let step = nice_step(top / 5.0);
    let gflops: Vec<f64> = (0..=((top / step).ceil() as usize).max(1))
        .map(|i| i as f64 * step)
        .collect();
    let panels = [
        ("ms per image (log scale)", LEFT, true),
        ("GFLOP/s", LEFT + PW + GAP, false),
    ];
    for (name, x0, log_y) in panels {
        let yt: &[f64] = if log_y { &ms } else { &gflops };
        let (ya, yb) = (yt[0], yt[yt.len() - 1]);
        let (bx0, bx1) = (batches[0].log10(), batches[batches.len() - 1].log10());
        let px = |b: f64| x0 + (b.log10() - bx0) / (bx1 - bx0).max(1e-9) * PW;
        let py = |v: f64| {
            let f = if log_y {
                (v.log10() - ya.log10()) / (yb.log10() - ya.log10()).max(1e-9)
            } else {
                (v - ya) / (yb - ya).max(1e-9)
            };
            H - BOTTOM - f * (H - TOP - BOTTOM)
        };
        for &b in &batches {
            let _ = writeln!(
                s,
                r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="#ddd"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">{3}</text>"##,
                px(b),
                H - BOTTOM,
                H - BOTTOM + 18.0,
                trim_number(b)
            );
        }
        for &v in yt {
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{4}</text>"##,
                py(v),
                x0 + PW,
                x0 - 6.0,
                py(v) + 4.0,
                trim_number(v)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{x0}" y="{TOP}" width="{PW}" height="{:.1}" fill="none" stroke="#333"/><text x="{:.1}" y="{:.1}" text-anchor="middle">batch size (log scale)</text><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="13">{name}</text>"##,
            H - TOP - BOTTOM,
            x0 + PW / 2.0,
            H - 15.0,
            x0 + PW / 2.0,
            TOP - 8.0
        );
        for (i, line) in series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let pts: Vec<String> = line
                .points
                .iter()
                .map(|&(b, m, g)| {
                    format!("{:.1},{:.1}", px(b as f64), py(if log_y { m } else { g }))
                })
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{}><title>{}</title></polyline>"#,
                pts.join(" "),
                dash(i),
                escape(&line.label)
            );
            // Markers too: a single batch size draws no line.
            for p in &pts {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>"#);
            }
        }
    }
    // One legend for both panels.
    for (i, line) in series.iter().enumerate() {
        let y = TOP + 14.0 + 18.0 * i as f64;
        let x = LEFT + 2.0 * PW + GAP + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="3"{}/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
            x + 18.0,
            PALETTE[i % PALETTE.len()],
            dash(i),
            x + 24.0,
            y + 4.0,
            escape(&line.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Past the palette, lines repeat its colours dashed, so that 16 variants stay distinct.
fn dash(i: usize) -> &'static str {
    match i / PALETTE.len() {
        0 => "",
        1 => r#" stroke-dasharray="6 3""#,
        _ => r#" stroke-dasharray="2 2""#,
    }
}

/// A 1, 2 or 5 times a power of ten at or above `raw` (axis steps).
fn nice_step(raw: f64) -> f64 {
    if !(raw > 0.0 && raw.is_finite()) {
        return 1.0;
    }
    let decade = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * decade)
        .find(|&v| v >= raw)
        .unwrap_or(10.0 * decade)
}

/// The 1-2-5 sequence (..., 0.5, 1, 2, 5, 10, ...) from the largest value at or below `lo` to the
/// smallest at or above `hi`.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo > 0.0 && hi.is_finite() && hi >= lo) {
        return vec![1.0, 10.0];
    }
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    'outer: loop {
        for m in [1.0, 2.0, 5.0] {
            ticks.push(decade * m);
            if decade * m >= hi {
                break 'outer;
            }
        }
        decade *= 10.0;
    }
    while ticks.len() > 2 && ticks[1] <= lo {
        ticks.remove(0);
    }
    ticks
}

fn trim_number(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_point_with_its_label() {
        let pts = vec![
            Point {
                label: "a<b".into(),
                latency_ms: 0.4,
                top1: 41.0,
            },
            Point {
                label: "big".into(),
                latency_ms: 11.0,
                top1: 70.5,
            },
        ];
        let svg = accuracy_vs_latency("t", &pts);
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains("a&lt;b") && svg.contains(">big<"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn speed_chart_has_a_line_per_variant_in_each_panel() {
        let series = vec![
            Series {
                label: "small".into(),
                points: vec![(1, 0.5, 20.0), (8, 0.3, 33.0)],
            },
            Series {
                label: "big".into(),
                points: vec![(1, 11.0, 100.0), (8, 9.0, 120.0)],
            },
        ];
        let svg = speed_vs_batch("speed", &series);
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("ms per image") && svg.contains("GFLOP/s"));
        assert!(svg.contains(">small<") && svg.contains(">big<"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(nice_step(23.0), 50.0);
        assert_eq!(nice_step(0.7), 1.0);
    }

    #[test]
    fn ticks_bracket_the_data() {
        assert_eq!(log_ticks(2.0, 96.0), [2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        assert_eq!(log_ticks(0.3, 0.4), [0.2, 0.5]);
        assert_eq!(log_ticks(0.0, 1.0), [1.0, 10.0]);
    }
}
