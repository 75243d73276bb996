//! rtpvisor-bench: the benchmark suite of issue #4 (work in progress).
#![forbid(unsafe_code)]

fn main() {}
