//! Checkpoints as TF1's `tf.compat.v1.train.Saver` writes them, so TensorFlow, BPrune and
//! `bnn-convert` read them: a `save/` subgraph with TensorFlow's own `SaveV2` / `RestoreV2`
//! ops (`model.ckpt-STEP.index` + `.data-00000-of-00001`), the `checkpoint` state file,
//! `model.ckpt-STEP.meta` (a MetaGraphDef with the graph, a `saver_def` naming the save
//! subgraph, and the `variables` / `trainable_variables` collections) and BPrune's manifests
//! `LayerNames.txt` / `OpsNames.txt`.

use std::path::{Path, PathBuf};

use formats::checkpoint_state::CheckpointState;
use formats::proto::graph::{collection_def, saver_def, CollectionDef, MetaGraphDef, SaverDef, VariableDef};
use protobuf::Message;
use tensorflow::{DataType, Operation, Output, Session, SessionRunArgs, Tensor};

use crate::error::{Result, TrainError};
use crate::graph::{GraphBuilder, Var, VarKind};

/// How many checkpoints to keep (TF1 Saver's default).
pub const MAX_TO_KEEP: usize = 5;
/// Name of the checkpoint files' prefix, before `-STEP`.
pub const BASENAME: &str = "model.ckpt";

/// The save / restore subgraph.
pub struct Saver {
    filename: Output,
    save: Operation,
    restore_all: Operation,
}

/// Adds TF1's `save/` subgraph for `vars` (sorted by name, as Python's Saver does).
pub fn build_saver(g: &mut GraphBuilder, vars: &[Var]) -> Result<Saver> {
    let mut vars: Vec<&Var> = vars.iter().collect();
    vars.sort_by(|a, b| a.name.cmp(&b.name));
    g.scope("save", |g| {
        let default = g.constant::<String>("filename/input", &[], &[BASENAME.to_string()])?;
        let filename = g
            .op("PlaceholderWithDefault", "Const", &[default], &[], |d| Ok(d.set_attr_shape("shape", &tensorflow::Shape::from(Some(vec![])))?))?
            .output(0);
        let n = vars.len() as u64;
        let names: Vec<String> = vars.iter().map(|v| v.name.clone()).collect();
        let slices = vec![String::new(); vars.len()];
        let dtypes: Vec<DataType> = vars.iter().map(|v| v.dtype).collect();
        let tn = g.constant::<String>("SaveV2/tensor_names", &[n], &names)?;
        let ss = g.constant::<String>("SaveV2/shape_and_slices", &[n], &slices)?;
        let values: Vec<Output> = vars.iter().map(|v| v.output()).collect();
        let save_v2 = g.op("SaveV2", "SaveV2", &[filename.clone(), tn, ss], &[], |d| {
            d.add_input_list(&values);
            Ok(())
        })?;
        let save = g.op("Identity", "control_dependency", std::slice::from_ref(&filename), &[save_v2], |_| Ok(()))?;
        let tn = g.constant::<String>("RestoreV2/tensor_names", &[n], &names)?;
        let ss = g.constant::<String>("RestoreV2/shape_and_slices", &[n], &vec![String::new(); vars.len()])?;
        let restore = g.op("RestoreV2", "RestoreV2", &[filename.clone(), tn, ss], &[], |d| Ok(d.set_attr_type_list("dtypes", &dtypes)?))?;
        let mut assigns = Vec::with_capacity(vars.len());
        for (i, v) in vars.iter().enumerate() {
            assigns.push(g.op("Assign", "Assign", &[v.output(), restore.output(i)], &[], |d| {
                d.set_attr_bool("validate_shape", true)?;
                Ok(d.set_attr_bool("use_locking", true)?)
            })?);
        }
        let restore_all = g.op("NoOp", "restore_all", &[], &assigns, |_| Ok(()))?;
        Ok(Saver { filename, save, restore_all })
    })
}

