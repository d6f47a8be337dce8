//! Online black-box optimisation (paper Algorithm 2): the oracle with its query budget, the learned surrogate with its uncertainty, and the outer rounds.

pub mod bootstrap;
pub mod data_matmul;
pub mod dataset;
pub mod fit;
pub mod surrogate;
pub mod surrogate_mlp;
pub mod ucb;

pub use bootstrap::{Bootstrap, Combine, EnsemblePrediction};
pub use dataset::{bootstrap_resample, LabelledSet, Split};
pub use fit::{fit_mlp, FitConfig, FitReport};
pub use oracle::Oracle;
pub use surrogate::{Surrogate, SurrogateConfig, SurrogateFitReport, SurrogateStats, Uncertainty};
pub use surrogate_mlp::SurrogateMlp;
pub use ucb::{SigmaKind, UcbBonus};
pub mod oracle;
pub mod rounds;
