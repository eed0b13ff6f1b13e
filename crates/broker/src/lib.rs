//! The broker: runs this node's partition replicas (one openraft group each) as the committed
//! metadata says, and serves produce and fetch on the ones it leads.

mod manager;
mod partition;
pub mod partition_sm;

pub use manager::{Broker, BrokerDeps};
pub use partition::{Fence, FetchOutcome, Partition};
