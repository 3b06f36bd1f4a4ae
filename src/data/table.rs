//! One entity table (items or users) in memory, laid out for feature
//! evaluation: every scalar (numbers, integers, category codes) and every
//! vector but the retrieval one sits in one row-major `f32` table, one row
//! per entity, so that on a catalog of millions an entity's fields cost one
//! or two cache misses, not one per field. The retrieval vector is kept
//! apart (the index shares it); lists of categories or item ids are CSR;
//! timestamps are `f64` milliseconds. A missing scalar is NaN.

use std::sync::Arc;

use super::ids::Ids;
use super::schema::{Entity, FieldType};

/// Where a field's values live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// `len` values at offset `at` of every row of the row table.
    Row { at: usize, len: usize },
    /// The retrieval vector (`Table::vector`).
    Vector,
    /// A CSR list (`Table::lists[i]`).
    List(usize),
    /// A timestamp column (`Table::times[i]`).
    Time(usize),
}

/// Ragged lists, one per row: `values[offsets[r]..offsets[r + 1]]`.
#[derive(Debug, Clone, Default)]
pub struct Csr {
    pub offsets: Vec<u32>,
    pub values: Vec<u32>,
}

impl Csr {
    pub fn get(&self, row: u32) -> &[u32] {
        let r = row as usize;
        match (self.offsets.get(r), self.offsets.get(r + 1)) {
            (Some(&a), Some(&b)) => &self.values[a as usize..b as usize],
            _ => &[],
        }
    }
}

/// One table: the snapshot's rows (shared by every generation of the
/// catalog) and, once events have changed entities, a [`Delta`] in front
/// of them. Rows only ever grow: a row number stays valid in every later
/// generation.
#[derive(Clone)]
pub struct Table {
    base: Arc<Base>,
    delta: Option<Arc<Delta>>,
}

/// The rows loaded from the snapshot.
struct Base {
    ids: Ids,
    row: Vec<f32>,
    width: usize,
    slots: Vec<Slot>,
    /// The retrieval vector field, `[len, dim]`.
    vector: Option<Arc<[f32]>>,
    vector_dim: usize,
    lists: Vec<Csr>,
    /// Per list: the row-table offset of its 64-bit mask, when every code
    /// is below 64.
    masks: Vec<Option<usize>>,
    times: Vec<Vec<f64>>,
}

/// Rows that events inserted or changed, laid out like the base: delta
/// row `d` holds a changed base row (`moved[d]`, for `d < moved.len()`)
/// or the new row `base_len + d - moved.len()`.
struct Delta {
    base_len: usize,
    /// One bit per base row: its values live here.
    moved_bits: Vec<u64>,
    /// The changed base rows, sorted.
    moved: Vec<u32>,
    /// Ids of the new rows, in row order, and their rows.
    new_ids: Vec<String>,
    new_rows: std::collections::HashMap<String, u32>,
    row: Vec<f32>,
    vector: Vec<f32>,
    lists: Vec<Csr>,
    times: Vec<Vec<f64>>,
    /// Lists whose masks no longer hold every row (a code of 64 or more):
    /// read through the CSR instead.
    unmasked: Vec<bool>,
    /// Rows whose retrieval vector an event set (sorted), and those
    /// vectors scaled to unit length, `[rows, dim]` (a zero vector stays
    /// zeros): the delta segment retrieval scans.
    vector_rows: Vec<u32>,
    vector_units: Vec<f32>,
}

/// A field's value for one row of a [`DeltaRow`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar (one value) or a vector (its `dim` values); NaN = missing.
    Values(Vec<f32>),
    /// Codes (categories) or item rows (items lists).
    List(Vec<u32>),
    Time(f64),
}

/// One changed or new entity, with a value for every field.
#[derive(Debug, Clone)]
pub struct DeltaRow {
    pub id: String,
    /// Its base row, or `None` for a new entity.
    pub base: Option<u32>,
    pub values: Vec<Value>,
    /// Whether an event set the retrieval vector (it joins the searched
    /// delta segment).
    pub vector_set: bool,
}

/// A field's values as a snapshot column holds them, in row order.
pub enum Column {
    /// Numbers, integers and category codes; NaN = missing.
    Scalars(Vec<f32>),
    /// `[rows, dim]`, row-major.
    Vectors(Vec<f32>),
    Lists(Csr),
    Times(Vec<f64>),
}

