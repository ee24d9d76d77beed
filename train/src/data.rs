//! Training and test sets from local files (never downloaded): the bundled sklearn digits
//! (`.npy`), MNIST IDX files and CIFAR-10 binary batches; shuffling and per-rank sharding.

use std::path::{Path, PathBuf};

use formats::dataset::{self, Array, ArrayData};
use formats::synthetic::SplitMix64;

use crate::error::{Result, TrainError};

/// Which dataset layout to read from the data folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// `digits_{train,test}_{x,y}.npy` (sklearn's 8x8 digits, bundled in `fixtures/data`).
    Digits,
    /// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
    /// `t10k-labels-idx1-ubyte` (uncompressed).
    Mnist,
    /// `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`.
    Cifar10,
}

/// Images as float32 in [0, 1], NHWC, with int64 labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// `len * H * W * C` values.
    pub images: Vec<f32>,
    /// One label per image.
    pub labels: Vec<i64>,
}

impl Split {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A training and a test split.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Height, width, channels of one image.
    pub image: [i64; 3],
    /// Number of classes.
    pub classes: i64,
    /// Training examples.
    pub train: Split,
    /// Test examples.
    pub test: Split,
}

impl Dataset {
    /// Values per example.
    pub fn features(&self) -> usize {
        self.image.iter().product::<i64>() as usize
    }
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> TrainError {
    TrainError::Invalid(format!("{}: {what}", path.display()))
}

fn images_f32(path: &Path, a: Array, expect_rows: Option<usize>) -> Result<(usize, Vec<f32>)> {
    let rows = *a.shape.first().ok_or_else(|| invalid(path, "image array has no dimensions"))?;
    if expect_rows.is_some_and(|r| r != rows) {
        return Err(invalid(path, format!("{rows} images but {} labels", expect_rows.unwrap_or(0))));
    }
    let v = match a.data {
        ArrayData::F32(v) => v,
        ArrayData::U8(v) => v.into_iter().map(|b| f32::from(b) / 255.0).collect(),
        ArrayData::I64(_) => return Err(invalid(path, "images must be float32 or uint8, not int64")),
    };
    if v.iter().any(|x| !x.is_finite()) {
        return Err(invalid(path, "images contain NaN or infinity"));
    }
    Ok((rows, v))
}

fn labels_i64(path: &Path, a: Array, classes: i64) -> Result<Vec<i64>> {
    if a.shape.len() != 1 {
        return Err(invalid(path, format!("labels must be a vector, got shape {:?}", a.shape)));
    }
    let v: Vec<i64> = match a.data {
        ArrayData::I64(v) => v,
        ArrayData::U8(v) => v.into_iter().map(i64::from).collect(),
        ArrayData::F32(_) => return Err(invalid(path, "labels must be integers (int64 or uint8), not float32")),
    };
    if let Some(bad) = v.iter().find(|&&l| l < 0 || l >= classes) {
        return Err(invalid(path, format!("label {bad} outside 0..{classes}")));
    }
    Ok(v)
}

fn load_pair(x: &Path, y: &Path, read: fn(&Path) -> dataset::Result<Array>, classes: i64) -> Result<(Vec<usize>, Split)> {
    let xa = read(x)?;
    let shape = xa.shape.clone();
    let labels = labels_i64(y, read(y)?, classes)?;
    let (_, images) = images_f32(x, xa, Some(labels.len()))?;
    Ok((shape, Split { images, labels }))
}

fn need(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else if dir.join(format!("{name}.gz")).is_file() {
        Err(invalid(&p, "missing; only the .gz is there: gunzip it first"))
    } else {
        Err(invalid(&p, "missing"))
    }
}

/// Reads `kind` from `dir`.
pub fn load(kind: DatasetKind, dir: &Path) -> Result<Dataset> {
    match kind {
        DatasetKind::Digits => {
            let (xs, train) = load_pair(&need(dir, "digits_train_x.npy")?, &need(dir, "digits_train_y.npy")?, dataset::read_npy, 10)?;
            let (ts, test) = load_pair(&need(dir, "digits_test_x.npy")?, &need(dir, "digits_test_y.npy")?, dataset::read_npy, 10)?;
            for (shape, name) in [(&xs, "digits_train_x.npy"), (&ts, "digits_test_x.npy")] {
                if shape.len() != 2 || shape[1] != 64 {
                    return Err(invalid(&dir.join(name), format!("expected [N, 64] images, got {shape:?}")));
                }
            }
            Ok(Dataset { image: [8, 8, 1], classes: 10, train, test })
        }
        DatasetKind::Mnist => {
            let (xs, train) = load_pair(&need(dir, "train-images-idx3-ubyte")?, &need(dir, "train-labels-idx1-ubyte")?, dataset::read_idx, 10)?;
            let (ts, test) = load_pair(&need(dir, "t10k-images-idx3-ubyte")?, &need(dir, "t10k-labels-idx1-ubyte")?, dataset::read_idx, 10)?;
            if xs.len() != 3 || ts.len() != 3 || xs[1..] != ts[1..] {
                return Err(invalid(dir, format!("MNIST images must be [N, rows, cols] of one size, got {xs:?} and {ts:?}")));
            }
            Ok(Dataset { image: [xs[1] as i64, xs[2] as i64, 1], classes: 10, train, test })
        }
        DatasetKind::Cifar10 => {
            let base = if dir.join("cifar-10-batches-bin").is_dir() { dir.join("cifar-10-batches-bin") } else { dir.to_path_buf() };
            let train_files: Vec<PathBuf> = (1..=5).map(|i| need(&base, &format!("data_batch_{i}.bin"))).collect::<Result<_>>()?;
            let tr = dataset::read_cifar10(&train_files)?;
            let te = dataset::read_cifar10(&[need(&base, "test_batch.bin")?])?;
            let conv = |c: formats::dataset::Cifar10| Split {
                images: c.images.into_iter().map(|b| f32::from(b) / 255.0).collect(),
                labels: c.labels.into_iter().map(i64::from).collect(),
            };
            Ok(Dataset { image: [32, 32, 3], classes: 10, train: conv(tr), test: conv(te) })
        }
    }
}

/// The example order of an epoch: a permutation of `0..n` that depends only on the seed
/// and the epoch, so every rank computes the same one without communicating.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    // SplitMix64: the same seed gives the same order on every rank.
    SplitMix64(seed ^ epoch.wrapping_mul(0xA076_1D64_78BD_642F)).shuffle(&mut order);
    order
}

