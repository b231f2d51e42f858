//! Sending within providers' quotas, and time-critical work first. The one writer of
//! `channel_budgets`.
//!
//! - [`Limits`]: each channel's send budget shared by every worker process (`SMS_RATE_LIMIT`,
//!   `EMAIL_RATE_LIMIT`, `PUSH_RATE_LIMIT`, messages per second) and a provider's hold. Each
//!   channel has a token bucket row in Postgres (`channel_budgets`, taken atomically by the
//!   `take_send_tokens` function); each worker's gate takes tokens in batches for the sends
//!   waiting in it, highest priority first, exactly as many as are waiting (no worker keeps
//!   tokens it does not use at once), so the workers together never send more than
//!   `rate × seconds + burst` in any window. The bucket holds at most [`burst`] tokens
//!   (`max(1, rate / 10)`): after a quiet spell that many may leave at once. Over budget, sends
//!   wait; none is dropped and none leaves early.
//! - A provider's 429 (any transient refusal with `Retry-After`) holds the channel in every worker
//!   until then ([`Limits::provider_hold`]): the gates of all workers see `held_until` at their
//!   next take and wait it out.
//! - A channel without a rate limit has no budget to take: its sends pass at once, with no round
//!   trip and no wait, unless its provider asked to wait. That hold is known without a round
//!   trip per send: this worker's own at once, another worker's within [`HOLD_REFRESH`] (each
//!   worker reads the holds in force that often).
//! - [`PriorityPermits`]: the drain's send slots, handed out highest priority first (a reminder's
//!   chunk goes before the bulk chunks already waiting).
//!
//! Pausing a channel is an operator's decision stored by `dashlight_core::controls` and applied
//! when sends are claimed; what is here only paces sends already claimed.

use std::{
    cmp::Ordering,
    collections::BinaryHeap,
    sync::{
        Arc, Mutex,
        atomic::{self, AtomicI64},
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use dashlight_core::{config::RateLimits, kinds::Channel};
use sqlx::PgPool;
use tokio::sync::{Notify, oneshot};

/// How often each worker reads the providers' holds for its channels without a rate limit.
pub const HOLD_REFRESH: Duration = Duration::from_millis(100);

/// The bucket size for `rate` messages per second: a tenth of a second's worth, at least one.
pub fn burst(rate: f64) -> f64 {
    (rate / 10.0).max(1.0)
}

/// Every channel's gate, shared by the drain's send tasks.
#[derive(Clone)]
pub struct Limits {
    pool: PgPool,
    gates: Arc<[Gate; 3]>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rates: Vec<(&str, Option<f64>)> = self.gates.iter().map(|g| (g.channel.as_str(), g.rate)).collect();
        f.debug_struct("Limits").field("rates", &rates).finish()
    }
}

struct Gate {
    channel: Channel,
    rate: Option<f64>,
    waiting: Mutex<Queue>,
    wake: Notify,
    /// Until when (Unix ms) its provider asked it to wait, as last known: the hold of a channel
    /// without a rate limit, checked without a round trip.
    held_until_ms: AtomicI64,
}

impl Gate {
    /// Holds the gate until `until_ms` (Unix ms) unless it is held longer already.
    fn hold_until(&self, until_ms: i64) {
        self.held_until_ms.fetch_max(until_ms, atomic::Ordering::AcqRel);
    }

    /// Waits out the provider's hold as known (a channel without a rate limit). Returns at
    /// once, without yielding, when there is none.
    async fn wait_out_hold(&self) -> Duration {
        let mut started: Option<Instant> = None;
        loop {
            let left = self.held_until_ms.load(atomic::Ordering::Acquire) - Utc::now().timestamp_millis();
            if left <= 0 {
                break;
            }
            started.get_or_insert_with(Instant::now);
            tokio::time::sleep(Duration::from_millis(left.unsigned_abs())).await;
        }
        let Some(started) = started else {
            return Duration::ZERO;
        };
        let waited = started.elapsed();
        metrics::histogram!("dashlight_send_budget_wait_seconds", "channel" => self.channel.as_str()).record(waited.as_secs_f64());
        waited
    }
}

/// Waiters, highest priority first, then first come.
struct Queue {
    heap: BinaryHeap<Waiter>,
    seq: u64,
}

struct Waiter {
    priority: i32,
    seq: u64,
    n: usize,
    tx: oneshot::Sender<()>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority.cmp(&other.priority).then(other.seq.cmp(&self.seq))
    }
}

fn index(channel: Channel) -> usize {
    match channel {
        Channel::Email => 0,
        Channel::Sms => 1,
        Channel::Push => 2,
    }
}

