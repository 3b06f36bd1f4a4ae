//! The in-process view of live state that `/v1/rank` reads: per user, the
//! items they interacted with (newest first, bounded); the items made
//! unavailable; the ids already applied (idempotency). Versions — one per
//! user, one for availability — move with every change, and the response
//! cache keys by them, so no cached answer outlives the events that
//! changed it, and an event touches only its own user's entries.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use super::Event;
use crate::catalog::Catalog;

#[derive(Default)]
struct History {
    /// (item row, timestamp ms), newest first, each item once.
    items: Vec<(u32, i64)>,
    version: u64,
}

#[derive(Default)]
struct View {
    applied: HashSet<String>,
    users: HashMap<String, History>,
    /// Sorted rows of unavailable items.
    unavailable: Vec<u32>,
    availability_version: u64,
}

pub struct Online {
    view: RwLock<View>,
    max_history: usize,
}

/// What applying a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub accepted: usize,
    pub duplicates: usize,
}

impl Online {
    pub fn new(max_history: usize) -> Online {
        Online {
            view: RwLock::new(View::default()),
            max_history: max_history.max(1),
        }
    }

    /// The events of `batch` whose ids have not been applied (nor appear
    /// earlier in the batch), in order: what must be logged and applied.
    pub fn fresh(&self, batch: Vec<Event>) -> (Vec<Event>, usize) {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        let mut ids = HashSet::new();
        let total = batch.len();
        let fresh: Vec<Event> = batch
            .into_iter()
            .filter(|e| !view.applied.contains(e.id()) && ids.insert(e.id().to_string()))
            .collect();
        let duplicates = total - fresh.len();
        (fresh, duplicates)
    }

    /// Applies events (already logged). Ids seen before are skipped, so a
    /// replayed log applies each event once. Items no longer in the catalog
    /// (a newer snapshot) are skipped too; returns what was applied.
    pub fn apply(&self, catalog: &Catalog, batch: &[Event]) -> Applied {
        let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
        let mut done = Applied::default();
        for e in batch {
            if !view.applied.insert(e.id().to_string()) {
                done.duplicates += 1;
                continue;
            }
            done.accepted += 1;
            match e {
                Event::Interaction {
                    user_id,
                    item_id,
                    timestamp,
                    ..
                } => {
                    let Some(row) = catalog.items.row(item_id) else {
                        continue;
                    };
                    let h = view.users.entry(user_id.clone()).or_default();
                    h.items.retain(|(r, _)| *r != row);
                    let at = h.items.partition_point(|(_, t)| *t >= *timestamp);
                    h.items.insert(at, (row, *timestamp));
                    h.items.truncate(self.max_history);
                    h.version += 1;
                }
                Event::Item {
                    item_id, available, ..
                } => {
                    let Some(row) = catalog.items.row(item_id) else {
                        continue;
                    };
                    let pos = view.unavailable.binary_search(&row);
                    match (available, pos) {
                        (false, Err(at)) => view.unavailable.insert(at, row),
                        (true, Ok(at)) => {
                            view.unavailable.remove(at);
                        }
                        _ => continue,
                    }
                    view.availability_version += 1;
                }
            }
        }
        done
    }

    /// Rows `user_id` has interacted with, newest first.
    pub fn history(&self, user_id: &str) -> Vec<u32> {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        view.users
            .get(user_id)
            .map(|h| h.items.iter().map(|(r, _)| *r).collect())
            .unwrap_or_default()
    }

    /// Sorted rows of the items no answer may hold.
    pub fn unavailable(&self) -> Vec<u32> {
        self.view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .unavailable
            .clone()
    }

    /// (availability version, the user's history version): what a cached
    /// answer for this user depends on.
    pub fn versions(&self, user_id: Option<&str>) -> (u64, u64) {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        let user = user_id
            .and_then(|u| view.users.get(u))
            .map_or(0, |h| h.version);
        (view.availability_version, user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rated(id: &str, user: &str, item: &str, t: i64) -> Event {
        Event::Interaction {
            id: id.into(),
            user_id: user.into(),
            item_id: item.into(),
            kind: "rating".into(),
            value: None,
            timestamp: t,
        }
    }

    #[test]
    fn histories_are_newest_first_bounded_and_applied_once() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let catalog = Catalog::load(&root.join("models/catalog")).unwrap();
        let row = |id: &str| catalog.items.row(id).unwrap();
        let online = Online::new(3);
        let batch = [
            rated("a", "u", "1", 10),
            rated("b", "u", "2", 30),
            rated("c", "u", "3", 20), // late: goes behind the newer one
            rated("a", "u", "9", 40), // an id seen before: skipped
        ];
        assert_eq!(
            online.apply(&catalog, &batch),
            Applied {
                accepted: 3,
                duplicates: 1
            }
        );
        assert_eq!(online.history("u"), [row("2"), row("3"), row("1")]);
        // Again the same item: it moves up, nothing duplicates; the oldest
        // falls off past the bound.
        online.apply(
            &catalog,
            &[rated("d", "u", "1", 50), rated("e", "u", "4", 45)],
        );
        assert_eq!(online.history("u"), [row("1"), row("4"), row("2")]);
        assert_eq!(online.versions(Some("u")), (0, 5));
        assert_eq!(online.versions(Some("v")), (0, 0));
        let (fresh, dups) = online.fresh(vec![rated("a", "u", "1", 1), rated("z", "u", "1", 1)]);
        assert_eq!((fresh.len(), dups), (1, 1));
    }
}
