//! Workflows: a DAG of tasks submitted in one call, its tasks naming each other by local
//! names. This module owns the shapes and the pure resolution of names into positions; the
//! replicated record and its life cycle live in `state::workflows`.
//!
//! ```text
//!  client: [{name, spec, after: [names]}]  (any order)
//!     └─ resolve (edge): names checked, cycles refused, topological order, after → positions
//!          └─ Command::SubmitWorkflow: [{name, spec, after: [earlier positions]}]
//!               └─ apply: all or nothing; task i depends on the ids of its `after` positions
//! ```
//!
//! A workflow is identified by the id of its first task (in the command's order), so a retry
//! of the same submit, whose tasks carry the same idempotency keys, finds the same workflow.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{CommandError, Limits, TaskId, TaskSpec};

/// Longest local name of a workflow task, in bytes.
pub const MAX_TASK_NAME_LEN: usize = 128;

/// One task of a workflow as a client writes it: `after` names other tasks of the same
/// workflow (its `spec.depends_on` may still name tasks outside it by id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedTask {
    pub name: String,
    pub spec: TaskSpec,
    pub after: Vec<String>,
}

/// One task of a [`crate::Command::SubmitWorkflow`]: `after` holds positions of earlier tasks
/// of the same command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowTask {
    pub name: String,
    pub spec: TaskSpec,
    pub after: Vec<u32>,
}

/// A workflow as the replicated state keeps it (and its snapshot image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workflow {
    /// The id of its first task.
    pub id: TaskId,
    pub submitted_at_ms: u64,
    /// Its tasks in topological order (parents first), with their local names.
    pub members: Vec<WorkflowMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowMember {
    pub name: String,
    pub task: TaskId,
}

