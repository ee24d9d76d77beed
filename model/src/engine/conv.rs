//! Convolution and pooling on NHWC activations. A convolution is `im2col` followed by the
//! layer's [`super::dense::Kernel`]: the patch order (kh, kw, c) matches TF's HWIO kernel
//! flattened to `[kh * kw * c, out]`, so dense and CSR kernels serve both layer types.

use super::winograd::{Lanes, Path};
use crate::arch::Padding;

/// Geometry of a window op over `[h, w, c]` examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Input height, width, channels.
    pub input: [usize; 3],
    /// Window height and width.
    pub size: [usize; 2],
    /// Strides.
    pub strides: [usize; 2],
    /// Padding mode.
    pub padding: Padding,
}

impl Window {
    /// Output height and width, and the padding before each.
    pub(crate) fn geometry(&self) -> ([usize; 2], [usize; 2]) {
        let (oh, ph) = self.padding.output(self.input[0], self.size[0], self.strides[0]);
        let (ow, pw) = self.padding.output(self.input[1], self.size[1], self.strides[1]);
        ([oh, ow], [ph, pw])
    }

    /// Output `[h, w]`.
    pub fn output(&self) -> [usize; 2] {
        self.geometry().0
    }

    /// Whether this is a 2x2, stride-2 window with no padding before or after the input
    /// (VALID, or SAME on even sides): the max pool that the fused output passes take over,
    /// every pool window inside the input. (SAME on an odd side pads after it: its last
    /// windows hold one row or column.)
    pub(crate) fn is_unpadded_2x2(&self) -> bool {
        let ([oh, ow], pad) = self.geometry();
        self.size == [2, 2] && self.strides == [2, 2] && pad == [0, 0] && [oh, ow] == [self.input[0] / 2, self.input[1] / 2]
    }

    /// For each output position and window offset, the input position (None = padding).
    fn source(&self, o: [usize; 2], d: [usize; 2]) -> Option<[usize; 2]> {
        let (_, pad) = self.geometry();
        let y = (o[0] * self.strides[0] + d[0]).checked_sub(pad[0])?;
        let x = (o[1] * self.strides[1] + d[1]).checked_sub(pad[1])?;
        (y < self.input[0] && x < self.input[1]).then_some([y, x])
    }
}

/// Patches of `x` (`[n, h, w, c]`): `[n * oh * ow, kh * kw * c]`, zeros where padded.
pub fn im2col(x: &[f32], n: usize, win: &Window) -> Vec<f32> {
    let [oh, ow] = win.output();
    let mut out = Vec::new();
    im2col_rows(x, win, 0, n * oh * ow, &mut out);
    out
}

/// Patch rows `r0..r1` of `x` (row `r` = output position `r % (oh * ow)` of example
/// `r / (oh * ow)`) into `out` (`[r1 - r0, kh * kw * c]`): a block of im2col, so that the
/// GEMM's input stays in cache instead of materializing every patch of the batch.
pub fn im2col_rows(x: &[f32], win: &Window, r0: usize, r1: usize, out: &mut Vec<f32>) {
    let [h, w, c] = win.input;
    let ([oh, ow], [ph, pw]) = win.geometry();
    let [kh, kw] = win.size;
    let patch = kh * kw * c;
    out.clear();
    out.resize((r1 - r0) * patch, 0.0);
    for (r, row) in (r0..r1).zip(out.chunks_exact_mut(patch.max(1))) {
        let (b, pos) = (r / (oh * ow), r % (oh * ow));
        let (oy, ox) = (pos / ow, pos % ow);
        let img = &x[b * h * w * c..(b + 1) * h * w * c];
        for dy in 0..kh {
            // Rows above or below the image stay zero (padding).
            let Some(y) = (oy * win.strides[0] + dy).checked_sub(ph).filter(|&y| y < h) else { continue };
            for dx in 0..kw {
                let Some(xx) = (ox * win.strides[1] + dx).checked_sub(pw).filter(|&xx| xx < w) else { continue };
                let dst = (dy * kw + dx) * c;
                row[dst..dst + c].copy_from_slice(&img[(y * w + xx) * c..][..c]);
            }
        }
    }
}

