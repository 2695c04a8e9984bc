//! Exponential backoff for the loops that retry lost connections, with
//! jitter, so that servers and consumers that lost the same database or
//! broker at the same moment do not all come back at the same moment.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Doubling pauses between `first` and `max`, each drawn at random from
/// its upper half ("equal jitter").
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

    /// The next pause: between half of the current step and all of it;
    /// the step then doubles, up to `max`.
    pub fn next_pause(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        step.mul_f64(rand::random_range(0.5..=1.0))
    }

    /// Sleeps the next pause; `false` if `shutdown` fired first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let pause = self.next_pause();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_max_each_within_the_upper_half_of_its_step() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        for step in [100, 200, 400, 800, 800, 800] {
            let pause = backoff.next_pause();
            let step = Duration::from_millis(step);
            assert!(
                pause >= step / 2 && pause <= step,
                "{pause:?} outside {step:?}/2..={step:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_pause() <= Duration::from_millis(100));
    }

    #[test]
    fn pauses_are_spread() {
        let pauses: std::collections::BTreeSet<_> = (0..20)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_pause())
            .collect();
        assert!(pauses.len() > 1, "every pause the same: {pauses:?}");
    }
}
