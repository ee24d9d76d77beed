//! Conversions between TensorFlow checkpoints and safetensors, streaming tensor by tensor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::bundle::{write_atomically, BundleWriter, CopiedTensor};
use crate::checkpoint::{Checkpoint, Variable, WindowedRelease};
use crate::checkpoint_state::{CheckpointState, STATE_FILE};
pub use crate::edit::TensorEdit;
use crate::error::{Error, Result};
use crate::layout::VariableKind;
use crate::naming::{self, META_GLOBAL_STEP, META_LAYERS, META_MANIFEST, META_SOURCE, META_TF_KEYS, META_WRITER};
use crate::block_copy::Piece;
use crate::safetensors_file::{write_safetensors_late, Late, PlannedTensor};
use crate::tensor::TensorData;

/// Choices for [`checkpoint_to_safetensors`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ToSafetensorsOptions {
    /// Keep optimizer slots, optimizer state and step counters, not just the model.
    pub include_optimizer: bool,
    /// Leave out tensors safetensors cannot hold (strings, complex128) instead of failing.
    pub skip_unsupported: bool,
}

/// Changes made while a checkpoint is copied: tensors given new values (same dtype and shape),
/// by stored key, and metadata entries to add.
#[derive(Debug, Clone, Default)]
pub struct Edits {
    /// How to rewrite tensors, by stored key.
    pub values: BTreeMap<String, Arc<dyn TensorEdit>>,
    /// Extra `__metadata__` entries (safetensors output only).
    pub metadata: BTreeMap<String, String>,
    /// An extra `__metadata__` entry whose value is known only once every tensor is written
    /// (safetensors output only).
    pub late: Option<Arc<dyn LateMetadata>>,
}

/// A `__metadata__` entry whose value is known only once every edit has finished (a pruning's
/// counts, taken while its edits stream out): the header reserves room for its longest value
/// and is written after the data, so the data is written in one pass.
pub trait LateMetadata: Send + Sync + std::fmt::Debug {
    /// The entry's key.
    fn key(&self) -> &str;
    /// A value at least as long, once escaped in JSON, as any the entry can take.
    fn longest(&self) -> String;
    /// The value, called once every tensor has been written and its edit has finished.
    fn value(&self) -> std::result::Result<String, String>;
}

impl Edits {
    /// Passes the bytes of `key` to `sink`, rewritten if there is an edit for it.
    pub fn stream(&self, ckpt: &Checkpoint, key: &str, sink: &mut crate::tensor::Sink) -> Result<()> {
        let Some(edit) = self.values.get(key) else {
            return ckpt.stream(key, sink);
        };
        let mut edited = Vec::new();
        let mut offset = 0u64;
        ckpt.stream(key, &mut |chunk| {
            // Chunks after the first are as large or smaller: one allocation per tensor.
            edited.resize(chunk.len(), 0);
            edit.apply(offset, chunk, &mut edited);
            offset += chunk.len() as u64;
            sink(&edited)
        })?;
        edit_finished(ckpt, key, edit.as_ref())
    }
}

/// [`TensorEdit::finished`] of the edit of `key`, as an error about the checkpoint.
fn edit_finished(ckpt: &Checkpoint, key: &str, edit: &dyn TensorEdit) -> Result<()> {
    edit.finished().map_err(|what| Error::invalid(ckpt.path(), format!("'{key}': {what}")))
}

/// The stored bytes of fixed-size tensor `key` where they lie (a memory map), unverified; `None`
/// for a tensor assembled from partitions or decoded from sparse storage, which is streamed.
fn stored_in_one_piece<'c>(ckpt: &'c Checkpoint, key: &str) -> Result<Option<&'c [u8]>> {
    match ckpt.read_unverified(key)? {
        TensorData::Bytes(std::borrow::Cow::Borrowed(src)) => Ok(Some(src)),
        _ => Ok(None),
    }
}

