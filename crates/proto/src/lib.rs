//! Generated gRPC/protobuf code for Runnel's public (`runnel.v1`) and internal
//! (`runnel.internal.v1`) APIs, plus conversions to and from `runnel-types`.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("runnel.v1");
}

#[allow(clippy::all, missing_docs)]
pub mod internal {
    tonic::include_proto!("runnel.internal.v1");
}

mod convert;
pub mod dial;
pub mod peer;
pub use convert::*;