impl Saver {
    /// Writes `prefix.index` and `prefix.data-00000-of-00001` with TensorFlow's `SaveV2`.
    pub fn save(&self, session: &Session, prefix: &Path) -> Result<()> {
        let t = Tensor::<String>::from(prefix.to_string_lossy().into_owned());
        let mut run = SessionRunArgs::new();
        run.add_feed(&self.filename.operation, self.filename.index, &t);
        run.add_target(&self.save);
        session.run(&mut run)?;
        Ok(())
    }

    /// Restores every saved variable from `prefix` with `RestoreV2`.
    pub fn restore(&self, session: &Session, prefix: &Path) -> Result<()> {
        let t = Tensor::<String>::from(prefix.to_string_lossy().into_owned());
        let mut run = SessionRunArgs::new();
        run.add_feed(&self.filename.operation, self.filename.index, &t);
        run.add_target(&self.restore_all);
        session.run(&mut run).map_err(|e| TrainError::Invalid(format!("{}: cannot restore: {e}", prefix.display())))?;
        Ok(())
    }

    /// The `saver_def` Python's `import_meta_graph` turns back into a `Saver`.
    pub fn saver_def(&self) -> Result<SaverDef> {
        let mut s = SaverDef::new();
        s.filename_tensor_name = format!("{}:0", self.filename.operation.name()?);
        s.save_tensor_name = format!("{}:0", self.save.name()?);
        s.restore_op_name = self.restore_all.name()?;
        s.max_to_keep = MAX_TO_KEEP as i32;
        s.sharded = false;
        s.keep_checkpoint_every_n_hours = 10000.0;
        s.version = saver_def::CheckpointFormatVersion::V2.into();
        Ok(s)
    }
}

/// The `VariableDef` TF1 stores for a ref variable in the `variables` collection.
fn variable_def(v: &Var) -> Result<VariableDef> {
    let mut d = VariableDef::new();
    d.variable_name = format!("{}:0", v.name);
    d.initializer_name = v.initializer.name()?;
    d.snapshot_name = format!("{}:{}", v.read.operation.name()?, v.read.index);
    d.initial_value_name = format!("{}:{}", v.init_value.operation.name()?, v.init_value.index);
    d.is_resource = false;
    d.trainable = v.kind == VarKind::Trainable;
    Ok(d)
}

fn bytes_collection(items: Vec<Vec<u8>>) -> CollectionDef {
    let mut c = CollectionDef::new();
    let mut list = collection_def::BytesList::new();
    list.value = items;
    c.kind = Some(collection_def::Kind::BytesList(list));
    c
}

fn node_collection(names: Vec<String>) -> CollectionDef {
    let mut c = CollectionDef::new();
    let mut list = collection_def::NodeList::new();
    list.value = names;
    c.kind = Some(collection_def::Kind::NodeList(list));
    c
}

/// Encodes a MetaGraphDef: `graph_def` bytes exactly as TensorFlow serialized them
/// (appended as field 2, so nothing the shared proto subset lacks is lost), the saver and
/// the variable collections; `train_op` goes in the `train_op` collection and `update_ops`
/// (batch normalization's moving-statistics updates) in TF1's `update_ops` collection.
pub fn meta_graph_bytes(graph_def: &[u8], saver: &SaverDef, vars: &[Var], train_op: &str, update_ops: &[String]) -> Result<Vec<u8>> {
    let mut m = MetaGraphDef::new();
    let info = m.meta_info_def.mut_or_insert_default();
    info.tensorflow_version = tensorflow::version().unwrap_or_default();
    info.meta_graph_version = format!("v{}", info.tensorflow_version);
    info.tags = vec![];
    m.saver_def = protobuf::MessageField::some(saver.clone());
    let all: Vec<Vec<u8>> = vars.iter().map(|v| variable_def(v).and_then(|d| Ok(d.write_to_bytes()?))).collect::<Result<_>>()?;
    let trainable: Vec<Vec<u8>> = vars
        .iter()
        .filter(|v| v.kind == VarKind::Trainable)
        .map(|v| variable_def(v).and_then(|d| Ok(d.write_to_bytes()?)))
        .collect::<Result<_>>()?;
    m.collection_def.insert("variables".into(), bytes_collection(all));
    m.collection_def.insert("trainable_variables".into(), bytes_collection(trainable));
    m.collection_def.insert("train_op".into(), node_collection(vec![train_op.to_string()]));
    if !update_ops.is_empty() {
        m.collection_def.insert("update_ops".into(), node_collection(update_ops.to_vec()));
    }
    if let Some(step) = vars.iter().find(|v| v.kind == VarKind::Step) {
        m.collection_def.insert("global_step".into(), bytes_collection(vec![variable_def(step)?.write_to_bytes()?]));
    }
    let mut out = m.write_to_bytes()?;
    // Field 2 (graph_def), wire type 2: tag, varint length, bytes.
    out.push(0x12);
    let mut n = graph_def.len() as u64;
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(graph_def);
    Ok(out)
}

