//! A keyed work queue for level-triggered controllers, as client-go's rate-limited workqueue:
//!
//! - a key added while it waits is not added twice (events coalesce);
//! - a key is handed to at most one worker at a time: added while a worker has it, it waits
//!   until that worker is [`done`](WorkQueue::done) and is then handed out once more;
//! - a key whose reconcile failed comes back after a per-key back-off that doubles with each
//!   failure ([`retry`](WorkQueue::retry)), until [`forget`](WorkQueue::forget) resets it.
//!
//! A queue made [`with_metrics`](WorkQueue::with_metrics) reports client-go's workqueue
//! metrics under its name: `workqueue_depth`, `workqueue_adds_total`,
//! `workqueue_retries_total`, `workqueue_queue_duration_seconds` (from a key's add to a worker
//! taking it).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// The first retry's delay; each further failure doubles it, up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_millis(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueName {
    name: String,
}

/// client-go's workqueue metrics, one family each, labelled by queue name; registered once
/// per process and shared by its queues.
pub struct QueueMetrics {
    depth: Family<QueueName, Gauge>,
    adds: Family<QueueName, Counter>,
    retries: Family<QueueName, Counter>,
    queue_seconds: Family<QueueName, Histogram, fn() -> Histogram>,
}

impl QueueMetrics {
    pub fn register(metrics: &skiff_proto::metrics::Metrics) -> Arc<QueueMetrics> {
        let m = QueueMetrics {
            depth: Family::default(),
            adds: Family::default(),
            retries: Family::default(),
            queue_seconds: Family::new_with_constructor(queue_seconds),
        };
        metrics.register("workqueue_depth", "Keys waiting in the queue", m.depth.clone());
        metrics.register("workqueue_adds", "Keys added to the queue", m.adds.clone());
        metrics.register("workqueue_retries", "Keys queued again after a failure", m.retries.clone());
        metrics.register(
            "workqueue_queue_duration_seconds",
            "How long a key waits in the queue before a worker takes it",
            m.queue_seconds.clone(),
        );
        Arc::new(m)
    }
}

/// client-go's buckets: 1 µs to 10 s by tens.
fn queue_seconds() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1e-6, 10.0, 8))
}

/// One queue's series.
struct Instruments {
    depth: Gauge,
    adds: Counter,
    retries: Counter,
    queue_seconds: Histogram,
}

struct State<T> {
    ready: VecDeque<T>,
    /// When each key in `ready` was added.
    queued_at: HashMap<T, std::time::Instant>,
    /// Keys in `ready`.
    waiting: HashSet<T>,
    /// Keys a worker has now.
    active: HashSet<T>,
    /// Active keys added again: handed out once more when done.
    again: HashSet<T>,
    failures: HashMap<T, u32>,
    /// When each key with a timer armed is due (one timer per key: the earliest).
    timers: HashMap<T, tokio::time::Instant>,
    closed: bool,
}

/// Clones share the queue.
pub struct WorkQueue<T> {
    state: Arc<Mutex<State<T>>>,
    wake: Arc<Notify>,
    metrics: Option<Arc<Instruments>>,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        WorkQueue { state: self.state.clone(), wake: self.wake.clone(), metrics: self.metrics.clone() }
    }
}

impl<T: Clone + Eq + Hash + Send + 'static> Default for WorkQueue<T> {
    fn default() -> Self {
        WorkQueue::new()
    }
}

