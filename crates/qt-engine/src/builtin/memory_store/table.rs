//! The memory store's table: fixed 32-byte entries keyed by 128-bit fingerprints, in open
//! addressing with linear probing.
//!
//! A general-purpose table (hashbrown) keeps its control bytes apart from its entries, so
//! looking up a key in a table far larger than the caches is two misses, the second
//! waiting for the first. Here the probe reads the entries themselves: one miss, and the
//! next slot usually shares its cache line. [`Table::touch`] starts that miss early, so a
//! batch can start all of its keys' misses before it probes any of them.
//!
//! Fingerprints are uniformly random (keyed SipHash), so their low bits place them
//! directly; 0 marks an empty slot (the store never makes that fingerprint). Removal
//! shifts the entries after the hole back into it, so there are no tombstones and a probe
//! always ends at the first empty slot.

/// The table never holds more than this share of its slots (3/4): linear probing stays
/// short below it.
const MAX_LOAD_NUMERATOR: usize = 3;
const MAX_LOAD_DENOMINATOR: usize = 4;
const MIN_SLOTS: usize = 16;

/// A remembered key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Entry {
    /// Never 0 in an occupied slot.
    pub fingerprint: u128,
    /// The live claim's fencing token, or the store's "done" marker.
    pub token: u64,
    /// When the lease or the window ends, in nanoseconds since the store began.
    pub until: u64,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.fingerprint == 0
    }
}

/// Where a fingerprint is, or where it would go.
pub(super) enum Slot {
    Occupied(usize),
    Vacant(usize),
}

#[derive(Debug, Default)]
pub(super) struct Table {
    /// A power of two long (or empty before the first insert).
    slots: Vec<Entry>,
    len: usize,
}

