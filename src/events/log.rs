//! The write-ahead log of accepted event batches: `<state.dir>/events.log`.
//!
//! Each batch is one frame — `len: u32 LE | crc32(payload): u32 LE |
//! payload` (the batch and its arrival time as JSON) — written with one
//! `write` and, with `state.fsync`, `fdatasync`ed before the caller gets
//! its 200. At start every frame is read back and replayed.
//!
//! What recovery accepts, and what it refuses (naming the byte offset,
//! never cutting anything):
//! - A frame cut short at the very end of the last log, with nothing
//!   valid after it (a crash mid-write), is a torn tail: it was never
//!   acknowledged, so it is cut off and reported. So is a tail of zeros
//!   (a file system that extended the file before the crash).
//! - A frame whose checksum fails, or whose length runs past the end while
//!   a valid frame follows somewhere after it (a flipped bit in a length),
//!   is corruption: the start is refused.
//! - A log that follows a missing snapshot (or a gap between generations)
//!   is refused too: the events before it are not there.
//!
//! Error paths: a failed append (a full disk, an I/O error) cuts the file
//! back to its last good frame and syncs that before it answers; if even
//! that fails the log is *poisoned* — every later append first retries the
//! cut and is refused until it succeeds — so a partial frame never sits in
//! front of an acknowledged one.
//!
//! Compaction: past `state.compact_bytes`, appends first move to a new log
//! (`events-<g>.log`; the first is `events.log`), then the live view is
//! written as a snapshot (`snapshot.bin`: the generation it covers,
//! length, checksum, the view as JSON; streamed to a temporary file,
//! fsynced, renamed) covering every log before the new one, and the covered
//! logs are deleted. A failure at any step leaves a folder that replays
//! completely: the old snapshot and every log after it, or the new
//! snapshot and the logs after it. One process owns a state folder at a
//! time (an exclusive lock on `<dir>/LOCK`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Event;

const LOG: &str = "events.log";
const SNAPSHOT: &str = "snapshot.bin";

/// The log file of generation `g`.
fn log_name(g: u64) -> String {
    if g == 0 {
        LOG.to_string()
    } else {
        format!("events-{g}.log")
    }
}

/// The generation of a log file name.
fn generation_of(name: &str) -> Option<u64> {
    if name == LOG {
        return Some(0);
    }
    name.strip_prefix("events-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// CRC-32 (IEEE), table-driven, fed in pieces.
#[derive(Clone, Copy)]
struct Crc32(u32);

impl Crc32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };

    fn new() -> Crc32 {
        Crc32(!0)
    }

    fn update(&mut self, data: &[u8]) {
        self.0 = data.iter().fold(self.0, |c, &b| {
            Self::TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
        });
    }

    fn finish(self) -> u32 {
        !self.0
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(data);
    c.finish()
}

/// One logged batch: its events and when the server accepted it (epoch
/// ms; ids are remembered for the dedupe window from then).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub arrived_ms: i64,
    pub events: Vec<Event>,
}

/// A frame's payload as written now, or as logs before arrival times
/// were recorded wrote it (the events alone; they arrived no later than
/// their newest timestamp says).
#[derive(Deserialize)]
#[serde(untagged)]
enum Payload {
    Batch(Batch),
    Events(Vec<Event>),
}

impl From<Payload> for Batch {
    fn from(p: Payload) -> Batch {
        match p {
            Payload::Batch(b) => b,
            Payload::Events(events) => Batch {
                arrived_ms: events.iter().map(Event::timestamp).max().unwrap_or(0),
                events,
            },
        }
    }
}

/// What opening the log found.
#[derive(Debug, Default, PartialEq)]
pub struct Recovered {
    /// The last snapshot's payload (the view as JSON), when there is one.
    pub snapshot: Option<Vec<u8>>,
    /// The batches logged after it, in order.
    pub batches: Vec<Batch>,
    /// Bytes of a torn last frame that were cut off.
    pub torn_bytes: u64,
    pub log_bytes: u64,
}

/// Why the log cannot take a batch now.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The batch was not stored; the log is as it was before the call.
    #[error("the batch could not be written: {0}")]
    Failed(std::io::Error),
    /// An earlier failed append could not be undone, and cannot be now:
    /// nothing is accepted until the file can be cut back.
    #[error("the event log is poisoned (an earlier failed write could not be cut back: {0}); nothing is accepted until it can be")]
    Poisoned(std::io::Error),
}

