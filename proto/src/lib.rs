//! The Postbox protobuf API. The `.proto` files and their generated tonic/prost
//! code live here and nowhere else; the storage engine never sees these types.
//!
//! Empty until the gRPC issue adds `postbox.v1`.
