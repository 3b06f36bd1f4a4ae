//! `POST /v1/rank` traffic: a realistic mix (see `scenarios/rank.toml`).
//!
//! Each request is first a repeat (with probability `repeat`, once there is
//! something to repeat) or fresh; a fresh one is `known`, `cold` or
//! `candidates` in proportion to those weights:
//!
//! - `known`: a catalog user, drawn Zipf-like (a few heavy users, a long tail),
//!   candidates left to the server's retrieval;
//! - `cold`: no `user_id`, or one the catalog does not know, with every
//!   context field the app's schema declares and sometimes `recent_items`;
//! - `candidates`: a known user with 50..200 caller-supplied item ids;
//! - `repeat`: one of the last `repeat_window` fresh requests again, identical
//!   except for a new `request_id`, as a response cache would see it.
//!
//! Every request has `request_id`, `k` and the context fields whose default
//! is the clock (`now.hour`, `now.weekday`).

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use serde_json::{json, Map, Value};

use super::{Prepared, Source};

/// The mix. Every field has a default; a scenario file or flags override them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RankMix {
    /// `k` sent with every request.
    pub k: u32,
    /// Relative weights of the fresh request kinds (need not sum to 1).
    pub known: f64,
    pub cold: f64,
    pub candidates: f64,
    /// Share of all requests that repeat a recent one (0..1).
    pub repeat: f64,
    /// How many recent fresh requests a repeat picks from.
    pub repeat_window: usize,
    /// Zipf exponent of user popularity (0 = uniform).
    pub zipf_s: f64,
    /// Share of cold-start requests that carry an unknown `user_id` (else none).
    pub cold_unknown_id: f64,
    /// Share of cold-start requests that carry `recent_items`.
    pub cold_recent_items: f64,
    /// Size range of caller-supplied candidate lists.
    pub candidates_min: usize,
    pub candidates_max: usize,
}

impl Default for RankMix {
    fn default() -> Self {
        RankMix {
            k: 10,
            known: 0.6,
            cold: 0.2,
            candidates: 0.2,
            repeat: 0.1,
            repeat_window: 32,
            zipf_s: 1.0,
            cold_unknown_id: 0.5,
            cold_recent_items: 0.5,
            candidates_min: 50,
            candidates_max: 200,
        }
    }
}

impl RankMix {
    /// Reads a TOML scenario file (keys as in [`RankMix`]; missing keys keep their defaults).
    pub fn from_file(path: &Path) -> anyhow::Result<RankMix> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing scenario file {}", path.display()))
    }

    pub fn validate(&self, n_items: usize) -> anyhow::Result<()> {
        let shares = [
            ("known", self.known),
            ("cold", self.cold),
            ("candidates", self.candidates),
            ("cold_unknown_id", self.cold_unknown_id),
            ("cold_recent_items", self.cold_recent_items),
            ("repeat", self.repeat),
            ("zipf_s", self.zipf_s),
        ];
        for (name, v) in shares {
            if !v.is_finite() || v < 0.0 {
                bail!("rank mix: {name} must be a finite number >= 0, got {v}");
            }
        }
        for (name, v) in [
            ("cold_unknown_id", self.cold_unknown_id),
            ("cold_recent_items", self.cold_recent_items),
        ] {
            if v > 1.0 {
                bail!("rank mix: {name} is a share and must be <= 1, got {v}");
            }
        }
        if self.repeat >= 1.0 {
            bail!(
                "rank mix: repeat must be below 1 (something has to be repeated), got {}",
                self.repeat
            );
        }
        if self.known + self.cold + self.candidates <= 0.0 {
            bail!("rank mix: at least one of known, cold, candidates must be > 0");
        }
        if self.k == 0 {
            bail!("rank mix: k must be >= 1");
        }
        if self.repeat_window == 0 {
            bail!("rank mix: repeat_window must be >= 1");
        }
        if self.candidates_min == 0
            || self.candidates_min > self.candidates_max
            || self.candidates_max > n_items
        {
            bail!(
                "rank mix: need 1 <= candidates_min <= candidates_max <= {n_items} (catalog items), got {}..{}",
                self.candidates_min,
                self.candidates_max
            );
        }
        Ok(())
    }
}

