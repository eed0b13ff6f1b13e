//! The service layer: what a node does for a client, whatever protocol the client speaks.
//!
//! Front-ends (the gRPC API in `runnel-server`; the Kafka listener next) decode a request, ask
//! [`access::Gatekeeper`] who is calling and whether they may, and call into this layer. Cluster
//! changes are [`admin::AdminCommand`]s that [`controller::Controller::execute`] runs on the
//! controller (forwarding them there once, over the node-to-node API, when this node is not it);
//! consumer groups are coordinated by [`coordinator::Coordinator`].

pub mod access;
pub mod admin;
pub mod controller;
pub mod coordinator;
pub mod service;

pub use service::{RequestContext, Service};
