//! Evaluation: metrics of samples and the plots that show them.

pub mod diversity;
pub mod frechet;
pub mod image_grid;
pub mod scatter;
pub mod stats;
pub mod toy;
pub mod training_curve;
