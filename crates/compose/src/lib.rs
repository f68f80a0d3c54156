//! Compose files as plain data, for `shoal stack deploy`: so far the
//! variable interpolation compose files use (`interpolate`) and the `.env`
//! files that feed it (`dotenv`). Pure functions over strings: no IO, no
//! orchestrator or control-plane types (DESIGN.md's arrows).

#![forbid(unsafe_code)]

pub mod dotenv;
pub mod interpolate;

pub use dotenv::{DotenvError, parse_dotenv};
pub use interpolate::{Interpolated, InterpolationError, interpolate};
