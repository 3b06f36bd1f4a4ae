//! Item and user tables, struct-of-arrays: one contiguous `Vec<f32>` per
//! attribute, row `i` is item (user) `ids[i]`. Layout and meaning of every
//! tensor: `models/FEATURES.md`.

use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::sync::Arc;

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use super::CatalogError;

struct TensorFile {
    name: &'static str,
    bytes: Vec<u8>,
}

impl TensorFile {
    fn open(dir: &Path, name: &'static str) -> Result<TensorFile, CatalogError> {
        let bytes = std::fs::read(dir.join(name)).map_err(|e| CatalogError::load(name, e))?;
        SafeTensors::deserialize(&bytes).map_err(|e| CatalogError::load(name, e))?;
        Ok(TensorFile { name, bytes })
    }

    fn view(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("validated at open")
    }

    /// Tensor `key` as f32 with `rows` rows; returns the data and the
    /// width (1 for a vector).
    fn f32s(&self, key: &str, rows: usize) -> Result<(Vec<f32>, usize), CatalogError> {
        let st = self.view();
        let t = st
            .tensor(key)
            .map_err(|_| CatalogError::load(self.name, format!("no tensor \"{key}\"")))?;
        if t.dtype() != Dtype::F32 {
            return Err(CatalogError::load(
                self.name,
                format!("tensor \"{key}\" is {:?}, expected F32", t.dtype()),
            ));
        }
        let shape = t.shape();
        let width = match shape {
            [n] if *n == rows => 1,
            [n, w] if *n == rows => *w,
            _ => {
                return Err(CatalogError::load(
                    self.name,
                    format!(
                        "tensor \"{key}\" has shape {shape:?}, expected [{rows}] or [{rows}, _]"
                    ),
                ))
            }
        };
        let data = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((data, width))
    }

    fn vector(&self, key: &str, rows: usize) -> Result<Vec<f32>, CatalogError> {
        match self.f32s(key, rows)? {
            (v, 1) => Ok(v),
            (_, w) => Err(CatalogError::load(
                self.name,
                format!("tensor \"{key}\" has {w} columns, expected a vector"),
            )),
        }
    }

