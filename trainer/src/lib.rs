//! CRT Lab trainer library.
//!
//! `config`, `events` and `supervise` are the wire format shared with the server and build without
//! candle; everything else is the engine, behind the default `engine` feature.

pub mod config;
pub mod events;
pub mod supervise;

#[cfg(feature = "engine")]
pub mod bench;
#[cfg(feature = "engine")]
pub mod certify;
#[cfg(feature = "engine")]
pub mod cli;
#[cfg(feature = "engine")]
pub mod context;
#[cfg(feature = "engine")]
pub mod data;
#[cfg(feature = "engine")]
pub mod device;
#[cfg(feature = "engine")]
pub mod kernels;
#[cfg(feature = "engine")]
pub mod methods;
#[cfg(feature = "engine")]
pub mod models;
#[cfg(feature = "engine")]
pub mod noise;
#[cfg(feature = "engine")]
pub mod report;
#[cfg(feature = "engine")]
pub mod stop;
#[cfg(feature = "engine")]
pub mod train;
