//! Data the framework's own models are trained on.

pub mod gmm;

pub use gmm::GaussianMixture;
