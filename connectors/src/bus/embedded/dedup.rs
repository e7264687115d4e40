//! The duplicate window of one subject: recent `msg_id`s and where they were stored, so that a
//! publisher's retry is answered with the first receipt instead of being stored twice.
//!
//! Bounded both ways, like JetStream's duplicate window: an id is forgotten when it is older
//! than the window or when the window holds its maximum number of ids (oldest first).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Recently published `msg_id`s of one subject.
#[derive(Debug)]
pub(super) struct DedupWindow {
    window: Duration,
    entries_max: usize,
    /// Id → sequence of the stored message.
    by_id: HashMap<Arc<str>, u64>,
    /// Ids in the order they were remembered, to forget the oldest first.
    order: VecDeque<(Instant, Arc<str>, u64)>,
}

impl DedupWindow {
    /// An empty window; `entries_max` of 0 disables dedup.
    pub(super) fn new(window: Duration, entries_max: usize) -> Self {
        DedupWindow {
            window,
            entries_max,
            by_id: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The sequence stored under `id`, if it was published inside the window.
    pub(super) fn lookup(&mut self, id: &str, now: Instant) -> Option<u64> {
        self.expire(now);
        self.by_id.get(id).copied()
    }

    /// Remembers that `id` was stored at `seq`.
    pub(super) fn remember(&mut self, id: Arc<str>, seq: u64, now: Instant) {
        if self.entries_max == 0 {
            return;
        }
        while self.order.len() >= self.entries_max {
            self.forget_oldest();
        }
        self.by_id.insert(Arc::clone(&id), seq);
        self.order.push_back((now, id, seq));
    }

    /// Ids currently remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    /// Forgets the ids older than the window.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.window {
                break;
            }
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, id, seq)) = self.order.pop_front() {
            // The map entry belongs to this record unless the id was remembered again since.
            if self.by_id.get(&id) == Some(&seq) {
                self.by_id.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(120);

    fn id(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn finds_an_id_inside_the_window() {
        let start = Instant::now();
        let mut window = DedupWindow::new(WINDOW, 10);
        window.remember(id("a"), 7, start);
        assert_eq!(window.lookup("a", start + WINDOW / 2), Some(7));
        assert_eq!(window.lookup("b", start + WINDOW / 2), None);
    }

    #[test]
    fn forgets_an_id_once_the_window_has_passed() {
        let start = Instant::now();
        let mut window = DedupWindow::new(WINDOW, 10);
        window.remember(id("a"), 7, start);
        window.remember(id("b"), 8, start + Duration::from_secs(60));
        assert_eq!(window.lookup("a", start + WINDOW), None);
        assert_eq!(window.lookup("b", start + WINDOW), Some(8));
        assert_eq!(window.len(), 1);
    }

    #[test]
    fn forgets_the_oldest_id_beyond_its_entry_limit() {
        let start = Instant::now();
        let mut window = DedupWindow::new(WINDOW, 2);
        window.remember(id("a"), 1, start);
        window.remember(id("b"), 2, start);
        window.remember(id("c"), 3, start);
        assert_eq!(window.len(), 2);
        assert_eq!(window.lookup("a", start), None);
        assert_eq!(window.lookup("b", start), Some(2));
        assert_eq!(window.lookup("c", start), Some(3));
    }

    #[test]
    fn an_id_remembered_again_survives_forgetting_its_older_record() {
        let start = Instant::now();
        let mut window = DedupWindow::new(WINDOW, 10);
        window.remember(id("a"), 1, start);
        window.remember(id("a"), 5, start + Duration::from_secs(100));
        assert_eq!(window.lookup("a", start + WINDOW), Some(5));
    }

    #[test]
    fn zero_entries_disables_dedup() {
        let start = Instant::now();
        let mut window = DedupWindow::new(WINDOW, 0);
        window.remember(id("a"), 1, start);
        assert_eq!(window.lookup("a", start), None);
    }
}
