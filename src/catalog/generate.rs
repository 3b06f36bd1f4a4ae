//! A synthetic catalog at any scale, for benches and load tests: the files
//! [`super::Catalog::load`] reads (`schema.toml`, `items.parquet`,
//! `users.parquet`), with `items` items and `users` users, for whatever app
//! the template is.
//!
//! The retrieval vectors are clustered unit vectors ([`super::synth::Clustered`]);
//! users are drawn from the same distribution, so retrieval sees realistic
//! queries. Every other field of a synthetic item (or user) is copied from
//! a randomly drawn row of the template catalog, so the models' features
//! keep their trained marginal distributions while the catalog grows.
//! Synthetic users have seen nothing. Deterministic in the seed.

use std::path::Path;

use super::synth::{Clustered, Rng};
use super::{Catalog, SCHEMA_FILE};
use crate::data::parquet::{write as write_parquet, Out};
use crate::data::schema::{Entity, FieldType};
use crate::data::table::{Slot, Table};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    pub items: usize,
    pub users: usize,
    pub dim: usize,
    pub clusters: usize,
    pub spread: f32,
    pub seed: u64,
}

/// Writes a catalog of `spec`'s size into `out` (created if needed), from
/// the catalog in `template_dir`.
pub fn write(template_dir: &Path, spec: &Spec, out: &Path) -> Result<(), String> {
    let template = Catalog::load(template_dir).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut rng = Rng::new(spec.seed ^ 0x5eed_ca7a_1095);
    let space = Clustered::new(spec.dim, spec.clusters, spec.spread, spec.seed);
    let schema = &template.schema;

    let item_ids: Vec<String> = (0..spec.items).map(|i| format!("s{i}")).collect();
    let donors: Vec<u32> = (0..spec.items)
        .map(|_| rng.below(template.items.len()) as u32)
        .collect();
    let columns = resample(&schema.items, &template.items, &donors, || {
        space.items(spec.items)
    });
    write_entity(&out.join(&schema.items.file), item_ids, columns)?;

    if !schema.users.fields.is_empty() {
        let user_ids: Vec<String> = (0..spec.users).map(|i| format!("u{i}")).collect();
        let donors: Vec<u32> = (0..spec.users)
            .map(|_| rng.below(template.users.len().max(1)) as u32)
            .collect();
        let columns = resample(&schema.users, &template.users, &donors, || {
            space.queries(spec.users)
        });
        write_entity(&out.join(&schema.users.file), user_ids, columns)?;
    }

    // The template's schema, with the retrieval vectors' new length.
    let text = std::fs::read_to_string(template_dir.join(SCHEMA_FILE))
        .map_err(|e| format!("{SCHEMA_FILE}: {e}"))?;
    let mut tree: toml::Table = text.parse().map_err(|e| format!("{SCHEMA_FILE}: {e}"))?;
    for (entity, field) in [
        ("items", &schema.retrieval.item_vector),
        ("users", &schema.retrieval.user_vector),
    ] {
        if let Some(f) = field {
            if let Some(t) = tree
                .get_mut(entity)
                .and_then(|e| e.get_mut("fields"))
                .and_then(|fs| fs.get_mut(f))
                .and_then(toml::Value::as_table_mut)
            {
                t.insert("dim".into(), toml::Value::Integer(spec.dim as i64));
            }
        }
    }
    std::fs::write(
        out.join(SCHEMA_FILE),
        toml::to_string(&tree).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", out.display()))
}

fn write_entity(path: &Path, ids: Vec<String>, columns: Vec<(String, Out)>) -> Result<(), String> {
    let (names, outs): (Vec<String>, Vec<Out>) = columns.into_iter().unzip();
    write_parquet(
        path,
        std::iter::once(("id", Out::Strings(ids)))
            .chain(names.iter().map(String::as_str).zip(outs))
            .collect(),
    )
}

/// Every field of `entity` for rows copied from `donors` of `table`; the
/// retrieval vector comes from `vectors` instead.
fn resample(
    entity: &Entity,
    table: &Table,
    donors: &[u32],
    vectors: impl FnOnce() -> Vec<f32>,
) -> Vec<(String, Out)> {
    let mut vectors = Some(vectors);
    let mut out = Vec::new();
    for (i, field) in entity.fields.iter().enumerate() {
        let column = match (table.slot(i), &field.ty) {
            (Slot::Vector, FieldType::Vector { .. }) => {
                let v = (vectors.take().expect("one retrieval vector"))();
                let dim = v.len() / donors.len().max(1);
                Out::Vectors(v, dim)
            }
            (Slot::Row { at, len }, FieldType::Vector { .. }) => {
                let mut v = Vec::with_capacity(donors.len() * len);
                for &d in donors {
                    v.extend_from_slice(table.values(d, at, len));
                }
                Out::Vectors(v, len)
            }
            (Slot::Row { at, .. }, FieldType::Category(vocab)) => Out::OptStrings(
                donors
                    .iter()
                    .map(|&d| {
                        let c = table.scalar(d, at);
                        if c.is_nan() {
                            None
                        } else {
                            vocab.value(c as u32)
                        }
                    })
                    .collect(),
            ),
            (Slot::Row { at, .. }, _) => Out::OptF32(
                donors
                    .iter()
                    .map(|&d| Some(table.scalar(d, at)).filter(|v| !v.is_nan()))
                    .collect(),
            ),
            (Slot::List(l), FieldType::Categories(vocab)) => Out::StringLists(
                donors
                    .iter()
                    .map(|&d| {
                        table
                            .list(l, d)
                            .iter()
                            .filter_map(|&c| vocab.value(c))
                            .collect()
                    })
                    .collect(),
            ),
            // The template's items are not the synthetic ones.
            (Slot::List(_), _) => Out::StringLists(vec![Vec::new(); donors.len()]),
            (Slot::Time(t), _) => Out::OptF64(
                donors
                    .iter()
                    .map(|&d| Some(table.time(t, d)).filter(|v| !v.is_nan()))
                    .collect(),
            ),
            (slot, ty) => unreachable!("{slot:?} does not hold a {}", ty.name()),
        };
        out.push((field.name.clone(), column));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_catalog_loads_with_the_templates_schema() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/catalog");
        let template = Catalog::load(&root).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec {
            items: 5000,
            users: 300,
            dim: 16,
            clusters: 20,
            spread: 0.5,
            seed: 3,
        };
        write(&root, &spec, dir.path()).unwrap();
        let c = Catalog::load(dir.path()).unwrap();
        assert_eq!(c.items.len(), 5000);
        assert_eq!(c.users.len(), 300);
        assert_eq!(c.dim(), 16);
        assert_eq!(
            c.schema.vocabularies.keys().collect::<Vec<_>>(),
            template.schema.vocabularies.keys().collect::<Vec<_>>()
        );
        assert_eq!(c.items.width(), template.items.width());
        assert_eq!(c.popular.len(), 5000);
        assert!(c.popularity(c.popular[0]) >= c.popularity(c.popular[999]));
        assert!(c.seen(0).is_empty());
        // Same seed, same files.
        let again = tempfile::tempdir().unwrap();
        write(&root, &spec, again.path()).unwrap();
        for f in ["items.parquet", "users.parquet", SCHEMA_FILE] {
            assert_eq!(
                std::fs::read(dir.path().join(f)).unwrap(),
                std::fs::read(again.path().join(f)).unwrap(),
                "{f}"
            );
        }
    }
}
