//! Hand-written Winograd transforms for the tiles in use: `V = B^T d B` and `Y = A^T M A` of
//! one tile over a vector of channels, as straight-line code on the Toom-Cook matrices' small
//! constants (0, ±1/2, ±1, ±3/2, ±2, ±5/2, 1/4, 4, 1/8, 8; 4.25, 5.25, 1.25, 5 for 8x8 tiles):
//! each column read from the image (or the products) where it is transformed, the
//! transformed columns held (spilled to the stack for 6x6 and 8x8 tiles), and each row of
//! the result stored where it goes.
//! The generic matrix passes (`winograd::apply`) stay the reference and serve other tiles.
//!
//! One generic body per transform runs on three lane types: AVX-512 (16 channels), AVX2 (8)
//! and plain `f32` (the portable path, and the channel tails of the vector paths).

use std::mem::MaybeUninit;

/// A vector of channels (`L` lanes) and the few operations the transforms need.
///
/// # Safety
/// The vector types' methods need their CPU feature (AVX-512F, AVX2 + FMA); callers run them
/// only inside functions compiled for it, after checking the CPU.
pub(crate) trait Lanes: Copy {
    /// Channels per vector.
    const L: usize;
    /// `L` values from the start of `s` (at least `L` long: checked).
    unsafe fn load(s: &[f32]) -> Self;
    /// Into the first `L` values of `s` (at least `L` long: checked).
    unsafe fn store(self, s: &mut [f32]);
    /// `L` values from `p` (unchecked: the caller proves them in bounds).
    unsafe fn load_ptr(p: *const f32) -> Self;
    /// Into the `L` values at `p` (unchecked: the caller proves them in bounds).
    unsafe fn store_ptr(self, p: *mut f32);
    /// All zeros.
    unsafe fn zero() -> Self;
    /// Lane-wise sum.
    unsafe fn add(self, o: Self) -> Self;
    /// Lane-wise difference.
    unsafe fn sub(self, o: Self) -> Self;
    /// `acc + self * c`.
    unsafe fn fma(self, c: f32, acc: Self) -> Self;
    /// Sign bits flipped where the masks (`0` or the f32 sign bit, first `L` of `m`) say.
    unsafe fn flip(self, m: &[u32]) -> Self;
    /// Lane-wise maximum.
    unsafe fn max(self, o: Self) -> Self;
}

