//! `prune-batch`: prune every checkpoint under some folders and inside `.tar`, `.tar.zst` and
//! `.zst` archives, in parallel, into a mirror tree, with a CSV and JSON summary; resumable.

mod archive;
mod discover;
#[cfg(feature = "mpi")]
pub mod mpi;
mod run;
mod summary;

pub use discover::{check_output_root, discover, Job, JobSource};
pub use run::{run_batch, BatchOptions};
pub use summary::{write_summary, Record, Status};
