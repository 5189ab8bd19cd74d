//! `callside match-eval` as a user runs it: the binary over the committed fixture and over bad
//! files.

use std::process::Command;

fn callside() -> Command {
    Command::new(env!("CARGO_BIN_EXE_callside"))
}

#[test]
fn match_eval_prints_precision_and_recall_per_class() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/match_cases.jsonl");
    let out = callside().args(["match-eval", fixture]).output().expect("run callside");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let row = |class: &str| text.lines().find(|l| l.starts_with(class)).unwrap_or_else(|| panic!("{class}\n{text}"));
    // class expected predicted correct precision recall
    let matched: Vec<&str> = row("matched").split_whitespace().collect();
    assert_eq!(matched.len(), 6, "{text}");
    assert!(matched[4].parse::<f64>().unwrap() >= 0.99, "{text}");
    assert!(row("ambiguous").split_whitespace().count() == 6 && row("new").split_whitespace().count() == 6);
    assert!(text.contains("name-only merges: 0"), "{text}");
}

#[test]
fn match_eval_names_the_bad_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cases.jsonl");
    std::fs::write(
        &path,
        "{\"id\":\"a\",\"records\":[],\"caller\":{},\"expected\":{\"outcome\":\"new\"}}\n{\"id\": 5}\n",
    )
    .unwrap();
    let out = callside().arg("match-eval").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");
    let out = callside().args(["match-eval", "/nonexistent/cases.jsonl"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}
