//! A synthetic catalog at any scale, for benches and load tests: the files
//! [`super::Catalog::load`] reads, with `items` items and `users` users.
//!
//! Embeddings are clustered unit vectors ([`super::synth::Clustered`]);
//! users are drawn from the same distribution, so retrieval sees realistic
//! queries. Every other attribute of a synthetic item (or user) is copied
//! from a randomly drawn row of the template catalog (the shipped one), so
//! the models' features keep their trained marginal distributions while the
//! catalog grows. Deterministic in the seed.

use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::synth::{Clustered, Rng};
use super::{Catalog, ItemStat};

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

/// Columns of one table being assembled: name → (row-major data, width).
struct Table(Vec<(&'static str, Vec<f32>, usize)>);

impl Table {
    fn push(&mut self, name: &'static str, data: Vec<f32>, width: usize) {
        self.0.push((name, data, width));
    }

    fn write(&self, path: &Path, rows: usize) -> Result<(), String> {
        let bytes: Vec<(&str, Vec<u8>, Vec<usize>)> = self
            .0
            .iter()
            .map(|(name, data, width)| {
                let shape = if *width == 1 {
                    vec![rows]
                } else {
                    vec![rows, *width]
                };
                let raw = data.iter().flat_map(|x| x.to_le_bytes()).collect();
                (*name, raw, shape)
            })
            .collect();
        let views: Vec<(&str, TensorView<'_>)> = bytes
            .iter()
            .map(|(name, raw, shape)| {
                TensorView::new(Dtype::F32, shape.clone(), raw)
                    .map(|v| (*name, v))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        safetensors::serialize_to_file(views, None, path).map_err(|e| e.to_string())
    }
}

/// Copies `width` values of template row `from` of `src` onto the end of `dst`.
fn copy_row(dst: &mut Vec<f32>, src: &[f32], width: usize, from: usize) {
    dst.extend_from_slice(&src[from * width..(from + 1) * width]);
}

/// Writes `items.safetensors`, `items.json`, `users.safetensors`,
/// `users.json` and an empty `user_history.safetensors` (synthetic users
/// have seen nothing) into `out` (created if needed).
pub fn write(template: &Catalog, spec: &Spec, out: &Path) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let t = &template.items;
    let mut rng = Rng::new(spec.seed ^ 0x5eed_ca7a_1095);
    let space = Clustered::new(spec.dim, spec.clusters, spec.spread, spec.seed);
    let n = spec.items;

    let mut items = Table(Vec::new());
    items.push("embedding", space.items(n), spec.dim);
    let donors: Vec<usize> = (0..n).map(|_| rng.below(t.len())).collect();
    let mut genres = Vec::with_capacity(n * t.n_genres);
    let mut lift = Vec::with_capacity(n * t.n_occupations);
    for &d in &donors {
        genres.extend_from_slice(t.genres(d as u32));
        lift.extend_from_slice(t.occupation_lift(d as u32));
    }
    items.push("genres", genres, t.n_genres);
    items.push("occupation_lift", lift, t.n_occupations);
    let scalar = |s: ItemStat| {
        donors
            .iter()
            .map(|&d| t.stat(d as u32, s))
            .collect::<Vec<f32>>()
    };
    for s in ItemStat::ALL {
        items.push(s.tensor(), scalar(s), 1);
    }
    let popularity = scalar(ItemStat::Popularity);
    items.write(&out.join("items.safetensors"), n)?;
    let ids: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| popularity[b].total_cmp(&popularity[a]).then(a.cmp(&b)));
    let popular: Vec<&String> = order.iter().take(1000).map(|&i| &ids[i]).collect();
    let genre_names = &t.genre_names;
    write_json(
        &out.join("items.json"),
        &serde_json::json!({"ids": ids, "popular": popular, "genres": genre_names}),
    )?;

    let u = &template.users;
    let m = spec.users;
    let donors: Vec<usize> = (0..m).map(|_| rng.below(u.len())).collect();
    let mut users = Table(Vec::new());
    users.push("embedding", space.queries(m), spec.dim);
    let mut profile = Vec::with_capacity(m * u.n_genres);
    for &d in &donors {
        copy_row(&mut profile, &u.genre_profile, u.n_genres, d);
    }
    users.push("genre_profile", profile, u.n_genres);
    for (name, v) in [
        ("age", &u.age),
        ("gender_m", &u.gender_m),
        ("occupation", &u.occupation),
        ("log_n_ratings", &u.log_n_ratings),
        ("mean_rating", &u.mean_rating),
        ("pos_rate", &u.pos_rate),
    ] {
        users.push(name, donors.iter().map(|&d| v[d]).collect(), 1);
    }
    users.write(&out.join("users.safetensors"), m)?;
    let user_ids: Vec<String> = (0..m).map(|i| format!("u{i}")).collect();
    write_json(
        &out.join("users.json"),
        &serde_json::json!({"ids": user_ids, "occupations": template.occupations}),
    )?;
    write_empty_history(&out.join("user_history.safetensors"), m)
}

/// A user history with no items: `m + 1` zero offsets, no rows.
fn write_empty_history(path: &Path, users: usize) -> Result<(), String> {
    let offsets = vec![0u8; (users + 1) * 4];
    let views = [
        (
            "offsets",
            TensorView::new(Dtype::I32, vec![users + 1], &offsets).map_err(|e| e.to_string())?,
        ),
        (
            "items",
            TensorView::new(Dtype::I32, vec![0], &[]).map_err(|e| e.to_string())?,
        ),
    ];
    safetensors::serialize_to_file(views, None, path).map_err(|e| e.to_string())
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_catalog_loads_and_keeps_the_templates_vocabulary() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let template = Catalog::load(&root.join("models/catalog")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec {
            items: 5000,
            users: 300,
            dim: 16,
            clusters: 20,
            spread: 0.5,
            seed: 3,
        };
        write(&template, &spec, dir.path()).unwrap();
        let c = Catalog::load(dir.path()).unwrap();
        assert_eq!(c.items.len(), 5000);
        assert_eq!(c.users.len(), 300);
        assert_eq!(c.items.dim, 16);
        assert_eq!(c.items.genre_names, template.items.genre_names);
        assert_eq!(c.occupations, template.occupations);
        assert_eq!(c.popular.len(), 1000);
        assert!(c.items.popularity(c.popular[0]) >= c.items.popularity(c.popular[999]));
        // Same seed, same files.
        let again = tempfile::tempdir().unwrap();
        write(&template, &spec, again.path()).unwrap();
        for f in ["items.safetensors", "users.safetensors", "items.json"] {
            assert_eq!(
                std::fs::read(dir.path().join(f)).unwrap(),
                std::fs::read(again.path().join(f)).unwrap(),
                "{f}"
            );
        }
    }
}
