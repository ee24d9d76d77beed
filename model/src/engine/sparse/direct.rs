//! Pruned 3 x 3 convolutions on small maps (VGG-16's 4 x 4 and 2 x 2 blocks) straight from
//! the activations, with no patch rows: a vector holds one position of 16 examples, and each
//! kept weight's Flipout value for those examples (`mu + D` or `mu - D` by their input and
//! output signs, which are per channel and so the same at every position) is picked once and
//! multiplies the vector at every output position of a tile, whose sums stay in registers.
//!
//! The patch-row path ([`super::forward`] on blocks of examples) picks the value again for
//! every vector (a mask move and a blend beside each fused multiply-add), and a vector there
//! is 16 positions of one example.

use super::kernel::Vector;
use super::*;

/// How a convolution's output is cut into tiles for [`forward_on`]: `th` rows of all `tw`
/// positions of a row (at most 16 positions: their sums stay in registers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tiles {
    th: usize,
    tw: usize,
}

/// The tiles of `win` when the direct kernel runs it: a 3 x 3 window, stride 1, one row and
/// column of zero padding on each side (SAME), outputs of 2 x 2, 4 x 4 or 8 wide (in tiles of
/// 2 rows); `None` otherwise.
pub(crate) fn tiles(win: &Window) -> Option<Tiles> {
    let ([oh, ow], pad) = win.geometry();
    if win.size != [3, 3] || win.strides != [1, 1] || pad != [1, 1] || [oh, ow] != [win.input[0], win.input[1]] {
        return None;
    }
    match (oh, ow) {
        (2, 2) => Some(Tiles { th: 2, tw: 2 }),
        (4, 4) => Some(Tiles { th: 4, tw: 4 }),
        (h, 8) if h % 2 == 0 => Some(Tiles { th: 2, tw: 8 }),
        _ => None,
    }
}

/// Bytes of one example vector's padded input that a chunk of channels spans on a tile's rows
/// (and its window's): L1 (48 KiB here) holds most of them while every unit's kept weights on
/// those channels go by. A 4x4 x 512 conv at 25% kept took 4.1 ms per call with 32 KiB, 3.8
/// with 48 and 3.6-3.9 with 64; 8x8 and 2x2 convs the same from 32 to 64 (on 2 x 2 maps one
/// chunk, see [`Plan::new`]).
const CHUNK_BYTES: usize = 48 * 1024;

/// Window offsets of a 3 x 3 window.
const TAPS: usize = 9;

/// A pruned convolution's kept weights in the order the direct kernel reads them, made once
/// per layer: each unit's weights by chunk of input channels, then by patch entry (window
/// offset, then channel), so that a chunk's channels stay in L1 for every unit.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The channels and map it was made for.
    shape: (usize, [usize; 2]),
    /// Chunks of channels.
    pub(super) chunks: usize,
    /// Runs of one chunk of channels and one window offset: unit `j`'s weights of chunk `c`
    /// and offset `t` (of [`TAPS`]) are `split[j * (RUNS) + c * TAPS + t]..` up to the next,
    /// `RUNS = chunks * TAPS + 1` ([`Plan::runs`]).
    pub(super) split: Vec<u32>,
    /// Patch entry of each weight (ascending within a unit's chunk).
    pub(super) indices: Vec<u32>,
    /// Where each weight of pattern order lies in plan order.
    pub(super) to_plan: Vec<u32>,
}

