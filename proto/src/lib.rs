//! The Postbox protobuf API, `postbox.v1`, and its generated tonic/prost code.
//!
//! The `.proto` file (`proto/postbox/v1/postbox.proto`) is the reference: every
//! field's meaning, units and limits are documented there. These types stay
//! at the gRPC edge; the storage engine never sees them.

/// Version 1 of the API.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("postbox.v1");

    /// The encoded `FileDescriptorSet` of `postbox.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/postbox_descriptor.bin"));
}
