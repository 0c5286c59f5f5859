//! Loopback benchmark (written below).
fn main() {}
