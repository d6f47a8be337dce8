//! What data-parallel training exchanges between ranks: every rank's share gathered to
//! every rank, sums taken in rank order (so that every rank gets the same bits, whatever
//! MPI's reduction tree would have done), and a message from rank 0. On one process each is
//! the identity.

use super::Job;
use std::ops::Range;

impl Job {
    /// This rank's contiguous share of `n` items: the first `n mod size` ranks take one more.
    pub fn share(&self, n: usize) -> Range<usize> {
        share_of(n, self.rank, self.size)
    }

    /// Every rank's `mine`, one after the other in rank order (lengths may differ).
    pub fn all_gather_f32(&self, mine: &[f32]) -> anyhow::Result<Gathered<f32>> {
        #[cfg(feature = "mpi")]
        if let Some((_, world)) = &self.world {
            return gather_varcount(world, mine);
        }
        Ok(Gathered::one(mine))
    }

    /// Every rank's `mine`, one after the other in rank order.
    pub fn all_gather_bytes(&self, mine: &[u8]) -> anyhow::Result<Gathered<u8>> {
        #[cfg(feature = "mpi")]
        if let Some((_, world)) = &self.world {
            return gather_varcount(world, mine);
        }
        Ok(Gathered::one(mine))
    }

    /// The element-wise sum of every rank's `mine` (all of one length), added in rank order
    /// on every rank: the result is bitwise the same everywhere and from run to run.
    pub fn sum_in_rank_order(&self, mine: Vec<f32>) -> anyhow::Result<Vec<f32>> {
        if self.size == 1 {
            return Ok(mine);
        }
        let gathered = self.all_gather_f32(&mine)?;
        let mut parts = gathered.parts();
        // Rank 0's numbers as they are (a -0.0 stays one), then each other rank's added.
        let mut sum = parts.next().unwrap_or_default().to_vec();
        for (r, p) in parts.enumerate().map(|(i, p)| (i + 1, p)) {
            anyhow::ensure!(
                p.len() == sum.len(),
                "rank {r} sent {} numbers to sum where rank {} has {}",
                p.len(),
                self.rank,
                sum.len()
            );
            for (s, v) in sum.iter_mut().zip(p) {
                *s += v;
            }
        }
        Ok(sum)
    }

    /// Rank 0's `message` on every rank (the others pass anything: it is not read).
    pub fn broadcast_from_root(&self, message: Vec<u8>) -> Vec<u8> {
        #[cfg(feature = "mpi")]
        if let Some((_, world)) = &self.world {
            use mpi::traits::{Communicator, Root};
            let root = world.process_at_rank(0);
            let mut len = [message.len() as u64];
            root.broadcast_into(&mut len[..]);
            if len[0] == 0 {
                // An empty Vec<u8>'s pointer is 1, which OpenMPI reads as MPI_IN_PLACE.
                return Vec::new();
            }
            let mut buf = if self.rank == 0 {
                message
            } else {
                vec![0u8; len[0] as usize]
            };
            root.broadcast_into(&mut buf[..]);
            return buf;
        }
        message
    }
}

/// What a gather brings every rank: all ranks' numbers, one after the other in rank order
/// (one copy, as MPI writes it), and how many each rank sent.
pub struct Gathered<T> {
    pub all: Vec<T>,
    pub counts: Vec<usize>,
}

impl<T: Clone> Gathered<T> {
    fn one(mine: &[T]) -> Self {
        Self {
            all: mine.to_vec(),
            counts: vec![mine.len()],
        }
    }

    /// Each rank's numbers, in rank order.
    pub fn parts(&self) -> impl Iterator<Item = &[T]> {
        let mut rest = &self.all[..];
        self.counts.iter().map(move |&c| {
            let (head, tail) = rest.split_at(c);
            rest = tail;
            head
        })
    }
}

fn share_of(n: usize, rank: usize, size: usize) -> Range<usize> {
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// MPI counts and offsets are 32-bit: a gather of more numbers in all (2^31 - 1) is an error
/// before anything is sent, never a wrapped count.
#[cfg(feature = "mpi")]
fn gather_varcount<T>(
    world: &mpi::topology::SimpleCommunicator,
    mine: &[T],
) -> anyhow::Result<Gathered<T>>
where
    T: mpi::datatype::Equivalence + Copy + Default,
{
    use mpi::datatype::PartitionMut;
    use mpi::traits::{Communicator, CommunicatorCollectives};
    let size = world.size() as usize;
    // A length past i32 is sent as -1, so that every rank sees it and stops.
    let len = mpi::Count::try_from(mine.len()).unwrap_or(-1);
    let mut counts_i32 = vec![0 as mpi::Count; size];
    world.all_gather_into(&len, &mut counts_i32[..]);
    let mut displs = Vec::with_capacity(size);
    let mut total: mpi::Count = 0;
    for (r, &c) in counts_i32.iter().enumerate() {
        displs.push(total);
        total = total.checked_add(c).filter(|_| c >= 0).ok_or_else(|| {
            anyhow::anyhow!(
                "rank {r}'s share of a gather takes the total past MPI's 2^31 - 1 numbers; use fewer ranks or a smaller batch"
            )
        })?;
    }
    let total = total as usize;
    let counts: Vec<usize> = counts_i32.iter().map(|&c| c as usize).collect();
    if total == 0 {
        return Ok(Gathered {
            all: Vec::new(),
            counts,
        });
    }
    let mut all = vec![T::default(); total];
    // An empty slice's pointer is its alignment, which OpenMPI may read as MPI_IN_PLACE (1):
    // an empty send goes from a real allocation.
    let holder = [T::default()];
    let send = if mine.is_empty() { &holder[..0] } else { mine };
    {
        let mut part = PartitionMut::new(&mut all[..], &counts_i32[..], &displs[..]);
        world.all_gather_varcount_into(send, &mut part);
    }
    Ok(Gathered { all, counts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_item_once_in_order() {
        for n in [0, 1, 5, 64, 65] {
            for size in [1, 2, 3, 7] {
                let parts: Vec<Range<usize>> = (0..size).map(|r| share_of(n, r, size)).collect();
                let flat: Vec<usize> = parts.iter().flat_map(|p| p.clone()).collect();
                assert_eq!(flat, (0..n).collect::<Vec<_>>(), "n {n}, size {size}");
                let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            }
        }
    }

    #[test]
    fn one_process_gathers_and_sums_to_itself() {
        let job = Job::single();
        let gathered = job.all_gather_f32(&[1.0, 2.0]).unwrap();
        assert_eq!(
            gathered.parts().collect::<Vec<_>>(),
            vec![&[1.0f32, 2.0][..]]
        );
        assert_eq!(job.sum_in_rank_order(vec![3.0]).unwrap(), vec![3.0]);
        assert_eq!(job.broadcast_from_root(b"x".to_vec()), b"x".to_vec());
        assert_eq!(job.share(7), 0..7);
    }
}
