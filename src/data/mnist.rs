//! The 10,000 real MNIST digits shipped in `data/mnist10k.safetensors`, as tensors in
//! [-1, 1] (the diffusion models' range), with the project's fixed train / held-out split
//! (data/README.md): 100 digits per class held out, chosen by a seeded shuffle.

use crate::rng::{seeded, Rng};
use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::Rng as _;
use std::path::{Path, PathBuf};

pub const FILE: &str = "data/mnist10k.safetensors";
/// Seed of the one shuffle that fixed the split (documented in data/README.md).
pub const SPLIT_SEED: u64 = 2024;
pub const HELD_OUT_PER_CLASS: usize = 100;
pub const CLASSES: usize = 10;
pub const SIDE: usize = 28;

/// One part of the data set: images [N, 1, 28, 28] in [-1, 1] and labels (u32 [N]).
#[derive(Clone)]
pub struct Digits {
    pub images: Tensor,
    pub labels: Vec<u32>,
}

/// Where the data file is: under the working directory, else under the source tree.
pub fn default_path() -> PathBuf {
    let local = PathBuf::from(FILE);
    if local.is_file() {
        local
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(FILE)
    }
}

/// (training split, held-out split).
pub fn load_split(path: &Path, device: &Device) -> Result<(Digits, Digits)> {
    let file = crate::tensor_io::read(path, &Device::Cpu)?;
    let get = |k: &str| {
        file.tensors
            .get(k)
            .ok_or_else(|| anyhow!("{}: missing key `{k}`", path.display()))
    };
    let (images, labels) = (get("images")?, get("labels")?);
    if images.dims().len() != 3 || images.dims()[1..] != [SIDE, SIDE] {
        bail!(
            "{}: `images` has shape {:?}, expected [N, 28, 28]",
            path.display(),
            images.dims()
        );
    }
    let labels: Vec<u32> = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); CLASSES];
    for (i, &l) in labels.iter().enumerate() {
        by_class
            .get_mut(l as usize)
            .ok_or_else(|| anyhow!("label {l} out of range"))?
            .push(i);
    }
    let mut rng = seeded(SPLIT_SEED);
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for rows in by_class.iter_mut() {
        rows.shuffle(&mut rng);
        held.extend_from_slice(&rows[..HELD_OUT_PER_CLASS.min(rows.len())]);
        train.extend_from_slice(&rows[HELD_OUT_PER_CLASS.min(rows.len())..]);
    }
    train.sort_unstable();
    held.sort_unstable();
    // u8 [0, 255] -> f32 [-1, 1].
    let all = images
        .to_dtype(DType::F32)?
        .affine(2.0 / 255.0, -1.0)?
        .unsqueeze(1)?;
    let part = |rows: &[usize]| -> Result<Digits> {
        let idx = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            &Device::Cpu,
        )?;
        Ok(Digits {
            images: all.index_select(&idx, 0)?.to_device(device)?,
            labels: rows.iter().map(|&r| labels[r]).collect(),
        })
    };
    Ok((part(&train)?, part(&held)?))
}

impl Digits {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// A random batch (with replacement): images [n, 1, 28, 28] and labels.
    pub fn batch(&self, n: usize, rng: &mut Rng) -> Result<(Tensor, Vec<u32>)> {
        let rows: Vec<u32> = (0..n)
            .map(|_| rng.random_range(0..self.len() as u32))
            .collect();
        let labels = rows.iter().map(|&r| self.labels[r as usize]).collect();
        let idx = Tensor::from_vec(rows, n, self.images.device())?;
        Ok((self.images.index_select(&idx, 0)?, labels))
    }

    /// Rows `start..start + n` (for passes over the whole split).
    pub fn slice(&self, start: usize, n: usize) -> Result<(Tensor, Vec<u32>)> {
        let n = n.min(self.len() - start);
        Ok((
            self.images.narrow(0, start, n)?,
            self.labels[start..start + n].to_vec(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_fixed_and_stratified() {
        let (train, held) = load_split(&default_path(), &Device::Cpu).unwrap();
        assert_eq!(train.len(), 9000);
        assert_eq!(held.len(), 1000);
        for c in 0..CLASSES as u32 {
            assert_eq!(
                held.labels.iter().filter(|&&l| l == c).count(),
                HELD_OUT_PER_CLASS
            );
        }
        let px = train.images.flatten_all().unwrap();
        let (lo, hi) = (
            px.min(0).unwrap().to_scalar::<f32>().unwrap(),
            px.max(0).unwrap().to_scalar::<f32>().unwrap(),
        );
        assert_eq!((lo, hi), (-1.0, 1.0));
        // The same split every time.
        let (again, _) = load_split(&default_path(), &Device::Cpu).unwrap();
        assert_eq!(again.labels, train.labels);
        let d = train
            .images
            .sub(&again.images)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
    }
}
