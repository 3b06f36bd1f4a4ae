//! The index dump: a frozen [`Graph`] in one file, written by
//! `cascade index build` and loaded by the server instead of rebuilding.
//!
//! Little-endian, in this order: the magic `CASCHNSW`, the format version,
//! a header (dim, items, m, m0, ef_construction, max_level, entry, length of
//! the upper-layer links), the unit vectors, the layer-0 links, the upper
//! layer offsets and links, then a 64-bit checksum of everything before it.
//! Loading reads it straight into the arrays the search uses and checks
//! everything a search relies on (sizes, every link in range, the entry
//! point, finite vectors, the checksum): a damaged or foreign file is an
//! error, never a wrong index or a panic later.
//!
//! hnsw_rs's own `file_dump` / `HnswIo` reload rebuilds its `Arc` graph point
//! by point and asserts (panics) on a bad file; we measured it against this
//! format in benches/RESULTS.md.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use super::graph::{BuildParams, Graph};

const MAGIC: &[u8; 8] = b"CASCHNSW";
const VERSION: u32 = 1;

/// Running checksum over the 32-bit words of the file.
struct Checksum(u64);

impl Checksum {
    fn add(&mut self, word: u32) {
        self.0 = (self.0.rotate_left(5) ^ word as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
}

struct Writer<W: Write> {
    out: W,
    sum: Checksum,
}

impl<W: Write> Writer<W> {
    fn words(&mut self, words: impl IntoIterator<Item = u32>) -> std::io::Result<()> {
        for w in words {
            self.sum.add(w);
            self.out.write_all(&w.to_le_bytes())?;
        }
        Ok(())
    }
}

/// Writes `graph` to `path` (via a temporary file renamed into place, so a
/// reader never sees half a dump).
pub fn save(graph: &Graph, path: &Path) -> std::io::Result<()> {
    let tmp = path.with_extension("partial");
    let file = std::fs::File::create(&tmp)?;
    let mut w = Writer {
        out: BufWriter::with_capacity(1 << 20, file),
        sum: Checksum(0),
    };
    w.out.write_all(MAGIC)?;
    let upper_len = graph.upper_links.len() as u64;
    w.words([
        VERSION,
        graph.dim as u32,
        graph.len as u32,
        (graph.len as u64 >> 32) as u32,
        graph.m as u32,
        graph.m0 as u32,
        graph.params.ef_construction as u32,
        graph.max_level as u32,
        graph.entry,
        upper_len as u32,
        (upper_len >> 32) as u32,
    ])?;
    w.words(graph.vectors.iter().map(|x| x.to_bits()))?;
    w.words(graph.links0.iter().copied())?;
    w.words(graph.upper_start.iter().copied())?;
    w.words(graph.upper_links.iter().copied())?;
    let sum = w.sum.0;
    w.out.write_all(&sum.to_le_bytes())?;
    w.out.flush()?;
    drop(w);
    std::fs::rename(&tmp, path)
}

struct Reader<R: Read> {
    input: R,
    sum: Checksum,
    buf: Vec<u8>,
}

impl<R: Read> Reader<R> {
    fn words(&mut self, count: usize) -> Result<Vec<u32>, String> {
        let mut out = Vec::with_capacity(count);
        let mut left = count * 4;
        while left > 0 {
            let n = left.min(self.buf.len());
            self.input
                .read_exact(&mut self.buf[..n])
                .map_err(|_| "the file is truncated".to_string())?;
            for b in self.buf[..n].chunks_exact(4) {
                let w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                self.sum.add(w);
                out.push(w);
            }
            left -= n;
        }
        Ok(out)
    }
}

/// Reads and validates a dump.
pub fn load(path: &Path) -> Result<Graph, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let mut r = Reader {
        input: BufReader::with_capacity(1 << 20, file),
        sum: Checksum(0),
        buf: vec![0u8; 1 << 20],
    };
    let mut magic = [0u8; 8];
    r.input
        .read_exact(&mut magic)
        .map_err(|_| "not a Cascade index dump (too short)".to_string())?;
    if &magic != MAGIC {
        return Err("not a Cascade index dump (bad magic)".into());
    }
    let h = r.words(11)?;
    if h[0] != VERSION {
        return Err(format!(
            "index dump format version {} (this build reads {VERSION})",
            h[0]
        ));
    }
    let dim = h[1] as usize;
    let len = (h[2] as u64 | (h[3] as u64) << 32) as usize;
    let (m, m0) = (h[4] as usize, h[5] as usize);
    let ef_construction = h[6] as usize;
    let (max_level, entry) = (h[7] as usize, h[8]);
    let upper_len = (h[9] as u64 | (h[10] as u64) << 32) as usize;
    if dim == 0 || m == 0 || m0 == 0 || len > u32::MAX as usize || max_level > 255 {
        return Err("index dump header is implausible".into());
    }
    let words = len as u64 * (dim + 1 + m0 + 1) as u64 + 1 + upper_len as u64;
    let expected = 8 + 11 * 4 + words * 4 + 8;
    if size != expected {
        return Err(format!(
            "index dump is {size} bytes, its header promises {expected}"
        ));
    }
    let vectors: Vec<f32> = r
        .words(len * dim)?
        .into_iter()
        .map(f32::from_bits)
        .collect();
    let links0 = r.words(len * (1 + m0))?;
    let upper_start = r.words(len + 1)?;
    let upper_links = r.words(upper_len)?;
    let computed = r.sum.0;
    let mut tail = [0u8; 8];
    r.input
        .read_exact(&mut tail)
        .map_err(|_| "the file is truncated".to_string())?;
    if u64::from_le_bytes(tail) != computed {
        return Err("index dump checksum mismatch (damaged file)".into());
    }
    if vectors.iter().any(|x| !x.is_finite()) {
        return Err("index dump has a non-finite vector component".into());
    }
    let in_range = |ids: &[u32]| ids.iter().all(|&r| (r as usize) < len);
    for slot in links0.chunks_exact(1 + m0) {
        let n = slot[0] as usize;
        if n > m0 || !in_range(&slot[1..1 + n]) {
            return Err("index dump has a bad layer-0 neighbour list".into());
        }
    }
    let mut top = 0;
    for (node, pair) in upper_start.windows(2).enumerate() {
        let (a, b) = (pair[0] as usize, pair[1] as usize);
        if b < a || b > upper_len || !(b - a).is_multiple_of(1 + m) {
            return Err("index dump has bad upper-layer offsets".into());
        }
        let levels = (b - a) / (1 + m);
        if levels > max_level {
            return Err("index dump has a node above its top layer".into());
        }
        if node as u32 == entry {
            top = levels;
        }
        for layer in upper_links[a..b].chunks_exact(1 + m) {
            let n = layer[0] as usize;
            if n > m || !in_range(&layer[1..1 + n]) {
                return Err("index dump has a bad upper-layer neighbour list".into());
            }
        }
    }
    if upper_start.first() != Some(&0) || upper_start.last() != Some(&(upper_len as u32)) {
        return Err("index dump has bad upper-layer offsets".into());
    }
    if len > 0 && (entry as usize >= len || top != max_level) {
        return Err("index dump has a bad entry point".into());
    }
    Ok(Graph {
        dim,
        len,
        params: BuildParams {
            max_connections: m,
            ef_construction,
        },
        vectors: vectors.into(),
        m,
        m0,
        links0,
        upper_start,
        upper_links,
        entry,
        max_level,
        quantised: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::graph::tests::small_graph;

    #[test]
    fn dump_round_trips_and_damage_is_an_error() {
        let g = small_graph(1500, 8);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.bin");
        save(&g, &path).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.vectors, g.vectors);
        assert_eq!(back.links0, g.links0);
        assert_eq!(back.upper_start, g.upper_start);
        assert_eq!(back.upper_links, g.upper_links);
        assert_eq!((back.entry, back.max_level), (g.entry, g.max_level));
        assert_eq!(back.params(), g.params());
        let q = g.vectors[..8].to_vec();
        assert_eq!(
            back.search(&q, 10, 32, &|_| false),
            g.search(&q, 10, 32, &|_| false)
        );

        let bytes = std::fs::read(&path).unwrap();
        let mut flipped = bytes.clone();
        flipped[200] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(load(&path).unwrap_err().contains("checksum"));
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(load(&path).unwrap_err().contains("bytes"));
        std::fs::write(&path, b"CASCHNS").unwrap();
        assert!(load(&path).is_err());
        assert!(load(&dir.path().join("missing")).is_err());
    }
}
