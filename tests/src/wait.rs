//! Waiting helpers for end-to-end tests: [`wait_until`] / [`try_wait_until`] poll a condition
//! (typically a database query) every [`POLL_INTERVAL`] up to a ceiling, and the crate-internal
//! counter wait used by the protocol peers (which wake on a `tokio::sync::watch`, not a poll).

use std::{future::Future, time::Duration};

use tokio::{sync::watch, time::Instant};

/// How often [`wait_until`] and [`try_wait_until`] re-evaluate their condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `f` every [`POLL_INTERVAL`] until it yields `Some(value)` and returns that value, or fails
/// after `timeout` with an error naming `what`. `f` is always evaluated at least once, the last
/// time at or after the deadline.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    try_wait_until(what, timeout, move || {
        let fut = f();
        async move { Ok(fut.await) }
    })
    .await
}

/// Like [`wait_until`], for conditions that can fail (a database query): an `Err` from `f` ends
/// the wait at once with that error, annotated with `what`.
pub async fn try_wait_until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let checked_at = Instant::now();
        match f().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => return Err(e.context(format!("while waiting for {what}"))),
        }
        if checked_at >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
    }
}

/// Waits until the counter behind `rx` reaches `n`, waking on every change (no polling).
/// On timeout returns the last count seen.
pub(crate) async fn wait_for_count(mut rx: watch::Receiver<usize>, n: usize, timeout: Duration) -> Result<(), usize> {
    let reached = matches!(tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n)).await, Ok(Ok(_)));
    // Not reached: timed out, or the sender is gone (the peer was dropped). Report what we have.
    if reached { Ok(()) } else { Err(*rx.borrow()) }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn returns_the_value_once_the_condition_holds() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let got = wait_until("third call", Duration::from_secs(5), move || {
            let c = c.clone();
            async move {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                (n >= 3).then_some(n * 10)
            }
        })
        .await
        .unwrap();
        assert_eq!(got, 30);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn times_out_with_an_error_naming_the_condition() {
        let started = Instant::now();
        let err = wait_until("the moon to turn blue", Duration::from_millis(200), || async { None::<()> })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("the moon to turn blue"), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn try_variant_propagates_errors() {
        let err = try_wait_until("a row", Duration::from_secs(5), || async {
            Err::<Option<()>, _>(anyhow::anyhow!("connection refused"))
        })
        .await
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("a row") && text.contains("connection refused"), "{text}");
    }

    #[tokio::test]
    async fn count_wait_wakes_on_change_and_reports_the_count_on_timeout() {
        let (tx, rx) = watch::channel(0usize);
        let waiter = tokio::spawn(wait_for_count(rx.clone(), 2, Duration::from_secs(5)));
        tx.send_modify(|c| *c += 1);
        tx.send_modify(|c| *c += 1);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(wait_for_count(rx, 5, Duration::from_millis(50)).await, Err(2));
    }
}
