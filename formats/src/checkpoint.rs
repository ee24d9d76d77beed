//! A model checkpoint in either container, TensorFlow bundle or safetensors, seen the same
//! way: variables with their TensorFlow names and kinds, layers, manifests, the global step.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::bundle::BundleReader;
use crate::checkpoint_state::{resolve_checkpoint, step_of};
use crate::error::{Error, Result};
use crate::layout::{classify, group_layers, mark_batch_norm, Layer, NonBayesian, VariableKind};
use crate::manifest::Manifest;
use crate::naming;
use crate::object_graph::{ObjectGraph, OBJECT_GRAPH_KEY, VARIABLE_VALUE_SUFFIX};
use crate::safetensors_file::SafetensorsFile;
use crate::sparse::{read_sparse, SparseView, MAX_DENSE_TENSOR_BYTES, META_SPARSE};
use crate::tensor::{TensorData, TensorInfo, FOLIO_MAX};

/// Which container a checkpoint is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// TensorFlow tensor bundle (`.index` + `.data-*`).
    TfBundle,
    /// A safetensors file.
    Safetensors,
}

/// One stored tensor, described for BNN work.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Variable {
    /// The key it is stored under (the TF checkpoint key, or the safetensors name).
    pub key: String,
    /// Its TensorFlow variable name (`den_1/kernel_posterior_loc`).
    pub name: String,
    /// Type, shape, size and shard.
    #[serde(flatten)]
    pub info: TensorInfo,
    /// What it is.
    #[serde(flatten)]
    pub kind: VariableKind,
}

#[derive(Debug)]
enum Store {
    Bundle(BundleReader),
    /// A safetensors file; for a `prune --sparse` file, with the dense view of its CSR tensors.
    Safetensors(SafetensorsFile, Option<SparseView>),
}

/// An opened checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    store: Store,
    variables: Vec<Variable>,
    manifest: Manifest,
    global_step: Option<i64>,
    object_graph: Option<ObjectGraph>,
    /// Safetensors name -> original TF checkpoint key, from the metadata.
    tf_keys: std::collections::HashMap<String, String>,
}

/// Bytes of a safetensors tensor handed to a streaming sink at a time.
const SAFETENSORS_CHUNK: usize = 4 << 20;

