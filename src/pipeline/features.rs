//! Feature assembly: the one Rust definition of every feature in
//! `models/FEATURES.md`, shared by every model. A model's `config.toml`
//! names its features in order; [`FeatureSet::compile`] resolves the names
//! once at start (an unknown name is a start-up error), and
//! [`FeatureSet::assemble`] writes the `[rows, features]` matrix into one
//! reused buffer, with no allocation per row.

use crate::catalog::Catalog;

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
enum ItemField {
    Popularity,
    RecentPopularity,
    LogNRatings,
    MeanRating,
    PosRate,
    Year,
    MeanRaterAge,
    MaleShare,
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
    Item(ItemField),
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
    use ItemField as I;
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
        for &item in items {
            for (j, f) in self.features.iter().enumerate() {
                let value = self.value(*f, catalog, subject, item);
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
        let i = item as usize;
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
            Feature::Item(field) => match field {
                ItemField::Popularity => items.popularity[i],
                ItemField::RecentPopularity => items.recent_popularity[i],
                ItemField::LogNRatings => items.log_n_ratings[i],
                ItemField::MeanRating => items.mean_rating[i],
                ItemField::PosRate => items.pos_rate[i],
                ItemField::Year => items.year[i],
                ItemField::MeanRaterAge => items.mean_rater_age[i],
                ItemField::MaleShare => items.male_share[i],
            },
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
            Feature::AgeGap => (age? - items.mean_rater_age[i]).abs(),
            Feature::GenderAffinity => match gender? {
                Gender::M => items.male_share[i],
                Gender::F => 1.0 - items.male_share[i],
            },
            Feature::OccupationLift => {
                let o = occupation.filter(|&o| o < items.n_occupations)?;
                items.occupation_lift[i * items.n_occupations + o]
            }
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
