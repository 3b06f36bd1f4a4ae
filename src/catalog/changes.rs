//! Catalog changes from events: items and users inserted or updated by
//! `POST /v1/events` (API.md §2), kept as the fields each event set (merged
//! per id, in the order ids first appeared) and laid over the snapshot as a
//! new catalog generation ([`Catalog::with_changes`]).
//!
//! Fields are kept as the caller's JSON, checked against the schema when
//! the event is accepted: a log or snapshot written under one schema is
//! re-read under the next, where a value that no longer fits (a category
//! dropped from its vocabulary, an item gone from the snapshot) counts as
//! missing instead of failing the start.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use super::Catalog;
use crate::data::schema::{Default, Entity, Field, FieldType};
use crate::data::table::{DeltaRow, Slot, Table, Value};

/// The fields events set on the entities of one table, merged per id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    from = "Vec<(String, Map<String, Json>)>",
    into = "Vec<(String, Map<String, Json>)>"
)]
pub struct EntityChanges {
    /// (id, every field set so far), in the order ids first appeared:
    /// new entities take rows in this order.
    list: Vec<(String, Map<String, Json>)>,
    at: HashMap<String, usize>,
}

impl From<Vec<(String, Map<String, Json>)>> for EntityChanges {
    fn from(list: Vec<(String, Map<String, Json>)>) -> Self {
        let at = list
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (id.clone(), i))
            .collect();
        EntityChanges { list, at }
    }
}

impl From<EntityChanges> for Vec<(String, Map<String, Json>)> {
    fn from(c: EntityChanges) -> Self {
        c.list
    }
}

impl EntityChanges {
    /// Records `fields` for `id` (later values win, field by field).
    pub fn merge(&mut self, id: &str, fields: &Map<String, Json>) {
        let i = *self.at.entry(id.to_string()).or_insert_with(|| {
            self.list.push((id.to_string(), Map::new()));
            self.list.len() - 1
        });
        for (k, v) in fields {
            self.list[i].1.insert(k.clone(), v.clone());
        }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.at.contains_key(id)
    }
}

/// Every item and user change so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    pub items: EntityChanges,
    pub users: EntityChanges,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.users.is_empty()
    }
}

/// Checks `fields` of an item or user event against `entity`; the error
/// names the field (`fields.price: …`). `item` says whether an item id is
/// known (for users' item lists).
pub fn check(
    entity: &Entity,
    fields: &Map<String, Json>,
    item: &dyn Fn(&str) -> Option<u32>,
) -> Result<(), String> {
    for (name, v) in fields {
        let Some((_, field)) = entity.field(name) else {
            let names: Vec<&str> = entity.fields.iter().map(|f| f.name.as_str()).collect();
            return Err(format!(
                "fields.{name}: not a field of the schema (one of {names:?})"
            ));
        };
        parse(field, v, item).map_err(|e| format!("fields.{name}: {e}"))?;
    }
    Ok(())
}

/// The field's value when nothing set it: its default, else missing.
fn default_value(field: &Field) -> Value {
    let d = match field.default {
        Some(Default::Value(v)) => v as f32,
        _ => f32::NAN,
    };
    match &field.ty {
        FieldType::Number | FieldType::Integer | FieldType::Category(_) => Value::Values(vec![d]),
        // A vector nobody set is zeros: it adds nothing to a dot product
        // and is never retrieved.
        FieldType::Vector { dim, .. } => Value::Values(vec![0.0; *dim]),
        FieldType::Categories(_) | FieldType::Items => Value::List(Vec::new()),
        FieldType::Timestamp => Value::Time(f64::NAN),
    }
}

