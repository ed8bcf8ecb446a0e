//! Pending requests and the choice of the next batch.
//!
//! Every request's sequences wait here until a batch takes them. A batch takes sequences round-robin, one from each
//! waiting request in turn, until the token budget is spent: a session sending one query gets into the next batch
//! even while another session's 100,000-text backfill is queued, and requests share the model in proportion to how
//! many are waiting, not to their size. Lanes split small and large requests, so that two batch threads can compute
//! interactive queries next to bulk work. Within a request, sequences go shortest first (the model then packs each
//! batch by length itself). Canceled requests are dropped here, before anything is computed for them.
//!
//! Above all that, priority classes ([`Priority`]): a batch takes from the interactive requests first, then from the
//! async worker's, then from backfills', so a backlog of async or backfill work never delays a session's query by
//! more than the batch already computing. A batch of only async or backfill work takes half the token budget: its
//! layers are shorter, and an interactive batch waits less for the one in flight (the server pauses large batches
//! between layers while more urgent ones compute).
//!
//! Every kind of work is a request here: texts to embed, a document's chunks, a rerank's query-document pairs. Each
//! request is for one of two models ([`Model`]), and a batch is for one model: where both have work of the first
//! class waiting, a lane's batches alternate between them, so a stream of reranks and a stream of queries each get
//! every other batch. Which running batch yields to which is [`Urgency`]'s rule.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::protocol::Priority;

/// Which requests a batch may take from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Only small requests (at most `small_tokens` tokens in all): a lane that a large request never occupies, so an
    /// interactive query never waits behind a bulk batch, and concurrent queries share its batches.
    Interactive { small_tokens: usize },
    /// Only large requests (more than `small_tokens` tokens): bulk work, computed next to the interactive lane.
    Bulk { small_tokens: usize },
}

impl Lane {
    fn index(self) -> usize {
        match self {
            Lane::Interactive { .. } => 0,
            Lane::Bulk { .. } => 1,
        }
    }
}

/// The model that computes a request: the embedder, or the reranker (a second model on the same cores).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    Embedder,
    Reranker,
}

impl Model {
    fn other(self) -> Model {
        match self {
            Model::Embedder => Model::Reranker,
            Model::Reranker => Model::Embedder,
        }
    }
}

/// How urgent a computing batch is: a batch that may pause ([`Batch::may_pause`]) pauses at its next layer while a
/// batch of higher urgency computes (the server's pause points), so that a session's query gets the cores whatever
/// else runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Urgency {
    /// Async and backfill work, and a session's large document: nobody waits for one batch of it.
    Background = 0,
    /// A large request a session waits for (a 50-candidate rerank, `embed()` of many texts): it yields to queries.
    LargeInteractive = 1,
    /// Small requests a session waits for: a query's embedding or a rerank of a few candidates.
    Query = 2,
}

impl Urgency {
    pub const ALL: [Urgency; 3] = [Urgency::Background, Urgency::LargeInteractive, Urgency::Query];
}

/// Sequences taken from the queue to compute together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub model: Model,
    pub lane: Lane,
    pub items: Vec<Item>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether this batch waits for more urgent ones: only a batch of large requests. A batch of the interactive
    /// lane is small, and queries may be queued behind it in that lane: pausing it for a large batch would make
    /// them wait for the large one (a priority inversion).
    pub fn may_pause(&self) -> bool {
        matches!(self.lane, Lane::Bulk { .. })
    }

    pub fn urgency(&self) -> Urgency {
        match (self.items.iter().any(|i| i.priority == Priority::Interactive), self.lane) {
            (false, _) => Urgency::Background,
            (true, Lane::Bulk { .. }) => Urgency::LargeInteractive,
            (true, Lane::Interactive { .. }) => Urgency::Query,
        }
    }
}

struct Entry {
    id: u64,
    priority: Priority,
    model: Model,
    /// (index in the request, token ids), shortest first; `next` is the first not yet handed out.
    seqs: Vec<(usize, Vec<u32>)>,
    next: usize,
    total_tokens: usize,
    canceled: Arc<AtomicBool>,
}

impl Entry {
    fn remaining(&self) -> usize {
        self.seqs.len() - self.next
    }
}

/// One sequence of a batch: its request, its index in that request, its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub request: u64,
    pub priority: Priority,
    pub index: usize,
    pub ids: Vec<u32>,
}

