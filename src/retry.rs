//! Exponential backoff for the loops that retry lost connections.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Doubling pauses between `first` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Pauses of `first`, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            next: first,
            max,
        }
    }

    /// The usual: 200 ms doubling up to 10 s.
    pub fn standard() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(10))
    }

    /// Back to the first pause, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps the next pause; `false` if `shutdown` fired first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = tokio::time::sleep(pause) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}

/// A run of failures of one thing, said once: a warning at the first, then
/// quiet (debug) until it works again, which is said with how long it took.
#[derive(Debug)]
pub struct Streak {
    what: &'static str,
    since: Option<std::time::Instant>,
    failures: u64,
}

impl Streak {
    /// A streak of `what` (the warning's text).
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            since: None,
            failures: 0,
        }
    }

    /// One more failure, for `reason`.
    pub fn failed(&mut self, reason: &str) {
        self.failures += 1;
        if self.since.is_none() {
            self.since = Some(std::time::Instant::now());
            tracing::warn!(error = %reason, "{}", self.what);
        } else {
            tracing::debug!(error = %reason, failures = self.failures, "{}", self.what);
        }
    }

    /// It works again: says so if it had failed.
    pub fn ended(&mut self, now: &str) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                failures = std::mem::take(&mut self.failures),
                "{now} after {:.1}s of failures",
                since.elapsed().as_secs_f64()
            );
        }
    }

    /// How long it has been failing.
    pub fn failing_for(&self) -> Option<Duration> {
        self.since.map(|s| s.elapsed())
    }
}
