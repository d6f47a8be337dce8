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
/// waiting forever for another is the bug these tests look for. Its output goes to files,
/// so a chatty run never blocks on a full pipe.
fn finish_within(mut cmd: Command, limit: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = cmd
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
        .spawn()
        .expect("mpirun (OpenMPI or MPICH) must be on the PATH for the mpi feature's tests");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after {limit:?}: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: std::fs::read(&out).unwrap(),
        stderr: std::fs::read(&err).unwrap(),
    }
}