impl Lanes for f32 {
    const L: usize = 1;
    #[inline(always)]
    unsafe fn load(s: &[f32]) -> Self {
        s[0]
    }
    #[inline(always)]
    unsafe fn store(self, s: &mut [f32]) {
        s[0] = self;
    }
    #[inline(always)]
    unsafe fn load_ptr(p: *const f32) -> Self {
        *p
    }
    #[inline(always)]
    unsafe fn store_ptr(self, p: *mut f32) {
        *p = self;
    }
    #[inline(always)]
    unsafe fn zero() -> Self {
        0.0
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        self - o
    }
    #[inline(always)]
    unsafe fn fma(self, c: f32, acc: Self) -> Self {
        acc + self * c
    }
    #[inline(always)]
    unsafe fn flip(self, m: &[u32]) -> Self {
        f32::from_bits(self.to_bits() ^ m[0])
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        self.max(o)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Lanes;
    use std::arch::x86_64::*;

    impl Lanes for __m512 {
        const L: usize = 16;
        #[inline(always)]
        unsafe fn load(s: &[f32]) -> Self {
            _mm512_loadu_ps(s[..16].as_ptr())
        }
        #[inline(always)]
        unsafe fn store(self, s: &mut [f32]) {
            _mm512_storeu_ps(s[..16].as_mut_ptr(), self)
        }
        #[inline(always)]
        unsafe fn load_ptr(p: *const f32) -> Self {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store_ptr(self, p: *mut f32) {
            _mm512_storeu_ps(p, self)
        }
        #[inline(always)]
        unsafe fn zero() -> Self {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            _mm512_add_ps(self, o)
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            _mm512_sub_ps(self, o)
        }
        #[inline(always)]
        unsafe fn fma(self, c: f32, acc: Self) -> Self {
            _mm512_fmadd_ps(self, _mm512_set1_ps(c), acc)
        }
        #[inline(always)]
        unsafe fn flip(self, m: &[u32]) -> Self {
            let m = _mm512_loadu_si512(m[..16].as_ptr().cast());
            _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(self), m))
        }
        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            _mm512_max_ps(self, o)
        }
    }

    impl Lanes for __m256 {
        const L: usize = 8;
        #[inline(always)]
        unsafe fn load(s: &[f32]) -> Self {
            _mm256_loadu_ps(s[..8].as_ptr())
        }
        #[inline(always)]
        unsafe fn store(self, s: &mut [f32]) {
            _mm256_storeu_ps(s[..8].as_mut_ptr(), self)
        }
        #[inline(always)]
        unsafe fn load_ptr(p: *const f32) -> Self {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store_ptr(self, p: *mut f32) {
            _mm256_storeu_ps(p, self)
        }
        #[inline(always)]
        unsafe fn zero() -> Self {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            _mm256_add_ps(self, o)
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            _mm256_sub_ps(self, o)
        }
        #[inline(always)]
        unsafe fn fma(self, c: f32, acc: Self) -> Self {
            _mm256_fmadd_ps(self, _mm256_set1_ps(c), acc)
        }
        #[inline(always)]
        unsafe fn flip(self, m: &[u32]) -> Self {
            let m = _mm256_loadu_si256(m[..8].as_ptr().cast());
            _mm256_castsi256_ps(_mm256_xor_si256(_mm256_castps_si256(self), m))
        }
        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            _mm256_max_ps(self, o)
        }
    }
}

/// The tiles with hand-written transforms: F(2x2, 3x3), F(4x4, 3x3), F(2x2, 5x5) on the points
/// 0, 1, -1, 1/2, -2 and infinity, F(4x4, 5x5) on those and 2, -1/2 (the matrices of
/// `Transform::new`; checked by `hand_written_tiles_are_the_toom_cook_matrices`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tile {
    /// F(2x2, 3x3): 4x4 input tiles.
    F2x3,
    /// F(4x4, 3x3): 6x6 input tiles.
    F4x3,
    /// F(2x2, 5x5): 6x6 input tiles.
    F2x5,
    /// F(4x4, 5x5): 8x8 input tiles.
    F4x5,
}

impl Tile {
    /// The tile for F(m x m, r x r), when it has hand-written transforms.
    pub(super) fn of(m: usize, r: usize) -> Option<Tile> {
        match (m, r) {
            (2, 3) => Some(Tile::F2x3),
            (4, 3) => Some(Tile::F4x3),
            (2, 5) => Some(Tile::F2x5),
            (4, 5) => Some(Tile::F4x5),
            _ => None,
        }
    }
}

/// B^T of the 4x4 tiles (points 0, 1, -1, infinity).
#[inline(always)]
unsafe fn bt4<V: Lanes>(d: [V; 4]) -> [V; 4] {
    [d[2].sub(d[0]), d[1].add(d[2]), d[2].sub(d[1]), d[3].sub(d[1])]
}

/// B^T of the 6x6 tiles (points 0, 1, -1, 1/2, -2, infinity).
#[inline(always)]
unsafe fn bt6<V: Lanes>(d: [V; 6]) -> [V; 6] {
    [
        d[3].fma(1.5, d[2].fma(-2.0, d[1].fma(-1.5, d[0]))).add(d[4]),
        d[3].fma(2.5, d[2].fma(0.5, d[4])).sub(d[1]),
        d[3].fma(0.5, d[2].fma(-2.5, d[4])).add(d[1]),
        d[3].fma(2.0, d[1].fma(-2.0, d[4])).sub(d[2]),
        d[3].fma(-0.5, d[1].fma(0.5, d[4])).sub(d[2]),
        d[4].fma(1.5, d[3].fma(-2.0, d[2].fma(-1.5, d[1]))).add(d[5]),
    ]
}