/// The tensor copied together with `v`, block by block in one job (see
/// [`crate::block_copy::copy_together`]), and its stored bytes: `next`, the tensor written after
/// `v`, when both are edited, of a fixed-size dtype, as long, and stored in one piece (the two
/// halves of a posterior: each block is then decided once).
fn copied_along<'c>(ckpt: &'c Checkpoint, edits: &Edits, v: &Variable, next: Option<&'c Variable>) -> Result<Option<(&'c Variable, &'c [u8])>> {
    let both_edited = |w: &Variable| edits.values.contains_key(&v.key) && edits.values.contains_key(&w.key);
    match next.filter(|w| both_edited(w) && w.info.dtype.size().is_some() && w.info.nbytes == v.info.nbytes) {
        Some(w) => Ok(stored_in_one_piece(ckpt, &w.key)?.map(|w_src| (w, w_src))),
        None => Ok(None),
    }
}

/// What a conversion did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConversionReport {
    /// Output file or prefix.
    pub output: PathBuf,
    /// (source key, output name) of every tensor written.
    pub written: Vec<(String, String)>,
    /// (source key, reason) of every tensor left out.
    pub skipped: Vec<(String, String)>,
    /// Tensor bytes written.
    pub bytes: u64,
}

fn wanted(v: &Variable, include_optimizer: bool) -> Option<&'static str> {
    match &v.kind {
        k if k.is_model() => None,
        VariableKind::OptimizerSlot { .. } | VariableKind::OptimizerState | VariableKind::Step if include_optimizer => None,
        VariableKind::OptimizerSlot { .. } | VariableKind::OptimizerState => Some("optimizer variable (see --include-optimizer)"),
        VariableKind::Step => Some("step counter (kept in metadata; see --include-optimizer)"),
        VariableKind::Metric => Some("metric accumulator"),
        VariableKind::ObjectGraph => Some("TF2 object graph (decoded into metadata)"),
        _ => Some("not part of the model"),
    }
}

/// The tensors a safetensors conversion writes, their names, and the metadata describing them.
#[derive(Debug)]
pub struct SafetensorsPlan<'a> {
    /// Variables written, in order.
    pub variables: Vec<&'a Variable>,
    /// Their safetensors names.
    pub names: Vec<String>,
    /// `__metadata__` (see docs/naming.md).
    pub metadata: BTreeMap<String, String>,
    /// (key, reason) of variables left out.
    pub skipped: Vec<(String, String)>,
}

/// Decides what [`checkpoint_to_safetensors`] writes, without writing it.
pub fn plan_safetensors(ckpt: &Checkpoint, opts: ToSafetensorsOptions) -> Result<SafetensorsPlan<'_>> {
    ckpt.check_manifest()?;
    let mut skipped = Vec::new();
    let mut chosen: Vec<&Variable> = Vec::new();
    for v in ckpt.variables() {
        if let Some(reason) = wanted(v, opts.include_optimizer) {
            skipped.push((v.key.clone(), reason.into()));
        } else if v.info.dtype.to_safetensors().is_none() {
            if !opts.skip_unsupported {
                return Err(Error::unsupported(
                    ckpt.path(),
                    format!("tensor '{}' is {}, which safetensors cannot hold (use --skip-unsupported to leave it out)", v.key, v.info.dtype),
                ));
            }
            skipped.push((v.key.clone(), format!("{} has no safetensors dtype", v.info.dtype)));
        } else {
            chosen.push(v);
        }
    }
    if let Some(b) = ckpt.bundle() {
        if let Some(missing) = b.missing_shards().first() {
            return Err(Error::MissingShard { shard: missing.clone(), index: b.index_path().to_path_buf(), num_shards: b.header().num_shards });
        }
    }
    let names = naming::assign_names(chosen.iter().map(|v| (ckpt.tf_key(v), v.name.as_str())));
    let metadata = conversion_metadata(ckpt, &chosen, &names)?;
    Ok(SafetensorsPlan { variables: chosen, names, metadata, skipped })
}