impl Limits {
    /// The gates for `rates`; [`Limits::run`] must be running for sends to pass.
    pub fn new(pool: PgPool, rates: RateLimits) -> Self {
        let gate = |channel| Gate {
            channel,
            rate: rates.of(channel),
            waiting: Mutex::new(Queue {
                heap: BinaryHeap::new(),
                seq: 0,
            }),
            wake: Notify::new(),
            held_until_ms: AtomicI64::new(0),
        };
        Limits {
            pool,
            gates: Arc::new([gate(Channel::Email), gate(Channel::Sms), gate(Channel::Push)]),
        }
    }

    /// Waits until `channel` may send one message: within its budget and not held by its
    /// provider. Higher `priority` goes first. Returns how long it waited.
    pub async fn acquire(&self, channel: Channel, priority: i32) -> Duration {
        let gate = &self.gates[index(channel)];
        if gate.rate.is_none() {
            return gate.wait_out_hold().await;
        }
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        {
            let mut q = gate.waiting.lock().expect("not poisoned");
            q.seq += 1;
            let seq = q.seq;
            q.heap.push(Waiter { priority, seq, n: 1, tx });
            metrics::gauge!("dashlight_sends_waiting_for_budget", "channel" => channel.as_str()).set(q.heap.len() as f64);
        }
        gate.wake.notify_one();
        // The gate's task only ends with the process; a closed channel means it is gone: send.
        let _ = rx.await;
        let waited = started.elapsed();
        metrics::histogram!("dashlight_send_budget_wait_seconds", "channel" => channel.as_str()).record(waited.as_secs_f64());
        waited
    }

    /// A provider refused a send on `channel` and asked to wait `retry_after`: holds the channel
    /// in every worker until then (a longer hold already in force stays). `reason` is kept with
    /// it for operators.
    pub async fn provider_hold(&self, channel: Channel, retry_after: Duration, reason: &str) -> Result<(), sqlx::Error> {
        // This worker holds at once, whatever becomes of the write.
        let wait_ms = i64::try_from(retry_after.as_millis()).unwrap_or(i64::MAX / 2);
        self.gates[index(channel)].hold_until(Utc::now().timestamp_millis().saturating_add(wait_ms));
        sqlx::query!(
            "UPDATE channel_budgets SET held_until = greatest(held_until, clock_timestamp() + $2), held_reason = $3 WHERE channel = $1",
            channel.as_str(),
            retry_after as _,
            reason,
        )
        .execute(&self.pool)
        .await?;
        tracing::warn!(
            channel = channel.as_str(),
            retry_after_ms = retry_after.as_millis() as u64,
            reason,
            "provider asked to wait: channel held for every worker"
        );
        metrics::counter!("dashlight_provider_holds_total", "channel" => channel.as_str()).increment(1);
        Ok(())
    }

