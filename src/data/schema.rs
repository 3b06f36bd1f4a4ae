//! `schema.toml`: what an app's items, users and request context hold.
//!
//! ```toml
//! [vocabularies]                 # named category vocabularies
//! colour = ["red", "green"]      # closed: the values, in code order
//! brand = { open = true }        # open: every value the snapshot holds
//!
//! [items]                        # items.parquet, one row per item, key column "id"
//! fields.embedding = { type = "vector", dim = 32 }
//! fields.price = { type = "number", default = 0.0 }
//! fields.brand = { type = "category", vocabulary = "brand" }
//! fields.tags = { type = "categories", vocabulary = "tag" }
//! fields.colour_lift = { type = "vector", by = "colour" }    # one value per colour
//!
//! [users]                        # users.parquet, key column "id"
//! fields.seen = { type = "items" }                           # item ids
//!
//! [context]                      # the request's "context" object
//! fields.hour = { type = "integer", min = 0, max = 23, default = "now.hour" }
//! fields.colour = { type = "category", vocabulary = "colour", unknown = "missing" }
//!
//! [events]
//! kinds = ["view", "purchase"]   # what POST /v1/events interactions may be
//! # Windowed counters that count() reads, per item and per user: one kind,
//! # optionally only values >= min_value, in buckets of `bucket`, kept `keep`.
//! counters = [{ kind = "purchase", bucket = "1d", keep = "90d" }]
//!
//! [retrieval]
//! item_vector = "embedding"      # searched by the ANN stage
//! user_vector = "embedding"      # a known user's query
//! popularity = "popularity"      # orders the cold-start list
//! seen = "seen"                  # never retrieved again for that user
//! # The cold-start list from live counters, ahead of `popularity`; an
//! # embedding retrieval (a known user's, or a query from recent items)
//! # adds its first `with_embedding` items too (default 0):
//! trending = { kind = "purchase", last = "7d", with_embedding = 50 }
//! # The item vector's last coordinate is a MIPS-to-cosine augmentation
//! # (users hold 0 there): a query built from items zeroes it.
//! item_vector_augmented = true
//! ```
//!
//! Types: `number` (f32), `integer`, `category` (a code in a vocabulary),
//! `categories` (a list of them), `vector` (fixed-length f32: `dim`, or
//! `by = "<vocabulary>"` for one value per category), `timestamp` (epoch
//! milliseconds), and for users `items` (a list of item ids). Everything is
//! checked here, once, with errors that name the key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Deserialize;

/// A named set of category values; a value's code is its position.
#[derive(Debug)]
pub struct Vocabulary {
    pub name: String,
    /// Open vocabularies are filled from the snapshot when it loads.
    pub open: bool,
    values: std::sync::RwLock<VocabValues>,
}

#[derive(Debug, Default)]
struct VocabValues {
    list: Vec<String>,
    index: HashMap<String, u32>,
}

