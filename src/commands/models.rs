//! The `models` command: the variants found, with their cost and published accuracy.

use crate::engine::catalog::format_alpha;
use crate::engine::pool::ModelPool;
use crate::error::Result;

/// Prints one line per variant of `pool`.
pub fn print(pool: &ModelPool) -> Result<()> {
    println!(
        "{:<28} {:>5} {:>5} {:>9} {:>8} {:>10} {:>9} {:>8}  file",
        "name", "alpha", "rho", "precision", "classes", "mult-adds", "params", "top-1*"
    );
    for v in pool.variants() {
        let s = &v.spec;
        println!(
            "{:<28} {:>5} {:>5} {:>9} {:>8} {:>9.1}M {:>8.2}M {:>8}  {}",
            s.name,
            format_alpha(s.alpha),
            s.resolution,
            s.precision,
            s.num_classes,
            v.model.mult_adds(s.resolution, s.resolution)? as f64 / 1e6,
            v.model.params() as f64 / 1e6,
            s.published_top1
                .map(|t| format!("{t:.1}%"))
                .unwrap_or_else(|| "-".into()),
            s.file.display()
        );
    }
    println!(
        "{} variants (* published TF-slim top-1)",
        pool.variants().len()
    );
    Ok(())
}