/// One field's JSON value as the table holds it (`null`: the default).
fn parse(field: &Field, v: &Json, item: &dyn Fn(&str) -> Option<u32>) -> Result<Value, String> {
    if v.is_null() {
        return Ok(default_value(field));
    }
    let number = |v: &Json| -> Result<f32, String> {
        match v.as_f64() {
            Some(x) if x.is_finite() && x.abs() <= f32::MAX as f64 => Ok(x as f32),
            _ => Err(format!("must be a finite number, got {v}")),
        }
    };
    let strings = |v: &Json| -> Result<Vec<String>, String> {
        v.as_array()
            .and_then(|a| {
                a.iter()
                    .map(|s| s.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| format!("must be a list of strings, got {v}"))
    };
    Ok(match &field.ty {
        FieldType::Number => Value::Values(vec![number(v)?]),
        FieldType::Integer => match v.as_i64() {
            Some(n) if n.unsigned_abs() <= 1 << 24 => Value::Values(vec![n as f32]),
            _ => return Err(format!("must be an integer within ±2^24, got {v}")),
        },
        FieldType::Category(_) => {
            let s = v
                .as_str()
                .ok_or_else(|| format!("must be a string, got {v}"))?;
            let code = field.code_of(s, false)?;
            Value::Values(vec![code.map_or(f32::NAN, |c| c as f32)])
        }
        FieldType::Categories(_) => {
            let mut codes = Vec::new();
            for s in strings(v)? {
                codes.extend(field.code_of(&s, false)?);
            }
            codes.sort_unstable();
            codes.dedup();
            Value::List(codes)
        }
        FieldType::Vector { dim, .. } => {
            let values = v
                .as_array()
                .ok_or_else(|| format!("must be a list of {dim} numbers, got {v}"))?;
            if values.len() != *dim {
                return Err(format!(
                    "has {} values, the schema says {dim}",
                    values.len()
                ));
            }
            Value::Values(values.iter().map(number).collect::<Result<_, _>>()?)
        }
        FieldType::Timestamp => match v.as_i64() {
            Some(t) => Value::Time(t as f64),
            None => return Err(format!("must be epoch milliseconds, got {v}")),
        },
        FieldType::Items => {
            let mut rows = Vec::new();
            for id in strings(v)? {
                rows.push(item(&id).ok_or_else(|| format!("item \"{id}\" is not in the catalog"))?);
            }
            Value::List(rows)
        }
    })
}

/// The values of base row `r` of `table`, one per field.
fn row_values(entity: &Entity, table: &Table, r: u32) -> Vec<Value> {
    (0..entity.fields.len())
        .map(|i| match table.slot(i) {
            Slot::Row { at, len } => Value::Values(table.values(r, at, len).to_vec()),
            Slot::Vector => Value::Values(table.vector(r).to_vec()),
            Slot::List(l) => Value::List(table.list(l, r).to_vec()),
            Slot::Time(t) => Value::Time(table.time(t, r)),
        })
        .collect()
}

/// `fields` laid over entity `id`'s values: its values so far (`prev`,
/// from earlier events), else its snapshot row, else the schema's
/// defaults. A value that no longer fits the schema counts as missing
/// (and is logged).
fn lay_over(
    entity: &Entity,
    base: &Table,
    id: &str,
    prev: Option<DeltaRow>,
    fields: &Map<String, Json>,
    vector_field: Option<&str>,
    item: &dyn Fn(&str) -> Option<u32>,
) -> DeltaRow {
    let mut row = prev.unwrap_or_else(|| {
        let at = base.row(id);
        DeltaRow {
            id: id.to_string(),
            base: at,
            values: match at {
                Some(r) => row_values(entity, base, r),
                None => entity.fields.iter().map(default_value).collect(),
            },
            vector_set: false,
        }
    });
    for (name, v) in fields {
        let Some((i, field)) = entity.field(name) else {
            continue;
        };
        match parse(field, v, item) {
            Ok(value) => row.values[i] = value,
            Err(e) => {
                tracing::warn!(id, field = name, error = %e, "an event's field no longer fits the schema; counted as missing");
                row.values[i] = default_value(field);
            }
        }
        row.vector_set |= Some(name.as_str()) == vector_field;
    }
    row
}

/// One table's changes parsed into delta rows, in the order ids first
/// appeared (new entities take rows in this order): kept between
/// generations, so a batch parses only the fields it sets.
#[derive(Default)]
struct Parsed {
    rows: Vec<DeltaRow>,
    at: HashMap<String, usize>,
}

impl Parsed {
    fn update(
        &mut self,
        entity: &Entity,
        base: &Table,
        id: &str,
        fields: &Map<String, Json>,
        vector_field: Option<&str>,
        item: &dyn Fn(&str) -> Option<u32>,
    ) {
        match self.at.get(id) {
            Some(&i) => {
                let prev = std::mem::replace(
                    &mut self.rows[i],
                    DeltaRow {
                        id: String::new(),
                        base: None,
                        values: Vec::new(),
                        vector_set: false,
                    },
                );
                self.rows[i] = lay_over(entity, base, id, Some(prev), fields, vector_field, item);
            }
            None => {
                self.at.insert(id.to_string(), self.rows.len());
                self.rows
                    .push(lay_over(entity, base, id, None, fields, vector_field, item));
            }
        }
    }
}

/// Both tables' changes, parsed.
#[derive(Default)]
struct ParsedChanges {
    items: Parsed,
    users: Parsed,
}

impl ParsedChanges {
    /// Lays `items` and `users` (id, fields set), in order, over the
    /// changes so far, on top of `base`.
    fn add<'a>(
        &mut self,
        base: &Catalog,
        items: impl IntoIterator<Item = (&'a str, &'a Map<String, Json>)>,
        users: impl IntoIterator<Item = (&'a str, &'a Map<String, Json>)>,
    ) {
        let r = &base.schema.retrieval;
        for (id, fields) in items {
            self.items.update(
                &base.schema.items,
                &base.items,
                id,
                fields,
                r.item_vector.as_deref(),
                &|id| base.items.row(id),
            );
        }
        // Users' item lists may name items events inserted.
        let rows = new_item_rows(base, &self.items);
        for (id, fields) in users {
            self.users.update(
                &base.schema.users,
                &base.users,
                id,
                fields,
                r.user_vector.as_deref(),
                &|id| base.items.row(id).or_else(|| rows.get(id).copied()),
            );
        }
    }

    fn of(base: &Catalog, changes: &Changes) -> ParsedChanges {
        let mut parsed = ParsedChanges::default();
        parsed.add(
            base,
            changes.items.list.iter().map(|(id, f)| (id.as_str(), f)),
            changes.users.list.iter().map(|(id, f)| (id.as_str(), f)),
        );
        parsed
    }
}

/// Builds catalog generations from a snapshot and the changes events make:
/// each batch's fields are parsed once and laid over what earlier batches
/// set, and the next generation is built from the parsed rows — without
/// re-reading every change so far, and outside the live view's lock.
pub struct Generations {
    base: std::sync::Arc<Catalog>,
    parsed: ParsedChanges,
}

impl Generations {
    pub fn new(base: std::sync::Arc<Catalog>) -> Generations {
        Generations {
            base,
            parsed: ParsedChanges::default(),
        }
    }

    /// Starts over from every change in `changes` (a restored snapshot).
    pub fn reset(&mut self, changes: &Changes) {
        self.parsed = ParsedChanges::of(&self.base, changes);
    }

    /// Lays `items` and `users` (id, fields set), in order, over the
    /// changes so far.
    pub fn add<'a>(
        &mut self,
        items: impl IntoIterator<Item = (&'a str, &'a Map<String, Json>)>,
        users: impl IntoIterator<Item = (&'a str, &'a Map<String, Json>)>,
    ) {
        self.parsed.add(&self.base, items, users);
    }

    /// The catalog with every change so far, as generation `generation`.
    pub fn build(&self, generation: u64) -> Catalog {
        self.base
            .with_delta_rows(&self.parsed.items.rows, &self.parsed.users.rows, generation)
    }
}

