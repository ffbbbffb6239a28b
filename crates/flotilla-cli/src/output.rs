//! How tasks and cluster status are printed, for people and as JSON.

use flotilla_client::{ClusterStatus, Task};
use serde_json::{json, Value};

use crate::payload::CommandPayload;

pub fn task_json(t: &Task) -> Value {
    let command = CommandPayload::decode(&t.spec.payload).map(|p| p.argv);
    json!({
        "id": t.id.0,
        "state": t.state.as_str(),
        "queue": t.spec.queue,
        "attempts": t.attempts,
        "worker": t.worker,
        "priority": t.spec.priority,
        "max_attempts": t.spec.max_attempts,
        "idempotency_key": t.spec.idempotency_key,
        "depends_on": t.spec.depends_on.iter().map(|d| d.0).collect::<Vec<_>>(),
        "command": command,
        "submitted_at_ms": t.submitted_at_ms,
        "not_before_ms": t.spec.not_before_ms,
        "updated_at_ms": t.updated_at_ms,
        "reason": t.reason,
        "result": t.result.as_ref().map(|r| String::from_utf8_lossy(r).to_string()),
    })
}

pub fn task_text(t: &Task) -> String {
    let what = match CommandPayload::decode(&t.spec.payload) {
        Some(p) => p.argv.join(" "),
        None => format!("{} payload bytes", t.spec.payload.len()),
    };
    let mut s = format!(
        "task {}  {}  queue={} attempts={}/{} priority={}\n  {}",
        t.id, t.state, t.spec.queue, t.attempts, t.spec.max_attempts, t.spec.priority, what
    );
    if let Some(w) = &t.worker {
        s.push_str(&format!("\n  running on worker {w}"));
    }
    if !t.spec.depends_on.is_empty() {
        let deps: Vec<String> = t.spec.depends_on.iter().map(|d| d.to_string()).collect();
        s.push_str(&format!("\n  after: {}", deps.join(",")));
    }
    if let Some(ms) = t.spec.not_before_ms {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        s.push_str(&format!(
            "\n  not before: {}",
            humantime::format_rfc3339_millis(when)
        ));
    }
    if let Some(r) = &t.reason {
        s.push_str(&format!("\n  reason: {r}"));
    }
    if let Some(r) = &t.result {
        s.push_str(&format!("\n  result: {}", String::from_utf8_lossy(r)));
    }
    s
}

pub fn status_json(s: &ClusterStatus) -> Value {
    json!({
        "node_id": s.node_id,
        "role": s.role,
        "applied_index": s.applied_index,
        "leader": s.leader_id,
        "leader_addr": s.leader_addr,
        "term": s.term,
        "last_log_index": s.last_log_index,
        "snapshot_index": s.snapshot_index,
        "purged_index": s.purged_index,
        "commit_index": s.commit_index,
        "cluster_name": s.cluster_name,
        "task_count": s.task_count,
        "members": s.members.iter().map(|m| json!({
            "id": m.id, "addr": m.addr, "matched_index": m.matched_index, "voter": m.voter,
            "incarnation": m.incarnation,
        })).collect::<Vec<_>>(),
    })
}

pub fn status_text(s: &ClusterStatus) -> String {
    let mut out = format!(
        "cluster {:?}: asked replica {} ({}), term {}, leader {}\n  applied {}  commit {}  last log {}  snapshot {}  tasks {}\n  members:",
        s.cluster_name,
        s.node_id,
        s.role,
        s.term,
        s.leader_id.map_or("none".to_string(), |l| l.to_string()),
        s.applied_index,
        s.commit_index,
        s.last_log_index,
        s.snapshot_index,
        s.task_count,
    );
    for m in &s.members {
        let mark = if Some(m.id) == s.leader_id {
            " (leader)"
        } else {
            ""
        };
        let role = if m.voter { "" } else { " (learner)" };
        out.push_str(&format!(
            "\n    {} {}{}{}  matched {}",
            m.id, m.addr, mark, role, m.matched_index
        ));
    }
    out
}
