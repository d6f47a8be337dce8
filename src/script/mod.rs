//! The only module that knows Lua: the sandbox, tensors as userdata, the strict config,
//! the experiment script and its hooks, the loss context, and hot reload.

pub mod batch;
pub mod config;
pub mod config_bounds;
pub mod config_values;
pub mod context;
pub mod experiment;
pub mod hook_results;
pub mod library;
pub mod limits;
pub mod messages;
pub mod patterns;
pub mod print_caps;
pub mod require;
pub mod reward_hook;
pub mod sandbox;
pub mod script_table;
pub mod tensor;
pub mod tensor_arithmetic;
pub mod tensor_checks;
pub mod tensor_memory;
pub mod tensor_methods;
pub mod tensor_module;
pub mod tensor_tables;
pub mod trajectories;
pub mod watcher;

pub use batch::Batch;
pub use config::{RunConfig, Sampling, UpdateOn, X0Estimator};
pub use context::LossContext;
pub use experiment::{Script, TensorFn};
pub use hook_results::LossOutput;
pub use sandbox::SandboxOptions;
pub use tensor::{LuaTensor, TensorEnv};
pub use trajectories::Trajectories;