/// Two `f32` slots holding the bits of a list's codes (all below 64).
fn mask_bits(codes: &[u32]) -> [f32; 2] {
    let m = codes.iter().fold(0u64, |m, &c| m | 1 << c);
    [f32::from_bits(m as u32), f32::from_bits((m >> 32) as u32)]
}

impl Table {
    /// Assembles a table from one column per field of `entity`, in its
    /// order; `vector_field` is the retrieval vector, stored apart. The
    /// columns have been checked against the schema (lengths, types).
    pub fn build(
        entity: &Entity,
        ids: Ids,
        columns: Vec<Column>,
        vector_field: Option<&str>,
    ) -> Table {
        let n = ids.len();
        let mut slots = Vec::with_capacity(columns.len());
        let mut width = 0;
        let mut vector = None;
        let mut vector_dim = 0;
        let mut lists = Vec::new();
        let mut masks = Vec::new();
        let mut times = Vec::new();
        let mut in_row: Vec<(usize, Vec<f32>, usize)> = Vec::new();
        for (field, column) in entity.fields.iter().zip(columns) {
            let slot = match column {
                Column::Vectors(v) if Some(field.name.as_str()) == vector_field => {
                    vector_dim = match &field.ty {
                        FieldType::Vector { dim, .. } => *dim,
                        _ => v.len().checked_div(n).unwrap_or(0),
                    };
                    vector = Some(Arc::from(v));
                    Slot::Vector
                }
                Column::Scalars(v) | Column::Vectors(v) => {
                    let len = match &field.ty {
                        FieldType::Vector { dim, .. } => *dim,
                        _ => 1,
                    };
                    let slot = Slot::Row { at: width, len };
                    in_row.push((width, v, len));
                    width += len;
                    slot
                }
                Column::Lists(csr) => {
                    // A list over codes below 64 is also kept as a 64-bit
                    // mask in the row table (two f32 slots holding its
                    // bits): membership is one load from a line the row
                    // already brought in, not a walk to the CSR arrays.
                    let mask = if csr.values.iter().all(|&c| c < 64) && !csr.offsets.is_empty() {
                        let bits: Vec<f32> =
                            (0..n as u32).flat_map(|r| mask_bits(csr.get(r))).collect();
                        in_row.push((width, bits, 2));
                        width += 2;
                        Some(width - 2)
                    } else {
                        None
                    };
                    lists.push(csr);
                    masks.push(mask);
                    Slot::List(lists.len() - 1)
                }
                Column::Times(t) => {
                    times.push(t);
                    Slot::Time(times.len() - 1)
                }
            };
            slots.push(slot);
        }
        let mut row = vec![0f32; n * width];
        for (at, values, len) in in_row {
            for r in 0..n {
                row[r * width + at..r * width + at + len]
                    .copy_from_slice(&values[r * len..(r + 1) * len]);
            }
        }
        Table {
            base: Arc::new(Base {
                ids,
                row,
                width,
                slots,
                vector,
                vector_dim,
                lists,
                masks,
                times,
            }),
            delta: None,
        }
    }

