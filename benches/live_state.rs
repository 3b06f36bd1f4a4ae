//! What live state costs in memory and time, per event rate: the bytes an
//! event id and a user hold, the peak a compaction adds, how long applying
//! a batch and writing the snapshot take — with the server's allocator.
//!
//! `cargo bench --bench live_state` (prints a table; `-- --quick` for a
//! tenth of the events). Memory is the process's resident set (`VmRSS`)
//! before and after, and the peak (`VmHWM`, reset through
//! `/proc/self/clear_refs`) while the snapshot is written: what the pod
//! sees, allocator slack included.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Instant;

use cascade::catalog::Catalog;
use cascade::events::online::{Limits, Online};
use cascade::events::Event;

/// `VmRSS` or `VmHWM` of this process, bytes.
fn status(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn collect() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: mi_collect only walks mimalloc's own heaps.
    unsafe {
        libmimalloc_sys::mi_collect(true)
    }
}

fn mib(b: i64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Applies `events` interactions by `users` users in batches of 100, one
/// arrival a second (20-character ids, as clients send them); reports what
/// it cost.
fn run(catalog: &Arc<Catalog>, events: u64, users: u64, max_users: usize) {
    collect();
    let before = status("VmRSS:") as i64;
    let online = Online::new(
        catalog.clone(),
        Limits {
            max_users,
            ..Limits::default()
        },
    );
    let items = catalog.items.len() as u64;
    let now = 1_800_000_000_000i64;
    let started = Instant::now();
    let mut slowest = 0f64;
    for b in 0..events / 100 {
        let batch: Vec<Event> = (b * 100..(b + 1) * 100)
            .map(|i| Event::Interaction {
                id: format!("evt-{i:016}"),
                user_id: format!("user-{}", (i * 7919) % users),
                item_id: catalog
                    .items
                    .id(((i * i + 17 * i) % items) as u32)
                    .to_string(),
                kind: "rating".into(),
                value: Some((1 + i % 5) as f64),
                timestamp: now + b as i64 * 1000,
                request_id: None,
                attribution: None,
            })
            .collect();
        let t = Instant::now();
        online.apply_arrived(&batch, now + b as i64 * 1000);
        slowest = slowest.max(t.elapsed().as_secs_f64());
    }
    let apply_s = started.elapsed().as_secs_f64();
    collect();
    let held = status("VmRSS:") as i64 - before;
    let (u, _, buckets) = online.size();
    // The compaction's peak: streaming the snapshot to a file.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let base = status("VmHWM:") as i64;
    let file = tempfile::tempfile().expect("a temp file");
    let t = Instant::now();
    let mut w = std::io::BufWriter::new(file);
    online.write_snapshot(&mut w).expect("the snapshot writes");
    let snapshot_s = t.elapsed().as_secs_f64();
    let size = w
        .into_inner()
        .map_or(0, |f| f.metadata().map_or(0, |m| m.len()));
    let peak = status("VmHWM:") as i64 - base;
    println!(
        "{events:>9} events, {users:>7} users (max_users {max_users:>7}): held {:7.1} MiB ({:5.0} B/event), {u:>7} users kept, {buckets:>8} buckets; apply {:6.2} µs/event (slowest batch of 100: {:5.2} ms); snapshot {:6.1} MiB in {:6.0} ms, peak +{:5.1} MiB",
        mib(held),
        held as f64 / events as f64,
        apply_s / events as f64 * 1e6,
        slowest * 1e3,
        mib(size as i64),
        snapshot_s * 1e3,
        mib(peak),
    );
    drop(online);
}

/// One new item (an embedding) per batch, applied through the view, with
/// N items inserted before: what a batch of catalog changes costs, by how
/// many came before it.
fn catalog_changes(catalog: &Arc<Catalog>) {
    let online = Online::new(catalog.clone(), Limits::default());
    let dim = catalog.items.vector(0).len();
    let item = |i: usize| Event::Item {
        id: format!("new-{i}"),
        item_id: format!("new-item-{i}"),
        available: None,
        fields: Some(
            serde_json::json!({ "embedding": vec![0.01 * (i % 7) as f32; dim] })
                .as_object()
                .expect("an object")
                .clone(),
        ),
        timestamp: 1,
    };
    let mut done = 0;
    for upto in [10, 100, 1_000, 3_000, 6_000, 10_000] {
        while done < upto - 10 {
            online.apply_arrived(&[item(done)], 1);
            done += 1;
        }
        let t = Instant::now();
        for _ in 0..10 {
            online.apply_arrived(&[item(done)], 1);
            done += 1;
        }
        println!(
            "catalog changes: one new item after {:>6}: {:8.3} ms per batch",
            upto - 10,
            t.elapsed().as_secs_f64() * 1e3 / 10.0
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `--quick` runs a tenth.
    let quick = std::env::args().any(|a| a == "--quick");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let catalog =
        Arc::new(Catalog::load(&root.join("models/catalog")).expect("the shipped catalog"));
    catalog_changes(&catalog);
    let scale = if quick { 10 } else { 1 };
    println!(
        "live state on the shipped catalog ({} items)",
        catalog.items.len()
    );
    // (The third row is mostly ids: few users, whose histories and
    // counters stop growing early.)
    for (events, users, max_users) in [
        (600_000, 100_000, 1_000_000),
        (2_000_000, 100_000, 1_000_000),
        (2_000_000, 1_000, 1_000_000),
        (600_000, 100_000, 50_000),
    ] {
        run(
            &catalog,
            events / scale,
            users / scale,
            max_users / scale as usize,
        );
    }
}
