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
    let [h, w, c] = win.input;
    let [oh, ow] = win.output();
    out.clear();
    out.resize(n * oh * ow * c, f32::NEG_INFINITY);
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
}