/// What the generator draws from: the catalog's ids, read from its
/// Parquet snapshot, and the request context its `schema.toml` declares.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub users: Vec<String>,
    /// Ids the catalog does not know: users held out of training (the real
    /// cold-start population, as the numeric ids missing from the user
    /// table), plus made-up ones if there are none.
    pub unknown_users: Vec<String>,
    pub items: Vec<String>,
    /// Most popular items first (by `retrieval.popularity`): what a
    /// cold-start user has likely just seen.
    pub popular: Vec<String>,
    /// The context fields and how to draw each.
    pub context: Vec<ContextField>,
    /// The interaction kinds `[events] kinds` declares.
    pub kinds: Vec<String>,
    /// The items' retrieval vector field and its length, when the schema
    /// declares one (`[retrieval] item_vector`).
    pub item_vector: Option<(String, usize)>,
}

/// One declared context field.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextField {
    pub name: String,
    pub draw: Draw,
    /// Fields whose default is the clock (hour, weekday) go with every
    /// request; the others (demographics) only with cold-start ones.
    pub every_request: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Draw {
    Integer(i64, i64),
    Number(f64, f64),
    Category(Vec<String>),
}

/// The `id` column (and optionally a numeric one) of a Parquet file.
fn read_column(path: &Path, numeric: Option<&str>) -> anyhow::Result<(Vec<String>, Vec<f64>)> {
    use arrow_array::cast::AsArray;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ProjectionMask;
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{}: not Parquet", path.display()))?;
    let names: Vec<&str> = std::iter::once("id").chain(numeric).collect();
    let mask = ProjectionMask::columns(builder.parquet_schema(), names);
    let mut ids = Vec::new();
    let mut values = Vec::new();
    for batch in builder.with_projection(mask).build()? {
        let batch = batch?;
        let id = batch
            .column_by_name("id")
            .with_context(|| format!("{}: no id column", path.display()))?;
        match id.as_string_opt::<i32>() {
            Some(a) => ids.extend(a.iter().map(|v| v.unwrap_or_default().to_string())),
            None => bail!("{}: the id column is not strings", path.display()),
        }
        if let Some(col) = numeric.and_then(|n| batch.column_by_name(n)) {
            let cast = |v: Option<f64>| v.unwrap_or(f64::NEG_INFINITY);
            if let Some(a) = col.as_primitive_opt::<arrow_array::types::Float32Type>() {
                values.extend(a.iter().map(|v| cast(v.map(f64::from))));
            } else if let Some(a) = col.as_primitive_opt::<arrow_array::types::Float64Type>() {
                values.extend(a.iter().map(cast));
            }
        }
    }
    Ok((ids, values))
}

