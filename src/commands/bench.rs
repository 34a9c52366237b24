//! The `bench` command: latency and throughput of every variant, as GFLOP/s and as a fraction of
//! this machine's FMA peak, optionally side by side with tract and broken down per layer type.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::commands::cli::BenchArgs;
use crate::engine::crosscheck::random_inputs;
use crate::engine::model::Nhwc;
use crate::engine::network::{Network, Precision};
use crate::engine::plan::{ConvKind, Layer, Plan};
use crate::engine::pool::{ModelPool, Variant};
use crate::engine::quant::plan::{QuantLayer, QuantPlan};
use crate::engine::reference::{ModelFiles, Reference};
use crate::engine::team::Team;
use crate::engine::workspace::Workspace;
use crate::error::{Error, Result};
use crate::kernels::KernelSet;
use crate::serving::latency::quantile;

/// Timing of one variant at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Variant name.
    pub name: String,
    /// Images per engine call.
    pub batch: usize,
    /// Compute threads each batch is split across.
    pub threads: usize,
    /// Batches in flight at once, sharing those threads (the service's engine threads).
    pub streams: usize,
    /// Median milliseconds per image.
    pub median_ms: f64,
    /// Fastest run's milliseconds per image: on a shared, noisy host the run least disturbed by
    /// other tenants, so ratios of it are steadier than ratios of medians.
    pub min_ms: f64,
    /// 90th percentile milliseconds per image.
    pub p90_ms: f64,
    /// Images per second: at the median with one stream, over the wall time with several.
    pub images_per_second: f64,
    /// Achieved GFLOP/s (2 x mult-adds per image) at that throughput.
    pub gflops: f64,
    /// `gflops` as a percentage of the measured FMA peak of the cores used (the compute threads,
    /// or the streams when each runs on its own thread).
    pub peak_percent: Option<f64>,
    /// tract's median ms per image on the same file (batch 1 only).
    pub tract_median_ms: Option<f64>,
}

/// Everything `bench --json` writes.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Kernel tier, and the integer kernels it runs 8-bit models with.
    pub kernels: String,
    /// Measured single-core FMA peak, GFLOP/s.
    pub fma_peak_gflops: Option<f64>,
    /// One entry per variant and batch size.
    pub results: Vec<BenchResult>,
}

/// Minimum, median and 90th percentile of `samples` (sorted in place; nearest rank, as the
/// service's latency statistics), zeros when there is none.
fn quantiles(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| quantile(samples, q).unwrap_or(0.0);
    (at(0.0), at(0.5), at(0.9))
}

