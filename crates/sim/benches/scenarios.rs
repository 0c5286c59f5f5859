//! Runs the adaptive-concurrency scenario table and writes BENCHMARKS.md (filled in below).
fn main() {}
