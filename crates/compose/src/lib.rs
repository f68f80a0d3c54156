//! Compose files as plain data, for `shoal stack deploy`: the file as
//! written (`model`: structure checked, scalars kept as text with where
//! they were written), the variable interpolation compose files use
//! (`interpolate`) and the `.env` files that feed it (`dotenv`), the
//! building blocks that turn written values into typed ones (`resolve`),
//! and the values docker writes the same way in flags and files (`units`,
//! `ports`, `mounts`).
//! `stack` resolves whole files into a stack's services, networks and
//! volumes, and merges several files as docker does; the binary maps
//! those onto service specs.
//!
//! Pure functions over strings: no IO, no orchestrator or control-plane
//! types (DESIGN.md's arrows).

#![forbid(unsafe_code)]

pub mod dotenv;
pub mod interpolate;
pub mod model;
pub mod mounts;
pub mod ports;
pub mod resolve;
pub mod stack;
pub mod units;

pub use dotenv::{DotenvError, parse_dotenv};
pub use interpolate::{Interpolated, InterpolationError, interpolate};
pub use model::{ComposeFile, ParseError, parse};
pub use ports::Publish;
pub use resolve::{Resolver, Vars, split_words};
