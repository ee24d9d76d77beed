//! Generates the TensorFlow protobuf messages from `proto/*.proto` with the pure-Rust parser,
//! so building needs no `protoc` binary.
fn main() {
    let protos = [
        "proto/types.proto",
        "proto/tensor_bundle.proto",
        "proto/trackable_object_graph.proto",
        "proto/graph.proto",
        "proto/saved_metadata.proto",
    ];
    protobuf_codegen::Codegen::new()
        .pure()
        .include("proto")
        .inputs(protos)
        .cargo_out_dir("tf_proto")
        .run_from_script();
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
}
