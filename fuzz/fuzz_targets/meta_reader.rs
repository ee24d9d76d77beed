//! Fuzzes the `.meta` reader: MetaGraphDef decoding, the graph walk that recovers the network,
//! then the shape check over the recovered ops (placeholder shapes come from the file).
#![no_main]

use model::arch::{shape_check, Posterior};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(arch) = model::meta_graph::parse_arch(std::path::Path::new("fuzz.meta"), data) else { return };
    // Weights of a fixed plausible shape per layer: enough to drive every shape computation.
    let posts: Vec<Posterior> = arch
        .layer_names()
        .into_iter()
        .enumerate()
        .map(|(i, name)| Posterior {
            name,
            kernel_shape: if i % 2 == 0 { vec![64, 16] } else { vec![3, 3, 1, 4] },
            kernel_mu: vec![],
            kernel_sigma: None,
            bias_mu: vec![],
            bias_sigma: None,
        })
        .collect();
    let _ = shape_check(&arch, &posts);
});
