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

pub struct Table {
    pub ids: Ids,
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

/// A field's values as a snapshot column holds them, in row order.
pub enum Column {
    /// Numbers, integers and category codes; NaN = missing.
    Scalars(Vec<f32>),
    /// `[rows, dim]`, row-major.
    Vectors(Vec<f32>),
    Lists(Csr),
    Times(Vec<f64>),
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
                    vector_dim = v.len().checked_div(n).unwrap_or(0);
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
                        let bits: Vec<f32> = (0..n as u32)
                            .flat_map(|r| {
                                let m = csr.get(r).iter().fold(0u64, |m, &c| m | 1 << c);
                                [f32::from_bits(m as u32), f32::from_bits((m >> 32) as u32)]
                            })
                            .collect();
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
            ids,
            row,
            width,
            slots,
            vector,
            vector_dim,
            lists,
            masks,
            times,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn row(&self, id: &str) -> Option<u32> {
        self.ids.row(id)
    }

    pub fn slot(&self, field: usize) -> Slot {
        self.slots[field]
    }

    /// The value at offset `at` of row `r` of the row table.
    #[inline]
    pub fn scalar(&self, r: u32, at: usize) -> f32 {
        self.row[r as usize * self.width + at]
    }

    /// `len` values at offset `at` of row `r`.
    #[inline]
    pub fn values(&self, r: u32, at: usize, len: usize) -> &[f32] {
        let start = r as usize * self.width + at;
        &self.row[start..start + len]
    }

    /// The retrieval vector of row `r` (empty without one).
    #[inline]
    pub fn vector(&self, r: u32) -> &[f32] {
        let d = self.vector_dim;
        match &self.vector {
            Some(v) => &v[r as usize * d..(r as usize + 1) * d],
            None => &[],
        }
    }

    /// The whole retrieval matrix, `[len, dim]`, and `dim`.
    pub fn vectors(&self) -> Option<(&Arc<[f32]>, usize)> {
        self.vector.as_ref().map(|v| (v, self.vector_dim))
    }

    pub fn list(&self, i: usize) -> &Csr {
        &self.lists[i]
    }

    /// Whether list `i` is kept as bit masks too.
    pub fn has_mask(&self, i: usize) -> bool {
        self.masks[i].is_some()
    }

    /// List `i` of row `r` as a bit mask of its codes, when they all fit.
    #[inline]
    pub fn mask(&self, i: usize, r: u32) -> Option<u64> {
        let at = self.masks[i]?;
        let start = r as usize * self.width + at;
        let (lo, hi) = (self.row[start].to_bits(), self.row[start + 1].to_bits());
        Some(lo as u64 | (hi as u64) << 32)
    }

    pub fn time(&self, i: usize, r: u32) -> f64 {
        self.times[i][r as usize]
    }

    /// Row-table width in values (for memory reports and tests).
    pub fn width(&self) -> usize {
        self.width
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
        assert_eq!(t.list(0).get(0), &[0, 1]);
        assert!(t.list(0).get(1).is_empty());
        assert_eq!(t.time(0, 1), 2.0e12);
    }
}
