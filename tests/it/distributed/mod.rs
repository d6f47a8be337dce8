//! The `mpi` feature under `mpirun -n 2` (docs/scale-out.md): comparisons spread over the
//! ranks (`compare`) and one model trained on both (`training`). Needs `mpirun` (OpenMPI or
//! MPICH) on the PATH.

mod compare;
mod training;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn sqdf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sqdf"))
}

/// `mpirun -n N sqdf` (as root and on fewer cores than ranks where need be); the caller adds
/// sqdf's arguments.
fn mpirun(ranks: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-n"])
        .arg(ranks.to_string())
        .arg(env!("CARGO_BIN_EXE_sqdf"));
    c
}

/// Runs `cmd` to its end, or fails the test if it is still running after `limit`: a rank
/// waiting forever for another is the bug these tests look for.
fn finish_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun (OpenMPI or MPICH) must be on the PATH for the mpi feature's tests");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}