/// B^T of the 8x8 tiles (points 0, 1, -1, 1/2, -2, 2, -1/2, infinity): rows 1-2, 3-6 and
/// 4-5 share their even and odd halves.
#[inline(always)]
unsafe fn bt8<V: Lanes>(d: [V; 8]) -> [V; 8] {
    let (e1, o1) = (d[4].fma(-4.25, d[2].add(d[6])), d[3].fma(-4.25, d[1].add(d[5])));
    let (e3, o3) = (d[4].fma(-5.0, d[2].fma(4.0, d[6])), d[5].fma(0.5, d[3].fma(-2.5, d[1].add(d[1]))));
    let (e4, o4) = (d[4].fma(-1.25, d[2].fma(0.25, d[6])), d[5].fma(2.0, d[3].fma(-2.5, d[1].fma(0.5, V::zero()))));
    [
        d[2].sub(d[4]).fma(5.25, d[6].sub(d[0])),
        e1.add(o1),
        e1.sub(o1),
        e3.add(o3),
        e4.sub(o4),
        e4.add(o4),
        e3.sub(o3),
        d[3].sub(d[5]).fma(5.25, d[7].sub(d[1])),
    ]
}

/// A^T of F(2, 3).
#[inline(always)]
unsafe fn at2x3<V: Lanes>(m: [V; 4]) -> [V; 2] {
    [m[0].add(m[1]).add(m[2]), m[1].sub(m[2]).add(m[3])]
}

/// A^T of F(4, 3).
#[inline(always)]
unsafe fn at4x3<V: Lanes>(m: [V; 6]) -> [V; 4] {
    let (s, d) = (m[1].add(m[2]), m[1].sub(m[2]));
    [
        m[0].add(s).add(m[3]).add(m[4]),
        m[4].fma(-2.0, m[3].fma(0.5, d)),
        m[4].fma(4.0, m[3].fma(0.25, s)),
        m[4].fma(-8.0, m[3].fma(0.125, d)).add(m[5]),
    ]
}

/// A^T of F(2, 5).
#[inline(always)]
unsafe fn at2x5<V: Lanes>(m: [V; 6]) -> [V; 2] {
    [m[0].add(m[1]).add(m[2]).add(m[3]).add(m[4]), m[4].fma(-2.0, m[3].fma(0.5, m[1].sub(m[2]))).add(m[5])]
}

/// A^T of F(4, 5).
#[inline(always)]
unsafe fn at4x5<V: Lanes>(m: [V; 8]) -> [V; 4] {
    let (s12, d12) = (m[1].add(m[2]), m[1].sub(m[2]));
    let (s36, d36) = (m[3].add(m[6]), m[3].sub(m[6]));
    let (s45, d54) = (m[4].add(m[5]), m[5].sub(m[4]));
    [
        m[0].add(s12).add(s36).add(s45),
        d54.fma(2.0, d36.fma(0.5, d12)),
        s45.fma(4.0, s36.fma(0.25, s12)),
        d54.fma(8.0, d36.fma(0.125, d12)).add(m[7]),
    ]
}

/// A 1-D transform of `A` values into `O` (static dispatch: closures would not inherit the
/// caller's CPU features, and the intrinsics would stay calls).
trait Map<const A: usize, const O: usize> {
    /// The transform of `d`.
    unsafe fn map<V: Lanes>(d: [V; A]) -> [V; O];
}

/// B^T of the 4x4 tiles.
struct Bt4;
/// B^T of the 6x6 tiles.
struct Bt6;
/// A^T of F(2, 3).
struct At2x3;
/// A^T of F(4, 3).
struct At4x3;
/// A^T of F(2, 5).
struct At2x5;
/// B^T of the 8x8 tiles.
struct Bt8;
/// A^T of F(4, 5).
struct At4x5;

