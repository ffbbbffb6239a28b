//! A replica's Prometheus metrics: a recorder of its own (not the process-global one, so the
//! replicas of `flotilla dev` in one process keep theirs apart), the handles the hot paths
//! record into, and the gauges read from Raft, the state and the storage when `/metrics` is
//! scraped.
//!
//! Every metric is named `flotilla_*`; durations are in seconds, as Prometheus expects.

use std::collections::BTreeSet;
use std::sync::Mutex;

use flotilla_core::TaskState;
use flotilla_store::{StoreProbe, Timed};
use metrics::{counter, gauge, histogram, with_local_recorder, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use openraft::ServerState;

use crate::Raft;

/// Bucket bounds (seconds) of the latency histograms: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Bucket bounds of the group-commit entry size, in commands.
const ENTRY_COMMAND_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// One replica's metrics.
pub struct Telemetry {
    recorder: PrometheusRecorder,
    /// Client submit: request received to answered (committed on a quorum and applied).
    pub submit_latency: Histogram,
    /// Leader: a task's submission (leader clock) to its first assignment pushed to a worker.
    pub dispatch_latency: Histogram,
    /// Group commit: client commands per Raft entry.
    pub entry_commands: Histogram,
    /// Queues seen at the last scrape, so a queue that emptied is reported as 0, not stale.
    queues_seen: Mutex<BTreeSet<String>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("flotilla_entry_commands".into()),
                    ENTRY_COMMAND_BUCKETS,
                )
            })
            .expect("the bucket lists are not empty");
        let recorder = builder.build_recorder();
        let (submit_latency, dispatch_latency, entry_commands) = with_local_recorder(
            &recorder,
            || {
                metrics::describe_histogram!(
                    "flotilla_submit_latency_seconds",
                    metrics::Unit::Seconds,
                    "SubmitTasks calls on this replica: received to answered (committed and applied)"
                );
                metrics::describe_histogram!(
                    "flotilla_dispatch_latency_seconds",
                    metrics::Unit::Seconds,
                    "Leader: a task's submission to its first attempt pushed to a worker"
                );
                metrics::describe_histogram!(
                    "flotilla_entry_commands",
                    "Group commit: client commands per Raft entry proposed by this leader"
                );
                metrics::describe_counter!(
                    "flotilla_requests_rejected_total",
                    "Client and worker calls answered with an error, by method and gRPC code"
                );
                (
                    histogram!("flotilla_submit_latency_seconds"),
                    histogram!("flotilla_dispatch_latency_seconds"),
                    histogram!("flotilla_entry_commands"),
                )
            },
        );
        Telemetry {
            recorder,
            submit_latency,
            dispatch_latency,
            entry_commands,
            queues_seen: Mutex::default(),
        }
    }

    /// Counts a call answered with gRPC `code` (not OK); `method` is its path.
    pub fn rejected(&self, method: &str, code: &str) {
        let (method, code) = (method.to_string(), code_name(code).to_string());
        with_local_recorder(&self.recorder, || {
            counter!("flotilla_requests_rejected_total", "method" => method, "code" => code)
                .increment(1)
        });
    }

    /// The text exposition, with the gauges read now from `raft`, `state` and `store`.
    pub fn render(&self, scrape: &Scrape<'_>) -> String {
        with_local_recorder(&self.recorder, || self.read_gauges(scrape));
        self.recorder.handle().render()
    }

    fn read_gauges(&self, s: &Scrape<'_>) {
        let m = s.raft.metrics().borrow().clone();
        gauge!("flotilla_raft_term").set(m.current_term as f64);
        for (role, state) in [
            ("leader", ServerState::Leader),
            ("follower", ServerState::Follower),
            ("candidate", ServerState::Candidate),
            ("learner", ServerState::Learner),
        ] {
            gauge!("flotilla_raft_role", "role" => role).set(if m.state == state {
                1.0
            } else {
                0.0
            });
        }
        gauge!("flotilla_raft_leader_id").set(m.current_leader.map_or(0.0, |l| l as f64));
        gauge!("flotilla_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
        gauge!("flotilla_raft_applied_index").set(m.last_applied.map_or(0.0, |l| l.index as f64));
        gauge!("flotilla_raft_snapshot_index").set(m.snapshot.map_or(0.0, |l| l.index as f64));
        gauge!("flotilla_raft_purged_index").set(m.purged.map_or(0.0, |l| l.index as f64));
        // The leader's view of the commit point: what a quorum holds (matched indexes).
        if let Some(replication) = &m.replication {
            let mut matched: Vec<u64> = replication
                .values()
                .map(|l| l.as_ref().map_or(0, |l| l.index))
                .collect();
            matched.sort_unstable();
            let voters = m.membership_config.membership().voter_ids().count().max(1);
            let quorum = voters / 2 + 1;
            if matched.len() >= quorum {
                gauge!("flotilla_raft_committed_index").set(matched[matched.len() - quorum] as f64);
            }
        }
        gauge!("flotilla_raft_voters")
            .set(m.membership_config.membership().voter_ids().count() as f64);

        {
            let applied = s.state.read();
            let st = &applied.state;
            let mut seen = self.queues_seen.lock().unwrap_or_else(|p| p.into_inner());
            let now: BTreeSet<String> = st.queues().map(|(q, _)| q.to_string()).collect();
            for q in seen.iter().filter(|q| !now.contains(*q)) {
                for state in TaskState::ALL {
                    gauge!("flotilla_tasks", "queue" => q.clone(), "state" => state.as_str())
                        .set(0.0);
                }
                gauge!("flotilla_oldest_pending_age_seconds", "queue" => q.clone()).set(0.0);
            }
            for q in &now {
                for state in TaskState::ALL {
                    gauge!("flotilla_tasks", "queue" => q.clone(), "state" => state.as_str())
                        .set(st.queue_count(q, state) as f64);
                }
                let age = st
                    .oldest_pending_ms(q)
                    .map_or(0.0, |t| s.now_ms.saturating_sub(t) as f64 / 1000.0);
                gauge!("flotilla_oldest_pending_age_seconds", "queue" => q.clone()).set(age);
            }
            *seen = now;
            gauge!("flotilla_tasks_held").set(st.task_count() as f64);
            gauge!("flotilla_workers_registered").set(st.workers().count() as f64);
        }
        gauge!("flotilla_workers_connected").set(s.workers_connected as f64);
        gauge!("flotilla_request_bytes_in_flight").set(s.request_bytes_in_flight as f64);

        let stats = &s.store.stats;
        timed("flotilla_wal_fsync", &stats.fsyncs);
        timed("flotilla_acked_record_sync", &stats.acked_syncs);
        timed("flotilla_snapshot_build", &stats.snapshot_builds);
        timed("flotilla_snapshot_install", &stats.snapshot_installs);
    }
}

