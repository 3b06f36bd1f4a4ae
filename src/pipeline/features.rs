//! Feature assembly: the one Rust definition of every feature in
//! `models/FEATURES.md`, shared by every model. A model's `config.toml`
//! names its features in order; [`FeatureSet::compile`] resolves the names
//! once at start (an unknown name is a start-up error), and
//! [`FeatureSet::assemble`] writes the `[rows, features]` matrix into one
//! reused buffer, with no allocation per row.

use crate::catalog::{Catalog, ItemStat};

/// Who is being ranked for: a known user's row, or what a cold-start
/// request carries. Context fields are already validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subject {
    pub user: Option<u32>,
    /// Cold start only: demographics from the request context.
    pub age: Option<f32>,
    pub gender: Option<Gender>,
    pub occupation: Option<usize>,
    pub hour: f32,
    pub weekday: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gender {
    M,
    F,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UserField {
    Age,
    GenderM,
    Occupation,
    LogNRatings,
    MeanRating,
    PosRate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feature {
    Item(ItemStat),
    ItemGenre(usize),
    User(UserField),
    UserItemDot,
    UserGenreAffinity,
    AgeGap,
    GenderAffinity,
    OccupationLift,
    CtxHour,
    CtxWeekday,
    CtxAge,
    CtxAgeMissing,
    CtxGenderM,
    CtxGenderF,
    CtxOccupation,
}

/// `Children's` → `childrens`, `Film-Noir` → `film_noir`, as training names them.
pub fn genre_feature_name(genre: &str) -> String {
    format!(
        "item_genre_{}",
        genre.to_lowercase().replace('\'', "").replace('-', "_")
    )
}

fn parse(name: &str, catalog: &Catalog) -> Option<Feature> {
    use Feature as F;
    use ItemStat as I;
    use UserField as U;
    Some(match name {
        "item_popularity" => F::Item(I::Popularity),
        "item_recent_popularity" => F::Item(I::RecentPopularity),
        "item_log_n_ratings" => F::Item(I::LogNRatings),
        "item_mean_rating" => F::Item(I::MeanRating),
        "item_pos_rate" => F::Item(I::PosRate),
        "item_year" => F::Item(I::Year),
        "item_mean_rater_age" => F::Item(I::MeanRaterAge),
        "item_male_share" => F::Item(I::MaleShare),
        "user_age" => F::User(U::Age),
        "user_gender_m" => F::User(U::GenderM),
        "user_occupation" => F::User(U::Occupation),
        "user_log_n_ratings" => F::User(U::LogNRatings),
        "user_mean_rating" => F::User(U::MeanRating),
        "user_pos_rate" => F::User(U::PosRate),
        "user_item_dot" => F::UserItemDot,
        "user_genre_affinity" => F::UserGenreAffinity,
        "age_gap" => F::AgeGap,
        "gender_affinity" => F::GenderAffinity,
        "occupation_lift" => F::OccupationLift,
        "ctx_hour" => F::CtxHour,
        "ctx_weekday" => F::CtxWeekday,
        "ctx_age" => F::CtxAge,
        "ctx_age_missing" => F::CtxAgeMissing,
        "ctx_gender_m" => F::CtxGenderM,
        "ctx_gender_f" => F::CtxGenderF,
        "ctx_occupation" => F::CtxOccupation,
        other => {
            let g = catalog
                .items
                .genre_names
                .iter()
                .position(|g| genre_feature_name(g) == other)?;
            F::ItemGenre(g)
        }
    })
}

/// A model's features, resolved against the catalog.
#[derive(Debug, Clone)]
pub struct FeatureSet {
    features: Vec<Feature>,
    pub names: Vec<String>,
}

impl FeatureSet {
    pub fn compile(names: &[String], catalog: &Catalog) -> Result<FeatureSet, String> {
        let features = names
            .iter()
            .map(|n| parse(n, catalog).ok_or_else(|| format!("unknown feature \"{n}\"")))
            .collect::<Result<_, _>>()?;
        Ok(FeatureSet {
            features,
            names: names.to_vec(),
        })
    }

    pub fn width(&self) -> usize {
        self.features.len()
    }

    /// Writes one row per item into `out` (cleared first) and adds, per
    /// feature, how many rows had to use its default into `missing`
    /// (`missing.len()` must equal [`FeatureSet::width`]).
    pub fn assemble(
        &self,
        catalog: &Catalog,
        subject: &Subject,
        items: &[u32],
        out: &mut Vec<f32>,
        missing: &mut [u32],
    ) {
        out.clear();
        out.reserve(items.len() * self.features.len());
        // The two dot-product features, for all rows up front: see `sequential_dots`.
        let has = |f| self.features.contains(&f);
        let dots = match subject.user {
            Some(u) if has(Feature::UserItemDot) => {
                sequential_dots(catalog.users.embedding(u), items, |i| {
                    catalog.items.embedding(i)
                })
            }
            _ => Vec::new(),
        };
        let affinities = match subject.user {
            Some(u) if has(Feature::UserGenreAffinity) => {
                sequential_dots(catalog.users.genre_profile(u), items, |i| {
                    catalog.items.genres(i)
                })
            }
            _ => Vec::new(),
        };
        for (r, &item) in items.iter().enumerate() {
            for (j, f) in self.features.iter().enumerate() {
                let value = match f {
                    Feature::UserItemDot => dots.get(r).copied(),
                    Feature::UserGenreAffinity => affinities.get(r).copied(),
                    _ => self.value(*f, catalog, subject, item),
                };
                if value.is_none() {
                    missing[j] += 1;
                }
                out.push(value.unwrap_or_else(|| default(*f)));
            }
        }
    }

    /// The feature's value, or `None` when its input is missing.
    fn value(&self, f: Feature, catalog: &Catalog, s: &Subject, item: u32) -> Option<f32> {
        let items = &catalog.items;
        let users = &catalog.users;
        let gender = match s.user {
            Some(u) => Some(if users.gender_m[u as usize] >= 0.5 {
                Gender::M
            } else {
                Gender::F
            }),
            None => s.gender,
        };
        let age = match s.user {
            Some(u) => Some(users.age[u as usize]),
            None => s.age,
        };
        let occupation = match s.user {
            Some(u) => Some(users.occupation[u as usize] as usize),
            None => s.occupation,
        };
        Some(match f {
            Feature::Item(stat) => items.stat(item, stat),
            Feature::ItemGenre(g) => items.genres(item)[g],
            Feature::User(field) => {
                let u = s.user? as usize;
                match field {
                    UserField::Age => users.age[u],
                    UserField::GenderM => users.gender_m[u],
                    UserField::Occupation => users.occupation[u],
                    UserField::LogNRatings => users.log_n_ratings[u],
                    UserField::MeanRating => users.mean_rating[u],
                    UserField::PosRate => users.pos_rate[u],
                }
            }
            Feature::UserItemDot => sequential_dot(users.embedding(s.user?), items.embedding(item)),
            Feature::UserGenreAffinity => {
                sequential_dot(users.genre_profile(s.user?), items.genres(item))
            }
            Feature::AgeGap => (age? - items.stat(item, ItemStat::MeanRaterAge)).abs(),
            Feature::GenderAffinity => {
                let male = items.stat(item, ItemStat::MaleShare);
                match gender? {
                    Gender::M => male,
                    Gender::F => 1.0 - male,
                }
            }
            Feature::OccupationLift => *items.occupation_lift(item).get(occupation?)?,
            Feature::CtxHour => s.hour,
            Feature::CtxWeekday => s.weekday,
            Feature::CtxAge => s.age?,
            Feature::CtxAgeMissing => {
                if s.age.is_some() {
                    0.0
                } else {
                    return None;
                }
            }
            Feature::CtxGenderM => (s.gender? == Gender::M) as u8 as f32,
            Feature::CtxGenderF => (s.gender? == Gender::F) as u8 as f32,
            Feature::CtxOccupation => s.occupation? as f32,
        })
    }
}

/// The value a feature takes when its input is missing (FEATURES.md).
fn default(f: Feature) -> f32 {
    match f {
        Feature::CtxAgeMissing => 1.0,
        Feature::GenderAffinity => 0.5,
        Feature::OccupationLift => 1.0,
        Feature::CtxOccupation => -1.0,
        _ => 0.0,
    }
}

/// Left-to-right f32 accumulation, the order the training code's
/// reference implementation uses, so features match it bit for bit or
/// within an ulp.
fn sequential_dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0f32, |acc, (x, y)| acc + x * y)
}

