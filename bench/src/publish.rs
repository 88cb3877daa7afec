//! `report`: the numbers a benchmarker publishes, at a glance. Runs the edge-vs-baseline
//! scenarios (`rpc`: edge ping ÷ raw quinn echo; `connect`: edge handshake + `Hello` ÷
//! raw quinn handshake) several times, each pair side by side in one run, and writes:
//!
//! - `results.json`: every run's lines (throughput, p50/p90/p99/p99.9, server CPU per
//!   operation where measured) and their ratios;
//! - `throughput.svg`: edge ÷ baseline throughput per scenario and run, with the 0.9×
//!   target drawn;
//! - `latency-<scenario>.svg`: the latency percentiles of edge and baseline (all runs
//!   merged).

use std::path::PathBuf;
use std::time::Duration;

use plotters::prelude::*;

use crate::edge::{
    ConnectArgs, RpcArgs, ServerProcess, connect_loop, cpu_per_op, current_thread, echo_rpc,
    edge_rpc,
};
use crate::report::{Latencies, Line};

/// Arguments of `report`.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// Folder for `results.json` and the plots.
    #[arg(long, default_value = "bench-report")]
    out: PathBuf,
    /// Seconds per measured line.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Runs of every scenario.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Edge shards.
    #[arg(long, default_value_t = 1)]
    shards: usize,
}

/// One scenario's baseline and edge lines from one run.
struct Pair {
    scenario: &'static str,
    run: usize,
    base: Line,
    ours: Line,
    /// Server CPU of each line, where the scenario measures it.
    cpu: Option<(Duration, Duration)>,
}

impl Pair {
    fn throughput_ratio(&self) -> f64 {
        self.ours.rate() / self.base.rate().max(f64::EPSILON)
    }

    fn json(&self) -> serde_json::Value {
        let q = |q: f64| self.ours.lat.p(q) as f64 / self.base.lat.p(q).max(1) as f64;
        let mut base = self.base.json();
        let mut ours = self.ours.json();
        let mut ratios = serde_json::json!({
            "throughput": self.throughput_ratio(),
            "p50": q(0.5),
            "p99": q(0.99),
        });
        if let Some((bc, oc)) = self.cpu {
            let (b, o) = (cpu_per_op(bc, self.base.ops), cpu_per_op(oc, self.ours.ops));
            base["server_cpu_us_per_op"] = b.into();
            ours["server_cpu_us_per_op"] = o.into();
            ratios["server_cpu_per_op"] = (o / b.max(f64::EPSILON)).into();
        }
        serde_json::json!({
            "scenario": self.scenario,
            "run": self.run + 1,
            "baseline": base,
            "edge": ours,
            "ratios": ratios,
        })
    }
}

/// Runs the scenarios and writes the report.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = current_thread()?;
    std::fs::create_dir_all(&args.out)?;
    let mut pairs = Vec::new();
    for run in 0..args.runs {
        let rpc = RpcArgs {
            connections: 16,
            in_flight: 16,
            seconds: args.seconds,
            shards: args.shards,
            scaling: false,
            browser: false,
            json: false,
        };
        let echo = ServerProcess::echo()?;
        let (base, base_cpu) = rt.block_on(echo_rpc(&echo, &rpc))?;
        drop(echo);
        let edge = ServerProcess::edge(args.shards)?;
        let (ours, our_cpu) = rt.block_on(edge_rpc(&edge, &rpc, "edge ping"))?;
        drop(edge);
        pairs.push(Pair {
            scenario: "rpc",
            run,
            base,
            ours,
            cpu: Some((base_cpu, our_cpu)),
        });
        let connect = ConnectArgs {
            concurrency: 32,
            seconds: args.seconds,
            shards: args.shards,
            json: false,
        };
        let echo = ServerProcess::echo()?;
        let base = rt.block_on(connect_loop(&echo, &connect, false, "raw quinn handshake"))?;
        drop(echo);
        let edge = ServerProcess::edge(args.shards)?;
        let ours = rt.block_on(connect_loop(
            &edge,
            &connect,
            true,
            "edge handshake + Hello",
        ))?;
        drop(edge);
        pairs.push(Pair {
            scenario: "connect",
            run,
            base,
            ours,
            cpu: None,
        });
        for p in &pairs[pairs.len() - 2..] {
            println!(
                "run {} {}: {:.0} ÷ {:.0} per second = {:.2}x",
                run + 1,
                p.scenario,
                p.ours.rate(),
                p.base.rate(),
                p.throughput_ratio()
            );
        }
    }
    let results = serde_json::json!({
        "machine": machine(),
        "seconds_per_line": args.seconds,
        "shards": args.shards,
        "pairs": pairs.iter().map(Pair::json).collect::<Vec<_>>(),
    });
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    throughput_plot(&args.out.join("throughput.svg"), &pairs)?;
    for scenario in ["rpc", "connect"] {
        latency_plot(
            &args.out.join(format!("latency-{scenario}.svg")),
            scenario,
            &pairs,
        )?;
    }
    println!("report written to {}", args.out.display());
    Ok(())
}

