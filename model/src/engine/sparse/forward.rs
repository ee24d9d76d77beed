//! A whole pruned layer on the transposed kernel: its activations into panels, one or two
//! passes, and the output pass (bias, output signs, ReLU) back to rows or kept transposed.

use super::*;
use crate::engine::conv::im2col_rows;

/// Patch rows (columns) per transposed block of the batch-wide path: the activations of a
/// block (`[k, 256]`, and their sign-flipped copy) stay in L2 while every output uses them.
const BATCH_COLS: usize = 256;

/// Output positions per example from which a Flipout convolution runs one example at a time
/// with the input signs folded into the perturbation's kept values (one load per activation
/// vector for both products) instead of on a sign-flipped copy of the activations (two). Folding
/// costs a pass over the kept weights per example; at 64 positions (VGG-16's 8 x 8 blocks)
/// it still paid: 128 made the 70%-pruned VGG-16 spend 9% more CPU time.
const PER_EXAMPLE_ROWS: usize = 64;

/// Whether a pruned convolution runs on blocks of examples (fewer than [`PER_EXAMPLE_ROWS`]
/// output positions per example), where Flipout's products run as one signed pass, rather
/// than one example at a time.
pub(crate) fn conv_on_blocks(win: &Window) -> bool {
    win.output().iter().product::<usize>() < PER_EXAMPLE_ROWS
}

/// Output positions per example below which a convolution's transposed patches are made
/// as im2col rows and one transpose of them ([`patches_t`]'s per-channel copies cost more
/// than the values they copy at 4 positions, and less at 16).
const IM2COL_ROWS: usize = 16;

/// Flipout's perturbation of a pruned layer for one sample.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flip<'a> {
    /// `sigma * eps` of the kept weights, in pattern order.
    pub noise: KeptNoise<'a>,
    /// Input signs, `[n, channels]` (a dense layer's channels are its inputs).
    pub s_in: Signs<'a>,
    /// Output signs, `[n, units]`.
    pub s_out: Signs<'a>,
}

/// The perturbation `sigma * eps` of a pruned layer's kept weights, in pattern order.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeptNoise<'a> {
    /// Drawn already.
    Values(&'a [f32]),
    /// Drawn by [`forward`] from the draw `key` with the kept weights' scales `sigma`, bit for
    /// bit [`kept_noise`]'s values: a signed pass draws it chunk by chunk straight into its
    /// weights `mu + D` and `mu - D`, any other path first into a buffer. (Drawn into an
    /// array, then read back by a pass of its own forming the weights, it took 2.6 of the
    /// 6.4 ms per sample of a 70%-pruned VGG-16's 2 x 2 conv, bound by memory traffic.)
    Draw {
        /// The draw.
        key: NoiseKey,
        /// Scales of the kept weights, pattern order.
        sigma: &'a [f32],
    },
}

impl<'a> KeptNoise<'a> {
    /// The drawn values.
    ///
    /// # Panics
    /// On [`KeptNoise::Draw`], which [`forward`] draws into values before any path that
    /// reads them (a bug otherwise).
    fn values(self) -> &'a [f32] {
        match self {
            KeptNoise::Values(v) => v,
            KeptNoise::Draw { .. } => panic!("sparse layer: the kept noise was not drawn"),
        }
    }
}

/// Flipout's input or output signs of a pruned layer, in one of the two forms the sampler
/// draws (same stream, same signs: [`Sampler::sign_masks_into`], [`Sampler::sign_bits_into`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Signs<'a> {
    /// One XOR mask per value (0 or the f32 sign bit).
    Masks(&'a [u32]),
    /// One bit per value (set: -1), 64 per word, applied as lane masks (no mask array
    /// written and read back); input signs of a dense layer only.
    Bits(&'a [u64]),
}

impl<'a> Signs<'a> {
    /// Whether at least `len` signs are held.
    fn covers(&self, len: usize) -> bool {
        match self {
            Signs::Masks(m) => m.len() >= len,
            Signs::Bits(b) => b.len() * 64 >= len,
        }
    }

    /// The sign of value `p` as an XOR mask (0 or the f32 sign bit).
    #[inline(always)]
    fn mask(&self, p: usize) -> u32 {
        match self {
            Signs::Masks(m) => m[p],
            Signs::Bits(b) => sign_bit(b, p),
        }
    }

    /// The masks of a convolution's signs, which its patch code and weight folding apply per value.
    ///
    /// # Panics
    /// When the signs are bits (the layer's caller draws masks for convolutions).
    fn conv_masks(self) -> &'a [u32] {
        match self {
            Signs::Masks(m) => m,
            Signs::Bits(_) => panic!("sparse conv: input signs must be masks"),
        }
    }
}

