//! The diversity metrics against the packages that define them:
//! - LPIPS (`tools/parity/make_lpips_fixtures.py`, `tests/fixtures/parity/lpips/`):
//!   AlexNet in torchvision's checkpoint format (zip, f16) and the linear layers in the
//!   lpips package's own legacy-format `alex.pth`, distances as `lpips.LPIPS(net="alex")`
//!   gives them;
//! - DreamSim (`tools/parity/make_dreamsim_fixtures.py`, `tests/fixtures/parity/dreamsim/`):
//!   tiny backbones in the files dreamsim's cache folder holds (DINO's plain state dict,
//!   the converted CLIPs' `{"state_dict": ...}` `.pth.tar`, peft's adapter), features,
//!   embeddings and distances as `dreamsim.dreamsim()`'s model gives them.

use crate::parity::{assert_close, fixtures, io};
use candle_core::{Device, Tensor};
use sqdf::eval::diversity::mean_off_diagonal;
use sqdf::models::metrics::lpips::Lpips;

const DEV: Device = Device::Cpu;

fn lpips() -> Lpips {
    let dir = fixtures().join("lpips");
    Lpips::load(
        &dir.join("alexnet-owt-7be5be79.pth"),
        &dir.join("alex.pth"),
        &DEV,
    )
    .unwrap()
}

#[test]
fn lpips_distances_match_the_lpips_package() {
    let io = io("lpips/lpips_io.safetensors");
    let m = lpips();
    let images = &io["images"];
    let pairwise = m.pairwise(&m.features(images).unwrap()).unwrap();
    // The diagonal is zero up to the rounding of ‖a‖² + ‖a‖² − 2‖a‖².
    let d = pairwise.to_dtype(candle_core::DType::F32).unwrap();
    assert_close(&d, &io["distances"], "LPIPS pairwise distances");
    // Pair by pair, layer by layer as lpips computes it.
    let pick = |i: usize| images.narrow(0, i, 1).unwrap();
    let d01 = m.distance(&pick(0), &pick(1)).unwrap();
    assert_close(&d01, &io["distance_01"], "LPIPS(0, 1)");
    let d03 = m.distance(&pick(0), &pick(3)).unwrap();
    assert_close(&d03, &io["distance_03"], "LPIPS(0, 3)");
    // Where AlexNet's pools floor (48 x 40).
    let odd = &io["images_48x40"];
    let d = m
        .distance(&odd.narrow(0, 0, 1).unwrap(), &odd.narrow(0, 1, 1).unwrap())
        .unwrap();
    assert_close(&d, &io["distance_48x40"], "LPIPS at 48 x 40");
    // The diversity is the mean over the off-diagonal pairs.
    let want = io["distances"].to_vec2::<f32>().unwrap();
    let mean = (0..4)
        .flat_map(|i| (0..4).filter(move |&j| j != i).map(move |j| (i, j)))
        .map(|(i, j)| want[i][j] as f64)
        .sum::<f64>()
        / 12.0;
    assert!((mean_off_diagonal(&pairwise).unwrap() - mean).abs() < 1e-5 * mean);
}

#[test]
fn lpips_refuses_images_smaller_than_alexnet_takes() {
    let m = lpips();
    let small = Tensor::zeros((1, 3, 30, 64), candle_core::DType::F32, &DEV).unwrap();
    let err = m.features(&small).unwrap_err().to_string();
    assert!(
        err.contains("at least 31x31") && err.contains("30x64"),
        "{err}"
    );
}

#[test]
fn a_missing_lpips_key_names_the_file_and_the_key() {
    let dir = fixtures().join("lpips");
    // The linear layers' file given for AlexNet's.
    let err = Lpips::load(&dir.join("alex.pth"), &dir.join("alex.pth"), &DEV)
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("alex.pth") && msg.contains("features.0.weight"),
        "{msg}"
    );
}