/// The rows new items take: after the snapshot's, in first-seen order.
fn new_item_rows(base: &Catalog, items: &Parsed) -> HashMap<String, u32> {
    let mut next = base.items.len() as u32;
    items
        .rows
        .iter()
        .filter(|r| r.base.is_none())
        .map(|r| {
            next += 1;
            (r.id.clone(), next - 1)
        })
        .collect()
}

impl Catalog {
    /// This (snapshot) catalog with `changes` laid over it: new items and
    /// users take the rows after the snapshot's, changed ones keep their
    /// rows; the cold-start popularity list takes them in too.
    pub fn with_changes(&self, changes: &Changes, generation: u64) -> Catalog {
        let parsed = ParsedChanges::of(self, changes);
        self.with_delta_rows(&parsed.items.rows, &parsed.users.rows, generation)
    }

    /// This (snapshot) catalog with `items` and `users` (every change so
    /// far, parsed) in front of its tables.
    fn with_delta_rows(&self, items: &[DeltaRow], users: &[DeltaRow], generation: u64) -> Catalog {
        let items_table = if items.is_empty() {
            self.items.clone()
        } else {
            self.items.with_delta(items)
        };
        let users = if users.is_empty() {
            self.users.clone()
        } else {
            self.users.with_delta(users)
        };
        let mut next = Catalog {
            schema: self.schema.clone(),
            items: items_table,
            users,
            popular: Vec::new(),
            popularity: self.popularity,
            seen: self.seen,
            generation,
        };
        // The snapshot's order without the changed items, merged with the
        // changed and new ones in the same order: O(items), no full sort.
        let changed: Vec<u32> = items.iter().filter_map(|r| next.items.row(&r.id)).collect();
        let mut moved = vec![0u64; self.items.len().div_ceil(64)];
        for &row in &changed {
            if let Some(w) = moved.get_mut(row as usize / 64) {
                *w |= 1 << (row % 64);
            }
        }
        // Each changed row's place in the snapshot's list is a binary
        // search (the list is in the snapshot's order, which the rows that
        // did not change keep); the runs between those places are copied
        // without the changed rows. A linear merge would read every
        // item's popularity: 40 ms of cache misses at a million items.
        let better = |a: (f32, u32), b: (f32, u32)| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)).is_gt();
        let mut changed: Vec<(f32, u32)> = changed
            .into_iter()
            .map(|row| (next.popular_key(row), row))
            .collect();
        changed.sort_by(|&a, &b| {
            if better(a, b) {
                Ordering::Less
            } else {
                Ordering::Greater
            }
        });
        let mut popular = Vec::with_capacity(next.items.len());
        let mut from = 0;
        let unmoved = |row: &&u32| moved[**row as usize / 64] >> (**row % 64) & 1 == 0;
        for c in changed {
            let at = from
                + self.popular[from..]
                    .partition_point(|&row| better((self.popular_key(row), row), c));
            popular.extend(self.popular[from..at].iter().filter(unmoved));
            popular.push(c.1);
            from = at;
        }
        popular.extend(self.popular[from..].iter().filter(unmoved));
        next.popular = popular;
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ids::Ids;
    use crate::data::schema::Schema;
    use crate::data::table::{Column, Csr};
    use std::sync::Arc;

    fn catalog() -> Catalog {
        let schema = Schema::parse(
            r#"
            [items]
            fields.embedding = { type = "vector", dim = 2 }
            fields.popularity = { type = "number", default = 0.0 }
            fields.tags = { type = "categories", values = ["a", "b", "c"] }
            fields.added = { type = "timestamp" }
            [users]
            fields.age = { type = "number" }
            fields.seen = { type = "items" }
            [retrieval]
            item_vector = "embedding"
            popularity = "popularity"
            seen = "seen"
            "#,
        )
        .unwrap();
        let items = Table::build(
            &schema.items,
            Ids::new(vec!["x".into(), "y".into(), "z".into()], "items").unwrap(),
            vec![
                Column::Vectors(vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8]),
                Column::Scalars(vec![5.0, 9.0, 1.0]),
                Column::Lists(Csr {
                    offsets: vec![0, 1, 1, 2],
                    values: vec![0, 2],
                }),
                Column::Times(vec![1.0, 2.0, 3.0]),
            ],
            Some("embedding"),
        );
        let users = Table::build(
            &schema.users,
            Ids::new(vec!["u".into()], "users").unwrap(),
            vec![
                Column::Scalars(vec![30.0]),
                Column::Lists(Csr {
                    offsets: vec![0, 1],
                    values: vec![1],
                }),
            ],
            None,
        );
        Catalog {
            schema: Arc::new(schema),
            items,
            users,
            popular: vec![1, 0, 2],
            popularity: Some(0),
            seen: Some(0),
            generation: 0,
        }
    }

    fn fields(v: serde_json::Value) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn new_and_changed_entities_read_through_and_keep_the_rest() {
        let base = catalog();
        let mut ch = Changes::default();
        ch.items.merge(
            "new",
            &fields(
                serde_json::json!({"embedding": [0.0, 2.0], "popularity": 7, "tags": ["b", "c"]}),
            ),
        );
        ch.items
            .merge("z", &fields(serde_json::json!({"popularity": 20})));
        ch.items
            .merge("z", &fields(serde_json::json!({"tags": ["a"]})));
        ch.users
            .merge("v", &fields(serde_json::json!({"seen": ["new", "x"]})));
        ch.users.merge("u", &fields(serde_json::json!({"age": 31})));
        let c = base.with_changes(&ch, 1);
        assert_eq!((c.items.len(), c.users.len()), (4, 2));
        assert_eq!(c.items.row("new"), Some(3));
        assert_eq!(c.items.id(3), "new");
        assert_eq!(c.item_vector(3), &[0.0, 2.0]);
        assert_eq!(c.popularity(3), 7.0);
        assert_eq!(c.items.list(0, 3), &[1, 2]);
        assert_eq!(c.items.mask(0, 3), Some(0b110));
        assert!(c.items.time(0, 3).is_nan(), "an unset timestamp is missing");
        // z keeps its vector and time, takes both updates.
        assert_eq!(c.popularity(2), 20.0);
        assert_eq!(c.items.list(0, 2), &[0]);
        assert_eq!(c.item_vector(2), &[0.6, 0.8]);
        assert_eq!(c.items.time(0, 2), 3.0);
        // Untouched rows read the snapshot.
        assert_eq!(c.popularity(1), 9.0);
        assert_eq!(c.items.list(0, 0), &[0]);
        // Only the row whose embedding an event set is searched apart.
        assert_eq!(c.items.vector_rows(), &[3]);
        assert_eq!(c.popular, vec![2, 1, 3, 0]);
        // Users: a new one with a list of item rows, an old one changed.
        assert_eq!(c.users.row("v"), Some(1));
        assert_eq!(c.seen(1), &[3, 0]);
        assert_eq!(c.users.scalar(0, 0), 31.0);
        assert_eq!(c.seen(0), &[1], "a field no event set keeps its value");
        assert!(c.users.scalar(1, 0).is_nan());
        // The snapshot catalog is untouched.
        assert_eq!((base.items.len(), base.popularity(2)), (3, 1.0));
    }

    /// Generations built batch by batch (each batch's fields parsed once,
    /// laid over the parsed rows so far) equal the catalog built from every
    /// change at once.
    #[test]
    fn generations_built_batch_by_batch_equal_one_build_of_everything() {
        let base = Arc::new(catalog());
        let batches = [
            (
                vec![(
                    "new",
                    serde_json::json!({"embedding": [0.0, 2.0], "popularity": 7}),
                )],
                vec![],
            ),
            (
                vec![("z", serde_json::json!({"popularity": 20}))],
                vec![("v", serde_json::json!({"seen": ["new", "x"]}))],
            ),
            (
                vec![
                    ("z", serde_json::json!({"tags": ["a"]})),
                    ("new2", serde_json::json!({"popularity": 8, "tags": ["c"]})),
                    ("new", serde_json::json!({"popularity": 3})),
                ],
                vec![("u", serde_json::json!({"age": 31, "seen": ["new2"]}))],
            ),
        ];
        let mut all = Changes::default();
        let mut g = Generations::new(base.clone());
        for (i, (items, users)) in batches.iter().enumerate() {
            let items: Vec<(&str, Map<String, Json>)> = items
                .iter()
                .map(|(id, v)| (*id, fields(v.clone())))
                .collect();
            let users: Vec<(&str, Map<String, Json>)> = users
                .iter()
                .map(|(id, v)| (*id, fields(v.clone())))
                .collect();
            for (id, f) in &items {
                all.items.merge(id, f);
            }
            for (id, f) in &users {
                all.users.merge(id, f);
            }
            g.add(
                items.iter().map(|(id, f)| (*id, f)),
                users.iter().map(|(id, f)| (*id, f)),
            );
            let step = g.build(i as u64 + 1);
            let once = base.with_changes(&all, i as u64 + 1);
            assert_eq!(step.popular, once.popular, "batch {i}");
            for (a, b) in [(&step.items, &once.items), (&step.users, &once.users)] {
                assert_eq!(a.len(), b.len(), "batch {i}");
                for r in 0..a.len() as u32 {
                    assert_eq!(a.id(r), b.id(r));
                    assert_eq!(a.vector(r), b.vector(r));
                    for f in 0..a.width() {
                        let (x, y) = (a.scalar(r, f), b.scalar(r, f));
                        assert!(x.to_bits() == y.to_bits(), "batch {i} row {r} slot {f}");
                    }
                }
            }
            assert_eq!(step.items.vector_rows(), once.items.vector_rows());
            assert_eq!(step.users.list(0, 1), once.users.list(0, 1));
        }
        // The last batch's user lists name items new in this batch.
        let last = g.build(9);
        assert_eq!(last.seen(0), &[last.items.row("new2").unwrap()]);
    }

    #[test]
    fn fields_are_checked_against_the_schema_by_name() {
        let c = catalog();
        let known = |id: &str| c.items.row(id);
        let check_item = |v| check(&c.schema.items, &fields(v), &known);
        assert!(
            check_item(serde_json::json!({"embedding": [1, 2], "tags": ["a"], "added": 5})).is_ok()
        );
        for (v, want) in [
            (
                serde_json::json!({"colour": 1}),
                "fields.colour: not a field of the schema",
            ),
            (
                serde_json::json!({"embedding": [1]}),
                "fields.embedding: has 1 values, the schema says 2",
            ),
            (
                serde_json::json!({"popularity": "high"}),
                "fields.popularity: must be a finite number",
            ),
            (serde_json::json!({"tags": ["d"]}), "fields.tags: "),
            (
                serde_json::json!({"tags": "a"}),
                "fields.tags: must be a list of strings",
            ),
            (
                serde_json::json!({"added": 1.5}),
                "fields.added: must be epoch milliseconds",
            ),
        ] {
            let e = check_item(v.clone()).expect_err(&v.to_string());
            assert!(e.starts_with(want), "{v}: {e}");
        }
        let e = check(
            &c.schema.users,
            &fields(serde_json::json!({"seen": ["nope"]})),
            &known,
        )
        .unwrap_err();
        assert_eq!(e, "fields.seen: item \"nope\" is not in the catalog");
    }

    #[test]
    fn changes_round_trip_through_json_in_order() {
        let mut ch = Changes::default();
        ch.items
            .merge("b", &fields(serde_json::json!({"popularity": 1})));
        ch.items
            .merge("a", &fields(serde_json::json!({"popularity": 2})));
        let text = serde_json::to_string(&ch).unwrap();
        let back: Changes = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ch);
        assert!(back.items.contains("a") && back.items.list[0].0 == "b");
    }
}