/// Whether `path` names a safetensors file (by extension, or by content for other names).
fn is_safetensors(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

impl Checkpoint {
    /// Opens a TensorFlow checkpoint (folder, prefix, `.index` or `.data-*` path) or a
    /// `.safetensors` file.
    pub fn open(input: impl AsRef<Path>) -> Result<Checkpoint> {
        let input = input.as_ref();
        if is_safetensors(input) {
            return Checkpoint::from_safetensors(SafetensorsFile::open(input)?);
        }
        let prefix = resolve_checkpoint(input)?;
        Checkpoint::from_bundle(BundleReader::open(&prefix)?)
    }

    fn from_bundle(reader: BundleReader) -> Result<Checkpoint> {
        let prefix = reader.prefix().to_path_buf();
        let object_graph = if reader.entries().contains_key(OBJECT_GRAPH_KEY) {
            match reader.read(OBJECT_GRAPH_KEY)? {
                TensorData::Strings(s) if s.len() == 1 => Some(ObjectGraph::decode(reader.index_path(), &s[0])?),
                _ => return Err(Error::corrupt(reader.index_path(), format!("{OBJECT_GRAPH_KEY} is not a scalar string"))),
            }
        } else {
            None
        };
        let mut variables: Vec<Variable> = reader
            .infos()
            .into_iter()
            .map(|info| {
                let (name, kind) = describe_key(&info.name, object_graph.as_ref());
                Variable { key: info.name.clone(), name, info, kind }
            })
            .collect();
        mark_batch_norm(variables.iter_mut().map(|v| (v.name.as_str(), &mut v.kind)));
        let dir = prefix.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let manifest = Manifest::find(dir)?;
        let mut ckpt = Checkpoint {
            path: prefix,
            store: Store::Bundle(reader),
            variables,
            manifest,
            global_step: None,
            object_graph,
            tf_keys: Default::default(),
        };
        ckpt.global_step = ckpt.read_global_step().or_else(|| step_of(&ckpt.path).and_then(|s| i64::try_from(s).ok()));
        Ok(ckpt)
    }

    fn from_safetensors(file: SafetensorsFile) -> Result<Checkpoint> {
        let keys = naming::tf_keys_from_metadata(file.metadata());
        // A sparse file is seen as the dense model it stores: validated and rebuilt here, its
        // CSR parts hidden.
        let sparse = read_sparse(&file, MAX_DENSE_TENSOR_BYTES)?;
        let infos: Vec<&TensorInfo> = match &sparse {
            Some(view) => view.infos.iter().collect(),
            None => file.infos().collect(),
        };
        let mut variables: Vec<Variable> = infos
            .into_iter()
            .map(|info| {
                let name = naming::variable_name_for(&info.name, keys.get(&info.name).map(String::as_str));
                Variable { key: info.name.clone(), kind: classify(&name), name, info: info.clone() }
            })
            .collect();
        mark_batch_norm(variables.iter_mut().map(|v| (v.name.as_str(), &mut v.kind)));
        let global_step = file.metadata().get(naming::META_GLOBAL_STEP).and_then(|s| s.parse().ok());
        Ok(Checkpoint {
            path: file.path().to_path_buf(),
            store: Store::Safetensors(file, sparse),
            variables,
            manifest: Manifest::default(),
            global_step,
            object_graph: None,
            tf_keys: keys,
        })
    }

    fn read_global_step(&self) -> Option<i64> {
        let v = self.variables.iter().find(|v| v.kind == VariableKind::Step && v.name.ends_with("global_step"))?;
        let data = self.read(&v.key).ok()?;
        let bytes = data.bytes()?;
        match bytes.len() {
            8 => Some(i64::from_le_bytes(bytes.try_into().ok()?)),
            4 => Some(i64::from(i32::from_le_bytes(bytes.try_into().ok()?))),
            _ => None,
        }
    }

    /// The key a variable has (or had) in a TensorFlow checkpoint: its stored key for a bundle;
    /// for safetensors, the original key kept in the metadata, else its variable name.
    pub fn tf_key<'a>(&'a self, v: &'a Variable) -> &'a str {
        match self.store {
            Store::Bundle(_) => &v.key,
            Store::Safetensors(..) => self.tf_keys.get(&v.key).map(String::as_str).unwrap_or(&v.name),
        }
    }

    /// The checkpoint prefix or safetensors path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The container format.
    pub fn format(&self) -> Format {
        match self.store {
            Store::Bundle(_) => Format::TfBundle,
            Store::Safetensors(..) => Format::Safetensors,
        }
    }

    /// The bundle reader, for a TensorFlow checkpoint.
    pub fn bundle(&self) -> Option<&BundleReader> {
        match &self.store {
            Store::Bundle(b) => Some(b),
            Store::Safetensors(..) => None,
        }
    }

    /// The `__metadata__` of a safetensors file (empty for a TF checkpoint); for a sparse file,
    /// that of the dense file it stands for (without `bnn_sparse`).
    pub fn metadata(&self) -> std::collections::BTreeMap<String, String> {
        match &self.store {
            Store::Bundle(_) => Default::default(),
            Store::Safetensors(f, _) => {
                let mut m = f.metadata().clone();
                m.remove(META_SPARSE);
                m
            }
        }
    }

    /// The sparse layout of a `prune --sparse` file (`None` for every other checkpoint).
    pub fn sparse(&self) -> Option<&crate::sparse::SparseIndex> {
        match &self.store {
            Store::Safetensors(_, Some(view)) => Some(&view.index),
            _ => None,
        }
    }

    /// Every stored tensor.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// The variable stored under `key`.
    pub fn variable(&self, key: &str) -> Result<&Variable> {
        self.variables
            .iter()
            .find(|v| v.key == key)
            .ok_or_else(|| Error::NoSuchTensor { path: self.path.clone(), name: key.to_string() })
    }

    /// BNN layers: weights grouped by layer, recording stored keys.
    pub fn layers(&self) -> Vec<Layer> {
        group_layers(self.variables.iter().filter(|v| v.kind.is_model()).map(|v| (v.key.as_str(), v.name.as_str())))
    }

    /// Model variables outside every Bayesian layer's posterior (batch normalization,
    /// deterministic layers, others), grouped by scope: not Bayesian, never pruned.
    pub fn non_bayesian(&self) -> Vec<NonBayesian> {
        let layers = self.layers();
        let bayesian: Vec<&str> = layers.iter().filter(|l| l.is_bayesian()).map(|l| l.name.as_str()).collect();
        let count = |v: &Variable| v.info.shape.iter().product::<u64>();
        crate::layout::non_bayesian(self.variables.iter().map(|v| (v.name.as_str(), &v.kind, count(v))), &bayesian)
    }

    /// The BPrune manifests found next to the checkpoint.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Checks the manifest's trainable variables against the stored variable names.
    pub fn check_manifest(&self) -> Result<()> {
        self.manifest.check_against(self.variables.iter().map(|v| v.name.as_str()))
    }

    /// The training step: the `global_step` variable, else the number ending the prefix.
    pub fn global_step(&self) -> Option<i64> {
        self.global_step
    }

    /// The decoded TF2 object graph, if the checkpoint has one.
    pub fn object_graph(&self) -> Option<&ObjectGraph> {
        self.object_graph.as_ref()
    }

    /// Reads the values stored under `key`, checksum-verified for TF checkpoints.
    pub fn read(&self, key: &str) -> Result<TensorData<'_>> {
        match &self.store {
            Store::Bundle(b) => b.read(key),
            Store::Safetensors(f, sparse) => self.safetensors_bytes(f, sparse.as_ref(), key).map(|b| TensorData::Bytes(b.into())),
        }
    }

    /// The bytes of `key` in a safetensors file: rebuilt for a sparse-stored tensor; a CSR part
    /// is not a tensor of the model, so it is not found.
    fn safetensors_bytes<'a>(&self, f: &'a SafetensorsFile, sparse: Option<&'a SparseView>, key: &str) -> Result<&'a [u8]> {
        match sparse {
            None => f.bytes(key),
            Some(view) => match view.dense.get(key) {
                Some(bytes) => Ok(bytes),
                None if view.infos.iter().any(|i| i.name == key) => f.bytes(key),
                None => Err(Error::NoSuchTensor { path: self.path.clone(), name: key.to_string() }),
            },
        }
    }

    /// Reads the values stored under `key` without checksum verification (see
    /// [`BundleReader::read_unverified`]: only for a caller that streams them verified later).
    pub fn read_unverified(&self, key: &str) -> Result<TensorData<'_>> {
        match &self.store {
            Store::Bundle(b) => b.read_unverified(key),
            Store::Safetensors(..) => self.read(key),
        }
    }

    /// Streams the bytes of fixed-size tensor `key` to `sink` in bounded chunks (see
    /// [`BundleReader::stream`]: on `Err` whatever the sink wrote must be discarded).
    pub fn stream(&self, key: &str, sink: &mut crate::tensor::Sink) -> Result<()> {
        match &self.store {
            Store::Bundle(b) => b.stream(key, sink),
            Store::Safetensors(f, sparse) => {
                let bytes = self.safetensors_bytes(f, sparse.as_ref(), key)?;
                for (i, chunk) in bytes.chunks(SAFETENSORS_CHUNK).enumerate() {
                    sink(chunk)?;
                    // Bounded memory, as for bundles: the pages just copied are not needed again
                    // (a no-op for tensors densified from sparse storage, which are owned).
                    f.release(key, i * SAFETENSORS_CHUNK..i * SAFETENSORS_CHUNK + chunk.len());
                }
                Ok(())
            }
        }
    }

    /// Checks the CRC32C of the stored bytes of `key`, computed by a caller that read them
    /// through [`Checkpoint::read_unverified`] (see [`BundleReader::verify_checksum`]);
    /// safetensors files have no checksums, so they pass.
    pub fn verify_checksum(&self, key: &str, computed: u32) -> Result<()> {
        match &self.store {
            Store::Bundle(b) => b.verify_checksum(key, computed),
            Store::Safetensors(..) => Ok(()),
        }
    }

    /// Drops the memory-mapped pages behind bytes `range` of `key`'s stored value from this
    /// process's memory, for callers that walk [`Checkpoint::read_unverified`] data in chunks
    /// and want resident memory bounded by the chunk, not the checkpoint.
    pub fn release(&self, key: &str, range: std::ops::Range<usize>) {
        match &self.store {
            Store::Bundle(b) => b.release(key, range),
            Store::Safetensors(f, _) => f.release(key, range),
        }
    }
}

