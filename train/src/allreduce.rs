//! Gradient averaging across ranks with fusion buffers: every gradient tensor of a step is
//! copied into a few large flat buffers (at most `fusion_bytes` each, 64 MiB by default as
//! in Horovod) and each buffer is allreduced in one call, instead of one call per tensor.
//!
//! [`Communicator`] hides whether there is MPI: [`Single`] is the one-process case, and
//! `MpiComm` (feature `mpi`) the `mpirun` case.

use crate::error::Result;

/// Horovod's default fusion buffer size.
pub const DEFAULT_FUSION_BYTES: usize = 64 * 1024 * 1024;

/// Where each tensor's elements go in the fusion buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FusionPlan {
    /// `(buffer, offset)` of each tensor, in tensor order.
    slots: Vec<(usize, usize)>,
    /// Element count of each tensor.
    sizes: Vec<usize>,
    /// Element count of each buffer.
    buffer_lens: Vec<usize>,
    /// `(buffer, offset)` of the extra scalars appended after the tensors.
    extras_at: (usize, usize),
    /// How many extra scalars.
    extras: usize,
}

impl FusionPlan {
    /// Plans buffers of at most `fusion_bytes` of float32 for tensors of `sizes` elements,
    /// in order, plus `extras` scalars (loss and accuracy, averaged in the same call). A
    /// tensor larger than a buffer gets a buffer of its own; `fusion_bytes == 0` means one
    /// buffer per tensor (Horovod without fusion).
    pub fn new(sizes: &[usize], extras: usize, fusion_bytes: usize) -> Self {
        let cap = fusion_bytes / 4;
        let mut slots = Vec::with_capacity(sizes.len());
        let mut buffer_lens: Vec<usize> = Vec::new();
        for &n in sizes {
            let fits = buffer_lens.last().is_some_and(|&len| cap > 0 && len + n <= cap);
            if !fits {
                buffer_lens.push(0);
            }
            let b = buffer_lens.len() - 1;
            slots.push((b, buffer_lens[b]));
            buffer_lens[b] += n;
        }
        if buffer_lens.is_empty() || (cap > 0 && buffer_lens.last().is_some_and(|&l| l + extras > cap && l > 0)) || (cap == 0 && extras > 0) {
            buffer_lens.push(0);
        }
        let last = buffer_lens.len() - 1;
        let extras_at = (last, buffer_lens[last]);
        buffer_lens[last] += extras;
        FusionPlan { slots, sizes: sizes.to_vec(), buffer_lens, extras_at, extras }
    }

    /// Number of buffers, i.e. allreduce calls per step.
    pub fn num_buffers(&self) -> usize {
        self.buffer_lens.len()
    }

    /// Total bytes allreduced per step.
    pub fn bytes(&self) -> usize {
        self.buffer_lens.iter().sum::<usize>() * 4
    }

    /// Empty buffers of the planned sizes.
    pub fn buffers(&self) -> Vec<Vec<f32>> {
        self.buffer_lens.iter().map(|&n| vec![0.0; n]).collect()
    }

    /// Copies `tensors` (one slice per planned tensor) and `extras` into `bufs`.
    pub fn pack(&self, tensors: &[&[f32]], extras: &[f32], bufs: &mut [Vec<f32>]) {
        assert_eq!(tensors.len(), self.sizes.len(), "tensor count differs from the plan");
        assert_eq!(extras.len(), self.extras, "extra count differs from the plan");
        for ((t, &(b, off)), &n) in tensors.iter().zip(&self.slots).zip(&self.sizes) {
            bufs[b][off..off + n].copy_from_slice(t);
        }
        let (b, off) = self.extras_at;
        bufs[b][off..off + self.extras].copy_from_slice(extras);
    }

    /// Copies tensor `i` out of `bufs`, multiplied by `scale` (1/N to average a sum).
    pub fn unpack(&self, bufs: &[Vec<f32>], i: usize, scale: f32, out: &mut [f32]) {
        let (b, off) = self.slots[i];
        for (o, &v) in out.iter_mut().zip(&bufs[b][off..off + self.sizes[i]]) {
            *o = v * scale;
        }
    }

    /// The extra scalars in `bufs`, multiplied by `scale`.
    pub fn extras(&self, bufs: &[Vec<f32>], scale: f32) -> Vec<f32> {
        let (b, off) = self.extras_at;
        bufs[b][off..off + self.extras].iter().map(|v| v * scale).collect()
    }
}

/// The collective operations the trainer needs.
pub trait Communicator {
    /// This process's rank, 0-based.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Sums `buf` element-wise over all ranks, in place; every rank gets the same result.
    fn allreduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// Overwrites `buf` with rank 0's contents.
    fn broadcast_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// Overwrites `buf` with rank 0's contents.
    fn broadcast_i64(&self, buf: &mut [i64]) -> Result<()>;
    /// Every rank's `value`, in rank order (on every rank).
    fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>>;
    /// Ends every rank of the job with exit status `code` (a failed rank must not leave
    /// the others waiting in a collective).
    fn abort(&self, code: i32) -> !;
}