pub struct EventLog {
    dir: std::path::PathBuf,
    file: File,
    /// The generation `file` is.
    generation: u64,
    /// Bytes of whole, acknowledged frames in `file`: where it is cut
    /// back to after a failed append.
    bytes: u64,
    fsync: bool,
    /// Set when a failed append could not be cut back: the file may end in
    /// a partial frame, which must go before anything is appended.
    poisoned: bool,
    /// Failures injected at named steps (tests only).
    #[cfg(test)]
    faults: faults::Faults,
    /// Held for the process's life: the folder's exclusive lock.
    _lock: File,
}

/// `len | crc32 | payload` as one buffer.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32(payload).to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The snapshot in `dir`: (generation it covers, payload).
fn read_snapshot(dir: &Path) -> Result<Option<(u64, Vec<u8>)>, String> {
    let bytes = match std::fs::read(dir.join(SNAPSHOT)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("state.dir: cannot read {SNAPSHOT}: {}", e.kind())),
    };
    let damaged = || {
        format!("state.dir: {SNAPSHOT} is damaged (it fails its checksum); move it away (and its logs are then incomplete) or restore it")
    };
    if bytes.len() < 16 {
        return Err(damaged());
    }
    let generation = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    let payload = bytes.get(16..16 + len).ok_or_else(damaged)?;
    if crc32(payload) != crc {
        return Err(damaged());
    }
    Ok(Some((generation, payload.to_vec())))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_: &Path) -> std::io::Result<()> {
    Ok(())
}

/// A writer that counts and checksums what passes through it.
struct Summing<W> {
    inner: W,
    crc: Crc32,
    len: u64,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The generations found in `dir` must follow the snapshot (or, without
/// one, start at the first log) with no gap: anything else means events
/// are missing, and the start is refused rather than silently run
/// without them.
fn check_generations(covered: Option<u64>, generations: &[u64]) -> Result<(), String> {
    let mut expected = covered.map_or(0, |c| c + 1);
    for &g in generations {
        if g != expected {
            let before = if expected == 0 || covered == Some(expected - 1) {
                match covered {
                    Some(c) => format!("{SNAPSHOT} covers only the logs up to generation {c}"),
                    None => format!(
                        "there is no {SNAPSHOT}, which the logs before it were compacted into"
                    ),
                }
            } else {
                format!("{} is missing", log_name(expected))
            };
            return Err(format!(
                "state.dir: {} needs the events before it, but {before}: restore the missing file, or move the folder away to start without live state",
                log_name(g)
            ));
        }
        expected = g + 1;
    }
    Ok(())
}

impl EventLog {
    /// Opens (creating) the log in `dir`: reads the snapshot and every
    /// batch logged after it, and deletes the logs the snapshot covers.
    pub fn open(dir: &Path, fsync: bool) -> Result<(EventLog, Recovered), String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("state.dir: cannot create the folder: {}", e.kind()))?;
        let lock = File::create(dir.join("LOCK"))
            .map_err(|e| format!("state.dir: cannot create LOCK: {}", e.kind()))?;
        lock_exclusive(&lock)?;
        // A snapshot a compaction did not finish writing.
        let _ = std::fs::remove_file(dir.join(format!("{SNAPSHOT}.tmp")));
        let mut recovered = Recovered::default();
        let covered = match read_snapshot(dir)? {
            Some((g, payload)) => {
                recovered.snapshot = Some(payload);
                Some(g)
            }
            None => None,
        };
        let mut generations: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| format!("state.dir: cannot list the folder: {}", e.kind()))?
            .filter_map(|e| generation_of(e.ok()?.file_name().to_str()?))
            .collect();
        generations.sort_unstable();
        if let Some(c) = covered {
            // Left by a compaction that stopped before deleting them.
            for &g in generations.iter().filter(|&&g| g <= c) {
                let _ = std::fs::remove_file(dir.join(log_name(g)));
            }
            generations.retain(|&g| g > c);
        }
        check_generations(covered, &generations)?;
        let current = generations
            .last()
            .copied()
            .unwrap_or_else(|| covered.map_or(0, |c| c + 1));
        for &g in &generations {
            let (batches, torn, bytes) = read_log(&dir.join(log_name(g)), g == current)?;
            recovered.batches.extend(batches);
            recovered.torn_bytes += torn;
            if g == current {
                recovered.log_bytes = bytes;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(log_name(current)))
            .map_err(|e| format!("state.dir: cannot open {}: {}", log_name(current), e.kind()))?;
        Ok((
            EventLog {
                dir: dir.to_path_buf(),
                file,
                generation: current,
                bytes: recovered.log_bytes,
                fsync,
                poisoned: false,
                #[cfg(test)]
                faults: faults::Faults::default(),
                _lock: lock,
            },
            recovered,
        ))
    }