impl Table {
    /// Room for `keys` entries before the table has to grow. Every slot is written here,
    /// so the memory is the table's from the start rather than faulted in by claims.
    pub fn with_capacity(keys: usize) -> Self {
        if keys == 0 {
            return Self::default();
        }
        Self {
            slots: vec![Entry::default(); slots_for(keys)],
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Entries the table holds before it grows.
    pub fn capacity(&self) -> usize {
        self.slots.len() * MAX_LOAD_NUMERATOR / MAX_LOAD_DENOMINATOR
    }

    fn home(&self, fingerprint: u128) -> usize {
        // Truncation intended: the low bits are as random as the rest.
        (fingerprint as usize) & (self.slots.len() - 1)
    }

    /// Reads `fingerprint`'s first slot, so that its cache miss is under way while the
    /// caller touches the slots of other keys.
    pub fn touch(&self, fingerprint: u128) {
        if !self.slots.is_empty() {
            std::hint::black_box(self.slots[self.home(fingerprint)].fingerprint);
        }
    }

    pub fn find(&self, fingerprint: u128) -> Slot {
        debug_assert_ne!(fingerprint, 0, "0 marks an empty slot");
        if self.slots.is_empty() {
            return Slot::Vacant(0);
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(fingerprint);
        loop {
            let e = &self.slots[i];
            if e.fingerprint == fingerprint {
                return Slot::Occupied(i);
            }
            if e.is_empty() {
                return Slot::Vacant(i);
            }
            i = (i + 1) & mask;
        }
    }

    pub fn get_mut(&mut self, index: usize) -> &mut Entry {
        &mut self.slots[index]
    }

    /// Puts `entry` into the vacant slot [`Table::find`] gave for its fingerprint (or,
    /// when the table must grow first, wherever it belongs in the grown table).
    pub fn insert(&mut self, vacant: usize, entry: Entry) {
        if self.len + 1 > self.capacity() {
            self.grow();
            match self.find(entry.fingerprint) {
                Slot::Vacant(i) => self.slots[i] = entry,
                Slot::Occupied(_) => unreachable!("the fingerprint was not in the table"),
            }
        } else {
            debug_assert!(self.slots[vacant].is_empty());
            self.slots[vacant] = entry;
        }
        self.len += 1;
    }

    /// Empties slot `index`, moving back the entries after it that would no longer be
    /// found past the hole.
    pub fn remove(&mut self, index: usize) {
        let mask = self.slots.len() - 1;
        let mut hole = index;
        let mut next = (index + 1) & mask;
        while !self.slots[next].is_empty() {
            let home = self.home(self.slots[next].fingerprint);
            // The entry may fill the hole when the hole lies on its way from its home.
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.slots[hole] = self.slots[next];
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.slots[hole] = Entry::default();
        self.len -= 1;
    }

    /// Keeps only the entries for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        let mut i = 0;
        while i < self.slots.len() {
            let e = self.slots[i];
            if !e.is_empty() && !keep(&e) {
                // An entry from further on may have moved into `i`: look at it again.
                self.remove(i);
            } else {
                i += 1;
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.slots.iter().filter(|e| !e.is_empty())
    }

    fn grow(&mut self) {
        let wanted = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![Entry::default(); wanted]);
        for e in old.into_iter().filter(|e| !e.is_empty()) {
            match self.find(e.fingerprint) {
                Slot::Vacant(i) => self.slots[i] = e,
                Slot::Occupied(_) => unreachable!("fingerprints in a table are distinct"),
            }
        }
    }
}

/// The slot count (a power of two) that holds `keys` within the maximum load.
fn slots_for(keys: usize) -> usize {
    (keys * MAX_LOAD_DENOMINATOR)
        .div_ceil(MAX_LOAD_NUMERATOR)
        .next_power_of_two()
        .max(MIN_SLOTS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn entry(fingerprint: u128, token: u64) -> Entry {
        Entry {
            fingerprint,
            token,
            until: 0,
        }
    }

    fn put(t: &mut Table, fingerprint: u128, token: u64) {
        match t.find(fingerprint) {
            Slot::Occupied(i) => t.get_mut(i).token = token,
            Slot::Vacant(i) => t.insert(i, entry(fingerprint, token)),
        }
    }

    fn get(t: &Table, fingerprint: u128) -> Option<u64> {
        match t.find(fingerprint) {
            Slot::Occupied(i) => Some(t.slots[i].token),
            Slot::Vacant(_) => None,
        }
    }

    #[test]
    fn a_sized_table_holds_its_keys_without_growing() {
        let t = Table::with_capacity(1000);
        assert!(t.capacity() >= 1000);
        assert_eq!(Table::with_capacity(0).capacity(), 0);
    }

    #[test]
    fn colliding_fingerprints_are_found_past_each_other_and_after_removals() {
        // Fingerprints with the same low bits share a home slot.
        let mut t = Table::with_capacity(8);
        let same_home: Vec<u128> = (1..=6).map(|i| (i << 64) | 3).collect();
        for (n, fp) in same_home.iter().enumerate() {
            put(&mut t, *fp, n as u64);
        }
        let Slot::Occupied(i) = t.find(same_home[1]) else {
            panic!("inserted")
        };
        t.remove(i);
        assert_eq!(get(&t, same_home[1]), None);
        for (n, fp) in same_home.iter().enumerate().filter(|(n, _)| *n != 1) {
            assert_eq!(get(&t, *fp), Some(n as u64));
        }
        assert_eq!(t.len(), 5);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever mix of inserts, updates, removals and sweeps, and however crowded the
        /// slots (few distinct low bits make long probe runs that wrap around the end),
        /// the table answers like a map.
        #[test]
        fn the_table_behaves_like_a_map(
            ops in prop::collection::vec((0u8..4, 1u128..40, any::<u64>()), 1..400),
            crowd in prop::bool::ANY,
        ) {
            let mut t = Table::default();
            let mut model: HashMap<u128, u64> = HashMap::new();
            for (op, k, v) in ops {
                // Crowded: keys differ only above the bits that place them.
                let fp = if crowd { (k << 64) | 7 } else { k.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1 };
                match op {
                    0 | 1 => {
                        put(&mut t, fp, v);
                        model.insert(fp, v);
                    }
                    2 => {
                        if let Slot::Occupied(i) = t.find(fp) {
                            t.remove(i);
                        }
                        model.remove(&fp);
                    }
                    _ => {
                        t.retain(|e| e.token % 3 != 0);
                        model.retain(|_, v| *v % 3 != 0);
                    }
                }
                prop_assert_eq!(t.len(), model.len());
            }
            for (fp, v) in &model {
                prop_assert_eq!(get(&t, *fp), Some(*v));
            }
            prop_assert_eq!(t.iter().count(), model.len());
        }
    }
}
