//! The write-ahead log of accepted event batches: `<state.dir>/events.log`.
//!
//! Each batch is one frame — `len: u32 LE | crc32(payload): u32 LE |
//! payload` (the batch as JSON) — written with one `write` and, with
//! `state.fsync`, `fdatasync`ed before the caller gets its 200. At start
//! every frame is read back and replayed. A frame cut short at the end of
//! the file (a crash mid-write) is a torn tail: it was never acknowledged,
//! so it is cut off and reported. A complete frame whose checksum fails is
//! corruption: the server refuses to start and names the byte offset,
//! rather than apply damaged events. One process owns a state folder at a
//! time (an exclusive lock on `<dir>/LOCK`).
//!
//! Compaction: past `state.compact_bytes`, the live view is written as a
//! snapshot (`snapshot.bin`: generation, checksum, the view as JSON;
//! written to a temporary file, fsynced, renamed) covering every log up to
//! the current generation, appends move to a new log (`events-<g>.log`;
//! the first is `events.log`), and the covered logs are deleted. At start
//! the snapshot is loaded and only the logs after it are replayed, so a
//! crash at any step loses nothing and applies nothing twice.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

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

/// CRC-32 (IEEE), table-driven.
fn crc32(data: &[u8]) -> u32 {
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
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// What opening the log found.
#[derive(Debug, Default, PartialEq)]
pub struct Recovered {
    /// The last snapshot's payload (the view as JSON), when there is one.
    pub snapshot: Option<Vec<u8>>,
    /// The batches logged after it, in order.
    pub batches: Vec<Vec<Event>>,
    /// Bytes of a torn last frame that were cut off.
    pub torn_bytes: u64,
    pub log_bytes: u64,
}

pub struct EventLog {
    dir: std::path::PathBuf,
    file: File,
    /// The generation `file` is.
    generation: u64,
    bytes: u64,
    fsync: bool,
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

impl EventLog {
    /// Opens (creating) the log in `dir`: reads the snapshot and every
    /// batch logged after it, and deletes the logs the snapshot covers.
    pub fn open(dir: &Path, fsync: bool) -> Result<(EventLog, Recovered), String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("state.dir: cannot create the folder: {}", e.kind()))?;
        let lock = File::create(dir.join("LOCK"))
            .map_err(|e| format!("state.dir: cannot create LOCK: {}", e.kind()))?;
        lock_exclusive(&lock)?;
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
        let current = generations
            .last()
            .copied()
            .unwrap_or_else(|| covered.map_or(0, |c| c + 1));
        for &g in &generations {
            let (batches, torn, bytes) = read_log(&dir.join(log_name(g)))?;
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
                _lock: lock,
            },
            recovered,
        ))
    }

    /// Bytes in the current log.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes `view` as the snapshot covering every batch logged so far,
    /// moves appends to a new log, and deletes the covered ones.
    pub fn compact(&mut self, view: &[u8]) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(16 + view.len());
        bytes.extend_from_slice(&self.generation.to_le_bytes());
        bytes.extend_from_slice(&frame(view));
        let tmp = self.dir.join(format!("{SNAPSHOT}.tmp"));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join(SNAPSHOT))?;
        sync_dir(&self.dir)?;
        let next = self.generation + 1;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(log_name(next)))?;
        sync_dir(&self.dir)?;
        let old = std::mem::replace(&mut self.file, file);
        drop(old);
        let _ = std::fs::remove_file(self.dir.join(log_name(self.generation)));
        self.generation = next;
        self.bytes = 0;
        Ok(())
    }

    /// Appends one batch as one frame; durable on return when fsync is on.
    pub fn append(&mut self, batch: &[Event]) -> std::io::Result<u64> {
        let frame = frame(&serde_json::to_vec(batch)?);
        self.file.write_all(&frame)?;
        if self.fsync {
            self.file.sync_data()?;
        }
        self.bytes += frame.len() as u64;
        Ok(frame.len() as u64)
    }
}

