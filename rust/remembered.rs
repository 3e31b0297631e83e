//! Compact storage for the value last written per key: key bytes live end to end in one
//! arena and the hash table holds 24-byte entries pointing into it, so a remembered key costs
//! its length plus about 28 bytes instead of a heap allocation of its own per key.

use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

/// One remembered key: where its bytes sit in the arena, the value last written, and the
/// number of the run that last saw it.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    start: usize,
    len: u32,
    /// The run that last saw the key; 0 for none.
    pub seen_run: u32,
    /// The value last written for the key.
    pub value: i64,
}

/// Names a remembered key across table growth, where entries move but arena bytes do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRef {
    start: usize,
    len: u32,
}

impl Entry {
    /// The handle of this entry's key.
    pub fn key_ref(&self) -> KeyRef {
        KeyRef {
            start: self.start,
            len: self.len,
        }
    }
}

/// A map from key bytes to [`Entry`] that only grows until it is cleared.
#[derive(Debug, Default)]
pub struct Remembered {
    arena: Vec<u8>,
    table: HashTable<Entry>,
    hasher: RandomState,
}

impl Remembered {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// The entry for `key`, if remembered.
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let hash = self.hasher.hash_one(key);
        let arena = &self.arena;
        self.table
            .find_mut(hash, |entry| key_of(arena, entry) == key)
    }

    /// Adds `key`, which must not be remembered yet, and returns its entry.
    ///
    /// Keys are at most `MAX_KEY_BYTES` (templates refuse longer ones), so their length fits
    /// in u32.
    pub fn insert_new(&mut self, key: &[u8], value: i64) -> &mut Entry {
        let hash = self.hasher.hash_one(key);
        let entry = Entry {
            start: self.arena.len(),
            len: u32::try_from(key.len()).expect("templates refuse keys longer than MAX_KEY_BYTES"),
            seen_run: 0,
            value,
        };
        self.arena.extend_from_slice(key);
        let (arena, hasher) = (&self.arena, &self.hasher);
        self.table
            .insert_unique(hash, entry, |entry| hasher.hash_one(key_of(arena, entry)))
            .into_mut()
    }

    /// Sets the value of the key that `key` names; does nothing if it is not remembered.
    pub fn set_value(&mut self, key: KeyRef, value: i64) {
        let probe = Entry {
            start: key.start,
            len: key.len,
            seen_run: 0,
            value: 0,
        };
        let hash = self.hasher.hash_one(key_of(&self.arena, &probe));
        let found = self.table.find_mut(hash, |entry| entry.key_ref() == key);
        if let Some(entry) = found {
            entry.value = value;
        }
    }

    /// Makes room for `additional` more keys of `bytes` bytes in all.
    pub fn reserve(&mut self, additional: usize, bytes: usize) {
        self.arena.reserve(bytes);
        let (arena, hasher) = (&self.arena, &self.hasher);
        self.table
            .reserve(additional, |entry| hasher.hash_one(key_of(arena, entry)));
    }

    /// Every key with its entry, in no particular order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&[u8], &mut Entry)> {
        let arena = &self.arena;
        self.table
            .iter_mut()
            .map(move |entry| (key_of(arena, entry), entry))
    }

    /// Every entry, in no particular order.
    pub fn entries_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.table.iter_mut()
    }
}

fn key_of<'a>(arena: &'a [u8], entry: &Entry) -> &'a [u8] {
    let len = usize::try_from(entry.len).expect("a u32 length fits in usize");
    &arena[entry.start..entry.start + len]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_was_inserted_through_growth() {
        let mut remembered = Remembered::default();
        for i in 0..10_000i64 {
            let key = format!("quota:a{i}:m");
            remembered.insert_new(key.as_bytes(), i).seen_run = 1;
        }
        assert_eq!(remembered.len(), 10_000);
        for i in 0..10_000i64 {
            let key = format!("quota:a{i}:m");
            assert_eq!(remembered.get_mut(key.as_bytes()).map(|e| e.value), Some(i));
        }
        assert!(remembered.get_mut(b"quota:a10000:m").is_none());
        assert!(remembered.get_mut(b"").is_none());

        let mut seen: Vec<i64> = remembered
            .iter_mut()
            .map(|(_, entry)| entry.value)
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn keys_that_share_bytes_stay_apart() {
        let mut remembered = Remembered::default();
        remembered.insert_new(b"ab", 1);
        remembered.insert_new(b"a", 2);
        remembered.insert_new(b"", 3);
        assert_eq!(remembered.get_mut(b"ab").unwrap().value, 1);
        assert_eq!(remembered.get_mut(b"a").unwrap().value, 2);
        assert_eq!(remembered.get_mut(b"").unwrap().value, 3);
        assert!(remembered.get_mut(b"b").is_none());

        let empty = remembered.get_mut(b"").unwrap().key_ref();
        remembered.set_value(empty, 30);
        assert_eq!(remembered.get_mut(b"").unwrap().value, 30);
        assert_eq!(remembered.get_mut(b"a").unwrap().value, 2);
    }
}
