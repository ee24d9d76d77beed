//! Writes a synthetic float32 BNN checkpoint (4 Flipout layers of [rows, 4096] mu and rho) for
//! benchmarks driven from scripts: `synthetic_bnn PREFIX ROWS [SEED]` (bench/streaming_bench.py).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(prefix), Some(rows)) = (args.get(1), args.get(2).and_then(|r| r.parse::<u64>().ok())) else {
        eprintln!("usage: synthetic_bnn PREFIX ROWS [SEED]");
        std::process::exit(2);
    };
    let seed = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(11);
    if let Err(e) = formats::synthetic::write_synthetic_bnn(std::path::Path::new(prefix), &[(rows, 4096); 4], seed) {
        eprintln!("synthetic_bnn: {e}");
        std::process::exit(1);
    }
}
