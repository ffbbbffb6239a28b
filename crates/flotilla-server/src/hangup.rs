//! SIGHUP: re-reading the files a replica can change without a restart (the tokens file, the
//! TLS certificate, key and CA). Each reloader runs its own watch; a file that fails to load
//! is reported and what is in force stays.

use tokio_util::sync::CancellationToken;

/// Calls `reload` on every SIGHUP until `shutdown`, logging what it reports under `what`.
pub async fn reload_on_hangup<F>(what: &'static str, shutdown: CancellationToken, reload: F)
where
    F: Fn() -> Result<String, String> + Send + 'static,
{
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, what, "cannot watch SIGHUP: read only at start");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = hangups.recv() => if got.is_none() { return },
        }
        match reload() {
            Ok(done) => tracing::info!(what, "SIGHUP: {done}"),
            Err(e) => tracing::error!(what, "SIGHUP: not reloaded, what was in force stays: {e}"),
        }
    }
}
