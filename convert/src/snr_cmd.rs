//! `snr`: signal-to-noise statistics of the weight posteriors, per layer and overall.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use formats::checkpoint::Checkpoint;
use image::ImageEncoder;
use plotters::coord::Shift;
use plotters::prelude::*;
use surgery::snr::{analyse_with, select_targets, Extras, Part, SnrReport, DEFAULT_LEVELS, DEFAULT_THRESHOLDS};

/// Arguments of `snr` (what pruned and non-finite weights count as: see the command's help).
#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint (folder, prefix, .index) or .safetensors file.
    input: PathBuf,
    /// Thresholds T to report the fraction of weights with SNR <= T for.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_THRESHOLDS.to_vec())]
    thresholds: Vec<f64>,
    /// Only these layers (comma-separated).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<String>>,
    /// Include bias posteriors (they need their own untransformed scale).
    #[arg(long)]
    bias: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Draw the SNR histograms per layer, log axis, to this file (`.png`, else SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// Runs `snr`.
pub fn run(a: Args) -> Result<()> {
    let ckpt = Checkpoint::open(&a.input)?;
    let parts: &[Part] = if a.bias { &[Part::Kernel, Part::Bias] } else { &[Part::Kernel] };
    let targets = select_targets(&ckpt, a.layers.as_deref(), parts)?;
    // The table prints neither the mean nor the histograms: they cost a pass of exact SNRs.
    let extras = Extras { mean: a.json, histogram: a.json || a.plot.is_some() };
    let report = analyse_with(&ckpt, &targets, &DEFAULT_LEVELS, &a.thresholds, extras)?;
    for n in &report.non_finite {
        eprintln!(
            "bnn-convert: warning: {}: tensor '{}' holds {} NaN or infinite values; their weights are left out of the statistics",
            a.input.display(),
            n.key,
            n.count
        );
    }
    if let Some(path) = &a.plot {
        let mut inputs = formats::input_files::InputFiles::new();
        inputs.add_checkpoint(&ckpt);
        inputs.check_output(path)?;
        let folder = crate::output::output_folder(path)?;
        plot(&report, path)?;
        folder.keep();
    }
    // Batch normalization, deterministic layers...: listed, never given an SNR.
    let non_bayesian = ckpt.non_bayesian();
    if a.json {
        let mut v = serde_json::to_value(&report).context("serializing the report")?;
        v["non_bayesian"] = serde_json::to_value(&non_bayesian).context("serializing the report")?;
        v["non_bayesian_counts"] = crate::output::non_bayesian_counts(&non_bayesian);
        println!("{}", serde_json::to_string_pretty(&v).context("serializing the report")?);
        return Ok(());
    }
    let mut header = vec!["LAYER".to_string(), "COUNT".into(), "PRUNED".into(), "PRUNED%".into(), "MIN".into()];
    header.extend(DEFAULT_LEVELS.iter().map(|q| format!("Q{}", q * 100.0)));
    header.push("MAX".into());
    header.extend(a.thresholds.iter().map(|t| format!("<={t}")));
    // A layer with nothing left to analyse (all pruned) has no statistics: "-", not NaN.
    let num = |v: f64, f: &dyn Fn(f64) -> String| if v.is_nan() { "-".to_string() } else { f(v) };
    let row = |name: String, s: &surgery::snr::Stats| -> Vec<String> {
        let mut r = vec![
            name,
            (s.count + s.pruned + s.undefined).to_string(),
            s.pruned.to_string(),
            format!("{:.1}%", 100.0 * s.pruned_fraction),
            num(s.min, &|v| format!("{v:.3e}")),
        ];
        r.extend(s.quantiles.iter().map(|(_, v)| num(*v, &|v| format!("{v:.4}"))));
        r.push(num(s.max, &|v| format!("{v:.4}")));
        r.extend(s.under.iter().map(|u| if s.count == 0 { "-".to_string() } else { format!("{:.1}%", 100.0 * u.fraction) }));
        r
    };
    let mut rows = vec![header];
    for l in &report.layers {
        rows.push(row(format!("{}/{}", l.target.layer, l.target.part.name()), &l.stats));
    }
    rows.push(row("overall".into(), &report.overall));
    print!("{}", crate::table(&rows));
    crate::output::print_non_bayesian(&non_bayesian);
    Ok(())
}

/// Fonts tried for plot labels, after `$BNN_PLOT_FONT`. Rendered by ab_glyph (pure Rust), so
/// no fontconfig or other system library is needed; without any font the plot has no text.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];
const BAR_COLOR: RGBColor = RGBColor(74, 122, 181);

/// Registers the first readable font as "sans-serif"; false when there is none.
fn register_font() -> bool {
    let candidates = std::env::var_os("BNN_PLOT_FONT").map(PathBuf::from).into_iter().chain(FONT_PATHS.iter().map(PathBuf::from));
    for path in candidates {
        if let Ok(bytes) = std::fs::read(&path) {
            // plotters keeps registered fonts for the whole process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// Draws the SNR histograms per posterior (log10 axis, thresholds in red) to `path`: PNG when
/// its name ends in `.png`, SVG otherwise. Written to a temporary file renamed into place.
fn plot(report: &SnrReport, path: &Path) -> Result<()> {
    let labels = register_font();
    if !labels {
        eprintln!("bnn-convert: note: no TrueType font found (set BNN_PLOT_FONT=font.ttf): plot drawn without text");
    }
    let size = (760u32, 40 + 220 * report.layers.len().max(1) as u32);
    let png = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if png {
        // Drawn in memory and encoded there, then written like every other output.
        let (w, h) = size;
        let mut rgb = vec![0u8; w as usize * h as usize * 3];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
            draw(&root, report, labels).map_err(|e| anyhow::anyhow!("{}: drawing: {e}", path.display()))?;
            root.present().map_err(|e| anyhow::anyhow!("{}: drawing: {e}", path.display()))?;
        }
        let mut encoded = Vec::new();
        image::codecs::png::PngEncoder::new(&mut encoded)
            .write_image(&rgb, w, h, image::ColorType::Rgb8)
            .map_err(|e| anyhow::anyhow!("{}: encoding PNG: {e}", path.display()))?;
        crate::write_file_atomically(path, &encoded)?;
    } else {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
            draw(&root, report, labels).map_err(|e| anyhow::anyhow!("{}: drawing: {e}", path.display()))?;
            root.present().map_err(|e| anyhow::anyhow!("{}: drawing: {e}", path.display()))?;
        }
        crate::write_file_atomically(path, svg.as_bytes())?;
    }
    Ok(())
}

/// One panel per posterior: a bar per 0.25-decade bin of log10(SNR), a line per threshold.
fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, report: &SnrReport, labels: bool) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (lo, hi) = report
        .layers
        .iter()
        .flat_map(|l| l.histogram.iter().map(|(x, _)| *x))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x + 0.25)));
    let (lo, hi) = if lo < hi { (lo, hi) } else { (-1.0, 1.0) };
    let body = if labels { root.titled(&format!("SNR = |mu| / softplus(rho): {}", report.path), ("sans-serif", 16))? } else { root.margin(30, 0, 0, 0) };
    let panels = body.split_evenly((report.layers.len().max(1), 1));
    for (area, l) in panels.iter().zip(&report.layers) {
        let peak = l.histogram.iter().map(|(_, c)| *c).max().unwrap_or(1).max(1) as f64;
        let mut builder = ChartBuilder::on(area);
        builder.margin(12);
        if labels {
            builder
                .caption(format!("{}/{} ({} weights)", l.target.layer, l.target.part.name(), l.stats.count), ("sans-serif", 14))
                .x_label_area_size(28)
                .y_label_area_size(56);
        }
        let mut chart = builder.build_cartesian_2d(lo..hi, 0.0..peak * 1.05)?;
        if labels {
            chart
                .configure_mesh()
                .disable_mesh()
                .x_labels(((hi - lo).ceil() as usize + 1).min(16))
                .x_label_formatter(&|x| format!("1e{x:.0}"))
                .x_desc("SNR (log axis)")
                .y_desc("weights")
                .draw()?;
        } else {
            chart.plotting_area().draw(&Rectangle::new([(lo, 0.0), (hi, peak * 1.05)], BLACK.stroke_width(1)))?;
        }
        chart.draw_series(l.histogram.iter().filter(|(_, c)| *c > 0).map(|(x, c)| Rectangle::new([(*x, 0.0), (x + 0.23, *c as f64)], BAR_COLOR.filled())))?;
        for u in l.stats.under.iter().filter(|u| u.threshold > 0.0 && (lo..=hi).contains(&u.threshold.log10())) {
            let x = u.threshold.log10();
            chart.draw_series(LineSeries::new([(x, 0.0), (x, peak * 1.05)], RED.stroke_width(1)))?;
        }
    }
    Ok(())
}
