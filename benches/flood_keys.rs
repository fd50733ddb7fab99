//! Memory held by flood control per correlation key: `cargo bench --bench flood_keys`.
//! Admits N distinct keys (the default ticket-id-and-event shape), reads the resident set size
//! before and after, then sweeps after the window and reads it again.

use std::time::{Duration, Instant};

use haloflow::internals::flood::{FloodClock, FloodControl, MemoryFloodControl};
use haloflow::internals::flow::FloodControlDef;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let keys: u32 = std::env::var("FLOOD_KEYS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(1_000_000);
    let clock = FloodClock::manual();
    let settings = FloodControlDef::default();
    let flood = MemoryFloodControl::new([("flow", &settings)], clock.clone());
    let before = rss_bytes();
    let started = Instant::now();
    for i in 0..keys {
        // A realistic key: `[ticket id, "new ticket logged"]`.
        let key = format!("[{},\"new ticket logged\"]", 100_000 + i);
        let request_id = format!("01a206f8-98b4-732c-8d78-{:012x}", i);
        flood.admit("flow", &key, &request_id).await;
    }
    let elapsed = started.elapsed();
    let after = rss_bytes();
    clock.advance(Duration::from_secs(61));
    flood.sweep();
    let swept = rss_bytes();
    let per_key = (after.saturating_sub(before)) as f64 / f64::from(keys);
    println!("keys admitted:        {keys}");
    println!(
        "admit time:           {:.0} ns/key",
        elapsed.as_nanos() as f64 / f64::from(keys)
    );
    println!("RSS before:           {:.1} MiB", before as f64 / 1048576.0);
    println!(
        "RSS with all keys:    {:.1} MiB  ({per_key:.0} bytes/key)",
        after as f64 / 1048576.0
    );
    println!(
        "RSS after the sweep:  {:.1} MiB  (keys left: {:?})",
        swept as f64 / 1048576.0,
        flood.tracked_keys()
    );
}
