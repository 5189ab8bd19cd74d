//! Output: the human table, the JSON report and the SVG chart (latency percentiles per tool, and
//! server RSS over time).

use std::collections::HashMap;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde_json::{Value, json};

/// One point of the server timeline.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub t_secs: f64,
    pub rss_mb: f64,
    pub cpu_pct: f64,
    pub open_calls: u64,
    pub requests_per_sec: f64,
}

pub const QUANTILES: [(f64, &str); 5] = [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9"), (1.0, "max")];

pub fn percentiles(h: &Histogram<u64>) -> Value {
    let mut v = json!({"count": h.len(), "mean_us": (h.mean() * 10.0).round() / 10.0});
    for (q, name) in QUANTILES {
        v[format!("{name}_us")] = json!(h.value_at_quantile(q));
    }
    v
}

/// All tool calls after the handshake (every tool but `connect` and `initialize`), merged.
pub fn warm_tools(latency: &HashMap<&'static str, Histogram<u64>>) -> Option<Histogram<u64>> {
    let mut all: Option<Histogram<u64>> = None;
    for (tool, h) in latency {
        if *tool == "connect" || *tool == "initialize" {
            continue;
        }
        match &mut all {
            Some(a) => a.add(h).ok()?,
            None => all = Some(h.clone()),
        }
    }
    all
}

/// The latency table: service, floor and their ratio per tool.
pub fn print_table(
    service: &HashMap<&'static str, Histogram<u64>>,
    floor: Option<&HashMap<&'static str, Histogram<u64>>>,
) {
    let mut tools: Vec<&&str> = service.keys().collect();
    tools.sort();
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>9} {:>9} | {:>8} {:>8} {:>8} | {:>6} {:>6} {:>6}",
        "tool",
        "count",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "floor50",
        "floor99",
        "fl99.9",
        "×p50",
        "×p99",
        "×p99.9"
    );
    type Row<'a> = (String, &'a Histogram<u64>, Option<&'a Histogram<u64>>);
    let mut rows: Vec<Row<'_>> =
        tools.iter().map(|t| (t.to_string(), &service[**t], floor.and_then(|f| f.get(**t)))).collect();
    let warm = warm_tools(service);
    let warm_floor = floor.and_then(warm_tools);
    if let Some(w) = &warm {
        rows.push(("ALL warm tool calls".into(), w, warm_floor.as_ref()));
    }
    for (tool, h, f) in rows {
        let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q);
        let (f50, f99, f999) = f.map(|f| (q(f, 0.5), q(f, 0.99), q(f, 0.999))).unwrap_or((0, 0, 0));
        let ratio = |a: u64, b: u64| if b == 0 { "-".to_owned() } else { format!("{:.1}", a as f64 / b as f64) };
        println!(
            "{:<24} {:>9} {:>9} {:>9} {:>9} {:>9} | {:>8} {:>8} {:>8} | {:>6} {:>6} {:>6}",
            tool,
            h.len(),
            q(h, 0.5),
            q(h, 0.99),
            q(h, 0.999),
            h.max(),
            f50,
            f99,
            f999,
            ratio(q(h, 0.5), f50),
            ratio(q(h, 0.99), f99),
            ratio(q(h, 0.999), f999)
        );
    }
}

/// Two panels: latency (log µs) at p50…max per tool, and RSS (MB) over time.
pub fn write_svg(
    path: &Path,
    latency: &HashMap<&'static str, Histogram<u64>>,
    timeline: &[Sample],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(480);
    let mut tools: Vec<&&str> = latency.keys().collect();
    tools.sort();
    let max_us = latency.values().map(|h| h.max()).max().unwrap_or(1).max(10) as f64;
    let mut chart = ChartBuilder::on(&top)
        .caption("Latency from scheduled send time, per tool (µs, log)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0usize..QUANTILES.len() - 1, (1f64..max_us * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(QUANTILES.len())
        .x_label_formatter(&|i| QUANTILES.get(*i).map(|q| q.1.to_owned()).unwrap_or_default())
        .y_desc("µs")
        .draw()?;
    for (n, tool) in tools.iter().enumerate() {
        let h = &latency[**tool];
        let color = Palette99::pick(n).to_rgba();
        let pts: Vec<(usize, f64)> =
            QUANTILES.iter().enumerate().map(|(i, (q, _))| (i, h.value_at_quantile(*q).max(1) as f64)).collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(tool.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;

    let t_max = timeline.last().map(|s| s.t_secs).unwrap_or(1.0).max(1.0);
    let rss_max = timeline.iter().map(|s| s.rss_mb).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&bottom)
        .caption("Server RSS (MB) over time", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..rss_max * 1.1)?;
    chart.configure_mesh().x_desc("seconds").y_desc("MB").draw()?;
    chart.draw_series(LineSeries::new(timeline.iter().map(|s| (s.t_secs, s.rss_mb)), BLUE.stroke_width(2)))?;
    root.present()?;
    Ok(())
}
