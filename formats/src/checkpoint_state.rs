//! The text `checkpoint` file (`CheckpointState` in protobuf text format) that `tf.train.Saver`
//! and `tf.train.CheckpointManager` keep next to their checkpoints, and the resolution of a
//! user-given path (folder, prefix, `.index` or `.data-*` file) to a checkpoint prefix.

use std::path::{Path, PathBuf};

use crate::bundle::index_path;
use crate::error::{Error, Result};

/// Name of the state file inside a checkpoint folder.
pub const STATE_FILE: &str = "checkpoint";

/// Contents of a `checkpoint` state file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckpointState {
    /// The latest checkpoint prefix, as written (often relative to the folder).
    pub model_checkpoint_path: String,
    /// Every kept checkpoint prefix, oldest first.
    pub all_model_checkpoint_paths: Vec<String>,
    /// Save times in seconds since the epoch, parallel to `all_model_checkpoint_paths`.
    pub all_model_checkpoint_timestamps: Vec<f64>,
    /// Time of the last checkpoint kept by `keep_checkpoint_every_n_hours`.
    pub last_preserved_timestamp: Option<f64>,
}

impl CheckpointState {
    /// Parses the text format; `path` names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<CheckpointState> {
        let mut state = CheckpointState::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what: &str| Error::corrupt(path, format!("line {}: {what}", n + 1));
            let (key, value) = line.split_once(':').ok_or_else(|| bad("expected 'field: value'"))?;
            let value = value.trim();
            match key.trim() {
                "model_checkpoint_path" => state.model_checkpoint_path = unquote(value).ok_or_else(|| bad("bad string"))?,
                "all_model_checkpoint_paths" => {
                    state.all_model_checkpoint_paths.push(unquote(value).ok_or_else(|| bad("bad string"))?)
                }
                "all_model_checkpoint_timestamps" => state
                    .all_model_checkpoint_timestamps
                    .push(value.parse().map_err(|_| bad("bad timestamp"))?),
                "last_preserved_timestamp" => {
                    state.last_preserved_timestamp = Some(value.parse().map_err(|_| bad("bad timestamp"))?)
                }
                other => return Err(bad(&format!("unknown field '{other}'"))),
            }
        }
        if state.model_checkpoint_path.is_empty() {
            return Err(Error::corrupt(path, "no model_checkpoint_path"));
        }
        Ok(state)
    }

    /// Reads and parses the state file at `path`.
    pub fn read(path: &Path) -> Result<CheckpointState> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        CheckpointState::parse(path, &text)
    }

    /// The state in TensorFlow's text format.
    pub fn to_text(&self) -> String {
        let mut out = format!("model_checkpoint_path: {}\n", quote(&self.model_checkpoint_path));
        for p in &self.all_model_checkpoint_paths {
            out += &format!("all_model_checkpoint_paths: {}\n", quote(p));
        }
        for t in &self.all_model_checkpoint_timestamps {
            out += &format!("all_model_checkpoint_timestamps: {t}\n");
        }
        if let Some(t) = self.last_preserved_timestamp {
            out += &format!("last_preserved_timestamp: {t}\n");
        }
        out
    }
}

/// Decodes a protobuf text-format string literal (C escapes, either quote).
fn unquote(s: &str) -> Option<String> {
    let q = s.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let body = s.strip_prefix(q)?.strip_suffix(q)?;
    let mut out = Vec::new();
    let mut bytes = body.bytes().peekable();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let e = bytes.next()?;
        out.push(match e {
            b'n' => b'\n',
            b't' => b'\t',
            b'r' => b'\r',
            b'\\' | b'\'' | b'"' => e,
            b'x' => {
                let mut v = 0u8;
                for _ in 0..2 {
                    let d = (*bytes.peek()? as char).to_digit(16)?;
                    bytes.next();
                    v = v.checked_mul(16)?.checked_add(d as u8)?;
                }
                v
            }
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match bytes.peek() {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            bytes.next();
                        }
                        _ => break,
                    }
                }
                u8::try_from(v).ok()?
            }
            _ => return None,
        });
    }
    String::from_utf8(out).ok()
}

fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            '\n' => out += "\\n",
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Resolves a prefix written in a state file in folder `dir`: relative prefixes are relative to
/// `dir`; an absolute prefix that no longer exists (an archive that was moved) falls back to
/// the same file name inside `dir`.
fn resolve_in(dir: &Path, written: &str) -> PathBuf {
    let p = Path::new(written);
    let direct = if p.is_absolute() { p.to_path_buf() } else { dir.join(p) };
    if index_path(&direct).is_file() {
        return direct;
    }
    match p.file_name() {
        Some(name) if index_path(&dir.join(name)).is_file() => dir.join(name),
        _ => direct,
    }
}

/// The step number at the end of a prefix (`model.ckpt-14000` -> 14000; `ckpt-3` -> 3).
pub fn step_of(prefix: &Path) -> Option<u64> {
    let name = prefix.file_name()?.to_str()?;
    let digits = name.rsplit(['-', '_']).next()?;
    digits.parse().ok()
}