/// Converts a checkpoint to a safetensors file at `out`, written atomically; values are copied
/// bit for bit, one bounded chunk at a time, except those `edits` replaces.
pub fn checkpoint_to_safetensors(ckpt: &Checkpoint, out: &Path, opts: ToSafetensorsOptions, edits: &Edits) -> Result<ConversionReport> {
    let mut plan = plan_safetensors(ckpt, opts)?;
    plan.metadata.extend(edits.metadata.clone());
    let late_value = || edits.late.as_ref().map_or(Ok(String::new()), |l| l.value().map_err(|what| Error::invalid(ckpt.path(), what)));
    let late = edits.late.as_ref().map(|l| Late { key: l.key(), longest: l.longest(), value: &late_value });
    let planned: Vec<PlannedTensor> = plan
        .variables
        .iter()
        .zip(&plan.names)
        .map(|(v, n)| PlannedTensor { name: n.clone(), dtype: v.info.dtype, shape: v.info.shape.clone() })
        .collect();
    write_safetensors_late(out, &planned, &plan.metadata, late, |i, out| {
        let v = &plan.variables[i];
        let edit = edits.values.get(&v.key);
        if let Some(src) = stored_in_one_piece(ckpt, &v.key)? {
            // Block by block on every core, as `cp` would copy it, together with the next
            // tensor where `copied_along` pairs them.
            let windows = WindowedRelease::new(ckpt, &v.key, src.len());
            let release = |range| windows.done(range);
            let this = Piece { at: 0, src, edit: edit.map(|e| e.as_ref()), release: &release };
            if let Some((w, w_src)) = copied_along(ckpt, edits, v, plan.variables.get(i + 1).copied())? {
                let w_windows = WindowedRelease::new(ckpt, &w.key, w_src.len());
                let w_release = |range| w_windows.done(range);
                let w_edit = edits.values.get(&w.key);
                let next = Piece { at: 0, src: w_src, edit: w_edit.map(|e| e.as_ref()), release: &w_release };
                let (crc, w_crc) = out.copy_with_next(this, next)?;
                ckpt.verify_checksum(&v.key, crc)?;
                ckpt.verify_checksum(&w.key, w_crc)?;
                if let Some(w_edit) = w_edit {
                    edit_finished(ckpt, &w.key, w_edit.as_ref())?;
                }
            } else {
                let crc = out.copy(src, this.edit, &release)?;
                ckpt.verify_checksum(&v.key, crc)?;
            }
        } else {
            // Stretches of 64 whole elements: masks then work a word at a time.
            let align = 64 * v.info.dtype.size().unwrap_or(1);
            let mut offset = 0u64;
            ckpt.stream(&v.key, &mut |chunk| {
                let at_chunk = offset;
                offset += chunk.len() as u64;
                out.write_with(chunk.len(), align, &mut |at, dst| match edit {
                    Some(edit) => edit.apply(at_chunk + at as u64, &chunk[at..at + dst.len()], dst),
                    None => dst.copy_from_slice(&chunk[at..at + dst.len()]),
                })
            })?;
        }
        edit.map_or(Ok(()), |edit| edit_finished(ckpt, &v.key, edit.as_ref()))
    })?;
    Ok(ConversionReport {
        output: out.to_path_buf(),
        bytes: plan.variables.iter().map(|v| v.info.nbytes).sum(),
        written: plan.variables.iter().zip(plan.names).map(|(v, n)| (v.key.clone(), n)).collect(),
        skipped: plan.skipped,
    })
}

fn conversion_metadata(ckpt: &Checkpoint, chosen: &[&Variable], names: &[String]) -> Result<BTreeMap<String, String>> {
    let json = |v: serde_json::Value| v.to_string();
    let key_to_name: BTreeMap<&str, &str> = chosen.iter().zip(names).map(|(v, n)| (v.key.as_str(), n.as_str())).collect();
    let tf_keys: BTreeMap<&str, &str> = chosen.iter().zip(names).map(|(v, n)| (n.as_str(), ckpt.tf_key(v))).collect();
    let layers: Vec<serde_json::Value> = ckpt
        .layers()
        .iter()
        .map(|l| {
            let params: BTreeMap<String, &str> = l
                .params
                .iter()
                .filter_map(|(p, key)| Some((p.suffix().to_string(), *key_to_name.get(key.as_str())?)))
                .collect();
            serde_json::json!({"layer": l.name, "bayesian": l.is_bayesian(), "params": params})
        })
        .collect();
    let mut m = BTreeMap::new();
    m.insert(META_WRITER.to_string(), format!("bnn-convert {}", env!("CARGO_PKG_VERSION")));
    m.insert(META_SOURCE.to_string(), ckpt.path().display().to_string());
    m.insert(META_TF_KEYS.to_string(), json(serde_json::to_value(tf_keys).map_err(|e| Error::invalid(ckpt.path(), e.to_string()))?));
    m.insert(META_LAYERS.to_string(), json(serde_json::Value::Array(layers)));
    if let Some(step) = ckpt.global_step() {
        m.insert(META_GLOBAL_STEP.to_string(), step.to_string());
    }
    if !ckpt.manifest().is_empty() {
        m.insert(META_MANIFEST.to_string(), json(serde_json::to_value(ckpt.manifest()).map_err(|e| Error::invalid(ckpt.path(), e.to_string()))?));
    }
    Ok(m)
}

