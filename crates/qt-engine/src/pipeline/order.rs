//! Per-key ordering (`ordering: key` / `partition`): two messages with the same key never
//! run at once and run in arrival order; different keys run in parallel.
//!
//! Each runnable message gets a link in its key's chain: it waits for its predecessor's
//! signal and signals its successor when its run ends (by dropping its sender, so a
//! panicking or cancelled run releases the chain too). A waiting message holds no agent
//! slot, so waiting can never starve the message it waits for. Batches link their messages
//! one batch at a time, in arrival order (see `pipeline::batch`).

use std::collections::HashMap;

use tokio::sync::oneshot;

/// Waits for the previous message of the same key.
#[derive(Debug)]
pub(crate) struct WaitTurn(Option<oneshot::Receiver<()>>);

impl WaitTurn {
    pub fn none() -> Self {
        Self(None)
    }

    /// Whether there is nothing to wait for (no earlier message of the key is linked).
    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }

    pub async fn wait(self) {
        if let Some(rx) = self.0 {
            // Err means the predecessor dropped its sender: its run is over either way.
            let _ = rx.await;
        }
    }
}

/// Held while a message runs; dropping it passes the turn to the next message of the key.
#[derive(Debug)]
pub(crate) struct PassTurn(#[allow(dead_code)] Option<oneshot::Sender<()>>);

impl PassTurn {
    pub fn none() -> Self {
        Self(None)
    }
}

#[derive(Debug)]
pub(crate) struct Sequencer {
    tails: HashMap<String, oneshot::Receiver<()>>,
    prune_above: usize,
}

impl Sequencer {
    /// `expected_keys` sizes the table; finished chains are pruned once it holds far more.
    pub fn new(expected_keys: usize) -> Self {
        Self {
            tails: HashMap::new(),
            prune_above: expected_keys.max(64) * 4,
        }
    }

    /// Appends a message to its key's chain.
    pub fn link(&mut self, key: String) -> (WaitTurn, PassTurn) {
        let (tx, rx) = oneshot::channel();
        let previous = self.tails.insert(key, rx);
        if self.tails.len() > self.prune_above {
            self.prune();
        }
        (WaitTurn(previous), PassTurn(Some(tx)))
    }

    /// Drops chains whose last message has finished.
    fn prune(&mut self) {
        self.tails
            .retain(|_, rx| matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tails.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use parking_lot::Mutex;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Ordering: for random keys and random run times, runs of one key never overlap
        /// and happen in arrival order.
        #[test]
        fn same_key_runs_serially_in_order(keys in prop::collection::vec(0u8..4, 1..40), delays in prop::collection::vec(0u64..3, 40)) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
            rt.block_on(async {
                let mut seq = Sequencer::new(4);
                let log = Arc::new(Mutex::new(Vec::<(u8, usize, bool)>::new()));
                let mut tasks = Vec::new();
                for (i, k) in keys.iter().copied().enumerate() {
                    let (wait, pass_turn) = seq.link(k.to_string());
                    let log = log.clone();
                    let delay = delays[i];
                    tasks.push(tokio::spawn(async move {
                        wait.wait().await;
                        log.lock().push((k, i, true));
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        log.lock().push((k, i, false));
                        drop(pass_turn);
                    }));
                }
                for t in tasks { t.await.unwrap(); }
                let log = log.lock();
                let mut running: std::collections::HashMap<u8, usize> = Default::default();
                let mut last_started: std::collections::HashMap<u8, usize> = Default::default();
                for (k, i, start) in log.iter().copied() {
                    if start {
                        prop_assert!(!running.contains_key(&k), "key {} ran twice at once", k);
                        if let Some(prev) = last_started.get(&k) { prop_assert!(*prev < i, "key {} out of order", k); }
                        running.insert(k, i);
                        last_started.insert(k, i);
                    } else {
                        running.remove(&k);
                    }
                }
                Ok(())
            })?;
        }
    }

    #[tokio::test]
    async fn finished_chains_are_pruned() {
        let mut seq = Sequencer::new(1);
        for i in 0..1000 {
            let (_w, pass_turn) = seq.link(format!("k{i}"));
            drop(pass_turn);
        }
        assert!(seq.len() <= 257, "{}", seq.len());
    }
}