    /// Bytes in the current log.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether an append failed and could not be cut back yet.
    pub fn poisoned(&self) -> bool {
        self.poisoned
    }

    /// A step that can fail: the injected failure (tests), else `op`.
    fn step<T>(
        &mut self,
        _point: &'static str,
        op: impl FnOnce(&mut Self) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        #[cfg(test)]
        self.faults.hit(_point)?;
        op(self)
    }

    /// Moves appends to a new log, then writes the view (`write_view`
    /// streams it) as the snapshot covering every log before it, and
    /// deletes those. An error at any step leaves the folder replayable
    /// (see the module's doc); the caller may simply try again later.
    pub fn compact(
        &mut self,
        write_view: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        if self.poisoned {
            return Err(std::io::Error::other("the log is poisoned"));
        }
        let covers = self.generation;
        let next = covers + 1;
        let next_path = self.dir.join(log_name(next));
        // 1. The next log, durable in the folder, before anything moves.
        let opened = self.step("compact.open_next", |s| {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&next_path)?;
            s.step("compact.sync_dir", |s| sync_dir(&s.dir))?;
            Ok(f)
        });
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&next_path);
                return Err(e);
            }
        };
        // 2. Appends go there from now on: whatever follows, the logs
        // replay in order.
        drop(std::mem::replace(&mut self.file, file));
        self.generation = next;
        self.bytes = 0;
        // 3. The snapshot covering `covers` and every log before it.
        let tmp = self.dir.join(format!("{SNAPSHOT}.tmp"));
        let written = self.step("compact.write", |s| {
            let mut f = File::create(&tmp)?;
            f.write_all(&covers.to_le_bytes())?;
            f.write_all(&[0u8; 8])?;
            let mut out = Summing {
                inner: std::io::BufWriter::new(&mut f),
                crc: Crc32::new(),
                len: 0,
            };
            write_view(&mut out)?;
            out.flush()?;
            let (len, crc) = (out.len, out.crc.finish());
            drop(out);
            let len = u32::try_from(len)
                .map_err(|_| std::io::Error::other("the snapshot is over 4 GiB"))?;
            f.seek(std::io::SeekFrom::Start(8))?;
            f.write_all(&len.to_le_bytes())?;
            f.write_all(&crc.to_le_bytes())?;
            s.step("compact.sync", |_| f.sync_all())?;
            s.step("compact.rename", |s| {
                std::fs::rename(&tmp, s.dir.join(SNAPSHOT))
            })?;
            s.step("compact.sync_dir", |s| sync_dir(&s.dir))
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        // 4. What the snapshot covers (a leftover is deleted at start).
        for g in (0..=covers).rev() {
            match std::fs::remove_file(self.dir.join(log_name(g))) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                _ => {}
            }
        }
        Ok(())
    }

    /// Appends one batch as one frame; durable on return when fsync is on.
    /// On an error nothing of the batch stays in the file.
    pub fn append(&mut self, batch: &[Event], arrived_ms: i64) -> Result<u64, AppendError> {
        if self.poisoned {
            self.cut_back().map_err(AppendError::Poisoned)?;
            self.poisoned = false;
            tracing::info!("event log: the failed write was cut back; accepting events again");
        }
        #[derive(Serialize)]
        struct Out<'a> {
            arrived_ms: i64,
            events: &'a [Event],
        }
        let payload = serde_json::to_vec(&Out {
            arrived_ms,
            events: batch,
        })
        .map_err(|e| AppendError::Failed(e.into()))?;
        let frame = frame(&payload);
        let written = self
            .step("append.write", |s| {
                #[cfg(test)]
                if s.faults.take("append.partial") {
                    s.file.write_all(&frame[..frame.len() / 2])?;
                    return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
                }
                s.file.write_all(&frame)
            })
            .and_then(|()| {
                if self.fsync {
                    self.step("append.sync", |s| s.file.sync_data())
                } else {
                    Ok(())
                }
            });
        if let Err(e) = written {
            // Whatever part of the frame reached the file goes; only then
            // may another frame follow.
            if let Err(cut) = self.cut_back() {
                self.poisoned = true;
                tracing::error!(error = %cut, "event log: a failed write could not be cut back; refusing events until it can");
            }
            return Err(AppendError::Failed(e));
        }
        self.bytes += frame.len() as u64;
        Ok(frame.len() as u64)
    }

    /// Cuts the file back to its last whole frame, durably.
    fn cut_back(&mut self) -> std::io::Result<()> {
        let len = self.bytes;
        self.step("truncate", |s| s.file.set_len(len))?;
        self.step("truncate.sync", |s| s.file.sync_all())
    }
}

