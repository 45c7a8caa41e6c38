//! The report's two plots as inline SVG, written by hand: a cost-vs-accuracy scatter with
//! 95% whiskers and the Pareto frontier, and per-model bars of accuracy and latency.
//!
//! Hand-written rather than drawn with a plotting crate because both plots are small, need
//! model names placed next to points without overlap (a plotting crate without a font
//! backend cannot measure text either) and must come out byte-identical on every machine.
//! All text goes through [`escape`]; coordinates are printed with one decimal.

use std::fmt::Write as _;

use super::markup::escape;
use super::{ModelStats, pct, usd};

/// Tableau 10: distinct, colour-blind-friendly enough, readable on white.
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

pub(crate) fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

const FONT: &str = "font-family=\"system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif\"";

/// A rough text width (px) for label placement: the average glyph of a sans-serif font is
/// about 0.58 em wide.
fn text_width(s: &str, size: f64) -> f64 {
    s.chars().count() as f64 * size * 0.58
}

fn short(s: &str, max: usize) -> String {
    super::truncate_chars(s, max)
}

/// The "nice" step (1, 2 or 5 times a power of ten) that cuts `span` into about `target`
/// intervals.
fn nice_step(span: f64, target: usize) -> f64 {
    let span = span.max(f64::EPSILON);
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= target as f64 * 1.25)
        .unwrap_or(10.0 * mag)
}

/// Tick values at multiples of a nice step inside `[lo, hi]`.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let step = nice_step(hi - lo, target);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// An axis from 0 to a nice number at or above `max`, with its ticks.
fn nice_axis(max: f64, target: usize) -> (f64, Vec<f64>) {
    let step = nice_step(max, target);
    let top = (max / step - 1e-9).ceil().max(1.0) * step;
    (top, nice_ticks(0.0, top, target))
}

