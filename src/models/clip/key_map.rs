//! Checkpoints whose keys and tensors are laid out otherwise than the towers' (OpenCLIP's,
//! DINO's): each tower key's source key and how to take it, so that such a file is checked
//! (every source key present, with the shape it must have) and read like any other.

use anyhow::{anyhow, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

/// How a source tensor becomes the one a tower reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Part {
    /// As it is (reshaped to the tower's shape: DINO's [1, 1, D] class token is [D]).
    Whole,
    /// Rows [i w, (i + 1) w) of a fused q/k/v projection (0 q, 1 k, 2 v).
    Third(usize),
    /// The transpose of a right-multiplied projection.
    Transposed,
}

/// (tower key, source key, how to take it).
pub type Mapping = Vec<(String, String, Part)>;
/// (key, shape) of a weight file.
pub type Params = Vec<(String, Vec<usize>)>;

/// The mapping of the tower's `expected` keys and the source keys' shapes (each once).
/// `source_of` names a tower key's source; `whole_shape` gives a whole source tensor's
/// shape from the tower's (the same, unless the source stores it with other axes).
pub fn plan(
    expected: Params,
    source_of: impl Fn(&str) -> Option<(String, Part)>,
    whole_shape: impl Fn(&str, &[usize]) -> Vec<usize>,
) -> Result<(Mapping, Params)> {
    let (mut map, mut sources): (Mapping, Params) = (Vec::new(), Vec::new());
    for (key, shape) in expected {
        let (src, part) = source_of(&key).ok_or_else(|| anyhow!("no source key for `{key}`"))?;
        let src_shape = match part {
            Part::Whole => whole_shape(&src, &shape),
            Part::Third(_) => [vec![3 * shape[0]], shape[1..].to_vec()].concat(),
            Part::Transposed => shape.iter().rev().copied().collect(),
        };
        if !sources.iter().any(|(s, _)| *s == src) {
            sources.push((src.clone(), src_shape));
        }
        map.push((key, src, part));
    }
    Ok((map, sources))
}

/// The tower's tensors from the (checked) source tensors: each part taken and reshaped to
/// the tower's shape, in `dtype` on `device`.
pub fn take_parts(
    map: Mapping,
    sources: &HashMap<String, Tensor>,
    expected: &HashMap<String, Vec<usize>>,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    for (key, src, part) in map {
        let t = &sources[&src];
        let t = match part {
            Part::Whole => t.clone(),
            Part::Third(i) => {
                let w = t.dim(0)? / 3;
                t.narrow(0, i * w, w)?
            }
            Part::Transposed => t.t()?,
        };
        let t = t.reshape(expected[&key].as_slice())?;
        tensors.insert(key, t.to_dtype(dtype)?.to_device(device)?.contiguous()?);
    }
    Ok(tensors)
}