/// Whether a whole, valid frame starts anywhere in `rest` after its first
/// byte: then what looked like a cut-short frame is a damaged one.
fn valid_frame_after(rest: &[u8]) -> bool {
    (1..rest.len().saturating_sub(8)).any(|i| {
        let r = &rest[i..];
        let len = u32::from_le_bytes(r[..4].try_into().expect("4 bytes")) as usize;
        len > 0
            && r.len() >= 8 + len
            && crc32(&r[8..8 + len]) == u32::from_le_bytes(r[4..8].try_into().expect("4 bytes"))
    })
}

/// The batches of every log in `dir` after its snapshot, read without the
/// folder's lock and without changing anything (a running server may hold
/// it): a torn tail of the last log is left out, not cut. What `cascade
/// dataset` reads outcomes from.
pub fn peek(dir: &Path) -> Result<Vec<Batch>, String> {
    let covered = read_snapshot(dir)?.map(|(g, _)| g);
    let mut generations: Vec<u64> = std::fs::read_dir(dir)
        .map_err(|e| format!("state.dir: cannot list the folder: {}", e.kind()))?
        .filter_map(|e| generation_of(e.ok()?.file_name().to_str()?))
        .filter(|&g| covered.is_none_or(|c| g > c))
        .collect();
    generations.sort_unstable();
    let last = generations.last().copied();
    let mut out = Vec::new();
    for g in generations {
        let path = dir.join(log_name(g));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            // Deleted by a compaction since it was listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(format!(
                    "state.dir: cannot read {}: {}",
                    log_name(g),
                    e.kind()
                ))
            }
        };
        out.extend(parse_log(&bytes, &log_name(g), Some(g) == last)?.0);
    }
    Ok(out)
}

/// Every batch of one log file; a torn tail of the last log is cut off.
/// Returns the batches, the bytes cut and the bytes kept.
fn read_log(path: &Path, last: bool) -> Result<(Vec<Batch>, u64, u64), String> {
    let name = path
        .file_name()
        .map_or(LOG.into(), |n| n.to_string_lossy().into_owned());
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("state.dir: cannot open {name}: {}", e.kind()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("state.dir: cannot read {name}: {}", e.kind()))?;
    let (batches, torn, at) = parse_log(&bytes, &name, last)?;
    if torn > 0 {
        file.set_len(at)
            .and_then(|()| file.sync_all())
            .map_err(|e| {
                format!(
                    "state.dir: cannot cut the torn tail of {name}: {}",
                    e.kind()
                )
            })?;
    }
    Ok((batches, torn, at))
}

/// The batches of one log's bytes; where a torn tail starts (only in the
/// last log); an error for anything damaged. Returns the batches, the
/// bytes of the torn tail and the bytes before it.
fn parse_log(bytes: &[u8], name: &str, last: bool) -> Result<(Vec<Batch>, u64, u64), String> {
    let damaged = |at: usize, why: &str| {
        format!(
            "state.dir: {name} is damaged at byte {at} ({why}); nothing was cut: move the file away to start without it, or restore it"
        )
    };
    let mut batches = Vec::new();
    let mut torn = 0;
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        // Zeros to the end of the last log: a file system that grew the
        // file and crashed before the write landed.
        if last && rest.iter().all(|&b| b == 0) {
            torn = rest.len() as u64;
            break;
        }
        let complete = rest.len() >= 8 && {
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            rest.len() >= 8 + len
        };
        if !complete {
            // Only a short final record of the last log, with nothing
            // whole after it, is a write the crash cut short.
            if !last || valid_frame_after(rest) {
                return Err(damaged(
                    at,
                    "a record's length runs past the end of the file, yet whole records follow",
                ));
            }
            torn = rest.len() as u64;
            break;
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let payload = &rest[8..8 + len];
        if crc32(payload) != crc {
            return Err(damaged(at, "a record fails its checksum"));
        }
        let batch: Payload = serde_json::from_slice(payload).map_err(|e| {
            format!("state.dir: {name}: the record at byte {at} cannot be read: {e}")
        })?;
        batches.push(batch.into());
        at += 8 + len;
    }
    Ok((batches, torn, at as u64))
}