impl Catalog {
    pub fn load(models_dir: &Path) -> anyhow::Result<Catalog> {
        let dir = models_dir.join("catalog");
        let schema_path = dir.join("schema.toml");
        let text = std::fs::read_to_string(&schema_path)
            .with_context(|| format!("reading {}", schema_path.display()))?;
        let schema: toml::Table = text
            .parse()
            .with_context(|| format!("parsing {}", schema_path.display()))?;
        let file = |entity: &str, default: &str| {
            dir.join(
                schema
                    .get(entity)
                    .and_then(|e| e.get("file"))
                    .and_then(toml::Value::as_str)
                    .unwrap_or(default),
            )
        };
        let popularity = schema
            .get("retrieval")
            .and_then(|r| r.get("popularity"))
            .and_then(toml::Value::as_str);
        let (items, pop) = read_column(&file("items", "items.parquet"), popularity)?;
        let users_file = file("users", "users.parquet");
        let users = if users_file.is_file() {
            read_column(&users_file, None)?.0
        } else {
            Vec::new()
        };
        if users.is_empty() || items.is_empty() {
            bail!("{}: the catalog must hold users and items", dir.display());
        }
        let mut order: Vec<usize> = (0..items.len()).collect();
        if pop.len() == items.len() {
            order.sort_by(|&a, &b| pop[b].total_cmp(&pop[a]).then(a.cmp(&b)));
        }
        let popular = order.iter().take(300).map(|&i| items[i].clone()).collect();
        let known: HashSet<&str> = users.iter().map(String::as_str).collect();
        let max_id = users
            .iter()
            .filter_map(|id| id.parse::<u32>().ok())
            .max()
            .unwrap_or(0);
        let mut unknown_users: Vec<String> = (1..=max_id)
            .map(|i| i.to_string())
            .filter(|id| !known.contains(id.as_str()))
            .collect();
        if unknown_users.is_empty() {
            unknown_users = (0..100).map(|i| format!("new-user-{i}")).collect();
        }
        let kinds = schema
            .get("events")
            .and_then(|e| e.get("kinds"))
            .and_then(toml::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let item_vector = schema
            .get("retrieval")
            .and_then(|r| r.get("item_vector"))
            .and_then(toml::Value::as_str)
            .and_then(|name| {
                let dim = schema
                    .get("items")?
                    .get("fields")?
                    .get(name)?
                    .get("dim")?
                    .as_integer()?;
                Some((name.to_string(), usize::try_from(dim).ok()?))
            });
        Ok(Catalog {
            item_vector,
            kinds,
            context: context_fields(&schema),
            users,
            unknown_users,
            items,
            popular,
        })
    }
}

/// The `[context]` fields of a schema, with what to draw for each.
fn context_fields(schema: &toml::Table) -> Vec<ContextField> {
    let vocab = |name: &str| -> Vec<String> {
        schema
            .get("vocabularies")
            .and_then(|v| v.get(name))
            .and_then(toml::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let Some(fields) = schema
        .get("context")
        .and_then(|c| c.get("fields"))
        .and_then(toml::Value::as_table)
    else {
        return Vec::new();
    };
    let num = |f: &toml::Value, key: &str, or: f64| {
        f.get(key)
            .and_then(|v| v.as_float().or(v.as_integer().map(|i| i as f64)))
            .unwrap_or(or)
    };
    fields
        .iter()
        .filter_map(|(name, f)| {
            let draw = match f.get("type")?.as_str()? {
                "integer" => Draw::Integer(num(f, "min", 0.0) as i64, num(f, "max", 100.0) as i64),
                "number" => Draw::Number(num(f, "min", 0.0), num(f, "max", 100.0)),
                "category" => {
                    Draw::Category(match f.get("values").and_then(toml::Value::as_array) {
                        Some(v) => v
                            .iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect(),
                        None => vocab(f.get("vocabulary")?.as_str()?),
                    })
                }
                _ => return None,
            };
            let every_request = f
                .get("default")
                .and_then(toml::Value::as_str)
                .is_some_and(|d| d.starts_with("now."));
            Some(ContextField {
                name: name.clone(),
                draw,
                every_request,
            })
        })
        .collect()
}

/// Samples ranks `0..n` with probability proportional to `1 / (rank + 1)^s`.
#[derive(Debug, Clone)]
pub(crate) struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub(crate) fn new(n: usize, s: f64) -> Zipf {
        let mut acc = 0.0;
        let cdf = (1..=n)
            .map(|r| {
                acc += (r as f64).powf(-s);
                acc
            })
            .collect::<Vec<_>>();
        let total = acc;
        Zipf {
            cdf: cdf.into_iter().map(|c| c / total).collect(),
        }
    }

    pub(crate) fn sample(&self, rng: &mut StdRng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

pub struct RankSource {
    mix: RankMix,
    catalog: Catalog,
    /// Users in popularity order (a seeded shuffle, so popularity is not tied to id).
    users_by_rank: Vec<usize>,
    zipf: Zipf,
    rng: StdRng,
    seed: u64,
    next_id: u64,
    /// Recent fresh bodies without `request_id`, for repeats.
    recent: VecDeque<Map<String, Value>>,
    path: Arc<str>,
}

impl RankSource {
    pub fn new(mix: RankMix, catalog: Catalog, seed: u64) -> anyhow::Result<RankSource> {
        mix.validate(catalog.items.len())?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut users_by_rank: Vec<usize> = (0..catalog.users.len()).collect();
        rand::seq::SliceRandom::shuffle(users_by_rank.as_mut_slice(), &mut rng);
        Ok(RankSource {
            zipf: Zipf::new(catalog.users.len(), mix.zipf_s),
            users_by_rank,
            recent: VecDeque::with_capacity(mix.repeat_window),
            mix,
            catalog,
            rng,
            seed,
            next_id: 0,
            path: Arc::from("/v1/rank"),
        })
    }

    fn known_user(&mut self) -> String {
        let rank = self.zipf.sample(&mut self.rng);
        self.catalog.users[self.users_by_rank[rank]].clone()
    }

    fn pick<'a>(rng: &mut StdRng, from: &'a [String]) -> &'a str {
        &from[rng.random_range(0..from.len())]
    }

    /// Context values for the declared fields: those with a clock default
    /// on every request, the others too when `cold`.
    fn context(&mut self, cold: bool) -> Map<String, Value> {
        let mut ctx = Map::new();
        for f in &self.catalog.context {
            if !(f.every_request || cold) {
                continue;
            }
            let v = match &f.draw {
                Draw::Integer(lo, hi) if lo <= hi => json!(self.rng.random_range(*lo..=*hi)),
                Draw::Number(lo, hi) if lo < hi => {
                    json!((self.rng.random_range(*lo..*hi) * 10.0).round() / 10.0)
                }
                Draw::Category(values) if !values.is_empty() => {
                    json!(Self::pick(&mut self.rng, values))
                }
                _ => continue,
            };
            ctx.insert(f.name.clone(), v);
        }
        ctx
    }

    /// A fresh request body (no `request_id`) and its kind.
    fn fresh(&mut self) -> (Map<String, Value>, &'static str) {
        let (known, cold, candidates) = (self.mix.known, self.mix.cold, self.mix.candidates);
        let x = self.rng.random::<f64>() * (known + cold + candidates);
        let mut body = Map::new();
        let cold_request = x >= known && x < known + cold;
        let ctx = self.context(cold_request);
        let kind = if x < known {
            body.insert("user_id".into(), json!(self.known_user()));
            "known"
        } else if x < known + cold {
            if self.rng.random_bool(self.mix.cold_unknown_id) {
                let id = Self::pick(&mut self.rng, &self.catalog.unknown_users);
                body.insert("user_id".into(), json!(id));
            }
            if self.rng.random_bool(self.mix.cold_recent_items) {
                let n = self
                    .rng
                    .random_range(1..=5usize)
                    .min(self.catalog.popular.len());
                let idx = rand::seq::index::sample(&mut self.rng, self.catalog.popular.len(), n);
                let recent: Vec<&str> = idx
                    .iter()
                    .map(|i| self.catalog.popular[i].as_str())
                    .collect();
                body.insert("recent_items".into(), json!(recent));
            }
            "cold"
        } else {
            body.insert("user_id".into(), json!(self.known_user()));
            let n = self
                .rng
                .random_range(self.mix.candidates_min..=self.mix.candidates_max);
            let idx = rand::seq::index::sample(&mut self.rng, self.catalog.items.len(), n);
            let cands: Vec<&str> = idx.iter().map(|i| self.catalog.items[i].as_str()).collect();
            body.insert("candidates".into(), json!(cands));
            "candidates"
        };
        body.insert("context".into(), Value::Object(ctx));
        body.insert("k".into(), json!(self.mix.k));
        (body, kind)
    }
}

impl Source for RankSource {
    fn next_request(&mut self) -> Prepared {
        let request_id = format!("load-{}-{}", self.seed, self.next_id);
        self.next_id += 1;
        let repeat = !self.recent.is_empty() && self.rng.random_bool(self.mix.repeat);
        let (mut body, kind) = if repeat {
            let i = self.rng.random_range(0..self.recent.len());
            (self.recent[i].clone(), "repeat")
        } else {
            let (body, kind) = self.fresh();
            if self.recent.len() == self.mix.repeat_window {
                self.recent.pop_front();
            }
            self.recent.push_back(body.clone());
            (body, kind)
        };
        body.insert("request_id".into(), json!(request_id));
        let bytes = serde_json::to_vec(&Value::Object(body)).expect("JSON values always serialise");
        Prepared {
            path: self.path.clone(),
            body: Bytes::from(bytes),
            kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn catalog() -> Catalog {
        Catalog::load(&crate::scenario::models_dir(None)).expect("the shipped catalog loads")
    }

    fn take(src: &mut RankSource, n: usize) -> Vec<(Value, &'static str)> {
        (0..n)
            .map(|_| {
                let p = src.next_request();
                assert_eq!(&*p.path, "/v1/rank");
                (serde_json::from_slice(&p.body).unwrap(), p.kind)
            })
            .collect()
    }

    #[test]
    fn same_seed_same_traffic_other_seed_other_traffic() {
        let cat = catalog();
        let gen = |seed| {
            let mut s = RankSource::new(RankMix::default(), cat.clone(), seed).unwrap();
            (0..500).map(|_| s.next_request()).collect::<Vec<_>>()
        };
        assert_eq!(gen(7), gen(7));
        assert_ne!(gen(7), gen(8));
    }

    #[test]
    fn shares_match_the_mix_within_tolerance() {
        let cat = catalog();
        let mix = RankMix {
            known: 3.0,
            cold: 1.0,
            candidates: 1.0,
            repeat: 0.2,
            ..RankMix::default()
        };
        let mut src = RankSource::new(mix, cat.clone(), 1).unwrap();
        let n = 20_000;
        let reqs = take(&mut src, n);
        let mut kinds: HashMap<&str, usize> = HashMap::new();
        for (_, k) in &reqs {
            *kinds.entry(k).or_default() += 1;
        }
        let share = |k: &str| kinds.get(k).copied().unwrap_or(0) as f64 / n as f64;
        // Expected: repeat 0.2; the other 0.8 split 3:1:1.
        for (kind, want) in [
            ("repeat", 0.2),
            ("known", 0.48),
            ("cold", 0.16),
            ("candidates", 0.16),
        ] {
            assert!(
                (share(kind) - want).abs() < 0.015,
                "{kind}: {} vs {want}",
                share(kind)
            );
        }

        // Cold-start details: about half carry an unknown id, half recent_items.
        let known: HashSet<&str> = cat.users.iter().map(String::as_str).collect();
        let cold: Vec<&Value> = reqs
            .iter()
            .filter(|(_, k)| *k == "cold")
            .map(|(v, _)| v)
            .collect();
        let with_id =
            cold.iter().filter(|v| v.get("user_id").is_some()).count() as f64 / cold.len() as f64;
        let with_recent = cold
            .iter()
            .filter(|v| v.get("recent_items").is_some())
            .count() as f64
            / cold.len() as f64;
        assert!((with_id - 0.5).abs() < 0.05, "{with_id}");
        assert!((with_recent - 0.5).abs() < 0.05, "{with_recent}");
        for v in cold {
            if let Some(id) = v["user_id"].as_str() {
                assert!(!known.contains(id), "cold-start id {id} is a known user");
            }
            // Every declared context field, within its bounds or vocabulary.
            let ctx = &v["context"];
            for f in &cat.context {
                let x = &ctx[f.name.as_str()];
                match &f.draw {
                    Draw::Integer(lo, hi) => {
                        assert!(
                            (*lo..=*hi).contains(&x.as_i64().unwrap()),
                            "{}: {x}",
                            f.name
                        )
                    }
                    Draw::Number(lo, hi) => {
                        assert!(
                            (*lo..=*hi).contains(&x.as_f64().unwrap()),
                            "{}: {x}",
                            f.name
                        )
                    }
                    Draw::Category(values) => {
                        assert!(
                            values.iter().any(|c| Some(c.as_str()) == x.as_str()),
                            "{}: {x}",
                            f.name
                        )
                    }
                }
            }
        }
    }

    #[test]
    fn every_request_is_well_formed() {
        let cat = catalog();
        let items: HashSet<&str> = cat.items.iter().map(String::as_str).collect();
        let users: HashSet<&str> = cat.users.iter().map(String::as_str).collect();
        let mut src = RankSource::new(RankMix::default(), cat.clone(), 3).unwrap();
        let mut ids = HashSet::new();
        for (v, kind) in take(&mut src, 3000) {
            assert_eq!(v["k"], 10);
            assert!(v["context"]["hour"].as_u64().unwrap() < 24);
            assert!(v["context"]["weekday"].as_u64().unwrap() < 7);
            assert!(
                ids.insert(v["request_id"].as_str().unwrap().to_string()),
                "request_id reused"
            );
            match kind {
                "known" => assert!(users.contains(v["user_id"].as_str().unwrap())),
                "candidates" => {
                    assert!(users.contains(v["user_id"].as_str().unwrap()));
                    let c: Vec<&str> = v["candidates"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_str().unwrap())
                        .collect();
                    assert!((50..=200).contains(&c.len()), "{}", c.len());
                    assert!(c.iter().all(|id| items.contains(id)));
                    assert_eq!(
                        c.iter().collect::<HashSet<_>>().len(),
                        c.len(),
                        "duplicate candidates"
                    );
                }
                "cold" | "repeat" => {}
                other => panic!("unexpected kind {other}"),
            }
        }
    }

    #[test]
    fn repeats_resend_a_recent_request_with_a_new_request_id() {
        let mix = RankMix {
            repeat: 0.5,
            repeat_window: 4,
            ..RankMix::default()
        };
        let mut src = RankSource::new(mix, catalog(), 11).unwrap();
        let strip = |v: &Value| {
            let mut v = v.clone();
            v.as_object_mut().unwrap().remove("request_id");
            v
        };
        let reqs = take(&mut src, 400);
        let mut fresh: Vec<Value> = Vec::new();
        let mut repeats = 0;
        for (v, kind) in &reqs {
            if *kind == "repeat" {
                let window = &fresh[fresh.len().saturating_sub(4)..];
                assert!(
                    window.contains(&strip(v)),
                    "repeat is not one of the last 4 fresh requests"
                );
                repeats += 1;
            } else {
                fresh.push(strip(v));
            }
        }
        assert!(repeats > 150, "{repeats}");
    }

    #[test]
    fn zipf_skews_towards_the_first_ranks() {
        let z = Zipf::new(678, 1.0);
        let mut rng = StdRng::seed_from_u64(5);
        let mut hits = vec![0usize; 678];
        for _ in 0..50_000 {
            hits[z.sample(&mut rng)] += 1;
        }
        // P(rank 0) = 1 / H(678) ~ 0.140; the top 10 % of users get most traffic.
        let top = hits[0] as f64 / 50_000.0;
        assert!((top - 0.140).abs() < 0.01, "{top}");
        assert!(hits[..68].iter().sum::<usize>() > hits[68..].iter().sum::<usize>());
        assert!(Zipf::new(10, 0.0)
            .cdf
            .windows(2)
            .all(|w| (w[1] - w[0] - 0.1).abs() < 1e-12));
    }

    #[test]
    fn rejects_bad_mixes() {
        let n = 1682;
        assert!(RankMix::default().validate(n).is_ok());
        let bad = [
            RankMix {
                known: 0.0,
                cold: 0.0,
                candidates: 0.0,
                ..RankMix::default()
            },
            RankMix {
                repeat: 1.0,
                ..RankMix::default()
            },
            RankMix {
                known: -1.0,
                ..RankMix::default()
            },
            RankMix {
                candidates_min: 300,
                candidates_max: 200,
                ..RankMix::default()
            },
            RankMix {
                candidates_max: 5000,
                ..RankMix::default()
            },
            RankMix {
                k: 0,
                ..RankMix::default()
            },
            RankMix {
                cold_unknown_id: 1.5,
                ..RankMix::default()
            },
        ];
        for m in bad {
            assert!(m.validate(n).is_err(), "{m:?}");
        }
    }

    #[test]
    fn the_shipped_scenario_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/rank.toml");
        let mix = RankMix::from_file(&path).unwrap();
        mix.validate(1682).unwrap();
        assert_eq!(
            mix,
            RankMix::default(),
            "scenarios/rank.toml documents the defaults"
        );
        assert!(
            toml::from_str::<RankMix>("knwon = 1.0").is_err(),
            "typos are refused"
        );
    }
}