    fn i32s(&self, key: &str) -> Result<Vec<i32>, CatalogError> {
        let st = self.view();
        let t = st
            .tensor(key)
            .map_err(|_| CatalogError::load(self.name, format!("no tensor \"{key}\"")))?;
        if t.dtype() != Dtype::I32 || t.shape().len() != 1 {
            return Err(CatalogError::load(
                self.name,
                format!("tensor \"{key}\" must be a 1-D I32 tensor"),
            ));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Result<T, CatalogError> {
    let text = std::fs::read_to_string(dir.join(name)).map_err(|e| CatalogError::load(name, e))?;
    serde_json::from_str(&text).map_err(|e| CatalogError::load(name, e))
}

/// Ids in row order and the reverse lookup, packed: every id in one
/// string, row offsets into it, and an open-addressed hash table of rows
/// (linear probing, at most half full). At a million items this is ~19 MB
/// where a `Vec<String>` plus a `HashMap<String, u32>` took ~120 MB. The
/// table replaced a binary search over the rows sorted by id: at 1M ids
/// that took ~20 string comparisons, each a cache miss or three, and
/// resolving caller-supplied candidates was ~10 % of the server's CPU.
pub struct Ids {
    text: String,
    /// Row `r` is `text[ends[r - 1]..ends[r]]` (from 0 for row 0).
    ends: Vec<u32>,
    /// Rows by the hash of their id; [`FREE`] marks an empty slot. The
    /// length is a power of two, at least twice the number of ids.
    slots: Vec<u32>,
    /// Keyed per process (SipHash), so request-supplied ids cannot be
    /// chosen to collide.
    hasher: RandomState,
}

/// An empty slot in [`Ids::slots`] (never a row: rows are below `u32::MAX`).
const FREE: u32 = u32::MAX;

impl Ids {
    pub fn new(list: Vec<String>, file: &str) -> Result<Ids, CatalogError> {
        let total: usize = list.iter().map(String::len).sum();
        if total > u32::MAX as usize || list.len() >= FREE as usize {
            return Err(CatalogError::load(file, "too many ids"));
        }
        let mut text = String::with_capacity(total);
        let mut ends = Vec::with_capacity(list.len());
        for id in &list {
            text.push_str(id);
            ends.push(text.len() as u32);
        }
        drop(list);
        let mut ids = Ids {
            slots: vec![FREE; (ends.len() * 2).next_power_of_two()],
            text,
            ends,
            hasher: RandomState::new(),
        };
        for row in 0..ids.len() as u32 {
            let at = ids.probe(ids.get(row));
            if ids.slots[at] != FREE {
                return Err(CatalogError::load(
                    file,
                    format!("id \"{}\" appears twice", ids.get(row)),
                ));
            }
            ids.slots[at] = row;
        }
        Ok(ids)
    }

    /// The slot holding `id`, or the free slot where it would go.
    fn probe(&self, id: &str) -> usize {
        let mask = self.slots.len() - 1;
        let mut at = self.hasher.hash_one(id) as usize & mask;
        loop {
            let row = self.slots[at];
            if row == FREE || self.get(row) == id {
                return at;
            }
            at = (at + 1) & mask;
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The id of row `row` (which must exist).
    pub fn get(&self, row: u32) -> &str {
        let r = row as usize;
        let start = if r == 0 { 0 } else { self.ends[r - 1] as usize };
        &self.text[start..self.ends[r] as usize]
    }

    pub fn row(&self, id: &str) -> Option<u32> {
        let row = self.slots[self.probe(id)];
        (row != FREE).then_some(row)
    }

    /// Every id, in row order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len() as u32).map(|r| self.get(r))
    }
}

/// Row `row` of a row-major matrix `width` wide.
fn row_of(data: &[f32], width: usize, row: u32) -> &[f32] {
    let r = row as usize * width;
    &data[r..r + width]
}

#[derive(Deserialize)]
struct ItemsJson {
    ids: Vec<String>,
    #[serde(default)]
    popular: Vec<String>,
    #[serde(default)]
    genres: Vec<String>,
}

#[derive(Deserialize)]
struct UsersJson {
    ids: Vec<String>,
    occupations: Vec<String>,
}

/// An item's scalar statistics, in their column order in [`Items`]'s
/// row table (and the tensor names they are read from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemStat {
    Year,
    Popularity,
    RecentPopularity,
    LogNRatings,
    MeanRating,
    PosRate,
    MeanRaterAge,
    MaleShare,
}

impl ItemStat {
    pub const ALL: [ItemStat; 8] = [
        ItemStat::Year,
        ItemStat::Popularity,
        ItemStat::RecentPopularity,
        ItemStat::LogNRatings,
        ItemStat::MeanRating,
        ItemStat::PosRate,
        ItemStat::MeanRaterAge,
        ItemStat::MaleShare,
    ];

    /// The tensor's name in `items.safetensors`.
    pub fn tensor(self) -> &'static str {
        match self {
            ItemStat::Year => "year",
            ItemStat::Popularity => "popularity",
            ItemStat::RecentPopularity => "recent_popularity",
            ItemStat::LogNRatings => "log_n_ratings",
            ItemStat::MeanRating => "mean_rating",
            ItemStat::PosRate => "pos_rate",
            ItemStat::MeanRaterAge => "mean_rater_age",
            ItemStat::MaleShare => "male_share",
        }
    }
}

/// The item catalog. Everything a feature reads about an item except its
/// embedding sits in one row-major table, one row per item: the
/// [`ItemStat`]s, then the genre columns, then the occupation lifts. On a
/// 1M-item catalog each row is a cache miss, so one row read in three or
/// four cache lines replaces one miss per column (ten separate arrays
/// made the re-ranker's features touch ~16 lines per row).
pub struct Items {
    pub ids: Ids,
    pub dim: usize,
    /// Unit-norm retrieval embeddings, `[len, dim]` (shared with the
    /// retrieval index when that can keep the same vectors).
    pub embedding: Arc<[f32]>,
    pub n_genres: usize,
    /// Genre names, in column order of [`Items::genres`].
    pub genre_names: Vec<String>,
    pub n_occupations: usize,
    /// `[len, width]`: stats, genres, occupation lifts.
    table: Vec<f32>,
    width: usize,
}

impl Items {
    pub fn load(dir: &Path) -> Result<Items, CatalogError> {
        let meta: ItemsJson = read_json(dir, "items.json")?;
        let n = meta.ids.len();
        let f = TensorFile::open(dir, "items.safetensors")?;
        let (embedding, dim) = f.f32s("embedding", n)?;
        let (genres, n_genres) = f.f32s("genres", n)?;
        let (occupation_lift, n_occupations) = f.f32s("occupation_lift", n)?;
        if meta.genres.len() != n_genres {
            return Err(CatalogError::load(
                "items.json",
                format!(
                    "{} genre names for {n_genres} genre columns",
                    meta.genres.len()
                ),
            ));
        }
        let stats = ItemStat::ALL
            .iter()
            .map(|s| f.vector(s.tensor(), n))
            .collect::<Result<Vec<_>, _>>()?;
        let width = stats.len() + n_genres + n_occupations;
        let mut table = Vec::with_capacity(n * width);
        for i in 0..n {
            table.extend(stats.iter().map(|column| column[i]));
            table.extend_from_slice(&genres[i * n_genres..(i + 1) * n_genres]);
            table.extend_from_slice(&occupation_lift[i * n_occupations..(i + 1) * n_occupations]);
        }
        Ok(Items {
            genre_names: meta.genres,
            dim,
            embedding: embedding.into(),
            n_genres,
            n_occupations,
            table,
            width,
            ids: Ids::new(meta.ids, "items.json")?,
        })
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

    pub fn embedding(&self, row: u32) -> &[f32] {
        row_of(&self.embedding, self.dim, row)
    }

    pub fn stat(&self, row: u32, stat: ItemStat) -> f32 {
        self.table[row as usize * self.width + stat as usize]
    }

    pub fn popularity(&self, row: u32) -> f32 {
        self.stat(row, ItemStat::Popularity)
    }

    pub fn genres(&self, row: u32) -> &[f32] {
        let at = row as usize * self.width + ItemStat::ALL.len();
        &self.table[at..at + self.n_genres]
    }

    /// The item's rating lift per occupation (`n_occupations` values).
    pub fn occupation_lift(&self, row: u32) -> &[f32] {
        let at = row as usize * self.width + ItemStat::ALL.len() + self.n_genres;
        &self.table[at..at + self.n_occupations]
    }
}

/// The user table: known users only (cold-start users are not in it).
pub struct Users {
    pub ids: Ids,
    pub dim: usize,
    pub embedding: Vec<f32>,
    pub n_genres: usize,
    pub genre_profile: Vec<f32>,
    pub age: Vec<f32>,
    pub gender_m: Vec<f32>,
    pub occupation: Vec<f32>,
    pub log_n_ratings: Vec<f32>,
    pub mean_rating: Vec<f32>,
    pub pos_rate: Vec<f32>,
    /// Items each user interacted with before the cutoff (CSR over user
    /// rows): never retrieved for them again.
    history_offsets: Vec<u32>,
    history_items: Vec<u32>,
}

impl Users {
    pub fn load(dir: &Path, items: &Items) -> Result<(Users, Vec<String>), CatalogError> {
        let meta: UsersJson = read_json(dir, "users.json")?;
        let n = meta.ids.len();
        let f = TensorFile::open(dir, "users.safetensors")?;
        let (embedding, dim) = f.f32s("embedding", n)?;
        if dim != items.dim {
            return Err(CatalogError::load(
                "users.safetensors",
                format!("embedding dim {dim} differs from the items' {}", items.dim),
            ));
        }
        let (genre_profile, n_genres) = f.f32s("genre_profile", n)?;
        // Required: without it the server would silently stop excluding
        // what users have seen. A catalog without history ships one whose
        // offsets are all 0.
        if !dir.join("user_history.safetensors").is_file() {
            return Err(CatalogError::load(
                "user_history.safetensors",
                "file not found (each user's seen items, which ranking.exclude_seen relies on; a catalog without history ships one with every offset 0)",
            ));
        }
        let h = TensorFile::open(dir, "user_history.safetensors")?;
        let offsets = h.i32s("offsets")?;
        let rows = h.i32s("items")?;
        let ok = offsets.len() == n + 1
            && offsets.windows(2).all(|w| w[0] <= w[1])
            && offsets.first() == Some(&0)
            && offsets.last().map(|&l| l as usize) == Some(rows.len())
            && rows.iter().all(|&r| r >= 0 && (r as usize) < items.len());
        if !ok {
            return Err(CatalogError::load(
                "user_history.safetensors",
                "offsets/items are not a valid CSR over the user and item tables",
            ));
        }
        let history_offsets: Vec<u32> = offsets.into_iter().map(|x| x as u32).collect();
        let history_items: Vec<u32> = rows.into_iter().map(|x| x as u32).collect();
        let users = Users {
            dim,
            embedding,
            n_genres,
            genre_profile,
            age: f.vector("age", n)?,
            gender_m: f.vector("gender_m", n)?,
            occupation: f.vector("occupation", n)?,
            log_n_ratings: f.vector("log_n_ratings", n)?,
            mean_rating: f.vector("mean_rating", n)?,
            pos_rate: f.vector("pos_rate", n)?,
            history_offsets,
            history_items,
            ids: Ids::new(meta.ids, "users.json")?,
        };
        Ok((users, meta.occupations))
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

    pub fn embedding(&self, row: u32) -> &[f32] {
        row_of(&self.embedding, self.dim, row)
    }

    pub fn genre_profile(&self, row: u32) -> &[f32] {
        row_of(&self.genre_profile, self.n_genres, row)
    }

    /// Item rows the user already interacted with (sorted as stored).
    pub fn history(&self, row: u32) -> &[u32] {
        if self.history_offsets.is_empty() {
            return &[];
        }
        let (a, b) = (
            self.history_offsets[row as usize] as usize,
            self.history_offsets[row as usize + 1] as usize,
        );
        &self.history_items[a..b]
    }
}

/// `items.json` "popular", as item rows (unknown ids are a load error).
pub fn popular_rows(dir: &Path, items: &Items) -> Result<Vec<u32>, CatalogError> {
    let meta: ItemsJson = read_json(dir, "items.json")?;
    meta.popular
        .iter()
        .map(|id| {
            items.row(id).ok_or_else(|| {
                CatalogError::load("items.json", format!("popular id \"{id}\" is not an item"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{Ids, ItemStat, Items, TensorFile};

    #[test]
    fn packed_item_rows_hold_every_column_of_the_file() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/catalog");
        let items = Items::load(&dir).unwrap();
        let n = items.len();
        let f = TensorFile::open(&dir, "items.safetensors").unwrap();
        for stat in ItemStat::ALL {
            let column = f.vector(stat.tensor(), n).unwrap();
            for (row, &want) in column.iter().enumerate() {
                assert_eq!(
                    items.stat(row as u32, stat).to_bits(),
                    want.to_bits(),
                    "{stat:?} {row}"
                );
            }
        }
        let (genres, g) = f.f32s("genres", n).unwrap();
        let (lift, o) = f.f32s("occupation_lift", n).unwrap();
        assert!(g > 1 && o > 1);
        for row in 0..n {
            assert_eq!(items.genres(row as u32), &genres[row * g..(row + 1) * g]);
            assert_eq!(
                items.occupation_lift(row as u32),
                &lift[row * o..(row + 1) * o]
            );
        }
    }

    #[test]
    fn packed_ids_find_every_row_and_refuse_duplicates() {
        let list: Vec<String> = ["b", "a", "", "ab", "10", "9"].map(String::from).to_vec();
        let ids = Ids::new(list.clone(), "t.json").unwrap();
        assert_eq!(ids.len(), 6);
        for (row, id) in list.iter().enumerate() {
            assert_eq!(ids.get(row as u32), id);
            assert_eq!(ids.row(id), Some(row as u32));
        }
        assert_eq!(ids.row("c"), None);
        assert_eq!(ids.iter().collect::<Vec<_>>(), list);
        let e = Ids::new(["x", "y", "x"].map(String::from).to_vec(), "t.json")
            .err()
            .expect("a duplicate is refused");
        assert_eq!(e.to_string(), "catalog t.json: id \"x\" appears twice");
        let none = Ids::new(Vec::new(), "t.json").unwrap();
        assert!(none.is_empty());
        assert_eq!(none.row("a"), None);
    }

    #[test]
    fn hash_table_finds_every_row_of_a_large_list_and_no_other() {
        // Enough ids for long probe runs and wrap-around at the table's end.
        let list: Vec<String> = (0..50_000).map(|i| format!("item-{i}")).collect();
        let ids = Ids::new(list.clone(), "t.json").unwrap();
        for (row, id) in list.iter().enumerate() {
            assert_eq!(ids.row(id), Some(row as u32), "{id}");
        }
        for i in 50_000..60_000 {
            assert_eq!(ids.row(&format!("item-{i}")), None);
        }
        assert_eq!(ids.row("item-"), None);
        assert_eq!(ids.row("item-00"), None);
        let mut dup = list;
        dup.push("item-49999".into());
        assert!(Ids::new(dup, "t.json").is_err());
    }
}
