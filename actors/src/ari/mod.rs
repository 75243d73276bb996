//! ARI: the Asterisk REST Interface. [`model`] is pure data and decoding; [`path`] puts ids
//! into URLs, one path segment each; [`liveness`] and [`link`] are the pure rules of the events
//! link (when to ping, when it is dead, which connection is current, backoff); [`client`] does
//! the REST IO and [`events`] the WebSocket protocol; [`tls`] is the trust for `https://` and
//! `wss://`.
pub mod client;
pub mod events;
pub mod link;
pub mod liveness;
pub mod model;
pub mod path;
pub mod tls;
