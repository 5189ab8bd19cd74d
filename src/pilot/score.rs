//! Seed 003's five dimensions, each scored deep / shallow / none from checks with evidence.
//!
//! Every check names the depth its dimension falls to when it fails (seed 003's comparison table:
//! e.g. read parity without the open deal is "contact name only", shallow; no match at all is
//! none). A dimension is the lowest depth any failed check names, deep when all passed, and none
//! when nothing tested it.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Depth {
    None,
    Shallow,
    Deep,
}

impl Depth {
    pub fn label(self) -> &'static str {
        match self {
            Depth::None => "none",
            Depth::Shallow => "shallow",
            Depth::Deep => "deep",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    ReadParity,
    WriteParity,
    MatchLogic,
    ErrorHandling,
    Observability,
}

impl Dimension {
    pub const ALL: [Dimension; 5] = [
        Dimension::ReadParity,
        Dimension::WriteParity,
        Dimension::MatchLogic,
        Dimension::ErrorHandling,
        Dimension::Observability,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Dimension::ReadParity => "Read parity",
            Dimension::WriteParity => "Write parity",
            Dimension::MatchLogic => "Match logic",
            Dimension::ErrorHandling => "Error handling",
            Dimension::Observability => "Observability",
        }
    }
}

/// One verified expectation, with what was seen.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub dimension: Dimension,
    /// The call it concerns (`#3 existing caller by phone`), or `setup` / `cleanup`.
    pub call: String,
    pub passed: bool,
    /// Where the dimension falls when this check fails.
    pub fails_to: Depth,
    /// What was expected and what the CRM / calendar / sync log showed.
    pub evidence: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DimensionScore {
    pub dimension: Dimension,
    pub depth: Depth,
    pub checks_passed: usize,
    pub checks_total: usize,
    /// The failed checks' evidence (or a summary of what passed).
    pub evidence: Vec<String>,
}

/// Scores every dimension from the checks.
pub fn score(checks: &[Check]) -> Vec<DimensionScore> {
    Dimension::ALL
        .iter()
        .map(|&d| {
            let mine: Vec<&Check> = checks.iter().filter(|c| c.dimension == d).collect();
            let failed: Vec<&&Check> = mine.iter().filter(|c| !c.passed).collect();
            let depth = if mine.is_empty() {
                Depth::None
            } else {
                failed.iter().map(|c| c.fails_to).min().unwrap_or(Depth::Deep)
            };
            let evidence = if mine.is_empty() {
                vec!["not tested".to_owned()]
            } else if failed.is_empty() {
                mine.iter().map(|c| format!("{}: {}", c.call, c.evidence)).collect()
            } else {
                failed.iter().map(|c| format!("{}: {}", c.call, c.evidence)).collect()
            };
            DimensionScore {
                dimension: d,
                depth,
                checks_passed: mine.len() - failed.len(),
                checks_total: mine.len(),
                evidence,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(dimension: Dimension, passed: bool, fails_to: Depth) -> Check {
        Check { dimension, call: "#1".into(), passed, fails_to, evidence: "e".into() }
    }

    #[test]
    fn the_lowest_failed_check_sets_the_depth_and_untested_is_none() {
        let checks = vec![
            check(Dimension::ReadParity, true, Depth::None),
            check(Dimension::ReadParity, false, Depth::Shallow),
            check(Dimension::WriteParity, true, Depth::Shallow),
            check(Dimension::MatchLogic, false, Depth::Shallow),
            check(Dimension::MatchLogic, false, Depth::None),
            check(Dimension::ErrorHandling, true, Depth::None),
        ];
        let s = score(&checks);
        let depth = |d: Dimension| s.iter().find(|x| x.dimension == d).unwrap().depth;
        assert_eq!(depth(Dimension::ReadParity), Depth::Shallow);
        assert_eq!(depth(Dimension::WriteParity), Depth::Deep);
        assert_eq!(depth(Dimension::MatchLogic), Depth::None);
        assert_eq!(depth(Dimension::ErrorHandling), Depth::Deep);
        assert_eq!(depth(Dimension::Observability), Depth::None, "nothing tested it");
        let read = s.iter().find(|x| x.dimension == Dimension::ReadParity).unwrap();
        assert_eq!((read.checks_passed, read.checks_total), (1, 2));
        assert_eq!(read.evidence.len(), 1, "only the failure is the evidence");
    }
}
