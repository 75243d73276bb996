//! ARI: the Asterisk REST Interface. [`model`] is pure data and decoding; the client does IO.
pub mod model;
