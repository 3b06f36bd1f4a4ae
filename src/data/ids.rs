//! Entity ids: row order and the reverse lookup.

use std::hash::{BuildHasher, RandomState};

use super::DataError;

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
    pub fn new(list: Vec<String>, file: &str) -> Result<Ids, DataError> {
        let total: usize = list.iter().map(String::len).sum();
        if total > u32::MAX as usize || list.len() >= FREE as usize {
            return Err(DataError::load(file, "too many ids"));
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
                return Err(DataError::load(
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

#[cfg(test)]
mod tests {
    use super::Ids;

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
