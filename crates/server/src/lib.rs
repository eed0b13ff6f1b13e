//! Wiring: configuration, one gRPC server per node, the metadata group (controller), the broker.

pub mod api;
pub mod config;
pub mod data_format;
mod node;
pub mod security_wire;

pub use config::{ConfigError, NodeConfig, NodeFlags};
#[cfg(feature = "rocksdb")]
pub use node::run_node;
pub use node::{serve, NodeEnv};
