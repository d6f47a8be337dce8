//! Which device a run uses: a CUDA GPU when the binary is built with `--features cuda` and
//! one is visible, else the CPU (with a warning in a CUDA build). The GPU is the first, or
//! for one of several ranks on a machine the one of its rank on that machine (the launcher's
//! local rank), so that ranks do not share a GPU where there are enough.
//! `SQDF_DEVICE=cpu` forces the CPU.

use candle_core::Device;

pub fn default_device() -> Device {
    if std::env::var("SQDF_DEVICE").is_ok_and(|d| d == "cpu") {
        return Device::Cpu;
    }
    #[cfg(feature = "cuda")]
    {
        let local = crate::distributed::local_rank();
        if local > 0 {
            // One GPU per rank on this machine where it has them (Slurm may show each task
            // only its own, as GPU 0).
            if let Ok(d) = Device::new_cuda(local) {
                return d;
            }
        }
        match Device::new_cuda(0) {
            Ok(d) => return d,
            Err(e) => {
                eprintln!("warning: built with CUDA but no GPU is usable ({e}); running on the CPU")
            }
        }
    }
    Device::Cpu
}
