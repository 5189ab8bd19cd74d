//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) and the inputs of crashes the
//! fuzzer found (`fuzz/regressions/<target>/`) through the entry points the cargo-fuzz targets
//! call (`callside::fuzzing`), on stable: every `cargo test` exercises the decoders with them,
//! and a fixed crash stays fixed.

use crate::helpers::repo_path;

type Entry = fn(&[u8]);

const TARGETS: &[(&str, Entry)] = &[
    ("jsonrpc", callside::fuzzing::jsonrpc),
    ("vapi", callside::fuzzing::vapi),
    ("config", callside::fuzzing::config),
    ("phone", callside::fuzzing::phone),
    ("hubspot_webhook", callside::fuzzing::hubspot_webhook),
    ("graph_notification", callside::fuzzing::graph_notification),
    ("pipedrive_webhook", callside::fuzzing::pipedrive_webhook),
    ("notify_webhook", callside::fuzzing::notify_webhook),
];

fn inputs(dir: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(repo_path(dir)) else { return vec![] };
    let mut files: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn every_fuzz_corpus_and_regression_input_replays_through_its_target() {
    for (target, entry) in TARGETS {
        let corpus = inputs(&format!("fuzz/corpus/{target}"));
        assert!(corpus.len() >= 3, "{target}: a seed corpus is committed");
        for (name, data) in corpus.iter().chain(inputs(&format!("fuzz/regressions/{target}")).iter()) {
            if std::panic::catch_unwind(|| entry(data)).is_err() {
                panic!("{target} panicked on {name}");
            }
        }
    }
}
