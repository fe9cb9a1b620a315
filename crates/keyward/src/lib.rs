//! keyward, the server, as a library: its settings ([`config`]), the stores a URL names
//! ([`stores`]), and the one composition root, [`Application`], that `keyward serve`, the test
//! kit and an embedder that wants the whole server all build it with.

pub mod application;
pub mod config;
pub mod stores;

pub use application::{Application, StartError};