    /// Runs every rate-limited channel's gate, and the reading of the holds of the others,
    /// until the process ends.
    pub async fn run(self) {
        let mut tasks: Vec<_> = (0..3)
            .filter(|&i| self.gates[i].rate.is_some())
            .map(|i| {
                let this = self.clone();
                tokio::spawn(async move { this.gate_loop(i).await })
            })
            .collect();
        if self.gates.iter().any(|g| g.rate.is_none()) {
            let this = self.clone();
            tasks.push(tokio::spawn(async move { this.holds_loop().await }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Reads the providers' holds in force every [`HOLD_REFRESH`], for the channels without a
    /// rate limit (the others read theirs with every take).
    async fn holds_loop(&self) {
        let mut failing = false;
        loop {
            match dashlight_core::controls::provider_holds(&self.pool).await {
                Ok(holds) => {
                    failing = false;
                    for (channel, until, _) in holds {
                        self.gates[index(channel)].hold_until(until.timestamp_millis());
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "reading providers' holds failed; the last known ones stay in force");
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(HOLD_REFRESH).await;
        }
    }

    async fn gate_loop(&self, i: usize) {
        let gate = &self.gates[i];
        let channel = gate.channel.as_str();
        loop {
            let want = {
                let mut q = gate.waiting.lock().expect("not poisoned");
                // Waiters whose send was abandoned need nothing.
                q.heap.retain(|w| !w.tx.is_closed());
                q.heap.iter().map(|w| w.n).sum::<usize>()
            };
            if want == 0 {
                gate.wake.notified().await;
                continue;
            }
            let taken = sqlx::query!(
                r#"SELECT granted AS "granted!", wait_s AS "wait_s!" FROM take_send_tokens($1, $2, $3, $4)"#,
                channel,
                gate.rate,
                gate.rate.map_or(1.0, burst),
                i32::try_from(want).unwrap_or(i32::MAX),
            )
            .fetch_one(&self.pool)
            .await;
            let (granted, wait) = match taken.map(|r| (r.granted, r.wait_s)) {
                Ok((g, w)) => (usize::try_from(g).unwrap_or(0), Duration::from_secs_f64(w.clamp(0.0, 3600.0))),
                Err(e) => {
                    // No budget can be known: nothing is sent until the database answers.
                    tracing::warn!(channel, error = %e, "taking send budget failed; retrying in 200 ms");
                    (0, Duration::from_millis(200))
                }
            };
            let left = {
                let mut q = gate.waiting.lock().expect("not poisoned");
                let mut tokens = granted;
                while tokens > 0 {
                    let Some(w) = q.heap.pop() else { break };
                    if w.tx.send(()).is_ok() {
                        tokens = tokens.saturating_sub(w.n);
                    }
                }
                metrics::gauge!("dashlight_sends_waiting_for_budget", "channel" => channel).set(q.heap.len() as f64);
                q.heap.len()
            };
            if granted < want && left > 0 {
                metrics::counter!("dashlight_sends_rate_limited_total", "channel" => channel).increment(left as u64);
                // Until the next token (or the hold's end); a new waiter of higher priority does
                // not make tokens come sooner.
                tokio::time::sleep(wait.max(Duration::from_millis(2))).await;
            }
        }
    }
}

/// Send slots handed out highest priority first, then first come: the drain's bound on sends in
/// flight. A request never exceeds the total (the drain asks for at most its concurrency).
pub struct PriorityPermits {
    inner: Mutex<Permits>,
}

struct Permits {
    available: usize,
    waiting: BinaryHeap<Waiter>,
    seq: u64,
}

impl PriorityPermits {
    /// `n` slots.
    pub fn new(n: usize) -> Self {
        PriorityPermits {
            inner: Mutex::new(Permits {
                available: n,
                waiting: BinaryHeap::new(),
                seq: 0,
            }),
        }
    }

    /// Takes `n` slots at `priority` (returned with [`Self::add_permits`]); a request waits while
    /// one of higher or equal priority asked first.
    pub async fn acquire(&self, n: usize, priority: i32) {
        let rx = {
            let mut p = self.inner.lock().expect("not poisoned");
            let first = p.waiting.peek().is_none_or(|w| priority > w.priority);
            if first && p.available >= n {
                p.available -= n;
                return;
            }
            let (tx, rx) = oneshot::channel();
            p.seq += 1;
            let seq = p.seq;
            p.waiting.push(Waiter { priority, seq, n, tx });
            rx
        };
        let _ = rx.await;
    }

    /// Gives back `n` slots and hands them to the waiters in order.
    pub fn add_permits(&self, n: usize) {
        let mut p = self.inner.lock().expect("not poisoned");
        p.available += n;
        while p.waiting.peek().is_some_and(|w| w.n <= p.available) {
            let w = p.waiting.pop().expect("peeked");
            p.available -= w.n;
            if w.tx.send(()).is_err() {
                // Its asker is gone.
                p.available += w.n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn permits_go_to_the_highest_priority_first() {
        let p = Arc::new(PriorityPermits::new(2));
        p.acquire(2, 0).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, prio) in [(0, 10), (1, 20), (2, 10), (3, 15)] {
            let (p, order) = (p.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                p.acquire(1, prio).await;
                order.lock().unwrap().push(i);
            }));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        for _ in 0..4 {
            p.add_permits(1);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![1, 3, 0, 2]);
    }

    #[tokio::test]
    async fn a_channel_without_a_rate_limit_sends_at_once_and_waits_out_a_known_hold() {
        // No database behind the pool and no gate task: an unlimited channel needs neither.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let limits = Limits::new(
            pool,
            RateLimits {
                sms: Some(4.0),
                ..RateLimits::default()
            },
        );
        use futures::FutureExt as _;
        assert_eq!(
            limits.acquire(Channel::Email, 10).now_or_never(),
            Some(Duration::ZERO),
            "done on its first poll: no round trip, no yield"
        );
        limits.gates[index(Channel::Email)].hold_until(Utc::now().timestamp_millis() + 150);
        assert!(limits.acquire(Channel::Email, 20).now_or_never().is_none(), "held");
        let waited = limits.acquire(Channel::Email, 20).await;
        assert!(waited >= Duration::from_millis(100), "waited out the hold: {waited:?}");
        assert_eq!(limits.acquire(Channel::Push, 10).now_or_never(), Some(Duration::ZERO));
        // A rate-limited channel goes through its gate (which is not running here).
        assert!(limits.acquire(Channel::Sms, 10).now_or_never().is_none());
    }

    #[test]
    fn bursts_are_a_tenth_of_a_second_and_at_least_one() {
        assert_eq!(burst(4.0), 1.0);
        assert_eq!(burst(1000.0), 100.0);
    }
}