/// The queue is full: `queued` texts wait, `limit` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    pub queued: usize,
    pub limit: usize,
}

pub struct Queue {
    entries: VecDeque<Entry>,
    queued_texts: usize,
    limit: usize,
    /// The model each lane's last batch was for.
    last_model: [Model; 2],
}

impl Queue {
    /// A queue that holds at most `limit` texts waiting to be computed.
    pub fn new(limit: usize) -> Self {
        Queue { entries: VecDeque::new(), queued_texts: 0, limit, last_model: [Model::Reranker; 2] }
    }

    /// Texts (sequences: a text, a chunk, a query-document pair) waiting.
    pub fn queued_texts(&self) -> usize {
        self.queued_texts
    }

    /// Would `texts` more take the queue over its limit? (Never when nothing waits: no request is refused for its
    /// size alone.)
    pub fn full_for(&self, texts: usize) -> Option<Full> {
        (!self.entries.is_empty() && self.queued_texts + texts > self.limit)
            .then_some(Full { queued: self.queued_texts, limit: self.limit })
    }

    pub fn queued_requests(&self) -> usize {
        self.entries.len()
    }

    /// Queues a request's token sequences. Refused when they would take the queue over its limit (a request alone
    /// in an empty queue is always taken, so no request is refused for its size alone).
    pub fn push(
        &mut self,
        id: u64,
        (priority, model): (Priority, Model),
        seqs: Vec<Vec<u32>>,
        canceled: Arc<AtomicBool>,
    ) -> Result<(), Full> {
        if let Some(full) = self.full_for(seqs.len()) {
            return Err(full);
        }
        let mut seqs: Vec<(usize, Vec<u32>)> = seqs.into_iter().enumerate().collect();
        seqs.sort_by_key(|(_, ids)| ids.len());
        let total_tokens = seqs.iter().map(|(_, ids)| ids.len()).sum();
        self.queued_texts += seqs.len();
        self.entries.push_back(Entry { id, priority, model, seqs, next: 0, total_tokens, canceled });
        Ok(())
    }

    /// Drops canceled requests; returns their ids.
    pub fn drop_canceled(&mut self) -> Vec<u64> {
        let mut dropped = Vec::new();
        let queued = &mut self.queued_texts;
        self.entries.retain(|e| {
            let keep = !e.canceled.load(Ordering::Relaxed);
            if !keep {
                *queued -= e.remaining();
                dropped.push(e.id);
            }
            keep
        });
        dropped
    }

    /// The next batch for `lane`: the first priority class with work for the lane decides the model (the other one's
    /// turn if both have work there); sequences for that model are taken round-robin across the requests of that
    /// class, then of the next class, at least one sequence, then as many as fit in `budget` tokens. Empty when
    /// nothing waits for this lane.
    pub fn next_batch(&mut self, budget: usize, lane: Lane) -> Batch {
        let eligible = |e: &Entry| {
            e.remaining() > 0
                && match lane {
                    Lane::Interactive { small_tokens } => e.total_tokens <= small_tokens,
                    Lane::Bulk { small_tokens } => e.total_tokens > small_tokens,
                }
        };
        let waiting = |class: Priority, model: Model| {
            self.entries.iter().any(|e| e.priority == class && e.model == model && eligible(e))
        };
        let turn = self.last_model[lane.index()].other();
        let model = Priority::ALL
            .iter()
            .find_map(|&class| [turn, turn.other()].into_iter().find(|&m| waiting(class, m)))
            .unwrap_or(turn);
        let mut batch = Batch { model, lane, items: Vec::new() };
        let mut tokens = 0;
        let mut limit = budget;
        'classes: for class in Priority::ALL {
            if class != Priority::Interactive && batch.is_empty() {
                limit = budget / 2;
            }
            loop {
                let mut took = false;
                for e in self.entries.iter_mut().filter(|e| e.priority == class && e.model == model && eligible(e)) {
                    let len = e.seqs[e.next].1.len();
                    if !batch.is_empty() && tokens + len > limit {
                        break 'classes;
                    }
                    let (index, ids) = std::mem::take(&mut e.seqs[e.next]);
                    e.next += 1;
                    tokens += len;
                    batch.items.push(Item { request: e.id, priority: e.priority, index, ids });
                    took = true;
                }
                if !took {
                    break;
                }
            }
        }
        if !batch.is_empty() {
            self.last_model[lane.index()] = model;
        }
        self.queued_texts -= batch.items.len();
        self.entries.retain(|e| e.remaining() > 0);
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(lens: &[usize]) -> Vec<Vec<u32>> {
        lens.iter().map(|&n| vec![7; n]).collect()
    }

