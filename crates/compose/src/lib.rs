//! Compose files as plain data, for `shoal stack deploy`: the file as
//! written (`model`: structure checked, scalars kept as text with where
//! they were written), the variable interpolation compose files use
//! (`interpolate`) and the `.env` files that feed it (`dotenv`). Resolving
//! the model into service specs comes next. Pure functions over strings: no IO, no
//! orchestrator or control-plane types (DESIGN.md's arrows).

#![forbid(unsafe_code)]

pub mod dotenv;
pub mod interpolate;
pub mod model;

pub use dotenv::{DotenvError, parse_dotenv};
pub use interpolate::{Interpolated, InterpolationError, interpolate};