fn machine() -> serde_json::Value {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    serde_json::json!({ "cpus": cpus, "cpu": model })
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

/// Edge ÷ baseline throughput, one bar per scenario and run, with 1.0 and the 0.9×
/// target drawn.
fn throughput_plot(path: &std::path::Path, pairs: &[Pair]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let top = pairs
        .iter()
        .map(Pair::throughput_ratio)
        .fold(1.2_f64, f64::max)
        * 1.1;
    let n = pairs.len();
    if n == 0 {
        return Ok(());
    }
    let mut chart = ChartBuilder::on(&root)
        .caption("edge ÷ baseline throughput (per run)", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..top)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .x_labels(n.max(1))
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => pairs
                .get(*i)
                .map(|p| format!("{} #{}", p.scenario, p.run + 1))
                .unwrap_or_default(),
            _ => String::new(),
        })
        .y_desc("ratio (1.0 = raw quinn)")
        .draw()
        .map_err(plot_err)?;
    for (scenario, label, color) in [
        ("rpc", "rpc: requests/s", BLUE),
        ("connect", "connect: handshakes/s", GREEN),
    ] {
        chart
            .draw_series(
                pairs
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.scenario == scenario)
                    .map(|(i, p)| {
                        let mut bar = Rectangle::new(
                            [
                                (SegmentValue::Exact(i), 0.0),
                                (SegmentValue::Exact(i + 1), p.throughput_ratio()),
                            ],
                            color.mix(0.7).filled(),
                        );
                        bar.set_margin(0, 0, 12, 12);
                        bar
                    }),
            )
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.mix(0.7).filled())
            });
    }
    for (y, label, color) in [(1.0, "baseline (1.0)", BLACK), (0.9, "target 0.9x", RED)] {
        chart
            .draw_series(LineSeries::new(
                [(SegmentValue::Exact(0), y), (SegmentValue::Exact(n), y)],
                color,
            ))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Latency percentiles of baseline and edge for one scenario (runs merged).
fn latency_plot(path: &std::path::Path, scenario: &str, pairs: &[Pair]) -> anyhow::Result<()> {
    let (mut base, mut ours) = (Latencies::new(), Latencies::new());
    for p in pairs.iter().filter(|p| p.scenario == scenario) {
        base.merge(&p.base.lat);
        ours.merge(&p.ours.lat);
    }
    let quantiles = [0.5, 0.9, 0.99, 0.999];
    let names = ["p50", "p90", "p99", "p99.9"];
    let top = quantiles
        .iter()
        .map(|q| base.p(*q).max(ours.p(*q)))
        .max()
        .unwrap_or(1) as f64
        * 1.15;
    let low = base.p(0.5).min(ours.p(0.5)).max(1) as f64;
    let root = SVGBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{scenario}: latency percentiles"),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            0.0..(quantiles.len() - 1) as f64,
            ((low / 2.0).max(1.0)..top.max(10.0)).log_scale(),
        )
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_labels(quantiles.len())
        .x_label_formatter(&|x| {
            names
                .get(x.round() as usize)
                .map(|s| s.to_string())
                .unwrap_or_default()
        })
        .y_desc("µs (log scale)")
        .draw()
        .map_err(plot_err)?;
    for (lat, label, color) in [
        (&base, "raw quinn (baseline)", BLACK),
        (&ours, "edge", BLUE),
    ] {
        let points: Vec<(f64, f64)> = quantiles
            .iter()
            .enumerate()
            .map(|(i, q)| (i as f64, lat.p(*q).max(1) as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(name: &str, ops: u64, micros: &[u64]) -> Line {
        let mut lat = Latencies::new();
        for m in micros {
            lat.record(Duration::from_micros(*m));
        }
        Line {
            name: name.into(),
            ops,
            elapsed: Duration::from_secs(1),
            lat,
        }
    }

    /// The report's files are written from measured lines: JSON with the ratios, and
    /// SVG plots that name the scenarios and the series.
    #[test]
    fn plots_and_json_are_written_from_the_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pairs = vec![
            Pair {
                scenario: "rpc",
                run: 0,
                base: line("base", 1000, &[100, 200, 400]),
                ours: line("edge", 800, &[150, 250, 500]),
                cpu: Some((Duration::from_millis(10), Duration::from_millis(12))),
            },
            Pair {
                scenario: "connect",
                run: 0,
                base: line("base", 500, &[1000]),
                ours: line("edge", 450, &[1200]),
                cpu: None,
            },
        ];
        let json = pairs[0].json();
        assert!((json["ratios"]["throughput"].as_f64().expect("ratio") - 0.8).abs() < 1e-9);
        assert!(json["ratios"]["server_cpu_per_op"].as_f64().is_some());
        assert!(pairs[1].json()["ratios"].get("server_cpu_per_op").is_none());
        let t = dir.path().join("throughput.svg");
        throughput_plot(&t, &pairs).expect("throughput plot");
        let svg = std::fs::read_to_string(&t).expect("svg");
        assert!(svg.starts_with("<svg") && svg.contains("rpc #1") && svg.contains("target 0.9x"));
        let l = dir.path().join("latency-rpc.svg");
        latency_plot(&l, "rpc", &pairs).expect("latency plot");
        let svg = std::fs::read_to_string(&l).expect("svg");
        assert!(svg.contains("p99.9") && svg.contains("edge"));
    }
}