impl Map<4, 4> for Bt4 {
    #[inline(always)]
    unsafe fn map<V: Lanes>(d: [V; 4]) -> [V; 4] {
        bt4(d)
    }
}
impl Map<6, 6> for Bt6 {
    #[inline(always)]
    unsafe fn map<V: Lanes>(d: [V; 6]) -> [V; 6] {
        bt6(d)
    }
}
impl Map<4, 2> for At2x3 {
    #[inline(always)]
    unsafe fn map<V: Lanes>(d: [V; 4]) -> [V; 2] {
        at2x3(d)
    }
}
impl Map<6, 4> for At4x3 {
    #[inline(always)]
    unsafe fn map<V: Lanes>(d: [V; 6]) -> [V; 4] {
        at4x3(d)
    }
}
impl Map<6, 2> for At2x5 {
    #[inline(always)]
    unsafe fn map<V: Lanes>(d: [V; 6]) -> [V; 2] {
        at2x5(d)
    }
}

impl Map<8, 8> for Bt8 {
    #[inline(always)]
    unsafe fn map<V: Lanes>(d: [V; 8]) -> [V; 8] {
        bt8(d)
    }
}
impl Map<8, 4> for At4x5 {
    #[inline(always)]
    unsafe fn map<V: Lanes>(d: [V; 8]) -> [V; 4] {
        at4x5(d)
    }
}

/// The values of a tile, read by [`two_d`] one column at a time (static dispatch, as [`Map`]).
trait Source<V> {
    /// Value (i, j).
    unsafe fn get(&self, i: usize, j: usize) -> V;
}

/// Where [`two_d`] puts each value of the transformed tile.
trait Sink<V> {
    /// Value (i, j).
    unsafe fn put(&mut self, i: usize, j: usize, v: V);
}

/// `F` along the columns of `src`'s tile, then along the rows, into `dst`: `F d F^T`. Each
/// column is read from the source right where it is mapped and each row of the result goes
/// straight to the sink: staging whole tiles (64 vectors each on 8x8 tiles, spilled to the
/// stack) had made the transforms bound by their stores.
#[inline(always)]
unsafe fn two_d<V: Lanes, F: Map<A, O>, const A: usize, const O: usize>(src: &impl Source<V>, dst: &mut impl Sink<V>) {
    // Written element by element into uninitialized arrays, not zero-filled first: on 8x8
    // tiles the zero fills of these spilled arrays were a fifth of the transform's stores.
    // (`array::from_fn` would take closures, which do not inherit the CPU features.)
    let mut cols = MaybeUninit::<[[V; O]; A]>::uninit();
    let cp = cols.as_mut_ptr().cast::<[V; O]>();
    for j in 0..A {
        let mut v = MaybeUninit::<[V; A]>::uninit();
        let vp = v.as_mut_ptr().cast::<V>();
        for i in 0..A {
            vp.add(i).write(src.get(i, j));
        }
        cp.add(j).write(F::map(v.assume_init()));
    }
    // SAFETY: every column was written above (read in place: moving 4 KB arrays out of
    // `MaybeUninit` was a memcpy call per tile).
    let cols = &*cols.as_ptr();
    for o in 0..O {
        let mut v = MaybeUninit::<[V; A]>::uninit();
        let vp = v.as_mut_ptr().cast::<V>();
        for (j, col) in cols.iter().enumerate() {
            vp.add(j).write(col[o]);
        }
        for (q, val) in F::map(v.assume_init()).into_iter().enumerate() {
            dst.put(o, q, val);
        }
    }
}

/// Where one tile's input comes from and its transform goes.
pub(super) struct InTile<'a> {
    /// One example's image, NHWC.
    pub img: &'a [f32],
    /// `[h, w, c]` of the image.
    pub shape: [usize; 3],
    /// Image position of the tile's top-left value (negative: in the zero padding).
    pub origin: [isize; 2],
    /// The transformed tile `[a², .., c]`: position p of channel 0 at `p * stride`.
    pub v: &'a mut [f32],
    /// The same with the example's input signs, and those signs (`[c]`).
    pub signed: Option<(&'a mut [f32], &'a [u32])>,
    /// Values between the tile's Winograd-domain positions.
    pub stride: usize,
}

