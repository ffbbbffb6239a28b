//! Progress bars of the long benchmarks (indicatif), drawn on stderr only when stderr is a
//! terminal: a log file or CI gets just the lines the benches print.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps labelled `what` (for example "faults" or "tasks").
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let template = format!("{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {what} {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A bar that follows `counter` (up to `len`) until the returned guard is dropped.
pub fn follow(len: u64, what: &str, counter: Arc<AtomicU64>) -> Following {
    let bar = bar(len, what);
    let (b, stop) = (bar.clone(), tokio_util::sync::CancellationToken::new());
    let s = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = s.cancelled() => break,
                _ = tick.tick() => b.set_position(counter.load(Ordering::Relaxed).min(len)),
            }
        }
    });
    Following { bar, stop }
}

/// Stops the bar of [`follow`] and clears it when dropped.
pub struct Following {
    bar: ProgressBar,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.stop.cancel();
        self.bar.finish_and_clear();
    }
}
