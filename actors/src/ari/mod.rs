//! ARI: the Asterisk REST Interface. [`model`] is pure data and decoding; [`client`] does IO.
pub mod client;
pub mod model;
