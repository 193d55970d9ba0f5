//! The bounded history of flows: the oldest goes when a new one comes and
//! the buffer is full, so it never holds more than its bound.
use std::{collections::VecDeque, sync::Arc};

use super::{filter::Filter, flow::Flow};

#[derive(Debug)]
pub struct FlowBuffer {
    bound: usize,
    flows: VecDeque<Arc<Flow>>,
}

impl FlowBuffer {
    /// A buffer of at most `bound` flows (0: keeps none).
    pub fn new(bound: usize) -> Self {
        // Grown as flows come, up to the bound.
        Self { bound, flows: VecDeque::with_capacity(bound.min(1024)) }
    }

    pub fn push(&mut self, flow: Arc<Flow>) {
        if self.bound == 0 {
            return;
        }
        while self.flows.len() >= self.bound {
            self.flows.pop_front();
        }
        self.flows.push_back(flow);
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn bound(&self) -> usize {
        self.bound
    }

    /// The last `last` flows (all: None) that `filter` lets through and that
    /// happened at or after `since_unix_ns`, oldest first.
    pub fn query(&self, filter: &Filter, since_unix_ns: Option<u64>, last: Option<usize>) -> Vec<Arc<Flow>> {
        let mut out: Vec<Arc<Flow>> = self
            .flows
            .iter()
            .rev()
            .filter(|f| since_unix_ns.is_none_or(|s| f.time_unix_ns >= s) && filter.matches(f))
            .take(last.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::flows::filter::tests::flow;

    #[test]
    fn never_grows_past_its_bound_and_drops_the_oldest() {
        let mut b = FlowBuffer::new(3);
        for i in 0..10u64 {
            let mut f = flow("x/a", "y/b", "allowed");
            f.time_unix_ns = i;
            b.push(Arc::new(f));
            assert!(b.len() <= 3);
        }
        let all = b.query(&Filter::default(), None, None);
        assert_eq!(all.iter().map(|f| f.time_unix_ns).collect::<Vec<_>>(), [7, 8, 9]);
        let last = b.query(&Filter::default(), None, Some(2));
        assert_eq!(last.iter().map(|f| f.time_unix_ns).collect::<Vec<_>>(), [8, 9]);
        let since = b.query(&Filter::default(), Some(9), None);
        assert_eq!(since.len(), 1);
        assert!(b.flows.capacity() < 1024);

        let mut none = FlowBuffer::new(0);
        none.push(Arc::new(flow("x/a", "y/b", "allowed")));
        assert!(none.is_empty());
    }

    #[test]
    fn queries_filter_before_taking_the_last() {
        let mut b = FlowBuffer::new(10);
        b.push(Arc::new(flow("x/a", "y/b", "dropped")));
        for _ in 0..5 {
            b.push(Arc::new(flow("x/a", "y/b", "allowed")));
        }
        let filter = Filter { verdict: Some("dropped".into()), ..Filter::default() };
        assert_eq!(b.query(&filter, None, Some(1)).len(), 1);
    }
}