/// Converts a safetensors file to a TensorFlow checkpoint at `prefix`, restoring the original
/// checkpoint keys from the metadata, and records it in the folder's `checkpoint` state file.
pub fn safetensors_to_checkpoint(input: &Path, prefix: &Path) -> Result<ConversionReport> {
    checkpoint_to_bundle(&Checkpoint::open(input)?, prefix, &Edits::default())
}

/// Writes every tensor of `ckpt` (optimizer state included) under its TensorFlow key to a
/// checkpoint at `prefix`, with `edits` applied; records it in the folder's `checkpoint` file
/// and, for a TensorFlow source, copies its `.meta` graph and BPrune manifests alongside so
/// that `import_meta_graph` + `restore` and BPrune's scripts work on the result.
pub fn checkpoint_to_bundle(ckpt: &Checkpoint, prefix: &Path, edits: &Edits) -> Result<ConversionReport> {
    let mut writer = BundleWriter::create(prefix)?;
    // The whole data file allocated first: a full disk fails before any write.
    writer.reserve(ckpt.variables().iter().filter(|v| v.info.dtype.size().is_some()).map(|v| v.info.nbytes).sum())?;
    let mut report = ConversionReport { output: prefix.to_path_buf(), ..Default::default() };
    let variables = ckpt.variables();
    let mut next = 0;
    while let Some(v) = variables.get(next) {
        let key = ckpt.tf_key(v).to_string();
        let edit = edits.values.get(&v.key);
        let mut done = vec![v];
        if v.info.dtype.size().is_some() {
            if let Some(src) = stored_in_one_piece(ckpt, &v.key)? {
                // Block by block on every core, as `cp` would copy it, together with the next
                // tensor where `copied_along` pairs them; the sources' checksums are taken on
                // the way and checked once the whole tensors have passed.
                let mut group = vec![(v, src)];
                group.extend(copied_along(ckpt, edits, v, variables.get(next + 1))?);
                let keys: Vec<String> = group.iter().map(|(v, _)| ckpt.tf_key(v).to_string()).collect();
                let windows: Vec<WindowedRelease> = group.iter().map(|(v, src)| WindowedRelease::new(ckpt, &v.key, src.len())).collect();
                let releases: Vec<_> = windows.iter().map(|w| move |range| w.done(range)).collect();
                let tensors: Vec<CopiedTensor> = group
                    .iter()
                    .zip(&keys)
                    .zip(&releases)
                    .map(|(((v, src), name), release)| CopiedTensor {
                        name,
                        dtype: v.info.dtype,
                        shape: &v.info.shape,
                        src,
                        edit: edits.values.get(&v.key).map(|e| e.as_ref()),
                        release,
                    })
                    .collect();
                let crcs = writer.add_copied(&tensors)?;
                for ((v, _), crc) in group.iter().zip(crcs) {
                    ckpt.verify_checksum(&v.key, crc)?;
                }
                done = group.into_iter().map(|(v, _)| v).collect();
            } else {
                match edit {
                    Some(edit) => writer.add_edited(&key, v.info.dtype, &v.info.shape, edit.as_ref(), |sink| ckpt.stream(&v.key, sink))?,
                    None => writer.add_streamed(&key, v.info.dtype, &v.info.shape, |sink| ckpt.stream(&v.key, sink))?,
                }
            }
        } else {
            match ckpt.read(&v.key)? {
                TensorData::Strings(s) => writer.add_strings(&key, &v.info.shape, &s)?,
                TensorData::Bytes(_) => return Err(Error::corrupt(ckpt.path(), format!("'{}' holds bytes, not strings", v.key))),
            }
        }
        for v in done {
            if let Some(edit) = edits.values.get(&v.key) {
                edit_finished(ckpt, &v.key, edit.as_ref())?;
            }
            report.bytes += v.info.nbytes;
            report.written.push((v.key.clone(), ckpt.tf_key(v).to_string()));
            next += 1;
        }
    }
    writer.finish()?;
    record_in_state_file(prefix)?;
    if ckpt.bundle().is_some() {
        copy_companions(ckpt, prefix)?;
    }
    Ok(report)
}

