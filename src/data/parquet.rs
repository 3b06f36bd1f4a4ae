//! Catalog snapshots in Parquet, the file a data team writes from pandas
//! (`df.to_parquet("items.parquet")`) or Spark in one line, read into a
//! [`Table`] after every column is checked against the schema. Errors name
//! the file, the column and the row (0-based, as pandas counts).
//!
//! Accepted column types: numbers from any integer, float or boolean column;
//! categories from strings (plain or dictionary-encoded, i.e. pandas
//! `category`) or integers; lists (`list`, `large_list`, fixed-size lists)
//! of floats for vectors and of strings for `categories` and `items`;
//! timestamps from timestamp columns of any unit or epoch milliseconds.
//! The key column `id` holds strings or integers.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::ids::Ids;
use super::schema::{Default, Entity, Field, FieldType};
use super::table::{Column, Csr, Table};
use super::DataError;

/// Reads `entity`'s snapshot file from `dir`. `items` resolves the ids of
/// `items` fields (users' histories); `vector_field` is kept apart.
pub fn read(
    dir: &Path,
    entity: &Entity,
    items: Option<&Ids>,
    vector_field: Option<&str>,
) -> Result<Table, DataError> {
    let file = entity.file.as_str();
    // Batch by batch: each decoded batch is copied into the columns and
    // dropped before the next is decoded, so a large snapshot is never
    // held decoded whole beside its columns (a 1M-item catalog's start-up
    // peak was both at once).
    let (n, batches) = batches(&dir.join(file), file)?;
    let err = |column: &str, row: Option<usize>, reason: String| match row {
        Some(r) => DataError::load(file, format!("column \"{column}\", row {r}: {reason}")),
        None => DataError::load(file, format!("column \"{column}\": {reason}")),
    };
    let column_of =
        |batch: &RecordBatch, name: &str, declared: &str| -> Result<ArrayRef, DataError> {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| DataError::load(file, format!("no column \"{name}\" ({declared})")))
        };
    let mut ids = Vec::with_capacity(n);
    let mut columns: Vec<Builder> = entity.fields.iter().map(|f| Builder::new(f, n)).collect();
    let mut offset = 0;
    for batch in batches {
        let batch = &batch?;
        let id = column_of(batch, "id", "the key column")?;
        let values = strings(id.as_ref())
            .ok_or_else(|| err("id", None, format!("holds {}, not strings", id.data_type())))?;
        for (i, v) in values.into_iter().enumerate() {
            ids.push(v.ok_or_else(|| err("id", Some(offset + i), "is null".into()))?);
        }
        for (field, builder) in entity.fields.iter().zip(&mut columns) {
            let declared = format!("declared as schema.toml {}", field.name);
            let array = column_of(batch, &field.name, &declared)?;
            builder
                .push(field, array.as_ref(), items)
                .map_err(|(row, reason)| err(&field.name, row.map(|r| offset + r), reason))?;
        }
        offset += batch.num_rows();
    }
    let ids = Ids::new(ids, file)?;
    let columns = columns.into_iter().map(Builder::finish).collect();
    Ok(Table::build(entity, ids, columns, vector_field))
}

pub(crate) fn read_batches(path: &Path, shown: &str) -> Result<Vec<RecordBatch>, DataError> {
    batches(path, shown)?.1.collect()
}

/// A hint of the file's row count (from its footer) and its record batches,
/// decoded one at a time as the iterator is advanced.
fn batches<'a>(
    path: &Path,
    shown: &'a str,
) -> Result<
    (
        usize,
        impl Iterator<Item = Result<RecordBatch, DataError>> + 'a,
    ),
    DataError,
> {
    let f = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::load(shown, "file not found"),
        kind => DataError::load(shown, kind),
    })?;
    let unreadable = |e| DataError::load(shown, format!("not a readable Parquet file: {e}"));
    let builder = ParquetRecordBatchReaderBuilder::try_new(f).map_err(unreadable)?;
    // A capacity hint only (the columns grow past it): a damaged footer
    // must not reserve without bound.
    let rows = usize::try_from(builder.metadata().file_metadata().num_rows())
        .unwrap_or(0)
        .min(1 << 20);
    let reader = builder
        .with_batch_size(64 * 1024)
        .build()
        .map_err(unreadable)?;
    Ok((
        rows,
        reader.map(move |b| b.map_err(|e| DataError::load(shown, format!("cannot be read: {e}")))),
    ))
}