impl Vocabulary {
    fn new(name: &str, open: bool, values: Vec<String>) -> Result<Vocabulary, String> {
        let mut v = VocabValues::default();
        for value in values {
            if v.index.insert(value.clone(), v.list.len() as u32).is_some() {
                return Err(format!("\"{value}\" appears twice"));
            }
            v.list.push(value);
        }
        Ok(Vocabulary {
            name: name.to_string(),
            open,
            values: std::sync::RwLock::new(v),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, VocabValues> {
        self.values.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The code of `value`, if the vocabulary has it.
    pub fn code(&self, value: &str) -> Option<u32> {
        self.read().index.get(value).copied()
    }

    /// The code of `value`, adding it to an open vocabulary (snapshot
    /// loading only; closed vocabularies never grow).
    pub fn code_or_add(&self, value: &str) -> Option<u32> {
        if let Some(c) = self.code(value) {
            return Some(c);
        }
        if !self.open {
            return None;
        }
        let mut v = self.values.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&c) = v.index.get(value) {
            return Some(c);
        }
        let code = v.list.len() as u32;
        v.index.insert(value.to_string(), code);
        v.list.push(value.to_string());
        Some(code)
    }

    pub fn len(&self) -> usize {
        self.read().list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn value(&self, code: u32) -> Option<String> {
        self.read().list.get(code as usize).cloned()
    }

    pub fn values(&self) -> Vec<String> {
        self.read().list.clone()
    }
}

/// What a field holds.
#[derive(Debug, Clone)]
pub enum FieldType {
    Number,
    Integer,
    Category(Arc<Vocabulary>),
    Categories(Arc<Vocabulary>),
    /// `dim` values; with `by`, one per category of that vocabulary.
    Vector {
        dim: usize,
        by: Option<Arc<Vocabulary>>,
    },
    Timestamp,
    /// Users only: a list of item ids.
    Items,
}

impl FieldType {
    pub fn name(&self) -> &'static str {
        match self {
            FieldType::Number => "number",
            FieldType::Integer => "integer",
            FieldType::Category(_) => "category",
            FieldType::Categories(_) => "categories",
            FieldType::Vector { .. } => "vector",
            FieldType::Timestamp => "timestamp",
            FieldType::Items => "items",
        }
    }
}

/// What a category value outside its vocabulary becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Unknown {
    /// Refused: a load error naming the row, or a 400 naming `context.<field>`.
    Error,
    /// Treated as absent.
    Missing,
    /// Mapped to this code (a declared default bucket such as "other").
    Bucket(u32),
}

/// A default computed when the request is served.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Default {
    Value(f64),
    /// The hour (0–23, UTC) or weekday (0–6, Monday = 0) of the request time.
    NowHour,
    NowWeekday,
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub ty: FieldType,
    /// Used for a missing value (a null in the snapshot, an absent context key).
    pub default: Option<Default>,
    pub unknown: Unknown,
    /// Context: bounds for numbers, and whether the key must be present.
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub required: bool,
}

/// The fields of items or users, in declaration order.
#[derive(Debug, Clone, Default)]
pub struct Entity {
    /// The snapshot file, relative to the catalog folder.
    pub file: String,
    pub fields: Vec<Field>,
}

impl Entity {
    pub fn field(&self, name: &str) -> Option<(usize, &Field)> {
        self.fields.iter().enumerate().find(|(_, f)| f.name == name)
    }
}

impl Field {
    /// The code of category value `s` under this field's `unknown` rule:
    /// `Ok(Some(code))`, `Ok(None)` when it counts as missing, or an error
    /// naming the value and the vocabulary. With `grow`, an open
    /// vocabulary takes in a new value (snapshot loading only).
    pub fn code_of(&self, s: &str, grow: bool) -> Result<Option<u32>, String> {
        let (FieldType::Category(vocab) | FieldType::Categories(vocab)) = &self.ty else {
            return Err(format!("{} is not a category field", self.name));
        };
        let known = if grow {
            vocab.code_or_add(s)
        } else {
            vocab.code(s)
        };
        match (known, &self.unknown) {
            (Some(c), _) => Ok(Some(c)),
            (None, Unknown::Bucket(c)) => Ok(Some(*c)),
            (None, Unknown::Missing) => Ok(None),
            (None, Unknown::Error) => {
                Err(format!("\"{s}\" is not in vocabulary \"{}\"", vocab.name))
            }
        }
    }
}

/// Which fields the retrieval stage uses.
#[derive(Debug, Clone, Default)]
pub struct Retrieval {
    pub item_vector: Option<String>,
    pub user_vector: Option<String>,
    pub popularity: Option<String>,
    pub seen: Option<String>,
    /// Items most counted by a counter over a window: the cold-start list
    /// from live events, ahead of the static popularity order.
    pub trending: Option<Window>,
    /// How many of the trending items an embedding retrieval (a known
    /// user's, or a query from recent items) adds to what it found
    /// (`trending = { …, with_embedding = N }`; 0: none).
    pub trending_with_embedding: usize,
    /// The item vector's last coordinate is an augmentation that turns
    /// inner-product search into cosine search (large for items with a
    /// small raw vector, 0 in users' vectors): a query built as the mean of
    /// item vectors sets it to 0, or that one coordinate would dominate
    /// the query and retrieve obscure items.
    pub item_vector_augmented: bool,
}

/// A windowed counter `[events] counters` declares: interactions of one
/// kind (and with a value of at least `min_value`, when given), counted per
/// item and per user in time buckets of `bucket_ms`, kept for `keep`
/// buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Counter {
    pub kind: String,
    pub min_value: Option<f64>,
    pub bucket_ms: i64,
    pub keep: u32,
}

