//! Tests of the CSR kernels, the transposed layout and pruned layers against direct products.

use super::*;
use crate::arch::Padding;
use crate::engine::conv::im2col;

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = formats::synthetic::SplitMix64(seed);
    (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

/// A `[k, n]` kernel with about `kept` of its weights nonzero, and its CSR pattern.
fn pruned(k: usize, n: usize, kept: f32, seed: u64) -> (Vec<f32>, Csr) {
    let w: Vec<f32> = values(k * n, seed).iter().map(|&v| if v.abs() < 1.0 - kept { 0.0 } else { v }).collect();
    let csr = Csr::from_mask(n, k, |i| w[(i % k) * n + i / k] != 0.0);
    (w, csr)
}

/// The kept values of W (`[k, n]`) in pattern order.
fn kept(csr: &Csr, w: &[f32]) -> Vec<f32> {
    (0..csr.rows).flat_map(|j| csr.indices[csr.indptr[j]..csr.indptr[j + 1]].iter().map(move |&i| w[i as usize * csr.rows + j])).collect()
}

fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Portable];
    if Isa::detect() != Isa::Portable {
        v.push(Isa::Avx2);
    }
    if Isa::detect() == Isa::Avx512 {
        v.push(Isa::Avx512);
    }
    v
}

/// Random sign words covering bits `0..bit0 + len`.
fn sign_words(bit0: usize, len: usize, seed: u64) -> Vec<u64> {
    let mut rng = formats::synthetic::SplitMix64(seed);
    (0..(bit0 + len).div_ceil(64)).map(|_| rng.next_u64()).collect()
}

/// Bit `p` of `bits`.
fn bit(bits: &[u64], p: usize) -> bool {
    (bits[p / 64] >> (p % 64)) & 1 == 1
}

#[test]
fn sign_panels_are_the_transposed_bits_on_every_isa() {
    // Whole 16 x 16 blocks and edges in both directions (columns and rows not multiples
    // of 16, columns past a panel), sign bits starting mid-word, 16-bit windows that
    // straddle two words; rows on 32-bit words (AVX-512 gathers them), a partial last
    // column block among them.
    for (cols, k, bit0) in [(1, 1, 0), (16, 16, 0), (45, 37, 5), (130, 64, 63), (360, 256, 0), (17, 100, 17), (256, 10, 64), (200, 33, 3), (45, 64, 32), (33, 96, 64), (7, 32, 96)] {
        let bits = sign_words(bit0, cols * k, 6);
        for isa in isas() {
            let mut dst = vec![0xA5A5u16; sign_panels_len(k, cols)];
            sign_panels_on(isa, &bits, bit0, cols, k, &mut dst);
            for i in 0..k {
                for c in (0..cols).step_by(LANES) {
                    let want = (0..LANES).filter(|l| c + l < cols && bit(&bits, bit0 + (c + l) * k + i)).fold(0u16, |m, l| m | 1 << l);
                    assert_eq!(dst[sign_at(k, i, c)], want, "{isa:?} {cols}x{k}+{bit0}: row {i}, columns {c}..");
                }
            }
        }
    }
}

#[test]
fn flipped_panels_are_the_activations_times_their_signs_on_every_isa() {
    for (k, cols) in [(1, 1), (37, 45), (64, 130), (10, 300)] {
        let x = values(panels_len(k, cols), 7);
        let bits = sign_words(3, cols * k, 8);
        let mut signs = vec![0u16; sign_panels_len(k, cols)];
        sign_panels_on(Isa::Portable, &bits, 3, cols, k, &mut signs);
        for isa in isas() {
            let mut dst = vec![f32::NAN; x.len()];
            flip_panels_on(isa, &x, &signs, k, cols, &mut dst);
            for i in 0..k {
                for c in 0..cols {
                    let v = x[at(k, i, c)];
                    let want = if bit(&bits, 3 + c * k + i) { -v } else { v };
                    assert_eq!(dst[at(k, i, c)].to_bits(), want.to_bits(), "{isa:?} {k}x{cols}: [{i}, {c}]");
                }
            }
        }
    }
}

