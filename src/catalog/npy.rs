//! The two-dimensional `.npy` files the retrieval tools exchange with
//! Python (numpy reads and writes them natively): little-endian `f32` or
//! `i32` matrices in C order, format version 1.0. Written and parsed by hand
//! for just that case; anything else is refused with a reason.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

/// Element types we exchange.
pub trait Element: Copy + Default {
    const DESCR: &'static str;
    fn to_le(self) -> [u8; 4];
    fn from_le(b: [u8; 4]) -> Self;
}

impl Element for f32 {
    const DESCR: &'static str = "<f4";
    fn to_le(self) -> [u8; 4] {
        self.to_le_bytes()
    }
    fn from_le(b: [u8; 4]) -> Self {
        f32::from_le_bytes(b)
    }
}

impl Element for i32 {
    const DESCR: &'static str = "<i4";
    fn to_le(self) -> [u8; 4] {
        self.to_le_bytes()
    }
    fn from_le(b: [u8; 4]) -> Self {
        i32::from_le_bytes(b)
    }
}

/// Writes `data` as a `[rows, cols]` matrix.
pub fn write<T: Element>(path: &Path, data: &[T], cols: usize) -> std::io::Result<()> {
    assert!(cols > 0 && data.len().is_multiple_of(cols), "matrix shape");
    let rows = data.len() / cols;
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}",
        T::DESCR
    );
    // magic(6) + version(2) + header length(2) + dict + padding + '\n' is a
    // multiple of 64.
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    let header_len = dict.len() + 1 + (64 - unpadded % 64) % 64;
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    out.write_all(MAGIC)?;
    out.write_all(&[1, 0])?;
    out.write_all(&(header_len as u16).to_le_bytes())?;
    out.write_all(dict.as_bytes())?;
    out.write_all(&vec![b' '; header_len - dict.len() - 1])?;
    out.write_all(b"\n")?;
    for x in data {
        out.write_all(&x.to_le())?;
    }
    out.flush()
}

/// Reads a `[rows, cols]` matrix; returns the data and `cols`.
pub fn read<T: Element>(path: &Path) -> Result<(Vec<T>, usize), String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut pre = [0u8; 10];
    input
        .read_exact(&mut pre)
        .map_err(|_| "not an .npy file (too short)".to_string())?;
    if &pre[..6] != MAGIC {
        return Err("not an .npy file (bad magic)".into());
    }
    if pre[6] != 1 {
        return Err(format!(
            "npy format version {}.{} (want 1.0)",
            pre[6], pre[7]
        ));
    }
    let header_len = u16::from_le_bytes([pre[8], pre[9]]) as usize;
    let mut header = vec![0u8; header_len];
    input
        .read_exact(&mut header)
        .map_err(|_| "truncated npy header".to_string())?;
    let header = String::from_utf8_lossy(&header);
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr").ok_or("npy header has no descr")?;
    if !descr.starts_with(&format!("'{}'", T::DESCR)) {
        return Err(format!("npy dtype is not {}", T::DESCR));
    }
    let fortran = field("fortran_order").ok_or("npy header has no fortran_order")?;
    if !fortran.starts_with("False") {
        return Err("npy array is in Fortran order".into());
    }
    let shape = field("shape").ok_or("npy header has no shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("npy shape is not a tuple")?;
    let dims: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("npy shape entry {s:?}")))
        .collect::<Result<_, _>>()?;
    let [rows, cols] = dims[..] else {
        return Err(format!("npy array has {} dimensions (want 2)", dims.len()));
    };
    let count = rows.checked_mul(cols).ok_or("npy shape overflows")?;
    let expected = (10 + header_len) as u64 + count as u64 * 4;
    if size != expected {
        return Err(format!(
            "npy file is {size} bytes, its header promises {expected}"
        ));
    }
    if cols == 0 {
        return Err("npy matrix has zero columns".into());
    }
    let mut data = Vec::with_capacity(count);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = count * 4;
    while left > 0 {
        let n = left.min(buf.len());
        input.read_exact(&mut buf[..n]).map_err(|e| e.to_string())?;
        data.extend(
            buf[..n]
                .chunks_exact(4)
                .map(|b| T::from_le([b[0], b[1], b[2], b[3]])),
        );
        left -= n;
    }
    Ok((data, cols))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.npy");
        let data: Vec<f32> = (0..21).map(|i| i as f32 * 0.5).collect();
        write(&p, &data, 7).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let header_end = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!(header_end % 64, 0, "header padded to 64");
        assert_eq!(read::<f32>(&p).unwrap(), (data, 7));
        assert!(read::<i32>(&p).unwrap_err().contains("dtype"));
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        assert!(read::<f32>(&p).unwrap_err().contains("bytes"));
        std::fs::write(&p, b"hello").unwrap();
        assert!(read::<f32>(&p).is_err());
        let ids = vec![3i32, -1, 7, 9];
        write(&p, &ids, 2).unwrap();
        assert_eq!(read::<i32>(&p).unwrap(), (ids, 2));
    }
}