/// One pruned layer on `n` examples: `out = [base] + [x @ A] + [((x * s_in) @ D) * s_out] +
/// bias`, through a ReLU when `relu`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Job<'a> {
    /// The kernel's pattern (by output).
    pub csr: &'a Csr,
    /// The convolution; `None` for a dense layer.
    pub conv: Option<&'a Window>,
    /// Activations, `[n, ...]` row-major.
    pub x: &'a [f32],
    /// Examples.
    pub n: usize,
    /// Values of the first product (means, or means + noise), pattern order; `None` when
    /// `base` holds it.
    pub a: Option<&'a [f32]>,
    /// Flipout's perturbation product.
    pub flip: Option<Flip<'a>>,
    /// A precomputed term (the shared mean product of a first layer): `[rows, units]`
    /// row-major, or with `out_t` in the layout of the transposed output.
    pub base: Option<&'a [f32]>,
    /// A dense layer's transposed activations as [`transposed_blocks`] lays them out (a
    /// first layer's input, the same for every sample); `None`: transposed here.
    pub xt: Option<&'a [f32]>,
    /// Bias (sampled or mean).
    pub bias: &'a [f32],
    /// Whether a ReLU follows (fused into the output pass).
    pub relu: bool,
    /// Whether to write the output as a following pruned dense layer takes its input
    /// ([`Job::xt`]): transposed, in [`transposed_blocks`]' layout (bias and ReLU applied;
    /// [`transposed_len`] values from the output's first 64-byte boundary, [`lead`]: the
    /// next layer's kernel loads them whole vectors at a time), instead of row-major. Only
    /// for a dense layer whose products run as one: one product of its own
    /// ([`one_product`]), or beside `base` one product (Flipout's perturbation, or the noise
    /// of reparameterization).
    pub out_t: bool,
}

/// Values of a dense layer's output of `units` for `n` examples written transposed
/// ([`Job::out_t`]), which is also the layout of [`transposed_blocks`].
pub(crate) fn transposed_len(n: usize, units: usize) -> usize {
    n.div_ceil(BATCH_COLS) * panels_len(units, BATCH_COLS)
}

/// Whether a dense layer's products run as one product on this CPU (Flipout's through
/// [`Pass::Signed`], when `flipout`), so that its output can stay transposed
/// ([`Job::out_t`]). Portable code has no blend instruction: there the signed pass ran 4.6x
/// slower than two passes over a sign-flipped copy (1.4x faster on AVX2, 1.5x on AVX-512,
/// BNN-FC's 256 x 256 at 24% kept), which it keeps.
pub(crate) fn one_product(flipout: bool) -> bool {
    !flipout || Isa::detect() != Isa::Portable
}

/// Reusable buffers of [`forward`].
#[derive(Default)]
pub(crate) struct Scratch {
    patches: PatchScratch,
    /// A block's patch rows, row-major (im2col).
    rows: Vec<f32>,
    xt: Aligned,
    xs: Aligned,
    /// Input signs of a dense layer in sign panels ([`sign_panels_on`]).
    signs: Vec<u16>,
    ya: Aligned,
    yb: Aligned,
    signed: Vec<f32>,
    /// `mu + D` and `mu - D` of the kept weights ([`Pass::Signed`]).
    plus: Vec<f32>,
    minus: Vec<f32>,
    /// Output signs of a dense layer in sign panels.
    out_signs: Vec<u16>,
    /// The kept noise drawn for paths other than the signed pass ([`KeptNoise::Draw`]).
    noise: Vec<f32>,
    chan: Vec<u32>,
    /// The perturbation of 16 output rows ([`finish`]).
    tile: Vec<f32>,
    /// The direct kernel's ([`direct::forward`]).
    direct: direct::Scratch,
}

/// `out[nz] = sigma[nz] * eps[i * n + j]` for each kept weight nz (input i, output j; pattern
/// order), eps being the standard normals that [`Sampler::noise_into`] draws for the whole
/// `[k, n]` kernel: the noise the dense kernel gets from the same stream, so a layer's
/// Monte Carlo draws do not depend on its kernel (pruned weights have sigma = 0 there). Only
/// the kept weights' normals are computed, by random access into the counter-based stream
/// ([`Sampler::noise_at_into`]).
pub(crate) fn kept_noise(s: &mut Sampler, csr: &Csr, sigma: &[f32], out: &mut [f32]) {
    let nnz = csr.nnz();
    assert!(sigma.len() >= nnz && out.len() >= nnz && csr.flat.len() == nnz, "kept noise: slices too short");
    s.noise_at_into(&csr.flat, &sigma[..nnz], &mut out[..nnz]);
}

/// Whether [`batched`] runs `job`'s Flipout products as one signed pass ([`Pass::Signed`]):
/// a dense layer, or a convolution on blocks of examples, with a mean product and signs in
/// the form its layer draws (bits for a dense layer, masks for a convolution).
fn runs_signed(job: &Job) -> bool {
    let batched = job.conv.is_none_or(conv_on_blocks);
    let signs = matches!(
        (job.conv, job.flip),
        (None, Some(Flip { s_in: Signs::Bits(_), s_out: Signs::Bits(_), .. })) | (Some(_), Some(Flip { s_in: Signs::Masks(_), s_out: Signs::Masks(_), .. }))
    );
    batched && signs && job.a.is_some() && one_product(true)
}

