//! A segmented LRU (SLRU, as in 2Q) index of string keys: the eviction order of the sid
//! table.
//!
//! A key enters the *probation* segment. Its first hit (the session's second request)
//! moves it to the *protected* segment, whose own bound keeps it from taking the whole
//! table: over it, protected's least recently used key is demoted to the head of
//! probation. Eviction takes probation's least recently used key first, so a flood of
//! keys that are never used again (handshakes nobody follows up) churns probation only
//! and cannot push out keys in use. *Pinned* keys are in neither segment and are never
//! chosen for eviction. Every operation is O(1): a dense slab of slots linked by index
//! (no per-operation allocation but the key's), removed by swap-remove.
//!
//! This type only orders keys. It knows nothing of time, servers or counters; `sid`
//! decides when a key is learned, hit, pinned, expired or evicted.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

/// "No slot" in a link.
const NIL: u32 = u32::MAX;

/// Where a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Learned, not used since: evicted first.
    Probation,
    /// Used at least once after it was learned.
    Protected,
    /// Never evicted (the owner removes it explicitly).
    Pinned,
}

#[derive(Debug)]
struct Slot<V> {
    key: Arc<str>,
    value: V,
    segment: Segment,
    /// Towards the head (more recently used) of the segment's list.
    prev: u32,
    /// Towards the tail (less recently used).
    next: u32,
}

/// A doubly linked list of slots, most recently used at the head.
#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
    len: usize,
}

