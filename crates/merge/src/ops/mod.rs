//! Small merge operators, each with one job and no I/O. [`crate::tree`]
//! wires them into the plan of one statement; each is tested here on
//! fake inputs.

mod bounded_sort;
mod first_per_key;
mod group_aggregate;
mod group_output;
mod limit;
mod sorted_merge;
mod window;
mod window_rows;

#[cfg(test)]
mod group_tests;

pub use bounded_sort::{row_bytes, BoundedSort};
pub use first_per_key::FirstPerKey;
pub use group_aggregate::{output_oid, Group, GroupAggregate};
pub use group_output::{format_of, GroupOutput, Projected};
pub use limit::{Admit, LimitOffset};
pub use sorted_merge::{compare, SortedMerge};
pub use window::{Window, WindowFunc, WindowRow, WindowValue};
pub use window_rows::{WindowRows, Windowed};
