//! Graceful shutdown for the `llmd` commands: the first SIGTERM (what Kubernetes sends)
//! or SIGINT stops accepting and lets requests in flight finish, up to a drain deadline;
//! a second signal exits at once.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// The drain deadline when none is given: Kubernetes' default grace period is 30 s, so
/// draining ends before the kubelet's SIGKILL.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(25);

/// Exit status after a second signal (128 + SIGINT, as shells report an interrupt).
pub const FORCED_EXIT: i32 = 130;

/// Follows the process's termination signals.
#[derive(Debug, Clone)]
pub struct Shutdown {
    begun: watch::Receiver<bool>,
}

async fn one_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops this process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

impl Shutdown {
    /// Starts watching for signals (needs a tokio runtime). After the first, a second
    /// one exits the process at once with [`FORCED_EXIT`].
    pub fn install() -> Self {
        let (tx, begun) = watch::channel(false);
        tokio::spawn(async move {
            one_signal().await;
            eprintln!("llmd: shutting down: draining requests in flight (signal again to exit now)");
            let _ = tx.send(true);
            one_signal().await;
            eprintln!("llmd: second signal: exiting now");
            std::process::exit(FORCED_EXIT);
        });
        Shutdown { begun }
    }

    /// Resolves when shutdown has begun.
    pub fn begun(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.begun.clone();
        async move {
            // A closed channel means the watcher is gone: treat it as never.
            if rx.wait_for(|b| *b).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Runs `work` (servers that stop accepting on [`begun`](Self::begun) and finish
    /// their requests) to completion, or until `drain` after shutdown began; the
    /// deadline cutting it short is an error.
    pub async fn drain<T>(&self, work: impl Future<Output = T>, drain: Duration) -> Result<T, DrainCut> {
        let deadline = {
            let begun = self.begun();
            async move {
                begun.await;
                tokio::time::sleep(drain).await;
            }
        };
        tokio::select! {
            out = work => Ok(out),
            _ = deadline => {
                tracing::warn!(?drain, "drain deadline passed; closing the remaining connections");
                Err(DrainCut(drain))
            }
        }
    }
}

/// Requests were still in flight when the drain deadline passed, and were cut.
#[derive(Debug)]
pub struct DrainCut(pub Duration);

impl std::fmt::Display for DrainCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "requests still in flight at the drain deadline ({:?}) were cut", self.0)
    }
}

impl std::error::Error for DrainCut {}