/// Checks a local name: 1..=128 bytes, no whitespace or control characters.
pub fn validate_task_name(field: &str, name: &str) -> Result<(), CommandError> {
    if name.is_empty() {
        return Err(CommandError::invalid(field, "must not be empty"));
    }
    if name.len() > MAX_TASK_NAME_LEN {
        return Err(CommandError::invalid(
            field,
            format!("{} bytes exceeds limit {MAX_TASK_NAME_LEN}", name.len()),
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(CommandError::invalid(
            field,
            format!("{name:?} holds {c:?}; names may not hold whitespace or control characters"),
        ));
    }
    Ok(())
}

/// Turns a client's workflow into the command's shape: names checked (unique, valid), every
/// `after` name known, no cycle, tasks in a topological order that keeps the client's order
/// where the edges allow. Returns the tasks and, for each, its position in `tasks`.
///
/// Errors name the task: `tasks[2].after: unknown task "x"`, `tasks[0].after: cycle a → b → a`.
pub fn resolve(tasks: Vec<NamedTask>) -> Result<(Vec<WorkflowTask>, Vec<usize>), CommandError> {
    if tasks.is_empty() {
        return Err(CommandError::invalid("tasks", "workflow is empty"));
    }
    if tasks.len() > Limits::MAX_WORKFLOW_TASKS {
        return Err(CommandError::invalid(
            "tasks",
            format!(
                "workflow of {} tasks exceeds limit {}",
                tasks.len(),
                Limits::MAX_WORKFLOW_TASKS
            ),
        ));
    }
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, t) in tasks.iter().enumerate() {
        validate_task_name(&format!("tasks[{i}].name"), &t.name)?;
        if let Some(j) = by_name.insert(&t.name, i) {
            return Err(CommandError::invalid(
                format!("tasks[{i}].name"),
                format!("{:?} is also the name of tasks[{j}]", t.name),
            ));
        }
    }
    // parents[i]: positions task i runs after (deduplicated, in order).
    let mut parents: Vec<BTreeSet<usize>> = Vec::with_capacity(tasks.len());
    for (i, t) in tasks.iter().enumerate() {
        let mut set = BTreeSet::new();
        for name in &t.after {
            let Some(&j) = by_name.get(name.as_str()) else {
                return Err(CommandError::invalid(
                    format!("tasks[{i}].after"),
                    format!("task {:?} runs after unknown task {name:?}", t.name),
                ));
            };
            if j == i {
                return Err(CommandError::invalid(
                    format!("tasks[{i}].after"),
                    format!("task {:?} runs after itself", t.name),
                ));
            }
            set.insert(j);
        }
        parents.push(set);
    }
    // Kahn's algorithm, always taking the lowest ready position: the client's order wherever
    // the edges allow it.
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    let mut missing: Vec<usize> = parents.iter().map(BTreeSet::len).collect();
    for (i, ps) in parents.iter().enumerate() {
        for &p in ps {
            children[p].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..tasks.len()).filter(|i| missing[*i] == 0).collect();
    let mut order = Vec::with_capacity(tasks.len());
    let mut position = vec![usize::MAX; tasks.len()];
    while let Some(i) = ready.pop_first() {
        position[i] = order.len();
        order.push(i);
        for &c in &children[i] {
            missing[c] -= 1;
            if missing[c] == 0 {
                ready.insert(c);
            }
        }
    }
    if order.len() < tasks.len() {
        let start = (0..tasks.len())
            .find(|i| position[*i] == usize::MAX)
            .expect("a task was left out");
        let cycle = find_cycle(&parents, &position, start);
        let names: Vec<&str> = cycle.iter().map(|i| tasks[*i].name.as_str()).collect();
        return Err(CommandError::invalid(
            format!("tasks[{}].after", cycle[0]),
            format!("cycle {} (each runs after the next)", names.join(" → ")),
        ));
    }
    let mut slots: Vec<Option<NamedTask>> = tasks.into_iter().map(Some).collect();
    let out = order
        .iter()
        .map(|&i| {
            let t = slots[i].take().expect("each task once");
            let mut after: Vec<u32> = parents[i].iter().map(|p| position[*p] as u32).collect();
            after.sort_unstable();
            WorkflowTask {
                after,
                name: t.name,
                spec: t.spec,
            }
        })
        .collect();
    Ok((out, order))
}

/// A cycle among the tasks left unordered, found by walking parents from `start` (each has a
/// parent left unordered) until a task repeats; returned starting and ending at that task,
/// each running after the next.
fn find_cycle(parents: &[BTreeSet<usize>], position: &[usize], start: usize) -> Vec<usize> {
    let mut path = vec![start];
    let mut seen = BTreeMap::from([(start, 0usize)]);
    let mut at = start;
    loop {
        let next = *parents[at]
            .iter()
            .find(|p| position[**p] == usize::MAX)
            .expect("an unordered task has an unordered parent");
        if let Some(&k) = seen.get(&next) {
            // Parents were walked: each task runs after the next.
            let mut cycle: Vec<usize> = path[k..].to_vec();
            cycle.push(cycle[0]);
            return cycle;
        }
        seen.insert(next, path.len());
        path.push(next);
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, after: &[&str]) -> NamedTask {
        NamedTask {
            name: name.into(),
            spec: TaskSpec::new("q", name.as_bytes().to_vec()),
            after: after.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn names(tasks: &[WorkflowTask]) -> Vec<(&str, Vec<u32>)> {
        tasks
            .iter()
            .map(|t| (t.name.as_str(), t.after.clone()))
            .collect()
    }

    #[test]
    fn a_dag_is_put_in_topological_order_keeping_the_clients_order_where_it_can() {
        // reduce is written first; the maps after it; "c" before "b" runs after "b".
        let (tasks, order) = resolve(vec![
            t("reduce", &["a", "b", "c"]),
            t("a", &[]),
            t("c", &["b"]),
            t("b", &[]),
        ])
        .unwrap();
        assert_eq!(
            names(&tasks),
            vec![
                ("a", vec![]),
                ("b", vec![]),
                ("c", vec![1]),
                ("reduce", vec![0, 1, 2])
            ]
        );
        assert_eq!(order, vec![1, 3, 2, 0]);
        // Already ordered: unchanged; a repeated parent counts once.
        let (tasks, order) = resolve(vec![t("a", &[]), t("b", &["a", "a"])]).unwrap();
        assert_eq!(names(&tasks), vec![("a", vec![]), ("b", vec![0])]);
        assert_eq!(order, vec![0, 1]);
    }

    #[test]
    fn bad_workflows_are_refused_naming_the_task() {
        let err = |tasks| resolve(tasks).unwrap_err().to_string();
        assert_eq!(
            err(vec![
                t("a", &["b"]),
                t("b", &["c"]),
                t("c", &["a"]),
                t("d", &[])
            ]),
            "invalid tasks[0].after: cycle a → b → c → a (each runs after the next)"
        );
        assert_eq!(
            err(vec![t("x", &[]), t("a", &["b"]), t("b", &["a"])]),
            "invalid tasks[1].after: cycle a → b → a (each runs after the next)"
        );
        assert_eq!(
            err(vec![t("a", &[]), t("b", &["nope"])]),
            "invalid tasks[1].after: task \"b\" runs after unknown task \"nope\""
        );
        assert_eq!(
            err(vec![t("a", &["a"])]),
            "invalid tasks[0].after: task \"a\" runs after itself"
        );
        assert_eq!(
            err(vec![t("a", &[]), t("a", &[])]),
            "invalid tasks[1].name: \"a\" is also the name of tasks[0]"
        );
        assert_eq!(
            err(vec![t("", &[])]),
            "invalid tasks[0].name: must not be empty"
        );
        assert_eq!(
            err(vec![t("a b", &[])]),
            "invalid tasks[0].name: \"a b\" holds ' '; names may not hold whitespace or control characters"
        );
        assert_eq!(err(vec![]), "invalid tasks: workflow is empty");
        let many: Vec<NamedTask> = (0..=Limits::MAX_WORKFLOW_TASKS)
            .map(|i| t(&format!("t{i}"), &[]))
            .collect();
        assert!(err(many).contains("exceeds limit"));
    }

    /// Every random DAG resolves with parents strictly before children; adding a back edge
    /// makes it a cycle, refused.
    #[test]
    fn random_dags_resolve_and_back_edges_are_cycles() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for _ in 0..200 {
            let n = 1 + next() % 30;
            // Edges from a hidden order; the client lists tasks shuffled.
            let mut tasks: Vec<NamedTask> = (0..n)
                .map(|i| {
                    let after: Vec<String> = (0..i)
                        .filter(|_| next() % 4 == 0)
                        .map(|j| format!("t{j}"))
                        .collect();
                    NamedTask {
                        after,
                        ..t(&format!("t{i}"), &[])
                    }
                })
                .collect();
            for i in (1..n).rev() {
                tasks.swap(i, next() % (i + 1));
            }
            let (out, order) = resolve(tasks.clone()).unwrap();
            assert_eq!(out.len(), n);
            for (i, w) in out.iter().enumerate() {
                assert!(w.after.iter().all(|p| (*p as usize) < i));
                assert_eq!(w.name, tasks[order[i]].name);
            }
            // A back edge: the first task runs after the last one reachable from it.
            if let Some(last) = out.iter().rposition(|w| w.after.contains(&0)) {
                let first = order[0];
                let name = out[last].name.clone();
                tasks[first].after.push(name);
                assert!(resolve(tasks).unwrap_err().to_string().contains("cycle"));
            }
        }
    }
}