impl Plan {
    /// The plan of `csr` for a convolution of `cin` channels on maps of `h` x `w` positions
    /// cut into tiles `t` ([`tiles`]).
    pub(crate) fn new(csr: &Csr, cin: usize, [h, w]: [usize; 2], t: Tiles) -> Plan {
        // What a tile reads of a channel: its rows and the window's.
        let chan_bytes = (t.th + 2) * (w + 2) * LANES * std::mem::size_of::<f32>();
        // On 2 x 2 maps a weight has only 4 positions to pay for reloading the partial sums
        // of a unit once per chunk, and the whole input (512 channels: 512 KiB) sits in L2.
        let per_chunk = if h * w <= 4 { cin } else { (CHUNK_BYTES / chan_bytes).clamp(1, cin) };
        let chunks = cin.div_ceil(per_chunk);
        let runs = chunks * TAPS + 1;
        let mut plan = Plan { shape: (cin, [h, w]), chunks, split: Vec::with_capacity(csr.rows * runs), indices: vec![0; csr.nnz()], to_plan: vec![0; csr.nnz()] };
        // Each unit's entries bucketed by (chunk, window offset), stably (a counting sort):
        // within a run they stay ascending by channel.
        let mut at = vec![0usize; runs];
        for j in 0..csr.rows {
            let (s, e) = (csr.indptr[j], csr.indptr[j + 1]);
            let run = |nz: usize| {
                let i = csr.indices[nz] as usize;
                (i % cin) / per_chunk * TAPS + i / cin
            };
            at.fill(0);
            (s..e).for_each(|nz| at[run(nz) + 1] += 1);
            for r in 1..runs {
                at[r] += at[r - 1];
            }
            plan.split.extend(at.iter().map(|&a| (s + a) as u32));
            for nz in s..e {
                let q = s + at[run(nz)];
                at[run(nz)] += 1;
                plan.indices[q] = csr.indices[nz];
                plan.to_plan[nz] = q as u32;
            }
        }
        plan
    }

    /// Boundaries per unit in [`Plan::split`].
    pub(super) fn runs(&self) -> usize {
        self.chunks * TAPS + 1
    }

    /// `mu + D` and `mu - D` of the kept weights in plan order, from `a` and the noise in
    /// pattern order (a noise to draw is drawn at the same flat indices, in chunks that stay
    /// in L1 until they are added).
    ///
    /// # Panics
    /// When `a` or the noise holds fewer than `csr.nnz()` values.
    fn weights(&self, csr: &Csr, a: &[f32], noise: KeptNoise, plus: &mut [f32], minus: &mut [f32]) {
        let nnz = csr.nnz();
        let values_ok = match noise {
            KeptNoise::Values(v) => v.len() >= nnz,
            KeptNoise::Draw { sigma, .. } => sigma.len() >= nnz,
        };
        assert!(a.len() >= nnz && values_ok && plus.len() >= nnz && minus.len() >= nnz && self.to_plan.len() == nnz && csr.flat.len() == nnz, "direct conv: weights too short");
        // The values are read in pattern order (as they lie in memory; gathered in plan order
        // they missed the caches) and written to their places in plan order (within the
        // unit's run of weights).
        super::forward::kept_noise_chunks(csr, noise, |r, d| {
            for ((&q, &m), &d) in self.to_plan[r.clone()].iter().zip(&a[r]).zip(d) {
                // SAFETY: `to_plan` is a permutation of 0..nnz (`Plan::new`), and `plus` and
                // `minus` hold nnz values (checked above).
                unsafe {
                    *plus.get_unchecked_mut(q as usize) = m + d;
                    *minus.get_unchecked_mut(q as usize) = m - d;
                }
            }
        });
    }
}

/// The tiles of a pruned Flipout convolution of window `win` that runs on the direct kernel
/// on this CPU ([`tiles`]): on AVX-512 only, where a tile's 16 sums take 16 of the 32 vector
/// registers. With AVX2 a vector is two registers of 16, so the sums would not fit (not
/// measured there; the patch-row path keeps the convolution, as in portable code, which has
/// no blend).
pub(crate) fn direct_tiles(win: &Window) -> Option<Tiles> {
    tiles(win).filter(|_| Isa::detect() == Isa::Avx512)
}

/// Reusable buffers of [`forward_on`].
#[derive(Default)]
pub(crate) struct Scratch {
    /// The input with a border of zeros, `[vectors of 16 examples, channels, h + 2, w + 2, 16]`.
    x: Aligned,
    /// The output, `[vectors of 16 examples, units, h, w, 16]`.
    y: Aligned,
    /// Lane masks of the input and output signs, `[vectors, channels]` and `[vectors, units]`.
    s_in: Vec<u16>,
    s_out: Vec<u16>,
    /// `mu + D` and `mu - D` of the kept weights in plan order.
    plus: Aligned,
    minus: Aligned,
}

/// The layer's operands, checked by [`forward_on`].
struct Ops<'a> {
    plan: &'a Plan,
    /// The padded input and the output ([`Scratch`]'s layouts).
    x: &'a [f32],
    y: &'a mut [f32],
    /// Lane masks of the input and output signs.
    s_in: &'a [u16],
    s_out: &'a [u16],
    /// `mu + D` and `mu - D` of the kept weights in plan order.
    plus: &'a [f32],
    minus: &'a [f32],
    /// Units.
    units: usize,
    /// Input channels.
    cin: usize,
    bias: &'a [f32],
    relu: bool,
    /// Example vectors.
    vectors: usize,
    /// Output rows of the map.
    oh: usize,
    /// Floats per channel of one example vector's padded input.
    chan_len: usize,
}