/// A failure at a row of the current batch (or of the whole column).
type Failure = (Option<usize>, String);

/// One field's values, accumulated batch by batch.
enum Builder {
    Scalars(Vec<f32>),
    Vectors(Vec<f32>),
    Lists(Csr),
    Times(Vec<f64>),
}

impl Builder {
    fn new(field: &Field, n: usize) -> Builder {
        match &field.ty {
            FieldType::Number | FieldType::Integer | FieldType::Category(_) => {
                Builder::Scalars(Vec::with_capacity(n))
            }
            FieldType::Vector { dim, .. } => Builder::Vectors(Vec::with_capacity(n * dim)),
            FieldType::Categories(_) | FieldType::Items => Builder::Lists(Csr {
                offsets: vec![0],
                values: Vec::new(),
            }),
            FieldType::Timestamp => Builder::Times(Vec::with_capacity(n)),
        }
    }

    fn finish(self) -> Column {
        match self {
            Builder::Scalars(v) => Column::Scalars(v),
            Builder::Vectors(v) => Column::Vectors(v),
            Builder::Lists(c) => Column::Lists(c),
            Builder::Times(t) => Column::Times(t),
        }
    }

    fn push(
        &mut self,
        field: &Field,
        array: &dyn Array,
        items: Option<&Ids>,
    ) -> Result<(), Failure> {
        let type_error = || {
            (
                None,
                format!(
                    "holds {}, which cannot be read as a {}",
                    array.data_type(),
                    field.ty.name()
                ),
            )
        };
        let default = match field.default {
            Some(Default::Value(v)) => v as f32,
            _ => f32::NAN,
        };
        match (self, &field.ty) {
            (Builder::Scalars(out), FieldType::Number | FieldType::Integer) => {
                let integer = matches!(field.ty, FieldType::Integer);
                for (r, v) in numbers(array)
                    .ok_or_else(type_error)?
                    .into_iter()
                    .enumerate()
                {
                    out.push(match v {
                        None => default,
                        Some(x) if !x.is_finite() => {
                            return Err((Some(r), format!("{x} is not a finite number")))
                        }
                        Some(x) if integer && (x.fract() != 0.0 || x.abs() > 16_777_216.0) => {
                            return Err((Some(r), format!("{x} is not an integer within ±2^24")))
                        }
                        Some(x) if x.abs() > f32::MAX as f64 => {
                            return Err((Some(r), format!("{x} is beyond the f32 range")))
                        }
                        Some(x) => x as f32,
                    });
                }
            }
            (Builder::Scalars(out), FieldType::Category(_)) => {
                for (r, v) in strings(array)
                    .ok_or_else(type_error)?
                    .into_iter()
                    .enumerate()
                {
                    out.push(match v {
                        None => default,
                        Some(s) => field
                            .code_of(&s, true)
                            .map_err(|e| (Some(r), e))?
                            .map_or(f32::NAN, |c| c as f32),
                    });
                }
            }
            (Builder::Vectors(out), FieldType::Vector { dim, .. }) => {
                let (rows, values) = lists(array).ok_or_else(type_error)?;
                let flat = numbers(values.as_ref()).ok_or_else(type_error)?;
                for (r, range) in rows.into_iter().enumerate() {
                    let (a, b) = range.ok_or((Some(r), "is null; a vector needs values".into()))?;
                    if b - a != *dim {
                        return Err((
                            Some(r),
                            format!("has {} values, the schema says {dim}", b - a),
                        ));
                    }
                    for x in &flat[a..b] {
                        match x {
                            Some(x) if x.is_finite() && x.abs() <= f32::MAX as f64 => {
                                out.push(*x as f32)
                            }
                            other => {
                                return Err((Some(r), format!("holds {other:?}, not a finite f32")))
                            }
                        }
                    }
                }
            }
            (Builder::Lists(csr), FieldType::Categories(_)) => {
                let (rows, values) = lists(array).ok_or_else(type_error)?;
                let flat = strings(values.as_ref()).ok_or_else(type_error)?;
                for (r, range) in rows.into_iter().enumerate() {
                    let mut codes = Vec::new();
                    for s in range.map_or(&[][..], |(a, b)| &flat[a..b]).iter().flatten() {
                        codes.extend(field.code_of(s, true).map_err(|e| (Some(r), e))?);
                    }
                    // A set: sorted codes, so sums over it run in code order.
                    codes.sort_unstable();
                    codes.dedup();
                    csr.values.extend_from_slice(&codes);
                    csr.offsets.push(csr.values.len() as u32);
                }
            }
            (Builder::Lists(csr), FieldType::Items) => {
                let Some(items) = items else {
                    return Err((None, "items fields are for users only".into()));
                };
                let (rows, values) = lists(array).ok_or_else(type_error)?;
                let flat = strings(values.as_ref()).ok_or_else(type_error)?;
                for (r, range) in rows.into_iter().enumerate() {
                    for id in range.map_or(&[][..], |(a, b)| &flat[a..b]).iter().flatten() {
                        let row = items.row(id).ok_or_else(|| {
                            (Some(r), format!("item \"{id}\" is not in the items file"))
                        })?;
                        csr.values.push(row);
                    }
                    csr.offsets.push(csr.values.len() as u32);
                }
            }
            (Builder::Times(out), FieldType::Timestamp) => {
                out.extend(
                    millis(array)
                        .ok_or_else(type_error)?
                        .into_iter()
                        .map(|v| v.unwrap_or(f64::NAN)),
                );
            }
            _ => unreachable!("builders are made from their field's type"),
        }
        Ok(())
    }
}

