//! afl driver: `shardgate-fuzz TARGET` runs the fuzz target of that name
//! (see `shardgate_fuzz_targets::TARGETS`) on each input afl gives it.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = shardgate_fuzz_targets::target(&name) else {
        let names: Vec<&str> = shardgate_fuzz_targets::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: shardgate-fuzz TARGET (one of: {})", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        target(data);
    });
}