/// The `bench` command.
pub fn run(pool: &ModelPool, args: &BenchArgs) -> Result<BenchReport> {
    let peak = KernelSet::fma_peak_gflops();
    let tier = pool
        .variants()
        .first()
        .map(|v| {
            let k = v.model.kernels();
            format!("{} (int8: {})", k.tier, k.int8.name)
        })
        .unwrap_or_default();
    match peak {
        Some(p) => println!("kernels {tier}; single-core FMA peak {p:.1} GFLOP/s"),
        None => println!("kernels {tier}; no SIMD tier to measure the FMA peak with"),
    }
    println!(
        "{:<28} {:>5} {:>3} {:>9} {:>9} {:>9} {:>8} {:>6} {:>9} {:>7}",
        "variant",
        "batch",
        "thr",
        "median ms",
        "p90 ms",
        "img/s",
        "GFLOP/s",
        "%peak",
        "tract ms",
        "ours/tr"
    );
    let mut files_read = ModelFiles::default();
    let mut results = Vec::new();
    let teams = args
        .threads
        .iter()
        .map(|&t| Team::new(t.into(), "bench", || {}))
        .collect::<Result<Vec<_>>>()?;
    let streams = usize::from(args.streams).max(1);
    let progress = crate::commands::progress::bar(
        (pool.variants().len() * args.batch.len() * teams.len()) as u64,
        "{elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
    );
    for v in pool.variants() {
        // Built once per variant, timed beside ours at batch 1 for each thread count.
        let tract = if args.tract && args.batch.contains(&1) {
            Some(Reference::for_variant(files_read.get(pool, v)?, v)?)
        } else {
            None
        };
        for (team, &batch) in teams
            .iter()
            .flat_map(|t| args.batch.iter().map(move |b| (t, b)))
        {
            let threads = team.threads();
            progress.set_message(format!("{} batch {batch} threads {threads}", v.spec.name));
            let tract = tract.as_ref().filter(|_| batch == 1);
            let batch = batch.max(1);
            let iters = args.iters as usize;
            let r = if streams == 1 {
                bench_variant(v, team, batch, iters, tract, peak)?
            } else {
                bench_streams(v, team, batch, iters, streams, peak)?
            };
            // Printed above the bar, not through it.
            progress.suspend(|| {
                println!(
                    "{:<28} {:>5} {:>3} {:>9.3} {:>9.3} {:>9.1} {:>8.1} {:>6} {:>9} {:>7}",
                    r.name,
                    r.batch,
                    r.threads,
                    r.median_ms,
                    r.p90_ms,
                    r.images_per_second,
                    r.gflops,
                    r.peak_percent
                        .map(|p| format!("{p:.0}%"))
                        .unwrap_or_else(|| "-".into()),
                    r.tract_median_ms
                        .map(|t| format!("{t:.3}"))
                        .unwrap_or_else(|| "-".into()),
                    r.tract_median_ms
                        .map(|t| format!("{:.2}", r.median_ms / t))
                        .unwrap_or_else(|| "-".into()),
                )
            });
            progress.inc(1);
            results.push(r);
        }
        if args.layers {
            for team in &teams {
                for &batch in &args.batch {
                    progress.suspend(|| print_layers(v, team, batch.max(1)))?;
                }
            }
        }
    }
    drop(progress);
    let report = BenchReport {
        kernels: tier,
        fma_peak_gflops: peak,
        results,
    };
    if let Some(path) = &args.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Error::Catalog(e.to_string()))?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        let title = format!("mobilenet-serve bench ({} kernels)", report.kernels);
        let svg = crate::commands::chart::speed_vs_batch(&title, &speed_series(&report.results));
        std::fs::write(path, svg).map_err(|e| Error::io(path, e))?;
        println!("wrote {}", path.display());
    }
    Ok(report)
}

/// One line per variant over batch sizes.
fn speed_series(results: &[BenchResult]) -> Vec<crate::commands::chart::Series> {
    let mut series: Vec<crate::commands::chart::Series> = Vec::new();
    for r in results {
        let point = (r.batch, r.median_ms, r.gflops);
        match series.iter_mut().find(|s| s.label == r.name) {
            Some(s) => s.points.push(point),
            None => series.push(crate::commands::chart::Series {
                label: r.name.clone(),
                points: vec![point],
            }),
        }
    }
    for s in &mut series {
        s.points.sort_by_key(|p| p.0);
    }
    series
}