/// BPrune's manifests: `LayerNames.txt` (trainable variables as `name:0`) and
/// `OpsNames.txt` (op names in graph order; the input and label placeholders first).
pub fn write_manifests(dir: &Path, vars: &[Var], op_names: &[String]) -> Result<()> {
    let layers: String = vars.iter().filter(|v| v.kind == VarKind::Trainable).map(|v| format!("{}:0\n", v.name)).collect();
    let p = dir.join(formats::manifest::LAYER_NAMES_FILE);
    std::fs::write(&p, layers).map_err(|e| TrainError::io(&p, e))?;
    let ops: String = op_names.iter().map(|n| format!("{n}\n")).collect();
    let p = dir.join("OpsNames.txt");
    std::fs::write(&p, ops).map_err(|e| TrainError::io(&p, e))?;
    Ok(())
}

/// `model.ckpt-STEP`.
pub fn prefix_name(step: i64) -> String {
    format!("{BASENAME}-{step}")
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint")
}

/// The newest checkpoint prefix listed in `dir/checkpoint`, if the file exists.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>> {
    let p = state_path(dir);
    if !p.exists() {
        return Ok(None);
    }
    let state = CheckpointState::read(&p).map_err(|e| TrainError::Invalid(e.to_string()))?;
    if state.model_checkpoint_path.is_empty() {
        return Ok(None);
    }
    let prefix = Path::new(&state.model_checkpoint_path);
    Ok(Some(if prefix.is_absolute() { prefix.to_path_buf() } else { dir.join(prefix) }))
}