/// One input tile's channels `ch..ch + V::L` as a [`Source`]: the image's values, zeros
/// outside it (the fields of [`InTile`]; the image holds `h * w * c` values and
/// `ch + V::L <= c`, checked by [`input_lanes`]).
struct Gather<'a> {
    img: &'a [f32],
    shape: [usize; 3],
    origin: [isize; 2],
    ch: usize,
}

impl<V: Lanes> Source<V> for Gather<'_> {
    #[inline(always)]
    unsafe fn get(&self, i: usize, j: usize) -> V {
        let [h, w, c] = self.shape;
        let (y, x) = (self.origin[0] + i as isize, self.origin[1] + j as isize);
        if y >= 0 && (y as usize) < h && x >= 0 && (x as usize) < w {
            // SAFETY: (y, x) is inside the image and ch + L <= c (checked by `input_lanes`).
            V::load_ptr(self.img.as_ptr().add((y as usize * w + x as usize) * c + self.ch))
        } else {
            V::zero()
        }
    }
}

/// The transformed input tile's channels `ch..` as a [`Sink`] of `A x A` values: position
/// (p, q) into `v`, and with the signs into `signed` (the fields of [`InTile`]; both hold
/// the last position's vector, checked by [`input_lanes`]).
struct Scatter<'t, const A: usize> {
    v: &'t mut [f32],
    signed: Option<(&'t mut [f32], &'t [u32])>,
    stride: usize,
    ch: usize,
}

impl<V: Lanes, const A: usize> Sink<V> for Scatter<'_, A> {
    #[inline(always)]
    unsafe fn put(&mut self, p: usize, q: usize, val: V) {
        let at = (p * A + q) * self.stride + self.ch;
        // SAFETY (both): position (p, q) < (A, A) lies before the last one's vector, which
        // `input_lanes` checked is inside the buffers.
        val.store_ptr(self.v.as_mut_ptr().add(at));
        if let Some((vs, s)) = &mut self.signed {
            val.flip(&s[self.ch..]).store_ptr(vs.as_mut_ptr().add(at));
        }
    }
}

/// `V = B^T d B` of one tile, channels `ch..ch + V::L`, the tile gathered from the image with
/// zeros outside it, and with the signs into `t.signed`.
#[inline(always)]
unsafe fn input_lanes<V: Lanes, F: Map<A, A>, const A: usize>(t: &mut InTile, ch: usize) {
    let [h, w, c] = t.shape;
    let last = (A * A - 1) * t.stride + ch + V::L;
    assert!(t.img.len() >= h * w * c && ch + V::L <= c && t.v.len() >= last && t.signed.as_ref().is_none_or(|(vs, s)| vs.len() >= last && s.len() >= ch + V::L), "Winograd input tile: buffers shorter than its shape");
    let src = Gather { img: t.img, shape: t.shape, origin: t.origin, ch };
    let signed = t.signed.as_mut().map(|(vs, s)| (&mut **vs, *s));
    two_d::<V, F, A, A>(&src, &mut Scatter::<A> { v: &mut *t.v, signed, stride: t.stride, ch });
}

/// [`input_lanes`] over all channels: vectors of `V`, the tail in `f32`.
#[inline(always)]
unsafe fn input_tile<V: Lanes, F: Map<A, A>, const A: usize>(t: &mut InTile) {
    let c = t.shape[2];
    let mut ch = 0;
    while ch + V::L <= c {
        input_lanes::<V, F, A>(t, ch);
        ch += V::L;
    }
    for ch in ch..c {
        input_lanes::<f32, F, A>(t, ch);
    }
}

/// [`input_tile`] for `tile` on lanes `V`.
#[inline(always)]
pub(super) unsafe fn input<V: Lanes>(tile: Tile, t: &mut InTile) {
    match tile {
        Tile::F2x3 => input_tile::<V, Bt4, 4>(t),
        Tile::F4x3 | Tile::F2x5 => input_tile::<V, Bt6, 6>(t),
        Tile::F4x5 => input_tile::<V, Bt8, 8>(t),
    }
}