/// Times `iters` runs of `batch` random images split across `team`, then, when given, `iters`
/// runs of tract. Each engine's runs follow each other, as ONNX Runtime's do in
/// `tests/ort/compare_speed.py`: interleaved, every run of ours started on the caches tract had
/// just filled, which put batch 1 of 1.0_128 at 3.8 ms instead of 2.9.
fn bench_variant(
    v: &Variant,
    team: &Team,
    batch: usize,
    iters: usize,
    tract: Option<&Reference>,
    peak: Option<f64>,
) -> Result<BenchResult> {
    let r = v.spec.resolution;
    let input: Vec<f32> = random_inputs(batch, v.input_len(), 7).concat();
    let mut ws = Workspace::new();
    let mut out = Vec::new();
    v.model
        .run_on(team, &mut ws, Nhwc::new(&input, batch, r, r), &mut out)?;
    let (mut ours, mut theirs) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
    for _ in 0..iters {
        let started = Instant::now();
        v.model
            .run_on(team, &mut ws, Nhwc::new(&input, batch, r, r), &mut out)?;
        ours.push(started.elapsed().as_secs_f64() * 1000.0 / batch as f64);
    }
    if let Some(t) = tract {
        t.run_nhwc(&input[..v.input_len()])?;
        for _ in 0..iters {
            let started = Instant::now();
            t.run_nhwc(&input[..v.input_len()])?;
            theirs.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let (min_ms, median_ms, p90_ms) = quantiles(&mut ours);
    let macs = v.model.mult_adds(r, r)? as f64;
    let gflops = 2.0 * macs / (median_ms / 1000.0) / 1e9;
    Ok(BenchResult {
        name: v.spec.name.clone(),
        batch,
        threads: team.threads(),
        streams: 1,
        median_ms,
        min_ms,
        p90_ms,
        images_per_second: 1000.0 / median_ms,
        gflops,
        peak_percent: peak.map(|p| 100.0 * gflops / (p * team.threads() as f64)),
        tract_median_ms: (!theirs.is_empty()).then(|| quantiles(&mut theirs).1),
    })
}

/// Times `streams` threads each running `iters` batches of `batch` images at once on `team`, every
/// stream with its own workspace, as the service's engine threads do. Throughput is over the wall
/// time from the moment all of them start.
fn bench_streams(
    v: &Variant,
    team: &Team,
    batch: usize,
    iters: usize,
    streams: usize,
    peak: Option<f64>,
) -> Result<BenchResult> {
    let r = v.spec.resolution;
    let input: Vec<f32> = random_inputs(batch, v.input_len(), 7).concat();
    let start = std::sync::Barrier::new(streams);
    let runs: Vec<Result<(Instant, Instant, Vec<f64>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..streams)
            .map(|_| {
                scope.spawn(|| {
                    let mut ws = Workspace::new();
                    let mut out = Vec::new();
                    v.model
                        .run_on(team, &mut ws, Nhwc::new(&input, batch, r, r), &mut out)?;
                    start.wait();
                    let first = Instant::now();
                    let mut times = Vec::with_capacity(iters);
                    for _ in 0..iters {
                        let t = Instant::now();
                        v.model
                            .run_on(team, &mut ws, Nhwc::new(&input, batch, r, r), &mut out)?;
                        times.push(t.elapsed().as_secs_f64() * 1000.0 / batch as f64);
                    }
                    Ok((first, Instant::now(), times))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Internal("a bench thread panicked".into())))
            })
            .collect()
    });
    let runs = runs.into_iter().collect::<Result<Vec<_>>>()?;
    let first = runs.iter().map(|r| r.0).min().unwrap_or_else(Instant::now);
    let last = runs.iter().map(|r| r.1).max().unwrap_or(first);
    let mut samples: Vec<f64> = runs.into_iter().flat_map(|r| r.2).collect();
    let (min_ms, median_ms, p90_ms) = quantiles(&mut samples);
    let wall = (last - first).as_secs_f64().max(f64::MIN_POSITIVE);
    let images_per_second = (streams * iters * batch) as f64 / wall;
    let macs = v.model.mult_adds(r, r)? as f64;
    let gflops = 2.0 * macs * images_per_second / 1e9;
    // A team of one runs each stream on its own thread; a larger team does all the work.
    let cores = if team.threads() > 1 {
        team.threads()
    } else {
        streams
    };
    Ok(BenchResult {
        name: v.spec.name.clone(),
        batch,
        threads: team.threads(),
        streams,
        median_ms,
        min_ms,
        p90_ms,
        images_per_second,
        gflops,
        peak_percent: peak.map(|p| 100.0 * gflops / (p * cores as f64)),
        tract_median_ms: None,
    })
}

