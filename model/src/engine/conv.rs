//! Convolution and pooling on NHWC activations. A convolution is `im2col` followed by the
//! layer's [`super::dense::Kernel`]: the patch order (kh, kw, c) matches TF's HWIO kernel
//! flattened to `[kh * kw * c, out]`, so dense and CSR kernels serve both layer types.

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
    let (_, pad) = win.geometry();
    if win.size == [2, 2] && win.strides == [2, 2] && pad == [0, 0] && 2 * oh <= h && 2 * ow <= w && c > 0 {
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

    #[test]
    fn max_pool_2x2_matches_the_definition() {
        // Even and odd sizes, VALID and SAME (SAME on an odd size pads, so it takes the generic
        // path), 1 to 33 channels (vector widths and their tails), several examples.
        let mut seed = 0x2545_f491_u32;
        for (h, w, c, padding) in [(4, 4, 1, Padding::Valid), (28, 28, 32, Padding::Same), (14, 14, 64, Padding::Valid), (7, 9, 5, Padding::Valid), (7, 9, 33, Padding::Same), (6, 2, 3, Padding::Same)] {
            let n = 3;
            let x: Vec<f32> = (0..n * h * w * c)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / (1 << 23) as f32 - 1.0
                })
                .collect();
            let win = Window { input: [h, w, c], size: [2, 2], strides: [2, 2], padding };
            let got = max_pool(&x, n, &win);
            let want = max_pool_reference(&x, n, &win);
            assert_eq!(got.len(), want.len(), "{h}x{w}x{c} {padding:?}");
            for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                assert_eq!(f64::from(*g), *r, "{h}x{w}x{c} {padding:?} at {i}");
            }
        }
    }
}