/// Max pooling of `x` (`[n, h, w, c]`); padded positions are ignored, as in TensorFlow.
pub fn max_pool(x: &[f32], n: usize, win: &Window) -> Vec<f32> {
    let mut out = Vec::new();
    max_pool_into(x, n, win, &mut out);
    out
}

/// [`max_pool`] into a reused buffer (a fresh one per layer and sample page-faulted its
/// memory in again every time).
pub fn max_pool_into(x: &[f32], n: usize, win: &Window, out: &mut Vec<f32>) {
    let [oh, ow] = win.output();
    out.clear();
    out.resize(n * oh * ow * win.input[2], 0.0);
    max_pool_to(x, n, win, out);
}

/// [`max_pool`] into `out`, which holds exactly `n` output examples (a conv layer pools each
/// example's output into its place while it is still in cache).
pub(crate) fn max_pool_to(x: &[f32], n: usize, win: &Window, out: &mut [f32]) {
    let [h, w, c] = win.input;
    let [oh, ow] = win.output();
    if win.is_unpadded_2x2() && c > 0 {
        max_pool_2x2(x, n, win.input, [oh, ow], out);
        return;
    }
    out.fill(f32::NEG_INFINITY);
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                let o = &mut out[((b * oh + oy) * ow + ox) * c..][..c];
                for dy in 0..win.size[0] {
                    for dx in 0..win.size[1] {
                        if let Some([y, xx]) = win.source([oy, ox], [dy, dx]) {
                            let i = &x[((b * h + y) * w + xx) * c..][..c];
                            for (m, &v) in o.iter_mut().zip(i) {
                                *m = m.max(v);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The common 2x2, stride-2 window without padding: each output pixel is the elementwise max
/// of four contiguous channel vectors, two from each of a pair of input rows. Iterators over
/// exact chunks leave no bounds checks in the inner loop, so it vectorizes over channels
/// (the generic loop recomputed the window geometry for every tap).
fn max_pool_2x2(x: &[f32], n: usize, [h, w, c]: [usize; 3], [oh, ow]: [usize; 2], out: &mut [f32]) {
    let images = x.chunks_exact(h * w * c).zip(out.chunks_exact_mut(oh * ow * c)).take(n);
    for (img, dst) in images {
        // Input rows 2 oy and 2 oy + 1; a trailing odd row or column is outside every window.
        let row_pairs = img.chunks_exact(2 * w * c).zip(dst.chunks_exact_mut(ow * c));
        for (rows, orow) in row_pairs {
            let (top, bottom) = rows.split_at(w * c);
            let taps = top.chunks_exact(2 * c).zip(bottom.chunks_exact(2 * c));
            for (o, (t, u)) in orow.chunks_exact_mut(c).zip(taps) {
                let (t0, t1) = t.split_at(c);
                let (u0, u1) = u.split_at(c);
                for ((((m, &a), &b), &d), &e) in o.iter_mut().zip(t0).zip(t1).zip(u0).zip(u1) {
                    *m = a.max(b).max(d.max(e));
                }
            }
        }
    }
}

/// Output rows of [`conv_c1`]'s register block (x `w / lanes` vectors of accumulators).
const C1_ROWS: usize = 4;

/// One example's convolution with ONE input channel, direct: `out[p, :] = sum over the window
/// of img[pos(p) + tap] * wt[tap, :]` (`img` `[h, w]`, `wt` `[kh * kw, cols]`, `out`
/// `[oh * ow, cols]`, zeros where padded). For the first conv of an image model (k = 25 for
/// 5x5): as a GEMM it is shallow, so packing the patches took as long as the product, and the
/// im2col patches of a batch are 25x its input; here each input value is broadcast from the
/// zero-padded image (`pad`: scratch) against the kernel rows, kept in L1.
///
/// # Panics
/// When a slice is shorter than the shapes say or the window has more than one channel (a bug
/// in the caller).
pub(crate) fn conv_c1(img: &[f32], win: &Window, wt: &[f32], cols: usize, out: &mut [f32], pad: &mut Vec<f32>) {
    conv_c1_on(Path::available()[0], img, win, wt, cols, out, pad);
}

/// Whether [`conv_c1`] runs `cols` columns in vector registers on this CPU (1-4 AVX-512 or
/// AVX2 vectors); its portable path is for correctness, not speed.
pub(crate) fn conv_c1_vectorized(cols: usize) -> bool {
    let paths = Path::available();
    (paths.contains(&Path::Avx512) && c1_fits(cols, 16)) || (paths.contains(&Path::Avx2) && c1_fits(cols, 8))
}

/// Whether `cols` is 1-4 whole vectors of `lanes` columns: the widths the direct one-channel
/// kernels have register blocks for.
fn c1_fits(cols: usize, lanes: usize) -> bool {
    cols.is_multiple_of(lanes) && (1..=4).contains(&(cols / lanes))
}

/// [`conv_c1`] on the code `path`: vectors of 16 (AVX-512) or 8 (AVX2) columns where `cols` is
/// 1-4 such vectors, plain f32 otherwise.
pub(crate) fn conv_c1_on(path: Path, img: &[f32], win: &Window, wt: &[f32], cols: usize, out: &mut [f32], pad: &mut Vec<f32>) {
    let [oh, ow] = win.output();
    assert!(out.len() >= oh * ow * cols, "conv_c1: output shorter than the shapes say");
    let g = C1::new(img, win, wt, cols, pad);
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY (all): `Path::available` lists a path only where the CPU has its features.
        if path == Path::Avx512 && c1_fits(cols, 16) {
            return unsafe { c1_avx512(&g, out) };
        }
        if matches!(path, Path::Avx512 | Path::Avx2) && c1_fits(cols, 8) {
            // SAFETY: AVX-512 implies AVX2 + FMA on every CPU that has it; checked anyway.
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return unsafe { c1_avx2(&g, out) };
            }
        }
    }
    c1_portable(&g, out);
}

/// Shapes of one [`conv_c1`] call.
struct C1<'a> {
    pad: &'a [f32],
    wp: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    sy: usize,
    sx: usize,
    wt: &'a [f32],
    cols: usize,
}

impl<'a> C1<'a> {
    /// The call on `img` with kernel `wt` (`cols` columns): zero-pads the image into `pad`.
    ///
    /// # Panics
    /// When a slice is shorter than the shapes say or the window has more than one channel.
    fn new(img: &[f32], win: &Window, wt: &'a [f32], cols: usize, pad: &'a mut Vec<f32>) -> C1<'a> {
        let [h, w, c] = win.input;
        let ([oh, ow], [ph, pw]) = win.geometry();
        let ([kh, kw], [sy, sx]) = (win.size, win.strides);
        assert!(c == 1 && img.len() >= h * w && wt.len() >= kh * kw * cols, "conv_c1: shapes do not fit");
        // The padded image: every window of every output inside it.
        let (hp, wp) = ((oh.max(1) - 1) * sy + kh, (ow.max(1) - 1) * sx + kw);
        pad.clear();
        pad.resize(hp * wp, 0.0);
        // Image (y, x) at padded (y + ph, x + pw); rows and columns past the last window unused.
        let xs = w.min(wp.saturating_sub(pw));
        for y in 0..h.min(hp.saturating_sub(ph)) {
            pad[(y + ph) * wp + pw..][..xs].copy_from_slice(&img[y * w..][..xs]);
        }
        C1 { pad, wp, oh, ow, kh, kw, sy, sx, wt, cols }
    }
}

/// The output pass of a [`conv_c1_pool2`]: the bias, then a ReLU when `relu`.
pub(crate) struct C1Output<'a> {
    /// Bias, one per column.
    pub bias: &'a [f32],
    /// Whether a ReLU follows.
    pub relu: bool,
}

