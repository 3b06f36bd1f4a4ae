//! Values every request reads and that change rarely (the experiment in
//! force, the active shadows, the prepared model versions, the registry's
//! entries, the catalog as events changed it): a reader loads the current
//! snapshot without taking a lock, so a slow writer never stalls a request
//! and readers on different cores do not contend on a lock word. A writer
//! builds the next value and publishes it whole; writers take turns, so a
//! read-modify-write (insert one version into a map) never loses another
//! writer's change, and what it builds is built once.

use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};

pub struct Snapshot<T> {
    current: ArcSwap<T>,
    /// Held while the next value is built from the current one.
    writer: Mutex<()>,
}

impl<T> Snapshot<T> {
    pub fn new(value: T) -> Snapshot<T> {
        Snapshot::from_arc(Arc::new(value))
    }

    pub fn from_arc(value: Arc<T>) -> Snapshot<T> {
        Snapshot {
            current: ArcSwap::new(value),
            writer: Mutex::new(()),
        }
    }

    /// The current value, for a short look (do not hold it across an await).
    pub fn load(&self) -> Guard<Arc<T>> {
        self.current.load()
    }

    /// The current value, to keep.
    pub fn get(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Replaces the value.
    pub fn store(&self, value: Arc<T>) {
        let _turn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.current.store(value);
    }
}

impl<T: Clone> Snapshot<T> {
    /// Publishes a changed copy of the current value; `change` runs once,
    /// while no other writer runs, and what it returns is returned.
    pub fn update<R>(&self, change: impl FnOnce(&mut T) -> R) -> R {
        let _turn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = T::clone(&self.current.load());
        let out = change(&mut next);
        self.current.store(Arc::new(next));
        out
    }
}

impl<T: Default> Default for Snapshot<T> {
    fn default() -> Self {
        Snapshot::new(T::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn readers_keep_their_snapshot_and_writers_do_not_lose_changes() {
        let map: Arc<Snapshot<HashMap<u32, u32>>> = Arc::new(Snapshot::default());
        let before = map.get();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let map = map.clone();
                std::thread::spawn(move || {
                    for i in 0..250 {
                        map.update(|m| m.insert(w * 1000 + i, i));
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        // Every insert of every writer is there; the old snapshot is as it was.
        assert_eq!(map.load().len(), 1000);
        assert!(before.is_empty());
        map.store(Arc::new(HashMap::from([(1, 1)])));
        assert_eq!(*map.get(), HashMap::from([(1, 1)]));
    }
}