/// Copies the source's `.meta` file and manifests next to `prefix`, never over existing files.
fn copy_companions(ckpt: &Checkpoint, prefix: &Path) -> Result<()> {
    let mut pairs: Vec<(PathBuf, PathBuf)> = Vec::new();
    let meta = PathBuf::from(format!("{}.meta", ckpt.path().display()));
    if meta.is_file() {
        pairs.push((meta, PathBuf::from(format!("{}.meta", prefix.display()))));
    }
    let dir = prefix.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let m = ckpt.manifest();
    for src in m.layer_names_file.iter().chain(m.ops_file.iter()) {
        if let Some(name) = src.file_name() {
            pairs.push((src.clone(), dir.join(name)));
        }
    }
    for (src, dst) in pairs {
        if !dst.exists() {
            let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
            write_atomically(&dst, |w| {
                use std::io::Write;
                w.write_all(&bytes).map_err(|e| Error::io(&dst, e))
            })?;
        }
    }
    Ok(())
}

/// Makes `prefix` the latest checkpoint of its folder's `checkpoint` state file, keeping the
/// checkpoints already listed there.
pub fn record_in_state_file(prefix: &Path) -> Result<()> {
    let dir = prefix.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = prefix
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid(prefix, "checkpoint prefix needs a UTF-8 file name"))?
        .to_string();
    let state_path = dir.join(STATE_FILE);
    let mut state = if state_path.is_file() { CheckpointState::read(&state_path)? } else { CheckpointState::default() };
    state.model_checkpoint_path = name.clone();
    if !state.all_model_checkpoint_paths.contains(&name) {
        state.all_model_checkpoint_paths.push(name);
        state.all_model_checkpoint_timestamps.clear();
    }
    write_atomically(&state_path, |w| {
        use std::io::Write;
        w.write_all(state.to_text().as_bytes()).map_err(|e| Error::io(&state_path, e))
    })
}

/// Reads every tensor of a checkpoint once, verifying every checksum; returns the bytes read.
/// Fixed-size tensors are streamed, so memory stays bounded.
pub fn verify_all(ckpt: &Checkpoint) -> Result<u64> {
    let mut total = 0u64;
    for v in ckpt.variables() {
        if v.info.dtype.size().is_some() {
            ckpt.stream(&v.key, &mut |chunk| {
                total += chunk.len() as u64;
                Ok(())
            })?;
        } else {
            total += ckpt.read(&v.key)?.nbytes();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies the bytes but reports, at the end, that it could not do its job.
    #[derive(Debug)]
    struct FailsAtTheEnd;
    impl TensorEdit for FailsAtTheEnd {
        fn apply(&self, _offset: u64, src: &[u8], dst: &mut [u8]) {
            dst.copy_from_slice(src);
        }
        fn finished(&self) -> std::result::Result<(), String> {
            Err("lost its other half".into())
        }
    }

    #[test]
    fn an_edit_failing_when_finished_discards_every_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src/model.ckpt-1");
        std::fs::create_dir(dir.path().join("src")).expect("mkdir");
        crate::synthetic::write_synthetic_bnn(&src, &[(4, 3)], 1).expect("synthetic");
        let ckpt = Checkpoint::open(&src).expect("open");
        let mut edits = Edits::default();
        edits.values.insert("den_1/kernel_posterior_loc".into(), Arc::new(FailsAtTheEnd));
        let out = dir.path().join("out");
        std::fs::create_dir(&out).expect("mkdir");
        let st = checkpoint_to_safetensors(&ckpt, &out.join("a.safetensors"), ToSafetensorsOptions::default(), &edits);
        let tf = checkpoint_to_bundle(&ckpt, &out.join("model.ckpt-1"), &edits);
        for e in [st.expect_err("safetensors"), tf.expect_err("bundle")] {
            assert!(e.to_string().contains("den_1/kernel_posterior_loc': lost its other half"), "{e}");
        }
        assert_eq!(std::fs::read_dir(&out).expect("ls").count(), 0, "nothing committed");
    }
}
