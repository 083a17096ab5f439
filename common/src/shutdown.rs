//! Waiting for the signals that stop a daemon cleanly.

/// Returns when SIGINT or SIGTERM arrives.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received, shutting down");
}

/// Waits for SIGINT or SIGTERM, then cancels `shutdown` and waits for `task` to finish: the end
/// of every daemon's `main`.
pub async fn run_until_signal(
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
) {
    wait_for_signal().await;
    shutdown.cancel();
    let _ = task.await;
}
