//! Replays every checked-in fuzz input through its target: the seed corpora
//! (`fuzz/corpus/<target>/`) and the inputs of past findings
//! (`fuzz/regressions/<target>/`), so `cargo test` keeps them passing.

use std::path::{Path, PathBuf};

use shardgate_fuzz_targets::{target, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Runs each file of `dir/<target>/` through that target; returns how many.
fn replay(dir: &Path) -> usize {
    let mut count = 0;
    let Ok(targets) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in targets {
        let entry = entry.expect("readable folder");
        let name = entry.file_name().into_string().expect("UTF-8 name");
        let run = target(&name).unwrap_or_else(|| panic!("{}: no target {name}", dir.display()));
        let mut files: Vec<PathBuf> = std::fs::read_dir(entry.path())
            .expect("readable target folder")
            .map(|f| f.expect("readable entry").path())
            .collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).expect("readable input");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{} panicked in {name}", file.display());
            count += 1;
        }
    }
    count
}

#[test]
fn every_target_has_a_seed_corpus_and_passes_it() {
    let corpus = fuzz_dir().join("corpus");
    for (name, _) in TARGETS {
        let files = std::fs::read_dir(corpus.join(name))
            .unwrap_or_else(|_| panic!("no seed corpus for {name}"))
            .count();
        assert!(files > 0, "empty seed corpus for {name}");
    }
    assert!(replay(&corpus) >= TARGETS.len());
}

#[test]
fn regression_inputs_pass() {
    replay(&fuzz_dir().join("regressions"));
}
