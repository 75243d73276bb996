//! # rtpvisor-actors
//!
//! The actor system of rtpvisor and the pure protocol code it stands on.
//!
//! # Layout
//!
//! Pure (no IO, no actix/tokio imports, unit-tested in-module):
//! - [`rtp`]: RTP header parse and write (RFC 3550 section 5.1).
//! - [`stats`]: receive statistics: extended sequence numbers, loss, duplicates, reordering,
//!   RFC 3550 A.8 interarrival jitter, delay against the stream's schedule, late packets.
//! - [`probe`]: probe streams: what a probe packet carries and how its round trip is matched.
//! - [`echo_guard`]: the shared echo's safeguards: allow-list (CIDRs), per-source token
//!   buckets in a fixed table, size limit; drops counted by reason.
//! - [`mode`]: the call modes (echo, probe, shared-echo).
//! - [`call`]: the call procedure (setup steps, waits and retries, teardown; the takeover of an
//!   adopted call) as a state machine.
//! - [`adopt`]: which live calls found in Asterisk a (re)connected process takes over.
//! - [`admission`]: whether a caller's StasisStart becomes a call (duplicates, mode, limits).
//! - [`registry`]: the live calls, found by caller, externalMedia channel or bridge id.
//! - [`intensity`]: restart intensity (at most N failures in T), OTP style.
//! - [`command_queue`]: what bounds the media engine's command queue: a counted capacity for
//!   the commands it may refuse, requests that share one answer.
//! - [`thread_health`]: whether a dedicated thread still turns (heartbeat, exit record) and
//!   whether its supervisor restarts it or escalates.
//! - [`latency`]: latency histograms (HdrHistogram) and their summaries in milliseconds.
//! - [`ended`]: recently ended calls and what each measured, paged by sequence number.
//! - [`quality`]: call quality: the G.107 E-model simplified for G.711 (R-factor, MOS).
//! - [`ports`]: the RTP port pool: lease, release, quarantine, skipped ports.
//! - [`naming`]: names of what rtpvisor creates in Asterisk, scoped by instance (app).
//! - [`reconcile`]: what a reconciliation with Asterisk must end (orphans, vanished calls).
//! - [`ari::model`]: ARI resources and events, decoded by their `type`.
//! - [`ari::path`]: ids in ARI URLs, percent-encoded as one path segment each.
//! - [`ari::liveness`]: when the events WebSocket is pinged and when it is declared dead.
//! - [`ari::link`]: the link's state: connection generations, backoff, why it is down.
//!
//! IO:
//! - [`ari::client`]: ARI REST calls and the events WebSocket request (awc).
//! - [`ari::events`]: the events WebSocket protocol: frames, ping/pong, close, decoding into
//!   typed items; the actor sees only events and link changes.
//! - [`media`]: the media engine: owns every call's RTP socket, echoes, probes, measures.
//! - [`shared_echo`]: the shared echo's workers (UDP 4000, one SO_REUSEPORT socket each):
//!   reflect within the guard's limits, count for watched shared-echo calls; restarted in place.
//! - [`sys`]: the socket syscalls std and mio lack (nix; libc for sendmmsg): kernel receive stamps,
//!   recvmmsg/sendmmsg batches; and the stamp-to-`Instant` conversion.
//! - [`actors`]: thin actor shells: supervisor, port manager, channel, echo, metrics.
// `unsafe` only in `sys::raw` (two libc calls, each with its safety argument).
#![deny(unsafe_code)]

pub mod actors;
pub mod admission;
pub mod adopt;
pub mod call;
pub mod ari;
pub mod command_queue;
pub mod echo_guard;
pub mod ended;
pub mod intensity;
pub mod latency;
pub mod media;
pub mod mode;
pub mod naming;
pub mod ports;
pub mod probe;
pub mod quality;
pub mod reconcile;
pub mod registry;
pub mod rtp;
pub mod shared_echo;
pub mod stats;
pub mod sys;
pub mod thread_health;