    fn flag() -> Arc<AtomicBool> {
        Arc::new(AtomicBool::new(false))
    }

    /// An interactive request for the embedder.
    fn push(q: &mut Queue, id: u64, seqs: Vec<Vec<u32>>, canceled: Arc<AtomicBool>) -> Result<(), Full> {
        q.push(id, (Priority::Interactive, Model::Embedder), seqs, canceled)
    }

    /// A lane that takes every request.
    const ANY: Lane = Lane::Interactive { small_tokens: usize::MAX };

    fn take(q: &mut Queue, budget: usize, lane: Lane) -> Vec<Item> {
        q.next_batch(budget, lane).items
    }

    fn item(request: u64, index: usize, ids: Vec<u32>) -> Item {
        Item { request, priority: Priority::Interactive, index, ids }
    }

    #[test]
    fn a_single_query_is_not_starved_by_a_bulk_request() {
        let mut q = Queue::new(1_000_000);
        push(&mut q, 1, seqs(&[20; 100_000]), flag()).unwrap();
        let first = take(&mut q, 200, ANY);
        assert_eq!(first.len(), 10);
        push(&mut q, 2, seqs(&[30]), flag()).unwrap();
        let second = take(&mut q, 200, ANY);
        assert!(second.iter().any(|i| i.request == 2), "the query waits for the next batch only");
        assert!(second.iter().map(|i| i.ids.len()).sum::<usize>() <= 200);
        // The interactive lane takes the small request and never the bulk one; the bulk lane the other way round.
        push(&mut q, 3, seqs(&[12]), flag()).unwrap();
        let (interactive, bulk) = (Lane::Interactive { small_tokens: 512 }, Lane::Bulk { small_tokens: 512 });
        assert!(take(&mut q, 200, bulk).iter().all(|i| i.request == 1));
        assert_eq!(take(&mut q, 200, interactive), vec![item(3, 0, vec![7; 12])]);
        assert!(take(&mut q, 200, interactive).is_empty());
    }

    #[test]
    fn requests_share_batches_round_robin_and_every_sequence_goes_once() {
        let mut q = Queue::new(100);
        push(&mut q, 1, seqs(&[5, 1, 3]), flag()).unwrap();
        push(&mut q, 2, seqs(&[2, 2]), flag()).unwrap();
        let batch = take(&mut q, 8, ANY);
        // Round 1: request 1's shortest (1), request 2's first (2); round 2: request 1's next (3), request 2 (2).
        let got: Vec<(u64, usize)> = batch.iter().map(|i| (i.request, i.index)).collect();
        assert_eq!(got, vec![(1, 1), (2, 0), (1, 2), (2, 1)]);
        assert_eq!(q.queued_texts(), 1);
        let rest = take(&mut q, 8, ANY);
        assert_eq!(rest, vec![item(1, 0, vec![7; 5])]);
        assert_eq!((q.queued_texts(), q.queued_requests()), (0, 0));
    }

    #[test]
    fn a_sequence_over_the_budget_goes_alone() {
        let mut q = Queue::new(100);
        push(&mut q, 1, seqs(&[500, 10]), flag()).unwrap();
        assert_eq!(take(&mut q, 64, ANY).len(), 1);
        assert_eq!(take(&mut q, 64, ANY)[0].ids.len(), 500);
    }

    #[test]
    fn the_queue_is_bounded_and_canceled_requests_are_dropped_before_compute() {
        let mut q = Queue::new(10);
        push(&mut q, 1, seqs(&[1; 8]), flag()).unwrap();
        assert_eq!(push(&mut q, 2, seqs(&[1; 3]), flag()), Err(Full { queued: 8, limit: 10 }));
        let gone = flag();
        push(&mut q, 3, seqs(&[1; 2]), gone.clone()).unwrap();
        gone.store(true, Ordering::Relaxed);
        assert_eq!(q.drop_canceled(), vec![3]);
        assert_eq!(q.queued_texts(), 8);
        assert!(take(&mut q, 100, ANY).iter().all(|i| i.request == 1));
        // Alone in an empty queue, a request larger than the limit is taken.
        assert!(push(&mut q, 4, seqs(&[1; 50]), flag()).is_ok());
    }