    /// This table with `rows` in front of its snapshot rows (replacing any
    /// earlier delta: `rows` is every change so far). New entities take the
    /// rows after the snapshot's, in the order given; every value has been
    /// checked against the field's type.
    pub fn with_delta(&self, rows: &[DeltaRow]) -> Table {
        let b = &*self.base;
        let base_len = b.ids.len();
        let mut order: Vec<&DeltaRow> = rows.iter().filter(|r| r.base.is_some()).collect();
        order.sort_unstable_by_key(|r| r.base);
        let moved: Vec<u32> = order.iter().filter_map(|r| r.base).collect();
        order.extend(rows.iter().filter(|r| r.base.is_none()));
        let mut moved_bits = vec![0u64; base_len.div_ceil(64)];
        for &r in &moved {
            moved_bits[r as usize / 64] |= 1 << (r % 64);
        }
        let new_ids: Vec<String> = order[moved.len()..].iter().map(|r| r.id.clone()).collect();
        let new_rows = new_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), (base_len + i) as u32))
            .collect();
        let n = order.len();
        let mut d = Delta {
            base_len,
            moved_bits,
            moved,
            new_ids,
            new_rows,
            row: vec![0f32; n * b.width],
            vector: vec![0f32; n * b.vector_dim],
            lists: vec![
                Csr {
                    offsets: vec![0],
                    values: Vec::new()
                };
                b.lists.len()
            ],
            times: vec![vec![f64::NAN; n]; b.times.len()],
            unmasked: vec![false; b.lists.len()],
            vector_rows: Vec::new(),
            vector_units: Vec::new(),
        };
        let mut segment = Vec::new();
        for (i, r) in order.iter().enumerate() {
            let row_no = if i < d.moved.len() {
                d.moved[i]
            } else {
                (base_len + i - d.moved.len()) as u32
            };
            let out = &mut d.row[i * b.width..(i + 1) * b.width];
            for (slot, value) in b.slots.iter().zip(&r.values) {
                match (*slot, value) {
                    (Slot::Row { at, len }, Value::Values(v)) if v.len() == len => {
                        out[at..at + len].copy_from_slice(v)
                    }
                    (Slot::Vector, Value::Values(v)) if v.len() == b.vector_dim => {
                        d.vector[i * b.vector_dim..(i + 1) * b.vector_dim].copy_from_slice(v)
                    }
                    (Slot::List(l), Value::List(codes)) => {
                        let csr = &mut d.lists[l];
                        csr.values.extend_from_slice(codes);
                        csr.offsets.push(csr.values.len() as u32);
                        if let Some(at) = b.masks[l] {
                            if codes.iter().all(|&c| c < 64) {
                                out[at..at + 2].copy_from_slice(&mask_bits(codes));
                            } else {
                                d.unmasked[l] = true;
                            }
                        }
                    }
                    (Slot::Time(t), Value::Time(x)) => d.times[t][i] = *x,
                    (slot, value) => {
                        debug_assert!(false, "{slot:?} cannot hold {value:?}");
                    }
                }
            }
            if r.vector_set && b.vector.is_some() {
                segment.push((row_no, i));
            }
        }
        segment.sort_unstable();
        let dim = b.vector_dim;
        for (row, i) in segment {
            d.vector_rows.push(row);
            d.vector_units.extend(crate::catalog::index::unit_rows(
                &d.vector[i * dim..(i + 1) * dim],
                dim,
            ));
        }
        Table {
            base: self.base.clone(),
            delta: (n > 0).then(|| Arc::new(d)),
        }
    }

    /// Where row `r`'s values live: `None` for the base, else the delta
    /// and the row's index in it.
    #[inline]
    fn in_delta(&self, r: u32) -> Option<(&Delta, usize)> {
        let d = self.delta.as_deref()?;
        let ru = r as usize;
        if ru >= d.base_len {
            return Some((d, d.moved.len() + ru - d.base_len));
        }
        if d.moved_bits[ru / 64] >> (ru % 64) & 1 == 0 {
            return None;
        }
        d.moved.binary_search(&r).ok().map(|i| (d, i))
    }

    pub fn len(&self) -> usize {
        self.base.ids.len() + self.delta.as_ref().map_or(0, |d| d.new_ids.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows the snapshot holds (rows past these came from events).
    pub fn base_len(&self) -> usize {
        self.base.ids.len()
    }

    /// The snapshot's ids.
    pub fn base_ids(&self) -> &Ids {
        &self.base.ids
    }

    pub fn row(&self, id: &str) -> Option<u32> {
        self.base
            .ids
            .row(id)
            .or_else(|| self.delta.as_ref()?.new_rows.get(id).copied())
    }

    /// The id of row `r` (which must exist).
    pub fn id(&self, r: u32) -> &str {
        match self.delta.as_deref() {
            Some(d) if r as usize >= d.base_len => &d.new_ids[r as usize - d.base_len],
            _ => self.base.ids.get(r),
        }
    }

    pub fn slot(&self, field: usize) -> Slot {
        self.base.slots[field]
    }

    /// The value at offset `at` of row `r` of the row table.
    #[inline]
    pub fn scalar(&self, r: u32, at: usize) -> f32 {
        match self.in_delta(r) {
            Some((d, i)) => d.row[i * self.base.width + at],
            None => self.base.row[r as usize * self.base.width + at],
        }
    }

    /// [`Table::scalar`] for each of `rows`, into `out` (same length): the
    /// delta is checked once, not per row, when there is none.
    pub fn scalars(&self, rows: &[u32], at: usize, out: &mut [f32]) {
        if self.delta.is_some() {
            for (o, &r) in out.iter_mut().zip(rows) {
                *o = self.scalar(r, at);
            }
            return;
        }
        let (w, row) = (self.base.width, &self.base.row[..]);
        for (o, &r) in out.iter_mut().zip(rows) {
            *o = row[r as usize * w + at];
        }
    }

    /// Whether list `i` of each of `rows` holds `code`, as 1 or 0 into
    /// `out`, read from the lists' bit masks; `false` (and nothing written)
    /// when the list is not kept as masks or `code` does not fit one.
    pub fn mask_has(&self, i: usize, rows: &[u32], code: u32, out: &mut [f32]) -> bool {
        if !self.has_mask(i) || code >= 64 {
            return false;
        }
        let Some(at) = self.base.masks[i] else {
            return false;
        };
        // The mask is two f32 slots holding its low and high 32 bits.
        let (slot, bit) = (at + (code / 32) as usize, code % 32);
        if self.delta.is_some() {
            for (o, &r) in out.iter_mut().zip(rows) {
                *o = (self.scalar(r, slot).to_bits() >> bit & 1) as f32;
            }
        } else {
            let (w, row) = (self.base.width, &self.base.row[..]);
            for (o, &r) in out.iter_mut().zip(rows) {
                *o = (row[r as usize * w + slot].to_bits() >> bit & 1) as f32;
            }
        }
        true
    }

    /// `len` values at offset `at` of row `r`.
    #[inline]
    pub fn values(&self, r: u32, at: usize, len: usize) -> &[f32] {
        let w = self.base.width;
        match self.in_delta(r) {
            Some((d, i)) => &d.row[i * w + at..i * w + at + len],
            None => {
                let start = r as usize * w + at;
                &self.base.row[start..start + len]
            }
        }
    }

    /// The retrieval vector of row `r` (empty without one).
    #[inline]
    pub fn vector(&self, r: u32) -> &[f32] {
        let dim = self.base.vector_dim;
        match (&self.base.vector, self.in_delta(r)) {
            (None, _) => &[],
            (Some(_), Some((d, i))) => &d.vector[i * dim..(i + 1) * dim],
            (Some(v), None) => &v[r as usize * dim..(r as usize + 1) * dim],
        }
    }

    /// The snapshot's retrieval matrix, `[base_len, dim]`, and `dim`: what
    /// the index is built over.
    pub fn vectors(&self) -> Option<(&Arc<[f32]>, usize)> {
        self.base.vector.as_ref().map(|v| (v, self.base.vector_dim))
    }

    /// Rows whose retrieval vector an event set (sorted): searched apart
    /// from the index, which still holds their snapshot vectors (if any).
    pub fn vector_rows(&self) -> &[u32] {
        self.delta.as_ref().map_or(&[], |d| &d.vector_rows)
    }

    /// [`Table::vector_rows`] and their vectors at unit length,
    /// `[rows, dim]`.
    pub fn delta_segment(&self) -> (&[u32], &[f32]) {
        self.delta
            .as_ref()
            .map_or((&[], &[]), |d| (&d.vector_rows, &d.vector_units))
    }

    /// List `i` of row `r`.
    #[inline]
    pub fn list(&self, i: usize, r: u32) -> &[u32] {
        match self.in_delta(r) {
            Some((d, at)) => d.lists[i].get(at as u32),
            None => self.base.lists[i].get(r),
        }
    }

    /// Whether list `i` is kept as bit masks too.
    pub fn has_mask(&self, i: usize) -> bool {
        self.base.masks[i].is_some() && !self.delta.as_ref().is_some_and(|d| d.unmasked[i])
    }

    /// Where list `i`'s bit mask sits in the row table (two slots: the low
    /// and high 32 bits), when the list is kept as masks.
    pub fn mask_slot(&self, i: usize) -> Option<usize> {
        if self.has_mask(i) {
            self.base.masks[i]
        } else {
            None
        }
    }

    /// List `i` of row `r` as a bit mask of its codes, when they all fit.
    #[inline]
    pub fn mask(&self, i: usize, r: u32) -> Option<u64> {
        if !self.has_mask(i) {
            return None;
        }
        let at = self.base.masks[i]?;
        let v = self.values(r, at, 2);
        Some(v[0].to_bits() as u64 | (v[1].to_bits() as u64) << 32)
    }

    pub fn time(&self, i: usize, r: u32) -> f64 {
        match self.in_delta(r) {
            Some((d, at)) => d.times[i][at],
            None => self.base.times[i][r as usize],
        }
    }

    /// Row-table width in values (for memory reports and tests).
    pub fn width(&self) -> usize {
        self.base.width
    }

    /// Rows the delta holds (changed and new).
    pub fn delta_len(&self) -> usize {
        self.delta
            .as_ref()
            .map_or(0, |d| d.moved.len() + d.new_ids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::schema::Schema;

    #[test]
    fn fields_land_in_their_slots() {
        let schema = Schema::parse(
            r#"
            [items]
            fields.embedding = { type = "vector", dim = 2 }
            fields.price = { type = "number" }
            fields.tags = { type = "categories", values = ["a", "b"] }
            fields.lift = { type = "vector", dim = 3 }
            fields.at = { type = "timestamp" }
            [retrieval]
            item_vector = "embedding"
            "#,
        )
        .unwrap();
        let ids = Ids::new(vec!["x".into(), "y".into()], "t").unwrap();
        let t = Table::build(
            &schema.items,
            ids,
            vec![
                Column::Vectors(vec![1.0, 0.0, 0.0, 1.0]),
                Column::Scalars(vec![9.5, f32::NAN]),
                Column::Lists(Csr {
                    offsets: vec![0, 2, 2],
                    values: vec![0, 1],
                }),
                Column::Vectors(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                Column::Times(vec![1.0e12, 2.0e12]),
            ],
            Some("embedding"),
        );
        assert_eq!(t.slot(0), Slot::Vector);
        assert_eq!(t.slot(1), Slot::Row { at: 0, len: 1 });
        assert_eq!(t.slot(3), Slot::Row { at: 3, len: 3 });
        assert_eq!(t.width(), 6, "price, a 2-slot tag mask, lift");
        assert_eq!(t.mask(0, 0), Some(0b11));
        assert_eq!(t.mask(0, 1), Some(0));
        assert_eq!(t.vector(1), &[0.0, 1.0]);
        assert_eq!(t.scalar(0, 0), 9.5);
        assert!(t.scalar(1, 0).is_nan());
        assert_eq!(t.values(1, 3, 3), &[4.0, 5.0, 6.0]);
        assert_eq!(t.list(0, 0), &[0, 1]);
        assert!(t.list(0, 1).is_empty());
        assert_eq!(t.time(0, 1), 2.0e12);
    }

    /// The batched reads answer what the per-row reads answer, on the
    /// snapshot and on a generation with changed and new rows; codes in
    /// the mask's high half too.
    #[test]
    fn batched_reads_match_row_reads() {
        let names: Vec<String> = (0..40).map(|i| format!("\"c{i}\"")).collect();
        let schema = Schema::parse(&format!(
            r#"
            [items]
            fields.price = {{ type = "number" }}
            fields.tags = {{ type = "categories", values = [{}] }}
            "#,
            names.join(", ")
        ))
        .unwrap();
        let ids = Ids::new((0..5).map(|i| format!("i{i}")).collect(), "t").unwrap();
        let t = Table::build(
            &schema.items,
            ids,
            vec![
                Column::Scalars(vec![1.0, 2.0, f32::NAN, 4.0, 5.0]),
                Column::Lists(Csr {
                    offsets: vec![0, 2, 3, 3, 5, 6],
                    values: vec![0, 33, 5, 31, 39, 32],
                }),
            ],
            None,
        );
        let changed = t.with_delta(&[
            DeltaRow {
                id: "i1".into(),
                base: Some(1),
                values: vec![Value::Values(vec![7.5]), Value::List(vec![1, 34])],
                vector_set: false,
            },
            DeltaRow {
                id: "new".into(),
                base: None,
                values: vec![Value::Values(vec![8.5]), Value::List(vec![0, 38])],
                vector_set: false,
            },
        ]);
        for table in [&t, &changed] {
            let rows: Vec<u32> = (0..table.len() as u32).rev().collect();
            let mut out = vec![0.0; rows.len()];
            table.scalars(&rows, 0, &mut out);
            for (o, &r) in out.iter().zip(&rows) {
                assert_eq!(o.to_bits(), table.scalar(r, 0).to_bits(), "row {r}");
            }
            for code in 0..40u32 {
                assert!(table.mask_has(0, &rows, code, &mut out));
                for (o, &r) in out.iter().zip(&rows) {
                    let want = table.mask(0, r).unwrap() >> code & 1;
                    assert_eq!(*o, want as f32, "row {r} code {code}");
                }
            }
            assert!(!table.mask_has(0, &rows, 64, &mut out), "past a mask");
        }
        assert_eq!(changed.scalar(1, 0), 7.5);
        assert_eq!(changed.mask(0, 5), Some(1 | 1 << 38));
    }
}