/// [`conv_c1`], then the output pass `f` and a 2x2, stride-2 max pool without padding, in
/// registers: each register block is one pool window of 2x2 outputs, so neither the products
/// (`[oh * ow, cols]`) nor the unpooled output are written; `out` gets
/// `[oh / 2, ow / 2, cols]`. The values are those of `conv_c1`, the bias (and ReLU) and
/// [`max_pool_to`] in turn, operation for operation. Flipout's two products run here as one,
/// against the example's own weights (one input channel: one input sign per example). Returns
/// false, having done nothing, where [`conv_c1_vectorized`] is false for `cols`.
///
/// # Panics
/// As [`conv_c1`]; also when `f` or `out` is shorter than the shapes say.
pub(crate) fn conv_c1_pool2(img: &[f32], win: &Window, wt: &[f32], cols: usize, f: &C1Output, out: &mut [f32], pad: &mut Vec<f32>) -> bool {
    let [oh, ow] = win.output();
    assert!(f.bias.len() >= cols && out.len() >= (oh / 2) * (ow / 2) * cols, "conv_c1_pool2: shapes do not fit");
    #[cfg(target_arch = "x86_64")]
    {
        let path = Path::available()[0];
        // SAFETY (all): `Path::available` lists a path only where the CPU has its features;
        // AVX-512 implies AVX2 + FMA (checked anyway).
        if path == Path::Avx512 && c1_fits(cols, 16) {
            unsafe { c1_pool2_avx512(&C1::new(img, win, wt, cols, pad), f, out) };
            return true;
        }
        if matches!(path, Path::Avx512 | Path::Avx2) && c1_fits(cols, 8) && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            unsafe { c1_pool2_avx2(&C1::new(img, win, wt, cols, pad), f, out) };
            return true;
        }
    }
    false
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn c1_pool2_avx512(g: &C1, f: &C1Output, out: &mut [f32]) {
    use std::arch::x86_64::__m512;
    if g.kh == 5 && g.kw == 5 {
        c1_pool2_widths::<__m512, 5>(g, f, out);
    } else {
        c1_pool2_widths::<__m512, 0>(g, f, out);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn c1_pool2_avx2(g: &C1, f: &C1Output, out: &mut [f32]) {
    c1_pool2_widths::<std::arch::x86_64::__m256, 0>(g, f, out);
}

/// [`c1_pool2_windows`] for `g.cols` = 1-4 vectors of `V`.
#[inline(always)]
unsafe fn c1_pool2_widths<V: Lanes, const KS: usize>(g: &C1, f: &C1Output, out: &mut [f32]) {
    match g.cols / V::L {
        1 => c1_pool2_windows::<V, 1, KS>(g, f, out),
        2 => c1_pool2_windows::<V, 2, KS>(g, f, out),
        3 => c1_pool2_windows::<V, 3, KS>(g, f, out),
        _ => c1_pool2_windows::<V, 4, KS>(g, f, out),
    }
}

/// Every pool window of [`conv_c1_pool2`]: 4 outputs x `NV` vectors of accumulators, as in
/// [`c1_block`], then the output pass and the max. `KS` is the kernel's side when a constant
/// (5: BNN-Conv's first conv, its taps unrolled: 8% less time in this kernel), else 0.
#[inline(always)]
unsafe fn c1_pool2_windows<V: Lanes, const NV: usize, const KS: usize>(g: &C1, f: &C1Output, out: &mut [f32]) {
    let (kh, kw) = if KS > 0 { (KS, KS) } else { (g.kh, g.kw) };
    let (ph, pw) = (g.oh / 2, g.ow / 2);
    let cols = NV * V::L;
    let (pad, wt) = (g.pad.as_ptr(), g.wt.as_ptr());
    for py in 0..ph {
        for px in 0..pw {
            // Outputs (2 py + i, 2 px + j) as o = 2 i + j, the order of `max_pool_2x2`'s taps.
            let mut acc = [[V::zero(); NV]; 4];
            // Unchecked loads, in bounds as in `c1_block`: every output of the window is one of
            // the conv's (2 py + 1 < oh, 2 px + 1 < ow).
            for dy in 0..kh {
                let rows = [pad.add((2 * py * g.sy + dy) * g.wp + 2 * px * g.sx), pad.add(((2 * py + 1) * g.sy + dy) * g.wp + 2 * px * g.sx)];
                for dx in 0..kw {
                    let wrow = wt.add((dy * kw + dx) * g.cols);
                    let mut wv = [V::zero(); NV];
                    for (v, wv) in wv.iter_mut().enumerate() {
                        *wv = V::load_ptr(wrow.add(v * V::L));
                    }
                    for (o, acc) in acc.iter_mut().enumerate() {
                        let xv = *rows[o / 2].add((o % 2) * g.sx + dx);
                        for (a, &wv) in acc.iter_mut().zip(&wv) {
                            *a = wv.fma(xv, *a);
                        }
                    }
                }
            }
            let dst = &mut out[(py * pw + px) * cols..];
            for v in 0..NV {
                let bias = V::load(&f.bias[v * V::L..]);
                // A loop, not `array::map`: closures do not inherit the CPU features.
                let mut y = [V::zero(); 4];
                for (y, a) in y.iter_mut().zip(&acc) {
                    *y = a[v].add(bias);
                    if f.relu {
                        *y = y.max(V::zero());
                    }
                }
                y[0].max(y[1]).max(y[2].max(y[3])).store(&mut dst[v * V::L..]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn c1_avx512(g: &C1, out: &mut [f32]) {
    c1_widths::<std::arch::x86_64::__m512>(g, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn c1_avx2(g: &C1, out: &mut [f32]) {
    c1_widths::<std::arch::x86_64::__m256>(g, out);
}

/// [`c1_block_rows`] for `g.cols` = 1-4 vectors of `V`.
#[inline(always)]
unsafe fn c1_widths<V: Lanes>(g: &C1, out: &mut [f32]) {
    match g.cols / V::L {
        1 => c1_block_rows::<V, 1>(g, out),
        2 => c1_block_rows::<V, 2>(g, out),
        3 => c1_block_rows::<V, 3>(g, out),
        _ => c1_block_rows::<V, 4>(g, out),
    }
}

/// All output positions, [`C1_ROWS`] at a time, `NV` vectors of `V` wide (`g.cols`).
#[inline(always)]
unsafe fn c1_block_rows<V: Lanes, const NV: usize>(g: &C1, out: &mut [f32]) {
    for oy in 0..g.oh {
        let mut ox = 0;
        while ox + C1_ROWS <= g.ow {
            c1_block::<V, NV, C1_ROWS>(g, out, oy, ox);
            ox += C1_ROWS;
        }
        while ox < g.ow {
            c1_block::<V, NV, 1>(g, out, oy, ox);
            ox += 1;
        }
    }
}

/// Outputs `(oy, ox..ox + MR)`: MR x NV accumulators, one broadcast input value per output
/// and tap against the tap's NV kernel vectors.
#[inline(always)]
unsafe fn c1_block<V: Lanes, const NV: usize, const MR: usize>(g: &C1, out: &mut [f32], oy: usize, ox: usize) {
    let mut acc = [[V::zero(); NV]; MR];
    // Unchecked loads in the inner loop (bounds checks took half its instructions): the
    // padded image is `((oh - 1) * sy + kh) x wp` with `wp = (ow - 1) * sx + kw`, so for
    // oy < oh, ox + i < ow, dy < kh, dx < kw every index is inside it; the kernel holds
    // kh * kw * cols values (both checked in `conv_c1_on`), NV * V::L <= cols.
    debug_assert!(oy < g.oh && ox + MR <= g.ow && NV * V::L <= g.cols);
    let (pad, wt) = (g.pad.as_ptr(), g.wt.as_ptr());
    for dy in 0..g.kh {
        let row = pad.add((oy * g.sy + dy) * g.wp + ox * g.sx);
        for dx in 0..g.kw {
            let wrow = wt.add((dy * g.kw + dx) * g.cols);
            let mut wv = [V::zero(); NV];
            for (v, wv) in wv.iter_mut().enumerate() {
                *wv = V::load_ptr(wrow.add(v * V::L));
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let xv = *row.add(i * g.sx + dx);
                for (a, &wv) in acc.iter_mut().zip(&wv) {
                    *a = wv.fma(xv, *a);
                }
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        let o = &mut out[(oy * g.ow + ox + i) * g.cols..];
        for (v, &a) in acc.iter().enumerate() {
            a.store(&mut o[v * V::L..]);
        }
    }
}

/// The portable path (any CPU, any column count): one output at a time.
fn c1_portable(g: &C1, out: &mut [f32]) {
    let cols = g.cols;
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let o = &mut out[(oy * g.ow + ox) * cols..][..cols];
            o.fill(0.0);
            for dy in 0..g.kh {
                for dx in 0..g.kw {
                    let xv = g.pad[(oy * g.sy + dy) * g.wp + ox * g.sx + dx];
                    for (o, &wv) in o.iter_mut().zip(&g.wt[(dy * g.kw + dx) * cols..][..cols]) {
                        *o += wv * xv;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn im2col_same_padding_by_hand() {
        // 2x2 image, 1 channel [[1, 2], [3, 4]], 2x2 window SAME stride 1: TF pads after.
        let win = Window { input: [2, 2, 1], size: [2, 2], strides: [1, 1], padding: Padding::Same };
        let p = im2col(&[1.0, 2.0, 3.0, 4.0], 1, &win);
        assert_eq!(p, vec![1., 2., 3., 4., 2., 0., 4., 0., 3., 4., 0., 0., 4., 0., 0., 0.]);
    }

    #[test]
    fn max_pool_by_hand() {
        let x: Vec<f32> = (0..16).map(|v| v as f32).collect(); // 4x4x1
        let win = Window { input: [4, 4, 1], size: [2, 2], strides: [2, 2], padding: Padding::Valid };
        assert_eq!(max_pool(&x, 1, &win), vec![5.0, 7.0, 13.0, 15.0]);
        let win = Window { input: [3, 3, 1], size: [2, 2], strides: [2, 2], padding: Padding::Same };
        assert_eq!(max_pool(&(0..9).map(|v| -(v as f32)).collect::<Vec<_>>(), 1, &win), vec![0.0, -2.0, -6.0, -8.0]);
    }

    /// Max pooling by its definition, in f64: the max over the window's taps inside the image.
    fn max_pool_reference(x: &[f32], n: usize, win: &Window) -> Vec<f64> {
        let [h, w, c] = win.input;
        let ([oh, ow], [ph, pw]) = win.geometry();
        let mut out = Vec::new();
        for b in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ch in 0..c {
                        let mut m = f64::NEG_INFINITY;
                        for dy in 0..win.size[0] {
                            for dx in 0..win.size[1] {
                                let (y, xx) = ((oy * win.strides[0] + dy) as i64 - ph as i64, (ox * win.strides[1] + dx) as i64 - pw as i64);
                                if (0..h as i64).contains(&y) && (0..w as i64).contains(&xx) {
                                    m = m.max(f64::from(x[((b * h + y as usize) * w + xx as usize) * c + ch]));
                                }
                            }
                        }
                        out.push(m);
                    }
                }
            }
        }
        out
    }

    /// Values in [-1, 1) from a linear congruential generator seeded with `seed`.
    fn uniform(mut seed: u32) -> impl FnMut() -> f32 {
        move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 23) as f32 - 1.0
        }
    }

    #[test]
    fn max_pool_2x2_matches_the_definition() {
        // Even and odd sizes, VALID and SAME (SAME on an odd size pads, so it takes the generic
        // path), 1 to 33 channels (vector widths and their tails), several examples.
        let mut next = uniform(0x2545_f491);
        for (h, w, c, padding) in [(4, 4, 1, Padding::Valid), (28, 28, 32, Padding::Same), (14, 14, 64, Padding::Valid), (7, 9, 5, Padding::Valid), (7, 9, 33, Padding::Same), (6, 2, 3, Padding::Same)] {
            let n = 3;
            let x: Vec<f32> = (0..n * h * w * c).map(|_| next()).collect();
            let win = Window { input: [h, w, c], size: [2, 2], strides: [2, 2], padding };
            let got = max_pool(&x, n, &win);
            let want = max_pool_reference(&x, n, &win);
            assert_eq!(got.len(), want.len(), "{h}x{w}x{c} {padding:?}");
            for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                assert_eq!(f64::from(*g), *r, "{h}x{w}x{c} {padding:?} at {i}");
            }
        }
    }

    #[test]
    fn one_channel_conv_with_bias_and_pool_in_registers_equals_the_passes() {
        // (h, w, kernel, strides, padding, cols): BNN-Conv's first conv (28x28, 5x5, 32
        // units), 1-4 AVX-512 vectors, odd outputs (the pool drops the last row and column),
        // stride 2, bitwise against the passes on the same CPU path.
        let cases = [
            (28, 28, [5, 5], [1, 1], Padding::Same, 32),
            (9, 7, [5, 5], [1, 1], Padding::Same, 16),
            (8, 9, [3, 3], [1, 1], Padding::Valid, 64),
            (6, 11, [3, 3], [2, 2], Padding::Same, 48),
            // 8 and 24 columns: the AVX2 kernel (one and three 8-lane vectors) on either CPU.
            (7, 5, [2, 3], [1, 1], Padding::Same, 8),
            (10, 10, [5, 5], [1, 1], Padding::Same, 24),
        ];
        let mut next = uniform(0x51_7cc1);
        for (h, w, size, strides, padding, cols) in cases {
            let win = Window { input: [h, w, 1], size, strides, padding };
            let [oh, ow] = win.output();
            let img: Vec<f32> = (0..h * w).map(|_| next()).collect();
            let wt: Vec<f32> = (0..size[0] * size[1] * cols).map(|_| next()).collect();
            let bias: Vec<f32> = (0..cols).map(|_| next()).collect();
            // The passes it replaces: the products, the bias (and ReLU), the pool.
            let (mut prod, mut pad) = (vec![f32::NAN; oh * ow * cols], Vec::new());
            conv_c1(&img, &win, &wt, cols, &mut prod, &mut pad);
            for relu in [false, true] {
                let biased: Vec<f32> = prod.chunks_exact(cols).flat_map(|r| r.iter().zip(&bias).map(|(&v, &b)| if relu { (v + b).max(0.0) } else { v + b })).collect();
                let pool = Window { input: [oh, ow, cols], size: [2, 2], strides: [2, 2], padding: Padding::Valid };
                let want = max_pool(&biased, 1, &pool);
                let mut got = vec![f32::NAN; want.len()];
                if !conv_c1_pool2(&img, &win, &wt, cols, &C1Output { bias: &bias, relu }, &mut got, &mut pad) {
                    assert!(!conv_c1_vectorized(cols), "no fused path for {cols} columns on a CPU with vectors");
                    continue;
                }
                assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{h}x{w} {size:?} {strides:?} {padding:?} {cols} relu {relu}");
            }
        }
    }

    #[test]
    fn one_channel_direct_conv_matches_the_definition() {
        // (h, w, kernel, strides, padding, cols): widths of 1-4 AVX-512 vectors, AVX2-only
        // widths (8, 24), odd widths (portable), output rows that leave tails after the
        // 4-output blocks, SAME padding before and after, strides 1 and 2.
        let cases = [
            (28, 28, [5, 5], [1, 1], Padding::Same, 32),
            (9, 7, [5, 5], [1, 1], Padding::Same, 64),
            (6, 11, [3, 3], [2, 2], Padding::Same, 16),
            (8, 9, [3, 2], [1, 2], Padding::Valid, 48),
            (5, 6, [3, 3], [1, 1], Padding::Valid, 24),
            (7, 5, [2, 3], [1, 1], Padding::Same, 8),
            (6, 6, [3, 3], [1, 1], Padding::Same, 5),
        ];
        let mut next = uniform(0x9e37_79b9);
        for (h, w, size, strides, padding, cols) in cases {
            let win = Window { input: [h, w, 1], size, strides, padding };
            let ([oh, ow], [ph, pw]) = win.geometry();
            let img: Vec<f32> = (0..h * w).map(|_| next()).collect();
            let wt: Vec<f32> = (0..size[0] * size[1] * cols).map(|_| next()).collect();
            // The definition in f64: TF's cross-correlation, zeros outside the image.
            let mut want = vec![0f64; oh * ow * cols];
            for (oy, ox, o) in (0..oh).flat_map(|y| (0..ow).flat_map(move |x| (0..cols).map(move |o| (y, x, o)))) {
                for (dy, dx) in (0..size[0]).flat_map(|dy| (0..size[1]).map(move |dx| (dy, dx))) {
                    let (y, x) = ((oy * strides[0] + dy) as i64 - ph as i64, (ox * strides[1] + dx) as i64 - pw as i64);
                    if (0..h as i64).contains(&y) && (0..w as i64).contains(&x) {
                        want[(oy * ow + ox) * cols + o] += f64::from(img[y as usize * w + x as usize]) * f64::from(wt[(dy * size[1] + dx) * cols + o]);
                    }
                }
            }
            for path in Path::available() {
                let (mut out, mut pad) = (vec![f32::NAN; oh * ow * cols], vec![f32::NAN; 3]);
                conv_c1_on(path, &img, &win, &wt, cols, &mut out, &mut pad);
                for (i, (&g, &r)) in out.iter().zip(&want).enumerate() {
                    assert!((f64::from(g) - r).abs() < 1e-5, "{h}x{w} {size:?} {strides:?} {padding:?} {cols} {path:?} at {i}: {g} vs {r}");
                }
            }
        }
    }
}