/// Where one tile's Winograd-domain products come from and its output goes.
pub(super) struct OutTile<'a> {
    /// The products `[a², .., k]`: position p of channel 0 at `p * stride`.
    pub mm: &'a [f32],
    /// Flipout's perturbation products in the same layout, and the example's output signs
    /// (`[k]`).
    pub mp: Option<(&'a [f32], &'a [u32])>,
    /// Values between the tile's Winograd-domain positions.
    pub stride: usize,
    /// Bias `[k]`.
    pub bias: &'a [f32],
    /// Whether a ReLU follows.
    pub relu: bool,
    /// The example's output `[oh, ow, k]`, or with `pool2` its 2x2 stride-2 max pool
    /// `[ph, pw, k]`.
    pub out: &'a mut [f32],
    /// `[oh, ow]` of the convolution.
    pub size: [usize; 2],
    /// Output position of the tile's top-left value.
    pub origin: [usize; 2],
    /// The unpadded 2x2 stride-2 max pool, `[ph, pw]`, fused.
    pub pool2: Option<[usize; 2]>,
}

/// One tile's Winograd-domain products, channels `ch..`, as a [`Source`] of `A x A` values:
/// position (p, q) of `mm`, plus `mp`'s flipped by the output signs (the fields of [`OutTile`];
/// both hold the last position's vector, checked by [`output_lanes`]).
struct Products<'t, const A: usize> {
    mm: &'t [f32],
    mp: Option<(&'t [f32], &'t [u32])>,
    stride: usize,
    ch: usize,
}

impl<V: Lanes, const A: usize> Source<V> for Products<'_, A> {
    #[inline(always)]
    unsafe fn get(&self, p: usize, q: usize) -> V {
        let at = (p * A + q) * self.stride + self.ch;
        // SAFETY (both): position (p, q) < (A, A) lies before the last one's vector, which
        // `output_lanes` checked is inside the buffers.
        let v = V::load_ptr(self.mm.as_ptr().add(at));
        match self.mp {
            Some((mp, s)) => v.add(V::load_ptr(mp.as_ptr().add(at)).flip(&s[self.ch..])),
            None => v,
        }
    }
}

/// A small tile held as an array (the output tile, `M x M`), as a [`Sink`].
struct Held<V, const M: usize>(MaybeUninit<[[V; M]; M]>);

impl<V: Lanes, const M: usize> Sink<V> for Held<V, M> {
    #[inline(always)]
    unsafe fn put(&mut self, i: usize, j: usize, v: V) {
        self.0.as_mut_ptr().cast::<V>().add(i * M + j).write(v);
    }
}

/// `Y = A^T M A` of one tile, channels `ch..ch + V::L`, plus bias, through the ReLU, into the
/// output (or its 2x2 max pool: the max of the window's positions inside the output).
#[inline(always)]
unsafe fn output_lanes<V: Lanes, F: Map<A, M>, const A: usize, const M: usize>(t: &mut OutTile, ch: usize) {
    let last = (A * A - 1) * t.stride + ch + V::L;
    assert!(t.mm.len() >= last && t.mp.is_none_or(|(mp, s)| mp.len() >= last && s.len() >= ch + V::L), "Winograd output tile: products shorter than its shape");
    let mut held = Held::<V, M>(MaybeUninit::uninit());
    two_d::<V, F, A, M>(&Products::<A> { mm: t.mm, mp: t.mp, stride: t.stride, ch }, &mut held);
    // SAFETY: `two_d` put all M x M values.
    let y = held.0.assume_init();
    let (bias, k, relu) = (V::load(&t.bias[ch..]), t.bias.len(), t.relu);
    #[inline(always)]
    unsafe fn finish<V: Lanes>(v: V, bias: V, relu: bool) -> V {
        let v = v.add(bias);
        if relu {
            v.max(V::zero())
        } else {
            v
        }
    }
    let [oh, ow] = t.size;
    let [oy, ox] = t.origin;
    match t.pool2 {
        None => {
            for (i, row) in y.iter().enumerate().take(oh.saturating_sub(oy)) {
                for (j, &v) in row.iter().enumerate().take(ow.saturating_sub(ox)) {
                    finish(v, bias, relu).store(&mut t.out[((oy + i) * ow + ox + j) * k + ch..]);
                }
            }
        }
        Some([ph, pw]) => {
            // The tile's origin is even (m is): its 2x2 windows are whole pool windows.
            for pi in 0..M / 2 {
                for pj in 0..M / 2 {
                    let (py, px) = (oy / 2 + pi, ox / 2 + pj);
                    if py >= ph || px >= pw {
                        continue;
                    }
                    // (py, px) < (ph, pw): the window's top-left value is inside the output.
                    let (y0, x0) = (2 * pi, 2 * pj);
                    let mut best = y[y0][x0];
                    if ox + x0 + 1 < ow {
                        best = best.max(y[y0][x0 + 1]);
                    }
                    if oy + y0 + 1 < oh {
                        best = best.max(y[y0 + 1][x0]);
                        if ox + x0 + 1 < ow {
                            best = best.max(y[y0 + 1][x0 + 1]);
                        }
                    }
                    finish(best, bias, relu).store(&mut t.out[(py * pw + px) * k + ch..]);
                }
            }
        }
    }
}

