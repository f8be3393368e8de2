//! Runs inputs through one target in one process, in order, as afl's
//! persistent mode does (state such as caches carries over between them):
//! `cargo run -p shardgate-fuzz-targets --example replay -- TARGET FILE...`.
//! Prints each input that panics.

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().expect("usage: replay TARGET FILE...");
    let run = shardgate_fuzz_targets::target(&name).expect("known target");
    let mut failed = 0;
    for file in args {
        let data = std::fs::read(&file).expect("readable input");
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            eprintln!("panicked: {file}");
            failed += 1;
        }
    }
    std::process::exit(i32::from(failed > 0));
}
