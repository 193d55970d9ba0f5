//! The Service maps: what they hold (`maps`, behind a trait with a fake
//! for tests, failing writes through `datapath::fault`; `aya_maps` for the
//! pinned ones), how
//! desired frontends are written into them (`programmer`), and the
//! connect-time programs' attachment (`socket`).
mod aya_maps;
pub mod maps;
pub mod programmer;
pub mod socket;