/// Records `name` (a prefix relative to `dir`) as the newest checkpoint, keeping the
/// newest [`MAX_TO_KEEP`] and deleting the files of older ones, as TF1's Saver does.
pub fn record(dir: &Path, name: &str) -> Result<()> {
    let p = state_path(dir);
    let mut state = if p.exists() { CheckpointState::read(&p).map_err(|e| TrainError::Invalid(e.to_string()))? } else { CheckpointState::default() };
    state.all_model_checkpoint_paths.retain(|n| n != name);
    state.all_model_checkpoint_paths.push(name.to_string());
    state.all_model_checkpoint_timestamps.clear();
    state.last_preserved_timestamp = None;
    while state.all_model_checkpoint_paths.len() > MAX_TO_KEEP {
        let old = state.all_model_checkpoint_paths.remove(0);
        for suffix in [".index", ".data-00000-of-00001", ".meta"] {
            let f = dir.join(format!("{old}{suffix}"));
            if f.exists() {
                std::fs::remove_file(&f).map_err(|e| TrainError::io(&f, e))?;
            }
        }
    }
    state.model_checkpoint_path = name.to_string();
    // Written next to the final name, then renamed, so a crash never leaves half a file.
    let tmp = dir.join("checkpoint.tmp");
    std::fs::write(&tmp, state.to_text()).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, &p).map_err(|e| TrainError::io(&p, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::testing::{eval, session};

    #[test]
    fn save_restore_and_meta_graph_round_trip() {
        let mut g = GraphBuilder::new(1);
        let a = g.scope("den_1", |g| g.variable_filled("kernel_posterior_loc", &[2, 2], 0.25, VarKind::Trainable)).unwrap();
        let step = g.variable("global_step", &[], DataType::Int64, VarKind::Step, |g| g.constant::<i64>("z", &[], &[7])).unwrap();
        let vars = g.variables().to_vec();
        let saver = build_saver(&mut g, &vars).unwrap();
        let s = session(g.graph(), &vars);
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join(prefix_name(7));
        saver.save(&s, &prefix).unwrap();
        assert!(dir.path().join("model.ckpt-7.index").is_file());
        assert!(dir.path().join("model.ckpt-7.data-00000-of-00001").is_file());
        // Overwrite, restore, and see the saved value again.
        let other = tensorflow::Tensor::<f32>::new(&[2, 2]).with_values(&[9.0; 4]).unwrap();
        let mut run = tensorflow::SessionRunArgs::new();
        run.add_feed(&a.init_value.operation, a.init_value.index, &other);
        run.add_target(&a.initializer);
        s.run(&mut run).unwrap();
        assert_eq!(eval(&s, &[&a.read])[0], vec![9.0; 4]);
        saver.restore(&s, &prefix).unwrap();
        assert_eq!(eval(&s, &[&a.read])[0], vec![0.25; 4]);
        assert!(saver.restore(&s, &dir.path().join("nothing")).unwrap_err().to_string().contains("nothing"));

        let gd = g.graph().graph_def().unwrap();
        let bytes = meta_graph_bytes(&gd, &saver.saver_def().unwrap(), &vars, "train", &[]).unwrap();
        let m = MetaGraphDef::parse_from_bytes(&bytes).unwrap();
        let nodes: Vec<&str> = m.graph_def.node.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(nodes.len(), g.graph().operation_iter().count());
        let sd = &m.saver_def;
        assert_eq!(sd.filename_tensor_name, "save/Const:0");
        assert_eq!(sd.save_tensor_name, "save/control_dependency:0");
        assert_eq!(sd.restore_op_name, "save/restore_all");
        assert_eq!(sd.version.enum_value_or_default(), saver_def::CheckpointFormatVersion::V2);
        for name in ["save/Const", "save/control_dependency", "save/restore_all", "save/SaveV2", "den_1/kernel_posterior_loc/read"] {
            assert!(nodes.contains(&name), "{name} missing");
        }
        let Some(collection_def::Kind::BytesList(list)) = &m.collection_def["trainable_variables"].kind else { panic!("no trainable_variables") };
        assert_eq!(list.value.len(), 1);
        let vd = VariableDef::parse_from_bytes(&list.value[0]).unwrap();
        assert_eq!((vd.variable_name.as_str(), vd.snapshot_name.as_str()), ("den_1/kernel_posterior_loc:0", "den_1/kernel_posterior_loc/read:0"));
        let _ = step;
    }

    #[test]
    fn state_file_keeps_the_newest_five() {
        let dir = tempfile::tempdir().unwrap();
        for s in 1..=7 {
            let name = prefix_name(s);
            for suffix in [".index", ".data-00000-of-00001", ".meta"] {
                std::fs::write(dir.path().join(format!("{name}{suffix}")), b"x").unwrap();
            }
            record(dir.path(), &name).unwrap();
        }
        let st = CheckpointState::read(&dir.path().join("checkpoint")).unwrap();
        assert_eq!(st.model_checkpoint_path, "model.ckpt-7");
        assert_eq!(st.all_model_checkpoint_paths, (3..=7).map(prefix_name).collect::<Vec<_>>());
        assert!(!dir.path().join("model.ckpt-2.index").exists());
        assert!(dir.path().join("model.ckpt-3.index").exists());
        assert_eq!(latest(dir.path()).unwrap(), Some(dir.path().join("model.ckpt-7")));
    }
}