macro_rules! primitive_f64 {
    ($array:expr, $($t:ty),*) => {
        $(
            if let Some(a) = $array.as_primitive_opt::<$t>() {
                return Some(a.iter().map(|v| v.map(|x| x as f64)).collect());
            }
        )*
    };
}

/// Any integer, float or boolean column as f64s (None = null).
pub(crate) fn numbers(array: &dyn Array) -> Option<Vec<Option<f64>>> {
    primitive_f64!(
        array,
        Float64Type,
        Float32Type,
        Int64Type,
        Int32Type,
        Int16Type,
        Int8Type,
        UInt64Type,
        UInt32Type,
        UInt16Type,
        UInt8Type
    );
    if let Some(a) = array.as_boolean_opt() {
        return Some(a.iter().map(|v| v.map(|b| b as u8 as f64)).collect());
    }
    None
}

/// Any string column (plain, large, view or dictionary-encoded) or integer
/// column, as strings (None = null).
pub(crate) fn strings(array: &dyn Array) -> Option<Vec<Option<String>>> {
    if let Some(a) = array.as_string_opt::<i32>() {
        return Some(a.iter().map(|v| v.map(str::to_string)).collect());
    }
    if let Some(a) = array.as_string_opt::<i64>() {
        return Some(a.iter().map(|v| v.map(str::to_string)).collect());
    }
    if let Some(a) = array.as_string_view_opt() {
        return Some(a.iter().map(|v| v.map(str::to_string)).collect());
    }
    if let Some(d) = array.as_any_dictionary_opt() {
        let values = strings(d.values().as_ref())?;
        let keys = d.normalized_keys();
        return Some(
            keys.into_iter()
                .enumerate()
                .map(|(i, k)| {
                    if array.is_null(i) {
                        None
                    } else {
                        values.get(k).cloned().flatten()
                    }
                })
                .collect(),
        );
    }
    if matches!(
        array.data_type(),
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    ) {
        return numbers(array).map(|v| {
            v.into_iter()
                .map(|x| x.map(|x| format!("{}", x as i64)))
                .collect()
        });
    }
    None
}

/// A list-of-strings column, row by row (a null row is an empty list, a
/// null element is skipped).
pub(crate) fn string_lists(array: &dyn Array) -> Option<Vec<Vec<String>>> {
    let (rows, values) = lists(array)?;
    let values = strings(values.as_ref())?;
    Some(
        rows.into_iter()
            .map(|r| {
                r.map_or_else(Vec::new, |(a, b)| {
                    values[a..b].iter().flatten().cloned().collect()
                })
            })
            .collect(),
    )
}