    #[test]
    fn interactive_work_goes_first_then_async_then_backfill() {
        let mut q = Queue::new(1_000_000);
        q.push(1, (Priority::Backfill, Model::Embedder), seqs(&[10; 100]), flag()).unwrap();
        q.push(2, (Priority::Async, Model::Embedder), seqs(&[10; 100]), flag()).unwrap();
        // Async before backfill, whatever the order of arrival; half the budget for a batch of lower priority.
        let batch = take(&mut q, 100, ANY);
        assert_eq!(batch.len(), 5);
        assert!(batch.iter().all(|i| i.request == 2 && i.priority == Priority::Async));
        // A query arriving behind both is the whole next batch's first pick; the rest of the budget goes to the
        // next class.
        q.push(3, (Priority::Interactive, Model::Embedder), seqs(&[10; 2]), flag()).unwrap();
        let batch = take(&mut q, 100, ANY);
        let got: Vec<u64> = batch.iter().map(|i| i.request).collect();
        assert_eq!(got, vec![3, 3, 2, 2, 2, 2, 2, 2, 2, 2]);
        // Backfill runs once the async work is done.
        while take(&mut q, 100, ANY).iter().any(|i| i.request == 2) {}
        assert!(take(&mut q, 100, ANY).iter().all(|i| i.request == 1));
    }

    #[test]
    fn a_batch_is_for_one_model_and_the_models_take_turns_within_a_class() {
        let mut q = Queue::new(1_000);
        let (e, r) = (Model::Embedder, Model::Reranker);
        push(&mut q, 1, seqs(&[10; 10]), flag()).unwrap();
        q.push(2, (Priority::Interactive, r), seqs(&[10; 10]), flag()).unwrap();
        let batches: Vec<(Model, Vec<u64>)> = (0..4)
            .map(|_| q.next_batch(40, ANY))
            .map(|b| (b.model, b.items.iter().map(|i| i.request).collect()))
            .collect();
        assert_eq!(batches, vec![(e, vec![1; 4]), (r, vec![2; 4]), (e, vec![1; 4]), (r, vec![2; 4])]);
        // Priority before turns: the reranker's turn, but it has only async work and the embedder a query.
        q.push(3, (Priority::Async, Model::Reranker), seqs(&[10; 4]), flag()).unwrap();
        while !take(&mut q, 1_000, ANY).is_empty() {}
        q.push(4, (Priority::Async, Model::Reranker), seqs(&[10; 4]), flag()).unwrap();
        push(&mut q, 5, seqs(&[10]), flag()).unwrap();
        let last = q.next_batch(1_000, ANY);
        assert_eq!((last.model, last.items.len()), (Model::Embedder, 1), "the query, not the reranker's async turn");
        assert_eq!(q.next_batch(1_000, ANY).model, Model::Reranker);
    }

    #[test]
    fn queries_are_the_most_urgent_then_large_interactive_work_then_the_rest() {
        let mut q = Queue::new(1_000);
        let (small, large) = (Lane::Interactive { small_tokens: 20 }, Lane::Bulk { small_tokens: 20 });
        push(&mut q, 1, seqs(&[10]), flag()).unwrap();
        q.push(2, (Priority::Interactive, Model::Reranker), seqs(&[10; 5]), flag()).unwrap();
        q.push(3, (Priority::Async, Model::Embedder), seqs(&[10; 5]), flag()).unwrap();
        q.push(4, (Priority::Backfill, Model::Embedder), seqs(&[5]), flag()).unwrap();
        assert_eq!(q.next_batch(1_000, small).urgency(), Urgency::Query);
        assert_eq!(q.next_batch(1_000, large).urgency(), Urgency::LargeInteractive);
        assert_eq!(q.next_batch(1_000, large).urgency(), Urgency::Background);
        // A small request of the async worker's in the small lane is background work too, but never waits for a
        // large batch: queries may be queued behind it.
        let small_async = q.next_batch(1_000, small);
        assert_eq!((small_async.urgency(), small_async.may_pause()), (Urgency::Background, false));
        assert!(Urgency::Query > Urgency::LargeInteractive && Urgency::LargeInteractive > Urgency::Background);
    }
}
