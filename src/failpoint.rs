//! Named failpoints: places in the write-back path where a crash test can make the process die
//! on purpose, so the dangerous windows (the vendor applied a write that is not recorded yet, a
//! plan half applied, a batch half applied, a group of hangups written but not committed, a plan
//! committed but not acknowledged) are hit every
//! time instead of by luck.
//!
//! Always compiled, inert unless armed. Armed only from the environment, once, at start-up:
//!
//! ```text
//! CALLSIDE_FAILPOINTS="worker.after_vendor=exit@2;end_call.after_commit=abort"
//! ```
//!
//! Each entry is `name=action[@n]`: the action runs on the `n`th time the point is reached
//! (default the first). Actions: `exit` (`std::process::exit(FAILPOINT_EXIT_CODE)`: no
//! destructor, no flush of the outbox — the process just stops), `abort` (`SIGABRT`, as close to
//! a kill as a process can do to itself) and `panic` (unwinds the current task only; for tests of
//! task isolation). Unknown names and actions are refused at start, so a typo cannot silently
//! disarm a crash test. An unarmed point costs one atomic load.
//!
//! Why not the `fail` crate: its points are compiled out unless a cargo feature is on, and its
//! actions (panic, return, sleep, pause) cannot end the process, which is what a crash test needs.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable read by [`arm_from_env`].
pub const ENV: &str = "CALLSIDE_FAILPOINTS";

/// The exit status of a process stopped by an `exit` failpoint (tests tell it from a real crash).
pub const FAILPOINT_EXIT_CODE: i32 = 86;

/// After the vendor answered a step (the write is applied there) and before the result is
/// recorded in the store.
pub const WORKER_AFTER_VENDOR: &str = "worker.after_vendor";
/// After one step's result is recorded, before the plan's next step is looked at.
pub const WORKER_MID_PLAN: &str = "worker.mid_plan";
/// Inside a batch of due steps, after at least one was applied and before the rest.
pub const WORKER_MID_BATCH: &str = "worker.mid_batch";
/// After a call's plan is committed to the store and before `end_call` is acknowledged.
pub const END_CALL_AFTER_COMMIT: &str = "end_call.after_commit";

/// Inside a group commit of hangups, after every close of the batch was written and before the
/// transaction commits (none of the batch is acknowledged yet).
pub const GROUP_COMMIT_BEFORE_COMMIT: &str = "group_commit.before_commit";

/// Every point that exists (the crash test iterates over these).
pub const ALL: &[&str] =
    &[WORKER_AFTER_VENDOR, WORKER_MID_PLAN, WORKER_MID_BATCH, END_CALL_AFTER_COMMIT, GROUP_COMMIT_BEFORE_COMMIT];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Exit,
    Abort,
    Panic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arming {
    pub action: Action,
    /// The 1-based hit on which the action runs.
    pub on_hit: u64,
}

struct Armed {
    arming: Arming,
    hits: AtomicU64,
}

static ARMED: OnceLock<HashMap<&'static str, Armed>> = OnceLock::new();

/// Parses a failpoint specification (see the module docs). Every problem is reported.
pub fn parse(spec: &str) -> Result<HashMap<&'static str, Arming>, String> {
    let mut out = HashMap::new();
    let mut problems = Vec::new();
    for entry in spec.split([';', ',']).map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, action)) = entry.split_once('=') else {
            problems.push(format!("`{entry}`: expected name=action[@n]"));
            continue;
        };
        let Some(known) = ALL.iter().find(|p| **p == name.trim()) else {
            problems.push(format!("`{}`: no such failpoint (known: {})", name.trim(), ALL.join(", ")));
            continue;
        };
        let (action, on_hit) = match action.trim().split_once('@') {
            Some((a, n)) => match n.trim().parse::<u64>() {
                Ok(n) if n >= 1 => (a.trim(), n),
                _ => {
                    problems.push(format!("`{entry}`: the hit number must be a positive integer"));
                    continue;
                }
            },
            None => (action.trim(), 1),
        };
        let action = match action {
            "exit" => Action::Exit,
            "abort" => Action::Abort,
            "panic" => Action::Panic,
            other => {
                problems.push(format!("`{entry}`: unknown action `{other}` (exit, abort or panic)"));
                continue;
            }
        };
        out.insert(*known, Arming { action, on_hit });
    }
    if problems.is_empty() { Ok(out) } else { Err(problems.join("; ")) }
}

/// Arms the points named in [`ENV`], once per process. Returns what was armed (empty when the
/// variable is unset). A second call changes nothing.
pub fn arm_from_env() -> Result<Vec<(&'static str, Arming)>, String> {
    let spec = std::env::var(ENV).unwrap_or_default();
    let parsed = parse(&spec).map_err(|e| format!("{ENV}: {e}"))?;
    let armed: Vec<_> = parsed.iter().map(|(k, v)| (*k, *v)).collect();
    if !parsed.is_empty() {
        let _ =
            ARMED.set(parsed.into_iter().map(|(k, arming)| (k, Armed { arming, hits: AtomicU64::new(0) })).collect());
    }
    Ok(armed)
}

/// Marks that execution reached the point `name`; runs its action if it is armed for this hit.
pub fn hit(name: &'static str) {
    let Some(armed) = ARMED.get().and_then(|m| m.get(name)) else {
        return;
    };
    let n = armed.hits.fetch_add(1, Ordering::SeqCst) + 1;
    if n != armed.arming.on_hit {
        return;
    }
    // Plain stderr, not tracing: the line must be out before the process stops.
    eprintln!("failpoint {name} fired on hit {n}: {:?}", armed.arming.action);
    match armed.arming.action {
        Action::Exit => std::process::exit(FAILPOINT_EXIT_CODE),
        Action::Abort => std::process::abort(),
        Action::Panic => panic!("failpoint {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_hit_numbers_and_every_problem_is_reported() {
        let armed = parse("worker.after_vendor=exit@3; end_call.after_commit=abort,").unwrap();
        assert_eq!(armed[WORKER_AFTER_VENDOR], Arming { action: Action::Exit, on_hit: 3 });
        assert_eq!(armed[END_CALL_AFTER_COMMIT], Arming { action: Action::Abort, on_hit: 1 });
        assert!(parse("").unwrap().is_empty());
        let err =
            parse("worker.after_vendr=exit;worker.mid_plan=explode;worker.mid_batch=exit@0;nonsense").unwrap_err();
        assert!(err.contains("no such failpoint"), "{err}");
        assert!(err.contains("unknown action `explode`"), "{err}");
        assert!(err.contains("positive integer"), "{err}");
        assert!(err.contains("expected name=action"), "{err}");
    }
}