/// A list column's rows as ranges into its flat values (None = null row).
#[allow(clippy::type_complexity)]
fn lists(array: &dyn Array) -> Option<(Vec<Option<(usize, usize)>>, ArrayRef)> {
    fn ranges(
        offsets: impl Iterator<Item = usize>,
        nulls: impl Fn(usize) -> bool,
    ) -> Vec<Option<(usize, usize)>> {
        let offsets: Vec<usize> = offsets.collect();
        offsets
            .windows(2)
            .enumerate()
            .map(|(i, w)| (!nulls(i)).then_some((w[0], w[1])))
            .collect()
    }
    if let Some(a) = array.as_list_opt::<i32>() {
        let r = ranges(a.value_offsets().iter().map(|&o| o as usize), |i| {
            a.is_null(i)
        });
        return Some((r, a.values().clone()));
    }
    if let Some(a) = array.as_list_opt::<i64>() {
        let r = ranges(a.value_offsets().iter().map(|&o| o as usize), |i| {
            a.is_null(i)
        });
        return Some((r, a.values().clone()));
    }
    if let Some(a) = array.as_fixed_size_list_opt() {
        let len = a.value_length() as usize;
        let start = a.offset() * len;
        let r = (0..a.len())
            .map(|i| (!a.is_null(i)).then_some((start + i * len, start + (i + 1) * len)))
            .collect();
        return Some((r, a.values().clone()));
    }
    None
}

/// A timestamp column of any unit, or integers (epoch ms), as ms.
pub(crate) fn millis(array: &dyn Array) -> Option<Vec<Option<f64>>> {
    fn raw<T: ArrowPrimitiveType<Native = i64>>(a: &dyn Array) -> Option<Vec<Option<f64>>> {
        Some(
            a.as_primitive_opt::<T>()?
                .iter()
                .map(|v| v.map(|x| x as f64))
                .collect(),
        )
    }
    let (raw, scale) = match array.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => (raw::<TimestampSecondType>(array)?, 1e3),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            (raw::<TimestampMillisecondType>(array)?, 1.0)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            (raw::<TimestampMicrosecondType>(array)?, 1e-3)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            (raw::<TimestampNanosecondType>(array)?, 1e-6)
        }
        DataType::Int64 | DataType::Int32 | DataType::Float64 => (numbers(array)?, 1.0),
        _ => return None,
    };
    Some(raw.into_iter().map(|v| v.map(|x| x * scale)).collect())
}

// ---- writing (the synthetic catalog, tests) ----

/// A column to write.
pub enum Out {
    Strings(Vec<String>),
    OptStrings(Vec<Option<String>>),
    F32(Vec<f32>),
    OptF32(Vec<Option<f32>>),
    /// Epoch milliseconds, for timestamps.
    OptF64(Vec<Option<f64>>),
    /// `[rows, dim]` row-major, written as a list of floats per row.
    Vectors(Vec<f32>, usize),
    StringLists(Vec<Vec<String>>),
}

