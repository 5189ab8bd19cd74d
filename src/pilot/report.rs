//! The pilot's output: the scorecard table for the terminal, the Markdown report and the JSON
//! report (the same data).

use std::fmt::Write as _;

use serde::Serialize;

use super::score::{Check, Depth, DimensionScore};

/// One call the pilot placed, as it went.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    /// Position in the plan (1–10 are seed 002's calls, 11+ seed 003's extra calls).
    pub n: usize,
    pub label: String,
    pub call_id: String,
    /// The caller's number, redacted to its last two digits.
    pub from: String,
    /// The sync status the service's log ended with.
    pub sync_status: String,
    /// Checks that concern this call: passed / total.
    pub checks_passed: usize,
    pub checks_total: usize,
}

/// What cleanup removed and what it had to leave.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cleanup {
    pub calls_undone: usize,
    pub objects_deleted: usize,
    pub events_cancelled: usize,
    /// Anything left behind, with the reason.
    pub left: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PilotReport {
    pub tenant: String,
    pub crm: String,
    pub calendar: String,
    /// The tag on every record the pilot created (`[pilot <run>]`).
    pub run: String,
    pub started_at: String,
    pub finished_at: String,
    pub dimensions: Vec<DimensionScore>,
    pub calls: Vec<CallRecord>,
    pub checks: Vec<Check>,
    pub cleanup: Cleanup,
}

impl PilotReport {
    /// Whether every dimension scored deep (the command's exit status).
    pub fn all_deep(&self) -> bool {
        self.dimensions.iter().all(|d| d.depth == Depth::Deep)
    }

    pub fn depth(&self, d: super::score::Dimension) -> Depth {
        self.dimensions.iter().find(|s| s.dimension == d).map(|s| s.depth).unwrap_or(Depth::None)
    }

    /// The scorecard as a fixed-width table for the terminal.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{:<16} {:<8} {:>7}  first evidence", "dimension", "score", "checks");
        for d in &self.dimensions {
            let _ = writeln!(
                out,
                "{:<16} {:<8} {:>7}  {}",
                d.dimension.label(),
                d.depth.label(),
                format!("{}/{}", d.checks_passed, d.checks_total),
                d.evidence.first().map(String::as_str).unwrap_or("")
            );
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# callside pilot: tenant `{}`\n", self.tenant);
        let _ = writeln!(
            out,
            "CRM **{}**, calendar **{}**, run tag `[pilot {}]`, {} → {}.\n",
            self.crm, self.calendar, self.run, self.started_at, self.finished_at
        );
        let _ = writeln!(out, "## Scorecard (seed 003's five dimensions)\n");
        let _ = writeln!(out, "| Dimension | Score | Checks | Evidence |");
        let _ = writeln!(out, "|---|---|---|---|");
        for d in &self.dimensions {
            let evidence = if d.depth == Depth::Deep {
                format!("all {} checks passed", d.checks_total)
            } else {
                d.evidence.iter().map(|e| md_cell(e)).collect::<Vec<_>>().join("<br>")
            };
            let _ = writeln!(
                out,
                "| {} | **{}** | {}/{} | {} |",
                d.dimension.label(),
                d.depth.label(),
                d.checks_passed,
                d.checks_total,
                evidence
            );
        }
        let _ = writeln!(out, "\n## Calls\n");
        let _ = writeln!(out, "| # | Call | From | Sync status | Checks |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        for c in &self.calls {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {}/{} |",
                c.n,
                md_cell(&c.label),
                c.from,
                c.sync_status,
                c.checks_passed,
                c.checks_total
            );
        }
        let _ = writeln!(out, "\n## Checks\n");
        for c in &self.checks {
            let _ = writeln!(
                out,
                "- {} {} — {}: {}",
                if c.passed { "✅" } else { "❌" },
                c.dimension.label(),
                md_cell(&c.call),
                md_cell(&c.evidence)
            );
        }
        let _ = writeln!(out, "\n## Cleanup\n");
        let _ = writeln!(
            out,
            "{} call(s) undone, {} seeded object(s) deleted, {} event(s) cancelled.",
            self.cleanup.calls_undone, self.cleanup.objects_deleted, self.cleanup.events_cancelled
        );
        for l in &self.cleanup.left {
            let _ = writeln!(out, "- left: {}", md_cell(l));
        }
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serializes")
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}
