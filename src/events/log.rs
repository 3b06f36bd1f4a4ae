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

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use super::Event;

const LOG: &str = "events.log";

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
    pub batches: Vec<Vec<Event>>,
    /// Bytes of a torn last frame that were cut off.
    pub torn_bytes: u64,
    pub log_bytes: u64,
}

pub struct EventLog {
    file: File,
    fsync: bool,
    /// Held for the process's life: the folder's exclusive lock.
    _lock: File,
}

impl EventLog {
    /// Opens (creating) the log in `dir` and reads back every batch.
    pub fn open(dir: &Path, fsync: bool) -> Result<(EventLog, Recovered), String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("state.dir: cannot create the folder: {}", e.kind()))?;
        let lock = File::create(dir.join("LOCK"))
            .map_err(|e| format!("state.dir: cannot create LOCK: {}", e.kind()))?;
        lock_exclusive(&lock)?;
        let path = dir.join(LOG);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("state.dir: cannot open {LOG}: {}", e.kind()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| format!("state.dir: cannot read {LOG}: {}", e.kind()))?;
        let mut recovered = Recovered::default();
        let mut at = 0usize;
        while at < bytes.len() {
            let rest = &bytes[at..];
            let complete = rest.len() >= 8 && {
                let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                rest.len() >= 8 + len
            };
            if !complete {
                recovered.torn_bytes = rest.len() as u64;
                break;
            }
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
            let payload = &rest[8..8 + len];
            if crc32(payload) != crc {
                return Err(format!(
                    "state.dir: {LOG} is damaged at byte {at} (a record fails its checksum); move the file away to start without it, or restore it"
                ));
            }
            let batch: Vec<Event> = serde_json::from_slice(payload).map_err(|e| {
                format!("state.dir: {LOG}: the record at byte {at} cannot be read: {e}")
            })?;
            recovered.batches.push(batch);
            at += 8 + len;
        }
        if recovered.torn_bytes > 0 {
            file.set_len(at as u64).map_err(|e| {
                format!("state.dir: cannot cut the torn tail of {LOG}: {}", e.kind())
            })?;
        }
        recovered.log_bytes = at as u64;
        Ok((
            EventLog {
                file,
                fsync,
                _lock: lock,
            },
            recovered,
        ))
    }

    /// Appends one batch as one frame; durable on return when fsync is on.
    pub fn append(&mut self, batch: &[Event]) -> std::io::Result<u64> {
        let payload = serde_json::to_vec(batch)?;
        let mut frame = Vec::with_capacity(8 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        self.file.write_all(&frame)?;
        if self.fsync {
            self.file.sync_data()?;
        }
        Ok(frame.len() as u64)
    }
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
            available: false,
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
}