#[cfg(unix)]
fn lock_exclusive(f: &File) -> Result<(), String> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock only reads its two integer arguments; the descriptor is
    // open for the duration of the call.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err("state.dir: in use by another Cascade process (give each its own folder)".into())
    }
}

#[cfg(not(unix))]
fn lock_exclusive(_: &File) -> Result<(), String> {
    Ok(())
}

/// Failures injected at named steps of the log (tests only): the seam the
/// error paths are tested through, one step at a time.
#[cfg(test)]
mod faults {
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct Faults {
        /// Step → (calls to let through first, failures to inject then).
        armed: HashMap<&'static str, (u32, u32)>,
    }

    impl Faults {
        /// The `skip + 1`-th call of `point` and the `times - 1` after it fail.
        pub fn arm(&mut self, point: &'static str, skip: u32, times: u32) {
            self.armed.insert(point, (skip, times));
        }

        pub fn hit(&mut self, point: &'static str) -> std::io::Result<()> {
            if self.take(point) {
                return Err(std::io::Error::from_raw_os_error(
                    if point.starts_with("append") {
                        libc::ENOSPC
                    } else {
                        libc::EIO
                    },
                ));
            }
            Ok(())
        }

        /// Whether this call of `point` is one to fail.
        pub fn take(&mut self, point: &'static str) -> bool {
            let Some((skip, times)) = self.armed.get_mut(point) else {
                return false;
            };
            if *skip > 0 {
                *skip -= 1;
                return false;
            }
            if *times == 0 {
                return false;
            }
            *times -= 1;
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str) -> Event {
        Event::Item {
            id: id.into(),
            item_id: "50".into(),
            available: Some(false),
            fields: None,
            timestamp: 1,
        }
    }

    fn batch(ids: &[&str]) -> Batch {
        Batch {
            arrived_ms: 7,
            events: ids.iter().map(|i| ev(i)).collect(),
        }
    }

    fn append(log: &mut EventLog, ids: &[&str]) -> Result<u64, AppendError> {
        log.append(&batch(ids).events, 7)
    }

    fn ids(r: &Recovered) -> Vec<Vec<String>> {
        r.batches
            .iter()
            .map(|b| b.events.iter().map(|e| e.id().to_string()).collect())
            .collect()
    }