/// The kept weights' noise (pattern order) chunk by chunk: `each(range, values)` for
/// consecutive ranges of 1024 weights, a noise still to draw drawn into a chunk that stays in
/// L1 until `each` has used it.
#[inline(always)]
pub(super) fn kept_noise_chunks(csr: &Csr, noise: KeptNoise, mut each: impl FnMut(std::ops::Range<usize>, &[f32])) {
    const CHUNK_DRAW: usize = 1024;
    let nnz = csr.nnz();
    let mut drawn = [0f32; CHUNK_DRAW];
    for c0 in (0..nnz).step_by(CHUNK_DRAW) {
        let c1 = (c0 + CHUNK_DRAW).min(nnz);
        let d = match noise {
            KeptNoise::Values(v) => &v[c0..c1],
            KeptNoise::Draw { key, sigma } => {
                key.fill_at(&csr.flat[c0..c1], &sigma[c0..c1], &mut drawn);
                &drawn[..c1 - c0]
            }
        };
        each(c0..c1, d);
    }
}

/// `mu + D` and `mu - D` of the kept weights into `plus` and `minus` ([`Pass::Signed`]).
pub(super) fn signed_weights(csr: &Csr, a: &[f32], noise: KeptNoise, plus: &mut Vec<f32>, minus: &mut Vec<f32>) {
    plus.clear();
    minus.clear();
    kept_noise_chunks(csr, noise, |r, d| {
        plus.extend(a[r.clone()].iter().zip(d).map(|(&m, &d)| m + d));
        minus.extend(a[r].iter().zip(d).map(|(&m, &d)| m - d));
    });
}

/// The direct kernel's tiles when `job` runs on it ([`direct`]): a 3 x 3 convolution on a
/// small map with a mean product, no shared base, and Flipout's signs as masks.
fn runs_direct(job: &Job) -> Option<direct::Tiles> {
    match (job.conv, job.flip, job.a, job.base) {
        (Some(win), Some(Flip { s_in: Signs::Masks(_), s_out: Signs::Masks(_), .. }), Some(_), None) => direct::direct_tiles(win),
        _ => None,
    }
}

/// Runs `job` into `out` (`[n * rows per example, units]`) on the transposed kernel.
pub(crate) fn forward(job: &Job, out: &mut [f32], ws: &mut Scratch) {
    // A noise to draw: drawn here into a buffer for every path but the signed pass and the
    // direct kernel (which draw it chunk by chunk into their weights).
    if let Some(f @ Flip { noise: KeptNoise::Draw { key, sigma }, .. }) = job.flip {
        if !runs_signed(job) && runs_direct(job).is_none() {
            let mut values = std::mem::take(&mut ws.noise);
            values.resize(job.csr.nnz(), 0.0);
            key.fill_at(&job.csr.flat, sigma, &mut values);
            forward(&Job { flip: Some(Flip { noise: KeptNoise::Values(&values), ..f }), ..*job }, out, ws);
            ws.noise = values;
            return;
        }
    }
    let (k, u) = (job.csr.cols, job.csr.rows);
    let csr = job.csr;
    let rpe = job.conv.map_or(1, |w| w.output().iter().product());
    let cin = job.conv.map_or(k, |w| w.input[2]);
    let per = job.conv.map_or(k, |w| w.input.iter().product());
    let skip = if job.out_t { lead(out).min(out.len()) } else { 0 };
    let out = &mut out[skip..];
    let out_len = if job.out_t { transposed_len(job.n, u) } else { job.n * rpe * u };
    assert!(job.x.len() >= job.n * per && out.len() >= out_len && job.bias.len() >= u, "sparse layer: slices too short");
    let one = match job.base {
        Some(b) => job.a.is_none() != job.flip.is_none() && b.len() >= out_len,
        None => job.a.is_some() && one_product(job.flip.is_some()),
    };
    let bits = job.flip.is_none_or(|f| matches!(f.s_out, Signs::Bits(_)));
    assert!(!job.out_t || (job.conv.is_none() && one && bits), "sparse layer: a transposed output needs one product of a dense layer");
    if let Some(f) = job.flip {
        assert!(f.s_in.covers(job.n * cin) && f.s_out.covers(job.n * u), "sparse layer: too few signs");
    }
    // A given `X^T` is a dense layer's, whose input signs (if any) are bits: masks would need
    // the flipped copy made with it.
    assert!(job.xt.is_none() || (job.conv.is_none() && !matches!(job.flip, Some(Flip { s_in: Signs::Masks(_), .. }))), "sparse layer: a given X^T needs a dense layer with sign bits");
    // A 3 x 3 convolution on a small map: straight from the activations.
    if let (Some(tiles), Some(win), Some(a), Some(Flip { noise, s_in, s_out })) = (runs_direct(job), job.conv, job.a, job.flip) {
        return direct::forward_on(Isa::detect(), job, win, tiles, a, noise, (s_in.conv_masks(), s_out.conv_masks()), out, &mut ws.direct);
    }
    let (Some(win), Some(flip)) = (job.conv, job.flip) else { return batched(job, csr, rpe, out, ws) };
    if rpe < PER_EXAMPLE_ROWS {
        return batched(job, csr, rpe, out, ws);
    }
    // One example at a time, its signs folded into its weights: the input signs are per
    // channel and the output signs per unit, the same on every patch row of the example, so
    // P @ mu + ((P * s_in) @ D) * s_out = P @ (mu + s_in * D * s_out): one product.
    ws.chan.clear();
    ws.chan.extend(job.csr.indices.iter().map(|&i| i % cin as u32));
    ws.signed.resize(job.csr.nnz(), 0.0);
    let xt = pad_columns(&mut ws.xt, k, rpe);
    let ya = ws.ya.get(panels_len(u, rpe));
    let (s_in, s_out) = (flip.s_in.conv_masks(), flip.s_out.conv_masks());
    for b in 0..job.n {
        patches_t(job.x, win, b, b + 1, &mut ws.patches, xt, None);
        let signs = (&s_in[b * cin..(b + 1) * cin], &s_out[b * u..(b + 1) * u]);
        fold_signs(job.a, flip.noise.values(), &job.csr.indptr, &ws.chan, signs, &mut ws.signed);
        csr.spmm_t(xt, rpe, Pass::One(&ws.signed), ya);
        finish(job, b * rpe, rpe, rpe, Sums { mean: Some(ya), pert: None }, &mut ws.tile, out);
    }
}

