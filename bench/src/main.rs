//! # rtpvisor-bench
//!
//! The benchmark suite: one command that measures rtpvisor against baselines run
//! in the same process, on the same machine, in the same minute, and prints a table beside a
//! JSON file. `cargo run --release -p rtpvisor-bench -- all` (see BENCHMARKS.md).
//!
//! # Layout
//!
//! - [`suite`]: the command line, the order of a run, what is printed and written.
//! - [`channels`]: item 1, channel media at scale (rtpvisor vs bare epoll vs naive tokio).
//! - [`echo`]: item 2, the shared echo vs a blocking UdpSocket loop.
//! - [`asterisk`]: item 3, probe calls through the real Asterisk (only if it runs); [`wire`]:
//!   the same round trips captured on the loopback interface.
//! - [`removal`]: the media engine ending many calls at once, against a few.
//! - [`flood`]: a flood at live call ports, and what it costs the other calls.
//! - [`scrape`]: a Prometheus scrape with many live calls, against a few.
//! - [`micro_alloc`]: allocations of the per-packet operations (timings: criterion, in
//!   `actors/benches/`).
//! - [`generator`]: the load generator (the "Asterisk side": one socket per channel, paced RTP).
//! - [`baselines`]: the bare epoll echo, the naive tokio echo, the blocking echo.
//! - [`service_run`]: the real actor system on its own thread; [`fake_ari`]: the ARI it talks to.
//! - [`report`]: percentiles, tables, targets, the SVG plot.
//! - [`sys`]: /proc, rlimits, kernel receive timestamps; [`alloc`]: the counting allocator;
//!   [`logcap`]: the logger that timestamps call setup.
#![deny(unsafe_code)]

mod alloc;
mod asterisk;
mod baselines;
mod channels;
mod echo;
mod fake_ari;
mod flood;
mod generator;
mod logcap;
mod micro_alloc;
mod removal;
mod report;
mod scrape;
mod service_run;
mod suite;
mod sys;
mod wire;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

fn main() -> anyhow::Result<()> {
    suite::run(suite::Args::parse())
}