impl Counter {
    /// Whether an interaction counts.
    pub fn counts(&self, kind: &str, value: Option<f64>) -> bool {
        kind == self.kind
            && match self.min_value {
                None => true,
                Some(min) => value.is_some_and(|v| v >= min),
            }
    }

    /// The bucket holding epoch millisecond `t`.
    pub fn bucket(&self, t: i64) -> i64 {
        t.div_euclid(self.bucket_ms)
    }
}

/// A counter read over its last `buckets` buckets (the one holding "now"
/// included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub counter: usize,
    pub buckets: u32,
}

/// `"90s"`, `"15m"`, `"12h"`, `"30d"`, `"2w"` as milliseconds.
pub fn duration_ms(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let unit_ms: i64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => 0,
    };
    match n.parse::<i64>() {
        Ok(n) if n > 0 && unit_ms > 0 && n <= 100_000 => Ok(n * unit_ms),
        _ => Err(format!(
            "\"{text}\" is not a duration (a positive whole number and s, m, h, d or w: \"30d\")"
        )),
    }
}

#[derive(Debug)]
pub struct Schema {
    pub vocabularies: BTreeMap<String, Arc<Vocabulary>>,
    pub items: Entity,
    pub users: Entity,
    pub context: Vec<Field>,
    pub retrieval: Retrieval,
    /// Interaction kinds `POST /v1/events` accepts.
    pub event_kinds: Vec<String>,
    /// The kinds that are outcomes of a ranking (`[events] outcomes`): an
    /// interaction of one may name the answer it came from, and is then
    /// attributed to it (API.md §3).
    pub outcome_kinds: Vec<String>,
    /// Windowed counters live state keeps (`count()` reads them).
    pub counters: Vec<Counter>,
}