/// One process, no MPI: every collective is the identity.
pub struct Single;

impl Communicator for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn allreduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast_f32(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast_i64(&self, _buf: &mut [i64]) -> Result<()> {
        Ok(())
    }
    fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        Ok(vec![value])
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

#[cfg(feature = "mpi")]
pub use self::mpi_comm::MpiComm;

#[cfg(feature = "mpi")]
mod mpi_comm {
    use mpi::collective::SystemOperation;
    use mpi::traits::{Communicator as _, CommunicatorCollectives, Root};

    use super::Communicator;
    use crate::error::Result;

    /// `MPI_COMM_WORLD` of an `mpirun` launch.
    pub struct MpiComm {
        // Finalizes MPI when dropped.
        _universe: mpi::environment::Universe,
        world: mpi::topology::SimpleCommunicator,
    }

    impl MpiComm {
        /// Initializes MPI if this process was started by `mpirun` (Open MPI, MPICH or PMIx
        /// environment variables present); `None` otherwise, so a plain run needs no MPI
        /// daemon.
        pub fn from_launcher() -> Option<MpiComm> {
            let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"].iter().any(|v| std::env::var_os(v).is_some());
            if !launched {
                return None;
            }
            let universe = mpi::initialize()?;
            let world = universe.world();
            Some(MpiComm { _universe: universe, world })
        }
    }

    impl Communicator for MpiComm {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn allreduce_sum(&self, buf: &mut [f32]) -> Result<()> {
            // MPI errors abort the job (MPI_ERRORS_ARE_FATAL), so there is nothing to map.
            let send = buf.to_vec();
            self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
            Ok(())
        }
        fn broadcast_f32(&self, buf: &mut [f32]) -> Result<()> {
            self.world.process_at_rank(0).broadcast_into(buf);
            Ok(())
        }
        fn broadcast_i64(&self, buf: &mut [i64]) -> Result<()> {
            self.world.process_at_rank(0).broadcast_into(buf);
            Ok(())
        }
        fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>> {
            let mut out = vec![0u64; self.size()];
            self.world.all_gather_into(&value, &mut out[..]);
            Ok(out)
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_fits_in_one_buffer_by_default() {
        let plan = FusionPlan::new(&[784 * 256, 256, 10], 2, DEFAULT_FUSION_BYTES);
        assert_eq!(plan.num_buffers(), 1);
        assert_eq!(plan.bytes(), (784 * 256 + 256 + 10 + 2) * 4);
    }

    #[test]
    fn small_buffers_split_in_order_and_big_tensors_go_alone() {
        // 16-byte buffers hold 4 floats: [3] [5 alone] [2, 1 + 1 extra]... planned greedily.
        let plan = FusionPlan::new(&[3, 5, 2, 1], 1, 16);
        assert_eq!(plan.slots, vec![(0, 0), (1, 0), (2, 0), (2, 2)]);
        assert_eq!(plan.buffer_lens, vec![3, 5, 4]);
        assert_eq!(plan.extras_at, (2, 3));
        // No fusion: one buffer per tensor, extras in their own.
        let none = FusionPlan::new(&[3, 5], 2, 0);
        assert_eq!(none.num_buffers(), 3);
    }

    #[test]
    fn pack_unpack_round_trip_with_averaging() {
        let a = [1.0f32, 2.0, 3.0];
        let b = [4.0f32, 5.0, 6.0, 7.0, 8.0];
        let c = [9.0f32];
        for fusion in [0, 8, 16, 1 << 20] {
            let plan = FusionPlan::new(&[3, 5, 1], 2, fusion);
            let mut bufs = plan.buffers();
            plan.pack(&[&a, &b, &c], &[0.5, 7.0], &mut bufs);
            // Two identical ranks summed, then averaged, gives the tensors back.
            for buf in bufs.iter_mut() {
                for v in buf.iter_mut() {
                    *v *= 2.0;
                }
            }
            let mut out = vec![0.0; 5];
            plan.unpack(&bufs, 1, 0.5, &mut out);
            assert_eq!(out, b);
            let mut out = vec![0.0; 3];
            plan.unpack(&bufs, 0, 0.5, &mut out);
            assert_eq!(out, a);
            let mut out = vec![0.0; 1];
            plan.unpack(&bufs, 2, 1.0, &mut out);
            assert_eq!(out, [18.0]);
            assert_eq!(plan.extras(&bufs, 0.5), vec![0.5, 7.0]);
        }
    }
}