/// [`output_lanes`] over all channels: vectors of `V`, the tail in `f32`.
#[inline(always)]
unsafe fn output_tile<V: Lanes, F: Map<A, M>, const A: usize, const M: usize>(t: &mut OutTile) {
    let k = t.bias.len();
    let mut ch = 0;
    while ch + V::L <= k {
        output_lanes::<V, F, A, M>(t, ch);
        ch += V::L;
    }
    for ch in ch..k {
        output_lanes::<f32, F, A, M>(t, ch);
    }
}

/// [`output_tile`] for `tile` on lanes `V`.
#[inline(always)]
pub(super) unsafe fn output<V: Lanes>(tile: Tile, t: &mut OutTile) {
    match tile {
        Tile::F2x3 => output_tile::<V, At2x3, 4, 2>(t),
        Tile::F4x3 => output_tile::<V, At4x3, 6, 4>(t),
        Tile::F2x5 => output_tile::<V, At2x5, 6, 2>(t),
        Tile::F4x5 => output_tile::<V, At4x5, 8, 4>(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::winograd::Transform;

    /// The matrix of the 1-D map `f` (columns: the images of the unit vectors), row-major.
    fn matrix<const A: usize, const O: usize>(f: unsafe fn([f32; A]) -> [f32; O]) -> Vec<f32> {
        let cols: Vec<[f32; O]> = (0..A).map(|j| unsafe { f(std::array::from_fn(|i| if i == j { 1.0 } else { 0.0 })) }).collect();
        (0..O).flat_map(|o| cols.iter().map(move |c| c[o])).collect()
    }

    #[test]
    fn hand_written_tiles_are_the_toom_cook_matrices() {
        let (t23, t43, t25, t45) = (Transform::new(2, 3), Transform::new(4, 3), Transform::new(2, 5), Transform::new(4, 5));
        assert_eq!(matrix::<4, 4>(bt4), t23.bt);
        assert_eq!(matrix::<6, 6>(bt6), t43.bt);
        assert_eq!(matrix::<6, 6>(bt6), t25.bt);
        assert_eq!(matrix::<4, 2>(at2x3), t23.at);
        assert_eq!(matrix::<6, 4>(at4x3), t43.at);
        assert_eq!(matrix::<6, 2>(at2x5), t25.at);
        assert_eq!(matrix::<8, 8>(bt8), t45.bt);
        assert_eq!(matrix::<8, 4>(at4x5), t45.at);
        assert_eq!([Tile::of(2, 3), Tile::of(4, 3), Tile::of(2, 5), Tile::of(4, 5), Tile::of(3, 3)], [Some(Tile::F2x3), Some(Tile::F4x3), Some(Tile::F2x5), Some(Tile::F4x5), None]);
    }
}
