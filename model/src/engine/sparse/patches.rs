//! A convolution's patch rows straight into transposed panels (no im2col matrix).

use super::*;

/// Scratch of [`patches_t`]: channel planes, a row, and the column masks of a geometry.
#[derive(Default)]
pub(crate) struct PatchScratch {
    planes: Vec<f32>,
    line: Vec<f32>,
    /// Per dx, all bits set at the output positions whose input column is in the image.
    masks: Vec<u32>,
    /// The geometry `masks` were made for.
    masks_for: Option<Window>,
}

/// Transposed patch rows of examples `b0..b1` of `x` (`[n, h, w, c]`) for the convolution
/// `win`: `X^T[i, (b - b0) * R + oy * ow + ox]` (in panels, [`at`]) = the input under patch
/// entry `i = (dy * kw + dx) * c + ch` (0 where padded), R = oh * ow. With `signs`
/// (Flipout's input masks, `[n, c]`), the same with every (example, channel) plane flipped by
/// its sign into `xs`. Each row is copied from the example's channel plane.
pub(crate) fn patches_t(x: &[f32], win: &Window, b0: usize, b1: usize, ps: &mut PatchScratch, xt: &mut [f32], xs: Option<(&mut [f32], &[u32])>) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { patches_avx2(x, win, b0, b1, ps, xt, xs) };
    }
    patches_impl(x, win, b0, b1, ps, xt, xs)
}

/// [`patches_t`] compiled for AVX2 (its copies and masks run 8 lanes wide).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn patches_avx2(x: &[f32], win: &Window, b0: usize, b1: usize, ps: &mut PatchScratch, xt: &mut [f32], xs: Option<(&mut [f32], &[u32])>) {
    patches_impl(x, win, b0, b1, ps, xt, xs)
}

