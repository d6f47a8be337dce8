//! The processes of one job. Built with the `mpi` feature and started by `mpirun` or Slurm's
//! `srun`, a process is one rank of several (MPI: OpenMPI, MPICH); otherwise it is rank 0 of
//! 1 and nothing here talks to anyone. `sqdf compare` spreads its runs over the ranks;
//! `sqdf run` trains one model on all of them (data parallel, `train::trainer`), exchanging
//! what `collectives` offers.
//!
//! A rank that fails calls `abort`, which MPI turns into the end of every rank: a rank
//! waiting for the others never hangs on one that is gone (mpirun also ends the job when a
//! rank dies). The processes a rank starts (a comparison's runs) are single-process: the
//! launcher's variables are removed from their environment (`detach`), so that they do not
//! take themselves for ranks.

use std::process::Command;

mod collectives;

/// Environment variables by which OpenMPI, MPICH/Hydra, PMIx and Slurm tell a process it
/// is a rank.
const LAUNCHER_PREFIXES: [&str; 8] = [
    "OMPI_",
    "PMI_",
    "PMIX_",
    "MPI_LOCALRANK",
    "MPI_LOCALNRANKS",
    "SLURM_PROCID",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_LOCALID",
];

/// Whether a launcher started this process as a rank.
pub fn launched_as_rank() -> bool {
    launched_ranks() > 1
        || ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
            .iter()
            .any(|v| std::env::var_os(v).is_some())
}

/// The first of these variables that holds a number.
fn env_number(vars: &[&str]) -> Option<usize> {
    vars.iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// How many ranks the launcher started in all (1 without a launcher): OpenMPI's, Hydra's
/// (MPICH) or Slurm's count for this step (`srun -n N`; set whatever its MPI plugin).
pub fn launched_ranks() -> usize {
    env_number(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"])
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// How many ranks the launcher started on this machine (1 without a launcher): they share
/// its cores.
pub fn ranks_on_this_node() -> usize {
    env_number(&["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"])
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// This rank's place among the ranks on its machine (0 without a launcher): OpenMPI's,
/// MPICH's or Slurm's.
pub fn local_rank() -> usize {
    env_number(&[
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ])
    .unwrap_or(0)
}

/// Removes the launcher's variables from a child's environment.
pub fn detach(cmd: &mut Command) {
    detach_from(cmd, std::env::vars_os().map(|(k, _)| k));
}

/// Removes those of `inherited` that are the launcher's.
fn detach_from(cmd: &mut Command, inherited: impl Iterator<Item = std::ffi::OsString>) {
    for k in inherited {
        let name = k.to_string_lossy();
        if LAUNCHER_PREFIXES.iter().any(|p| name.starts_with(p)) {
            cmd.env_remove(&k);
        }
    }
}

/// This process's place in the job.
pub struct Job {
    rank: usize,
    size: usize,
    #[cfg(feature = "mpi")]
    world: Option<(
        mpi::environment::Universe,
        mpi::topology::SimpleCommunicator,
    )>,
}

impl Job {
    /// Rank 0 of 1.
    pub fn single() -> Self {
        Self {
            rank: 0,
            size: 1,
            #[cfg(feature = "mpi")]
            world: None,
        }
    }

    /// MPI's world when a launcher started this process (and the `mpi` feature is built),
    /// rank 0 of 1 otherwise. Started by a launcher without the feature is an error: N
    /// copies would each run everything.
    pub fn init() -> anyhow::Result<Self> {
        if !launched_as_rank() {
            return Ok(Self::single());
        }
        #[cfg(feature = "mpi")]
        {
            use mpi::traits::Communicator;
            let universe = mpi::initialize()
                .ok_or_else(|| anyhow::anyhow!("MPI was initialised twice in this process"))?;
            let world = universe.world();
            let (rank, size) = (world.rank() as usize, world.size() as usize);
            if size == 1 && launched_ranks() > 1 {
                anyhow::bail!(
                    "started as one of {} ranks, but MPI sees a job of 1: the launcher and the MPI library do not speak (under Slurm, `srun --mpi=pmix` or the plugin your MPI was built with)",
                    launched_ranks()
                );
            }
            Ok(Self {
                rank,
                size,
                world: Some((universe, world)),
            })
        }
        #[cfg(not(feature = "mpi"))]
        anyhow::bail!(
            "started by mpirun or srun, but this sqdf is built without MPI: build it with \
             `cargo build --release --features mpi` (docs/scale-out.md)"
        )
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Waits for every rank to get here.
    pub fn barrier(&self) {
        #[cfg(feature = "mpi")]
        if let Some((_, world)) = &self.world {
            use mpi::collective::CommunicatorCollectives;
            world.barrier();
        }
    }

    /// `work`'s result; on several ranks an error or a panic instead prints the error with
    /// this rank and ends every rank (the others may wait for this one in an exchange, and a
    /// panic would unwind into MPI_Finalize, which waits for them too).
    pub fn run_or_abort<T>(&self, work: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        if self.size == 1 {
            return work();
        }
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
            .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked (the message is above)")));
        ran.or_else(|e| {
            eprintln!("error (rank {}): {e:#}", self.rank);
            self.abort(1)
        })
    }

    /// Ends every rank of the job (a single process: this one) with `code`.
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if let Some((_, world)) = &self.world {
            use mpi::traits::Communicator;
            world.abort(code);
        }
        std::process::exit(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_loses_the_launchers_variables_and_keeps_the_rest() {
        let mut cmd = Command::new("true");
        let inherited = [
            "OMPI_COMM_WORLD_RANK",
            "PMI_RANK",
            "SLURM_PROCID",
            "SLURM_STEP_NUM_TASKS",
            "SQDF_KEPT",
        ];
        detach_from(&mut cmd, inherited.iter().map(std::ffi::OsString::from));
        let removed: Vec<String> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(removed.len(), 4, "{removed:?}");
        assert!(!removed.contains(&"SQDF_KEPT".to_string()));
    }

    #[test]
    fn without_a_launcher_a_process_is_rank_0_of_1() {
        if launched_as_rank() {
            return; // the tests themselves run under mpirun
        }
        let job = Job::init().unwrap();
        assert_eq!((job.rank(), job.size()), (0, 1));
        job.barrier();
    }
}
