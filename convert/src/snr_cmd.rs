//! `snr`: signal-to-noise statistics of the weight posteriors, per layer and overall.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use formats::checkpoint::Checkpoint;
use surgery::snr::{analyse, select_targets, Part, SnrReport, DEFAULT_LEVELS, DEFAULT_THRESHOLDS};

/// Arguments of `snr`.
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
    /// Draw the SNR histograms per layer, log10 axis, to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// Runs `snr`.
pub fn run(a: Args) -> Result<()> {
    let ckpt = Checkpoint::open(&a.input)?;
    let parts: &[Part] = if a.bias { &[Part::Kernel, Part::Bias] } else { &[Part::Kernel] };
    let targets = select_targets(&ckpt, a.layers.as_deref(), parts)?;
    let report = analyse(&ckpt, &targets, &DEFAULT_LEVELS, &a.thresholds)?;
    if let Some(path) = &a.plot {
        crate::write_file_atomically(path, histogram_svg(&report).as_bytes())?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).context("serializing the report")?);
        return Ok(());
    }
    let mut header = vec!["LAYER".to_string(), "COUNT".into(), "MIN".into()];
    header.extend(DEFAULT_LEVELS.iter().map(|q| format!("Q{}", q * 100.0)));
    header.push("MAX".into());
    header.extend(a.thresholds.iter().map(|t| format!("<={t}")));
    let row = |name: String, s: &surgery::snr::Stats| -> Vec<String> {
        let mut r = vec![name, s.count.to_string(), format!("{:.3e}", s.min)];
        r.extend(s.quantiles.iter().map(|(_, v)| format!("{v:.4}")));
        r.push(format!("{:.4}", s.max));
        r.extend(s.under.iter().map(|u| format!("{:.1}%", 100.0 * u.fraction)));
        r
    };
    let mut rows = vec![header];
    for l in &report.layers {
        rows.push(row(format!("{}/{}", l.target.layer, l.target.part.name()), &l.stats));
    }
    rows.push(row("overall".into(), &report.overall));
    print!("{}", crate::table(&rows));
    Ok(())
}

/// One histogram panel per posterior, bars over log10(SNR), with the thresholds marked.
fn histogram_svg(report: &SnrReport) -> String {
    let (pw, ph, margin) = (520.0, 160.0, 40.0);
    let height = margin + report.layers.len() as f64 * (ph + margin);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <text x=\"{margin}\" y=\"20\" font-size=\"13\">SNR = |mu| / softplus(rho), log10 axis: {}</text>\n",
        pw + 2.0 * margin,
        xml_escape(&report.path)
    );
    let (lo, hi) = report
        .layers
        .iter()
        .flat_map(|l| l.histogram.iter().map(|(x, _)| *x))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x + 0.25)));
    let span = (hi - lo).max(0.25);
    for (i, l) in report.layers.iter().enumerate() {
        let top = margin + i as f64 * (ph + margin);
        let peak = l.histogram.iter().map(|(_, c)| *c).max().unwrap_or(1).max(1) as f64;
        let _ = writeln!(s, "<text x=\"{margin}\" y=\"{}\">{}/{} ({} weights)</text>", top + 12.0, l.target.layer, l.target.part.name(), l.stats.count);
        let _ = writeln!(s, "<rect x=\"{margin}\" y=\"{}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>", top + 16.0);
        for (x, c) in &l.histogram {
            let bx = margin + (x - lo) / span * pw;
            let bh = *c as f64 / peak * (ph - 4.0);
            let _ = writeln!(
                s,
                "<rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#4a7ab5\"/>",
                top + 16.0 + ph - bh,
                0.25 / span * pw - 1.0
            );
        }
        for u in &l.stats.under {
            if u.threshold > 0.0 {
                let x = margin + (u.threshold.log10() - lo) / span * pw;
                if (margin..=margin + pw).contains(&x) {
                    let _ = writeln!(s, "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"#c33\" stroke-dasharray=\"3,2\"/>", top + 16.0, top + 16.0 + ph);
                    let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{}\" fill=\"#c33\">{}</text>", x + 2.0, top + 28.0, u.threshold);
                }
            }
        }
        for k in (lo.ceil() as i64)..=(hi.floor() as i64) {
            let x = margin + (k as f64 - lo) / span * pw;
            let _ = writeln!(s, "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">1e{k}</text>", top + 30.0 + ph);
        }
    }
    s + "</svg>\n"
}

fn xml_escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
