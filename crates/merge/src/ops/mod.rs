//! Small merge operators, each with one job and no I/O: the session feeds
//! them decoded keys of the rows it merges and acts on their answers.

mod first_per_key;
mod window;

pub use first_per_key::FirstPerKey;
pub use window::{Window, WindowFunc, WindowRow, WindowValue};
