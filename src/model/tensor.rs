//! Backend-neutral tensors: what the HTTP layer decodes into and what every
//! backend consumes and produces. Data is kept flat and row-major, exactly
//! as the Open Inference Protocol carries it, so no layer reshapes twice.

use std::fmt;

/// Element types Cascade can carry end to end. Named after the Open
/// Inference Protocol datatypes, which is how callers spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum DataType {
    #[serde(rename = "BOOL")]
    Bool,
    #[serde(rename = "UINT8")]
    U8,
    #[serde(rename = "INT8")]
    I8,
    #[serde(rename = "INT32")]
    I32,
    #[serde(rename = "INT64")]
    I64,
    #[serde(rename = "FP32")]
    F32,
    #[serde(rename = "FP64")]
    F64,
}

impl DataType {
    pub const ALL: [DataType; 7] = [
        DataType::Bool,
        DataType::U8,
        DataType::I8,
        DataType::I32,
        DataType::I64,
        DataType::F32,
        DataType::F64,
    ];

    /// The protocol's spelling (`"FP32"`, `"INT64"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::I8 => "INT8",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
        }
    }

    pub fn parse(s: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Bytes per element in the binary tensor data extension (little endian).
    pub fn size_bytes(self) -> usize {
        match self {
            DataType::Bool | DataType::U8 | DataType::I8 => 1,
            DataType::I32 | DataType::F32 => 4,
            DataType::I64 | DataType::F64 => 8,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Flat, row-major element storage, one variant per [`DataType`].
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    U8(Vec<u8>),
    I8(Vec<i8>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl TensorData {
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::U8(_) => DataType::U8,
            TensorData::I8(_) => DataType::I8,
            TensorData::I32(_) => DataType::I32,
            TensorData::I64(_) => DataType::I64,
            TensorData::F32(_) => DataType::F32,
            TensorData::F64(_) => DataType::F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TensorData::Bool(v) => v.len(),
            TensorData::U8(v) => v.len(),
            TensorData::I8(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the little-endian bytes of every element (binary extension).
    pub fn write_le_bytes(&self, out: &mut Vec<u8>) {
        out.reserve(self.len() * self.datatype().size_bytes());
        match self {
            TensorData::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
            TensorData::U8(v) => out.extend_from_slice(v),
            TensorData::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
            TensorData::I32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::I64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::F32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::F64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
    }

    /// Decodes little-endian bytes; the caller has checked that
    /// `bytes.len()` is a whole number of elements of `dt`.
    pub fn from_le_bytes(dt: DataType, bytes: &[u8]) -> TensorData {
        fn chunks<const N: usize, T>(b: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
            b.chunks_exact(N)
                .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
                .collect()
        }
        match dt {
            DataType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
            DataType::U8 => TensorData::U8(bytes.to_vec()),
            DataType::I8 => TensorData::I8(bytes.iter().map(|&b| b as i8).collect()),
            DataType::I32 => TensorData::I32(chunks(bytes, i32::from_le_bytes)),
            DataType::I64 => TensorData::I64(chunks(bytes, i64::from_le_bytes)),
            DataType::F32 => TensorData::F32(chunks(bytes, f32::from_le_bytes)),
            DataType::F64 => TensorData::F64(chunks(bytes, f64::from_le_bytes)),
        }
    }
}

/// A named tensor with a concrete shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: TensorData) -> Tensor {
        Tensor {
            name: name.into(),
            shape,
            data,
        }
    }

    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }
}

/// The declared signature of one model input or output. `None` in `shape`
/// is a dynamic dimension (`-1` on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<Option<usize>>,
}

impl TensorSpec {
    /// The shape as the protocol prints it: `-1` for dynamic dimensions.
    pub fn wire_shape(&self) -> Vec<i64> {
        self.shape
            .iter()
            .map(|d| d.map_or(-1, |n| n as i64))
            .collect()
    }

    /// Checks a concrete shape against this spec, naming the first mismatch.
    pub fn check_shape(&self, shape: &[usize]) -> Result<(), String> {
        if shape.len() != self.shape.len() {
            return Err(format!(
                "expected rank {} ({:?}), got rank {} ({:?})",
                self.shape.len(),
                self.wire_shape(),
                shape.len(),
                shape
            ));
        }
        for (i, (want, got)) in self.shape.iter().zip(shape).enumerate() {
            match want {
                Some(w) if w != got => {
                    return Err(format!(
                        "dimension {i} must be {w} (model shape {:?}), got {got}",
                        self.wire_shape()
                    ))
                }
                None if *got == 0 => {
                    return Err(format!("dimension {i} must be at least 1, got 0"))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_bytes_round_trip_every_type() {
        let cases = vec![
            TensorData::Bool(vec![true, false, true]),
            TensorData::U8(vec![0, 7, 255]),
            TensorData::I8(vec![-128, 0, 127]),
            TensorData::I32(vec![i32::MIN, -1, 42]),
            TensorData::I64(vec![i64::MAX, -5, 0]),
            TensorData::F32(vec![1.5, -0.0, f32::MAX]),
            TensorData::F64(vec![std::f64::consts::PI, -2.0, 1e-300]),
        ];
        for data in cases {
            let mut bytes = Vec::new();
            data.write_le_bytes(&mut bytes);
            assert_eq!(bytes.len(), data.len() * data.datatype().size_bytes());
            assert_eq!(TensorData::from_le_bytes(data.datatype(), &bytes), data);
        }
    }

    #[test]
    fn datatype_names_round_trip() {
        for dt in DataType::ALL {
            assert_eq!(DataType::parse(dt.as_str()), Some(dt));
        }
        assert_eq!(DataType::parse("BYTES"), None);
        assert_eq!(DataType::parse("fp32"), None);
    }

    #[test]
    fn shape_check_names_the_dimension() {
        let spec = TensorSpec {
            name: "features".into(),
            datatype: DataType::F32,
            shape: vec![None, Some(20)],
        };
        assert!(spec.check_shape(&[3, 20]).is_ok());
        assert!(spec
            .check_shape(&[3, 19])
            .unwrap_err()
            .contains("dimension 1 must be 20"));
        assert!(spec
            .check_shape(&[0, 20])
            .unwrap_err()
            .contains("at least 1"));
        assert!(spec.check_shape(&[60]).unwrap_err().contains("rank 2"));
    }
}