/// This rank's examples of global step `step`: the global batch is the next
/// `batch * ranks` examples of `order`; rank r takes the r-th `batch`-sized slice. One rank
/// with batch `B * N` therefore sees exactly the union of what N ranks with batch B see.
pub fn shard(order: &[usize], step: usize, batch: usize, rank: usize, ranks: usize) -> &[usize] {
    let start = (step * ranks + rank) * batch;
    &order[start..start + batch]
}

/// Gathers the examples `idx` of `split` into `x` / `y`.
pub fn gather(split: &Split, features: usize, idx: &[usize], x: &mut Vec<f32>, y: &mut Vec<i64>) {
    x.clear();
    y.clear();
    for &i in idx {
        x.extend_from_slice(&split.images[i * features..(i + 1) * features]);
        y.push(split.labels[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order_is_a_permutation_that_changes_per_epoch() {
        let a = epoch_order(100, 7, 0);
        let b = epoch_order(100, 7, 1);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_ne!(a, b);
        assert_eq!(a, epoch_order(100, 7, 0));
    }

    #[test]
    fn two_ranks_see_the_one_rank_global_batch() {
        let order = epoch_order(64, 1, 0);
        for step in 0..4 {
            let one = shard(&order, step, 16, 0, 1);
            // Step s of 1 rank with batch 16 = step s of 2 ranks with batch 8, both ranks.
            let mut two: Vec<usize> = shard(&order, step, 8, 0, 2).to_vec();
            two.extend_from_slice(shard(&order, step, 8, 1, 2));
            assert_eq!(one, &two[..]);
        }
    }

    #[test]
    fn bundled_digits_load_with_the_documented_shapes() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/data");
        let d = load(DatasetKind::Digits, &dir).unwrap();
        assert_eq!((d.train.len(), d.test.len()), (1437, 360));
        assert_eq!(d.image, [8, 8, 1]);
        assert!(d.train.images.iter().all(|&v| (0.0..=1.0).contains(&v)));
        // The IDX copy of the test set holds the same pixels (x * 255, rounded).
        let idx = dataset::read_idx(&dir.join("digits_test-images-idx3-ubyte")).unwrap();
        let ArrayData::U8(px) = idx.data else { panic!("IDX images are bytes") };
        assert!(px.iter().zip(&d.test.images).all(|(&b, &f)| (f32::from(b) - f * 255.0).abs() <= 0.5));
        let labels = dataset::read_idx(&dir.join("digits_test-labels-idx1-ubyte")).unwrap();
        assert_eq!(labels.data, ArrayData::U8(d.test.labels.iter().map(|&l| l as u8).collect()));
    }

    #[test]
    fn missing_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(DatasetKind::Mnist, dir.path()).unwrap_err().to_string();
        assert!(e.contains("train-images-idx3-ubyte") && e.contains("missing"), "{e}");
        std::fs::write(dir.path().join("train-images-idx3-ubyte.gz"), b"x").unwrap();
        assert!(load(DatasetKind::Mnist, dir.path()).unwrap_err().to_string().contains("gunzip"));
    }
}