impl<T: Clone + Eq + Hash + Send + 'static> WorkQueue<T> {
    pub fn new() -> WorkQueue<T> {
        let state = State {
            ready: VecDeque::new(),
            queued_at: HashMap::new(),
            waiting: HashSet::new(),
            active: HashSet::new(),
            again: HashSet::new(),
            failures: HashMap::new(),
            timers: HashMap::new(),
            closed: false,
        };
        WorkQueue { state: Arc::new(Mutex::new(state)), wake: Arc::new(Notify::new()), metrics: None }
    }

    /// A queue reporting its metrics as `name` (a controller's name, as client-go's).
    pub fn with_metrics(name: &str, metrics: &QueueMetrics) -> WorkQueue<T> {
        let label = QueueName { name: name.to_string() };
        let instruments = Instruments {
            depth: metrics.depth.get_or_create(&label).clone(),
            adds: metrics.adds.get_or_create(&label).clone(),
            retries: metrics.retries.get_or_create(&label).clone(),
            queue_seconds: metrics.queue_seconds.get_or_create(&label).clone(),
        };
        WorkQueue { metrics: Some(Arc::new(instruments)), ..WorkQueue::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().expect("not poisoned")
    }

    /// Queues `key` (coalesced with a queued one; deferred while a worker has it).
    pub fn add(&self, key: T) {
        let mut s = self.lock();
        if s.closed || s.waiting.contains(&key) {
            return;
        }
        if s.active.contains(&key) {
            s.again.insert(key);
            return;
        }
        s.waiting.insert(key.clone());
        s.queued_at.insert(key.clone(), std::time::Instant::now());
        s.ready.push_back(key);
        if let Some(m) = &self.metrics {
            m.adds.inc();
            m.depth.set(s.ready.len() as i64);
        }
        drop(s);
        self.wake.notify_one();
    }

    /// Queues `key` after `delay`. A key already due sooner keeps its earlier time; one due
    /// later is brought forward (client-go's delaying queue): one timer per key counts, however
    /// often it is asked for.
    pub fn add_after(&self, key: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let at = tokio::time::Instant::now() + delay;
        {
            let mut s = self.lock();
            if s.closed || s.timers.get(&key).is_some_and(|due| *due <= at) {
                return;
            }
            s.timers.insert(key.clone(), at);
        }
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let due = {
                let mut s = queue.lock();
                // Superseded by an earlier timer (which fired, or will) if not ours.
                let ours = s.timers.get(&key) == Some(&at);
                if ours {
                    s.timers.remove(&key);
                }
                ours
            };
            if due {
                queue.add(key);
            }
        });
    }

    /// The next key, waiting for one; `None` once the queue is closed. The caller owns the key
    /// until it calls [`done`](Self::done).
    pub async fn next(&self) -> Option<T> {
        loop {
            // Registered before looking, so an add between the look and the wait is not lost.
            let woken = self.wake.notified();
            {
                let mut s = self.lock();
                if s.closed {
                    return None;
                }
                if let Some(key) = s.ready.pop_front() {
                    s.waiting.remove(&key);
                    let queued_at = s.queued_at.remove(&key);
                    if let Some(m) = &self.metrics {
                        m.depth.set(s.ready.len() as i64);
                        if let Some(at) = queued_at {
                            m.queue_seconds.observe(at.elapsed().as_secs_f64());
                        }
                    }
                    s.active.insert(key.clone());
                    let more = !s.ready.is_empty();
                    drop(s);
                    if more {
                        // Another worker may take the rest.
                        self.wake.notify_one();
                    }
                    return Some(key);
                }
            }
            woken.await;
        }
    }

    /// The worker is finished with `key`; if it was added meanwhile it is queued again.
    pub fn done(&self, key: &T) {
        let mut s = self.lock();
        s.active.remove(key);
        if s.again.remove(key) {
            drop(s);
            self.add(key.clone());
        }
    }

    /// `key` failed: queue it again after its back-off (which doubles per failure); returns
    /// the delay. Call [`done`](Self::done) as well.
    pub fn retry(&self, key: T) -> Duration {
        let delay = {
            let mut s = self.lock();
            let n = s.failures.entry(key.clone()).or_insert(0);
            let delay = BASE_BACKOFF.saturating_mul(1u32 << (*n).min(20)).min(MAX_BACKOFF);
            *n += 1;
            delay
        };
        if let Some(m) = &self.metrics {
            m.retries.inc();
        }
        self.add_after(key, delay);
        delay
    }

    /// `key` succeeded: its next failure starts the back-off afresh.
    pub fn forget(&self, key: &T) {
        self.lock().failures.remove(key);
    }

    /// Keys waiting to be handed out.
    pub fn len(&self) -> usize {
        self.lock().ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends the queue: [`next`](Self::next) returns `None` from now on.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `next` hands out within `within` (paused time advances as the runtime idles).
    async fn next_within(q: &WorkQueue<&'static str>, within: Duration) -> Option<&'static str> {
        tokio::time::timeout(within, q.next()).await.ok().flatten()
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_adds_of_a_waiting_key_coalesce() {
        let q = WorkQueue::new();
        for _ in 0..5 {
            q.add("a");
        }
        q.add("b");
        assert_eq!(q.len(), 2);
        assert_eq!(next_within(&q, Duration::from_secs(1)).await, Some("a"));
        assert_eq!(next_within(&q, Duration::from_secs(1)).await, Some("b"));
        assert_eq!(next_within(&q, Duration::from_secs(60)).await, None, "a was handed out once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_is_never_handed_to_two_workers_at_once() {
        let q = WorkQueue::new();
        q.add("a");
        let first = next_within(&q, Duration::from_secs(1)).await;
        assert_eq!(first, Some("a"));
        // Changes arrive while the first worker reconciles "a".
        q.add("a");
        q.add("a");
        q.add("b");
        let second = tokio::spawn({
            let q = q.clone();
            async move { (next_within(&q, Duration::from_secs(1)).await, next_within(&q, Duration::from_secs(60)).await) }
        });
        let (b, blocked) = second.await.unwrap();
        assert_eq!(b, Some("b"), "other keys go on");
        assert_eq!(blocked, None, "a second worker got a key the first still has");
        // Done: the adds made meanwhile hand "a" out once more, once.
        q.done(&"a");
        assert_eq!(next_within(&q, Duration::from_secs(1)).await, Some("a"));
        q.done(&"a");
        assert_eq!(next_within(&q, Duration::from_secs(60)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_doubling_and_forget_starts_afresh() {
        let q = WorkQueue::new();
        let t0 = tokio::time::Instant::now();
        let mut delays = Vec::new();
        for _ in 0..4 {
            q.add("a");
            let k = q.next().await.unwrap();
            delays.push(q.retry(k));
            q.done(&k);
            let before = tokio::time::Instant::now();
            assert_eq!(next_within(&q, delays.last().unwrap().saturating_sub(Duration::from_millis(1))).await, None);
            let back = next_within(&q, Duration::from_secs(60)).await;
            assert_eq!(back, Some("a"), "the failed key comes back");
            assert!(before.elapsed() >= *delays.last().unwrap(), "it came back before its back-off");
            q.done(&"a");
        }
        assert_eq!(delays, [10, 20, 40, 80].map(Duration::from_millis));
        assert!(t0.elapsed() >= Duration::from_millis(150));
        q.forget(&"a");
        q.add("a");
        let k = q.next().await.unwrap();
        assert_eq!(q.retry(k), BASE_BACKOFF);
        q.done(&k);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_key_keeps_its_earliest_time_and_comes_once() {
        let q = WorkQueue::new();
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(30));
        q.add_after("a", Duration::from_secs(5));
        assert_eq!(q.lock().timers.len(), 1, "one timer per key");
        assert_eq!(next_within(&q, Duration::from_secs(4)).await, None, "not before its earliest time");
        assert_eq!(next_within(&q, Duration::from_secs(2)).await, Some("a"), "at its earliest time");
        q.done(&"a");
        assert_eq!(next_within(&q, Duration::from_secs(60)).await, None, "the later timers add nothing");
        assert!(q.lock().timers.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn closing_ends_every_waiting_worker() {
        let q: WorkQueue<&'static str> = WorkQueue::new();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                tokio::spawn({
                    let q = q.clone();
                    async move { q.next().await }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        q.close();
        for w in waiters {
            assert_eq!(w.await.unwrap(), None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_named_queue_reports_depth_adds_retries_and_waits() {
        let registry = skiff_proto::metrics::Metrics::default();
        let metrics = QueueMetrics::register(&registry);
        let q = WorkQueue::with_metrics("deployment", &metrics);
        q.add("a");
        q.add("a");
        q.add("b");
        let text = registry.text();
        assert!(text.contains(r#"workqueue_depth{name="deployment"} 2"#), "{text}");
        assert!(text.contains(r#"workqueue_adds_total{name="deployment"} 2"#), "coalesced adds count once: {text}");
        let k = q.next().await.unwrap();
        q.retry(k);
        q.done(&k);
        let text = registry.text();
        assert!(text.contains(r#"workqueue_depth{name="deployment"} 1"#), "{text}");
        assert!(text.contains(r#"workqueue_retries_total{name="deployment"} 1"#), "{text}");
        assert!(text.contains(r#"workqueue_queue_duration_seconds_count{name="deployment"} 1"#), "{text}");
    }
}