/// Layer types as the paper's Table 2 groups them, with its shares for 1.0_224
/// (mult-adds %, parameters %).
const TABLE_2: [(&str, f64, f64); 4] = [
    ("1x1 conv", 94.86, 74.59),
    ("depthwise", 3.06, 1.06),
    ("full conv", 1.19, 0.02),
    ("fc", 0.18, 24.33),
];

/// Profiled runs behind `--layers`; each layer's time is its fastest.
const LAYER_RUNS: usize = 20;

/// One layer as the profile prints it.
struct LayerRow {
    /// The paper's Table 2 name of its type.
    group: &'static str,
    /// Multiply-adds for one image.
    macs: u64,
    /// Learned parameters.
    params: usize,
    /// Input channels.
    in_c: usize,
    /// Output `(height, width, channels)` for one image.
    out: (usize, usize, usize),
}

/// The rows of a float plan for `r x r` images.
fn float_rows(plan: &Plan, r: usize) -> Result<Vec<LayerRow>> {
    let macs = plan.layer_mult_adds(r, r)?;
    let outputs = plan.layer_outputs(r, r)?;
    let mut in_c = plan.in_c;
    Ok(plan
        .layers
        .iter()
        .zip(macs)
        .zip(outputs)
        .map(|((layer, macs), out)| {
            let row = LayerRow {
                group: layer_group(layer),
                macs,
                params: layer.params(),
                in_c,
                out,
            };
            in_c = out.2;
            row
        })
        .collect())
}

/// The rows of an 8-bit plan for `r x r` images.
fn int8_rows(plan: &QuantPlan, r: usize) -> Result<Vec<LayerRow>> {
    let (mut h, mut w, mut c) = (r, r, plan.in_c);
    let mut rows = Vec::with_capacity(plan.layers.len());
    // A convolution after the pool is the classifier: "fc", as the float importer makes it.
    let mut pooled = false;
    for layer in &plan.layers {
        let row = match layer {
            QuantLayer::Conv(conv) => {
                let g = conv.shape.geometry(&conv.name, 1, h, w)?;
                LayerRow {
                    group: if pooled {
                        "fc"
                    } else {
                        kind_group(conv.shape.kind)
                    },
                    macs: (g.output_len() * conv.shape.mult_adds_per_output()) as u64,
                    params: conv.weights.len() + conv.bias.len(),
                    in_c: c,
                    out: (g.out_h, g.out_w, g.out_c),
                }
            }
            QuantLayer::GlobalAvgPool { .. } => {
                pooled = true;
                LayerRow {
                    group: "pool",
                    macs: 0,
                    params: 0,
                    in_c: c,
                    out: (1, 1, c),
                }
            }
        };
        (h, w, c) = row.out;
        rows.push(row);
    }
    Ok(rows)
}

