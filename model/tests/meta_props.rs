//! Property tests of the `.meta` reader (MetaGraphDef -> architecture -> shape check): any
//! bytes give a value or an error, never a panic; a generated graph `Placeholder [-1, d1, d2]
//! -> Reshape [-1, -1] -> MatMul -> BiasAdd` recovers exactly that network, and its shapes check out
//! exactly when d1 * d2 fits and matches the kernel (checked here with u128 arithmetic).

use std::path::Path;

use model::arch::{shape_check, Op, Posterior};
use model::meta_graph::{arch_from_nodes, parse_arch};
use formats::proto::graph::{AttrValue, MetaGraphDef, NodeDef, TensorProto};
use formats::proto::types::{tensor_shape_proto, DataType, TensorShapeProto};
use proptest::prelude::*;

fn fixture_meta() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tf1_bnn_fc/model.ckpt-3000.meta")).expect("fixture")
}

fn node(name: &str, op: &str, inputs: &[&str]) -> NodeDef {
    let mut n = NodeDef::new();
    n.name = name.into();
    n.op = op.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n
}

/// Placeholder `x` of shape [-1, dims...], flattened into dense layer `den_1`.
fn dense_graph(dims: &[i64]) -> Vec<NodeDef> {
    let mut x = node("x", "Placeholder", &[]);
    let mut shape = TensorShapeProto::new();
    shape.dim = std::iter::once(-1).chain(dims.iter().copied()).map(|size| {
        let mut d = tensor_shape_proto::Dim::new();
        d.size = size;
        d
    }).collect();
    let mut attr = AttrValue::new();
    attr.set_shape(shape);
    x.attr.insert("shape".into(), attr);
    // A flatten: the constant target [-1, -1] keeps the batch and flattens the rest.
    let mut target = node("flat/shape", "Const", &[]);
    let mut value = TensorProto::new();
    value.dtype = DataType::DT_INT32.into();
    value.int_val = vec![-1, -1];
    let mut attr = AttrValue::new();
    attr.set_tensor(value);
    target.attr.insert("value".into(), attr);
    vec![
        x,
        target,
        node("flat", "Reshape", &["x", "flat/shape"]),
        node("den_1/kernel_posterior_loc", "VariableV2", &[]),
        node("den_1/MatMul", "MatMul", &["flat", "den_1/kernel_posterior_loc"]),
        node("den_1/BiasAdd", "BiasAdd", &["den_1/MatMul"]),
    ]
}

fn posterior(rows: usize) -> Posterior {
    Posterior { name: "den_1".into(), kernel_shape: vec![rows, 4], kernel_mu: vec![], kernel_sigma: None, bias_mu: vec![], bias_sigma: None }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(arch) = parse_arch(Path::new("fuzz.meta"), &bytes) {
            let _ = shape_check(&arch, &[posterior(16)]);
        }
    }

    #[test]
    fn damaged_fixture_graphs_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let mut bytes = fixture_meta();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(arch) = parse_arch(Path::new("fuzz.meta"), &bytes) {
            let posts: Vec<Posterior> = arch.layer_names().into_iter().map(|name| Posterior { name, ..posterior(64) }).collect();
            let _ = shape_check(&arch, &posts);
        }
    }

    #[test]
    fn placeholder_shapes_chain_exactly_when_they_fit(d1 in prop_oneof![1i64..40, 1i64 << 30..1i64 << 40, Just(i64::MAX)],
                                                      d2 in prop_oneof![1i64..40, 1i64 << 30..1i64 << 40, Just(i64::MAX)],
                                                      matching in any::<bool>()) {
        let nodes = dense_graph(&[d1, d2]);
        let arch = arch_from_nodes(&nodes).expect("recovered");
        prop_assert_eq!(&arch.input_shape, &vec![d1 as usize, d2 as usize]);
        prop_assert_eq!(&arch.ops, &vec![Op::Flatten, Op::Dense { layer: "den_1".into() }]);
        let product = d1 as u128 * d2 as u128;
        let fits = product <= usize::MAX as u128;
        let rows = if matching && fits { product as usize } else { 7 };
        let got = shape_check(&arch, &[posterior(rows)]);
        prop_assert_eq!(got.is_ok(), fits && product == rows as u128, "{:?}", got);
        if fits && product == rows as u128 {
            prop_assert_eq!(got.expect("ok"), vec![4]);
        }
        // The same graph through the bytes reader.
        let mut meta = MetaGraphDef::new();
        meta.graph_def.mut_or_insert_default().node = nodes;
        let bytes = protobuf::Message::write_to_bytes(&meta).expect("encode");
        prop_assert_eq!(parse_arch(Path::new("g.meta"), &bytes).expect("parses"), arch);
    }
}