#[test]
fn transposed_kernel_matches_a_direct_f64_product() {
    // Several chunks of inputs (some empty at 5% kept; at 2%, the last chunk of 2 inputs
    // is empty in most rows, whose epilogue must still run), column blocks and panels.
    for (k, n, cols, kept_frac) in [(7, 5, 1, 0.5), (33, 9, 17, 0.3), (64, 20, 100, 0.7), (50, 3, 200, 0.1), (10, 4, 64, 1.0), (150, 6, 280, 0.3), (300, 5, 130, 0.05), (130, 8, 40, 0.02)] {
        let (wa, csr) = pruned(k, n, kept_frac, 1);
        // A second kernel on the same pattern (the perturbation: pruned where mu is).
        let wb: Vec<f32> = wa.iter().zip(values(k * n, 2)).map(|(&a, b)| if a == 0.0 { 0.0 } else { b }).collect();
        let (a, b) = (kept(&csr, &wa), kept(&csr, &wb));
        let mut x = values(panels_len(k, cols), 3);
        // Padding columns: whatever they hold must not reach the real columns.
        x.iter_mut().enumerate().filter(|(i, _)| (i / (k * PANEL)) * PANEL + i % PANEL >= cols).for_each(|(_, v)| *v = 1e30);
        // Input and output signs of every column ([cols, k] and [cols, n] bits, from bit 5).
        let (in_bits, out_bits) = (sign_words(5, cols * k, 4), sign_words(5, cols * n, 5));
        let (mut s_in, mut s_out) = (vec![0u16; sign_panels_len(k, cols)], vec![0u16; sign_panels_len(n, cols)]);
        sign_panels_on(Isa::Portable, &in_bits, 5, cols, k, &mut s_in);
        sign_panels_on(Isa::Portable, &out_bits, 5, cols, n, &mut s_out);
        let direct = |j: usize, c: usize, signed: bool| {
            (0..k)
                .map(|i| {
                    let w = if !signed || bit(&in_bits, 5 + c * k + i) == bit(&out_bits, 5 + c * n + j) { wa[i * n + j] } else { wb[i * n + j] };
                    f64::from(w) * f64::from(x[at(k, i, c)])
                })
                .sum::<f64>()
        };
        // Epilogues: bias, output signs (of a plain pass), base and ReLU, or bias alone.
        let (bias, base) = (values(n, 6), values(panels_len(n, cols), 7));
        for isa in isas() {
            for pass in [Pass::One(&a), Pass::Signed { plus: &a, minus: &b, s_in: &s_in, s_out: &s_out }] {
                let signed = matches!(pass, Pass::Signed { .. });
                let mut y = vec![0f32; panels_len(n, cols)];
                csr.spmm_t_on(isa, &x, cols, pass, None, &mut y);
                for j in 0..n {
                    for c in 0..cols {
                        let want = direct(j, c, signed);
                        let got = y[at(n, j, c)];
                        assert!((f64::from(got) - want).abs() < 1e-5, "{isa:?} {k}x{n} signed {signed} [{j}, {c}]: {got} vs {want}");
                    }
                }
                let full = Epilogue { bias: &bias, s_out: (!signed).then_some(&s_out[..]), base: Some(&base), relu: true };
                for then in [full, Epilogue { bias: &bias, s_out: None, base: None, relu: false }] {
                    let mut z = vec![0f32; panels_len(n, cols)];
                    csr.spmm_t_on(isa, &x, cols, pass, Some(then), &mut z);
                    for (j, &bj) in bias.iter().enumerate() {
                        for c in 0..cols {
                            let o = at(n, j, c);
                            let flip = then.s_out.is_some() && bit(&out_bits, 5 + c * n + j);
                            // The sums above with the epilogue applied after them, in its order.
                            let mut v = bj + if flip { -y[o] } else { y[o] };
                            if then.base.is_some() {
                                v += base[o];
                            }
                            let want = if then.relu { v.max(0.0) } else { v };
                            assert_eq!(z[o].to_bits(), want.to_bits(), "{isa:?} {k}x{n} signed {signed} {then:?} [{j}, {c}]");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn transposes_match_the_definition_on_every_path() {
    // Whole 16 x 16 blocks and every kind of edge, row strides wider than the rows, with
    // and without sign masks.
    for (rows, cols, ld_s, ld_d) in [(1, 1, 1, 1), (16, 16, 16, 16), (33, 47, 50, 40), (10, 256, 300, 16), (256, 10, 10, 256), (17, 31, 31, 17), (48, 64, 64, 100)] {
        let src = values(rows * ld_s, 21);
        let mask: Vec<u32> = (0..rows * ld_s).map(|i| if (i * 7) % 3 == 0 { 1 << 31 } else { 0 }).collect();
        for isa in isas() {
            for m in [None, Some(&mask[..])] {
                let mut dst = vec![f32::NAN; cols * ld_d];
                transpose_on(isa, &src, m, ld_s, rows, cols, &mut dst, ld_d);
                for r in 0..ld_d {
                    for c in 0..cols {
                        let got = dst[c * ld_d + r];
                        if r >= rows {
                            assert!(got.is_nan(), "{isa:?} {rows}x{cols}: ({r}, {c}) beyond the rows was written");
                            continue;
                        }
                        let v = f64::from(src[r * ld_s + c]);
                        let want = if m.is_some() && mask[r * ld_s + c] != 0 { -v } else { v };
                        assert_eq!(f64::from(got), want, "{isa:?} {rows}x{cols} masked {}: ({r}, {c})", m.is_some());
                    }
                }
            }
        }
    }
}

#[test]
fn kept_noise_is_the_dense_draw_at_the_kept_weights() {
    // Kernels whose flat sizes end in every kind of tail of the 16-value steps.
    for (k, n, kept_frac) in [(64, 256, 0.56), (7, 5, 0.5), (33, 9, 0.3), (256, 10, 0.23)] {
        let (w, csr) = pruned(k, n, kept_frac, 31);
        let sigma_dense: Vec<f32> = w.iter().zip(values(k * n, 32)).map(|(&a, s)| if a == 0.0 { 0.0 } else { s.abs() + 0.1 }).collect();
        let sigma = kept(&csr, &sigma_dense);
        let mut got = vec![0f32; csr.nnz()];
        kept_noise(&mut Sampler::new(9, 4), &csr, &sigma, &mut got);
        let dense = Sampler::new(9, 4).noise(&sigma_dense);
        assert_eq!(got, kept(&csr, &dense), "{k}x{n}");
    }
}

#[test]
fn transposed_patches_are_im2col_transposed() {
    let geoms = [
        ([5, 5, 3], [3, 3], [1, 1], Padding::Same),
        ([6, 7, 2], [3, 3], [1, 1], Padding::Valid),
        ([7, 6, 2], [3, 2], [2, 2], Padding::Same),
        ([8, 8, 1], [5, 5], [2, 1], Padding::Valid),
        ([4, 4, 4], [5, 5], [1, 1], Padding::Same),
        ([3, 3, 2], [2, 2], [1, 2], Padding::Same),
    ];
    for (input, size, strides, padding) in geoms {
        let win = Window { input, size, strides, padding };
        let n = 3;
        let [oh, ow] = win.output();
        let (r, k, c) = (oh * ow, size[0] * size[1] * input[2], input[2]);
        let x = values(n * input.iter().product::<usize>(), 5);
        let p = im2col(&x, n, &win);
        let mut signs = Vec::new();
        crate::engine::sampler::Sampler::new(1, 1).sign_masks_into(n * c, &mut signs);
        // Examples 1..3 into one block.
        let (mut xt, mut xs) = (vec![9f32; panels_len(k, 2 * r)], vec![9f32; panels_len(k, 2 * r)]);
        patches_t(&x, &win, 1, 3, &mut PatchScratch::default(), &mut xt, Some((&mut xs, &signs)));
        // Without the signed copy (straight into the panels where the geometry allows).
        let mut alone = vec![7f32; xt.len()];
        patches_t(&x, &win, 1, 3, &mut PatchScratch::default(), &mut alone, None);
        let real = |i: usize| (i / (k * PANEL)) * PANEL + i % PANEL < 2 * r;
        assert!(alone.iter().zip(&xt).enumerate().all(|(i, (a, b))| !real(i) || a == b), "{win:?} without signs");
        for i in 0..k {
            for col in 0..2 * r {
                let (b, pos) = (1 + col / r, col % r);
                let want = p[(b * r + pos) * k + i];
                assert_eq!(xt[at(k, i, col)], want, "{win:?} entry {i} column {col}");
                let flip = if signs[b * c + i % c] != 0 { -1.0 } else { 1.0 };
                assert_eq!(xs[at(k, i, col)], flip * want, "{win:?} signed entry {i} column {col}");
            }
        }
    }
}

/// The definition of a pruned Flipout layer, in f64: dense `[k, n]` mu and noise (zero
/// where pruned), patches from im2col, signs as masks.
#[allow(clippy::too_many_arguments)]
fn reference(p: &[f32], rpe: usize, k: usize, n: usize, mu: &[f32], noise: &[f32], s_in: &[u32], cin: usize, s_out: &[u32], bias: &[f32], base: Option<&[f32]>, use_mu: bool, relu: bool) -> Vec<f64> {
    let sign = |m: u32| if m == 0 { 1.0 } else { -1.0 };
    let rows = p.len() / k;
    let mut out = Vec::with_capacity(rows * n);
    for r in 0..rows {
        let b = r / rpe;
        for j in 0..n {
            let mut v = f64::from(bias[j]) + base.map_or(0.0, |m| f64::from(m[r * n + j]));
            let mut pert = 0.0;
            for i in 0..k {
                let x = f64::from(p[r * k + i]);
                if use_mu {
                    v += x * f64::from(mu[i * n + j]);
                }
                pert += x * sign(s_in[b * cin + i % cin]) * f64::from(noise[i * n + j]);
            }
            v += pert * sign(s_out[b * n + j]);
            out.push(if relu { v.max(0.0) } else { v });
        }
    }
    out
}

#[test]
fn pruned_flipout_layers_match_the_definition() {
    // Convs with many output positions (one example at a time, signs on the noise) and
    // with few (blocks of examples: both products in one signed pass, or the perturbation
    // on sign-flipped activations beside a shared mean), SAME and VALID, strides;
    // dense layers; with and without the mean product (a first layer's shared mean).
    let convs = [
        Some(Window { input: [12, 12, 3], size: [3, 3], strides: [1, 1], padding: Padding::Same }),
        Some(Window { input: [11, 9, 2], size: [3, 3], strides: [1, 1], padding: Padding::Valid }),
        Some(Window { input: [17, 17, 4], size: [5, 5], strides: [2, 2], padding: Padding::Same }),
        Some(Window { input: [4, 4, 5], size: [3, 3], strides: [1, 1], padding: Padding::Same }),
        Some(Window { input: [5, 6, 3], size: [2, 2], strides: [2, 1], padding: Padding::Valid }),
        Some(Window { input: [2, 2, 6], size: [3, 3], strides: [1, 1], padding: Padding::Same }),
        Some(Window { input: [4, 8, 3], size: [3, 3], strides: [1, 1], padding: Padding::Same }),
        None,
    ];
    for conv in convs {
        // Dense: more examples than a panel holds, and than a block of BATCH_COLS; a conv of
        // 2 x 2 outputs: two blocks of examples (the second's signs start mid-batch).
        let nb = match conv {
            Some(w) if w.input[0] == 2 => 70,
            Some(_) => 5,
            None => 300,
        };
        // Units: a tail only, and whole 16-unit blocks plus a tail (fused output pass).
        let (k, units) = match conv {
            Some(w) => (w.size[0] * w.size[1] * w.input[2], if w.input[0] > 10 { 21 } else { 7 }),
            None => (40, 37),
        };
        let (rpe, cin, per) = match conv {
            Some(w) => (w.output().iter().product::<usize>(), w.input[2], w.input.iter().product::<usize>()),
            None => (1, k, k),
        };
        let (mu, csr) = pruned(k, units, 0.3, 11);
        let sigma: Vec<f32> = mu.iter().zip(values(k * units, 12)).map(|(&m, s)| if m == 0.0 { 0.0 } else { s }).collect();
        let x = values(nb * per, 13);
        let p = match &conv {
            Some(w) => im2col(&x, nb, w),
            None => x.clone(),
        };
        let mut sampler = crate::engine::sampler::Sampler::new(3, 4);
        let (mut s_in, mut s_out) = (Vec::new(), Vec::new());
        sampler.sign_masks_into(nb * cin, &mut s_in);
        sampler.sign_masks_into(nb * units, &mut s_out);
        // The same signs as bits (same stream), which dense layers take.
        let (mut in_bits, mut out_bits) = (Vec::new(), Vec::new());
        let mut again = crate::engine::sampler::Sampler::new(3, 4);
        again.sign_bits_into(nb * cin, &mut in_bits);
        again.sign_bits_into(nb * units, &mut out_bits);
        let masks = (Signs::Masks(&s_in), Signs::Masks(&s_out));
        let forms = if conv.is_some() { vec![masks] } else { vec![masks, (Signs::Bits(&in_bits), Signs::Bits(&out_bits))] };
        let bias = values(units, 14);
        let base = values(nb * rpe * units, 15);
        let (a, d) = (kept(&csr, &mu), kept(&csr, &sigma));
        for (form, (use_mu, with_base, relu)) in forms.iter().flat_map(|f| [(true, false, false), (true, false, true), (false, true, false), (false, true, true)].map(|c| (*f, c))) {
            let want = reference(&p, rpe, k, units, &mu, &sigma, &s_in, cin, &s_out, &bias, with_base.then_some(&base[..]), use_mu, relu);
            let job = Job {
                csr: &csr,
                conv: conv.as_ref(),
                x: &x,
                n: nb,
                a: use_mu.then_some(&a[..]),
                flip: Some(Flip { noise: KeptNoise::Values(&d), s_in: form.0, s_out: form.1 }),
                base: with_base.then_some(&base[..]),
                xt: None,
                bias: &bias,
                relu,
                out_t: false,
            };
            let mut out = vec![f32::NAN; nb * rpe * units];
            forward(&job, &mut out, &mut Scratch::default());
            for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                assert!((f64::from(*g) - w).abs() < 1e-5, "{conv:?} {form:?} mu {use_mu} relu {relu}: output {i}: {g} vs {w}");
            }
            // The noise drawn by the layer from a key (into the signed pass's weights, or
            // into a buffer): bit for bit the layer given the same draw's values.
            let key = crate::engine::sampler::Sampler::new(5, 6).noise_key();
            let mut drawn = vec![0f32; csr.nnz()];
            key.fill_at(&csr.flat, &d, &mut drawn);
            let (mut given, mut lazy) = (vec![f32::NAN; out.len()], vec![f32::NAN; out.len()]);
            let with = |noise| Job { flip: Some(Flip { noise, s_in: form.0, s_out: form.1 }), ..job };
            forward(&with(KeptNoise::Values(&drawn)), &mut given, &mut Scratch::default());
            forward(&with(KeptNoise::Draw { key, sigma: &d }), &mut lazy, &mut Scratch::default());
            assert!(given.iter().zip(&lazy).all(|(a, b)| a.to_bits() == b.to_bits()), "{conv:?} {form:?} mu {use_mu} relu {relu}: noise drawn by the layer");
            // A dense layer with sign bits on `X^T` transposed once (a first layer's):
            // the same outputs bit for bit.
            if let (None, Signs::Bits(_)) = (conv, form.0) {
                let xt = transposed_blocks(&x, nb, k);
                let mut again = vec![f32::NAN; out.len()];
                forward(&Job { xt: Some(&xt), ..job }, &mut again, &mut Scratch::default());
                assert!(again.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()), "mu {use_mu} relu {relu}: given X^T");
            }
        }
        // Without a perturbation (mean network): x @ mu + bias.
        let job = Job { csr: &csr, conv: conv.as_ref(), x: &x, n: nb, a: Some(&a), flip: None, base: None, xt: None, bias: &bias, relu: false, out_t: false };
        let mut out = vec![f32::NAN; nb * rpe * units];
        forward(&job, &mut out, &mut Scratch::default());
        let zero = vec![0f32; k * units];
        let want = reference(&p, rpe, k, units, &mu, &zero, &s_in, cin, &s_out, &bias, None, true, false);
        assert!(out.iter().zip(&want).all(|(g, w)| (f64::from(*g) - w).abs() < 1e-5), "{conv:?}: mean network");
    }
}

#[test]
fn sparse_product_matches_hand_computation() {
    // W^T (by output) = [[1, 0], [0, 0], [2, 3]], i.e. W = [[1, 0, 2], [0, 0, 3]];
    // p = [[1, 2], [0, -1]] -> p @ W = [[1, 0, 8], [0, 0, -3]].
    let wt = [1.0, 0.0, 0.0, 0.0, 2.0, 3.0];
    let csr = Csr::from_mask(3, 2, |i| wt[i] != 0.0);
    assert_eq!(csr.nnz(), 3);
    let vals = csr.gather(&wt);
    let mut out = vec![5.0; 6];
    let mut t = Vec::new();
    csr.matmul(&[1.0, 2.0, 0.0, -1.0], 2, &vals, &mut out, false, &mut t);
    assert_eq!(out, vec![1.0, 0.0, 8.0, 0.0, 0.0, -3.0]);
    csr.matmul(&[1.0, 2.0, 0.0, -1.0], 2, &vals, &mut out, true, &mut t);
    assert_eq!(out, vec![2.0, 0.0, 16.0, 0.0, 0.0, -6.0]);
}

#[test]
fn sparse_product_matches_dense_on_many_rows() {
    // 150 rows (two full blocks and a partial one), against a plain triple loop.
    let (m, k, n) = (150, 7, 5);
    let p: Vec<f32> = (0..m * k).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
    let w: Vec<f32> = (0..k * n).map(|i| if i % 3 == 0 { 0.0 } else { (i % 7) as f32 * 0.5 - 1.0 }).collect();
    let wt: Vec<f32> = (0..n * k).map(|j| w[(j % k) * n + j / k]).collect();
    let csr = Csr::from_mask(n, k, |i| wt[i] != 0.0);
    let mut out = vec![0.0; m * n];
    csr.matmul(&p, m, &csr.gather(&wt), &mut out, false, &mut Vec::new());
    for r in 0..m {
        for c in 0..n {
            let want: f32 = (0..k).map(|i| p[r * k + i] * w[i * n + c]).sum();
            assert!((out[r * n + c] - want).abs() < 1e-4, "{r} {c}");
        }
    }
}

#[test]
fn signed_weights_draw_the_noise_chunk_by_chunk_as_one_draw() {
    // Over 4000 kept weights: several chunks of the draw.
    let (mu, csr) = pruned(100, 90, 0.5, 21);
    assert!(csr.nnz() > 4000);
    let a = kept(&csr, &mu);
    let sigma = values(csr.nnz(), 22);
    let key = crate::engine::sampler::Sampler::new(7, 8).noise_key();
    let mut d = vec![0f32; csr.nnz()];
    key.fill_at(&csr.flat, &sigma, &mut d);
    let (mut plus, mut minus, mut lazy_plus, mut lazy_minus) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    forward::signed_weights(&csr, &a, KeptNoise::Values(&d), &mut plus, &mut minus);
    forward::signed_weights(&csr, &a, KeptNoise::Draw { key, sigma: &sigma }, &mut lazy_plus, &mut lazy_minus);
    for i in 0..csr.nnz() {
        assert_eq!((plus[i].to_bits(), minus[i].to_bits()), ((a[i] + d[i]).to_bits(), (a[i] - d[i]).to_bits()), "weight {i}");
        assert_eq!((lazy_plus[i].to_bits(), lazy_minus[i].to_bits()), (plus[i].to_bits(), minus[i].to_bits()), "weight {i}, drawn in chunks");
    }
}


#[test]
fn direct_convolutions_match_the_definition_on_every_isa() {
    // 4 x 4 and 8 x 8 (several chunks of channels; 8 x 8 in tiles of two rows), 2 x 2 (one
    // chunk), a map 4 high and 8 wide; 20 examples (a second vector of 16 with 4 lanes used,
    // the input zeroed whole) and 16 (only its border zeroed: one scratch for all, so the
    // border holds what an earlier layer left there).
    let mut ws = direct::Scratch::default();
    for nb in [20, 16] {
        for (input, units) in [([4, 4, 40], 19), ([2, 2, 24], 17), ([8, 8, 40], 5), ([4, 8, 6], 16)] {
            let win = Window { input, size: [3, 3], strides: [1, 1], padding: Padding::Same };
            let tiles = direct::tiles(&win).expect("a direct shape");
            let (cin, k) = (input[2], 9 * input[2]);
            let rpe = input[0] * input[1];
            let (mu, csr) = pruned(k, units, 0.3, 21);
            let sigma: Vec<f32> = mu.iter().zip(values(k * units, 22)).map(|(&m, s)| if m == 0.0 { 0.0 } else { s }).collect();
            let x = values(nb * rpe * cin, 23);
            let mut sampler = crate::engine::sampler::Sampler::new(7, 8);
            let (mut s_in, mut s_out) = (Vec::new(), Vec::new());
            sampler.sign_masks_into(nb * cin, &mut s_in);
            sampler.sign_masks_into(nb * units, &mut s_out);
            let bias = values(units, 24);
            let (a, d) = (kept(&csr, &mu), kept(&csr, &sigma));
            let p = im2col(&x, nb, &win);
            for relu in [false, true] {
                let want = reference(&p, rpe, k, units, &mu, &sigma, &s_in, cin, &s_out, &bias, None, true, relu);
                let job = Job { csr: &csr, conv: Some(&win), x: &x, n: nb, a: Some(&a), flip: None, base: None, xt: None, bias: &bias, relu, out_t: false };
                for isa in isas() {
                    let mut out = vec![f32::NAN; nb * rpe * units];
                    direct::forward_on(isa, &job, &win, tiles, &a, KeptNoise::Values(&d), (&s_in, &s_out), &mut out, &mut ws);
                    // f32 sums of 360 products reach 20 here: 1e-5 relative.
                    for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                        assert!((f64::from(*g) - w).abs() < 1e-5 * w.abs().max(1.0), "{input:?} n {nb} {isa:?} relu {relu}: output {i}: {g} vs {w}");
                    }
                }
            }
        }
    }
}

#[test]
fn a_direct_plan_orders_each_units_weights_by_chunk_of_channels_then_window_offset() {
    // 4 x 4 maps of 40 channels: 21 channels per chunk (48 KiB of 36 padded positions).
    let (cin, units) = (40, 7);
    let (_, csr) = pruned(9 * cin, units, 0.4, 31);
    let plan = direct::Plan::new(&csr, cin, [4, 4], direct::tiles(&Window { input: [4, 4, cin], size: [3, 3], strides: [1, 1], padding: Padding::Same }).expect("a direct shape"));
    let per_chunk = 48 * 1024 / (6 * 6 * LANES * 4);
    assert_eq!((per_chunk, plan.chunks), (21, 2));
    // Every weight lands once, and its place holds its patch entry.
    let mut seen = vec![false; csr.nnz()];
    for (nz, &q) in plan.to_plan.iter().enumerate() {
        assert!(!std::mem::replace(&mut seen[q as usize], true), "weight {nz}: its place is taken twice");
        assert_eq!(plan.indices[q as usize], csr.indices[nz]);
    }
    for j in 0..units {
        let bounds = &plan.split[j * plan.runs()..][..plan.runs()];
        assert_eq!((bounds[0] as usize, bounds[plan.runs() - 1] as usize), (csr.indptr[j], csr.indptr[j + 1]), "unit {j}: its weights");
        for (r, w) in bounds.windows(2).enumerate() {
            let (c, t) = (r / 9, r % 9);
            let entries = &plan.indices[w[0] as usize..w[1] as usize];
            assert!(entries.iter().all(|&i| (i as usize % cin) / per_chunk == c && i as usize / cin == t), "unit {j}: run {r} holds another chunk's or offset's entry");
            assert!(entries.windows(2).all(|p| p[0] < p[1]), "unit {j}: run {r} out of order");
        }
    }
}

