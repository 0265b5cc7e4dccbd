//! Ordered maps and sets sized for state that a million actors each hold a few entries of.
//!
//! A `BTreeMap` allocates a whole node (eleven slots) for its first entry — for a wallet's one
//! coin that is ≈ 2.3 KB where the coin takes 176 bytes — and keeps it when the map empties;
//! a `HashMap` allocates four buckets. [`SmallMap`] keeps up to [`SMALL_ENTRIES_MAX`] entries
//! in a sorted vector of exactly their size and switches to a `BTreeMap` beyond, so a hot
//! wallet or key with thousands of entries keeps logarithmic inserts. Both forms iterate in
//! key order and serialize as a map in that order: the bytes are those of a `BTreeMap` with
//! the same entries, so snapshots written before the switch restore after it.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{btree_map, BTreeMap};
use std::fmt;
use std::marker::PhantomData;

/// Most entries a [`SmallMap`] keeps in its vector form; one more switches it to a tree.
pub const SMALL_ENTRIES_MAX: usize = 32;
/// A tree that shrinks to this many entries goes back to the vector form (a gap below
/// [`SMALL_ENTRIES_MAX`], so that a map hovering at the limit does not switch every step).
const SMALL_ENTRIES_BACK: usize = SMALL_ENTRIES_MAX / 2;

/// An ordered map: a sorted vector while small, a `BTreeMap` when large.
#[derive(Clone)]
pub struct SmallMap<K, V> {
    repr: Repr<K, V>,
}

#[derive(Clone)]
enum Repr<K, V> {
    /// Sorted by key, no duplicates, capacity kept close to the length.
    Small(Vec<(K, V)>),
    /// More than [`SMALL_ENTRIES_BACK`] entries.
    Large(BTreeMap<K, V>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap {
            repr: Repr::Small(Vec::new()),
        }
    }
}

impl<K: Ord, V> SmallMap<K, V> {
    /// An empty map (no allocation).
    pub fn new() -> Self {
        SmallMap::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Small(v) => v.len(),
            Repr::Large(m) => m.len(),
        }
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        match &self.repr {
            Repr::Small(v) => v
                .binary_search_by(|(k, _)| k.cmp(key))
                .ok()
                .map(|i| &v[i].1),
            Repr::Large(m) => m.get(key),
        }
    }

    /// The value of `key`, to change it.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        match &mut self.repr {
            Repr::Small(v) => match v.binary_search_by(|(k, _)| k.cmp(key)) {
                Ok(i) => Some(&mut v[i].1),
                Err(_) => None,
            },
            Repr::Large(m) => m.get_mut(key),
        }
    }

    /// Whether `key` has an entry.
    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Sets the value of `key`; returns the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match &mut self.repr {
            Repr::Small(v) => match v.binary_search_by(|(k, _)| k.cmp(&key)) {
                Ok(i) => Some(std::mem::replace(&mut v[i].1, value)),
                Err(i) if v.len() < SMALL_ENTRIES_MAX => {
                    if v.len() == v.capacity() {
                        // Grow by one: most of these maps stay at one or two entries.
                        v.reserve_exact(1);
                    }
                    v.insert(i, (key, value));
                    None
                }
                Err(_) => {
                    let mut m: BTreeMap<K, V> = std::mem::take(v).into_iter().collect();
                    m.insert(key, value);
                    self.repr = Repr::Large(m);
                    None
                }
            },
            Repr::Large(m) => m.insert(key, value),
        }
    }

    /// Removes the entry of `key`; returns its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        match &mut self.repr {
            Repr::Small(v) => {
                let i = v.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
                let (_, value) = v.remove(i);
                // Give back room the map no longer needs (an empty vector frees it all).
                if v.capacity() - v.len() > v.len() / 2 {
                    v.shrink_to_fit();
                }
                Some(value)
            }
            Repr::Large(m) => {
                let value = m.remove(key)?;
                if m.len() <= SMALL_ENTRIES_BACK {
                    let mut v = Vec::with_capacity(m.len());
                    v.extend(std::mem::take(m));
                    self.repr = Repr::Small(v);
                }
                Some(value)
            }
        }
    }

    /// Entries in key order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        match &self.repr {
            Repr::Small(v) => Iter::Small(v.iter()),
            Repr::Large(m) => Iter::Large(m.iter()),
        }
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    /// Values in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

/// Iterates a [`SmallMap`] in key order.
pub enum Iter<'a, K, V> {
    /// Over the vector form.
    Small(std::slice::Iter<'a, (K, V)>),
    /// Over the tree form.
    Large(btree_map::Iter<'a, K, V>),
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<(&'a K, &'a V)> {
        match self {
            Iter::Small(it) => it.next().map(|(k, v)| (k, v)),
            Iter::Large(it) => it.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Iter::Small(it) => it.size_hint(),
            Iter::Large(it) => it.size_hint(),
        }
    }
}

impl<'a, K: Ord, V> IntoIterator for &'a SmallMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;

    fn into_iter(self) -> Iter<'a, K, V> {
        self.iter()
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SmallMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = SmallMap::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

impl<K: Ord, V: PartialEq> PartialEq for SmallMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl<K: Ord, V: Eq> Eq for SmallMap<K, V> {}

impl<K: Ord + fmt::Debug, V: fmt::Debug> fmt::Debug for SmallMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Ord + Serialize, V: Serialize> Serialize for SmallMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for SmallMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<K, V>(PhantomData<(K, V)>);

        impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for MapVisitor<K, V> {
            type Value = SmallMap<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = SmallMap::new();
                while let Some((k, v)) = access.next_entry()? {
                    map.insert(k, v);
                }
                Ok(map)
            }
        }

        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

