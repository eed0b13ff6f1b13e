//! The broker: runs this node's partition replicas (one openraft group each) as the committed
//! metadata says, and serves produce and fetch on the ones it leads.

mod dirty;
mod elections;
mod leadership;
pub mod maintenance;
mod manager;
mod partition;
pub mod partition_sm;
pub mod producer_state;

pub use leadership::Leaderships;
pub use manager::{Broker, BrokerDeps};
pub use partition::{system_clock, Clock, Fence, FetchOutcome, Partition, ProduceOutcome, RaftStatus};