/// A dollar tick label without trailing zeros: `$0.005`, `$0.01`, `$2`.
fn tick_usd(x: f64) -> String {
    let s = usd(x);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

enum XScale {
    Linear { max: f64 },
    Log { lo: f64, hi: f64 },
}

impl XScale {
    fn frac(&self, x: f64) -> f64 {
        match self {
            XScale::Linear { max } => x / max,
            XScale::Log { lo, hi } => (x.log10() - lo) / (hi - lo),
        }
    }

    fn ticks(&self) -> Vec<f64> {
        match self {
            XScale::Linear { max } => nice_axis(*max, 5).1,
            XScale::Log { lo, hi } => {
                let decades = (lo.floor() as i32)..=(hi.ceil() as i32);
                let many = hi - lo > 4.0;
                decades
                    .flat_map(|d| {
                        let mults: &[f64] = if many { &[1.0] } else { &[1.0, 2.0, 5.0] };
                        mults
                            .iter()
                            .map(move |m| m * 10f64.powi(d))
                            .collect::<Vec<_>>()
                    })
                    .filter(|t| {
                        let l = t.log10();
                        l >= *lo - 1e-9 && l <= *hi + 1e-9
                    })
                    .collect()
            }
        }
    }
}

/// The cost-vs-accuracy scatter. `None` when no model has both a known cost and an accuracy.
pub(crate) fn cost_accuracy(models: &[ModelStats], frontier: &[String]) -> Option<String> {
    let pts: Vec<(usize, &ModelStats, f64, f64)> = models
        .iter()
        .enumerate()
        .filter_map(|(i, m)| Some((i, m, m.cost_per_item_usd?, m.accuracy?)))
        .collect();
    if pts.is_empty() {
        return None;
    }
    let (w, h) = (760.0, 440.0);
    let (left, right, top, bottom) = (64.0, 210.0, 24.0, 56.0);
    let (pw, ph) = (w - left - right, h - top - bottom);

    let min_cost = pts.iter().map(|p| p.2).fold(f64::INFINITY, f64::min);
    let max_cost = pts.iter().map(|p| p.2).fold(0.0, f64::max);
    let scale = if min_cost > 0.0 && max_cost / min_cost >= 10.0 {
        XScale::Log {
            lo: min_cost.log10() - 0.15,
            hi: max_cost.log10() + 0.15,
        }
    } else {
        XScale::Linear {
            max: nice_axis((max_cost * 1.1).max(1e-9), 5).0,
        }
    };

    let lows = pts.iter().map(|p| p.1.accuracy_ci.map_or(p.3, |c| c.low));
    let highs = pts.iter().map(|p| p.1.accuracy_ci.map_or(p.3, |c| c.high));
    let y_lo = ((lows.fold(1.0, f64::min) - 0.02) * 10.0).floor().max(0.0) / 10.0;
    let y_hi = ((highs.fold(0.0, f64::max) + 0.02) * 10.0).ceil().min(10.0) / 10.0;
    let y_hi = if y_hi - y_lo < 0.1 {
        (y_lo + 0.1).min(1.0)
    } else {
        y_hi
    };
    let y_lo = y_lo.min(y_hi - 0.1).max(0.0);
    let px = |x: f64| left + scale.frac(x) * pw;
    let py = |y: f64| top + (1.0 - (y - y_lo) / (y_hi - y_lo)) * ph;

    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plot\" id=\"plot-cost-accuracy\" \
         viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" {FONT} \
         font-size=\"12\"><title>Accuracy against mean cost per item</title>"
    );
    let _ = write!(
        s,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"#fafafa\" \
         stroke=\"#999\"/>"
    );
    // Grid and ticks.
    let y_step = if y_hi - y_lo > 0.35 { 0.1 } else { 0.05 };
    for t in nice_ticks(y_lo, y_hi, ((y_hi - y_lo) / y_step).round() as usize) {
        let y = py(t);
        let _ = write!(
            s,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e3e3e3\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#333\">{:.0}%</text>",
            left + pw,
            left - 6.0,
            y + 4.0,
            t * 100.0
        );
    }
    for t in scale.ticks() {
        let x = px(t);
        let _ = write!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#e3e3e3\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#333\">{}</text>",
            top + ph,
            top + ph + 16.0,
            escape(&tick_usd(t))
        );
    }
    let x_title = match scale {
        XScale::Linear { .. } => "mean cost per item (USD)",
        XScale::Log { .. } => "mean cost per item (USD, log scale)",
    };
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"13\" \
         fill=\"#111\">{x_title}</text>\
         <text transform=\"translate(16 {:.1}) rotate(-90)\" text-anchor=\"middle\" \
         font-size=\"13\" fill=\"#111\">accuracy (95% CI)</text>",
        left + pw / 2.0,
        h - 14.0,
        top + ph / 2.0
    );

    // The frontier, as a dashed line through its points in cost order.
    let on_frontier: Vec<&(usize, &ModelStats, f64, f64)> = frontier
        .iter()
        .filter_map(|name| pts.iter().find(|p| &p.1.model == name))
        .collect();
    if on_frontier.len() > 1 {
        let path: Vec<String> = on_frontier
            .iter()
            .map(|p| format!("{:.1},{:.1}", px(p.2), py(p.3)))
            .collect();
        let _ = write!(
            s,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"#555\" stroke-width=\"1.5\" \
             stroke-dasharray=\"6 4\"/>",
            path.join(" ")
        );
    }

    // Whiskers and points.
    for &(i, m, c, a) in &pts {
        let (x, y) = (px(c), py(a));
        let col = colour(i);
        if let Some(ci) = m.accuracy_ci {
            let (y1, y2) = (py(ci.low), py(ci.high));
            let _ = write!(
                s,
                "<line x1=\"{x:.1}\" y1=\"{y1:.1}\" x2=\"{x:.1}\" y2=\"{y2:.1}\" stroke=\"{col}\" \
                 stroke-width=\"2\"/><line x1=\"{:.1}\" y1=\"{y1:.1}\" x2=\"{:.1}\" \
                 y2=\"{y1:.1}\" stroke=\"{col}\" stroke-width=\"2\"/><line x1=\"{:.1}\" \
                 y1=\"{y2:.1}\" x2=\"{:.1}\" y2=\"{y2:.1}\" stroke=\"{col}\" stroke-width=\"2\"/>",
                x - 5.0,
                x + 5.0,
                x - 5.0,
                x + 5.0
            );
        }
        let front = frontier.contains(&m.model);
        let _ = write!(
            s,
            "<circle class=\"point\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"7\" fill=\"{}\" \
             stroke=\"{col}\" stroke-width=\"3\"><title>{}: {} at {} per item</title></circle>",
            if front { col } else { "#fff" },
            escape(&m.model),
            pct(a),
            escape(&usd(c))
        );
    }

    // Point labels: to the right of each point, nudged apart vertically.
    let mut labels: Vec<(f64, f64, String)> = pts
        .iter()
        .map(|&(_, m, c, a)| (px(c), py(a), short(&m.model, 22)))
        .collect();
    labels.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.total_cmp(&b.0)));
    let mut placed: Vec<(f64, f64, f64)> = Vec::new();
    for (x, y, text) in labels {
        let tw = text_width(&text, 12.0);
        let mut lx = x + 11.0;
        if lx + tw > left + pw - 4.0 {
            lx = x - 11.0 - tw;
        }
        let mut ly = y - 9.0;
        while placed
            .iter()
            .any(|&(px0, py0, pw0)| (ly - py0).abs() < 14.0 && lx < px0 + pw0 && px0 < lx + tw)
        {
            ly += 14.0;
        }
        placed.push((lx, ly, tw));
        let _ = write!(
            s,
            "<text x=\"{lx:.1}\" y=\"{ly:.1}\" fill=\"#111\" paint-order=\"stroke\" \
             stroke=\"#fafafa\" stroke-width=\"3\">{}</text>",
            escape(&text)
        );
    }

    // Legend.
    let lx = left + pw + 16.0;
    let mut ly = top + 8.0;
    for &(i, m, _, _) in &pts {
        let front = frontier.contains(&m.model);
        let _ = write!(
            s,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"{}\" stroke=\"{}\" \
             stroke-width=\"2.5\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#111\">{}</text>",
            lx + 5.0,
            ly,
            if front { colour(i) } else { "#fff" },
            colour(i),
            lx + 16.0,
            ly + 4.0,
            escape(&short(&m.model, 26))
        );
        ly += 18.0;
    }
    ly += 6.0;
    let _ = write!(
        s,
        "<line x1=\"{lx:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"#555\" \
         stroke-width=\"1.5\" stroke-dasharray=\"6 4\"/><text x=\"{:.1}\" y=\"{:.1}\" \
         fill=\"#333\">Pareto frontier</text><text x=\"{lx:.1}\" y=\"{:.1}\" \
         fill=\"#333\">filled: on the frontier</text>",
        lx + 12.0,
        lx + 16.0,
        ly + 4.0,
        ly + 22.0
    );
    s.push_str("</svg>");
    Some(s)
}

