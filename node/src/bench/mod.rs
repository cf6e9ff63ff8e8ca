//! `phoenix-node bench`: the engine's performance scenarios. Prints figures, never asserts
//! timings; optionally writes each scenario's windows as an SVG plot.
//!
//! Every scenario splits its operations into ten windows and reports retrieve and store
//! p50/p99 per window, the last/first retrieve p50 ratio, and the process's peak RSS
//! (reset at the start of each scenario through `/proc/self/clear_refs`).

mod client;
mod http;
mod memory;
mod peers;
mod plot;
mod replicated;
mod scenarios;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

pub use scenarios::Scenario;

/// A program on the `PATH`, if there is one.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// A child process (a peer store of a benchmark), killed and reaped on drop.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Benchmark settings.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Where the databases go (a temporary directory inside it, removed afterwards).
    pub dir: PathBuf,
    /// Multiplies every operation and key count (1.0 = the documented sizes).
    pub scale: f64,
    /// Scenarios to run, in order.
    pub scenarios: Vec<Scenario>,
    /// Directory for one SVG plot per scenario.
    pub plot_dir: Option<PathBuf>,
    /// Show progress bars (on a terminal).
    pub progress: bool,
    /// Seed for the operation sequences.
    pub seed: u64,
    /// Run the HTTP scenarios instead, with this many client threads.
    pub http_concurrency: Option<usize>,
    /// With `http_concurrency`: run the comparison with Redis instead (see `peers`).
    pub http_peers: bool,
    /// Run the replicated scenarios instead (node processes on loopback), with this many
    /// client threads.
    pub replicated_concurrency: Option<usize>,
    /// Which replicated scenarios (`reads`, `durable`, `sustained`, `recovery`; empty: all).
    pub replicated_only: Vec<String>,
}

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The store failed.
    #[error("store failed: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Writing output failed.
    #[error("failed to write output: {0}")]
    Io(#[from] std::io::Error),
    /// Drawing the plot failed.
    #[error("failed to draw the plot: {0}")]
    Plot(String),
    /// A request of the HTTP benchmark failed.
    #[error("HTTP benchmark failed: {0}")]
    Http(String),
}

/// Figures of one window (a tenth of a scenario's operations).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Window {
    /// Keys stored at the end of the window.
    pub keys: u64,
    /// Retrieve latency percentiles, nanoseconds.
    pub retrieve: Percentiles,
    /// Store latency percentiles, nanoseconds.
    pub store: Percentiles,
    /// The reference structure's retrieve percentiles, when the scenario has one.
    pub reference: Option<Percentiles>,
    /// The latency probe's ratio at the end of the window.
    pub probe_ratio: Option<f64>,
    /// The served ratio at the end of the window (the node's served tracker fed with the
    /// workload's own retrieves), when the scenario keeps one.
    pub served_ratio: Option<f64>,
}

/// p50 and p99 of a set of latencies, nanoseconds; zero counts mean "no operations".
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    /// Operations measured.
    pub count: u64,
    /// Median, nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile, nanoseconds.
    pub p99_ns: u64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Percentiles {
        Percentiles {
            count: histogram.len(),
            p50_ns: histogram.value_at_quantile(0.5),
            p99_ns: histogram.value_at_quantile(0.99),
        }
    }
}

/// The outcome of one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    /// Scenario name.
    pub name: &'static str,
    /// What it does, one line.
    pub description: String,
    /// Ten windows (fewer for scenarios that only compare before and after).
    pub windows: Vec<Window>,
    /// Named figures beyond the windows (ratios, targets, sizes).
    pub figures: Vec<(String, String)>,
    /// Peak resident set size during the scenario, bytes.
    pub peak_rss_bytes: Option<u64>,
}

impl ScenarioResult {
    /// Last window's retrieve p50 over the first's.
    pub fn retrieve_ratio(&self) -> Option<f64> {
        let first = self.windows.first()?.retrieve.p50_ns;
        let last = self.windows.last()?.retrieve.p50_ns;
        (first > 0).then(|| last as f64 / first as f64)
    }
}

/// A latency histogram from 1 ns to 60 s with 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Resets the kernel's peak-RSS counter for this process (Linux); false when unsupported.
pub(crate) fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident set size of this process (Linux `VmHWM`).
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn micros(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1000.0)
}

/// p50 and p99 columns, or dashes when the window measured no such operation.
fn columns(p: Percentiles) -> (String, String) {
    if p.count == 0 {
        ("-".into(), "-".into())
    } else {
        (micros(p.p50_ns), micros(p.p99_ns))
    }
}