/// Releases the mapped pages of one tensor whose blocks are read in any order (by parallel
/// workers): each [`FOLIO_MAX`]-sized window of the tensor, widened by a window on either side
/// (folios need not be aligned with the tensor), is released once all its bytes are reported
/// done. Releasing just each block would leave the rest of its folios mapped, and a later touch
/// of a folio maps back the parts already released: memory would grow with the checkpoint.
pub struct WindowedRelease<'a> {
    ckpt: &'a Checkpoint,
    key: &'a str,
    len: usize,
    done: Vec<std::sync::atomic::AtomicUsize>,
}

impl<'a> WindowedRelease<'a> {
    /// A tracker for the `len` stored bytes of `key`.
    pub fn new(ckpt: &'a Checkpoint, key: &'a str, len: usize) -> Self {
        let done = (0..len.div_ceil(FOLIO_MAX)).map(|_| std::sync::atomic::AtomicUsize::new(0)).collect();
        WindowedRelease { ckpt, key, len, done }
    }

    /// Reports bytes `range` as done; releases every window that this completes.
    pub fn done(&self, range: std::ops::Range<usize>) {
        let mut start = range.start;
        while start < range.end.min(self.len) {
            let w = start / FOLIO_MAX;
            let end = ((w + 1) * FOLIO_MAX).min(range.end);
            let total = ((w + 1) * FOLIO_MAX).min(self.len) - w * FOLIO_MAX;
            let Some(counter) = self.done.get(w) else { return };
            if counter.fetch_add(end - start, std::sync::atomic::Ordering::AcqRel) + (end - start) == total {
                self.ckpt.release(self.key, w.saturating_sub(1) * FOLIO_MAX..((w + 2) * FOLIO_MAX).min(self.len));
            }
            start = end;
        }
    }
}

/// The TensorFlow variable name and kind of a bundle key, using the object graph for TF2 keys.
fn describe_key(key: &str, graph: Option<&ObjectGraph>) -> (String, VariableKind) {
    if key == OBJECT_GRAPH_KEY {
        return (key.to_string(), VariableKind::ObjectGraph);
    }
    let Some(graph) = graph else {
        return (key.to_string(), classify(key));
    };
    if let Some(slot) = graph.slot(key) {
        let of = graph.variable_name(&slot.original_key).unwrap_or_else(|| strip_value_suffix(&slot.original_key));
        return (format!("{of}/{}", slot.slot_name), VariableKind::OptimizerSlot { of, slot: slot.slot_name.clone() });
    }
    let name = graph.variable_name(key).unwrap_or_else(|| strip_value_suffix(key));
    let kind = if key.starts_with("optimizer/") || key.contains("/.OPTIMIZER_SLOT/") {
        VariableKind::OptimizerState
    } else if key.starts_with("save_counter/") {
        VariableKind::Step
    } else {
        classify(&name)
    };
    (name, kind)
}

fn strip_value_suffix(key: &str) -> String {
    key.strip_suffix(VARIABLE_VALUE_SUFFIX).unwrap_or(key).to_string()
}
