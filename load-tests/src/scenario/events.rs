//! `POST /v1/events` traffic: each request carries `--batch` interactions
//! of the schema's first `[events] kinds` kind, by catalog users drawn
//! Zipf-like (a few heavy users, a long tail), on items drawn Zipf-like
//! over the popularity order (four in five) or uniformly over the catalog,
//! with a rating-like `value` from 1 to 5.
//!
//! Event ids are `<seed>-<n>`: the same seed twice sends the same ids, and
//! the server counts the second run as duplicates (the duplicate path).
//! For fresh events give another `--seed` or a fresh state folder.
//!
//! With `--outcomes KIND`, each event is an outcome of that kind naming a
//! ranking of a `rank` run with `--outcome-seed` (its request ids are
//! `load-<seed>-<n>`; n uniform up to the requests sent so far), on a
//! popular item (shown or not): the attribution path under load.
//!
//! With `--new-items`, each event instead inserts a new item
//! (`<seed>-item-<n>`) with a random retrieval vector of the schema's
//! length: catalog changes, which make a new catalog generation per
//! request (the cost `benches/RESULTS.md` measures under ranking load).

use std::sync::Arc;

use anyhow::bail;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::rank::{Catalog, Zipf};
use super::{Prepared, Source};

pub struct EventsSource {
    catalog: Catalog,
    kind: String,
    batch: usize,
    users: Zipf,
    popular: Zipf,
    rng: StdRng,
    seed: u64,
    next_id: u64,
    path: Arc<str>,
    /// Insert new items (the vector field and its length) instead of
    /// posting interactions.
    new_items: Option<(String, usize)>,
    /// Post outcomes of this kind naming the rankings of the rank run
    /// with this seed.
    outcomes: Option<(String, u64)>,
}

impl EventsSource {
    pub fn new(
        catalog: Catalog,
        batch: usize,
        seed: u64,
        new_items: bool,
    ) -> anyhow::Result<EventsSource> {
        if !(1..=10_000).contains(&batch) {
            bail!("--batch {batch}: between 1 and 10000 events per request");
        }
        let new_items = match (new_items, &catalog.item_vector) {
            (false, _) => None,
            (true, Some(v)) => Some(v.clone()),
            (true, None) => bail!("--new-items: the schema declares no [retrieval] item_vector"),
        };
        let Some(kind) = catalog.kinds.first().cloned() else {
            bail!("the catalog's schema.toml declares no [events] kinds");
        };
        Ok(EventsSource {
            users: Zipf::new(catalog.users.len(), 1.0),
            popular: Zipf::new(catalog.popular.len(), 1.0),
            catalog,
            kind,
            batch,
            rng: StdRng::seed_from_u64(seed ^ 0x0e7e_47e5),
            seed,
            next_id: 0,
            path: Arc::from("/v1/events"),
            new_items,
            outcomes: None,
        })
    }

    /// Outcomes of `kind` (one of the schema's kinds) naming the rankings
    /// of a `rank` run seeded `rank_seed`.
    pub fn with_outcomes(mut self, kind: String, rank_seed: u64) -> anyhow::Result<EventsSource> {
        if !self.catalog.kinds.contains(&kind) {
            bail!(
                "--outcomes {kind}: not one of the schema's [events] kinds {:?}",
                self.catalog.kinds
            );
        }
        self.outcomes = Some((kind, rank_seed));
        Ok(self)
    }
}

impl Source for EventsSource {
    fn next_request(&mut self) -> Prepared {
        let events: Vec<serde_json::Value> = (0..self.batch).map(|_| self.next_event()).collect();
        let body = serde_json::to_vec(&json!({ "events": events })).expect("JSON serialises");
        Prepared {
            path: self.path.clone(),
            body: Bytes::from(body),
            kind: "events",
        }
    }
}

impl EventsSource {
    /// One event of the configured kind: a new item, an outcome, or an
    /// interaction.
    fn next_event(&mut self) -> serde_json::Value {
        self.next_id += 1;
        let n = self.next_id;
        if let Some((field, dim)) = &self.new_items {
            let v: Vec<f32> = (0..*dim)
                .map(|_| self.rng.random_range(-0.3..0.3))
                .collect();
            return json!({
                "type": "item",
                "id": format!("{}-{n}", self.seed),
                "item_id": format!("{}-item-{n}", self.seed),
                "fields": { field.as_str(): v },
            });
        }
        let user = &self.catalog.users[self.users.sample(&mut self.rng)];
        if let Some((kind, rank_seed)) = &self.outcomes {
            // One ranking per outcome request so far: a rank run at a
            // higher request rate has made them all.
            let ranking = self.rng.random_range(1..=(n / self.batch as u64).max(1));
            let item = &self.catalog.popular[self.popular.sample(&mut self.rng)];
            return json!({
                "type": "interaction",
                "id": format!("{}-o{n}", self.seed),
                "user_id": user,
                "item_id": item,
                "kind": kind,
                "request_id": format!("load-{rank_seed}-{ranking}"),
            });
        }
        let item = if self.rng.random_bool(0.8) {
            &self.catalog.popular[self.popular.sample(&mut self.rng)]
        } else {
            &self.catalog.items[self.rng.random_range(0..self.catalog.items.len())]
        };
        json!({
            "type": "interaction",
            "id": format!("{}-{n}", self.seed),
            "user_id": user,
            "item_id": item,
            "kind": self.kind,
            "value": self.rng.random_range(1..=5),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_of_fresh_ids_from_the_catalog() {
        let catalog = Catalog::load(&crate::scenario::models_dir(None)).unwrap();
        let mut src = EventsSource::new(catalog.clone(), 3, 9, false).unwrap();
        let a: serde_json::Value = serde_json::from_slice(&src.next_request().body).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&src.next_request().body).unwrap();
        let events = a["events"].as_array().unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0]["id"], "9-1");
        assert_eq!(b["events"][0]["id"], "9-4");
        assert_eq!(events[0]["kind"], "rating");
        for e in events {
            assert!(catalog
                .items
                .contains(&e["item_id"].as_str().unwrap().to_string()));
            assert!(catalog
                .users
                .contains(&e["user_id"].as_str().unwrap().to_string()));
        }
        assert!(EventsSource::new(catalog.clone(), 0, 1, false).is_err());
        // New items: an embedding of the schema's length each.
        let mut src = EventsSource::new(catalog, 2, 5, true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&src.next_request().body).unwrap();
        let e = &v["events"][1];
        assert_eq!(
            (e["type"].as_str(), e["item_id"].as_str()),
            (Some("item"), Some("5-item-2"))
        );
        assert_eq!(e["fields"]["embedding"].as_array().unwrap().len(), 32);
    }
}
