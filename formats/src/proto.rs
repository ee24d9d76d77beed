//! TensorFlow protobuf messages generated at build time from `formats/proto/*.proto`.
#![allow(missing_docs, clippy::all)]
include!(concat!(env!("OUT_DIR"), "/tf_proto/mod.rs"));
