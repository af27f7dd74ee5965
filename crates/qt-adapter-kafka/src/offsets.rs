//! Which offset of one partition may be committed.
//!
//! Messages of a partition are handed out in offset order but finish in any order. Kafka
//! keeps a single committed offset per partition ("everything below this is done"), so the
//! only offset that may be committed is the end of the contiguous prefix of finished
//! messages: committing past an unfinished message would lose it on a crash or rebalance.

use std::collections::VecDeque;

/// Offsets registered in delivery order and completed in any order.
#[derive(Clone, Debug, Default)]
pub struct OffsetTracker {
    /// Registered offsets from the first unfinished one on, each with whether it is done.
    /// Offsets strictly increase (gaps are normal: compaction, transaction markers).
    window: VecDeque<(i64, bool)>,
    /// The offset the consumer should restart from: the first unfinished registered offset,
    /// or one past the last registered offset when all are done. `None` before anything
    /// was registered.
    position: Option<i64>,
    /// The last registered offset.
    last: Option<i64>,
}

/// Why an offset could not be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// The offset is not above the last registered one: it is a duplicate of a message the
    /// tracker already knows.
    NotAscending { offset: i64, last: i64 },
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a delivered message. Offsets must strictly increase.
    pub fn register(&mut self, offset: i64) -> Result<(), RegisterError> {
        if let Some(last) = self.last
            && offset <= last
        {
            return Err(RegisterError::NotAscending { offset, last });
        }
        if self.window.is_empty() {
            self.position = Some(offset);
        }
        self.window.push_back((offset, false));
        self.last = Some(offset);
        Ok(())
    }

    /// Marks a registered offset finished. Returns false when it is not pending (never
    /// registered, already completed, or below the committable position).
    pub fn complete(&mut self, offset: i64) -> bool {
        let Some(i) = self.index_of(offset) else {
            return false;
        };
        if self.window[i].1 {
            return false;
        }
        self.window[i].1 = true;
        while let Some(&(o, true)) = self.window.front() {
            self.window.pop_front();
            self.position = Some(o + 1);
        }
        if let Some(&(o, _)) = self.window.front() {
            self.position = Some(o);
        }
        true
    }

    /// The offset to commit: everything below it is finished, and it is the first
    /// unfinished message (or one past the last registered message when all are done).
    /// `None` until something was registered.
    pub fn committable(&self) -> Option<i64> {
        self.position
    }

    /// Registered messages not yet finished.
    pub fn pending(&self) -> usize {
        self.window.iter().filter(|(_, done)| !done).count()
    }

    /// Whether `offset` is registered and not yet finished.
    pub fn is_pending(&self, offset: i64) -> bool {
        self.index_of(offset).is_some_and(|i| !self.window[i].1)
    }

    /// Where `offset` is in the window. Offsets without gaps (the usual case) sit at their
    /// distance from the first, so that slot is looked at before searching: a search
    /// reads several lines of a window the consumer thread keeps writing to.
    fn index_of(&self, offset: i64) -> Option<usize> {
        let &(first, _) = self.window.front()?;
        let guess = usize::try_from(offset.checked_sub(first)?).ok()?;
        if self.window.get(guess).is_some_and(|(o, _)| *o == offset) {
            return Some(guess);
        }
        self.window.binary_search_by_key(&offset, |(o, _)| *o).ok()
    }

    /// Forgets everything from the first unfinished offset on, so the partition can be read
    /// again from there. Returns that offset (where to seek), or `None` when nothing is
    /// unfinished.
    pub fn rewind(&mut self) -> Option<i64> {
        let (first, _) = *self.window.front()?;
        self.window.clear();
        self.position = Some(first);
        self.last = Some(first - 1);
        Some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let mut t = OffsetTracker::new();
        assert_eq!(t.committable(), None);
        for o in [5, 7, 8, 10] {
            t.register(o).unwrap();
        }
        assert_eq!(t.committable(), Some(5));
        assert!(t.complete(8));
        assert_eq!(t.committable(), Some(5));
        assert!(t.complete(5));
        assert_eq!(t.committable(), Some(7), "the gap at 6 is not a message");
        assert!(t.complete(7));
        assert_eq!(t.committable(), Some(10));
        assert!(!t.complete(7), "completing twice is refused");
        assert!(t.complete(10));
        assert_eq!(t.committable(), Some(11));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn duplicates_are_refused() {
        let mut t = OffsetTracker::new();
        t.register(3).unwrap();
        assert_eq!(t.register(3), Err(RegisterError::NotAscending { offset: 3, last: 3 }));
        assert!(t.register(2).is_err());
    }

    #[test]
    fn rewind_restarts_at_the_first_unfinished_offset() {
        let mut t = OffsetTracker::new();
        for o in 0..6 {
            t.register(o).unwrap();
        }
        t.complete(0);
        t.complete(1);
        t.complete(3);
        assert_eq!(t.rewind(), Some(2));
        assert_eq!(t.committable(), Some(2));
        assert_eq!(t.pending(), 0);
        // The partition is read again from offset 2.
        t.register(2).unwrap();
        t.register(3).unwrap();
        assert!(t.register(1).is_err());
        t.complete(2);
        assert_eq!(t.committable(), Some(3));
        let mut done = OffsetTracker::new();
        done.register(9).unwrap();
        done.complete(9);
        assert_eq!(done.rewind(), None);
        assert_eq!(done.committable(), Some(10));
    }

    /// Strictly increasing offsets with gaps, and an order in which some of them complete.
    fn offsets_and_completion() -> impl Strategy<Value = (Vec<i64>, Vec<usize>)> {
        (0i64..1_000, prop::collection::vec(1i64..4, 1..200)).prop_flat_map(|(start, gaps)| {
            let offsets: Vec<i64> = gaps
                .iter()
                .scan(start, |next, gap| {
                    let o = *next;
                    *next += gap;
                    Some(o)
                })
                .collect();
            let n = offsets.len();
            let order = Just((0..n).collect::<Vec<usize>>())
                .prop_shuffle()
                .prop_flat_map(move |shuffled| (0..=n).prop_map(move |k| shuffled[..k].to_vec()));
            (Just(offsets), order)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// For any completion order, after every step the committable offset is exactly the
        /// end of the contiguous completed prefix: the first unfinished offset, or one past
        /// the last offset when everything is done. It never moves backwards.
        #[test]
        fn committable_is_the_end_of_the_completed_prefix((offsets, order) in offsets_and_completion()) {
            let mut t = OffsetTracker::new();
            for &o in &offsets {
                t.register(o).unwrap();
            }
            let mut done = vec![false; offsets.len()];
            let mut previous = t.committable();
            prop_assert_eq!(previous, Some(offsets[0]));
            for &i in &order {
                prop_assert!(t.is_pending(offsets[i]));
                prop_assert!(t.complete(offsets[i]));
                done[i] = true;
                let expected = match done.iter().position(|d| !d) {
                    Some(first_open) => offsets[first_open],
                    None => offsets[offsets.len() - 1] + 1,
                };
                let got = t.committable();
                prop_assert_eq!(got, Some(expected));
                prop_assert!(got >= previous, "committable moved backwards");
                // Never past an unfinished message.
                for (j, &o) in offsets.iter().enumerate() {
                    if !done[j] {
                        prop_assert!(o >= expected);
                    }
                }
                previous = got;
            }
            prop_assert_eq!(t.pending(), done.iter().filter(|d| !**d).count());
        }

        /// Interleaving registration with completion gives the same answer as registering
        /// everything first.
        #[test]
        fn interleaved_registration_agrees((offsets, order) in offsets_and_completion()) {
            let mut t = OffsetTracker::new();
            let mut registered = 0;
            let mut done = vec![false; offsets.len()];
            for &i in &order {
                while registered <= i {
                    t.register(offsets[registered]).unwrap();
                    registered += 1;
                }
                t.complete(offsets[i]);
                done[i] = true;
                let expected = match done[..registered].iter().position(|d| !d) {
                    Some(first_open) => offsets[first_open],
                    None => offsets[registered - 1] + 1,
                };
                prop_assert_eq!(t.committable(), Some(expected));
            }
        }
    }
}