/// An ordered set on a [`SmallMap`].
#[derive(Clone)]
pub struct SmallSet<K> {
    map: SmallMap<K, ()>,
}

impl<K> Default for SmallSet<K> {
    fn default() -> Self {
        SmallSet {
            map: SmallMap::default(),
        }
    }
}

impl<K: Ord> PartialEq for SmallSet<K> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<K: Ord> Eq for SmallSet<K> {}

impl<K: Ord> SmallSet<K> {
    /// An empty set (no allocation).
    pub fn new() -> Self {
        SmallSet {
            map: SmallMap::new(),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the set has no elements.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether `key` is in the set.
    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// Adds `key`; false if it was there already.
    pub fn insert(&mut self, key: K) -> bool {
        self.map.insert(key, ()).is_none()
    }

    /// Removes `key`; false if it was not there.
    pub fn remove(&mut self, key: &K) -> bool {
        self.map.remove(key).is_some()
    }

    /// Elements in order.
    pub fn iter(&self) -> impl Iterator<Item = &K> {
        self.map.keys()
    }
}

impl<'a, K: Ord> IntoIterator for &'a SmallSet<K> {
    type Item = &'a K;
    type IntoIter = std::iter::Map<Iter<'a, K, ()>, fn((&'a K, &'a ())) -> &'a K>;

    fn into_iter(self) -> Self::IntoIter {
        self.map.iter().map(|(k, _)| k)
    }
}

impl<K: Ord + fmt::Debug> fmt::Debug for SmallSet<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies the same operations to a `SmallMap` and a `BTreeMap` and compares them after
    /// each, across both forms and the switches between them.
    #[test]
    fn small_map_behaves_as_a_btree_map_across_both_forms() {
        let mut small: SmallMap<u32, u64> = SmallMap::new();
        let mut model: BTreeMap<u32, u64> = BTreeMap::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let (mut largest, mut smallest_after_large) = (0, usize::MAX);
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Keys in a range that lets the map grow past the limit and shrink back.
            let key = (x % 60) as u32;
            let grow = (step / 2_000) % 2 == 0;
            let op = (x >> 32) % 5;
            if grow && op != 0 || !grow && op == 0 {
                assert_eq!(small.insert(key, step), model.insert(key, step));
            } else {
                assert_eq!(small.remove(&key), model.remove(&key));
            }
            assert_eq!(small.len(), model.len());
            assert_eq!(small.get(&key), model.get(&key));
            largest = largest.max(small.len());
            if largest > SMALL_ENTRIES_MAX {
                smallest_after_large = smallest_after_large.min(small.len());
            }
            if step % 97 == 0 {
                let a: Vec<_> = small.iter().collect();
                let b: Vec<_> = model.iter().collect();
                assert_eq!(a, b, "same entries in the same order at step {step}");
            }
        }
        // Both switches happened.
        assert!(largest > SMALL_ENTRIES_MAX && smallest_after_large <= SMALL_ENTRIES_BACK);
    }

    #[test]
    fn small_map_serializes_as_the_btree_map_it_replaces() {
        for n in [0u32, 1, 2, SMALL_ENTRIES_MAX as u32, 100] {
            let model: BTreeMap<u32, String> = (0..n).rev().map(|k| (k, k.to_string())).collect();
            let small: SmallMap<u32, String> = (0..n).rev().map(|k| (k, k.to_string())).collect();
            let bytes = postcard::to_stdvec(&model).unwrap();
            assert_eq!(postcard::to_stdvec(&small).unwrap(), bytes);
            let back: SmallMap<u32, String> = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, small);
        }
    }

    #[test]
    fn small_map_frees_its_room_when_emptied() {
        let mut map: SmallMap<u32, [u8; 64]> = SmallMap::new();
        map.insert(1, [0; 64]);
        map.insert(2, [0; 64]);
        map.remove(&1);
        map.remove(&2);
        match &map.repr {
            Repr::Small(v) => assert_eq!(v.capacity(), 0),
            Repr::Large(_) => panic!("an empty map is in the vector form"),
        }
    }

    #[test]
    fn small_set_keeps_distinct_elements_in_order() {
        let mut set = SmallSet::new();
        for k in [5u32, 1, 5, 3] {
            set.insert(k);
        }
        assert!(!set.insert(3));
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), vec![1, 3, 5]);
        assert!(set.remove(&1));
        assert!(!set.remove(&1));
        assert_eq!((&set).into_iter().count(), 2);
        assert!(set.contains(&5) && !set.contains(&1));
    }
}