/// Every checkpoint prefix in folder `dir`: those its state file lists, else every `*.index`.
/// Sorted oldest (lowest step) first.
pub fn checkpoints_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let state = dir.join(STATE_FILE);
    let mut prefixes: Vec<PathBuf> = if state.is_file() {
        let s = CheckpointState::read(&state)?;
        let mut all: Vec<PathBuf> = s.all_model_checkpoint_paths.iter().map(|p| resolve_in(dir, p)).collect();
        let latest = resolve_in(dir, &s.model_checkpoint_path);
        if !all.contains(&latest) {
            all.push(latest);
        }
        all.into_iter().filter(|p| index_path(p).is_file()).collect()
    } else {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| p.to_str().and_then(|s| s.strip_suffix(".index")).map(PathBuf::from))
            .collect()
    };
    prefixes.sort_by_key(|p| (step_of(p), p.clone()));
    prefixes.dedup();
    Ok(prefixes)
}

/// A TF2 SavedModel folder's file holding the serialized graph.
pub const SAVED_MODEL_FILE: &str = "saved_model.pb";

/// The variables of a SavedModel folder: a tensor bundle at `variables/variables`.
fn saved_model_variables(dir: &Path) -> PathBuf {
    dir.join("variables").join("variables")
}

/// The SavedModel folder whose variables bundle is at `prefix`, if it is one.
pub fn saved_model_of(prefix: &Path) -> Option<PathBuf> {
    let dir = prefix.parent()?.parent()?;
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    (prefix.file_name()? == "variables" && dir.join(SAVED_MODEL_FILE).is_file()).then(|| dir.to_path_buf())
}

/// Resolves what a user typed to a checkpoint prefix: a folder (its latest checkpoint), a
/// SavedModel folder (its `variables/variables` bundle), a `checkpoint` state file, a prefix,
/// an `.index` file or a `.data-K-of-N` file.
pub fn resolve_checkpoint(input: &Path) -> Result<PathBuf> {
    if input.is_dir() && input.join(SAVED_MODEL_FILE).is_file() {
        let variables = saved_model_variables(input);
        if !index_path(&variables).is_file() {
            return Err(Error::NotFound { path: index_path(&variables), what: "SavedModel folder without its variables bundle".into() });
        }
        return Ok(variables);
    }
    if input.is_dir() {
        let state = input.join(STATE_FILE);
        if state.is_file() {
            let s = CheckpointState::read(&state)?;
            let prefix = resolve_in(input, &s.model_checkpoint_path);
            if !index_path(&prefix).is_file() {
                return Err(Error::NotFound {
                    path: state,
                    what: format!("names checkpoint '{}', whose .index is not there", s.model_checkpoint_path),
                });
            }
            return Ok(prefix);
        }
        return checkpoints_in(input)?.pop().ok_or_else(|| Error::NotFound {
            path: input.to_path_buf(),
            what: "folder holds no 'checkpoint' state file and no .index file".into(),
        });
    }
    if input.file_name().is_some_and(|n| n == STATE_FILE) && input.is_file() {
        return resolve_checkpoint(input.parent().unwrap_or(Path::new(".")));
    }
    let text = input.to_string_lossy();
    if let Some(prefix) = text.strip_suffix(".index") {
        if input.is_file() {
            return Ok(PathBuf::from(prefix));
        }
    }
    if let Some(pos) = text.rfind(".data-") {
        let tail = &text[pos + 6..];
        let is_shard = tail.len() == 14 && tail.as_bytes()[5..9] == *b"-of-" && tail.bytes().filter(u8::is_ascii_digit).count() == 10;
        if is_shard && index_path(Path::new(&text[..pos])).is_file() {
            return Ok(PathBuf::from(&text[..pos]));
        }
    }
    if index_path(input).is_file() {
        return Ok(input.to_path_buf());
    }
    Err(Error::NotFound {
        path: input.to_path_buf(),
        what: "not a checkpoint: no such folder, prefix (<prefix>.index is missing) or .index file".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_saver_state() {
        let text = "model_checkpoint_path: \"model.ckpt-14000\"\nall_model_checkpoint_paths: \"model.ckpt-0\"\n\
                    all_model_checkpoint_paths: \"/abs/model.ckpt-14000\"\nall_model_checkpoint_timestamps: 1591000000.5\n\
                    last_preserved_timestamp: 1590999999.25\n";
        let s = CheckpointState::parse(Path::new("checkpoint"), text).expect("parses");
        assert_eq!(s.model_checkpoint_path, "model.ckpt-14000");
        assert_eq!(s.all_model_checkpoint_paths, vec!["model.ckpt-0", "/abs/model.ckpt-14000"]);
        assert_eq!(s.all_model_checkpoint_timestamps, vec![1591000000.5]);
        assert_eq!(s.last_preserved_timestamp, Some(1590999999.25));
        assert_eq!(CheckpointState::parse(Path::new("c"), &s.to_text()).expect("round trip"), s);
    }

    #[test]
    fn escapes_and_errors() {
        assert_eq!(unquote(r#""a\"b\\c\101\x42""#).as_deref(), Some("a\"b\\cAB"));
        assert_eq!(unquote("'single'").as_deref(), Some("single"));
        assert!(unquote("\"unterminated").is_none());
        let err = CheckpointState::parse(Path::new("ckpt/checkpoint"), "garbage line").unwrap_err().to_string();
        assert!(err.starts_with("ckpt/checkpoint: line 1"), "{err}");
        assert!(CheckpointState::parse(Path::new("c"), "").is_err());
    }

    #[test]
    fn steps_from_prefixes() {
        assert_eq!(step_of(Path::new("/x/model.ckpt-14000")), Some(14000));
        assert_eq!(step_of(Path::new("ckpt-3")), Some(3));
        assert_eq!(step_of(Path::new("model.ckpt")), None);
    }
}
