//! `prune-batch` across MPI ranks (`mpirun -np N bnn-convert prune-batch ...`, cargo feature
//! `mpi`): rank r takes jobs r, r + N, r + 2N..., and rank 0 gathers every rank's records so
//! that it alone writes the summary.

use std::path::Path;

use mpi::datatype::PartitionMut;
use mpi::traits::*;
use mpi::Count;

use super::{Job, Record};
use crate::error::{Error, Result};

/// Runs `run` on this rank's share of `jobs`. Returns every rank's records (sorted by input
/// path) on rank 0 and `None` on the others.
pub fn run_on_ranks(jobs: &[Job], out_root: &Path, run: impl FnOnce(&[Job]) -> Result<Vec<Record>>) -> Result<Option<Vec<Record>>> {
    let universe = mpi::initialize().ok_or_else(|| Error::invalid(out_root, "MPI was already initialized"))?;
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size().max(1) as usize);
    let mine: Vec<Job> = jobs.iter().skip(rank).step_by(size).cloned().collect();
    // A rank that fails still joins both gathers, else the others would wait forever.
    let (records, failure) = match run(&mine) {
        Ok(r) => (r, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let bytes = serde_json::to_vec(&records).map_err(|e| Error::invalid(out_root, e.to_string()))?;
    let count = Count::try_from(bytes.len()).map_err(|_| Error::invalid(out_root, "batch records too large to gather"))?;
    let root = world.process_at_rank(0);
    let gathered = if rank == 0 {
        let mut counts: Vec<Count> = vec![0; size];
        root.gather_into_root(&count, &mut counts[..]);
        let displs: Vec<Count> = counts
            .iter()
            .scan(0, |at, &c| {
                let d = *at;
                *at += c;
                Some(d)
            })
            .collect();
        let mut all = vec![0u8; counts.iter().map(|&c| c as usize).sum()];
        {
            let mut parts = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            root.gather_varcount_into_root(&bytes[..], &mut parts);
        }
        let mut merged = Vec::new();
        for (&d, &c) in displs.iter().zip(&counts) {
            let part: Vec<Record> = serde_json::from_slice(&all[d as usize..(d + c) as usize])
                .map_err(|e| Error::invalid(out_root, format!("records from another rank: {e}")))?;
            merged.extend(part);
        }
        merged.sort_by(|a, b| a.path.cmp(&b.path));
        Some(merged)
    } else {
        root.gather_into(&count);
        root.gather_varcount_into(&bytes[..]);
        None
    };
    match failure {
        Some(e) => Err(e),
        None => Ok(gathered),
    }
}
