//! How often SQLite's WAL is checkpointed and starts over under steady writes:
//! `cargo bench --bench wal [-- --seconds 20 --writers 8 --body 3000 --rate 2000]`.
//!
//! `writers` tasks write trigger requests (`--body` bytes each) through `SqliteStorage` for
//! `--seconds`, as the group-commit writer and its checkpoints see them under load: each as
//! fast as its writes are answered, or, with `--rate`, that many writes per second in all
//! (an open loop: steady writes below what the database can take). A thread reads SQLite's own bookkeeping every millisecond, without taking a lock
//! or running a checkpoint itself:
//! - the WAL file's header: salt-1 is incremented each time the WAL starts over (the next
//!   writer writes from its beginning after a checkpoint that copied every frame), so its
//!   change from start to end counts restarts exactly, however fast they come;
//! - the wal-index (`-shm`) header: `mxFrame` (frames in the WAL) and `nBackfill` (frames a
//!   checkpoint has copied into the database): each rise of `nBackfill` is a checkpoint that
//!   copied something, as sampled (two in one millisecond count once).
//!
//! Offsets are SQLite's file format (<https://sqlite.org/fileformat2.html#walformat>,
//! <https://sqlite.org/walformat.html>).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use haloflow::storage::{Backend, NewRequest, RunStore, SqliteStorage};

struct Args {
    seconds: u64,
    writers: usize,
    body: usize,
    /// Writes per second in all; as fast as they are answered when not given.
    rate: Option<f64>,
}

impl Args {
    fn parse() -> Option<Args> {
        let mut args = Args {
            seconds: 20,
            writers: 8,
            body: 3000,
            rate: None,
        };
        let mut bench = false;
        let mut words = std::env::args().skip(1);
        while let Some(word) = words.next() {
            let mut number = || words.next().and_then(|n| n.parse().ok());
            match word.as_str() {
                "--bench" => bench = true,
                "--seconds" => args.seconds = number()?,
                "--writers" => args.writers = number()? as usize,
                "--body" => args.body = number()? as usize,
                "--rate" => args.rate = Some(number()? as f64),
                _ => {}
            }
        }
        bench.then_some(args)
    }
}

/// What the sampler saw of the WAL.
#[derive(Debug, Default)]
struct Seen {
    samples: u64,
    /// Salt-1 of the WAL header at the first and the last sample.
    first_salt: Option<u32>,
    last_salt: Option<u32>,
    /// When salt-1 was seen to change: the restarts' times, as sampled.
    restarts_at: Vec<Duration>,
    /// Rises of `nBackfill`: checkpoints that copied frames, as sampled.
    checkpoints: u64,
    max_frames: u32,
    max_wal_bytes: u64,
}

/// `u32` at `at`, in `order`.
fn word(bytes: &[u8], at: usize, big_endian: bool) -> Option<u32> {
    let raw: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(if big_endian {
        u32::from_be_bytes(raw)
    } else {
        u32::from_ne_bytes(raw)
    })
}

/// The first `n` bytes of `path`, or fewer when it is shorter (or missing).
fn head(path: &Path, n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buffer = vec![0; n];
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let read = file.read(&mut buffer).unwrap_or(0);
    buffer.truncate(read);
    buffer
}

/// Samples the WAL of `db` every millisecond until `stop`.
fn sample(db: PathBuf, stop: Arc<AtomicBool>) -> Seen {
    let (wal, shm) = (db.with_extension("db-wal"), db.with_extension("db-shm"));
    let started = Instant::now();
    let mut seen = Seen::default();
    let mut backfill = 0;
    while !stop.load(Ordering::Relaxed) {
        seen.samples += 1;
        // WAL header: salt-1 at 16, big-endian.
        if let Some(salt) = word(&head(&wal, 32), 16, true) {
            if seen.last_salt.is_some_and(|last| last != salt) {
                seen.restarts_at.push(started.elapsed());
            }
            seen.first_salt.get_or_insert(salt);
            seen.last_salt = Some(salt);
        }
        // wal-index header, native byte order: mxFrame at 16, nBackfill at 96.
        let index = head(&shm, 100);
        if let (Some(frames), Some(copied)) = (word(&index, 16, false), word(&index, 96, false)) {
            seen.max_frames = seen.max_frames.max(frames);
            if copied > backfill {
                seen.checkpoints += 1;
            }
            backfill = copied;
        }
        let bytes = std::fs::metadata(&wal).map_or(0, |m| m.len());
        seen.max_wal_bytes = seen.max_wal_bytes.max(bytes);
        std::thread::sleep(Duration::from_millis(1));
    }
    seen
}