/// `out[nz] = [a[nz] +] noise[nz] * s_in[chan[nz]] * s_out[j]` for the kept weights nz of
/// each output j (rows `indptr[j]..indptr[j + 1]`), the signs as XOR masks: an example's
/// Flipout weights of a convolution, both products in one.
fn fold_signs(a: Option<&[f32]>, noise: &[f32], indptr: &[usize], chan: &[u32], signs: (&[u32], &[u32]), out: &mut [f32]) {
    #[inline(always)]
    fn fold(a: Option<&[f32]>, noise: &[f32], indptr: &[usize], chan: &[u32], (s_in, s_out): (&[u32], &[u32]), out: &mut [f32]) {
        for (w, &so) in indptr.windows(2).zip(s_out) {
            let r = w[0]..w[1];
            let terms = out[r.clone()].iter_mut().zip(&noise[r.clone()]).zip(&chan[r.clone()]);
            match a {
                Some(a) => terms.zip(&a[r]).for_each(|(((d, &v), &ch), &m)| *d = m + f32::from_bits(v.to_bits() ^ s_in[ch as usize] ^ so)),
                None => terms.for_each(|((d, &v), &ch)| *d = f32::from_bits(v.to_bits() ^ s_in[ch as usize] ^ so)),
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn fold_avx2(a: Option<&[f32]>, noise: &[f32], indptr: &[usize], chan: &[u32], signs: (&[u32], &[u32]), out: &mut [f32]) {
        fold(a, noise, indptr, chan, signs, out)
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { fold_avx2(a, noise, indptr, chan, signs, out) };
    }
    fold(a, noise, indptr, chan, signs, out)
}

/// Transposed activations of `k` rows and `cols` columns in `buf`, whose padding columns (up
/// to the end of the last panel) are zero; the other values are for the caller to overwrite.
fn pad_columns(buf: &mut Aligned, k: usize, cols: usize) -> &mut [f32] {
    let buf = buf.get(panels_len(k, cols));
    let pad = cols.div_ceil(PANEL) * PANEL - cols;
    if pad > 0 {
        for i in 0..k {
            buf[at(k, i, cols)..at(k, i, cols) + pad].fill(0.0);
        }
    }
    buf
}

/// `X^T` of a dense layer's input `x` (`n` examples of `k` values) in the blocks that
/// [`forward`] runs: block `b` (examples `b * 256..`, [`BATCH_COLS`]) at `b * panels_len(k,
/// 256)`, in panels, padding columns zero. A first layer's input is the same for every Monte
/// Carlo sample: transposed once, each sample then only transposes its sign bits.
pub(crate) fn transposed_blocks(x: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut out = Vec::new();
    transposed_blocks_into(x, n, k, &mut out);
    out
}

/// [`transposed_blocks`] into `out` (resized to [`transposed_len`]).
pub(crate) fn transposed_blocks_into(x: &[f32], n: usize, k: usize, out: &mut Vec<f32>) {
    assert!(x.len() >= n * k, "transposed blocks: slices too short");
    let size = panels_len(k, BATCH_COLS);
    out.clear();
    out.resize(transposed_len(n, k), 0.0);
    for (b0, block) in (0..n).step_by(BATCH_COLS).zip(out.chunks_mut(size)) {
        transpose_block(x, k, b0, (b0 + BATCH_COLS).min(n), block, None);
    }
}

/// The rows (`[n, units]`) of values in [`transposed_blocks`]' layout.
pub(crate) fn rows_of_transposed_blocks(t: &[f32], n: usize, units: usize) -> Vec<f32> {
    assert!(t.len() >= transposed_len(n, units), "transposed rows: slices too short");
    let mut rows = vec![0f32; n * units];
    for (q, r0) in (0..n).step_by(PANEL).enumerate() {
        let cols = PANEL.min(n - r0);
        transpose_on(Isa::detect(), &t[q * units * PANEL..], None, PANEL, units, cols, &mut rows[r0 * units..], units);
    }
    rows
}

/// `X^T` of examples `b0..b1` of a dense layer's input (`k` values each) into `xt`, in panels
/// (a panel is a `[k, PANEL]` row-major matrix), and with `masks` (the input signs as XOR
/// masks, `[n, k]`) the sign-flipped copy into the second slice.
fn transpose_block(x: &[f32], k: usize, b0: usize, b1: usize, xt: &mut [f32], mut masks: Option<(&[u32], &mut [f32])>) {
    for (p, r0) in (b0..b1).step_by(PANEL).enumerate() {
        let r1 = (r0 + PANEL).min(b1);
        let xb = &x[r0 * k..r1 * k];
        transpose_into(xb, None, r1 - r0, k, &mut xt[p * k * PANEL..(p + 1) * k * PANEL], PANEL);
        if let Some((s, xs)) = masks.as_mut() {
            transpose_into(xb, Some(&s[r0 * k..r1 * k]), r1 - r0, k, &mut xs[p * k * PANEL..(p + 1) * k * PANEL], PANEL);
        }
    }
}

/// [`forward`] on blocks of whole examples (all their patch rows). Flipout's two products of
/// a layer with a mean product run as one ([`Pass::Signed`], its signs in sign panels: a
/// dense layer's from bits, a convolution's spread from its example's channel and unit masks
/// over the example's patch rows, [`conv_sign_panels`]); otherwise the input signs, when any,
/// are on a sign-flipped copy of the transposed activations (made with them from masks, or
/// from them and the sign panels of bits).
fn batched(job: &Job, csr: &Csr, rpe: usize, out: &mut [f32], ws: &mut Scratch) {
    let (k, u) = (job.csr.cols, job.csr.rows);
    let per_block = (BATCH_COLS / rpe.max(1)).max(1);
    // Both products in one signed pass: a dense layer's signs are bits, a convolution's
    // masks per (example, channel) spread over the example's patch rows (no sign-flipped copy
    // of its patches then).
    let signed = match (job.a, job.flip) {
        (Some(a), Some(f)) if runs_signed(job) => {
            signed_weights(csr, a, f.noise, &mut ws.plus, &mut ws.minus);
            Some((f.s_in, f.s_out))
        }
        _ => None,
    };
    let cin = job.conv.map_or(k, |w| w.input[2]);
    for b0 in (0..job.n).step_by(per_block) {
        let b1 = (b0 + per_block).min(job.n);
        let cols = (b1 - b0) * rpe;
        let signs = job.flip.map(|f| f.s_in);
        let bits = match signs {
            Some(Signs::Bits(s)) => Some(s),
            _ => None,
        };
        // The sign-flipped copy: built with `xt` for masks, from the sign panels for bits
        // (every value, padding included, is written there).
        let xs = match (job.flip, bits) {
            _ if signed.is_some() => &mut [],
            (Some(_), None) => pad_columns(&mut ws.xs, k, cols),
            (Some(_), Some(_)) => ws.xs.get(panels_len(k, cols)),
            _ => &mut [],
        };
        let xt: &[f32] = match (job.conv, job.xt) {
            (Some(win), _) => {
                // Every column below `cols` is written below: only the padding is zeroed.
                let xt = pad_columns(&mut ws.xt, k, cols);
                if let Some((Signs::Masks(s_in), _)) = signed {
                    // Few output positions (VGG-16's 2 x 2 blocks): im2col rows, then one
                    // transpose (patch by patch, the plane copies were 2.4x slower there).
                    if rpe < IM2COL_ROWS {
                        im2col_rows(job.x, win, b0 * rpe, b1 * rpe, &mut ws.rows);
                        transpose_block(&ws.rows, k, 0, cols, xt, None);
                    } else {
                        patches_t(job.x, win, b0, b1, &mut ws.patches, xt, None);
                    }
                    conv_sign_panels(s_in, cin, k, b0, cols, rpe, &mut ws.signs);
                } else {
                    patches_t(job.x, win, b0, b1, &mut ws.patches, xt, signs.map(|s| (&mut xs[..], s.conv_masks())));
                }
                xt
            }
            (None, Some(t)) => &t[b0 / BATCH_COLS * panels_len(k, BATCH_COLS)..][..panels_len(k, cols)],
            (None, None) => {
                let xt = pad_columns(&mut ws.xt, k, cols);
                let masks = match signs {
                    Some(Signs::Masks(s)) => Some((s, &mut xs[..])),
                    _ => None,
                };
                transpose_block(job.x, k, b0, b1, xt, masks);
                xt
            }
        };
        if let (None, Some(s)) = (job.conv, bits) {
            ws.signs.resize(sign_panels_len(k, cols), 0);
            sign_panels_on(Isa::detect(), s, b0 * k, cols, k, &mut ws.signs);
            // The perturbation on a flipped copy, one load and fused multiply-add per vector
            // (signs applied in the kernel cost a vector operation more: 1.4-1.5x slower
            // without a mean product, session s10a, d935b5e).
            if signed.is_none() {
                flip_panels_on(Isa::detect(), xt, &ws.signs, k, cols, xs);
            }
        }
        // The block's output signs in sign panels.
        let out_sign_panels = |s_out: Signs, out_signs: &mut Vec<u16>| match s_out {
            Signs::Bits(s_out) => {
                out_signs.resize(sign_panels_len(u, cols), 0);
                sign_panels_on(Isa::detect(), s_out, b0 * u, cols, u, out_signs);
            }
            Signs::Masks(s_out) => conv_sign_panels(s_out, u, u, b0, cols, rpe, out_signs),
        };
        let signed_pass = |y: &mut [f32], s_out: Signs, out_signs: &mut Vec<u16>, then: Option<Epilogue>| {
            out_sign_panels(s_out, out_signs);
            let pass = Pass::Signed { plus: &ws.plus, minus: &ws.minus, s_in: &ws.signs, s_out: out_signs };
            csr.spmm_t_on(Isa::detect(), xt, cols, pass, then, y);
        };
        if job.out_t {
            // The product straight into its block of the transposed output (one product,
            // `forward` checked), the output pass applied before each vector is stored.
            let block = (b0 / BATCH_COLS) * panels_len(u, BATCH_COLS)..;
            let y = &mut out[block.clone()][..panels_len(u, cols)];
            let base = job.base.map(|b| &b[block][..panels_len(u, cols)]);
            let then = Epilogue { bias: job.bias, s_out: None, base, relu: job.relu };
            match (signed, job.a, job.flip) {
                (Some((_, s_out)), _, _) => signed_pass(y, s_out, &mut ws.out_signs, Some(then)),
                (None, Some(a), None) => csr.spmm_t_then(xt, cols, Pass::One(a), then, y),
                // Beside a shared mean product: the perturbation, its output signs applied
                // with the base.
                (None, None, Some(Flip { noise, s_out: s_out @ Signs::Bits(_), .. })) => {
                    out_sign_panels(s_out, &mut ws.out_signs);
                    csr.spmm_t_then(xs, cols, Pass::One(noise.values()), Epilogue { s_out: Some(&ws.out_signs), ..then }, y);
                }
                _ => unreachable!("checked by `forward`"),
            }
            continue;
        }
        let (ya, yb) = (ws.ya.get(panels_len(u, cols)), ws.yb.get(panels_len(u, cols)));
        let sums = match (job.a, job.flip, signed) {
            (_, _, Some((_, s_out))) => {
                signed_pass(ya, s_out, &mut ws.out_signs, None);
                Sums { mean: Some(ya), pert: None }
            }
            // A convolution's (or any, portably): two passes, each with one activation stream
            // (they ran 1.2-1.4x faster than one pass over both streams: two loads per pair
            // of fused multiply-adds).
            (Some(a), Some(f), None) => {
                csr.spmm_t(xt, cols, Pass::One(a), ya);
                csr.spmm_t(xs, cols, Pass::One(f.noise.values()), yb);
                Sums { mean: Some(ya), pert: Some((yb, f.s_out)) }
            }
            (Some(a), None, None) => {
                csr.spmm_t(xt, cols, Pass::One(a), ya);
                Sums { mean: Some(ya), pert: None }
            }
            // The mean product is the job's `base` (a first layer's, shared by the samples).
            (None, Some(f), None) => {
                csr.spmm_t(xs, cols, Pass::One(f.noise.values()), yb);
                Sums { mean: None, pert: Some((yb, f.s_out)) }
            }
            (None, None, None) => Sums { mean: None, pert: None },
        };
        finish(job, b0 * rpe, cols, rpe, sums, &mut ws.tile, out);
    }
}

/// Sign panels ([`sign_panels_on`]'s layout) of a convolution's block of patch rows: row `i`
/// (of `k`) of column `c` holds the sign of example `b0 + c / rpe`'s channel `i % width`
/// (`masks`: `[n, width]` XOR masks), for the columns `0..cols` (the others 0). Input signs:
/// `width` channels, `k` patch entries; output signs: `width = k` units.
fn conv_sign_panels(masks: &[u32], width: usize, k: usize, b0: usize, cols: usize, rpe: usize, out: &mut Vec<u16>) {
    out.clear();
    out.resize(sign_panels_len(k, cols), 0);
    for c0 in (0..cols).step_by(LANES) {
        let (at0, lanes) = (sign_at(k, 0, c0), LANES.min(cols - c0));
        for ch in 0..width {
            // The 16 columns' bits of the channel, then copied to its rows.
            let m = (0..lanes).fold(0u16, |m, l| m | u16::from(masks[(b0 + (c0 + l) / rpe) * width + ch] != 0) << l);
            for i in (ch..k).step_by(width.max(1)) {
                out[at0 + i * MASKS] = m;
            }
        }
    }
}

/// What the transposed products (`[units, columns]` in panels, [`at`]) of a block of
/// [`batched`] or of an example hold, for [`finish`].
#[derive(Clone, Copy)]
struct Sums<'a> {
    /// The term added as it is: the mean product (with Flipout's perturbation and its signs
    /// folded in where they were: [`Pass::Signed`], [`fold_signs`]); `None` where the job's
    /// `base` holds the mean product.
    mean: Option<&'a [f32]>,
    /// Flipout's perturbation product before its output signs, and those signs (`[n, units]`).
    pert: Option<(&'a [f32], Signs<'a>)>,
}

/// Output rows `r0..r0 + cols` from the transposed products `sums` (column `c` = row
/// `r0 + c`): `base + mean + pert * s_out + bias`, each term where there is one, then the
/// ReLU. Strips of 16 rows: on AVX-512 each 16 x 16 block transposed and combined in
/// registers ([`finish_strip_avx512`]); else the mean's columns transposed straight into the
/// output rows and the perturbation's into a `[16, units]` tile in L1 ([`transpose_on`]), then
/// one pass along each row, where the output signs, bias and base lie in row-major order (no
/// per-column gathers of signs).
#[allow(clippy::too_many_arguments)]
fn finish(job: &Job, r0: usize, cols: usize, rpe: usize, sums: Sums, tile: &mut Vec<f32>, out: &mut [f32]) {
    let u = job.csr.rows;
    let isa = Isa::detect();
    let Sums { mean, pert } = sums;
    // One row's output signs as masks, where they are bits (the edge strip).
    let mut row_masks = Vec::new();
    // Whole 16-row strips on AVX-512: fused (below).
    #[cfg(target_arch = "x86_64")]
    let fused = isa == Isa::Avx512 && {
        // The bounds `finish_strip_avx512` relies on (the callers' shapes give them).
        let last = r0 + cols;
        let len = panels_len(u, cols);
        assert!(mean.is_none_or(|y| y.len() >= len) && pert.is_none_or(|(y, _)| y.len() >= len) && out.len() >= last * u && job.bias.len() >= u, "sparse output: slices too short");
        assert!(pert.is_none_or(|(_, s)| s.covers(last.div_ceil(rpe.max(1)) * u)) && job.base.is_none_or(|b| b.len() >= last * u), "sparse output: too few signs");
        true
    };
    for c0 in (0..cols).step_by(LANES) {
        let w = LANES.min(cols - c0);
        #[cfg(target_arch = "x86_64")]
        if fused && w == LANES {
            // SAFETY: AVX-512F is supported (detected); the bounds were checked above and
            // c0 + 16 <= cols.
            unsafe { finish_strip_avx512(job, r0 + c0, c0, rpe, sums, out) };
            continue;
        }
        let rows = &mut out[(r0 + c0) * u..(r0 + c0 + w) * u];
        // Unit j's values of these columns lie at `at(u, j, c0) = s0 + j * PANEL`.
        let s0 = at(u, 0, c0);
        // The first term straight into the rows; with both, the perturbation into the tile.
        match (mean, pert) {
            (Some(ya), Some((yb, _))) => {
                transpose_on(isa, &ya[s0..], None, PANEL, u, w, rows, u);
                tile.resize(w * u, 0.0);
                transpose_on(isa, &yb[s0..], None, PANEL, u, w, tile, u);
            }
            (None, Some((y, _))) | (Some(y), None) => transpose_on(isa, &y[s0..], None, PANEL, u, w, rows, u),
            (None, None) => {}
        }
        for (i, row) in rows.chunks_exact_mut(u.max(1)).enumerate() {
            let r = r0 + c0 + i;
            let bias = &job.bias[..u];
            let p0 = (r / rpe) * u;
            let s_row = match pert.map(|(_, s)| s) {
                None => None,
                Some(Signs::Masks(m)) => Some(&m[p0..p0 + u]),
                Some(bits @ Signs::Bits(_)) => {
                    row_masks.clear();
                    row_masks.extend((p0..p0 + u).map(|p| bits.mask(p)));
                    Some(&row_masks[..])
                }
            };
            match s_row {
                Some(s) if mean.is_some() => {
                    let pert = &tile[i * u..(i + 1) * u];
                    row.iter_mut().zip(pert).zip(s).zip(bias).for_each(|(((o, &p), &m), &b)| *o = b + *o + f32::from_bits(p.to_bits() ^ m));
                }
                Some(s) => row.iter_mut().zip(s).zip(bias).for_each(|((o, &m), &b)| *o = b + f32::from_bits(o.to_bits() ^ m)),
                None if mean.is_some() => row.iter_mut().zip(bias).for_each(|(o, &b)| *o += b),
                None => row.copy_from_slice(bias),
            }
            if let Some(base) = job.base {
                row.iter_mut().zip(&base[r * u..(r + 1) * u]).for_each(|(o, &m)| *o += m);
            }
            if job.relu {
                row.iter_mut().for_each(|o| *o = o.max(0.0));
            }
        }
    }
}

/// [`finish`] of output rows `r..r + 16` (columns `c0..c0 + 16` of the products) on AVX-512:
/// each 16 x 16 block of the products transposed in registers and combined there with the
/// output signs, bias, base and ReLU, one store per output vector (the rows and the
/// perturbation tile were written and read back before).
///
/// # Safety
/// AVX-512F is supported; the products in `sums` hold panels of `units` rows with column
/// `c0 + 15` in them;
/// `out` (and `job.base`) hold `(r + 16) * units` values, the output signs
/// `((r + 15) / rpe + 1) * units`, the bias `units`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn finish_strip_avx512(job: &Job, r: usize, c0: usize, rpe: usize, sums: Sums, out: &mut [f32]) {
    // One copy per kind of sums: the transposed blocks stay in registers (an `Option` of
    // them went to the stack, and the strip cost twice as much).
    // SAFETY: the caller's contract.
    unsafe {
        match sums {
            Sums { mean: Some(m), pert: Some((p, s)) } => strip::<true, true>(job, r, c0, rpe, m, p, Some(s), out),
            Sums { mean: Some(m), pert: None } => strip::<true, false>(job, r, c0, rpe, m, &[], None, out),
            Sums { mean: None, pert: Some((p, s)) } => strip::<false, true>(job, r, c0, rpe, &[], p, Some(s), out),
            Sums { mean: None, pert: None } => strip::<false, false>(job, r, c0, rpe, &[], &[], None, out),
        }
    }
}

/// [`finish_strip_avx512`] with a mean (`MEAN`) and a perturbation (`PERT`, output signs
/// `s_out`) or without.
///
/// # Safety
/// As [`finish_strip_avx512`]'s, for the products given.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn strip<const MEAN: bool, const PERT: bool>(job: &Job, r: usize, c0: usize, rpe: usize, ya: &[f32], yb: &[f32], s_out: Option<Signs>, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let u = job.csr.rows;
    let ub = u / TB * TB;
    let sign_of = |m: u32, v: f32| f32::from_bits(v.to_bits() ^ m);
    // SAFETY: every offset below is inside the slices by the contract above.
    unsafe {
        let (zero, sign) = (_mm512_setzero_ps(), _mm512_set1_epi32(i32::MIN));
        // 16 units' values of column block c0 from `y`, transposed: [i] = output row r + i.
        let block = |y: &[f32], j0: usize| {
            let mut v = [zero; TB];
            for (l, v) in v.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(y.as_ptr().add(at(u, j0 + l, c0)));
            }
            t16(v)
        };
        for j0 in (0..ub).step_by(TB) {
            let ta = if MEAN { block(ya, j0) } else { [zero; TB] };
            let tb = if PERT { block(yb, j0) } else { [zero; TB] };
            let bias = _mm512_loadu_ps(job.bias.as_ptr().add(j0));
            for i in 0..TB {
                let row = r + i;
                // The same order of additions as the row pass: bias + mean + perturbation.
                let mut o = if MEAN { _mm512_add_ps(bias, ta[i]) } else { bias };
                if let (true, Some(s_out)) = (PERT, s_out) {
                    let (p, y) = ((row / rpe) * u + j0, _mm512_castps_si512(tb[i]));
                    let pert = _mm512_castsi512_ps(match s_out {
                        Signs::Masks(m) => _mm512_xor_si512(y, _mm512_loadu_si512(m.as_ptr().add(p).cast())),
                        Signs::Bits(b) => _mm512_mask_xor_epi32(y, bits16(b, p), y, sign),
                    });
                    o = _mm512_add_ps(o, pert);
                }
                if let Some(base) = job.base {
                    o = _mm512_add_ps(o, _mm512_loadu_ps(base.as_ptr().add(row * u + j0)));
                }
                if job.relu {
                    o = _mm512_max_ps(o, zero);
                }
                _mm512_storeu_ps(out.as_mut_ptr().add(row * u + j0), o);
            }
        }
        // The last units (fewer than 16) by value.
        for i in 0..TB {
            let row = r + i;
            for j in ub..u {
                let mut o = *job.bias.get_unchecked(j);
                if MEAN {
                    o += *ya.get_unchecked(at(u, j, c0) + i);
                }
                if let (true, Some(s_out)) = (PERT, s_out) {
                    o += sign_of(s_out.mask((row / rpe) * u + j), *yb.get_unchecked(at(u, j, c0) + i));
                }
                if let Some(base) = job.base {
                    o += *base.get_unchecked(row * u + j);
                }
                if job.relu {
                    o = o.max(0.0);
                }
                *out.get_unchecked_mut(row * u + j) = o;
            }
        }
    }
}