    fn view(bytes: &'static [u8]) -> impl FnOnce(&mut dyn Write) -> std::io::Result<()> {
        move |w| w.write_all(bytes)
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn batches_come_back_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, r) = EventLog::open(dir.path(), true).unwrap();
            assert_eq!(r, Recovered::default());
            append(&mut log, &["a", "b"]).unwrap();
            append(&mut log, &["c"]).unwrap();
        }
        // A crash mid-write: half a frame at the end.
        let path = dir.path().join(LOG);
        let whole = std::fs::read(&path).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(&whole[..whole.len() / 3]);
        std::fs::write(&path, &torn).unwrap();
        let (mut log, r) = EventLog::open(dir.path(), true).unwrap();
        assert_eq!(r.batches, vec![batch(&["a", "b"]), batch(&["c"])]);
        assert_eq!(r.torn_bytes as usize, whole.len() / 3);
        assert_eq!(std::fs::read(&path).unwrap(), whole, "the tail is cut");
        append(&mut log, &["d"]).unwrap();
        drop(log);
        let (_, r) = EventLog::open(dir.path(), true).unwrap();
        assert_eq!(r.batches.len(), 3);
        // A tail of zeros (a file system that grew the file, then crashed).
        let mut zeros = std::fs::read(&path).unwrap();
        let kept = zeros.len();
        zeros.extend_from_slice(&[0u8; 100]);
        std::fs::write(&path, &zeros).unwrap();
        let (_, r) = EventLog::open(dir.path(), true).unwrap();
        assert_eq!((r.batches.len(), r.torn_bytes), (3, 100));
        assert_eq!(std::fs::read(&path).unwrap().len(), kept);
    }

    #[test]
    fn logs_written_before_arrival_times_still_replay() {
        let dir = tempfile::tempdir().unwrap();
        let events = vec![ev("a")];
        std::fs::write(
            dir.path().join(LOG),
            frame(&serde_json::to_vec(&events).unwrap()),
        )
        .unwrap();
        let (_, r) = EventLog::open(dir.path(), true).unwrap();
        assert_eq!(
            r.batches,
            vec![Batch {
                arrived_ms: 1,
                events
            }]
        );
    }

    #[test]
    fn a_damaged_record_refuses_to_start_and_one_folder_has_one_owner() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = EventLog::open(dir.path(), false).unwrap();
            append(&mut log, &["a"]).unwrap();
            append(&mut log, &["b"]).unwrap();
        }
        let path = dir.path().join(LOG);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let e = EventLog::open(dir.path(), false).err().unwrap();
        assert!(e.contains("damaged at byte 0"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was cut");
        let other = tempfile::tempdir().unwrap();
        let _first = EventLog::open(other.path(), false).unwrap();
        let e = EventLog::open(other.path(), false).err().unwrap();
        assert!(e.contains("in use by another"), "{e}");
    }

    /// A flipped bit in a record's length makes it run past the end of the
    /// file; the records after it show it is damage, not a torn write: the
    /// start is refused at that record's offset and nothing is cut.
    #[test]
    fn a_flipped_length_bit_mid_log_is_damage_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut offsets = Vec::new();
        {
            let (mut log, _) = EventLog::open(dir.path(), true).unwrap();
            for i in 0..20 {
                offsets.push(log.bytes());
                append(&mut log, &[&format!("e{i}")]).unwrap();
            }
        }
        let path = dir.path().join(LOG);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[10] as usize + 2] ^= 0x01; // the length's third byte
        std::fs::write(&path, &bytes).unwrap();
        let e = EventLog::open(dir.path(), true).err().unwrap();
        assert!(
            e.contains(&format!("damaged at byte {}", offsets[10])),
            "{e}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "the evidence is kept");
    }

    #[test]
    fn a_snapshot_covers_the_logs_before_it_at_every_step_of_a_compaction() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = EventLog::open(dir.path(), true).unwrap();
            append(&mut log, &["a"]).unwrap();
            assert!(log.bytes() > 0);
            log.compact(view(b"{\"view\":1}")).unwrap();
            assert_eq!(log.bytes(), 0);
            append(&mut log, &["b"]).unwrap();
        }
        let (mut log, r) = EventLog::open(dir.path(), true).unwrap();
        assert_eq!(r.snapshot.as_deref(), Some(&b"{\"view\":1}"[..]));
        assert_eq!(ids(&r), [["b"]], "only what came after");
        assert!(!dir.path().join(LOG).exists(), "the covered log is gone");
        // A crash after the snapshot's rename, before the covered log was
        // deleted: that log is deleted at start, never replayed.
        log.compact(view(b"{\"view\":2}")).unwrap();
        append(&mut log, &["c"]).unwrap();
        drop(log);
        std::fs::write(dir.path().join(log_name(1)), frame(b"[]")).unwrap();
        let (_, r) = EventLog::open(dir.path(), true).unwrap();
        assert_eq!(r.snapshot.as_deref(), Some(&b"{\"view\":2}"[..]));
        assert_eq!(ids(&r), [["c"]]);
        assert!(!dir.path().join(log_name(1)).exists());
        // A damaged snapshot stops the start.
        let path = dir.path().join(SNAPSHOT);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let e = EventLog::open(dir.path(), true).err().unwrap();
        assert!(e.contains("snapshot.bin is damaged"), "{e}");
    }

    /// The snapshot deleted while a later log remains: the events it held
    /// are gone, so the start is refused, naming what is missing; so is a
    /// gap between generations.
    #[test]
    fn a_log_after_a_missing_snapshot_or_log_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = EventLog::open(dir.path(), true).unwrap();
            append(&mut log, &["a"]).unwrap();
            log.compact(view(b"{}")).unwrap();
            append(&mut log, &["b"]).unwrap();
            log.compact(view(b"{}")).unwrap();
            append(&mut log, &["c"]).unwrap();
        }
        std::fs::remove_file(dir.path().join(SNAPSHOT)).unwrap();
        let e = EventLog::open(dir.path(), true).err().unwrap();
        assert!(
            e.contains("events-2.log needs the events before it") && e.contains("no snapshot.bin"),
            "{e}"
        );
        assert!(dir.path().join(log_name(2)).exists(), "nothing deleted");
        assert_eq!(check_generations(Some(1), &[2, 3]), Ok(()));
        let e = check_generations(Some(1), &[2, 4]).unwrap_err();
        assert!(e.contains("events-3.log is missing"), "{e}");
        let e = check_generations(Some(1), &[3]).unwrap_err();
        assert!(e.contains("covers only the logs up to generation 1"), "{e}");
    }

    /// ENOSPC or EIO at any step of an append: the batch is refused, the
    /// file holds exactly the frames acknowledged before, and the next
    /// append (once the disk has room) is acknowledged and replayed.
    #[test]
    fn a_failed_append_leaves_no_partial_frame_at_any_step() {
        for (point, times) in [
            ("append.partial", 1),
            ("append.write", 1),
            ("append.sync", 1),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (mut log, _) = EventLog::open(dir.path(), true).unwrap();
            append(&mut log, &["a"]).unwrap();
            let good = std::fs::read(dir.path().join(LOG)).unwrap();
            log.faults.arm(point, 0, times);
            assert!(
                matches!(append(&mut log, &["lost"]), Err(AppendError::Failed(_))),
                "{point}"
            );
            assert!(!log.poisoned(), "{point}");
            assert_eq!(
                std::fs::read(dir.path().join(LOG)).unwrap(),
                good,
                "{point}: cut back"
            );
            append(&mut log, &["b"]).unwrap();
            drop(log);
            let (_, r) = EventLog::open(dir.path(), true).unwrap();
            assert_eq!(ids(&r), [["a"], ["b"]], "{point}");
            assert_eq!(r.torn_bytes, 0, "{point}");
        }
    }

    /// When even the cut fails, the log is poisoned: nothing is accepted
    /// until the cut succeeds; then appends go on after the last good frame.
    #[test]
    fn a_failed_cut_poisons_the_log_until_it_can_be_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = EventLog::open(dir.path(), true).unwrap();
        append(&mut log, &["a"]).unwrap();
        log.faults.arm("append.partial", 0, 1);
        log.faults.arm("truncate", 0, 2);
        assert!(matches!(
            append(&mut log, &["lost"]),
            Err(AppendError::Failed(_))
        ));
        assert!(log.poisoned());
        assert!(matches!(
            append(&mut log, &["refused"]),
            Err(AppendError::Poisoned(_))
        ));
        assert!(log.compact(view(b"{}")).is_err(), "no compaction either");
        append(&mut log, &["b"]).unwrap();
        assert!(!log.poisoned());
        drop(log);
        let (_, r) = EventLog::open(dir.path(), true).unwrap();
        assert_eq!(ids(&r), [["a"], ["b"]]);
        assert_eq!(r.torn_bytes, 0);
    }

    /// A compaction that fails at any step — before or after the
    /// snapshot's rename — loses nothing: appends after it and every batch
    /// before it come back, each once.
    #[test]
    fn a_compaction_failing_at_any_step_loses_nothing() {
        for (point, skip) in [
            ("compact.open_next", 0),
            ("compact.sync_dir", 0),
            ("compact.write", 0),
            ("compact.sync", 0),
            ("compact.rename", 0),
            ("compact.sync_dir", 1),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (mut log, _) = EventLog::open(dir.path(), true).unwrap();
            append(&mut log, &["a"]).unwrap();
            log.compact(view(b"{\"n\":1}")).unwrap();
            append(&mut log, &["b"]).unwrap();
            log.faults.arm(point, skip, 1);
            assert!(log.compact(view(b"{\"n\":2}")).is_err(), "{point}/{skip}");
            append(&mut log, &["c"]).unwrap();
            drop(log);
            let (_, r) = EventLog::open(dir.path(), true).unwrap();
            // The rename happened before the last step failed: the new
            // snapshot covers "b"; otherwise the old one and both logs.
            let renamed = point == "compact.sync_dir" && skip == 1;
            let (view, want): (&[u8], Vec<Vec<&str>>) = if renamed {
                (b"{\"n\":2}", vec![vec!["c"]])
            } else {
                (b"{\"n\":1}", vec![vec!["b"], vec!["c"]])
            };
            assert_eq!(r.snapshot.as_deref(), Some(view), "{point}/{skip}");
            assert_eq!(ids(&r), want, "{point}/{skip}");
        }
    }
}