/// Exports one [`Timed`] as `NAME_total`, `NAME_seconds_total` and `NAME_max_seconds`.
fn timed(name: &'static str, t: &Timed) {
    counter!(format!("{name}_total")).absolute(t.count());
    gauge!(format!("{name}_seconds_total")).set(t.total_secs());
    gauge!(format!("{name}_max_seconds")).set(t.max_secs());
}

/// What the scrape-time gauges are read from.
pub struct Scrape<'a> {
    pub raft: &'a Raft,
    pub state: &'a flotilla_store::SharedState,
    pub store: &'a StoreProbe,
    /// Workers with an open assignment stream to this replica (the leader).
    pub workers_connected: usize,
    /// Bytes of unfinished request messages held (see `inflight`).
    pub request_bytes_in_flight: usize,
    /// Wall-clock now, for the age of the oldest pending task.
    pub now_ms: u64,
}

/// The name of a gRPC status code given as its number ("14" → "UNAVAILABLE").
fn code_name(code: &str) -> &str {
    match code {
        "1" => "CANCELLED",
        "2" => "UNKNOWN",
        "3" => "INVALID_ARGUMENT",
        "4" => "DEADLINE_EXCEEDED",
        "5" => "NOT_FOUND",
        "6" => "ALREADY_EXISTS",
        "7" => "PERMISSION_DENIED",
        "8" => "RESOURCE_EXHAUSTED",
        "9" => "FAILED_PRECONDITION",
        "10" => "ABORTED",
        "11" => "OUT_OF_RANGE",
        "12" => "UNIMPLEMENTED",
        "13" => "INTERNAL",
        "14" => "UNAVAILABLE",
        "15" => "DATA_LOSS",
        "16" => "UNAUTHENTICATED",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Handles registered at start feed the rendered text, with the buckets configured, and a
    /// rejection is counted under its method and code name.
    #[test]
    fn histograms_and_rejections_render_as_prometheus_text() {
        let t = Telemetry::new();
        t.submit_latency.record(0.0007);
        t.submit_latency.record(0.003);
        t.entry_commands.record(40.0);
        t.rejected("/flotilla.v1.Flotilla/SubmitTasks", "3");
        t.rejected("/flotilla.v1.Flotilla/SubmitTasks", "3");
        let text = t.recorder.handle().render();
        assert!(
            text.contains("flotilla_submit_latency_seconds_bucket{le=\"0.001\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_submit_latency_seconds_count 2"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_entry_commands_bucket{le=\"64\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "flotilla_requests_rejected_total{method=\"/flotilla.v1.Flotilla/SubmitTasks\",code=\"INVALID_ARGUMENT\"} 2"
            ),
            "{text}"
        );
        // Another replica's recorder sees none of it.
        let other = Telemetry::new();
        assert!(!other
            .recorder
            .handle()
            .render()
            .contains("flotilla_requests_rejected_total{"));
    }
}