impl Default for List {
    fn default() -> Self {
        List {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

#[derive(Debug)]
pub struct Slru<V> {
    /// Key → slot index. The key is shared with the slot (one allocation per key).
    index: HashMap<Arc<str>, u32>,
    slots: Vec<Slot<V>>,
    probation: List,
    protected: List,
    /// Bound of the protected segment.
    protected_max: usize,
}

impl<V> Slru<V> {
    /// An empty index whose protected segment holds at most `protected_max` keys (≥ 1).
    pub fn new(protected_max: usize) -> Slru<V> {
        Slru {
            index: HashMap::new(),
            slots: Vec::new(),
            probation: List::default(),
            protected: List::default(),
            protected_max: protected_max.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The value of `key`, without counting a use.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.index.get(key).map(|&i| &self.slots[i as usize].value)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    #[cfg(test)]
    /// Keys in `segment` now.
    pub fn segment_len(&self, segment: Segment) -> usize {
        match segment {
            Segment::Probation => self.probation.len,
            Segment::Protected => self.protected.len,
            Segment::Pinned => self.slots.len() - self.probation.len - self.protected.len,
        }
    }

    #[cfg(test)]
    /// The segment `key` is in.
    pub fn segment(&self, key: &str) -> Option<Segment> {
        self.index.get(key).map(|&i| self.slots[i as usize].segment)
    }

    /// Add `key` at the head of probation; an existing key keeps its place and gets the
    /// new value (the old one is returned).
    pub fn insert(&mut self, key: &str, value: V) -> Option<V> {
        let i = match u32::try_from(self.slots.len()) {
            Ok(i) if i != NIL => i,
            // 4 billion keys: not a table anyone configures; refuse rather than corrupt.
            _ => return Some(value),
        };
        // One hash of the key; the allocation is wasted only for a key already here.
        let key: Arc<str> = Arc::from(key);
        match self.index.entry(Arc::clone(&key)) {
            Entry::Occupied(at) => {
                return Some(std::mem::replace(&mut self.slots[*at.get() as usize].value, value));
            }
            Entry::Vacant(at) => at.insert(i),
        };
        self.slots.push(Slot {
            key,
            value,
            segment: Segment::Pinned,
            prev: NIL,
            next: NIL,
        });
        self.push_front(i, Segment::Probation);
        None
    }

    /// A use of `key`: `f` sees its value and says whether the use counts (e.g. not
    /// expired). If it does, the key moves to the head of protected (from probation:
    /// promoted, possibly demoting protected's oldest). `f`'s answer is returned.
    pub fn hit<R>(&mut self, key: &str, f: impl FnOnce(&mut V) -> Option<R>) -> Option<R> {
        let i = *self.index.get(key)?;
        let found = f(&mut self.slots[i as usize].value)?;
        match self.slots[i as usize].segment {
            Segment::Pinned => {}
            Segment::Protected if self.protected.head == i => {}
            Segment::Protected => {
                self.unlink(i);
                self.push_front(i, Segment::Protected);
            }
            Segment::Probation => {
                self.unlink(i);
                self.push_front(i, Segment::Protected);
                if self.protected.len > self.protected_max {
                    let oldest = self.protected.tail;
                    self.unlink(oldest);
                    self.push_front(oldest, Segment::Probation);
                }
            }
        }
        Some(found)
    }

    #[cfg(test)]
    /// The value of `key`, without counting a use.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let i = *self.index.get(key)?;
        Some(&mut self.slots[i as usize].value)
    }

    /// Take `key` out of eviction order for good; its value.
    pub fn pin(&mut self, key: &str) -> Option<&mut V> {
        let i = *self.index.get(key)?;
        self.unlink(i);
        Some(&mut self.slots[i as usize].value)
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let i = self.index.remove(key)?;
        Some(self.take(i))
    }

    /// Every key and its value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.slots.iter().map(|s| (&*s.key, &s.value))
    }

    /// Remove the key to evict: probation's least recently used, else protected's.
    /// Pinned keys are never chosen; `None` when every key is pinned.
    pub fn evict(&mut self) -> Option<V> {
        let i = match self.probation.tail {
            NIL => self.protected.tail,
            tail => tail,
        };
        if i == NIL {
            return None;
        }
        self.index.remove(&*self.slots[i as usize].key);
        Some(self.take(i))
    }

    /// Keep the keys whose value `keep` accepts (it may account for the others).
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        // Backwards: a swap-remove moves the last slot, already visited, into the hole.
        for i in (0..self.slots.len()).rev() {
            if !keep(&self.slots[i].value) {
                self.index.remove(&*self.slots[i].key);
                // `i` < len ≤ u32::MAX (insert refuses more).
                self.take(i as u32);
            }
        }
    }

    /// Remove slot `i` (already gone from `index`): unlink it, move the last slot into
    /// its place and repoint everything that pointed at the last slot.
    fn take(&mut self, i: u32) -> V {
        self.unlink(i);
        let last = (self.slots.len() - 1) as u32;
        let removed = self.slots.swap_remove(i as usize);
        if i != last {
            let (segment, prev, next) = {
                let moved = &self.slots[i as usize];
                (moved.segment, moved.prev, moved.next)
            };
            if let Some(at) = self.index.get_mut(&*self.slots[i as usize].key) {
                *at = i;
            }
            if segment != Segment::Pinned {
                match prev {
                    NIL => self.list_mut(segment).head = i,
                    p => self.slots[p as usize].next = i,
                }
                match next {
                    NIL => self.list_mut(segment).tail = i,
                    n => self.slots[n as usize].prev = i,
                }
            }
        }
        removed.value
    }

    fn list_mut(&mut self, segment: Segment) -> &mut List {
        match segment {
            Segment::Protected => &mut self.protected,
            // Pinned slots are in no list: callers check before.
            Segment::Probation | Segment::Pinned => &mut self.probation,
        }
    }

    /// Take slot `i` out of its segment's list (it becomes `Pinned`: in no list).
    fn unlink(&mut self, i: u32) {
        let Slot {
            segment, prev, next, ..
        } = self.slots[i as usize];
        if segment == Segment::Pinned {
            return;
        }
        match prev {
            NIL => self.list_mut(segment).head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.list_mut(segment).tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
        self.list_mut(segment).len -= 1;
        let slot = &mut self.slots[i as usize];
        slot.segment = Segment::Pinned;
        slot.prev = NIL;
        slot.next = NIL;
    }

    /// Put unlinked slot `i` at the head of `segment` (Probation or Protected).
    fn push_front(&mut self, i: u32, segment: Segment) {
        let list = self.list_mut(segment);
        let head = list.head;
        list.head = i;
        if head == NIL {
            list.tail = i;
        }
        list.len += 1;
        if head != NIL {
            self.slots[head as usize].prev = i;
        }
        let slot = &mut self.slots[i as usize];
        slot.segment = segment;
        slot.prev = NIL;
        slot.next = head;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys of `segment` from most to least recently used, checking every link.
    fn order(t: &Slru<u32>, segment: Segment) -> Vec<String> {
        let list = match segment {
            Segment::Probation => t.probation,
            Segment::Protected => t.protected,
            Segment::Pinned => unreachable!(),
        };
        let mut out = Vec::new();
        let (mut i, mut prev) = (list.head, NIL);
        while i != NIL {
            let s = &t.slots[i as usize];
            assert_eq!((s.prev, s.segment), (prev, segment), "links of {}", s.key);
            assert_eq!(t.index[&s.key], i, "index of {}", s.key);
            out.push(s.key.to_string());
            (prev, i) = (i, s.next);
        }
        assert_eq!((list.tail, list.len), (prev, out.len()));
        out
    }

    #[test]
    fn a_second_use_protects_a_key_from_a_flood_of_new_ones() {
        let mut t = Slru::new(2);
        t.insert("live", 0);
        assert_eq!(t.hit("live", |_| Some(())), Some(()));
        for i in 0..1000 {
            t.insert(&format!("flood{i}"), i);
            if t.len() > 10 {
                t.evict();
            }
        }
        assert_eq!(t.segment("live"), Some(Segment::Protected));
        assert_eq!(t.len(), 10);
        assert_eq!(order(&t, Segment::Protected), ["live"]);
        assert_eq!(order(&t, Segment::Probation)[0], "flood999");
    }

    #[test]
    fn evicts_probation_oldest_first_then_protected_oldest() {
        let mut t = Slru::new(8);
        for k in ["a", "b", "c", "d"] {
            t.insert(k, 0);
        }
        t.hit("b", |_| Some(()));
        t.hit("a", |_| Some(()));
        assert_eq!(order(&t, Segment::Probation), ["d", "c"]);
        assert_eq!(order(&t, Segment::Protected), ["a", "b"]);
        t.evict();
        assert!(!t.contains("c"));
        t.evict();
        assert!(!t.contains("d"));
        t.evict();
        assert_eq!(order(&t, Segment::Protected), ["a"], "b was used longest ago");
    }

    #[test]
    fn a_full_protected_segment_demotes_its_oldest_to_probation() {
        let mut t = Slru::new(2);
        for k in ["a", "b", "c", "x"] {
            t.insert(k, 0);
        }
        for k in ["a", "b", "a", "c"] {
            t.hit(k, |_| Some(()));
        }
        assert_eq!(order(&t, Segment::Protected), ["c", "a"]);
        assert_eq!(order(&t, Segment::Probation), ["b", "x"], "demoted to probation's head");
    }

    #[test]
    fn a_refused_hit_does_not_promote() {
        let mut t = Slru::new(2);
        t.insert("a", 7);
        assert_eq!(t.hit("a", |v| (*v > 10).then_some(())), None);
        assert_eq!(t.segment("a"), Some(Segment::Probation));
        assert_eq!(t.hit("zz", |_| Some(())), None);
    }

    #[test]
    fn pinned_keys_are_never_evicted() {
        let mut t = Slru::new(2);
        t.insert("tunnel", 1);
        t.pin("tunnel");
        t.insert("a", 2);
        assert_eq!(t.evict(), Some(2));
        assert_eq!(t.evict(), None);
        assert_eq!(t.segment_len(Segment::Pinned), 1);
        assert_eq!(t.hit("tunnel", |v| Some(*v)), Some(1));
        assert_eq!(t.segment("tunnel"), Some(Segment::Pinned), "a hit does not unpin");
        assert_eq!(t.remove("tunnel"), Some(1));
        assert!(t.is_empty());
    }

    #[test]
    fn removal_from_anywhere_keeps_every_link_and_index_right() {
        let mut t = Slru::new(3);
        for i in 0..12u32 {
            t.insert(&i.to_string(), i);
        }
        for k in ["1", "4", "7", "10"] {
            t.hit(k, |_| Some(()));
        }
        t.pin("5");
        for k in ["0", "11", "4", "5", "6"] {
            assert!(t.remove(k).is_some(), "{k}");
            order(&t, Segment::Probation);
            order(&t, Segment::Protected);
        }
        t.retain(|v| v % 2 == 1);
        let mut left: Vec<String> = order(&t, Segment::Protected);
        left.extend(order(&t, Segment::Probation));
        left.sort();
        assert_eq!(left, ["1", "3", "7", "9"]);
        assert_eq!(t.len(), 4);
        assert_eq!(t.insert("3", 33), Some(3), "an existing key gets the new value");
        assert_eq!(t.get_mut("3").copied(), Some(33));
    }
}
