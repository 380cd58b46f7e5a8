//! A cheap guard on the two costs a build change can silently multiply: sealing/opening one
//! field, and one 8-field policy decision. `make test` runs it as `cargo bench --bench guard`,
//! in the release profile the vault ships with (in the dev profile the cipher's generic code is
//! compiled unoptimized inside this crate, and the figures mean nothing). It fails if sealing costs more than `SEAL_LIMIT` SHA-256 blocks of the same
//! run (poly1305 built without its fast path costs 4x: see ../shared/PERFORMANCE.md), or if a
//! decision with 15,000 rules costs more than `SCALE_LIMIT` times one with the shipped policy.
//!
//! Ratios measured in one run, not times: the machine is shared and noisy.

use std::{hint::black_box, path::Path, time::Instant};

use sha2::{Digest, Sha256};

/// Seal of a 16-byte field, in SHA-256-of-64-bytes units. Measured here (SHA-NI makes the unit
/// small, 0.08 us): 7.3; poly1305 built without its fast path adds ~1.3 us, about 16 units.
const SEAL_LIMIT: f64 = 14.0;
/// Decision cost at 15,000 rules over the shipped policy. Measured: 1.0-1.1.
const SCALE_LIMIT: f64 = 2.0;

fn sha256_us(iterations: u32) -> f64 {
    let block = [0x5au8; 64];
    let start = Instant::now();
    for _ in 0..iterations {
        black_box(Sha256::digest(black_box(&block)));
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}

fn main() {
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("guard: cannot start a runtime: {e}");
            std::process::exit(2);
        }
    };
    // The best of a few rounds: noise only ever makes a round slower.
    let rounds = 5;
    let mut seal_ratio = f64::MAX;
    let mut open_ratio = f64::MAX;
    let (mut seal_us, mut open_us) = (0.0, 0.0);
    for _ in 0..rounds {
        let reference = sha256_us(50_000);
        let (s, o) = strongroom::bench::field_cost(50_000);
        if s / reference < seal_ratio {
            (seal_ratio, seal_us) = (s / reference, s);
        }
        if o / reference < open_ratio {
            (open_ratio, open_us) = (o / reference, o);
        }
    }
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut scale = f64::MAX;
    let mut figures = (0.0, 0.0, 0.0, 0);
    for _ in 0..3 {
        match rt.block_on(strongroom::bench::decision_cost(&policies, 15_000, 100_000)) {
            Ok(f) => {
                if f.1 / f.0 < scale {
                    scale = f.1 / f.0;
                    figures = f;
                }
            }
            Err(e) => {
                eprintln!("guard: {e}");
                std::process::exit(2);
            }
        }
    }
    println!(
        "guard: seal {seal_us:.2} us ({seal_ratio:.1} sha256 blocks), open {open_us:.2} us ({open_ratio:.1}); \
         8-field decision {:.0} ns with the shipped policy, {:.0} ns at {} rules (x{scale:.2}); compiling {} rules {:.2} s",
        figures.0, figures.1, figures.3, figures.3, figures.2
    );
    let mut failed = false;
    if seal_ratio > SEAL_LIMIT || open_ratio > SEAL_LIMIT {
        eprintln!(
            "guard: FAILED: field crypto costs {seal_ratio:.1}/{open_ratio:.1} sha256 blocks, limit {SEAL_LIMIT} (check .cargo/config.toml: poly1305_force_soft)"
        );
        failed = true;
    }
    if scale > SCALE_LIMIT {
        eprintln!(
            "guard: FAILED: a decision with 15,000 rules costs x{scale:.2} one with 24 (limit x{SCALE_LIMIT}): the hot path is evaluating rules"
        );
        failed = true;
    }
    if failed {
        std::process::exit(1);
    }
    println!("guard: 2 passed, 0 failed");
}
