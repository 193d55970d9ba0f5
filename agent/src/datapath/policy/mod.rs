//! The NetworkPolicy maps: what they hold (`maps`, behind a trait with a
//! fake for tests, failing writes through `datapath::fault`; `aya_maps` for
//! the pinned ones), how a compiled policy
//! is written into them (`programmer`), and the counters read back from
//! them (`stats`).
mod aya_maps;
pub mod maps;
pub mod programmer;
pub mod stats;
