//! Average pooling, global average pooling and zero padding of NHWC examples (`[n, h, w, c]`,
//! example-major), as TensorFlow's `AvgPool`, `Mean` over axes 1, 2 and `Pad` compute them.

use super::conv::Window;

/// Average pooling of `n` examples over `win`: each output is the mean of the window's positions
/// that lie inside the image (TF does not count padding).
pub fn avg_pool(x: &[f32], n: usize, win: &Window) -> Vec<f32> {
    let [h, w, c] = win.input;
    let ([oh, ow], [ph, pw]) = win.geometry();
    let mut out = vec![0.0; n * oh * ow * c];
    // Rows (or columns) of the window at output position `o` that are inside the image.
    let span = |o: usize, stride: usize, pad: usize, size: usize, len: usize| {
        let start = (o * stride).saturating_sub(pad);
        let end = (o * stride + size).saturating_sub(pad).min(len);
        start..end.max(start)
    };
    for (img, dst) in x.chunks_exact(h * w * c).zip(out.chunks_exact_mut(oh * ow * c)).take(n) {
        for oy in 0..oh {
            let ys = span(oy, win.strides[0], ph, win.size[0], h);
            for ox in 0..ow {
                let xs = span(ox, win.strides[1], pw, win.size[1], w);
                let px = &mut dst[(oy * ow + ox) * c..][..c];
                for y in ys.clone() {
                    for xx in xs.clone() {
                        px.iter_mut().zip(&img[(y * w + xx) * c..][..c]).for_each(|(a, v)| *a += v);
                    }
                }
                let count = (ys.len() * xs.len()).max(1) as f32;
                px.iter_mut().for_each(|a| *a /= count);
            }
        }
    }
    out
}

/// Mean over height and width: `[n, h, w, c]` to `[n, c]`.
pub fn global_avg_pool(x: &[f32], n: usize, [h, w, c]: [usize; 3]) -> Vec<f32> {
    let mut out = vec![0.0; n * c];
    let count = (h * w).max(1) as f32;
    for (img, dst) in x.chunks_exact((h * w * c).max(1)).zip(out.chunks_exact_mut(c.max(1))).take(n) {
        for px in img.chunks_exact(c.max(1)) {
            dst.iter_mut().zip(px).for_each(|(a, v)| *a += v);
        }
        dst.iter_mut().for_each(|a| *a /= count);
    }
    out
}

/// Zero padding: `[n, h, w, c]` to `[n, t + h + b, l + w + r, c]`.
pub fn pad(x: &[f32], n: usize, [h, w, c]: [usize; 3], [t, b, l, r]: [usize; 4]) -> Vec<f32> {
    let (oh, ow) = (t + h + b, l + w + r);
    let mut out = vec![0.0; n * oh * ow * c];
    for (img, dst) in x.chunks_exact((h * w * c).max(1)).zip(out.chunks_exact_mut((oh * ow * c).max(1))).take(n) {
        for (y, row) in img.chunks_exact((w * c).max(1)).enumerate() {
            dst[((t + y) * ow + l) * c..][..w * c].copy_from_slice(row);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Padding;

    #[test]
    fn avg_pool_same_does_not_count_padding() {
        // One 3x3 single-channel image 1..9, 2x2 window, stride 2, SAME: out 2x2, padding
        // after (TF puts the odd row/column after), so the edge windows are partial.
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let p = Window { input: [3, 3, 1], size: [2, 2], strides: [2, 2], padding: Padding::Same };
        assert_eq!(p.output(), [2, 2]);
        assert_eq!(avg_pool(&x, 1, &p), vec![(1.0 + 2.0 + 4.0 + 5.0) / 4.0, (3.0 + 6.0) / 2.0, (7.0 + 8.0) / 2.0, 9.0]);
        let v = Window { padding: Padding::Valid, ..p };
        assert_eq!(avg_pool(&x, 1, &v), vec![3.0]);
    }

    #[test]
    fn global_mean_and_pad_by_hand() {
        // Two examples of 2x2x2.
        let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
        assert_eq!(global_avg_pool(&x, 2, [2, 2, 2]), vec![3.0, 4.0, 11.0, 12.0]);
        // 1x2x1 image padded 1 above, 0 below, 0 left, 1 right: 2x3.
        assert_eq!(pad(&[5.0, 6.0], 1, [1, 2, 1], [1, 0, 0, 1]), vec![0.0, 0.0, 0.0, 5.0, 6.0, 0.0]);
    }
}