fn request(writer: usize, i: u64, body: &str) -> NewRequest {
    NewRequest {
        id: format!("req-{writer}-{i}"),
        flow_id: "wal".into(),
        received_at_ms: i as i64,
        http_status: 202,
        error: None,
        query: None,
        body: Some(body.to_owned()),
        event_count: 0,
        outcome: None,
    }
}

/// Writes for `seconds` from `writers` tasks; returns the writes.
async fn write(storage: &Arc<SqliteStorage>, args: &Args) -> u64 {
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let body = Arc::new("y".repeat(args.body));
    // Each writer's share of the rate, as the time between its writes.
    let every = (args.rate).map(|rate| Duration::from_secs_f64(args.writers as f64 / rate));
    let tasks: Vec<_> = (0..args.writers)
        .map(|writer| {
            let (storage, body) = (storage.clone(), body.clone());
            tokio::spawn(async move {
                let mut ticks = every.map(tokio::time::interval);
                let mut i = 0;
                while Instant::now() < until {
                    if let Some(ticks) = &mut ticks {
                        ticks.tick().await;
                    }
                    let request = request(writer, i, &body);
                    storage.accept_request(&request, &[], &[]).await.unwrap();
                    i += 1;
                }
                i
            })
        })
        .collect();
    let mut writes = 0;
    for task in tasks {
        writes += task.await.unwrap();
    }
    writes
}

/// Smallest, median and largest gap between restarts, in ms.
fn gaps(restarts_at: &[Duration]) -> Option<(f64, f64, f64)> {
    let mut gaps: Vec<f64> = (restarts_at.windows(2))
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0)
        .collect();
    gaps.sort_by(f64::total_cmp);
    Some((*gaps.first()?, gaps[gaps.len() / 2], *gaps.last()?))
}

fn report(args: &Args, writes: u64, commits: u64, took: Duration, seen: &Seen) {
    let secs = took.as_secs_f64();
    let restarts = match (seen.first_salt, seen.last_salt) {
        (Some(first), Some(last)) => u64::from(last.wrapping_sub(first)),
        _ => 0,
    };
    let rate = args.rate.map_or("as fast as answered".to_owned(), |r| {
        format!("{r:.0}/s asked")
    });
    println!(
        "{} writers ({rate}), {} B bodies, {secs:.1} s: {writes} writes ({:.0}/s) in {commits} commits",
        args.writers,
        args.body,
        writes as f64 / secs
    );
    println!(
        "WAL restarts: {restarts} ({:.2}/s, one per {:.0} writes); seen by sampling: {}",
        restarts as f64 / secs,
        writes as f64 / restarts.max(1) as f64,
        seen.restarts_at.len()
    );
    if let Some((least, median, most)) = gaps(&seen.restarts_at) {
        println!(
            "gap between restarts: {least:.0} / {median:.0} / {most:.0} ms (min / median / max)"
        );
    }
    println!(
        "checkpoints that copied frames (sampled): {} ({:.2}/s); at most {} frames in the WAL, WAL file at most {:.1} MB; {} samples",
        seen.checkpoints,
        seen.checkpoints as f64 / secs,
        seen.max_frames,
        seen.max_wal_bytes as f64 / 1e6,
        seen.samples
    );
}

fn main() {
    let Some(args) = Args::parse() else {
        println!("wal: not run (start it with `cargo bench --bench wal`)");
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // On the project's disk, as the load benchmark: not a tmpfs.
    std::fs::create_dir_all("target/tmp").unwrap();
    let dir = tempfile::tempdir_in("target/tmp").unwrap();
    let storage = Arc::new(
        runtime
            .block_on(SqliteStorage::open_dir(dir.path()))
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let db = dir.path().join(haloflow::internals::storage::DATABASE_FILE);
    let sampler = std::thread::spawn({
        let stop = stop.clone();
        move || sample(db, stop)
    });
    let started = Instant::now();
    let writes = runtime.block_on(write(&storage, &args));
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let seen = sampler.join().unwrap();
    let commits = storage.write_stats().map_or(0, |s| s.commits);
    report(&args, writes, commits, took, &seen);
}
