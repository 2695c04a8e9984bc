//! Graceful shutdown: SIGINT and SIGTERM cancel one token that every
//! long-running task watches; spawned tasks have owners that stop them.

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT (ctrl-c) or SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; finishing in-flight work");
        trigger.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// A spawned task that is aborted when its owner drops it.
#[derive(Debug)]
pub struct OwnedTask<T>(Option<JoinHandle<T>>);

impl<T> OwnedTask<T> {
    /// Spawns `future`, owned by the returned value.
    pub fn spawn<F>(future: F) -> Self
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        Self(Some(tokio::spawn(future)))
    }

    /// Waits for the task to finish on its own; `None` if it panicked or was aborted.
    pub async fn join(mut self) -> Option<T> {
        match self.0.take() {
            Some(handle) => handle.await.ok(),
            None => None,
        }
    }
}

impl<T> Drop for OwnedTask<T> {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}
