//! How long `Store::lookup` (the cached-image path of `nsrun run IMAGE`) takes.
//!
//! ```text
//! target/release/examples/lookup_time CACHE_ROOT REFERENCE [ITERATIONS]
//! ```
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

use std::path::Path;
use std::time::Instant;

use nsrun::store::{PullOptions, Store};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: lookup_time CACHE_ROOT REFERENCE [ITERATIONS]");
        std::process::exit(2);
    }
    let n: u32 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let opts = PullOptions::default();
    let t = Instant::now();
    for _ in 0..n {
        let s = Store::open(Path::new(&args[1])).expect("open cache");
        s.lookup(&args[2], &opts)
            .expect("lookup")
            .expect("image is cached");
    }
    let per = t.elapsed().as_secs_f64() / n as f64;
    println!(
        "Store::open + lookup: {:.1} us per call ({n} calls)",
        per * 1e6
    );
}
