//! Which device a run uses: the first CUDA GPU when the binary is built with `--features
//! cuda` and one is visible, else the CPU. `SQDF_DEVICE=cpu` forces the CPU.

use candle_core::Device;

pub fn default_device() -> Device {
    if std::env::var("SQDF_DEVICE").is_ok_and(|d| d == "cpu") {
        return Device::Cpu;
    }
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(0) {
        return d;
    }
    Device::Cpu
}