/// Writes `columns` as one Parquet file (snappy), the way pandas would.
pub fn write(path: &Path, columns: Vec<(&str, Out)>) -> Result<(), String> {
    use arrow_array::{Float32Array, ListArray, StringArray};
    use arrow_buffer::OffsetBuffer;
    use arrow_schema::Field as ArrowField;
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (name, column) in columns {
        let array: ArrayRef = match column {
            Out::Strings(v) => Arc::new(StringArray::from(v)),
            Out::OptStrings(v) => Arc::new(StringArray::from(v)),
            Out::F32(v) => Arc::new(Float32Array::from(v)),
            Out::OptF32(v) => Arc::new(Float32Array::from(v)),
            Out::OptF64(v) => Arc::new(arrow_array::Float64Array::from(v)),
            Out::Vectors(v, dim) => {
                let rows = v.len().checked_div(dim).unwrap_or(0);
                let item = Arc::new(ArrowField::new("item", DataType::Float32, true));
                Arc::new(ListArray::new(
                    item,
                    OffsetBuffer::from_lengths(std::iter::repeat_n(dim, rows)),
                    Arc::new(Float32Array::from(v)),
                    None,
                ))
            }
            Out::StringLists(v) => {
                let item = Arc::new(ArrowField::new("item", DataType::Utf8, true));
                let lengths: Vec<usize> = v.iter().map(Vec::len).collect();
                let flat: Vec<String> = v.into_iter().flatten().collect();
                Arc::new(ListArray::new(
                    item,
                    OffsetBuffer::from_lengths(lengths),
                    Arc::new(StringArray::from(flat)),
                    None,
                ))
            }
        };
        fields.push(ArrowField::new(name, array.data_type().clone(), true));
        arrays.push(array);
    }
    let schema = Arc::new(arrow_schema::Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| e.to_string())?;
    let file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, Some(props))
        .map_err(|e| e.to_string())?;
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.close().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::schema::Schema;
    use crate::data::table::Slot;

    fn schema() -> Schema {
        Schema::parse(
            r#"
            [vocabularies]
            brand = { open = true }
            [items]
            fields.embedding = { type = "vector", dim = 2 }
            fields.price = { type = "number", default = -1.0 }
            fields.stock = { type = "integer" }
            fields.brand = { type = "category", vocabulary = "brand" }
            fields.tags = { type = "categories", values = ["new", "sale"], unknown = "missing" }
            [users]
            fields.seen = { type = "items" }
            [retrieval]
            item_vector = "embedding"
            "#,
        )
        .unwrap()
    }

    fn items(dir: &Path, price: Vec<f32>) -> Result<Table, DataError> {
        write(
            &dir.join("items.parquet"),
            vec![
                ("id", Out::Strings(vec!["a".into(), "b".into()])),
                ("embedding", Out::Vectors(vec![1.0, 0.0, 0.6, 0.8], 2)),
                ("price", Out::F32(price)),
                ("stock", Out::F32(vec![3.0, 0.0])),
                ("brand", Out::OptStrings(vec![Some("acme".into()), None])),
                (
                    "tags",
                    Out::StringLists(vec![vec!["sale".into(), "new".into(), "x".into()], vec![]]),
                ),
            ],
        )
        .unwrap();
        read(dir, &schema().items, None, Some("embedding"))
    }

    #[test]
    fn a_snapshot_round_trips_through_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let t = items(dir.path(), vec![9.5, 2.0]).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.row("b"), Some(1));
        assert_eq!(t.vector(1), &[0.6, 0.8]);
        let Slot::Row { at, .. } = t.slot(1) else {
            panic!()
        };
        assert_eq!(t.scalar(0, at), 9.5);
        let Slot::Row { at, .. } = t.slot(3) else {
            panic!()
        };
        assert_eq!(t.scalar(0, at), 0.0, "first brand value gets code 0");
        assert!(t.scalar(1, at).is_nan(), "a null category is missing");
        let Slot::List(l) = t.slot(4) else { panic!() };
        assert_eq!(
            t.list(l, 0),
            &[0, 1],
            "a set, in code order; unknown tags dropped"
        );
    }

    #[test]
    fn bad_values_name_file_column_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let e = items(dir.path(), vec![1.0, f32::INFINITY])
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            "catalog items.parquet: column \"price\", row 1: inf is not a finite number"
        );
        // A column the schema declares but the file lacks.
        write(
            &dir.path().join("items.parquet"),
            vec![("id", Out::Strings(vec!["a".into()]))],
        )
        .unwrap();
        let e = read(dir.path(), &schema().items, None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("catalog items.parquet: no column \"embedding\""),
            "{e}"
        );
        // A vector of the wrong length.
        write(
            &dir.path().join("items.parquet"),
            vec![
                ("id", Out::Strings(vec!["a".into()])),
                ("embedding", Out::Vectors(vec![1.0, 0.0, 0.0], 3)),
            ],
        )
        .unwrap();
        let e = read(dir.path(), &schema().items, None, None)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            "catalog items.parquet: column \"embedding\", row 0: has 3 values, the schema says 2"
        );
        // An unknown item in a user's list.
        let ids = Ids::new(vec!["a".into()], "items.parquet").unwrap();
        write(
            &dir.path().join("users.parquet"),
            vec![
                ("id", Out::Strings(vec!["u1".into(), "u2".into()])),
                (
                    "seen",
                    Out::StringLists(vec![vec!["a".into()], vec!["zz".into()]]),
                ),
            ],
        )
        .unwrap();
        let e = read(dir.path(), &schema().users, Some(&ids), None)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            "catalog users.parquet: column \"seen\", row 1: item \"zz\" is not in the items file"
        );
        // Not Parquet at all.
        std::fs::write(dir.path().join("items.parquet"), b"price,id\n").unwrap();
        let e = read(dir.path(), &schema().items, None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("catalog items.parquet: not a readable Parquet file"),
            "{e}"
        );
    }
}