/// Prints one scenario's table and figures.
pub fn print_result(out: &mut impl Write, result: &ScenarioResult) -> std::io::Result<()> {
    writeln!(out, "\n== {}: {}", result.name, result.description)?;
    if !result.windows.is_empty() {
        print_windows(out, result)?;
    }
    for (name, value) in &result.figures {
        writeln!(out, "{name}: {value}")?;
    }
    match result.peak_rss_bytes {
        Some(rss) => writeln!(out, "peak RSS: {:.1} MiB", rss as f64 / (1 << 20) as f64)?,
        None => writeln!(out, "peak RSS: unavailable on this platform")?,
    }
    Ok(())
}

/// The per-window table of a result.
fn print_windows(out: &mut impl Write, result: &ScenarioResult) -> std::io::Result<()> {
    let has_reference = result.windows.iter().any(|w| w.reference.is_some());
    write!(
        out,
        "{:>6} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "window", "keys", "get p50µs", "get p99µs", "put p50µs", "put p99µs"
    )?;
    if has_reference {
        write!(out, " {:>10} {:>10}", "ref p50µs", "ref p99µs")?;
    }
    let has_served = result.windows.iter().any(|w| w.served_ratio.is_some());
    if has_served {
        write!(out, " {:>8}", "served")?;
    }
    writeln!(out, " {:>8}", "probe")?;
    for (i, w) in result.windows.iter().enumerate() {
        let (get50, get99) = columns(w.retrieve);
        let (put50, put99) = columns(w.store);
        write!(
            out,
            "{:>6} {:>9} {get50:>10} {get99:>10} {put50:>10} {put99:>10}",
            i + 1,
            w.keys,
        )?;
        if let Some(r) = w.reference {
            write!(out, " {:>10} {:>10}", micros(r.p50_ns), micros(r.p99_ns))?;
        }
        match (has_served, w.served_ratio) {
            (true, Some(ratio)) => write!(out, " {ratio:>7.2}×")?,
            (true, None) => write!(out, " {:>8}", "no data")?,
            (false, _) => {}
        }
        match w.probe_ratio {
            Some(ratio) => writeln!(out, " {ratio:>7.2}×")?,
            None => writeln!(out, " {:>8}", "no data")?,
        }
    }
    if let Some(ratio) = result.retrieve_ratio() {
        writeln!(out, "retrieve p50 last/first window: {ratio:.3}×")?;
    }
    Ok(())
}

/// One scenario, ready to run in a scratch directory.
type Run<'a> = Box<dyn Fn(&Path) -> Result<ScenarioResult, BenchError> + 'a>;

/// Runs the selected scenarios, printing each result to `out` as it completes.
///
/// # Errors
/// Store, output and plotting errors.
pub fn run(
    options: &BenchOptions,
    out: &mut impl Write,
) -> Result<Vec<ScenarioResult>, BenchError> {
    let mut results = Vec::new();
    let rss_resettable = reset_peak_rss();
    if !rss_resettable {
        writeln!(
            out,
            "note: peak RSS cannot be reset here; figures are cumulative"
        )?;
    }
    let runs: Vec<Run<'_>> = match (options.replicated_concurrency, options.http_concurrency) {
        (Some(clients), _) => {
            let all: [(&str, Run<'_>); 4] = [
                (
                    "reads",
                    Box::new(move |dir: &Path| replicated::reads(options, dir, clients)),
                ),
                (
                    "durable",
                    Box::new(move |dir: &Path| replicated::durable(options, dir, clients)),
                ),
                (
                    "sustained",
                    Box::new(move |dir: &Path| replicated::sustained(options, dir, clients)),
                ),
                (
                    "recovery",
                    Box::new(move |dir: &Path| replicated::recovery(options, dir, clients)),
                ),
            ];
            all.into_iter()
                .filter(|(name, _)| {
                    options.replicated_only.is_empty()
                        || options.replicated_only.iter().any(|o| o == name)
                })
                .map(|(_, run)| run)
                .collect()
        }
        (None, Some(clients)) if options.http_peers => {
            vec![Box::new(move |dir: &Path| {
                peers::peers(options, dir, clients)
            })]
        }
        (None, Some(clients)) => vec![
            Box::new(move |dir: &Path| http::sustained(options, dir, clients)),
            Box::new(move |dir: &Path| http::durable(options, dir, clients)),
        ],
        (None, None) => options
            .scenarios
            .iter()
            .map(|s| Box::new(move |dir: &Path| s.run(options, dir)) as Run<'_>)
            .collect(),
    };
    for run in runs {
        let workdir = tempfile::Builder::new()
            .prefix("phoenix-bench-")
            .tempdir_in(&options.dir)?;
        reset_peak_rss();
        let result = run(workdir.path())?;
        print_result(out, &result)?;
        if let Some(dir) = options
            .plot_dir
            .as_ref()
            .filter(|_| !result.windows.is_empty())
        {
            std::fs::create_dir_all(dir)?;
            let path = dir.join(format!("{}.svg", result.name));
            plot::write_svg(&path, &result).map_err(BenchError::Plot)?;
            writeln!(out, "plot: {}", path.display())?;
        }
        results.push(result);
    }
    Ok(results)
}