/// Every batch of one log file; a torn tail is cut off. Returns the
/// batches, the bytes cut and the bytes kept.
fn read_log(path: &Path) -> Result<(Vec<Vec<Event>>, u64, u64), String> {
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
    let mut batches = Vec::new();
    let mut torn = 0;
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let complete = rest.len() >= 8 && {
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            rest.len() >= 8 + len
        };
        if !complete {
            torn = rest.len() as u64;
            break;
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let payload = &rest[8..8 + len];
        if crc32(payload) != crc {
            return Err(format!(
                "state.dir: {name} is damaged at byte {at} (a record fails its checksum); move the file away to start without it, or restore it"
            ));
        }
        let batch: Vec<Event> = serde_json::from_slice(payload).map_err(|e| {
            format!("state.dir: {name}: the record at byte {at} cannot be read: {e}")
        })?;
        batches.push(batch);
        at += 8 + len;
    }
    if torn > 0 {
        file.set_len(at as u64).map_err(|e| {
            format!(
                "state.dir: cannot cut the torn tail of {name}: {}",
                e.kind()
            )
        })?;
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
            log.append(&[ev("a"), ev("b")]).unwrap();
            log.append(&[ev("c")]).unwrap();
        }
        // A crash mid-write: half a frame at the end.
        let path = dir.path().join(LOG);
        let whole = std::fs::read(&path).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(&whole[..whole.len() / 3]);
        std::fs::write(&path, &torn).unwrap();
        let (mut log, r) = EventLog::open(dir.path(), true).unwrap();
        assert_eq!(r.batches, vec![vec![ev("a"), ev("b")], vec![ev("c")]]);
        assert_eq!(r.torn_bytes as usize, whole.len() / 3);
        assert_eq!(std::fs::read(&path).unwrap(), whole, "the tail is cut");
        log.append(&[ev("d")]).unwrap();
        drop(log);
        let (_, r) = EventLog::open(dir.path(), true).unwrap();
        assert_eq!(r.batches.len(), 3);
    }

    #[test]
    fn a_damaged_record_refuses_to_start_and_one_folder_has_one_owner() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = EventLog::open(dir.path(), false).unwrap();
            log.append(&[ev("a")]).unwrap();
            log.append(&[ev("b")]).unwrap();
        }
        let path = dir.path().join(LOG);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let e = EventLog::open(dir.path(), false).err().unwrap();
        assert!(e.contains("damaged at byte 0"), "{e}");
        let other = tempfile::tempdir().unwrap();
        let _first = EventLog::open(other.path(), false).unwrap();
        let e = EventLog::open(other.path(), false).err().unwrap();
        assert!(e.contains("in use by another"), "{e}");
    }

    #[test]
    fn a_snapshot_covers_the_logs_before_it_at_every_step_of_a_compaction() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = EventLog::open(dir.path(), true).unwrap();
            log.append(&[ev("a")]).unwrap();
            assert!(log.bytes() > 0);
            log.compact(b"{\"view\":1}").unwrap();
            assert_eq!(log.bytes(), 0);
            log.append(&[ev("b")]).unwrap();
        }
        let (mut log, r) = EventLog::open(dir.path(), true).unwrap();
        assert_eq!(r.snapshot.as_deref(), Some(&b"{\"view\":1}"[..]));
        assert_eq!(r.batches, vec![vec![ev("b")]], "only what came after");
        assert!(!dir.path().join(LOG).exists(), "the covered log is gone");
        // A crash after the snapshot's rename, before the covered log was
        // deleted: that log is deleted at start, never replayed.
        log.compact(b"{\"view\":2}").unwrap();
        log.append(&[ev("c")]).unwrap();
        drop(log);
        std::fs::write(dir.path().join(log_name(1)), frame(b"[]")).unwrap();
        let (_, r) = EventLog::open(dir.path(), true).unwrap();
        assert_eq!(r.snapshot.as_deref(), Some(&b"{\"view\":2}"[..]));
        assert_eq!(r.batches, vec![vec![ev("c")]]);
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
}