/// Horizontal bars per model: accuracy with its 95% whisker, and p50 latency with a p95
/// tick. `None` when no model answered anything.
pub(crate) fn accuracy_latency(models: &[ModelStats]) -> Option<String> {
    if models
        .iter()
        .all(|m| m.accuracy.is_none() && m.latency_p50_ms.is_none())
    {
        return None;
    }
    let row = 30.0;
    let (label_w, panel_w, gap) = (200.0, 250.0, 56.0);
    let (top, bottom) = (34.0, 42.0);
    let w = label_w + panel_w * 2.0 + gap + 30.0;
    let h = top + bottom + row * models.len() as f64;
    let acc_x = label_w;
    let lat_x = label_w + panel_w + gap;
    let max_lat = models
        .iter()
        .filter_map(|m| m.latency_p95_ms.or(m.latency_p50_ms))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let (lat_max, lat_ticks) = nice_axis(max_lat * 1.02, 4);
    let ph = row * models.len() as f64;

    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plot\" id=\"plot-accuracy-latency\" \
         viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" {FONT} \
         font-size=\"12\"><title>Accuracy and latency per model</title>\
         <text x=\"{:.1}\" y=\"18\" text-anchor=\"middle\" font-size=\"13\" \
         fill=\"#111\">accuracy (95% CI)</text><text x=\"{:.1}\" y=\"18\" \
         text-anchor=\"middle\" font-size=\"13\" fill=\"#111\">latency: bar p50, tick \
         p95</text>",
        acc_x + panel_w / 2.0,
        lat_x + panel_w / 2.0
    );
    for (x0, ticks, max, fmt) in [
        (
            acc_x,
            nice_ticks(0.0, 1.0, 5),
            1.0,
            &(|t: f64| format!("{:.0}%", t * 100.0)) as &dyn Fn(f64) -> String,
        ),
        (
            lat_x,
            lat_ticks.clone(),
            lat_max,
            &(|t: f64| super::terminal::ms(t as u64)) as &dyn Fn(f64) -> String,
        ),
    ] {
        let _ = write!(
            s,
            "<rect x=\"{x0:.1}\" y=\"{top}\" width=\"{panel_w}\" height=\"{ph:.1}\" \
             fill=\"#fafafa\" stroke=\"#999\"/>"
        );
        for t in ticks {
            let x = x0 + t / max * panel_w;
            let _ = write!(
                s,
                "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#e3e3e3\"/>\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#333\">{}</text>",
                top + ph,
                top + ph + 16.0,
                escape(&fmt(t))
            );
        }
    }
    for (i, m) in models.iter().enumerate() {
        let y = top + row * i as f64;
        let mid = y + row / 2.0;
        let col = colour(i);
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#111\">{}</text>",
            label_w - 10.0,
            mid + 4.0,
            escape(&short(&m.model, 28))
        );
        match m.accuracy {
            Some(a) => {
                let _ = write!(
                    s,
                    "<rect class=\"bar\" x=\"{acc_x:.1}\" y=\"{:.1}\" width=\"{:.1}\" \
                     height=\"{:.1}\" fill=\"{col}\"><title>{}: {}</title></rect>",
                    y + 6.0,
                    a * panel_w,
                    row - 12.0,
                    escape(&m.model),
                    pct(a)
                );
                if let Some(ci) = m.accuracy_ci {
                    let (x1, x2) = (acc_x + ci.low * panel_w, acc_x + ci.high * panel_w);
                    let _ = write!(
                        s,
                        "<line x1=\"{x1:.1}\" y1=\"{mid:.1}\" x2=\"{x2:.1}\" y2=\"{mid:.1}\" \
                         stroke=\"#222\" stroke-width=\"1.5\"/><line x1=\"{x1:.1}\" \
                         y1=\"{:.1}\" x2=\"{x1:.1}\" y2=\"{:.1}\" stroke=\"#222\" \
                         stroke-width=\"1.5\"/><line x1=\"{x2:.1}\" y1=\"{:.1}\" \
                         x2=\"{x2:.1}\" y2=\"{:.1}\" stroke=\"#222\" stroke-width=\"1.5\"/>",
                        mid - 5.0,
                        mid + 5.0,
                        mid - 5.0,
                        mid + 5.0
                    );
                }
            }
            None => {
                let _ = write!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#a00\">no answers</text>",
                    acc_x + 8.0,
                    mid + 4.0
                );
            }
        }
        if let Some(p50) = m.latency_p50_ms {
            let _ = write!(
                s,
                "<rect class=\"bar\" x=\"{lat_x:.1}\" y=\"{:.1}\" width=\"{:.1}\" \
                 height=\"{:.1}\" fill=\"{col}\" fill-opacity=\"0.8\"><title>{}: p50 {}</title></rect>",
                y + 6.0,
                p50 as f64 / lat_max * panel_w,
                row - 12.0,
                escape(&m.model),
                super::terminal::ms(p50)
            );
            if let Some(p95) = m.latency_p95_ms {
                let x = lat_x + p95 as f64 / lat_max * panel_w;
                let _ = write!(
                    s,
                    "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" \
                     stroke=\"#222\" stroke-width=\"2.5\"><title>p95 {}</title></line>",
                    y + 3.0,
                    y + row - 3.0,
                    super::terminal::ms(p95)
                );
            }
        }
    }
    s.push_str("</svg>");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::{nice_axis, nice_ticks, tick_usd};

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(nice_ticks(0.0, 1.0, 5).len(), 6);
        assert_eq!(
            nice_ticks(0.0, 950.0, 4),
            vec![0.0, 200.0, 400.0, 600.0, 800.0]
        );
        assert_eq!(
            nice_axis(950.0, 4),
            (1000.0, vec![0.0, 200.0, 400.0, 600.0, 800.0, 1000.0])
        );
        assert!((nice_axis(0.0034, 5).0 - 0.004).abs() < 1e-12);
        assert_eq!(tick_usd(0.005), "$0.005");
        assert_eq!(tick_usd(0.0), "$0");
        assert_eq!(tick_usd(2.0), "$2");
    }
}
