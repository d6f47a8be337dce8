//! Data the framework's own models are trained on.

pub mod augment;
pub mod gmm;
pub mod mnist;

pub use gmm::GaussianMixture;