/// Rows summed side by side in [`sequential_dots`].
const LANES: usize = 8;

/// `sequential_dot(query, row(item))` for every item, `LANES` items at a
/// time. Each row is still summed left to right, with a separate multiply
/// and add (Rust never fuses them), so every value is bit for bit the
/// one-row result; but `LANES` independent chains of adds run side by
/// side instead of one 64-long chain per row. On a 1M-item catalog that
/// chain also held back the loads of the next rows' (uncached) embeddings:
/// feature assembly was a quarter of the server's CPU.
fn sequential_dots<'a>(query: &[f32], items: &[u32], row: impl Fn(u32) -> &'a [f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(items.len());
    let mut chunks = items.chunks_exact(LANES);
    for chunk in &mut chunks {
        let rows: [&[f32]; LANES] = std::array::from_fn(|k| row(chunk[k]));
        // As `zip` in `sequential_dot`: the shorter length wins (the catalog
        // checks they are equal; this only keeps a mismatch from panicking).
        let len = rows.iter().fold(query.len(), |n, r| n.min(r.len()));
        let mut acc = [0.0f32; LANES];
        for (d, &q) in query[..len].iter().enumerate() {
            for (a, r) in acc.iter_mut().zip(&rows) {
                *a += q * r[d];
            }
        }
        out.extend_from_slice(&acc);
    }
    out.extend(
        chunks
            .remainder()
            .iter()
            .map(|&i| sequential_dot(query, row(i))),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_by_side_dots_are_bit_for_bit_the_sequential_ones() {
        // Values of mixed magnitude and sign, where summation order matters.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 10f32.powi((x % 7) as i32 - 3)
        };
        let dim = 64;
        let query: Vec<f32> = (0..dim).map(|_| next()).collect();
        let table: Vec<f32> = (0..40 * dim).map(|_| next()).collect();
        let row = |i: u32| &table[i as usize * dim..(i as usize + 1) * dim];
        // Every remainder after the groups of LANES, in a scattered order.
        for n in 0..=20usize {
            let items: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 3) % 40).collect();
            let got = sequential_dots(&query, &items, row);
            let want: Vec<f32> = items
                .iter()
                .map(|&i| sequential_dot(&query, row(i)))
                .collect();
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{n} rows"
            );
        }
        // A short row sums over the common length, as `zip` does.
        let short = [1.0f32, 2.0];
        assert_eq!(
            sequential_dots(&[3.0, 4.0, 5.0], &[0], |_| &short[..]),
            vec![11.0]
        );
    }

    #[test]
    fn assembled_rows_equal_feature_by_feature_values() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let catalog = Catalog::load(&root.join("models/catalog")).unwrap();
        let names: Vec<String> = [
            "user_item_dot",
            "item_popularity",
            "user_genre_affinity",
            "age_gap",
            "occupation_lift",
            "ctx_hour",
            "user_age",
        ]
        .map(String::from)
        .to_vec();
        let set = FeatureSet::compile(&names, &catalog).unwrap();
        let items: Vec<u32> = (0..27)
            .map(|i| i * 31 % catalog.items.len() as u32)
            .collect();
        for subject in [
            Subject {
                user: Some(5),
                hour: 13.0,
                weekday: 2.0,
                ..Subject::default()
            },
            Subject {
                age: Some(30.0),
                hour: 1.0,
                ..Subject::default()
            },
        ] {
            let (mut out, mut missing) = (Vec::new(), vec![0; set.width()]);
            set.assemble(&catalog, &subject, &items, &mut out, &mut missing);
            assert_eq!(out.len(), items.len() * set.width());
            for (r, &item) in items.iter().enumerate() {
                for (j, f) in set.features.iter().enumerate() {
                    let want = set
                        .value(*f, &catalog, &subject, item)
                        .unwrap_or_else(|| default(*f));
                    assert_eq!(
                        out[r * set.width() + j].to_bits(),
                        want.to_bits(),
                        "row {r} {}",
                        names[j]
                    );
                }
            }
            // Cold start: no user, so the user features all took defaults.
            if subject.user.is_none() {
                assert_eq!(missing[0], items.len() as u32);
                assert_eq!(missing[2], items.len() as u32);
            } else {
                assert_eq!(missing[0], 0);
            }
        }
    }
}
