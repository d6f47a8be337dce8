//! Which device a run uses: the first CUDA GPU when the binary is built with `--features
//! cuda` and one is visible, else the CPU (with a warning in a CUDA build).
//! `SQDF_DEVICE=cpu` forces the CPU.

use candle_core::Device;

pub fn default_device() -> Device {
    if std::env::var("SQDF_DEVICE").is_ok_and(|d| d == "cpu") {
        return Device::Cpu;
    }
    #[cfg(feature = "cuda")]
    match Device::new_cuda(0) {
        Ok(d) => return d,
        Err(e) => {
            eprintln!("warning: built with CUDA but no GPU is usable ({e}); running on the CPU")
        }
    }
    Device::Cpu
}