/// `out` (`[n, oh, ow, units]`) = `bias + conv(x, W)` through a ReLU when `relu`, `W` being
/// `mu + D` or `mu - D` (`a` the means, `noise` D, both in pattern order) by the product of
/// each example's input sign of the weight's channel (`s_in`, `[n, channels]` XOR masks) and
/// output sign of its unit (`s_out`, `[n, units]`): Flipout's two products in one, as
/// [`Pass::Signed`] computes them.
///
/// The kernel runs on `isa` where the CPU supports it (tests compare them), else on the best
/// one below it that the CPU has ([`Isa::supported`]).
///
/// # Panics
/// When a slice is shorter than its shape says.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_on(isa: Isa, job: &Job, win: &Window, t: Tiles, a: &[f32], noise: KeptNoise, (s_in, s_out): (&[u32], &[u32]), out: &mut [f32], ws: &mut Scratch) {
    let csr = job.csr;
    let ([h, w, cin], u, n) = (win.input, csr.rows, job.n);
    let positions = h * w;
    assert!(csr.cols == 9 * cin && h % t.th == 0 && w == t.tw, "direct conv: shape");
    assert!(job.x.len() >= n * positions * cin && out.len() >= n * positions * u && job.bias.len() >= u, "direct conv: slices too short");
    assert!(a.len() >= csr.nnz() && s_in.len() >= n * cin && s_out.len() >= n * u, "direct conv: operands too short");
    let plan = csr.direct.get_or_init(|| Box::new(Plan::new(csr, cin, [h, w], t)));
    assert!(plan.shape == (cin, [h, w]), "direct conv: a plan made for another shape");
    let isa = isa.supported();
    let (plus, minus) = (ws.plus.get(csr.nnz()), ws.minus.get(csr.nnz()));
    plan.weights(csr, a, noise, plus, minus);
    let vectors = n.div_ceil(LANES);
    let pitch = w + 2;
    let chan_len = (h + 2) * pitch * LANES;
    // The input in example vectors, with a border of zeros (and zeros in the lanes past n:
    // there all of it is zeroed first). Else only the rows above and below the map: nothing
    // else writes them, and the kernel never reads the columns beside it (it skips the
    // positions whose input would lie there).
    let x = ws.x.get(vectors * cin * chan_len);
    if n % LANES != 0 {
        x.fill(0.0);
    } else {
        let row = pitch * LANES;
        for chan in x.chunks_exact_mut(chan_len) {
            chan[..row].fill(0.0);
            chan[(h + 1) * row..].fill(0.0);
        }
    }
    for v in 0..vectors {
        let lanes = LANES.min(n - v * LANES);
        for q in 0..positions {
            let padded = (q / w + 1) * pitch + q % w + 1;
            let src = &job.x[(v * LANES * positions + q) * cin..];
            transpose_on(isa, src, None, positions * cin, lanes, cin, &mut x[v * cin * chan_len + padded * LANES..], chan_len);
        }
    }
    let lane_masks = |masks: &[u32], width: usize, dst: &mut Vec<u16>| {
        dst.clear();
        dst.resize(vectors * width, 0);
        for (e, ex) in masks[..n * width].chunks_exact(width).enumerate() {
            let (row, bit) = (&mut dst[e / LANES * width..][..width], e % LANES);
            row.iter_mut().zip(ex).for_each(|(m, &s)| *m |= u16::from(s != 0) << bit);
        }
    };
    lane_masks(s_in, cin, &mut ws.s_in);
    lane_masks(s_out, u, &mut ws.s_out);
    let y = ws.y.get(vectors * u * positions * LANES);
    let mut op = Ops { plan, x, y, s_in: &ws.s_in, s_out: &ws.s_out, plus, minus, units: u, cin, bias: job.bias, relu: job.relu, vectors, oh: h, chan_len };
    // SAFETY: the operands' lengths were checked above, and every offset stays inside the
    // padded input (a tile's rows plus the window's lie within h + 2 rows); the instruction
    // set is one the CPU supports (detected).
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => run_avx512(&mut op, t),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => run_avx2(&mut op, t),
            _ => run::<[f32; LANES]>(&mut op, t),
        }
    }
    // Back to rows: example e's position q of unit j at out[(e * positions + q) * u + j].
    let y = &*op.y;
    for v in 0..vectors {
        let lanes = LANES.min(n - v * LANES);
        for q in 0..positions {
            let src = &y[(v * u * positions + q) * LANES..];
            transpose_on(isa, src, None, positions * LANES, u, lanes, &mut out[(v * LANES * positions + q) * u..], positions * u);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512(op: &mut Ops, t: Tiles) {
    // SAFETY: the caller's contract; AVX-512F is enabled here.
    unsafe { run::<super::kernel::Avx512>(op, t) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(op: &mut Ops, t: Tiles) {
    // SAFETY: the caller's contract; AVX2 and FMA are enabled here.
    unsafe { run::<super::kernel::Avx2>(op, t) }
}

/// [`tile`] over every example vector, unit and tile of the map, for the tile shapes of
/// [`tiles`].
///
/// # Safety
/// As [`forward_on`] checks; the CPU runs `V`.
#[inline(always)]
unsafe fn run<V: Vector>(op: &mut Ops, t: Tiles) {
    // SAFETY: the caller's contract.
    unsafe {
        match (t.th, t.tw) {
            (2, 2) => tiles_of::<V, 2, 2, 4, true>(op),
            (4, 4) => tiles_of::<V, 4, 4, 16, true>(op),
            _ => tiles_of::<V, 2, 8, 16, false>(op),
        }
    }
}

/// # Safety
/// As [`forward_on`] checks, `P = TH * TW`; the CPU runs `V`.
#[inline(always)]
unsafe fn tiles_of<V: Vector, const TH: usize, const TW: usize, const P: usize, const WHOLE: bool>(op: &mut Ops) {
    let (u, positions, cin) = (op.units, op.oh * TW, op.cin);
    let (x, y) = (op.x.as_ptr(), op.y.as_mut_ptr());
    let plan = op.plan;
    let (m, runs) = (plan.chunks, plan.runs());
    let (plus, minus) = (op.plus, op.minus);
    let geo = Geometry { cin, chan_len: op.chan_len };
    // Tile by tile: a chunk's channels are read on the tile's rows only (and its window's).
    for v in 0..op.vectors {
        let s_in = op.s_in[v * cin..].as_ptr();
        for r0 in (0..op.oh).step_by(TH) {
            for c in 0..m {
                let last = c + 1 == m;
                for j in 0..u {
                    let bounds: &[u32; TAPS + 1] = plan.split[j * runs + c * TAPS..][..TAPS + 1].try_into().expect("TAPS + 1 bounds");
                    if c > 0 && bounds[0] == bounds[TAPS] && !last {
                        continue;
                    }
                    let so = op.s_out[v * u + j];
                    let w = Weights { indices: &plan.indices, plus, minus, bounds };
                    // SAFETY: the caller's contract: tile rows r0..r0 + TH and their window rows
                    // lie in the padded input of example vector v; outputs inside y.
                    unsafe {
                        let xt = x.add(v * cin * op.chan_len + r0 * (TW + 2) * LANES);
                        let yt = y.add(((v * u + j) * positions + r0 * TW) * LANES);
                        tile::<V, TH, TW, P, WHOLE>(xt, geo, w, s_in, so, c > 0, last.then_some(op.bias[j]), op.relu, yt);
                    }
                }
            }
        }
    }
}

/// Where a patch entry lies in an example vector's padded input.
#[derive(Clone, Copy)]
struct Geometry {
    cin: usize,
    chan_len: usize,
}

/// One unit's kept weights of one chunk of channels, in plan order: the plan's patch entries
/// and values, and where the chunk's run of each window offset starts (and the last ends).
#[derive(Clone, Copy)]
struct Weights<'a> {
    indices: &'a [u32],
    plus: &'a [f32],
    minus: &'a [f32],
    bounds: &'a [u32; TAPS + 1],
}

/// One unit's sums on one tile of `TH x TW` positions over a run of its kept weights: each
/// weight's value for each lane picked by the lanes' signs, then one fused multiply-add per
/// position of the tile that its window offset takes from inside the map (the border of zeros
/// only pads the others); `partial`: added to the sums at `y`; with a bias, the bias and ReLU
/// on the sums (complete then); stored at `y` (position after position, 16 lanes each).
/// `WHOLE`: the tile is the whole map (its top and bottom rows border the padding).
///
/// # Safety
/// `x` is the tile's first row in the padded input (`TW + 2` vectors a row), which holds the
/// tile's `TH + 2` rows for every channel below `g.cin` (`g.chan_len` floats apart); the
/// indices are below `9 * g.cin` and `s_in` holds `g.cin` masks; `y` holds `P = TH * TW`
/// vectors; the CPU runs `V`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<V: Vector, const TH: usize, const TW: usize, const P: usize, const WHOLE: bool>(x: *const f32, g: Geometry, w: Weights, s_in: *const u16, so: u16, partial: bool, bias: Option<f32>, relu: bool, y: *mut f32) {
    // SAFETY: the caller's contract.
    unsafe {
        let mut acc = [V::zero(); P];
        if partial {
            for (p, a) in acc.iter_mut().enumerate() {
                *a = V::load(y.add(p * LANES));
            }
        }
        // Each window offset's run on code of its own.
        let run = |t: usize| Run { x, g, w, s_in, so, first: t * g.cin, range: (w.bounds[t] as usize, w.bounds[t + 1] as usize) };
        taps::<V, TH, TW, P, WHOLE, 0, 0>(&mut acc, run(0));
        taps::<V, TH, TW, P, WHOLE, 0, 1>(&mut acc, run(1));
        taps::<V, TH, TW, P, WHOLE, 0, 2>(&mut acc, run(2));
        taps::<V, TH, TW, P, WHOLE, 1, 0>(&mut acc, run(3));
        taps::<V, TH, TW, P, WHOLE, 1, 1>(&mut acc, run(4));
        taps::<V, TH, TW, P, WHOLE, 1, 2>(&mut acc, run(5));
        taps::<V, TH, TW, P, WHOLE, 2, 0>(&mut acc, run(6));
        taps::<V, TH, TW, P, WHOLE, 2, 1>(&mut acc, run(7));
        taps::<V, TH, TW, P, WHOLE, 2, 2>(&mut acc, run(8));
        if let Some(bias) = bias {
            let b = V::splat(bias);
            for a in acc.iter_mut() {
                let o = V::add(b, *a);
                *a = if relu { V::relu(o) } else { o };
            }
        }
        for (p, a) in acc.iter().enumerate() {
            a.store(y.add(p * LANES));
        }
    }
}

/// The entries `range` of a [`tile`]'s weights, all of one window offset, whose first patch
/// entry is `first`.
#[derive(Clone, Copy)]
struct Run<'a> {
    x: *const f32,
    g: Geometry,
    w: Weights<'a>,
    s_in: *const u16,
    so: u16,
    first: usize,
    range: (usize, usize),
}

/// [`tile`]'s sums over a [`Run`] of window offset `(DY, DX)`: the positions whose input lies
/// in the border of zeros are skipped (columns always, rows where the tile is the whole map).
///
/// # Safety
/// As [`tile`]'s.
#[inline(always)]
unsafe fn taps<V: Vector, const TH: usize, const TW: usize, const P: usize, const WHOLE: bool, const DY: usize, const DX: usize>(acc: &mut [V; P], r: Run) {
    let inside = |py: usize, px: usize| !(WHOLE && (DY == 0 && py == 0 || DY == 2 && py + 1 == TH)) && !(DX == 0 && px == 0 || DX == 2 && px + 1 == TW);
    // SAFETY: the caller's contract.
    unsafe {
        let at = r.x.add((DY * (TW + 2) + DX) * LANES);
        for nz in r.range.0..r.range.1 {
            let c = *r.w.indices.get_unchecked(nz) as usize - r.first;
            let m = *r.s_in.add(c) ^ r.so;
            let wv = V::blend(m, V::splat(*r.w.plus.get_unchecked(nz)), V::splat(*r.w.minus.get_unchecked(nz)));
            let xb = at.add(c * r.g.chan_len);
            for py in 0..TH {
                for px in 0..TW {
                    if inside(py, px) {
                        let p = py * TW + px;
                        acc[p] = V::fma(wv, V::load(xb.add((py * (TW + 2) + px) * LANES)), acc[p]);
                    }
                }
            }
        }
    }
}