#[inline(always)]
fn patches_impl(x: &[f32], win: &Window, b0: usize, b1: usize, ps: &mut PatchScratch, xt: &mut [f32], mut xs: Option<(&mut [f32], &[u32])>) {
    let PatchScratch { planes, line, masks, masks_for } = ps;
    let [h, w, c] = win.input;
    let ([oh, ow], [ph, pw]) = win.geometry();
    let ([kh, kw], [sy, sx]) = (win.size, win.strides);
    let (r, k) = (oh * ow, kh * kw * c);
    // Planes with zero margins of w + kw values on both sides: the shifted copies below may
    // read a little before or after a plane (what they read there is masked off).
    let margin = w + kw;
    let stride = h * w + 2 * margin;
    planes.clear();
    planes.resize(c * stride, 0.0);
    line.resize(r, 0.0);
    // Output columns whose input column ox * sx + dx - pw lies inside the image.
    let span = |dx: usize| -> (usize, usize) {
        let lo = pw.saturating_sub(dx).div_ceil(sx.max(1)).min(ow);
        let hi = if w + pw > dx { ((w + pw - dx - 1) / sx.max(1) + 1).min(ow) } else { 0 };
        (lo, hi.max(lo))
    };
    // Output rows whose input row oy * sy + dy - ph lies inside the image.
    let rows_in = |dy: usize| -> (usize, usize) {
        let lo = ph.saturating_sub(dy).div_ceil(sy.max(1)).min(oh);
        let hi = if h + ph > dy { ((h + ph - dy - 1) / sy.max(1) + 1).min(oh) } else { 0 };
        (lo, hi.max(lo))
    };
    let contiguous = sx == 1 && sy == 1 && ow == w;
    // Any geometry: one output row at a time.
    let general = |row: &mut [f32], plane: &[f32], dy: usize, dx: usize, lo: usize, hi: usize| {
        for (oy, out) in row.chunks_exact_mut(ow.max(1)).enumerate() {
            let Some(y) = (oy * sy + dy).checked_sub(ph).filter(|&y| y < h) else {
                out.fill(0.0);
                continue;
            };
            out[..lo].fill(0.0);
            out[hi..].fill(0.0);
            let src = &plane[y * w..(y + 1) * w];
            out[lo..hi].iter_mut().zip(lo..hi).for_each(|(v, ox)| *v = src[ox * sx + dx - pw]);
        }
    };
    // Per dx, the output positions whose input column lies inside the image (all bits set).
    if contiguous && *masks_for != Some(*win) {
        *masks_for = Some(*win);
        masks.clear();
        masks.resize(kw * r, 0u32);
        for dx in 0..kw {
            let (lo, hi) = span(dx);
            masks[dx * r..(dx + 1) * r].iter_mut().enumerate().for_each(|(p, m)| *m = if (lo..hi).contains(&(p % w)) { u32::MAX } else { 0 });
        }
    }
    for b in b0..b1 {
        transpose_into(&x[b * h * w * c..(b + 1) * h * w * c], None, h * w, c, &mut planes[margin..], stride);
        let col0 = (b - b0) * r;
        for dy in 0..kh {
            for dx in 0..kw {
                // One vector of positions (VGG-16's 4 x 4 blocks): each channel's row is one
                // masked 16-value window of its plane, where the loops below spent more on
                // their bounds than on the 16 values.
                let off = (dy * w + dx) as isize - (ph * w + pw) as isize;
                if contiguous && r == LANES && xs.is_none() && off >= -(margin as isize) && off + r as isize <= (h * w + margin) as isize {
                    let (ylo, yhi) = rows_in(dy);
                    let mask: [u32; LANES] = std::array::from_fn(|p| if (ylo * w..yhi * w).contains(&p) { masks[dx * r + p] } else { 0 });
                    for ch in 0..c {
                        let s0 = (ch * stride + margin).wrapping_add_signed(off);
                        let dst = &mut xt[at(k, (dy * kw + dx) * c + ch, col0)..][..LANES];
                        for ((d, &v), &m) in dst.iter_mut().zip(&planes[s0..s0 + LANES]).zip(&mask) {
                            *d = f32::from_bits(v.to_bits() & m);
                        }
                    }
                    continue;
                }
                let (lo, hi) = span(dx);
                for ch in 0..c {
                    let i = (dy * kw + dx) * c + ch;
                    let row = &mut line[..];
                    let plane = &planes[ch * stride + margin..ch * stride + margin + h * w];
                    let (ylo, yhi) = rows_in(dy);
                    if contiguous && ylo < yhi && lo < hi && xs.is_none() {
                        // As below, straight into the panels (no copy through `line`), the
                        // padded columns masked off in the same vectorized pass.
                        let (p0, p1) = (ylo * w, yhi * w);
                        // Plane value under position p (p0 <= p < p1): index (oy + dy - ph) * w
                        // + ox + dx - pw of the plane, between -pw and h * w + kw: inside the
                        // margins; `src` starts at position p0's.
                        let src = &planes[ch * stride + margin + (ylo + dy - ph) * w + dx - pw..];
                        let mask = &masks[dx * r..(dx + 1) * r];
                        pieces(xt, k, i, col0, p0, p1, |d, p| {
                            let len = d.len();
                            d.iter_mut().zip(&src[p - p0..p - p0 + len]).zip(&mask[p..p + len]).for_each(|((d, &v), &m)| *d = f32::from_bits(v.to_bits() & m));
                        });
                        pieces(xt, k, i, col0, 0, p0, |d, _| d.fill(0.0));
                        pieces(xt, k, i, col0, p1, r, |d, _| d.fill(0.0));
                        continue;
                    }
                    if contiguous && ylo < yhi && lo < hi {
                        // Stride 1 and ow == w: the row is the plane shifted by a constant
                        // offset, one copy, then the wrapped-around and padded positions zeroed.
                        let (p0, p1) = (ylo * w + lo, (yhi - 1) * w + hi);
                        let s0 = (ylo + dy - ph) * w + lo + dx - pw;
                        row[p0..p1].copy_from_slice(&plane[s0..s0 + p1 - p0]);
                        row[..p0].fill(0.0);
                        row[p1..].fill(0.0);
                        for oy in ylo..yhi - 1 {
                            row[oy * w + hi..(oy + 1) * w + lo].fill(0.0);
                        }
                    } else {
                        general(row, plane, dy, dx, lo, hi);
                    }
                    put(line, k, i, col0, 0, xt);
                    if let Some((xs, signs)) = xs.as_mut() {
                        put(line, k, i, col0, signs[b * c + ch], xs);
                    }
                }
            }
        }
    }
}

/// `f(piece, p)` for the pieces of `X^T[i, col0 + p0..col0 + p1]` (panels of `k` rows) that
/// lie in one panel each; `p` is a piece's first position.
#[inline(always)]
fn pieces(x: &mut [f32], k: usize, i: usize, col0: usize, p0: usize, p1: usize, mut f: impl FnMut(&mut [f32], usize)) {
    let mut p = p0;
    while p < p1 {
        let c = col0 + p;
        let take = (p1 - p).min(PANEL - c % PANEL);
        f(&mut x[at(k, i, c)..at(k, i, c) + take], p);
        p += take;
    }
}

/// `X^T[i, col0..col0 + line.len()] = line` (XOR-ed with `mask`) in panels of `k` rows.
fn put(line: &[f32], k: usize, i: usize, col0: usize, mask: u32, x: &mut [f32]) {
    let mut c = col0;
    for seg in line.chunks(PANEL) {
        // A segment may straddle two panels.
        let mut seg = seg;
        while !seg.is_empty() {
            let take = seg.len().min(PANEL - c % PANEL);
            let d = &mut x[at(k, i, c)..at(k, i, c) + take];
            if mask == 0 {
                d.copy_from_slice(&seg[..take]);
            } else {
                d.iter_mut().zip(&seg[..take]).for_each(|(d, &v)| *d = f32::from_bits(v.to_bits() ^ mask));
            }
            c += take;
            seg = &seg[take..];
        }
    }
}