/// Prints each layer type's share of mult-adds, parameters and measured time for `batch`
/// images split across `team`, then every layer's time per image and GFLOP/s (GOP/s of 8-bit
/// multiply-adds for an int8 variant). Batch sizes side by side show which layers gain from
/// batching (the weight-bound ones) and which lose (those whose activations outgrow the caches).
fn print_layers(v: &Variant, team: &Team, batch: usize) -> Result<()> {
    let r = v.spec.resolution;
    let input: Vec<f32> = random_inputs(batch, v.input_len(), 9).concat();
    let images = Nhwc::new(&input, batch, r, r);
    let mut ws = Workspace::new();
    let mut out = Vec::new();
    let (rows, mut profile): (_, Box<dyn FnMut() -> Result<Vec<Duration>>>) = match &*v.model {
        Network::Float(m) => (
            float_rows(m.plan(), r)?,
            Box::new(move || m.run_profiled(team, &mut ws, images, &mut out)),
        ),
        Network::Int8(m) => (
            int8_rows(m.plan(), r)?,
            Box::new(move || m.run_profiled(team, &mut ws, images, &mut out)),
        ),
    };
    // A warm-up run, then the fastest of the runs per layer: on a shared host the least
    // disturbed, which a mean of a few runs is not.
    profile()?;
    let mut fastest = vec![Duration::MAX; rows.len()];
    for _ in 0..LAYER_RUNS {
        let t = profile()?;
        fastest
            .iter_mut()
            .zip(t)
            .for_each(|(a, b)| *a = (*a).min(b));
    }
    // Shares per group: [mult-adds, params, seconds]; pool is counted apart.
    let mut groups: HashMap<&str, [f64; 3]> = HashMap::new();
    for (row, time) in rows.iter().zip(&fastest) {
        let e = groups.entry(row.group).or_default();
        e[0] += row.macs as f64;
        e[1] += row.params as f64;
        e[2] += time.as_secs_f64() / batch as f64;
    }
    let sum = |i: usize| {
        groups
            .values()
            .map(|g| g[i])
            .sum::<f64>()
            .max(f64::MIN_POSITIVE)
    };
    let (all_macs, all_params, all_time) = (sum(0), sum(1), sum(2));
    println!(
        "  {} per layer type (time per image: each layer's fastest of {LAYER_RUNS} runs of batch {batch} on {} thread(s), each layer alone: no fusion):",
        v.spec.name,
        team.threads()
    );
    println!(
        "  {:<10} {:>9} {:>9} {:>9} {:>10} {:>14}",
        "type", "mult-add%", "param%", "time%", "ms/img", "paper (1.0_224)"
    );
    for name in ["1x1 conv", "depthwise", "full conv", "pool", "fc"] {
        let g = groups.get(name).copied().unwrap_or_default();
        let paper = TABLE_2
            .iter()
            .find(|t| t.0 == name)
            .map(|t| format!("{:.2}% / {:.2}%", t.1, t.2))
            .unwrap_or_else(|| "-".into());
        println!(
            "  {:<10} {:>8.2}% {:>8.2}% {:>8.2}% {:>10.4} {:>14}",
            name,
            100.0 * g[0] / all_macs,
            100.0 * g[1] / all_params,
            100.0 * g[2] / all_time,
            g[2] * 1000.0,
            paper
        );
    }
    println!(
        "  {:>5} {:<10} {:>6} {:>6} {:>9} {:>10} {:>8}",
        "layer",
        "type",
        "in",
        "out",
        "output",
        "ms/img",
        if v.model.precision() == Precision::Int8 {
            "GOP/s"
        } else {
            "GFLOP/s"
        }
    );
    for (i, (row, time)) in rows.iter().zip(&fastest).enumerate() {
        let (h, w, out_c) = row.out;
        let secs = (time.as_secs_f64() / batch as f64).max(f64::MIN_POSITIVE);
        println!(
            "  {:>5} {:<10} {:>6} {:>6} {:>9} {:>10.4} {:>8.1}",
            i,
            row.group,
            row.in_c,
            out_c,
            format!("{h}x{w}"),
            secs * 1000.0,
            2.0 * row.macs as f64 / secs / 1e9
        );
    }
    Ok(())
}

/// The paper's Table 2 name of a layer's type.
fn layer_group(layer: &Layer) -> &'static str {
    match layer {
        Layer::Conv(c) => kind_group(c.kind),
        Layer::GlobalAvgPool { .. } => "pool",
        Layer::Fc(_) => "fc",
    }
}

/// The paper's Table 2 name of a convolution's kind.
fn kind_group(kind: ConvKind) -> &'static str {
    match kind {
        ConvKind::Pointwise => "1x1 conv",
        ConvKind::Depthwise => "depthwise",
        ConvKind::Dense => "full conv",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantiles_pick_min_median_and_p90() {
        let mut v: Vec<f64> = (1..=11).rev().map(f64::from).collect();
        assert_eq!(super::quantiles(&mut v), (1.0, 6.0, 10.0));
    }
}