// ---- the file's shape ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    #[serde(default)]
    vocabularies: BTreeMap<String, VocabFile>,
    items: EntityFile,
    #[serde(default)]
    users: Option<EntityFile>,
    #[serde(default)]
    context: Option<ContextFile>,
    #[serde(default)]
    retrieval: RetrievalFile,
    #[serde(default)]
    events: EventsFile,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EventsFile {
    #[serde(default)]
    kinds: Vec<String>,
    #[serde(default)]
    outcomes: Vec<String>,
    #[serde(default)]
    counters: Vec<CounterFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CounterFile {
    kind: String,
    min_value: Option<f64>,
    #[serde(default = "default_bucket")]
    bucket: String,
    #[serde(default = "default_keep")]
    keep: String,
}

fn default_bucket() -> String {
    "1h".into()
}

fn default_keep() -> String {
    "30d".into()
}

/// `trending = { kind = "…", min_value = …, last = "7d" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowFile {
    kind: String,
    min_value: Option<f64>,
    last: Option<String>,
    #[serde(default)]
    with_embedding: usize,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum VocabFile {
    Values(Vec<String>),
    Open {
        open: bool,
        #[serde(default)]
        values: Vec<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntityFile {
    file: Option<String>,
    #[serde(default)]
    fields: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextFile {
    #[serde(default)]
    fields: toml::Table,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RetrievalFile {
    item_vector: Option<String>,
    user_vector: Option<String>,
    popularity: Option<String>,
    seen: Option<String>,
    trending: Option<WindowFile>,
    #[serde(default)]
    item_vector_augmented: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldFile {
    #[serde(rename = "type")]
    ty: String,
    vocabulary: Option<String>,
    values: Option<Vec<String>>,
    dim: Option<usize>,
    by: Option<String>,
    default: Option<toml::Value>,
    unknown: Option<String>,
    min: Option<f64>,
    max: Option<f64>,
    #[serde(default)]
    required: bool,
}

/// Names of fields and vocabularies: what an expression can spell.
fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Schema {
    /// Parses `schema.toml`'s text; errors name the key (`items.fields.price.type: …`).
    pub fn parse(text: &str) -> Result<Schema, String> {
        let file: SchemaFile = {
            let de = toml::Deserializer::parse(text).map_err(|e| e.message().to_string())?;
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                format!("{path}: {}", e.into_inner().message())
            })?
        };
        let mut vocabularies = BTreeMap::new();
        for (name, v) in file.vocabularies {
            if !valid_name(&name) {
                return Err(format!(
                    "vocabularies.{name}: names use letters, digits and '_'"
                ));
            }
            let (open, values) = match v {
                VocabFile::Values(values) => (false, values),
                VocabFile::Open { open, values } => (open, values),
            };
            if !open && values.is_empty() {
                return Err(format!(
                    "vocabularies.{name}: a closed vocabulary needs its values"
                ));
            }
            let vocab = Vocabulary::new(&name, open, values)
                .map_err(|e| format!("vocabularies.{name}: {e}"))?;
            vocabularies.insert(name, Arc::new(vocab));
        }
        let mut schema = Schema {
            items: Entity {
                file: file.items.file.unwrap_or_else(|| "items.parquet".into()),
                fields: Vec::new(),
            },
            users: Entity {
                file: file
                    .users
                    .as_ref()
                    .and_then(|u| u.file.clone())
                    .unwrap_or_else(|| "users.parquet".into()),
                fields: Vec::new(),
            },
            vocabularies,
            context: Vec::new(),
            retrieval: Retrieval::default(),
            event_kinds: Vec::new(),
            outcome_kinds: Vec::new(),
            counters: Vec::new(),
        };
        for (i, k) in file.events.kinds.iter().enumerate() {
            if !valid_name(k) || file.events.kinds[..i].contains(k) {
                return Err(format!(
                    "events.kinds[{i}]: \"{k}\" must be a name of letters, digits and '_', listed once"
                ));
            }
        }
        schema.event_kinds = file.events.kinds.clone();
        for (i, k) in file.events.outcomes.iter().enumerate() {
            if !schema.event_kinds.contains(k) || file.events.outcomes[..i].contains(k) {
                return Err(format!(
                    "events.outcomes[{i}]: \"{k}\" must be one of events.kinds {:?}, listed once",
                    schema.event_kinds
                ));
            }
        }
        schema.outcome_kinds = file.events.outcomes.clone();
        for (i, c) in file.events.counters.iter().enumerate() {
            let key = format!("events.counters[{i}]");
            if !schema.event_kinds.contains(&c.kind) {
                return Err(format!(
                    "{key}.kind: \"{}\" is not one of events.kinds {:?}",
                    c.kind, schema.event_kinds
                ));
            }
            if c.min_value.is_some_and(|v| !v.is_finite()) {
                return Err(format!("{key}.min_value: must be a finite number"));
            }
            let bucket_ms = duration_ms(&c.bucket).map_err(|e| format!("{key}.bucket: {e}"))?;
            let keep_ms = duration_ms(&c.keep).map_err(|e| format!("{key}.keep: {e}"))?;
            if keep_ms % bucket_ms != 0 || keep_ms / bucket_ms > 100_000 {
                return Err(format!(
                    "{key}.keep: {} must be a whole number of buckets of {} (at most 100000)",
                    c.keep, c.bucket
                ));
            }
            let counter = Counter {
                kind: c.kind.clone(),
                min_value: c.min_value,
                bucket_ms,
                keep: (keep_ms / bucket_ms) as u32,
            };
            if schema
                .counters
                .iter()
                .any(|d| d.kind == counter.kind && d.min_value == counter.min_value)
            {
                return Err(format!(
                    "{key}: a counter of kind \"{}\" with this min_value is declared twice",
                    c.kind
                ));
            }
            schema.counters.push(counter);
        }
        schema.items.fields = schema.fields("items", &file.items.fields, false)?;
        if let Some(users) = &file.users {
            schema.users.fields = schema.fields("users", &users.fields, true)?;
        }
        if let Some(ctx) = &file.context {
            schema.context = schema.fields("context", &ctx.fields, false)?;
            for f in &schema.context {
                if !matches!(
                    f.ty,
                    FieldType::Number | FieldType::Integer | FieldType::Category(_)
                ) {
                    return Err(format!(
                        "context.fields.{}.type: the context holds numbers, integers and categories, not {}",
                        f.name,
                        f.ty.name()
                    ));
                }
            }
        }
        schema.retrieval = schema.retrieval_roles(file.retrieval)?;
        Ok(schema)
    }

    fn fields(&self, at: &str, table: &toml::Table, users: bool) -> Result<Vec<Field>, String> {
        let mut out = Vec::new();
        for (name, value) in table {
            let key = format!("{at}.fields.{name}");
            if !valid_name(name) || name == "id" {
                return Err(format!(
                    "{key}: field names use letters, digits and '_' (and \"id\" is the key column)"
                ));
            }
            let f: FieldFile = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
                let path = e.path().to_string();
                let path = if path == "." {
                    String::new()
                } else {
                    format!(".{path}")
                };
                format!("{key}{path}: {}", e.into_inner().message())
            })?;
            out.push(self.field(&key, name, f, users)?);
        }
        Ok(out)
    }

    fn vocabulary(&self, key: &str, f: &FieldFile) -> Result<Arc<Vocabulary>, String> {
        match (&f.vocabulary, &f.values) {
            (Some(name), None) => self.vocabularies.get(name).cloned().ok_or_else(|| {
                format!("{key}.vocabulary: no vocabulary \"{name}\" in [vocabularies]")
            }),
            (None, Some(values)) => Vocabulary::new(key, false, values.clone())
                .map(Arc::new)
                .map_err(|e| format!("{key}.values: {e}")),
            (Some(_), Some(_)) => Err(format!("{key}: give vocabulary or values, not both")),
            (None, None) => Err(format!(
                "{key}: a category needs a vocabulary (or its values)"
            )),
        }
    }

    fn field(&self, key: &str, name: &str, f: FieldFile, users: bool) -> Result<Field, String> {
        let ty = match f.ty.as_str() {
            "number" => FieldType::Number,
            "integer" => FieldType::Integer,
            "timestamp" => FieldType::Timestamp,
            "category" => FieldType::Category(self.vocabulary(key, &f)?),
            "categories" => FieldType::Categories(self.vocabulary(key, &f)?),
            "items" if users => FieldType::Items,
            "vector" => match (f.dim, &f.by) {
                (Some(dim), None) if dim > 0 => FieldType::Vector { dim, by: None },
                (None, Some(by)) => {
                    let vocab = self.vocabularies.get(by).cloned().ok_or_else(|| {
                        format!("{key}.by: no vocabulary \"{by}\" in [vocabularies]")
                    })?;
                    if vocab.open {
                        return Err(format!(
                            "{key}.by: \"{by}\" is open; a vector by category needs a closed vocabulary"
                        ));
                    }
                    FieldType::Vector {
                        dim: vocab.len(),
                        by: Some(vocab),
                    }
                }
                _ => {
                    return Err(format!(
                        "{key}: a vector needs dim (at least 1) or by = \"<vocabulary>\""
                    ))
                }
            },
            other => {
                return Err(format!(
                    "{key}.type: \"{other}\" is not a type (number, integer, category, categories, vector, timestamp{})",
                    if users { ", items" } else { "" }
                ))
            }
        };
        let default = match &f.default {
            None => None,
            Some(toml::Value::Float(x)) => Some(Default::Value(*x)),
            Some(toml::Value::Integer(x)) => Some(Default::Value(*x as f64)),
            Some(toml::Value::String(s)) if s == "now.hour" => Some(Default::NowHour),
            Some(toml::Value::String(s)) if s == "now.weekday" => Some(Default::NowWeekday),
            Some(toml::Value::String(s)) => match &ty {
                FieldType::Category(v) => Some(Default::Value(v.code(s).ok_or_else(|| {
                    format!("{key}.default: \"{s}\" is not in vocabulary \"{}\"", v.name)
                })? as f64)),
                _ => {
                    return Err(format!(
                        "{key}.default: a number, \"now.hour\" or \"now.weekday\""
                    ))
                }
            },
            Some(other) => {
                return Err(format!(
                    "{key}.default: expected a number or a string, got {}",
                    other.type_str()
                ))
            }
        };
        if default.is_some()
            && !matches!(
                ty,
                FieldType::Number | FieldType::Integer | FieldType::Category(_)
            )
        {
            return Err(format!(
                "{key}.default: only numbers, integers and categories take a default"
            ));
        }
        if let (Some(Default::NowHour | Default::NowWeekday), false) =
            (default, matches!(ty, FieldType::Integer))
        {
            return Err(format!(
                "{key}.default: a clock default needs an integer field"
            ));
        }
        let unknown = match (f.unknown.as_deref(), &ty) {
            (None | Some("error"), _) => Unknown::Error,
            (Some("missing"), FieldType::Category(_) | FieldType::Categories(_)) => {
                Unknown::Missing
            }
            (Some(bucket), FieldType::Category(v) | FieldType::Categories(v)) => {
                Unknown::Bucket(v.code(bucket).ok_or_else(|| {
                    format!(
                        "{key}.unknown: \"{bucket}\" is not in vocabulary \"{}\" (or use \"missing\" / \"error\")",
                        v.name
                    )
                })?)
            }
            (Some(_), _) => return Err(format!("{key}.unknown: only categories take unknown")),
        };
        if (f.min.is_some() || f.max.is_some())
            && !matches!(ty, FieldType::Number | FieldType::Integer)
        {
            return Err(format!("{key}: min and max are for numbers"));
        }
        if let (Some(lo), Some(hi)) = (f.min, f.max) {
            if lo > hi {
                return Err(format!("{key}: min {lo} is above max {hi}"));
            }
        }
        Ok(Field {
            name: name.to_string(),
            ty,
            default,
            unknown,
            min: f.min,
            max: f.max,
            required: f.required,
        })
    }

    /// The counter of `kind` with exactly `min_value`, read over `last`
    /// (default: all it keeps); errors say what to declare.
    pub fn window(
        &self,
        kind: &str,
        min_value: Option<f64>,
        last: Option<&str>,
    ) -> Result<Window, String> {
        let Some((counter, c)) = self
            .counters
            .iter()
            .enumerate()
            .find(|(_, c)| c.kind == kind && c.min_value == min_value)
        else {
            return Err(format!(
                "no counter of kind '{kind}'{} is declared (add it to schema.toml's [events] counters)",
                min_value.map_or(String::new(), |v| format!(" with min_value {v}"))
            ));
        };
        let buckets = match last {
            None => c.keep,
            Some(text) => {
                let ms = duration_ms(text)?;
                if ms % c.bucket_ms != 0 || ms / c.bucket_ms > c.keep as i64 {
                    return Err(format!(
                        "last = '{text}' must be a whole number of the counter's buckets ({} ms) and at most what it keeps ({} buckets)",
                        c.bucket_ms, c.keep
                    ));
                }
                (ms / c.bucket_ms) as u32
            }
        };
        Ok(Window { counter, buckets })
    }

    fn retrieval_roles(&self, r: RetrievalFile) -> Result<Retrieval, String> {
        let vector = |key: &str, entity: &Entity, name: &Option<String>| -> Result<(), String> {
            let Some(name) = name else { return Ok(()) };
            match entity.field(name) {
                Some((
                    _,
                    Field {
                        ty: FieldType::Vector { by: None, .. },
                        ..
                    },
                )) => Ok(()),
                _ => Err(format!(
                    "retrieval.{key}: \"{name}\" is not a vector field (with dim) of {}",
                    entity.file
                )),
            }
        };
        vector("item_vector", &self.items, &r.item_vector)?;
        vector("user_vector", &self.users, &r.user_vector)?;
        if let (Some(i), Some(u)) = (&r.item_vector, &r.user_vector) {
            let dim = |e: &Entity, n: &str| match e.field(n) {
                Some((
                    _,
                    Field {
                        ty: FieldType::Vector { dim, .. },
                        ..
                    },
                )) => *dim,
                _ => 0,
            };
            if dim(&self.items, i) != dim(&self.users, u) {
                return Err(format!(
                    "retrieval.user_vector: \"{u}\" has {} values, item_vector \"{i}\" {}",
                    dim(&self.users, u),
                    dim(&self.items, i)
                ));
            }
        }
        if let Some(p) = &r.popularity {
            if !matches!(
                self.items.field(p),
                Some((
                    _,
                    Field {
                        ty: FieldType::Number | FieldType::Integer,
                        ..
                    }
                ))
            ) {
                return Err(format!(
                    "retrieval.popularity: \"{p}\" is not a number field of the items"
                ));
            }
        }
        if let Some(s) = &r.seen {
            if !matches!(
                self.users.field(s),
                Some((
                    _,
                    Field {
                        ty: FieldType::Items,
                        ..
                    }
                ))
            ) {
                return Err(format!(
                    "retrieval.seen: \"{s}\" is not an items field of the users"
                ));
            }
        }
        let trending = match &r.trending {
            None => None,
            Some(t) => Some(
                self.window(&t.kind, t.min_value, t.last.as_deref())
                    .map_err(|e| format!("retrieval.trending: {e}"))?,
            ),
        };
        Ok(Retrieval {
            item_vector: r.item_vector,
            user_vector: r.user_vector,
            popularity: r.popularity,
            seen: r.seen,
            trending,
            trending_with_embedding: r.trending.as_ref().map_or(0, |t| t.with_embedding),
            item_vector_augmented: r.item_vector_augmented,
        })
    }

    /// The context field named `name`, with its position.
    pub fn context_field(&self, name: &str) -> Option<(usize, &Field)> {
        self.context
            .iter()
            .enumerate()
            .find(|(_, f)| f.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &str = r#"
        [vocabularies]
        colour = ["red", "green", "other"]
        brand = { open = true }

        [items]
        fields.embedding = { type = "vector", dim = 4 }
        fields.price = { type = "number", default = 0.0 }
        fields.brand = { type = "category", vocabulary = "brand" }
        fields.colour = { type = "category", vocabulary = "colour", unknown = "other" }
        fields.colour_lift = { type = "vector", by = "colour" }
        fields.tags = { type = "categories", values = ["new", "sale"] }

        [users]
        fields.embedding = { type = "vector", dim = 4 }
        fields.seen = { type = "items" }

        [context]
        fields.hour = { type = "integer", min = 0, max = 23, default = "now.hour" }
        fields.colour = { type = "category", vocabulary = "colour", unknown = "missing" }

        [events]
        kinds = ["view", "purchase"]
        outcomes = ["purchase"]
        counters = [
          { kind = "purchase", bucket = "1d", keep = "60d" },
          { kind = "view", min_value = 30, bucket = "1h" },
        ]

        [retrieval]
        item_vector = "embedding"
        user_vector = "embedding"
        popularity = "price"
        seen = "seen"
        trending = { kind = "purchase", last = "7d", with_embedding = 25 }
    "#;

    #[test]
    fn a_schema_parses_with_every_type() {
        let s = Schema::parse(SHOP).unwrap();
        assert_eq!(s.items.fields.len(), 6);
        let (_, lift) = s.items.field("colour_lift").unwrap();
        assert!(matches!(
            lift.ty,
            FieldType::Vector {
                dim: 3,
                by: Some(_)
            }
        ));
        let (_, colour) = s.items.field("colour").unwrap();
        assert_eq!(colour.unknown, Unknown::Bucket(2));
        let brand = &s.vocabularies["brand"];
        assert_eq!(brand.code_or_add("acme"), Some(0));
        assert_eq!(brand.code_or_add("acme"), Some(0));
        assert_eq!(s.vocabularies["colour"].code_or_add("blue"), None);
        assert_eq!(s.context[0].default, Some(Default::NowHour));
        assert_eq!(s.retrieval.seen.as_deref(), Some("seen"));
        assert_eq!(
            s.counters[1],
            Counter {
                kind: "view".into(),
                min_value: Some(30.0),
                bucket_ms: 3_600_000,
                keep: 720
            }
        );
        assert_eq!(
            s.retrieval.trending,
            Some(Window {
                counter: 0,
                buckets: 7
            })
        );
        assert_eq!(s.retrieval.trending_with_embedding, 25);
        assert!(!s.retrieval.item_vector_augmented);
        assert_eq!(s.window("view", Some(30.0), Some("2h")).unwrap().buckets, 2);
        assert!(s.counters[1].counts("view", Some(31.0)));
        assert!(!s.counters[1].counts("view", None));
        assert_eq!(s.counters[0].bucket(-1), -1);
        for (bad, want) in [
            (
                ("view", None, None),
                "no counter of kind 'view' is declared",
            ),
            (
                ("view", Some(30.0), Some("90m")),
                "whole number of the counter's buckets",
            ),
            (
                ("purchase", None, Some("61d")),
                "at most what it keeps (60 buckets)",
            ),
            (("purchase", None, Some("7 days")), "is not a duration"),
        ] {
            let e = s.window(bad.0, bad.1, bad.2).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        for (change, want) in [
            (
                ("dim = 4 }", "dim = 0 }"),
                "items.fields.embedding: a vector needs dim",
            ),
            (
                ("\"number\", default = 0.0", "\"decimal\""),
                "items.fields.price.type: \"decimal\" is not a type",
            ),
            (
                ("vocabulary = \"brand\"", "vocabulary = \"brands\""),
                "items.fields.brand.vocabulary: no vocabulary \"brands\"",
            ),
            (
                ("unknown = \"other\"", "unknown = \"purple\""),
                "items.fields.colour.unknown: \"purple\" is not in vocabulary \"colour\"",
            ),
            (
                ("popularity = \"price\"", "popularity = \"brand\""),
                "retrieval.popularity: \"brand\" is not a number field",
            ),
            (
                ("min = 0, max = 23", "min = 30, max = 23"),
                "context.fields.hour: min 30 is above max 23",
            ),
            (
                ("fields.price", "fields.id"),
                "items.fields.id: field names",
            ),
            (
                ("dim = 4 }", "dim = 4, colour = 1 }"),
                "items.fields.embedding",
            ),
            (
                ("kind = \"purchase\", bucket", "kind = \"buy\", bucket"),
                "events.counters[0].kind: \"buy\" is not one of events.kinds",
            ),
            (
                ("outcomes = [\"purchase\"]", "outcomes = [\"buy\"]"),
                "events.outcomes[0]: \"buy\" must be one of events.kinds",
            ),
            (
                ("keep = \"60d\"", "keep = \"36h\""),
                "events.counters[0].keep: 36h must be a whole number of buckets of 1d",
            ),
            (
                ("bucket = \"1h\"", "bucket = \"1x\""),
                "events.counters[1].bucket: \"1x\" is not a duration",
            ),
            (
                ("last = \"7d\"", "last = \"7h\""),
                "retrieval.trending: last = '7h' must be a whole number",
            ),
        ] {
            let text = SHOP.replacen(change.0, change.1, 1);
            assert_ne!(text, SHOP, "{change:?} changed nothing");
            let e = Schema::parse(&text).unwrap_err();
            assert!(e.starts_with(want), "{e} does not start with {want}");
        }
    }
}
